//! Zipkin v2 JSON decoding, checked against the rules of the zipkin2 API schema so that a sidecar
//! emitting something a real Zipkin would reject fails here too, with the field named.

use std::net::{Ipv4Addr, Ipv6Addr};

use crate::span::{Batch, Endpoint, Span};

/// Epoch microseconds of 1973-03-03: anything smaller is almost certainly milliseconds or seconds.
const MIN_TIMESTAMP_MICROS: u64 = 100_000_000_000_000;
/// Epoch microseconds around the year 5138: anything larger is almost certainly nanoseconds.
const MAX_TIMESTAMP_MICROS: u64 = 100_000_000_000_000_000;

/// Why a Zipkin v2 body was refused as a whole.
#[derive(Debug, thiserror::Error)]
pub enum ZipkinError {
    #[error("body is not a Zipkin v2 JSON array of spans: {0}")]
    Json(#[from] serde_json::Error),
}

/// Parses a `POST /api/v2/spans` body (a JSON array of spans) and validates every span: the
/// valid ones are kept, each invalid one is named in [`Batch::rejected`].
pub fn decode(body: &[u8]) -> Result<Batch, ZipkinError> {
    let mut spans: Vec<Span> = serde_json::from_slice(body)?;
    for span in &mut spans {
        span.trace_id = crate::span::normalize_trace_id(&span.trace_id).to_string();
        // Zipkin reads an all-zero parent as "no parent" (opentelemetry-zipkin sends roots so).
        if span
            .parent_id
            .as_deref()
            .is_some_and(|p| p.len() == 16 && p.bytes().all(|b| b == b'0'))
        {
            span.parent_id = None;
        }
        // Likewise a zero duration is "unknown" to Zipkin; exporters send it for sub-µs spans.
        if span.duration == Some(0) {
            span.duration = None;
        }
    }
    let mut batch = Batch::default();
    for (i, span) in spans.into_iter().enumerate() {
        let problems = validate(&span);
        if problems.is_empty() {
            batch.spans.push(span);
        } else {
            let problems: Vec<String> = problems.iter().map(|p| format!("[{i}].{p}")).collect();
            batch.rejected.push(problems.join("; "));
        }
    }
    Ok(batch)
}

/// Returns every schema violation of one span as `<field>: <message>`.
pub fn validate(span: &Span) -> Vec<String> {
    let mut problems = Vec::new();
    if let Err(e) = check_hex(&span.trace_id, &[16, 32]) {
        problems.push(format!("traceId: {e}"));
    }
    if let Err(e) = check_hex(&span.id, &[16]) {
        problems.push(format!("id: {e}"));
    }
    if let Some(parent) = &span.parent_id {
        if let Err(e) = check_hex(parent, &[16]) {
            problems.push(format!("parentId: {e}"));
        }
    }
    if let Some(ts) = span.timestamp {
        if ts < MIN_TIMESTAMP_MICROS {
            problems.push(format!(
                "timestamp: {ts} is too small for epoch microseconds (milliseconds?)"
            ));
        } else if ts > MAX_TIMESTAMP_MICROS {
            problems.push(format!(
                "timestamp: {ts} is too large for epoch microseconds (nanoseconds?)"
            ));
        }
    }
    for (field, endpoint) in [
        ("localEndpoint", &span.local_endpoint),
        ("remoteEndpoint", &span.remote_endpoint),
    ] {
        if let Some(endpoint) = endpoint {
            check_endpoint(field, endpoint, &mut problems);
        }
    }
    for (i, annotation) in span.annotations.iter().enumerate() {
        if annotation.timestamp < MIN_TIMESTAMP_MICROS
            || annotation.timestamp > MAX_TIMESTAMP_MICROS
        {
            problems.push(format!(
                "annotations[{i}].timestamp: {} is not epoch microseconds",
                annotation.timestamp
            ));
        }
    }
    problems
}

fn check_endpoint(field: &str, endpoint: &Endpoint, problems: &mut Vec<String>) {
    if let Some(ip) = &endpoint.ipv4 {
        if ip.parse::<Ipv4Addr>().is_err() {
            problems.push(format!("{field}.ipv4: {ip:?} is not an IPv4 address"));
        }
    }
    if let Some(ip) = &endpoint.ipv6 {
        if ip.parse::<Ipv6Addr>().is_err() {
            problems.push(format!("{field}.ipv6: {ip:?} is not an IPv6 address"));
        }
    }
}

/// Ids are lower-hex of a fixed length and never all zeros (Zipkin treats zero as "absent").
fn check_hex(id: &str, lengths: &[usize]) -> Result<(), String> {
    if !lengths.contains(&id.len()) {
        let want: Vec<String> = lengths.iter().map(usize::to_string).collect();
        return Err(format!(
            "{id:?} must be {} lower-hex characters, got {}",
            want.join(" or "),
            id.len()
        ));
    }
    if !id.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
        return Err(format!("{id:?} is not lower-hex"));
    }
    if id.bytes().all(|b| b == b'0') {
        return Err(format!("{id:?} is all zeros"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::span::Kind;

    const GOOD: &str = r#"[{
        "traceId": "463ac35c9f6413ad48485a3953bb6124",
        "id": "a2fb4a1d1a96d312",
        "parentId": "0020000000000001",
        "kind": "SERVER",
        "name": "get /api",
        "timestamp": 1556604172355737,
        "duration": 1431,
        "localEndpoint": {"serviceName": "b.demo", "ipv4": "10.0.0.2", "port": 8080},
        "remoteEndpoint": {"ipv6": "::1", "port": 51234},
        "annotations": [{"timestamp": 1556604172355800, "value": "wr"}],
        "tags": {"http.method": "GET", "http.status_code": "200"}
    }, {"traceId": "48485a3953bb6124", "id": "b2fb4a1d1a96d312"}]"#;

    #[test]
    fn decodes_a_valid_batch() {
        let batch = decode(GOOD.as_bytes()).expect("valid");
        assert!(batch.rejected.is_empty());
        let spans = batch.spans;
        assert_eq!(spans.len(), 2);
        let s = &spans[0];
        assert_eq!(s.kind, Some(Kind::Server));
        assert_eq!(s.parent_id.as_deref(), Some("0020000000000001"));
        assert_eq!(s.timestamp, Some(1_556_604_172_355_737));
        assert_eq!(s.duration, Some(1431));
        assert_eq!(s.service(), "b.demo");
        assert_eq!(s.local_endpoint.as_ref().and_then(|e| e.port), Some(8080));
        assert_eq!(s.tag("http.status_code"), Some("200"));
        assert_eq!(spans[1].trace_id, "48485a3953bb6124");
    }

    /// What opentelemetry-zipkin 0.33 sends for a root span.
    #[test]
    fn accepts_the_opentelemetry_zipkin_exporter_output() {
        let body = r#"[{"traceId":"21a938813ea4f706fd610b799507ce1f","parentId":"0000000000000000",
            "id":"df7e1cfe868cd02e","kind":"SERVER","name":"GET /","timestamp":1795289941930102,
            "duration":1962,"localEndpoint":{},"annotations":[],
            "tags":{"http.request.method":"GET","otel.library.name":"tracemesh-test"},
            "debug":false,"shared":false}]"#;
        let spans = decode(body.as_bytes()).expect("valid").spans;
        assert_eq!(spans[0].parent_id, None);
        assert_eq!(spans[0].debug, Some(false));
    }

    #[test]
    fn an_all_zero_parent_and_a_zero_duration_mean_absent() {
        let body = r#"[{"traceId":"48485a3953bb6124","id":"a2fb4a1d1a96d312","parentId":"0000000000000000","duration":0}]"#;
        let spans = decode(body.as_bytes()).expect("valid").spans;
        assert_eq!(spans[0].parent_id, None);
        assert_eq!(spans[0].duration, None);
    }

    #[test]
    fn a_zero_padded_trace_id_reads_as_64_bit() {
        let body = r#"[{"traceId":"000000000000000048485a3953bb6124","id":"a2fb4a1d1a96d312"}]"#;
        let spans = decode(body.as_bytes()).expect("valid").spans;
        assert_eq!(spans[0].trace_id, "48485a3953bb6124");
    }

    /// Why a one-span body was refused, whether as a whole or its span.
    fn err(body: &str) -> String {
        match decode(body.as_bytes()) {
            Err(e) => e.to_string(),
            Ok(batch) => {
                assert!(batch.spans.is_empty(), "must be refused: {body}");
                batch.rejected.join("; ")
            }
        }
    }

    #[test]
    fn one_bad_span_costs_only_itself() {
        let body = r#"[{"traceId":"48485a3953bb6124","id":"a2fb4a1d1a96d312"},
            {"traceId":"48485a3953bb6124","id":"0000000000000000"},
            {"traceId":"48485a3953bb6124","id":"b2fb4a1d1a96d312","timestamp":12}]"#;
        let batch = decode(body.as_bytes()).expect("parses");
        assert_eq!(batch.spans.len(), 1);
        assert_eq!(batch.spans[0].id, "a2fb4a1d1a96d312");
        assert_eq!(batch.rejected.len(), 2);
        assert!(
            batch.rejected[0].starts_with("[1].id"),
            "{:?}",
            batch.rejected
        );
        assert!(
            batch.rejected[1].starts_with("[2].timestamp"),
            "{:?}",
            batch.rejected
        );
    }

    #[test]
    fn refuses_bad_ids_with_the_field_named() {
        let e = err(r#"[{"traceId":"463AC35C9F6413AD","id":"a2fb4a1d1a96d312"}]"#);
        assert!(e.contains("[0].traceId") && e.contains("lower-hex"), "{e}");
        let e = err(r#"[{"traceId":"463ac35c9f6413ad00","id":"a2fb4a1d1a96d312"}]"#);
        assert!(e.contains("[0].traceId") && e.contains("16 or 32"), "{e}");
        let e = err(r#"[{"traceId":"463ac35c9f6413ad","id":"a2fb4a1d"}]"#);
        assert!(e.contains("[0].id"), "{e}");
        let e = err(r#"[{"traceId":"463ac35c9f6413ad","id":"0000000000000000"}]"#);
        assert!(e.contains("all zeros"), "{e}");
        let e = err(r#"[{"traceId":"463ac35c9f6413ad","id":"a2fb4a1d1a96d312","parentId":"xyz"}]"#);
        assert!(e.contains("[0].parentId"), "{e}");
    }

    #[test]
    fn refuses_non_microsecond_timestamps_and_bad_kinds() {
        let e = err(
            r#"[{"traceId":"463ac35c9f6413ad","id":"a2fb4a1d1a96d312","timestamp":1556604172355}]"#,
        );
        assert!(e.contains("timestamp") && e.contains("milliseconds"), "{e}");
        let e = err(
            r#"[{"traceId":"463ac35c9f6413ad","id":"a2fb4a1d1a96d312","timestamp":1556604172355737000}]"#,
        );
        assert!(e.contains("nanoseconds"), "{e}");
        let e = err(r#"[{"traceId":"463ac35c9f6413ad","id":"a2fb4a1d1a96d312","kind":"LOCAL"}]"#);
        assert!(e.contains("unknown variant"), "{e}");
        let e = err(r#"[{"traceId":"463ac35c9f6413ad","id":"a2fb4a1d1a96d312","duration":-3}]"#);
        assert!(e.contains("Zipkin v2"), "{e}");
    }

    #[test]
    fn refuses_what_is_not_an_array_of_spans() {
        for body in [
            "",
            "{}",
            "[1]",
            "not json",
            r#"[{"id":"a2fb4a1d1a96d312"}]"#,
        ] {
            assert!(
                decode(body.as_bytes()).is_err_and(|e| e.to_string().contains("Zipkin v2")),
                "{body}"
            );
        }
        let e = err(r#"[{"traceId":"463ac35c9f6413ad","id":"a2fb4a1d1a96d312","tags":{"n":1}}]"#);
        assert!(e.contains("Zipkin v2"), "{e}");
        let e = err(
            r#"[{"traceId":"463ac35c9f6413ad","id":"a2fb4a1d1a96d312","localEndpoint":{"ipv4":"1.2.3"}}]"#,
        );
        assert!(e.contains("localEndpoint.ipv4"), "{e}");
    }
}
