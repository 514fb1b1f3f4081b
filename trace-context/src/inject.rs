//! Writing a context onto a request for the next hop.

use std::cell::RefCell;

use bytes::BytesMut;
use http::header::{HeaderMap, HeaderValue};

use crate::context::{Extracted, Sampling, TraceContext};
use crate::id::HexBuf;
use crate::propagation::Propagation;
use crate::scan::{Slot, TraceHeaders, SLOTS};

/// [`inject_as`] with the default formats (B3 multi-header and `traceparent`).
pub fn inject(ctx: &TraceContext, headers: &mut HeaderMap) {
    inject_as(ctx, Propagation::default(), headers)
}

/// Writes `ctx` in every format `propagation` names (`x-b3-*`, `traceparent` with
/// `tracestate`), plus the single `b3` header when the request carried it, and removes every
/// other trace header. Every trace header that leaves therefore describes the same context:
/// an app reading any one format sees this hop's span.
///
/// A header already present once is rewritten in place (left alone when its value is already
/// right, as the trace id and sampling decision usually are); only missing headers are
/// inserted and only stale or repeated ones removed, each a hashed operation on the map.
pub fn inject_as(ctx: &TraceContext, propagation: Propagation, headers: &mut HeaderMap) {
    let mut found = Found::scan(headers);
    let mut wanted = Wanted::new(ctx, propagation, found.count[Slot::B3.index()] > 0);
    found.rewrite_in_place(&mut wanted);
    let count = found.count;
    insert_and_remove(headers, &count, &mut wanted);
}

/// The trace headers of a request, found in one pass: the first value of each, writable, and
/// how many times each occurs.
pub(crate) struct Found<'a> {
    first: [Option<&'a mut HeaderValue>; SLOTS],
    count: [u8; SLOTS],
    /// `tracestate` values after the first: more of one list (empty, so free, when none).
    more_tracestate: Vec<HeaderValue>,
}

impl<'a> Found<'a> {
    pub(crate) fn scan(headers: &'a mut HeaderMap) -> Self {
        let mut found = Found {
            first: Default::default(),
            count: [0; SLOTS],
            more_tracestate: Vec::new(),
        };
        for (name, value) in headers.iter_mut() {
            let Some(slot) = Slot::of(name) else { continue };
            let seen = &mut found.count[slot.index()];
            *seen = seen.saturating_add(1);
            if *seen == 1 {
                found.first[slot.index()] = Some(value);
            } else if slot == Slot::TraceState {
                found.more_tracestate.push(value.clone());
            }
        }
        found
    }

    /// A read-only view, for extraction.
    pub(crate) fn view(&self) -> TraceHeaders<'_> {
        TraceHeaders::from_first(
            self.first.each_ref().map(|v| v.as_deref()),
            self.more_tracestate.clone(),
        )
    }

    /// Overwrites the first value of every present header that is wanted and differs.
    fn rewrite_in_place(&mut self, wanted: &mut Wanted<'_>) {
        for slot in Slot::ALL {
            let Some(value) = self.first[slot.index()].as_deref_mut() else {
                continue;
            };
            if let Some(want) = wanted.get(slot) {
                if value.as_bytes() != want.as_bytes() {
                    *value = want.to_value();
                }
            }
        }
    }
}

/// [`propagate_as`] with the default formats.
pub fn propagate(
    headers: &mut HeaderMap,
    next: impl FnOnce(&Extracted) -> TraceContext,
) -> (Extracted, TraceContext) {
    propagate_as(headers, Propagation::default(), next)
}

/// Extracts the caller's context and writes the one `next` chooses, in one pass over the
/// headers (extraction and injection both need to find the trace headers): the same result as
/// [`crate::extract`] followed by [`inject_as`]. Returns what was extracted and what was sent.
pub fn propagate_as(
    headers: &mut HeaderMap,
    propagation: Propagation,
    next: impl FnOnce(&Extracted) -> TraceContext,
) -> (Extracted, TraceContext) {
    let mut found = Found::scan(headers);
    let extracted = crate::extract_from(&found.view());
    let sent = next(&extracted);
    let mut wanted = Wanted::new(&sent, propagation, found.count[Slot::B3.index()] > 0);
    found.rewrite_in_place(&mut wanted);
    let count = found.count;
    insert_and_remove(headers, &count, &mut wanted);
    (extracted, sent)
}

/// Inserts the wanted headers that are missing, replaces repeated ones, and removes the ones
/// not wanted; headers present once were rewritten in place already.
fn insert_and_remove(headers: &mut HeaderMap, count: &[u8; SLOTS], wanted: &mut Wanted<'_>) {
    for slot in Slot::ALL {
        match (wanted.get(slot), count[slot.index()]) {
            // Written in place, or rightly absent.
            (Some(_), 1) | (None, 0) => {}
            (Some(want), _) => {
                // `insert` replaces every value of a repeated header.
                headers.insert(slot.name(), want.to_value());
            }
            (None, _) => {
                headers.remove(slot.name());
            }
        }
    }
}

/// What each trace header should say downstream, `None` for "not sent". The ids are encoded
/// once up front; the `b3` and `traceparent` forms when first asked for.
struct Wanted<'a> {
    ctx: &'a TraceContext,
    propagation: Propagation,
    /// The request carried `b3`, so it is written too.
    b3_single: bool,
    trace_id: Option<HexBuf<32>>,
    span_id: Option<HexBuf<16>>,
    parent_id: Option<HexBuf<16>>,
    b3: Option<Option<Wire>>,
    traceparent: Option<Option<Wire>>,
}

impl<'a> Wanted<'a> {
    fn new(ctx: &'a TraceContext, propagation: Propagation, b3_single: bool) -> Self {
        let ids = ctx.ids.as_ref();
        Self {
            ctx,
            propagation,
            b3_single,
            trace_id: ids.map(|ids| ids.trace_id.encode()),
            span_id: ids.map(|ids| ids.span_id.encode()),
            parent_id: ids.and_then(|ids| ids.parent_id).map(|p| p.encode()),
            b3: None,
            traceparent: None,
        }
    }

    fn get(&mut self, slot: Slot) -> Option<Want<'_>> {
        let ctx = self.ctx;
        let written = match slot {
            Slot::B3 => self.b3_single,
            Slot::TraceParent | Slot::TraceState => self.propagation.trace_context,
            Slot::TraceId | Slot::SpanId | Slot::ParentSpanId | Slot::Sampled | Slot::Flags => {
                self.propagation.b3_multi
            }
        };
        if !written {
            return None;
        }
        match slot {
            Slot::TraceId => self.trace_id.as_ref().map(|h| Want::Bytes(h.as_bytes())),
            Slot::SpanId => self.span_id.as_ref().map(|h| Want::Bytes(h.as_bytes())),
            Slot::ParentSpanId => self.parent_id.as_ref().map(|h| Want::Bytes(h.as_bytes())),
            Slot::Sampled => match ctx.sampling {
                // Debug implies sampled, and the B3 spec says not to send both. Envoy's Zipkin
                // tracer (Istio's sidecar) reads no `x-b3-flags`, only `x-b3-sampled`: without
                // it, an Envoy downstream falls back to its own sampling rate (1% in Istio) and
                // drops the debug trace. Every B3 reader takes the flag first, so both go.
                Sampling::Sampled | Sampling::Debug => Some(Want::Static("1")),
                Sampling::NotSampled => Some(Want::Static("0")),
                Sampling::Deferred => None,
            },
            Slot::Flags => (ctx.sampling == Sampling::Debug).then_some(Want::Static("1")),
            Slot::B3 => {
                let hex = (&self.trace_id, &self.span_id, &self.parent_id);
                self.b3
                    .get_or_insert_with(|| single_b3(ctx, hex))
                    .as_ref()
                    .map(|w| Want::Bytes(w.as_bytes()))
            }
            Slot::TraceParent => {
                let hex = (&self.trace_id, &self.span_id);
                self.traceparent
                    .get_or_insert_with(|| traceparent(ctx, hex))
                    .as_ref()
                    .map(|w| Want::Bytes(w.as_bytes()))
            }
            Slot::TraceState => ctx.ids.and(ctx.tracestate.as_ref()).map(Want::Header),
        }
    }
}

/// A wanted header value, borrowed until it has to become a `HeaderValue`: a header that is
/// already right costs a comparison and no allocation.
#[derive(Clone, Copy)]
enum Want<'a> {
    Bytes(&'a [u8]),
    Static(&'static str),
    Header(&'a HeaderValue),
}

impl Want<'_> {
    fn as_bytes(&self) -> &[u8] {
        match self {
            Want::Bytes(b) => b,
            Want::Static(s) => s.as_bytes(),
            Want::Header(v) => v.as_bytes(),
        }
    }

    fn to_value(self) -> HeaderValue {
        match self {
            Want::Bytes(b) => value(b),
            Want::Static(s) => HeaderValue::from_static(s),
            Want::Header(v) => v.clone(),
        }
    }
}

/// A header value built on the stack: at most 68 bytes (the longest `b3` form).
struct Wire {
    bytes: [u8; 68],
    len: usize,
}

impl Wire {
    fn new() -> Self {
        Self {
            bytes: [0; 68],
            len: 0,
        }
    }

    fn push(&mut self, bytes: &[u8]) {
        let end = (self.len + bytes.len()).min(self.bytes.len());
        self.bytes[self.len..end].copy_from_slice(&bytes[..end - self.len]);
        self.len = end;
    }

    fn as_bytes(&self) -> &[u8] {
        &self.bytes[..self.len]
    }
}

/// `00-{trace}-{span}-{flags}`, the trace id widened to 128 bits (a 64-bit id's high half is
/// zero). Built from the ids [`Wanted::new`] encoded already, so no id is encoded twice.
fn traceparent(
    ctx: &TraceContext,
    (trace_id, span_id): (&Option<HexBuf<32>>, &Option<HexBuf<16>>),
) -> Option<Wire> {
    let (Some(trace_id), Some(span_id)) = (trace_id, span_id) else {
        return None;
    };
    let mut w = Wire::new();
    w.push(b"00-");
    if trace_id.as_bytes().len() == 16 {
        w.push(b"0000000000000000");
    }
    w.push(trace_id.as_bytes());
    w.push(b"-");
    w.push(span_id.as_bytes());
    let sampled = matches!(ctx.sampling, Sampling::Sampled | Sampling::Debug);
    w.push(if sampled { b"-01" } else { b"-00" });
    Some(w)
}

/// `{trace}-{span}[-{flag}[-{parent}]]`, or the flag alone without ids, from the ids
/// [`Wanted::new`] encoded.
fn single_b3(
    ctx: &TraceContext,
    (trace_id, span_id, parent_id): (
        &Option<HexBuf<32>>,
        &Option<HexBuf<16>>,
        &Option<HexBuf<16>>,
    ),
) -> Option<Wire> {
    let flag: &[u8] = match ctx.sampling {
        Sampling::Deferred => b"",
        Sampling::Sampled => b"1",
        Sampling::NotSampled => b"0",
        Sampling::Debug => b"d",
    };
    let mut w = Wire::new();
    let (Some(trace_id), Some(span_id)) = (trace_id, span_id) else {
        w.push(flag);
        return (!flag.is_empty()).then_some(w);
    };
    w.push(trace_id.as_bytes());
    w.push(b"-");
    w.push(span_id.as_bytes());
    if !flag.is_empty() {
        w.push(b"-");
        w.push(flag);
        if let Some(parent) = parent_id {
            w.push(b"-");
            w.push(parent.as_bytes());
        }
    }
    Some(w)
}

/// A header value for our own hex and dashes (so always valid), cut from a per-thread buffer:
/// values share one allocation, as hyper's parsed headers share the read buffer, so writing a
/// request's ids allocates nothing of its own. A buffer is freed with the last value cut from it.
fn value(bytes: &[u8]) -> HeaderValue {
    thread_local! {
        static SLAB: RefCell<BytesMut> = RefCell::new(BytesMut::new());
    }
    SLAB.with(|slab| {
        let mut slab = slab.borrow_mut();
        if slab.capacity() < bytes.len() {
            *slab = BytesMut::with_capacity(SLAB_SIZE.max(bytes.len()));
        }
        slab.extend_from_slice(bytes);
        HeaderValue::from_maybe_shared(slab.split().freeze())
            .unwrap_or_else(|_| HeaderValue::from_static(""))
    })
}

/// Room for about a hundred requests' ids per allocation.
const SLAB_SIZE: usize = 4096;
