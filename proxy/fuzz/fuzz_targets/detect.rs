//! Arbitrary first bytes of a connection, split into arbitrary reads: protocol detection never
//! panics or stalls, decides within its buffer, replays exactly what it read, and decides what
//! `classify` says of those bytes (HTTP/1 only behind a method and a space, HTTP/2 only behind
//! the full preface, TLS never as HTTP).
#![no_main]

use libfuzzer_sys::fuzz_target;

// Shared with the corpus replay test.
#[path = "../../tests/fuzz/invariants.rs"]
mod invariants;

fuzz_target!(|data: &[u8]| invariants::first_bytes(data));
