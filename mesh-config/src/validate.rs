//! Semantic checks on a typed `MeshConfig`: the rules that types alone cannot express
//! (ranges, CIDRs, an address when tracing is on). The parser runs these after its own type
//! checks, and code that builds a `MeshConfig` in memory calls `validate` directly.

use std::net::IpAddr;

use crate::{
    ConfigError, FieldError, MeshConfig, PropagationFormat, Protocol, API_VERSION, KIND,
    MAX_URL_TAG_LENGTH_RANGE,
};

pub(crate) const PORT_RANGE: &str = "1..=65535";

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
            if let Err(msg) = parse_cidr(cidr) {
                out.push(FieldError::new(
                    format!("spec.traffic.outboundIPRangeExclusionList[{i}]"),
                    msg,
                ));
            }
        }
        out
    }
}

/// Parses `10.0.0.0/8`, `fd00::/8`, or a bare address, which means that single host
/// (`/32` or `/128`), as iptables reads it. Host bits may be set; iptables masks them.
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
        Some(len) => match len.parse::<u8>() {
            Ok(n) if n <= max && !len.starts_with('+') => n,
            _ => {
                return Err(format!(
                    "{text:?} has an invalid prefix length (expected 0..={max})"
                ))
            }
        },
    };
    Ok((ip, len))
}

/// A collector address is a host name or an IP, never a URL: the scheme comes from `protocol`.
fn check_address(address: &str) -> Result<(), String> {
    if address.contains("://") {
        return Err(format!(
            "{address:?} must be a host name or IP, without a scheme"
        ));
    }
    let bare = address
        .strip_prefix('[')
        .and_then(|a| a.strip_suffix(']'))
        .unwrap_or(address);
    if bare.parse::<IpAddr>().is_ok() {
        return Ok(());
    }
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
            "",
        ] {
            assert!(parse_cidr(bad).is_err(), "{bad} accepted");
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
        for bad in ["http://jaeger", "jaeger:9411/x", "a..b", "has space"] {
            assert!(check_address(bad).is_err(), "{bad} accepted");
        }
    }
}
