//! Arbitrary bytes split into trace headers: extraction must not panic, what injection writes
//! must parse back to the same context (in every choice of formats), and the one-pass
//! `propagate_as` must agree exactly with extraction followed by `inject_as`.
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
    let mut child = extracted.context.child();

    // Undecided, `b3` cannot carry a parent (its sampling field comes first): only the ids of
    // the span itself must survive.
    let mut deferred = headers.clone();
    trace_context::inject(&child, &mut deferred);
    let back = trace_context::extract(&deferred);
    assert_eq!(back.malformed, None);
    let (sent, got) = (child.ids.expect("child ids"), back.context.ids.expect("ids"));
    assert_eq!((sent.trace_id, sent.span_id), (got.trace_id, got.span_id));

    // Decided, as the proxy always is when it injects: everything round-trips.
    if child.sampling == trace_context::Sampling::Deferred {
        child.sampling = if data.len() % 2 == 0 {
            trace_context::Sampling::Sampled
        } else {
            trace_context::Sampling::NotSampled
        };
    }
    let mut one_pass = headers.clone();
    let (seen, _) = trace_context::propagate(&mut one_pass, |_| child.clone());
    assert_eq!(seen, extracted);
    let mut both = headers.clone();
    trace_context::inject(&child, &mut both);
    assert_eq!(one_pass, both);
    let back = trace_context::extract(&both);
    assert_eq!(back.malformed, None);
    assert_eq!(back.context.ids, child.ids);
    assert_eq!(back.context.sampling, child.sampling);

    // Narrowed to one format: the same agreement, and the span itself still reaches the next
    // hop (W3C alone carries no parent, and widens a 64-bit trace id).
    let propagation = trace_context::Propagation {
        b3_multi: data.len() % 3 != 0,
        trace_context: data.len() % 3 != 1,
    };
    let mut one_pass = headers.clone();
    trace_context::propagate_as(&mut one_pass, propagation, |_| child.clone());
    trace_context::inject_as(&child, propagation, &mut headers);
    assert_eq!(one_pass, headers);
    let back = trace_context::extract(&headers);
    assert_eq!(back.malformed, None);
    let (sent, got) = (child.ids.expect("child ids"), back.context.ids.expect("ids"));
    assert_eq!((sent.trace_id.low(), sent.span_id), (got.trace_id.low(), got.span_id));
    // W3C has no debug flag: alone, it carries debug as sampled.
    assert_eq!(back.context.sampling.decision(), child.sampling.decision());
    if let Some(state) = headers.get("tracestate") {
        assert!(state.len() <= 512, "tracestate over the W3C length");
    }
});
