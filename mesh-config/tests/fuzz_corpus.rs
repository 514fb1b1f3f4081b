//! Replays the fuzz corpora (`fuzz/corpus/<target>/`) through the fuzz targets' invariants, so
//! a regression in the parser shows in `cargo test` without running the fuzzer.

mod fuzz;

use std::path::PathBuf;

/// Every file of one target's corpus, by name; the corpus must not be empty (a moved directory
/// would otherwise pass by replaying nothing).
fn corpus(target: &str) -> Vec<(String, Vec<u8>)> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/corpus")
        .join(target);
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|entry| {
            let path = entry.expect("corpus entry").path();
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            (name, std::fs::read(&path).expect("corpus file"))
        })
        .collect();
    files.sort();
    assert!(
        files.len() >= 10,
        "{}: only {} files",
        dir.display(),
        files.len()
    );
    files
}

#[test]
fn parse_corpus() {
    let mut accepted = 0;
    for (name, bytes) in corpus("parse") {
        let Ok(text) = std::str::from_utf8(&bytes) else {
            continue;
        };
        eprintln!("{name}");
        fuzz::invariants::parse_text(text);
        accepted += usize::from(mesh_config::parse(text).is_ok());
    }
    // The corpus reaches past the syntax check: some of it is valid documents.
    assert!(accepted > 0, "no file of the corpus is a valid document");
}

#[test]
fn merge_patch_corpus() {
    for (name, bytes) in corpus("merge_patch") {
        let Ok(text) = std::str::from_utf8(&bytes) else {
            continue;
        };
        eprintln!("{name}");
        fuzz::invariants::patch_text(text);
    }
}
