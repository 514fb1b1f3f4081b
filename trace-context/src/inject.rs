//! Writing a context onto a request for the next hop.

use http::header::{HeaderMap, HeaderValue};

use crate::context::{Sampling, TraceContext};
use crate::scan::{Slot, SLOTS};

/// Writes `ctx` as `x-b3-*` and removes every other trace header, then rewrites `b3` and
/// `traceparent` when the request carried them (so apps reading those formats see this
/// hop's span too). Every trace header that leaves therefore describes the same context.
/// `tracestate` is kept only alongside a rewritten `traceparent`.
///
/// A header already present once is rewritten in place (left alone when its value is already
/// right, as the trace id and sampling decision usually are); only missing headers are
/// inserted and only stale or repeated ones removed, each a hashed operation on the map.
pub fn inject(ctx: &TraceContext, headers: &mut HeaderMap) {
    let mut wanted = Wanted::new(ctx);
    let mut count = [0u8; SLOTS];
    for (name, value) in headers.iter_mut() {
        let Some(slot) = Slot::of(name) else { continue };
        let seen = &mut count[slot.index()];
        *seen = seen.saturating_add(1);
        if *seen == 1 {
            if let Some(want) = wanted.get(slot) {
                if value.as_bytes() != want.as_bytes() {
                    *value = want.to_value();
                }
            }
        }
    }

    let present = |slot: Slot| count[slot.index()] > 0;
    for slot in Slot::ALL {
        // `b3` and `traceparent` go on only where the app used them, `tracestate` with the latter.
        let emitted = match slot {
            Slot::B3 => present(Slot::B3),
            Slot::TraceParent | Slot::TraceState => present(Slot::TraceParent),
            _ => true,
        };
        let want = if emitted { wanted.get(slot) } else { None };
        match (want, count[slot.index()]) {
            // Written in place above, or rightly absent.
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

/// What each trace header should say downstream, `None` for "not sent". The `b3` and
/// `traceparent` forms are built only when the request carries them.
struct Wanted<'a> {
    ctx: &'a TraceContext,
    values: [Option<Wire<'a>>; SLOTS],
    built: [bool; SLOTS],
}

impl<'a> Wanted<'a> {
    fn new(ctx: &'a TraceContext) -> Self {
        Self {
            ctx,
            values: Default::default(),
            built: [false; SLOTS],
        }
    }

    fn get(&mut self, slot: Slot) -> Option<&Wire<'a>> {
        let i = slot.index();
        if !self.built[i] {
            self.values[i] = Self::build(self.ctx, slot);
            self.built[i] = true;
        }
        self.values[i].as_ref()
    }

    fn build(ctx: &'a TraceContext, slot: Slot) -> Option<Wire<'a>> {
        let ids = ctx.ids.as_ref();
        match slot {
            Slot::TraceId => ids.map(|ids| Wire::bytes(ids.trace_id.encode().as_bytes())),
            Slot::SpanId => ids.map(|ids| Wire::bytes(ids.span_id.encode().as_bytes())),
            Slot::ParentSpanId => ids
                .and_then(|ids| ids.parent_id)
                .map(|parent| Wire::bytes(parent.encode().as_bytes())),
            Slot::Sampled => match ctx.sampling {
                Sampling::Sampled => Some(Wire::Static("1")),
                Sampling::NotSampled => Some(Wire::Static("0")),
                // The spec: debug implies sampled, so x-b3-sampled is not sent with it.
                Sampling::Deferred | Sampling::Debug => None,
            },
            Slot::Flags => (ctx.sampling == Sampling::Debug).then_some(Wire::Static("1")),
            Slot::B3 => single_b3(ctx),
            Slot::TraceParent => ids.map(|ids| {
                let mut buf = [0u8; 55];
                buf[..3].copy_from_slice(b"00-");
                buf[3..35].copy_from_slice(ids.trace_id.encode_128().as_bytes());
                buf[35] = b'-';
                buf[36..52].copy_from_slice(ids.span_id.encode().as_bytes());
                let sampled = matches!(ctx.sampling, Sampling::Sampled | Sampling::Debug);
                buf[52..].copy_from_slice(if sampled { b"-01" } else { b"-00" });
                Wire::bytes(&buf)
            }),
            Slot::TraceState => ids.and(ctx.tracestate.as_ref()).map(Wire::Value),
        }
    }
}

/// A header value before it is needed as a `HeaderValue`: built on the stack, so a header
/// that is already right costs a comparison and no allocation.
enum Wire<'a> {
    Static(&'static str),
    Stack { bytes: [u8; 68], len: usize },
    Value(&'a HeaderValue),
}

impl Wire<'_> {
    /// At most 68 bytes (the longest `b3` form); our own hex and dashes only.
    fn bytes(src: &[u8]) -> Self {
        let mut bytes = [0u8; 68];
        let len = src.len().min(bytes.len());
        bytes[..len].copy_from_slice(&src[..len]);
        Wire::Stack { bytes, len }
    }

    fn as_bytes(&self) -> &[u8] {
        match self {
            Wire::Static(s) => s.as_bytes(),
            Wire::Stack { bytes, len } => &bytes[..*len],
            Wire::Value(v) => v.as_bytes(),
        }
    }

    fn to_value(&self) -> HeaderValue {
        match self {
            Wire::Static(s) => HeaderValue::from_static(s),
            Wire::Stack { bytes, len } => value(&bytes[..*len]),
            Wire::Value(v) => (*v).clone(),
        }
    }
}

fn single_b3(ctx: &TraceContext) -> Option<Wire<'static>> {
    let flag: &[u8] = match ctx.sampling {
        Sampling::Deferred => b"",
        Sampling::Sampled => b"1",
        Sampling::NotSampled => b"0",
        Sampling::Debug => b"d",
    };
    let Some(ids) = &ctx.ids else {
        return (!flag.is_empty()).then(|| Wire::bytes(flag));
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
    Some(Wire::bytes(&buf[..len]))
}

/// Our own hex and dashes only, so always a valid header value.
fn value(bytes: &[u8]) -> HeaderValue {
    HeaderValue::from_bytes(bytes).unwrap_or_else(|_| HeaderValue::from_static(""))
}
