//! Every trace header of a request, found in one pass over its headers.
//!
//! A request carries a handful of headers and up to eight of them may be trace headers. One
//! walk that compares names by length and bytes is several times cheaper than a hashed lookup
//! (or removal) per trace header name, and extraction and injection run on every request.

use http::header::{HeaderMap, HeaderName, HeaderValue};

use crate::b3::{B3, FLAGS, PARENT_SPAN_ID, SAMPLED, SPAN_ID, TRACE_ID};
use crate::w3c::{TRACEPARENT, TRACESTATE};

/// The trace headers this crate reads or writes, as indexes into per-header arrays.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Slot {
    B3,
    TraceId,
    SpanId,
    ParentSpanId,
    Sampled,
    Flags,
    TraceParent,
    TraceState,
}

pub(crate) const SLOTS: usize = 8;

impl Slot {
    pub(crate) const ALL: [Slot; SLOTS] = [
        Slot::B3,
        Slot::TraceId,
        Slot::SpanId,
        Slot::ParentSpanId,
        Slot::Sampled,
        Slot::Flags,
        Slot::TraceParent,
        Slot::TraceState,
    ];

    /// The slot of a header name, if it is a trace header. `HeaderName`s are lower case.
    pub(crate) fn of(name: &HeaderName) -> Option<Slot> {
        match name.as_str() {
            "b3" => Some(Slot::B3),
            "x-b3-traceid" => Some(Slot::TraceId),
            "x-b3-spanid" => Some(Slot::SpanId),
            "x-b3-parentspanid" => Some(Slot::ParentSpanId),
            "x-b3-sampled" => Some(Slot::Sampled),
            "x-b3-flags" => Some(Slot::Flags),
            "traceparent" => Some(Slot::TraceParent),
            "tracestate" => Some(Slot::TraceState),
            _ => None,
        }
    }

    pub(crate) fn name(self) -> HeaderName {
        match self {
            Slot::B3 => B3,
            Slot::TraceId => TRACE_ID,
            Slot::SpanId => SPAN_ID,
            Slot::ParentSpanId => PARENT_SPAN_ID,
            Slot::Sampled => SAMPLED,
            Slot::Flags => FLAGS,
            Slot::TraceParent => TRACEPARENT,
            Slot::TraceState => TRACESTATE,
        }
    }

    pub(crate) fn index(self) -> usize {
        self as usize
    }
}

/// The first value of each trace header a request carries (`HeaderMap` keeps arrival order,
/// and the first of a repeated header wins), and the later `tracestate` values, which are not
/// repeats but more of one list.
#[derive(Default)]
pub(crate) struct TraceHeaders<'a> {
    first: [Option<&'a HeaderValue>; SLOTS],
    /// Empty (no allocation) unless `tracestate` came more than once.
    more_tracestate: Vec<HeaderValue>,
}

impl<'a> TraceHeaders<'a> {
    pub(crate) fn scan(headers: &'a HeaderMap) -> Self {
        let mut found = Self::default();
        for (name, value) in headers {
            if let Some(slot) = Slot::of(name) {
                let first = &mut found.first[slot.index()];
                if first.is_some() && slot == Slot::TraceState {
                    found.more_tracestate.push(value.clone());
                }
                first.get_or_insert(value);
            }
        }
        found
    }

    pub(crate) fn from_first(
        first: [Option<&'a HeaderValue>; SLOTS],
        more_tracestate: Vec<HeaderValue>,
    ) -> Self {
        Self {
            first,
            more_tracestate,
        }
    }

    /// Every `tracestate` value, in arrival order.
    pub(crate) fn tracestate_values(&self) -> impl Iterator<Item = &HeaderValue> {
        self.first[Slot::TraceState.index()]
            .into_iter()
            .chain(&self.more_tracestate)
    }

    /// The header's first value as bytes. An empty value counts as absent: proxies and
    /// templating often emit empty headers.
    pub(crate) fn get(&self, slot: Slot) -> Option<&'a [u8]> {
        self.first[slot.index()]
            .map(HeaderValue::as_bytes)
            .filter(|v| !v.is_empty())
    }

    /// Whether the header came at all, empty or not.
    pub(crate) fn present(&self, slot: Slot) -> bool {
        self.first[slot.index()].is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_slot_names_itself() {
        for slot in Slot::ALL {
            assert_eq!(Slot::of(&slot.name()), Some(slot));
        }
        assert_eq!(Slot::of(&http::header::HOST), None);
        assert_eq!(
            Slot::of(&HeaderName::from_static("x-b3-traceid-extra")),
            None
        );
    }

    #[test]
    fn first_value_wins_and_empty_is_absent() {
        let mut h = HeaderMap::new();
        h.append(TRACE_ID, HeaderValue::from_static("a"));
        h.append(TRACE_ID, HeaderValue::from_static("b"));
        h.append(SAMPLED, HeaderValue::from_static(""));
        h.append(SAMPLED, HeaderValue::from_static("1"));
        let found = TraceHeaders::scan(&h);
        assert_eq!(found.get(Slot::TraceId), Some(&b"a"[..]));
        assert_eq!(found.get(Slot::Sampled), None);
        assert!(found.present(Slot::Sampled));
        assert_eq!(found.get(Slot::SpanId), None);
    }
}
