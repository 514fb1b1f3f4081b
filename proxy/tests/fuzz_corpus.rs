//! Replays the protocol-detection fuzz corpus (`fuzz/corpus/detect/`) through the fuzz
//! target's invariants, so a regression shows in `cargo test` without running the fuzzer.

mod fuzz;

use std::path::PathBuf;

#[test]
fn detect_corpus() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus/detect");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|entry| entry.expect("corpus entry").path())
        .collect();
    files.sort();
    // A moved directory must not pass by replaying nothing.
    assert!(
        files.len() >= 10,
        "{}: only {} files",
        dir.display(),
        files.len()
    );
    for path in files {
        eprintln!("{}", path.display());
        fuzz::invariants::first_bytes(&std::fs::read(&path).expect("corpus file"));
    }
}
