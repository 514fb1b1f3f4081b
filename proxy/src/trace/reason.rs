//! Why a span is an error when the proxy, not the upstream's status, decided it.
//!
//! A closed set of short names, so the `error` tag (Zipkin) and `error.type` (OTLP) stay
//! low-cardinality: a trace backend can group and count them, and no peer-controlled text
//! (an error message with an address, a path) ever becomes a tag value. The names follow
//! Envoy's response flags in spirit (`UC`, `UF`, `UT`, `DC`...), spelled out.

use std::fmt;

/// What ended a request that did not complete normally.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ErrorReason {
    /// The client left before the exchange completed: it closed or reset its connection (or
    /// its HTTP/2 stream) while the request was waiting for the upstream, while its request
    /// body was still streaming, or before the response body was all delivered.
    DownstreamCancelled,
    /// The upstream broke off its response body: it reset the stream or closed the connection
    /// after the response head.
    UpstreamReset,
    /// The upstream closed or reset the connection before sending a response head.
    UpstreamClosed,
    /// No response head within the sidecar's response timeout.
    Timeout,
    /// The upstream could not be reached: refused, unreachable, connect timeout, or a
    /// destination that is the proxy itself.
    ConnectFailed,
    /// The per-destination cap on upstream connections was reached.
    ConnectionLimit,
    /// The proxy refused the request itself (a request target it cannot forward).
    InvalidRequest,
}

impl ErrorReason {
    /// Every reason, for documentation and tests.
    pub const ALL: [ErrorReason; 7] = [
        ErrorReason::DownstreamCancelled,
        ErrorReason::UpstreamReset,
        ErrorReason::UpstreamClosed,
        ErrorReason::Timeout,
        ErrorReason::ConnectFailed,
        ErrorReason::ConnectionLimit,
        ErrorReason::InvalidRequest,
    ];

    /// The name exported as the Zipkin `error` tag and the OTLP `error.type` and status
    /// message.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorReason::DownstreamCancelled => "downstream_cancelled",
            ErrorReason::UpstreamReset => "upstream_reset",
            ErrorReason::UpstreamClosed => "upstream_closed",
            ErrorReason::Timeout => "timeout",
            ErrorReason::ConnectFailed => "connect_failed",
            ErrorReason::ConnectionLimit => "connection_limit",
            ErrorReason::InvalidRequest => "invalid_request",
        }
    }
}

impl fmt::Display for ErrorReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_short_distinct_snake_case() {
        let names: std::collections::BTreeSet<_> =
            ErrorReason::ALL.iter().map(|r| r.as_str()).collect();
        assert_eq!(names.len(), ErrorReason::ALL.len());
        for n in names {
            assert!(n.len() <= 24, "{n}");
            assert!(
                n.bytes().all(|b| b.is_ascii_lowercase() || b == b'_'),
                "{n}"
            );
        }
    }
}
