//! B3 propagation (openzipkin/b3-propagation): the multi-header form and the single `b3` header.

use http::header::HeaderName;

use crate::context::{Malformed, Sampling, SpanIds, TraceContext};
use crate::id::{SpanId, TraceId};
use crate::scan::{Slot, TraceHeaders};

pub const B3: HeaderName = HeaderName::from_static("b3");
pub const TRACE_ID: HeaderName = HeaderName::from_static("x-b3-traceid");
pub const SPAN_ID: HeaderName = HeaderName::from_static("x-b3-spanid");
pub const PARENT_SPAN_ID: HeaderName = HeaderName::from_static("x-b3-parentspanid");
pub const SAMPLED: HeaderName = HeaderName::from_static("x-b3-sampled");
pub const FLAGS: HeaderName = HeaderName::from_static("x-b3-flags");

/// One format's reading: a well-formed context, or what survived of a malformed one.
pub(crate) enum Parse {
    Absent,
    /// Usable; the second field reports a dropped part (a garbage `x-b3-sampled`).
    Valid(TraceContext, Option<Malformed>),
    /// Ids refused; a valid sampling decision, if any, is kept.
    Malformed(Malformed, Sampling),
}

/// Reads `x-b3-*`. Brave's rules where the spec is silent: `true`/`false` are accepted for
/// sampled (older tracers sent them), `x-b3-flags: 1` means debug and wins over sampled, any
/// other flags value is ignored.
pub(crate) fn parse_multi(headers: &TraceHeaders<'_>) -> Parse {
    let trace = headers.get(Slot::TraceId);
    let span = headers.get(Slot::SpanId);
    let parent = headers.get(Slot::ParentSpanId);
    let sampled = headers.get(Slot::Sampled);
    let flags = headers.get(Slot::Flags);
    if trace.is_none() && span.is_none() && parent.is_none() && sampled.is_none() && flags.is_none()
    {
        return Parse::Absent;
    }

    let (mut sampling, bad_sampled) = match sampled {
        None => (Sampling::Deferred, None),
        Some(b"1") => (Sampling::Sampled, None),
        Some(b"0") => (Sampling::NotSampled, None),
        Some(v) if v.eq_ignore_ascii_case(b"true") => (Sampling::Sampled, None),
        Some(v) if v.eq_ignore_ascii_case(b"false") => (Sampling::NotSampled, None),
        // A garbage decision is dropped (and reported), but well-formed ids still join the trace.
        Some(_) => (Sampling::Deferred, Some(Malformed::Sampled)),
    };
    if flags == Some(b"1") {
        sampling = Sampling::Debug;
    }

    match ids(trace, span, parent) {
        Ok(ids) => Parse::Valid(
            TraceContext {
                ids,
                sampling,
                tracestate: None,
            },
            bad_sampled,
        ),
        Err(why) => Parse::Malformed(why, sampling),
    }
}

/// Ids from the three id headers: all absent is fine (sampling-only or empty), a trace id
/// and a span id are required together, and each must be well-formed.
fn ids(
    trace: Option<&[u8]>,
    span: Option<&[u8]>,
    parent: Option<&[u8]>,
) -> Result<Option<SpanIds>, Malformed> {
    let (trace, span) = match (trace, span) {
        (None, None) if parent.is_none() => return Ok(None),
        (Some(t), Some(s)) => (t, s),
        _ => return Err(Malformed::IncompleteIds),
    };
    let trace_id = TraceId::parse(trace).ok_or(Malformed::TraceId)?;
    let span_id = SpanId::parse(span).ok_or(Malformed::SpanId)?;
    let parent_id = match parent {
        None => None,
        Some(p) => parent_id(p).ok_or(Malformed::ParentSpanId)?,
    };
    Ok(Some(SpanIds {
        trace_id,
        span_id,
        parent_id,
    }))
}

/// A parent of all zeros is what some old instrumentations send for "root": accept it as no
/// parent rather than refusing the whole context.
fn parent_id(hex: &[u8]) -> Option<Option<SpanId>> {
    if hex.len() == 16 && hex.iter().all(|&c| c == b'0') {
        return Some(None);
    }
    SpanId::parse(hex).map(Some)
}

/// Reads the single `b3` header: `{trace}-{span}[-{sampling}[-{parent}]]` or `{sampling}`
/// alone, sampling being `0`, `1` or `d`.
pub(crate) fn parse_single(headers: &TraceHeaders<'_>) -> Parse {
    let Some(value) = headers.get(Slot::B3) else {
        return Parse::Absent;
    };
    match parse_single_value(value) {
        Some(ctx) => Parse::Valid(ctx, None),
        None => Parse::Malformed(Malformed::B3Single, Sampling::Deferred),
    }
}

fn sampling_char(v: &[u8]) -> Option<Sampling> {
    match v {
        b"1" => Some(Sampling::Sampled),
        b"0" => Some(Sampling::NotSampled),
        b"d" => Some(Sampling::Debug),
        _ => None,
    }
}

fn parse_single_value(value: &[u8]) -> Option<TraceContext> {
    if value.len() == 1 {
        return Some(TraceContext {
            ids: None,
            sampling: sampling_char(value)?,
            tracestate: None,
        });
    }
    let mut fields = value.split(|&c| c == b'-');
    let trace_id = TraceId::parse(fields.next()?)?;
    let span_id = SpanId::parse(fields.next()?)?;
    let sampling = match fields.next() {
        None => Sampling::Deferred,
        Some(s) => sampling_char(s)?,
    };
    let parent_id = match fields.next() {
        None => None,
        Some(p) => parent_id(p)?,
    };
    if fields.next().is_some() {
        return None;
    }
    Some(TraceContext {
        ids: Some(SpanIds {
            trace_id,
            span_id,
            parent_id,
        }),
        sampling,
        tracestate: None,
    })
}
