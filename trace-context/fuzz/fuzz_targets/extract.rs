//! Arbitrary bytes split into trace headers: extraction must not panic, and what injection
//! writes must parse back to the same context.
#![no_main]

use http::{HeaderMap, HeaderValue};
use libfuzzer_sys::fuzz_target;

const NAMES: [&str; 8] =
    ["b3", "x-b3-traceid", "x-b3-spanid", "x-b3-parentspanid", "x-b3-sampled", "x-b3-flags", "traceparent", "tracestate"];

fuzz_target!(|data: &[u8]| {
    let mut headers = HeaderMap::new();
    for (i, chunk) in data.split(|&b| b == b'\n').enumerate() {
        let Some((&sel, value)) = chunk.split_first() else { continue };
        if let Ok(v) = HeaderValue::from_bytes(value) {
            headers.append(NAMES[(usize::from(sel) + i) % NAMES.len()], v);
        }
    }
    let extracted = trace_context::extract(&headers);
    let child = extracted.context.child();
    trace_context::inject(&child, &mut headers);
    let back = trace_context::extract(&headers);
    assert_eq!(back.malformed, None);
    assert_eq!(back.context.ids, child.ids);
    assert_eq!(back.context.sampling, child.sampling);
});
