//! Semantic checks on a typed `MeshConfig`: the rules that types alone cannot express
//! (ranges, CIDRs, an address when tracing is on). The parser runs these after its own type
//! checks, and code that builds a `MeshConfig` in memory calls `validate` directly.

use std::net::{IpAddr, Ipv6Addr};
use std::time::Duration as StdDuration;

use crate::{
    ConfigError, Duration, FieldError, MeshConfig, PropagationFormat, Protocol, Sidecar,
    API_VERSION, KIND, MAX_URL_TAG_LENGTH_RANGE,
};

pub(crate) const PORT_RANGE: &str = "1..=65535";
pub(crate) const PORT_MIN: u16 = 1;
pub(crate) const PORT_MAX: u16 = 65535;

impl MeshConfig {
    /// Checks every rule of the contract and reports all broken ones at once.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let problems = self.problems();
        if problems.is_empty() {
            Ok(())
        } else {
            Err(ConfigError::Invalid(problems))
        }
    }

    pub(crate) fn problems(&self) -> Vec<FieldError> {
        let mut out = Vec::new();
        if self.api_version != API_VERSION {
            out.push(FieldError::new(
                "apiVersion",
                format!("{:?} is not {API_VERSION:?}", self.api_version),
            ));
        }
        if self.kind != KIND {
            out.push(FieldError::new(
                "kind",
                format!("{:?} is not {KIND:?}", self.kind),
            ));
        }

        let t = &self.spec.observability.tracing;
        let tp = "spec.observability.tracing";
        if t.address.is_empty() {
            if t.enable {
                out.push(FieldError::new(
                    format!("{tp}.address"),
                    "must be set when tracing is enabled",
                ));
            }
        } else if let Err(msg) = check_address(&t.address) {
            out.push(FieldError::new(format!("{tp}.address"), msg));
        }
        if t.port == 0 {
            out.push(FieldError::new(
                format!("{tp}.port"),
                format!("0 is out of range {PORT_RANGE}"),
            ));
        }
        // The gRPC method path is fixed, so the endpoint is not used and not checked there.
        if t.protocol != Protocol::OtlpGrpc && !t.endpoint.starts_with('/') {
            out.push(FieldError::new(
                format!("{tp}.endpoint"),
                format!("{:?} must start with \"/\"", t.endpoint),
            ));
        }
        if !(0.0..=1.0).contains(&t.sampled_fraction) {
            out.push(FieldError::new(
                format!("{tp}.sampledFraction"),
                format!("{} is out of range 0..=1", t.sampled_fraction),
            ));
        }
        // An empty list would send the context nowhere: every app behind would start traces
        // of its own, which is tracing off by accident. `enable: false` says that on purpose.
        if t.propagation.is_empty() {
            out.push(FieldError::new(
                format!("{tp}.propagation"),
                format!(
                    "must name at least one format ({})",
                    PropagationFormat::ALL
                        .map(PropagationFormat::as_str)
                        .join(", ")
                ),
            ));
        }
        if !MAX_URL_TAG_LENGTH_RANGE.contains(&t.max_url_tag_length) {
            out.push(FieldError::new(
                format!("{tp}.maxUrlTagLength"),
                format!(
                    "{} is out of range {}..={}",
                    t.max_url_tag_length,
                    MAX_URL_TAG_LENGTH_RANGE.start(),
                    MAX_URL_TAG_LENGTH_RANGE.end()
                ),
            ));
        }

        let tr = &self.spec.traffic;
        for (name, list) in [
            ("inboundPortExclusionList", &tr.inbound_port_exclusion_list),
            (
                "outboundPortExclusionList",
                &tr.outbound_port_exclusion_list,
            ),
            ("opaquePorts", &tr.opaque_ports),
        ] {
            for (i, port) in list.iter().enumerate() {
                if *port == 0 {
                    out.push(FieldError::new(
                        format!("spec.traffic.{name}[{i}]"),
                        format!("0 is out of range {PORT_RANGE}"),
                    ));
                }
            }
        }
        for (i, cidr) in tr.outbound_ip_range_exclusion_list.iter().enumerate() {
            if let Err(msg) = parse_prefixed_cidr(cidr) {
                out.push(FieldError::new(
                    format!("spec.traffic.outboundIPRangeExclusionList[{i}]"),
                    msg,
                ));
            }
        }
        sidecar_problems(&self.spec.sidecar, &mut out);
        out
    }
}

const MS: StdDuration = StdDuration::from_millis(1);
const HOUR: StdDuration = StdDuration::from_secs(3600);
const DAY: StdDuration = StdDuration::from_secs(24 * 3600);

/// Upper bound of the connection counts: well above what one process can hold open, so a
/// larger number can only be a typo.
pub(crate) const MAX_COUNT: u32 = 1_000_000;

/// Upper bound of `http2ConnectionsPerDestination`: Envoy's default cap on connections to a
/// destination; past it, spreading streams wider buys no balance, only connections.
pub(crate) const MAX_HTTP2_CONNECTIONS: u32 = 1024;

/// Range of every `spec.sidecar` timeout, by field name. Zero is allowed only where it means
/// "off"; the upper bounds are far past any sensible value, so only typos (`"10h"` for
/// `"10s"`...) hit them. The CRD states the same ranges as CEL rules (`openapi`).
pub(crate) const DURATION_RANGES: [(&str, StdDuration, StdDuration); 8] = [
    ("headerReadTimeout", MS, HOUR),
    ("httpIdleTimeout", MS, DAY),
    ("tcpIdleTimeout", MS, DAY),
    ("http2KeepaliveInterval", StdDuration::ZERO, HOUR),
    ("http2KeepaliveTimeout", MS, HOUR),
    ("connectTimeout", MS, StdDuration::from_secs(300)),
    ("responseTimeout", StdDuration::ZERO, DAY),
    ("terminationDrainDuration", StdDuration::ZERO, HOUR),
];

fn sidecar_problems(s: &Sidecar, out: &mut Vec<FieldError>) {
    // In the order of DURATION_RANGES.
    let values: [Duration; 8] = [
        s.header_read_timeout,
        s.http_idle_timeout,
        s.tcp_idle_timeout,
        s.http2_keepalive_interval,
        s.http2_keepalive_timeout,
        s.connect_timeout,
        s.response_timeout,
        s.termination_drain_duration,
    ];
    for ((name, min, max), value) in DURATION_RANGES.into_iter().zip(values) {
        if (min..=max).contains(&value.get()) {
            continue;
        }
        out.push(FieldError::new(
            format!("spec.sidecar.{name}"),
            format!(
                "{value} is out of range {}..={}",
                Duration(min),
                Duration(max)
            ),
        ));
    }
    for (name, value) in [
        ("maxConnections", s.max_connections),
        (
            "maxConnectionsPerDestination",
            s.max_connections_per_destination,
        ),
    ] {
        if !(1..=MAX_COUNT).contains(&value) {
            out.push(FieldError::new(
                format!("spec.sidecar.{name}"),
                format!("{value} is out of range 1..={MAX_COUNT}"),
            ));
        }
    }
    let h2 = s.http2_connections_per_destination;
    if !(1..=MAX_HTTP2_CONNECTIONS).contains(&h2) {
        out.push(FieldError::new(
            "spec.sidecar.http2ConnectionsPerDestination",
            format!("{h2} is out of range 1..={MAX_HTTP2_CONNECTIONS}"),
        ));
    }
}

/// Parses `10.0.0.0/8`, `fd00::/8`, or a bare address, which means that single host
/// (`/32` or `/128`), as iptables reads it. Host bits may be set; iptables masks them.
///
/// This is the rule of flags and pod annotations; the document's exclusion list is stricter
/// (see [`parse_prefixed_cidr`]).
pub fn parse_cidr(text: &str) -> Result<(IpAddr, u8), String> {
    let (ip_text, len_text) = match text.split_once('/') {
        Some((ip, len)) => (ip, Some(len)),
        None => (text, None),
    };
    let ip: IpAddr = ip_text.parse().map_err(|_| {
        format!("{text:?} is not a valid CIDR (expected e.g. 10.0.0.0/8 or fd00::/8)")
    })?;
    let max = if ip.is_ipv4() { 32 } else { 128 };
    let len = match len_text {
        None => max,
        Some(len) => prefix_length(len, max)
            .ok_or_else(|| format!("{text:?} has an invalid prefix length (expected 0..={max})"))?,
    };
    Ok((ip, len))
}

/// A CIDR of the MeshConfig's `outboundIPRangeExclusionList`: the prefix length is required,
/// as the Kubernetes API server's schema for the field requires it (a bare IP there would
/// pass `mesh config validate` and then be refused by `kubectl apply`).
pub fn parse_prefixed_cidr(text: &str) -> Result<(IpAddr, u8), String> {
    if !text.contains('/') {
        return Err(format!(
            "{text:?} has no prefix length (write e.g. {text}/{} for one host)",
            if text.contains(':') { 128 } else { 32 }
        ));
    }
    parse_cidr(text)
}

/// A prefix length as the CRD's pattern reads it: decimal, no sign, no leading zero.
fn prefix_length(text: &str, max: u8) -> Option<u8> {
    let canonical = !text.is_empty()
        && text.bytes().all(|b| b.is_ascii_digit())
        && (text == "0" || !text.starts_with('0'));
    let n: u8 = text.parse().ok().filter(|_| canonical)?;
    (n <= max).then_some(n)
}

/// A collector address is a host name or an IP, never a URL: the scheme comes from `protocol`.
/// Brackets are for IPv6 only, as in a URL.
fn check_address(address: &str) -> Result<(), String> {
    if address.contains("://") {
        return Err(format!(
            "{address:?} must be a host name or IP, without a scheme"
        ));
    }
    if let Some(inner) = address.strip_prefix('[').and_then(|a| a.strip_suffix(']')) {
        return match inner.parse::<Ipv6Addr>() {
            Ok(_) => Ok(()),
            Err(_) => Err(format!("{address:?} is not a valid IPv6 address")),
        };
    }
    if address.parse::<Ipv6Addr>().is_ok() {
        return Ok(());
    }
    // IPv4 addresses are valid host names too.
    let bare = address;
    let host_ok = bare.len() <= 253
        && bare.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        });
    if host_ok {
        Ok(())
    } else {
        Err(format!("{address:?} is not a valid host name or IP"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid() {
        assert_eq!(MeshConfig::default().validate(), Ok(()));
    }

    #[test]
    fn reports_every_problem() {
        let mut c = MeshConfig::default();
        c.spec.observability.tracing.enable = true;
        c.spec.observability.tracing.address = String::new();
        c.spec.observability.tracing.port = 0;
        c.spec.observability.tracing.endpoint = "api".into();
        c.spec.observability.tracing.sampled_fraction = 1.5;
        c.spec.observability.tracing.propagation = vec![];
        c.spec.observability.tracing.max_url_tag_length = 8193;
        c.spec.traffic.opaque_ports.push(0);
        c.spec.traffic.outbound_ip_range_exclusion_list = vec!["10.0.0.0/33".into()];
        let err = c.validate().unwrap_err();
        let paths: Vec<_> = err.problems().iter().map(|p| p.path.as_str()).collect();
        assert_eq!(
            paths,
            [
                "spec.observability.tracing.address",
                "spec.observability.tracing.port",
                "spec.observability.tracing.endpoint",
                "spec.observability.tracing.sampledFraction",
                "spec.observability.tracing.propagation",
                "spec.observability.tracing.maxUrlTagLength",
                "spec.traffic.opaquePorts[8]",
                "spec.traffic.outboundIPRangeExclusionList[0]",
            ]
        );
    }

    #[test]
    fn sidecar_defaults() {
        let s = Sidecar::default();
        assert_eq!(s.header_read_timeout.to_string(), "10s");
        assert_eq!(s.http_idle_timeout.to_string(), "1h");
        assert_eq!(s.tcp_idle_timeout.to_string(), "1h");
        assert_eq!(s.http2_keepalive_interval.to_string(), "10s");
        assert_eq!(s.http2_keepalive_timeout.to_string(), "20s");
        assert_eq!(s.connect_timeout.to_string(), "10s");
        assert_eq!(s.response_timeout.non_zero(), None);
        assert_eq!(s.max_connections, 10_000);
        assert_eq!(s.max_connections_per_destination, 1024);
        assert_eq!(s.http2_connections_per_destination, 4);
        assert_eq!(s.termination_drain_duration.to_string(), "5s");
    }

    /// Each sidecar field at and beyond its bounds: (setter, accepted, field path or "").
    #[test]
    fn sidecar_ranges() {
        type Set = fn(&mut Sidecar);
        let cases: &[(Set, &str)] = &[
            (
                |s| s.header_read_timeout = Duration::ZERO,
                "headerReadTimeout",
            ),
            (|s| s.header_read_timeout = Duration::from_millis(1), ""),
            (
                |s| s.header_read_timeout = Duration::from_secs(3601),
                "headerReadTimeout",
            ),
            (|s| s.http_idle_timeout = Duration::ZERO, "httpIdleTimeout"),
            (|s| s.http_idle_timeout = Duration::from_secs(86_400), ""),
            (
                |s| s.http_idle_timeout = Duration::from_secs(86_401),
                "httpIdleTimeout",
            ),
            (|s| s.tcp_idle_timeout = Duration::ZERO, "tcpIdleTimeout"),
            (|s| s.tcp_idle_timeout = Duration::from_millis(50), ""),
            (|s| s.http2_keepalive_interval = Duration::ZERO, ""),
            (
                |s| s.http2_keepalive_interval = Duration::from_secs(7200),
                "http2KeepaliveInterval",
            ),
            (
                |s| s.http2_keepalive_timeout = Duration::ZERO,
                "http2KeepaliveTimeout",
            ),
            (|s| s.connect_timeout = Duration::ZERO, "connectTimeout"),
            (|s| s.connect_timeout = Duration::from_secs(300), ""),
            (
                |s| s.connect_timeout = Duration::from_secs(301),
                "connectTimeout",
            ),
            (|s| s.response_timeout = Duration::from_millis(1), ""),
            (
                |s| s.response_timeout = Duration::from_secs(86_401),
                "responseTimeout",
            ),
            (|s| s.termination_drain_duration = Duration::ZERO, ""),
            (
                |s| s.termination_drain_duration = Duration::from_secs(3601),
                "terminationDrainDuration",
            ),
            (|s| s.max_connections = 0, "maxConnections"),
            (|s| s.max_connections = 1, ""),
            (|s| s.max_connections = 1_000_001, "maxConnections"),
            (
                |s| s.max_connections_per_destination = 0,
                "maxConnectionsPerDestination",
            ),
            (|s| s.max_connections_per_destination = 1_000_000, ""),
            (
                |s| s.http2_connections_per_destination = 0,
                "http2ConnectionsPerDestination",
            ),
            (|s| s.http2_connections_per_destination = 1, ""),
            (|s| s.http2_connections_per_destination = 1024, ""),
            (
                |s| s.http2_connections_per_destination = 1025,
                "http2ConnectionsPerDestination",
            ),
        ];
        for (i, (set, path)) in cases.iter().enumerate() {
            let mut c = MeshConfig::default();
            set(&mut c.spec.sidecar);
            let got: Vec<String> = c.problems().into_iter().map(|p| p.path).collect();
            if path.is_empty() {
                assert!(got.is_empty(), "case {i}: {got:?}");
            } else {
                assert_eq!(got, [format!("spec.sidecar.{path}")], "case {i}");
            }
        }
    }

    #[test]
    fn endpoint_is_not_checked_for_otlp_grpc() {
        let mut c = MeshConfig::default();
        c.spec.observability.tracing.protocol = Protocol::OtlpGrpc;
        c.spec.observability.tracing.endpoint = String::new();
        assert_eq!(c.validate(), Ok(()));
    }

    #[test]
    fn cidrs() {
        assert_eq!(
            parse_cidr("10.0.0.0/8"),
            Ok(("10.0.0.0".parse().unwrap(), 8))
        );
        assert_eq!(parse_cidr("fd00::/8"), Ok(("fd00::".parse().unwrap(), 8)));
        assert_eq!(
            parse_cidr("192.168.1.7"),
            Ok(("192.168.1.7".parse().unwrap(), 32))
        );
        assert_eq!(parse_cidr("::1"), Ok(("::1".parse().unwrap(), 128)));
        for bad in [
            "10.0.0.0/33",
            "fd00::/129",
            "10.0.0/8",
            "example.com/8",
            "10.0.0.0/",
            "10.0.0.0/+8",
            "10.0.0.0/08",
            "10.0.0.0/ 8",
            "",
        ] {
            assert!(parse_cidr(bad).is_err(), "{bad} accepted");
        }
        assert_eq!(
            parse_prefixed_cidr("10.0.0.0/0"),
            Ok(("10.0.0.0".parse().unwrap(), 0))
        );
        for bare in ["192.168.1.7", "::1"] {
            let err = parse_prefixed_cidr(bare).unwrap_err();
            assert!(err.contains("no prefix length"), "{err}");
        }
    }

    #[test]
    fn addresses() {
        for ok in [
            "jaeger.mesh-system.svc.cluster.local",
            "127.0.0.1",
            "::1",
            "[::1]",
            "collector",
        ] {
            assert_eq!(check_address(ok), Ok(()), "{ok}");
        }
        for bad in [
            "http://jaeger",
            "jaeger:9411/x",
            "a..b",
            "has space",
            "[10.0.0.1]",
            "[jaeger]",
            "::1::2",
        ] {
            assert!(check_address(bad).is_err(), "{bad} accepted");
        }
    }
}
