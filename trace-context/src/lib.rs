//! The tracemesh trace-context codec: B3 (multi-header and single `b3`) and W3C
//! `traceparent`/`tracestate`, read into one [`TraceContext`] and written back out.
//!
//! Extraction never allocates (header values are parsed in place) and never panics on input;
//! anything malformed is dropped and reported so the proxy can count it (a repeated
//! `tracestate`, the one exception, is combined into one list). Injection writes every format
//! the [`Propagation`] names and replaces every other trace header, so nothing stale is left
//! behind for the next hop.

mod b3;
mod context;
mod id;
mod inject;
mod propagation;
mod sampler;
mod scan;
mod tracestate;
mod w3c;

pub use context::{Extracted, Format, Malformed, Sampling, SpanIds, TraceContext};
pub use id::{HexBuf, SpanId, TraceId};
pub use inject::{inject, inject_as, propagate, propagate_as};
pub use propagation::Propagation;
pub use sampler::sampled_at;

/// Header names this crate reads and writes.
pub mod headers {
    pub use crate::b3::{B3, FLAGS, PARENT_SPAN_ID, SAMPLED, SPAN_ID, TRACE_ID};
    pub use crate::w3c::{TRACEPARENT, TRACESTATE};
}

use b3::Parse;
use http::HeaderMap;
use scan::TraceHeaders;

/// Reads the caller's context. Precedence follows brave: the single `b3` header wins, then
/// `x-b3-*`, then `traceparent`; a malformed format is skipped (and reported) so the next
/// well-formed one is used. With nothing usable, only a valid sampling decision is kept.
///
/// `tracestate` is kept whichever format wins, as long as a well-formed `traceparent` came
/// with it (the W3C spec reads it only then): an app that sends both B3 and W3C headers keeps
/// its vendors' state. Several `tracestate` headers are combined and cleaned (see
/// [`tracestate`]).
pub fn extract(headers: &HeaderMap) -> Extracted {
    extract_from(&TraceHeaders::scan(headers))
}

/// [`extract`] from trace headers already found.
fn extract_from(found: &TraceHeaders<'_>) -> Extracted {
    let mut extracted = winner(found);
    if extracted.context.ids.is_some()
        && found.present(scan::Slot::TraceState)
        && w3c::is_valid(found)
    {
        extracted.context.tracestate = tracestate::combine(found.tracestate_values());
    }
    extracted
}

/// The context of the first well-formed format, without `tracestate`.
fn winner(found: &TraceHeaders<'_>) -> Extracted {
    type Parser = fn(&TraceHeaders<'_>) -> Parse;
    const FORMATS: [(Format, Parser); 3] = [
        (Format::B3Single, b3::parse_single),
        (Format::B3Multi, b3::parse_multi),
        (Format::TraceParent, w3c::parse),
    ];
    let mut malformed = None;
    let mut sampling = Sampling::Deferred;
    for (format, parse) in FORMATS {
        match parse(found) {
            Parse::Absent => {}
            Parse::Valid(context, dropped) => {
                return Extracted {
                    context,
                    format,
                    malformed: malformed.or(dropped),
                };
            }
            Parse::Malformed(why, kept) => {
                malformed = malformed.or(Some(why));
                if sampling == Sampling::Deferred {
                    sampling = kept;
                }
            }
        }
    }
    Extracted {
        context: TraceContext {
            ids: None,
            sampling,
            tracestate: None,
        },
        format: Format::None,
        malformed,
    }
}

#[cfg(test)]
mod tests;
