//! Writing a context onto a request for the next hop.

use http::header::{HeaderMap, HeaderValue};

use crate::b3::{B3, FLAGS, PARENT_SPAN_ID, SAMPLED, SPAN_ID, TRACE_ID};
use crate::context::{Sampling, TraceContext};
use crate::w3c::{TRACEPARENT, TRACESTATE};

/// Writes `ctx` as `x-b3-*` and removes every other trace header, then rewrites `b3` and
/// `traceparent` when the request carried them (so apps reading those formats see this
/// hop's span too). Every trace header that leaves therefore describes the same context.
/// `tracestate` is kept only alongside a rewritten `traceparent`.
pub fn inject(ctx: &TraceContext, headers: &mut HeaderMap) {
    let had_b3 = headers.remove(&B3).is_some();
    let had_traceparent = headers.remove(&TRACEPARENT).is_some();
    // `remove` drops every value of a repeated header too.
    for name in [
        &TRACE_ID,
        &SPAN_ID,
        &PARENT_SPAN_ID,
        &SAMPLED,
        &FLAGS,
        &TRACESTATE,
    ] {
        headers.remove(name);
    }

    if let Some(ids) = &ctx.ids {
        headers.insert(TRACE_ID, value(ids.trace_id.encode().as_bytes()));
        headers.insert(SPAN_ID, value(ids.span_id.encode().as_bytes()));
        if let Some(parent) = ids.parent_id {
            headers.insert(PARENT_SPAN_ID, value(parent.encode().as_bytes()));
        }
    }
    match ctx.sampling {
        Sampling::Deferred => {}
        Sampling::Sampled => {
            headers.insert(SAMPLED, HeaderValue::from_static("1"));
        }
        Sampling::NotSampled => {
            headers.insert(SAMPLED, HeaderValue::from_static("0"));
        }
        // The spec: debug implies sampled, so x-b3-sampled is not sent with it.
        Sampling::Debug => {
            headers.insert(FLAGS, HeaderValue::from_static("1"));
        }
    }

    if had_b3 {
        if let Some(v) = single_b3(ctx) {
            headers.insert(B3, v);
        }
    }
    if had_traceparent {
        if let Some(ids) = &ctx.ids {
            let mut buf = [0u8; 55];
            buf[..3].copy_from_slice(b"00-");
            buf[3..35].copy_from_slice(ids.trace_id.encode_128().as_bytes());
            buf[35] = b'-';
            buf[36..52].copy_from_slice(ids.span_id.encode().as_bytes());
            let sampled = matches!(ctx.sampling, Sampling::Sampled | Sampling::Debug);
            buf[52..].copy_from_slice(if sampled { b"-01" } else { b"-00" });
            headers.insert(TRACEPARENT, value(&buf));
            if let Some(state) = &ctx.tracestate {
                headers.insert(TRACESTATE, state.clone());
            }
        }
    }
}

fn single_b3(ctx: &TraceContext) -> Option<HeaderValue> {
    let flag: &[u8] = match ctx.sampling {
        Sampling::Deferred => b"",
        Sampling::Sampled => b"1",
        Sampling::NotSampled => b"0",
        Sampling::Debug => b"d",
    };
    let Some(ids) = &ctx.ids else {
        return (!flag.is_empty()).then(|| value(flag));
    };
    // 32 + 1 + 16 + 2 + 17: the longest form, on the stack.
    let mut buf = [0u8; 68];
    let mut len = 0;
    let mut push = |bytes: &[u8]| {
        buf[len..len + bytes.len()].copy_from_slice(bytes);
        len += bytes.len();
    };
    push(ids.trace_id.encode().as_bytes());
    push(b"-");
    push(ids.span_id.encode().as_bytes());
    if !flag.is_empty() {
        push(b"-");
        push(flag);
        if let Some(parent) = ids.parent_id {
            push(b"-");
            push(parent.encode().as_bytes());
        }
    }
    Some(value(&buf[..len]))
}

/// Our own hex and dashes only, so always a valid header value.
fn value(bytes: &[u8]) -> HeaderValue {
    HeaderValue::from_bytes(bytes).unwrap_or_else(|_| HeaderValue::from_static(""))
}
