//! What can go wrong between the proxy and an upstream, named by what it means to the client.

use std::net::SocketAddr;

/// Why the proxy could not open a connection to the destination.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// The upstream refused or could not be reached: HTTP 502, TCP reset.
    #[error("upstream {addr} unreachable: {source}")]
    Unreachable {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    /// No answer within the connect timeout: HTTP 504.
    #[error("upstream {0} connect timeout")]
    Timeout(SocketAddr),
    /// The destination is one of the proxy's own listeners: connecting would loop.
    #[error("destination {0} is the proxy itself")]
    Loop(SocketAddr),
    /// The destination is not an address the proxy can connect to.
    #[error("invalid upstream address {0:?}")]
    BadAddress(String),
    /// `spec.sidecar.maxConnectionsPerDestination` connections are open already: HTTP 503
    /// (Envoy's circuit-breaker overflow), TCP reset.
    #[error("upstream {0} has reached the connection limit")]
    Limit(SocketAddr),
    /// A host name of a static route or forward-proxy request did not resolve.
    #[error("cannot resolve {host}: {reason}")]
    Resolve { host: String, reason: String },
}

impl ConnectError {
    /// The HTTP status a client gets when this stops its request.
    pub fn status(&self) -> http::StatusCode {
        match self {
            ConnectError::Timeout(_) => http::StatusCode::GATEWAY_TIMEOUT,
            ConnectError::Limit(_) => http::StatusCode::SERVICE_UNAVAILABLE,
            _ => http::StatusCode::BAD_GATEWAY,
        }
    }
}

/// Why `mesh-proxy run` could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot bind {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("invalid route {0:?}: expected LISTEN=TARGET, e.g. 0.0.0.0:9080=127.0.0.1:8080")]
    Route(String),
    #[error("config: {0}")]
    Config(String),
}
