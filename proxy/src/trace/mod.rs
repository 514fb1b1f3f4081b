//! Tracing built into the data path: the one interface the HTTP proxy calls.
//!
//! The HTTP path calls [`Tracer::start`] once per request, before forwarding; it rewrites the
//! request's trace-context headers in place (so the next hop sees this hop's span) and returns
//! an [`ActiveSpan`] that is finished when the response is known. An unsampled or disabled
//! request gets an inert `ActiveSpan` and costs no allocation.
//!
//! (Interface stub: the codec, span building, export and live reload land behind it.)

use std::net::SocketAddr;

/// Which side of the sidecar the request crossed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    /// Arrived from the network for the local app: a SERVER span.
    Inbound,
    /// Left the local app for the network: a CLIENT span.
    Outbound,
}

/// Who this sidecar is, for `localEndpoint.serviceName` (`<service>.<namespace>`).
#[derive(Clone, Debug, Default)]
pub struct Identity {
    pub service: String,
    pub namespace: String,
    pub pod_ip: Option<std::net::IpAddr>,
}

/// Cheap to clone; shared by every connection.
#[derive(Clone, Debug, Default)]
pub struct Tracer {}

impl Tracer {
    /// A tracer that never records (tracing disabled).
    pub fn disabled() -> Self {
        Self {}
    }

    /// Called once per HTTP request before it is forwarded. `peer` is the downstream client,
    /// `upstream` the address the request is forwarded to.
    pub fn start(
        &self,
        _direction: Direction,
        _request: &mut http::request::Parts,
        _peer: SocketAddr,
        _upstream: SocketAddr,
    ) -> ActiveSpan {
        ActiveSpan {}
    }
}

/// What the proxy learned about a request, reported when its span ends.
#[derive(Clone, Debug, Default)]
pub struct Outcome {
    pub status: Option<http::StatusCode>,
    /// Set when the proxy failed the request itself (upstream refused, timeout...).
    pub error: Option<String>,
    pub request_size: u64,
    pub response_size: u64,
}

/// A span in flight. Dropping it without `finish` records nothing.
#[derive(Debug, Default)]
pub struct ActiveSpan {}

impl ActiveSpan {
    /// Whether this request is recorded; the proxy may skip byte counting when it is not.
    pub fn is_recording(&self) -> bool {
        false
    }

    /// Ends the span (and queues it for export when recording). Never blocks.
    pub fn finish(self, _outcome: Outcome) {}
}
