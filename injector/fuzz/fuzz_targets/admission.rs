//! Arbitrary bodies to the admission webhook: never a panic; a body that decodes is answered
//! with a well-formed AdmissionReview with its uid, and a patch applies to the pod once.
#![no_main]

use libfuzzer_sys::fuzz_target;

// Shared with the corpus replay test.
#[path = "../../tests/fuzz/invariants.rs"]
mod invariants;

fuzz_target!(|data: &[u8]| {
    invariants::admission_body(data);
});
