//! Replays the admission fuzz corpus (`fuzz/corpus/admission/`) through the fuzz target's
//! invariants, so a regression shows in `cargo test` without running the fuzzer.

mod fuzz;

use std::path::PathBuf;

#[test]
fn admission_corpus() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus/admission");
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
    let mut seen = std::collections::BTreeSet::new();
    for path in files {
        eprintln!("{}", path.display());
        let data = std::fs::read(&path).expect("corpus file");
        seen.insert(fuzz::invariants::admission_body(&data));
    }
    // The corpus reaches every outcome, patches included.
    assert_eq!(seen.len(), 3, "{seen:?}");
}
