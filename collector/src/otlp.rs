//! OTLP → Zipkin v2, following the OpenTelemetry specification's Zipkin exporter mapping, so
//! spans look the same whichever protocol a sidecar is configured with.

use std::collections::BTreeMap;
use std::net::IpAddr;

use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{any_value::Value, AnyValue, KeyValue};
use opentelemetry_proto::tonic::trace::v1::{self as otlp, span::SpanKind, status::StatusCode};

use crate::span::{Annotation, Batch, Endpoint, Kind, Span};

/// The service name the specification prescribes when a resource carries none.
const UNKNOWN_SERVICE: &str = "unknown_service";

/// Why an OTLP request was refused as a whole.
#[derive(Debug, thiserror::Error)]
pub enum OtlpError {
    #[error("body is not an OTLP ExportTraceServiceRequest protobuf: {0}")]
    Protobuf(#[from] prost::DecodeError),
    #[error("body is not an OTLP ExportTraceServiceRequest in OTLP/JSON: {0}")]
    Json(#[from] serde_json::Error),
}

/// Decodes an OTLP/HTTP protobuf body.
pub fn decode(body: &[u8]) -> Result<Batch, OtlpError> {
    let request = <ExportTraceServiceRequest as prost::Message>::decode(body)?;
    Ok(convert(&request))
}

/// Decodes an OTLP/HTTP JSON body (`Content-Type: application/json`): the protobuf messages in
/// the OTLP JSON mapping (lowerCamelCase fields, hex trace and span ids, enums as integers).
pub fn decode_json(body: &[u8]) -> Result<Batch, OtlpError> {
    let request: ExportTraceServiceRequest = serde_json::from_slice(body)?;
    Ok(convert(&request))
}

/// Converts every span of an export request; a span with an unusable id or time is refused
/// alone, named by its path in the request.
pub fn convert(request: &ExportTraceServiceRequest) -> Batch {
    let mut spans = Vec::new();
    let mut problems = Vec::new();
    for (r, resource_spans) in request.resource_spans.iter().enumerate() {
        let resource_attrs = resource_spans
            .resource
            .as_ref()
            .map(|r| r.attributes.as_slice())
            .unwrap_or_default();
        let service = find(resource_attrs, "service.name")
            .map(value_string)
            .unwrap_or_else(|| UNKNOWN_SERVICE.to_string());
        for (s, scope_spans) in resource_spans.scope_spans.iter().enumerate() {
            for (i, span) in scope_spans.spans.iter().enumerate() {
                match convert_span(span, &service, scope_spans.scope.as_ref()) {
                    Ok(z) => spans.push(z),
                    Err(e) => {
                        problems.push(format!("resourceSpans[{r}].scopeSpans[{s}].spans[{i}].{e}"))
                    }
                }
            }
        }
    }
    Batch {
        spans,
        rejected: problems,
    }
}

fn convert_span(
    span: &otlp::Span,
    service: &str,
    scope: Option<&opentelemetry_proto::tonic::common::v1::InstrumentationScope>,
) -> Result<Span, String> {
    let trace_id = id_hex(&span.trace_id, 16).map_err(|e| format!("traceId: {e}"))?;
    // A 64-bit trace id travels in OTLP zero-padded; it is still that 64-bit trace.
    let trace_id = crate::span::normalize_trace_id(&trace_id).to_string();
    let id = id_hex(&span.span_id, 8).map_err(|e| format!("spanId: {e}"))?;
    let parent_id = if span.parent_span_id.is_empty() || span.parent_span_id.iter().all(|b| *b == 0)
    {
        None
    } else {
        Some(id_hex(&span.parent_span_id, 8).map_err(|e| format!("parentSpanId: {e}"))?)
    };
    if span.end_time_unix_nano < span.start_time_unix_nano {
        return Err("endTimeUnixNano: before startTimeUnixNano".into());
    }
    let kind = match SpanKind::try_from(span.kind) {
        Ok(SpanKind::Server) => Some(Kind::Server),
        Ok(SpanKind::Client) => Some(Kind::Client),
        Ok(SpanKind::Producer) => Some(Kind::Producer),
        Ok(SpanKind::Consumer) => Some(Kind::Consumer),
        _ => None,
    };

    let mut tags = BTreeMap::new();
    for kv in &span.attributes {
        if let Some(v) = &kv.value {
            tags.insert(kv.key.clone(), value_string(v));
        }
    }
    if let Some(scope) = scope {
        if !scope.name.is_empty() {
            tags.insert("otel.scope.name".into(), scope.name.clone());
        }
        if !scope.version.is_empty() {
            tags.insert("otel.scope.version".into(), scope.version.clone());
        }
    }
    if let Some(status) = &span.status {
        match StatusCode::try_from(status.code) {
            Ok(StatusCode::Error) => {
                tags.insert("otel.status_code".into(), "ERROR".into());
                tags.insert("error".into(), status.message.clone());
            }
            Ok(StatusCode::Ok) => {
                tags.insert("otel.status_code".into(), "OK".into());
            }
            _ => {}
        }
    }

    let start_micros = span.start_time_unix_nano / 1_000;
    let annotations = span
        .events
        .iter()
        .map(|event| Annotation {
            timestamp: event.time_unix_nano / 1_000,
            value: event.name.clone(),
        })
        .collect();

    Ok(Span {
        trace_id,
        id,
        parent_id,
        kind,
        name: Some(span.name.clone()).filter(|n| !n.is_empty()),
        timestamp: Some(start_micros).filter(|t| *t > 0),
        // Zipkin's schema wants at least 1 µs; sub-microsecond spans round up rather than vanish.
        duration: Some(((span.end_time_unix_nano - span.start_time_unix_nano) / 1_000).max(1)),
        local_endpoint: Some(Endpoint {
            service_name: Some(service.to_string()),
            ..Endpoint::default()
        }),
        remote_endpoint: remote_endpoint(&span.attributes),
        annotations,
        tags,
        debug: None,
        shared: None,
    })
}

/// The peer, from the semantic-convention attributes current and legacy.
fn remote_endpoint(attrs: &[KeyValue]) -> Option<Endpoint> {
    let first = |keys: &[&str]| keys.iter().find_map(|k| find(attrs, k)).map(value_string);
    let service_name = first(&["peer.service", "server.address", "net.peer.name"])
        .filter(|s| s.parse::<IpAddr>().is_err());
    let ip = first(&[
        "network.peer.address",
        "net.peer.ip",
        "server.address",
        "client.address",
    ])
    .and_then(|s| s.parse::<IpAddr>().ok());
    let port = first(&["network.peer.port", "net.peer.port", "server.port"])
        .and_then(|p| p.parse::<u16>().ok());
    if service_name.is_none() && ip.is_none() && port.is_none() {
        return None;
    }
    Some(Endpoint {
        service_name,
        ipv4: ip.filter(IpAddr::is_ipv4).map(|ip| ip.to_string()),
        ipv6: ip.filter(IpAddr::is_ipv6).map(|ip| ip.to_string()),
        port,
    })
}

fn find<'a>(attrs: &'a [KeyValue], key: &str) -> Option<&'a AnyValue> {
    attrs
        .iter()
        .find(|kv| kv.key == key)
        .and_then(|kv| kv.value.as_ref())
}

/// Zipkin tags are strings; arrays and maps become JSON as the exporter specification says.
fn value_string(value: &AnyValue) -> String {
    match &value.value {
        Some(Value::StringValue(s)) => s.clone(),
        Some(Value::BoolValue(b)) => b.to_string(),
        Some(Value::IntValue(i)) => i.to_string(),
        Some(Value::DoubleValue(d)) => d.to_string(),
        Some(_) => value_json(value).to_string(),
        None => String::new(),
    }
}

fn value_json(value: &AnyValue) -> serde_json::Value {
    use serde_json::Value as J;
    match &value.value {
        Some(Value::StringValue(s)) => J::String(s.clone()),
        Some(Value::BoolValue(b)) => J::Bool(*b),
        Some(Value::IntValue(i)) => J::from(*i),
        Some(Value::DoubleValue(d)) => J::from(*d),
        Some(Value::ArrayValue(a)) => J::Array(a.values.iter().map(value_json).collect()),
        Some(Value::KvlistValue(kv)) => J::Object(
            kv.values
                .iter()
                .map(|kv| {
                    let v = kv.value.as_ref().map(value_json).unwrap_or(J::Null);
                    (kv.key.clone(), v)
                })
                .collect(),
        ),
        Some(Value::BytesValue(b)) => J::String(hex(b)),
        _ => J::Null,
    }
}

fn id_hex(bytes: &[u8], len: usize) -> Result<String, String> {
    if bytes.len() != len {
        return Err(format!("must be {len} bytes, got {}", bytes.len()));
    }
    if bytes.iter().all(|b| *b == 0) {
        return Err("is all zeros".into());
    }
    Ok(hex(bytes))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use opentelemetry_proto::tonic::resource::v1::Resource;
    use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Status};

    fn kv(key: &str, value: Value) -> KeyValue {
        KeyValue {
            key: key.into(),
            value: Some(AnyValue { value: Some(value) }),
            ..KeyValue::default()
        }
    }

    /// A one-span request as a sidecar would send for a failed outbound call.
    pub(crate) fn sample_request() -> ExportTraceServiceRequest {
        let span = otlp::Span {
            trace_id: (1..=16).collect(),
            span_id: vec![0xaa; 8],
            parent_span_id: vec![0xbb; 8],
            name: "GET".into(),
            kind: SpanKind::Client as i32,
            start_time_unix_nano: 1_700_000_000_000_000_000,
            end_time_unix_nano: 1_700_000_000_002_500_000,
            attributes: vec![
                kv("http.request.method", Value::StringValue("GET".into())),
                kv("http.response.status_code", Value::IntValue(503)),
                kv("server.address", Value::StringValue("c.demo".into())),
                kv(
                    "network.peer.address",
                    Value::StringValue("10.0.0.3".into()),
                ),
                kv("server.port", Value::IntValue(8080)),
            ],
            status: Some(Status {
                message: "upstream 503".into(),
                code: StatusCode::Error as i32,
            }),
            ..otlp::Span::default()
        };
        ExportTraceServiceRequest {
            resource_spans: vec![ResourceSpans {
                resource: Some(Resource {
                    attributes: vec![kv("service.name", Value::StringValue("b.demo".into()))],
                    ..Resource::default()
                }),
                scope_spans: vec![ScopeSpans {
                    spans: vec![span],
                    ..ScopeSpans::default()
                }],
                ..ResourceSpans::default()
            }],
        }
    }

    #[test]
    fn maps_like_the_zipkin_exporter_specification() {
        let batch = convert(&sample_request());
        assert!(batch.rejected.is_empty());
        let spans = batch.spans;
        assert_eq!(spans.len(), 1);
        let s = &spans[0];
        assert_eq!(s.trace_id, "0102030405060708090a0b0c0d0e0f10");
        assert_eq!(s.id, "aaaaaaaaaaaaaaaa");
        assert_eq!(s.parent_id.as_deref(), Some("bbbbbbbbbbbbbbbb"));
        assert_eq!(s.kind, Some(Kind::Client));
        assert_eq!(s.timestamp, Some(1_700_000_000_000_000));
        assert_eq!(s.duration, Some(2_500));
        assert_eq!(s.service(), "b.demo");
        assert_eq!(s.tag("http.response.status_code"), Some("503"));
        assert_eq!(s.tag("error"), Some("upstream 503"));
        assert_eq!(s.tag("otel.status_code"), Some("ERROR"));
        let remote = s.remote_endpoint.as_ref().expect("remote endpoint");
        assert_eq!(remote.service_name.as_deref(), Some("c.demo"));
        assert_eq!(remote.ipv4.as_deref(), Some("10.0.0.3"));
        assert_eq!(remote.port, Some(8080));
        // What comes out passes the Zipkin schema rules.
        assert!(crate::zipkin::validate(s).is_empty());
    }

    #[test]
    fn refuses_bad_ids_and_garbage() {
        let mut req = sample_request();
        req.resource_spans[0].scope_spans[0].spans[0].span_id = vec![0; 8];
        let batch = convert(&req);
        assert!(batch.spans.is_empty());
        assert_eq!(batch.rejected.len(), 1);
        let e = &batch.rejected[0];
        assert!(e.contains("spans[0].spanId: is all zeros"), "{e}");
        let mut req = sample_request();
        req.resource_spans[0].scope_spans[0].spans[0].trace_id = vec![1; 8];
        assert_eq!(convert(&req).rejected.len(), 1);
        assert!(decode(b"\xff\xff\xff garbage").is_err());
        assert!(decode_json(b"{\"resourceSpans\": 3}").is_err());
    }

    #[test]
    fn a_padded_64_bit_trace_id_stays_64_bit() {
        let mut req = sample_request();
        let mut id = vec![0; 8];
        id.extend([0x48, 0x48, 0x5a, 0x39, 0x53, 0xbb, 0x61, 0x24]);
        req.resource_spans[0].scope_spans[0].spans[0].trace_id = id;
        let spans = convert(&req).spans;
        assert_eq!(spans[0].trace_id, "48485a3953bb6124");
    }

    #[test]
    fn one_bad_span_costs_only_itself() {
        let mut req = sample_request();
        let mut bad = req.resource_spans[0].scope_spans[0].spans[0].clone();
        bad.end_time_unix_nano = bad.start_time_unix_nano - 1;
        req.resource_spans[0].scope_spans[0].spans.insert(0, bad);
        let batch = convert(&req);
        assert_eq!(batch.spans.len(), 1);
        assert_eq!(
            batch.rejected,
            ["resourceSpans[0].scopeSpans[0].spans[0].endTimeUnixNano: before startTimeUnixNano"]
        );
    }

    /// The OTLP/JSON example of the OpenTelemetry proto repository
    /// (`examples/trace.json`), as an SDK's OTLP/HTTP JSON exporter sends it.
    #[test]
    fn decodes_the_otlp_json_example() {
        let body = r#"{"resourceSpans":[{"resource":{"attributes":[{"key":"service.name",
            "value":{"stringValue":"my.service"}}]},"scopeSpans":[{"scope":{"name":"my.library",
            "version":"1.0.0","attributes":[{"key":"my.scope.attribute","value":{"stringValue":
            "some scope attribute"}}]},"spans":[{"traceId":"5b8efff798038103d269b633813fc60c",
            "spanId":"eee19b7ec3c1b174","parentSpanId":"eee19b7ec3c1b173","name":"I'm a server span",
            "startTimeUnixNano":"1544712660000000000","endTimeUnixNano":"1544712661000000000",
            "kind":2,"attributes":[{"key":"my.span.attr","value":{"stringValue":"some value"}}]}]}]}]}"#;
        let batch = decode_json(body.as_bytes()).expect("OTLP/JSON");
        assert!(batch.rejected.is_empty(), "{:?}", batch.rejected);
        let s = &batch.spans[0];
        assert_eq!(s.trace_id, "5b8efff798038103d269b633813fc60c");
        assert_eq!(s.id, "eee19b7ec3c1b174");
        assert_eq!(s.parent_id.as_deref(), Some("eee19b7ec3c1b173"));
        assert_eq!(s.kind, Some(Kind::Server));
        assert_eq!(s.duration, Some(1_000_000));
        assert_eq!(s.service(), "my.service");
        assert_eq!(s.tag("my.span.attr"), Some("some value"));
    }

    #[test]
    fn missing_service_name_is_unknown_service() {
        let mut req = sample_request();
        req.resource_spans[0].resource = None;
        let spans = convert(&req).spans;
        assert_eq!(spans[0].service(), UNKNOWN_SERVICE);
    }
}
