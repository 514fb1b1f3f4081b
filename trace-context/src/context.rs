//! The one trace context type every propagation format is read into.

use crate::id::{SpanId, TraceId};

/// The caller's sampling decision.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Sampling {
    /// No decision: this hop decides (from `sampledFraction`) and propagates it.
    #[default]
    Deferred,
    Sampled,
    NotSampled,
    /// `x-b3-flags: 1` / `b3: d`: record, whatever the sampler says.
    Debug,
}

impl Sampling {
    /// Whether a decision says "record"; `None` when deferred.
    pub fn decision(self) -> Option<bool> {
        match self {
            Sampling::Deferred => None,
            Sampling::Sampled | Sampling::Debug => Some(true),
            Sampling::NotSampled => Some(false),
        }
    }
}

/// The identifiers of one span, as propagated.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SpanIds {
    pub trace_id: TraceId,
    pub span_id: SpanId,
    /// The span's parent; `None` for a root span.
    pub parent_id: Option<SpanId>,
}

impl SpanIds {
    /// The first span of a new trace.
    pub fn new_root() -> Self {
        Self {
            trace_id: TraceId::generate(),
            span_id: SpanId::generate(),
            parent_id: None,
        }
    }

    /// A child of this span, in the same trace, with a fresh span id.
    pub fn child(&self) -> Self {
        Self {
            trace_id: self.trace_id,
            span_id: SpanId::generate(),
            parent_id: Some(self.span_id),
        }
    }
}

/// What arrived with a request (or what is sent on): ids when there are any, and a sampling
/// decision, which may exist alone (`x-b3-sampled: 0`, `b3: 0`, `b3: d`).
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct TraceContext {
    pub ids: Option<SpanIds>,
    pub sampling: Sampling,
    /// W3C `tracestate`, combined and cleaned: carried when a well-formed `traceparent` came
    /// and the caller's trace continues, whichever format won.
    pub tracestate: Option<http::HeaderValue>,
}

impl TraceContext {
    /// The context this hop's new span runs in: a child of the caller's span, or a new root
    /// when the caller sent no (valid) ids. The sampling decision and tracestate carry over.
    pub fn child(&self) -> TraceContext {
        let ids = match &self.ids {
            Some(ids) => ids.child(),
            None => SpanIds::new_root(),
        };
        TraceContext {
            ids: Some(ids),
            sampling: self.sampling,
            tracestate: self.tracestate.clone(),
        }
    }
}

/// The header format the context was read from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// Nothing usable arrived.
    None,
    B3Single,
    B3Multi,
    TraceParent,
}

/// Why a context was refused. The proxy counts these; the values are never forwarded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Malformed {
    B3Single,
    TraceId,
    SpanId,
    ParentSpanId,
    /// A trace id without a span id, or a span id without a trace id.
    IncompleteIds,
    Sampled,
    TraceParent,
}

impl Malformed {
    pub fn as_str(self) -> &'static str {
        match self {
            Malformed::B3Single => "b3",
            Malformed::TraceId => "x-b3-traceid",
            Malformed::SpanId => "x-b3-spanid",
            Malformed::ParentSpanId => "x-b3-parentspanid",
            Malformed::IncompleteIds => "incomplete-ids",
            Malformed::Sampled => "x-b3-sampled",
            Malformed::TraceParent => "traceparent",
        }
    }
}

/// The result of reading a request's headers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Extracted {
    /// What is kept: only well-formed parts.
    pub context: TraceContext,
    pub format: Format,
    /// The first problem seen, if any (the proxy counts it).
    pub malformed: Option<Malformed>,
}
