//! W3C Trace Context: `traceparent` / `tracestate`, so apps instrumented with OpenTelemetry
//! defaults join the same trace as B3 ones.

use http::header::HeaderName;

use crate::b3::Parse;
use crate::context::{Malformed, Sampling, SpanIds, TraceContext};
use crate::id::{parse_hex64, SpanId, TraceId};
use crate::scan::{Slot, TraceHeaders};

pub const TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");
pub const TRACESTATE: HeaderName = HeaderName::from_static("tracestate");

/// `00-{32 hex trace}-{16 hex parent}-{2 hex flags}`. Future versions may append fields after
/// a `-`; version `ff` is invalid. The sampled flag (bit 0) is honoured as the caller's
/// decision, as OpenTelemetry's parent-based sampler does.
pub(crate) fn parse(headers: &TraceHeaders<'_>) -> Parse {
    let Some(value) = headers.get(Slot::TraceParent) else {
        return Parse::Absent;
    };
    match parse_value(value) {
        Some((ids, sampled)) => Parse::Valid(
            TraceContext {
                ids: Some(ids),
                sampling: if sampled {
                    Sampling::Sampled
                } else {
                    Sampling::NotSampled
                },
                // Set by `extract`, whichever format wins.
                tracestate: None,
            },
            None,
        ),
        None => Parse::Malformed(Malformed::TraceParent, Sampling::Deferred),
    }
}

/// Whether a well-formed `traceparent` came: the spec reads `tracestate` only then.
pub(crate) fn is_valid(headers: &TraceHeaders<'_>) -> bool {
    headers
        .get(Slot::TraceParent)
        .is_some_and(|v| parse_value(v).is_some())
}

fn parse_value(v: &[u8]) -> Option<(SpanIds, bool)> {
    if v.len() < 55 || v[2] != b'-' || v[35] != b'-' || v[52] != b'-' {
        return None;
    }
    let version = parse_hex64(&v[..2])?;
    if version == 0xff || (version == 0 && v.len() != 55) || (v.len() > 55 && v[55] != b'-') {
        return None;
    }
    let trace_id = TraceId::parse(&v[3..35])?;
    let span_id = SpanId::parse(&v[36..52])?;
    let flags = parse_hex64(&v[53..55])?;
    Some((
        SpanIds {
            trace_id,
            span_id,
            parent_id: None,
        },
        flags & 1 == 1,
    ))
}
