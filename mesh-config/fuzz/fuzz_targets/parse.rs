//! Arbitrary text as a MeshConfig: the parser and validator never panic or hang, and what they
//! accept is written back (YAML and JSON) and read again to the same config.
#![no_main]

use libfuzzer_sys::fuzz_target;

// Shared with the corpus replay test; each target uses part of it.
#[allow(dead_code)]
#[path = "../../tests/fuzz/invariants.rs"]
mod invariants;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        invariants::parse_text(text);
    }
});
