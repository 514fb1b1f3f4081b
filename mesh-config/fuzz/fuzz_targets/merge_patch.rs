//! Arbitrary JSON as a merge patch on the default document (what `mesh config patch -p` sends):
//! never a panic, and an accepted result reads back to itself.
#![no_main]

use libfuzzer_sys::fuzz_target;

// Shared with the corpus replay test; each target uses part of it.
#[allow(dead_code)]
#[path = "../../tests/fuzz/invariants.rs"]
mod invariants;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        invariants::patch_text(text);
    }
});
