//! Which formats a hop writes for the next one.

/// The formats written on every hop. Reading is always liberal (every format is understood);
/// writing both by default is what lets an app that only knows one of them join the trace: a
/// B3-only app (Zipkin's brave, Envoy) and a W3C-only app (OpenTelemetry's default propagator)
/// behind the same sidecars see one context. The single `b3` header is not listed: it is
/// written when the request carried it, whatever this says, since an app that sent it reads it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Propagation {
    /// `x-b3-traceid`, `x-b3-spanid`, `x-b3-parentspanid`, `x-b3-sampled`, `x-b3-flags`.
    pub b3_multi: bool,
    /// `traceparent`, with `tracestate` when the caller sent one.
    pub trace_context: bool,
}

impl Default for Propagation {
    /// Both formats: the contract's default.
    fn default() -> Self {
        Self {
            b3_multi: true,
            trace_context: true,
        }
    }
}
