//! The one span model every receiver normalises to: Zipkin v2, because it is what the mesh's
//! sidecars emit natively and what `--out` writes, so a test can compare wire formats directly.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// A Zipkin v2 span (`zipkin2-api.yaml`, `Span`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct Span {
    /// 16 or 32 lower-hex characters.
    pub trace_id: String,
    /// 16 lower-hex characters.
    pub id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<Kind>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Epoch microseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timestamp: Option<u64>,
    /// Microseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub local_endpoint: Option<Endpoint>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub remote_endpoint: Option<Endpoint>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub annotations: Vec<Annotation>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub tags: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub debug: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shared: Option<bool>,
}

impl Span {
    /// The local service name, or `""` when the span has none.
    pub fn service(&self) -> &str {
        self.local_endpoint
            .as_ref()
            .and_then(|e| e.service_name.as_deref())
            .unwrap_or("")
    }

    /// A tag's value, if present.
    pub fn tag(&self, key: &str) -> Option<&str> {
        self.tags.get(key).map(String::as_str)
    }
}

/// What a receiver made of one batch: the spans it keeps and, for each span it refused, the
/// field path and the problem. One bad span costs only itself (OTLP's partial success), so a
/// sender's good spans are never lost for a neighbour's sake.
#[derive(Debug, Default)]
pub struct Batch {
    pub spans: Vec<Span>,
    pub rejected: Vec<String>,
}

/// Zipkin's rule for trace ids: a 128-bit id whose upper half is zero is the 64-bit id it
/// carries, so the same trace reads the same whether it came as 16 hex, padded Zipkin or OTLP.
pub fn normalize_trace_id(id: &str) -> &str {
    match id.strip_prefix("0000000000000000") {
        Some(low) if low.len() == 16 => low,
        _ => id,
    }
}

/// The Zipkin span kind; spans without one are local (in-process) spans.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Kind {
    Client,
    Server,
    Producer,
    Consumer,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Client => "CLIENT",
            Kind::Server => "SERVER",
            Kind::Producer => "PRODUCER",
            Kind::Consumer => "CONSUMER",
        }
    }
}

/// A network endpoint of a span.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct Endpoint {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ipv4: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ipv6: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
}

/// A timestamped event inside a span.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Annotation {
    pub timestamp: u64,
    pub value: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serialises_with_zipkin_field_names_and_skips_absent_fields() {
        let span = Span {
            trace_id: "0123456789abcdef".into(),
            id: "00000000000000aa".into(),
            kind: Some(Kind::Server),
            local_endpoint: Some(Endpoint {
                service_name: Some("a.demo".into()),
                ..Endpoint::default()
            }),
            ..Span::default()
        };
        let json = serde_json::to_value(&span).expect("serialise");
        assert_eq!(
            json,
            serde_json::json!({
                "traceId": "0123456789abcdef",
                "id": "00000000000000aa",
                "kind": "SERVER",
                "localEndpoint": {"serviceName": "a.demo"}
            })
        );
        assert_eq!(span.service(), "a.demo");
    }

    #[test]
    fn padded_64_bit_trace_ids_are_64_bit() {
        assert_eq!(
            normalize_trace_id("000000000000000048485a3953bb6124"),
            "48485a3953bb6124"
        );
        assert_eq!(normalize_trace_id("48485a3953bb6124"), "48485a3953bb6124");
        let full = "463ac35c9f6413ad48485a3953bb6124";
        assert_eq!(normalize_trace_id(full), full);
    }
}
