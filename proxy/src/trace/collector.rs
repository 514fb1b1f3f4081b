//! Which collector a tracing block points at: the identity of an exporter.
//!
//! Two blocks that differ only in what the data path reads (`sampledFraction`, and whatever else
//! shapes spans rather than where they go) share one exporter, so changing the sampling rate
//! never builds a new export thread, runtime and connection.

use mesh_config::{Protocol, Tracing};

/// Where spans go and how they are written. For OTLP/gRPC the `endpoint` path is not part of
/// it: the gRPC method path is fixed, so a changed `endpoint` changes nothing on the wire.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Collector {
    pub protocol: Protocol,
    pub address: String,
    pub port: u16,
    pub endpoint: String,
}

impl Collector {
    pub fn of(config: &Tracing) -> Self {
        Self {
            protocol: config.protocol,
            address: config.address.clone(),
            port: config.port,
            endpoint: match config.protocol {
                Protocol::OtlpGrpc => String::new(),
                Protocol::Zipkin | Protocol::OtlpHttp => config.endpoint.clone(),
            },
        }
    }

    /// The URL spans are sent to: `http://host:port/endpoint`, or `http://host:port` for gRPC.
    pub fn url(&self) -> String {
        let host = if self.address.contains(':') && !self.address.starts_with('[') {
            format!("[{}]", self.address) // a bare IPv6 literal
        } else {
            self.address.clone()
        };
        format!("http://{host}:{}{}", self.port, self.endpoint)
    }
}

impl std::fmt::Display for Collector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.protocol, self.url())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tracing(protocol: Protocol, address: &str) -> Tracing {
        Tracing {
            enable: true,
            address: address.into(),
            port: 4317,
            endpoint: "/v1/traces".into(),
            protocol,
            ..Tracing::default()
        }
    }

    #[test]
    fn urls_per_protocol() {
        let url = |p, a| Collector::of(&tracing(p, a)).url();
        assert_eq!(
            url(Protocol::OtlpHttp, "otel"),
            "http://otel:4317/v1/traces"
        );
        assert_eq!(url(Protocol::OtlpGrpc, "otel"), "http://otel:4317");
        assert_eq!(url(Protocol::Zipkin, "::1"), "http://[::1]:4317/v1/traces");
    }

    #[test]
    fn sampling_is_not_part_of_the_collector_but_the_endpoint_is_unless_grpc() {
        let a = tracing(Protocol::Zipkin, "zipkin");
        let mut b = a.clone();
        b.sampled_fraction = 0.25;
        assert_eq!(Collector::of(&a), Collector::of(&b));
        b.endpoint = "/other".into();
        assert_ne!(Collector::of(&a), Collector::of(&b));
        let grpc = tracing(Protocol::OtlpGrpc, "otel");
        let mut other = grpc.clone();
        other.endpoint = "/ignored".into();
        assert_eq!(Collector::of(&grpc), Collector::of(&other));
    }
}
