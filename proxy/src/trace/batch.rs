//! One export body, bounded by bytes as well as by count.
//!
//! A count alone does not bound a body: spans carry URLs and error texts of any length, and a
//! body over a receiver's limit (4 MiB for a gRPC server by default) is refused whole, losing
//! every good span in it. So spans are encoded one at a time and the body is cut before the
//! span that would take it past [`MAX_BATCH_BYTES`]; that span starts the next batch.

use opentelemetry::InstrumentationScope;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::InstrumentationScope as ProtoScope;
use opentelemetry_proto::tonic::resource::v1::Resource as ProtoResource;
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span as ProtoSpan};
use prost::Message as _;

use super::span::SpanRecord;
use super::zipkin::ZipkinEncoder;

/// Largest encoded (uncompressed) body: a quarter of a gRPC receiver's default 4 MiB message
/// limit, which leaves room for receivers configured lower, and keeps the one batch a hung
/// collector holds small. Measured on the encoded bytes, not estimated from span counts.
pub const MAX_BATCH_BYTES: usize = 1024 * 1024;
/// What the length prefixes of the OTLP envelope may grow by as spans are added (two nested
/// messages, each prefix at most 4 bytes longer than when empty), so the bound is never crossed.
const OTLP_ENVELOPE_SLACK: usize = 16;

/// An encoded batch.
#[derive(Debug)]
pub struct Batch {
    /// Spans in the body.
    pub spans: usize,
    /// Spans that alone exceed [`MAX_BATCH_BYTES`]: dropped, never sent.
    pub too_large: usize,
    pub body: Body,
}

#[derive(Debug)]
pub enum Body {
    /// Zipkin v2 JSON, a `ListOfSpans` array.
    Json(Vec<u8>),
    /// OTLP, sent as protobuf over HTTP or as the gRPC message.
    Otlp(ExportTraceServiceRequest),
}

impl Body {
    /// The encoded size on the wire, before compression.
    pub fn encoded_len(&self) -> usize {
        match self {
            Body::Json(bytes) => bytes.len(),
            Body::Otlp(request) => request.encoded_len(),
        }
    }
}

/// Encodes spans for one protocol. One per exporter, built once and never moved, so the size
/// difference of its variants costs nothing.
#[derive(Debug)]
#[allow(clippy::large_enum_variant)]
pub enum Encoder {
    Zipkin(ZipkinEncoder),
    Otlp {
        resource: ProtoResource,
        scope: InstrumentationScope,
        proto_scope: ProtoScope,
    },
}

impl Encoder {
    /// Takes spans from the end of `pending` (the newest first) into one batch of at most
    /// `max_spans` spans and `max_bytes` encoded bytes; what does not fit stays in `pending`.
    pub fn encode(
        &self,
        pending: &mut Vec<SpanRecord>,
        max_spans: usize,
        max_bytes: usize,
    ) -> Batch {
        self.encode_into(pending, max_spans, max_bytes, Vec::new())
    }

    /// [`Encoder::encode`], writing a JSON body into `buffer` (cleared first): the exporter
    /// hands back the previous batch's body, so a full batch (about 160 KiB) is not allocated,
    /// page-faulted in and given back to the kernel every time.
    pub fn encode_into(
        &self,
        pending: &mut Vec<SpanRecord>,
        max_spans: usize,
        max_bytes: usize,
        buffer: Vec<u8>,
    ) -> Batch {
        match self {
            Encoder::Zipkin(encoder) => zipkin(encoder, pending, max_spans, max_bytes, buffer),
            Encoder::Otlp {
                resource,
                scope,
                proto_scope,
            } => otlp(resource, scope, proto_scope, pending, max_spans, max_bytes),
        }
    }
}

fn zipkin(
    encoder: &ZipkinEncoder,
    pending: &mut Vec<SpanRecord>,
    max_spans: usize,
    max_bytes: usize,
    mut out: Vec<u8>,
) -> Batch {
    out.clear();
    out.reserve(pending.len().min(max_spans) * 640 + 2);
    out.push(b'[');
    let (mut spans, mut too_large) = (0, 0);
    while spans < max_spans {
        let Some(span) = pending.pop() else { break };
        let mark = out.len();
        if spans > 0 {
            out.push(b',');
        }
        encoder.write_span(&mut out, &span);
        // +1 for the closing bracket.
        if out.len() < max_bytes {
            spans += 1;
            continue;
        }
        out.truncate(mark);
        if spans == 0 {
            too_large += 1;
        } else {
            pending.push(span);
            break;
        }
    }
    out.push(b']');
    Batch {
        spans,
        too_large,
        body: Body::Json(out),
    }
}

fn otlp(
    resource: &ProtoResource,
    scope: &InstrumentationScope,
    proto_scope: &ProtoScope,
    pending: &mut Vec<SpanRecord>,
    max_spans: usize,
    max_bytes: usize,
) -> Batch {
    let mut request = ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            resource: Some(resource.clone()),
            scope_spans: vec![ScopeSpans {
                scope: Some(proto_scope.clone()),
                spans: Vec::new(),
                schema_url: String::new(),
            }],
            schema_url: String::new(),
        }],
    };
    let mut size = request.encoded_len() + OTLP_ENVELOPE_SLACK;
    let mut spans: Vec<ProtoSpan> = Vec::with_capacity(pending.len().min(max_spans));
    let mut too_large = 0;
    while spans.len() < max_spans {
        let Some(record) = pending.pop() else { break };
        let span = ProtoSpan::from(super::otlp::span_data(&record, scope));
        let framed = span.encoded_len();
        let framed = 1 + prost::length_delimiter_len(framed) + framed;
        if size + framed <= max_bytes {
            size += framed;
            spans.push(span);
        } else if spans.is_empty() {
            too_large += 1;
        } else {
            pending.push(record);
            break;
        }
    }
    let n = spans.len();
    request.resource_spans[0].scope_spans[0].spans = spans;
    Batch {
        spans: n,
        too_large,
        body: Body::Otlp(request),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::trace::span::tests::fixture;
    use crate::trace::Direction;

    fn spans(n: usize, path_len: usize) -> Vec<SpanRecord> {
        let uri = format!("http://b.default:8080/{}", "p".repeat(path_len));
        (0..n)
            .map(|_| fixture(Direction::Inbound, &uri, 200))
            .collect()
    }

    fn encoders() -> [Encoder; 2] {
        [
            Encoder::Zipkin(ZipkinEncoder::new("b.default", None)),
            Encoder::Otlp {
                resource: ProtoResource::default(),
                scope: InstrumentationScope::builder("mesh-proxy").build(),
                proto_scope: ProtoScope::default(),
            },
        ]
    }

    #[test]
    fn batches_are_cut_by_encoded_bytes_and_every_span_is_sent_once() {
        // A small bound stands for the real one, so ordinary spans exercise the cut.
        const BOUND: usize = 16 * 1024;
        for encoder in encoders() {
            let mut pending = spans(256, 300);
            let one_span = {
                let mut probe = spans(1, 300);
                encoder.encode(&mut probe, 1, usize::MAX).body.encoded_len()
            };
            let (mut sent, mut batches) = (0, 0);
            while !pending.is_empty() {
                let batch = encoder.encode(&mut pending, 256, BOUND);
                assert_eq!(batch.too_large, 0);
                let len = batch.body.encoded_len();
                assert!(len <= BOUND, "{len}");
                if !pending.is_empty() {
                    assert!(len + one_span > BOUND - 64, "cut early: {len}");
                }
                match &batch.body {
                    Body::Json(json) => {
                        let v: serde_json::Value = serde_json::from_slice(json).unwrap();
                        assert_eq!(v.as_array().unwrap().len(), batch.spans);
                    }
                    Body::Otlp(request) => {
                        let bytes = request.encode_to_vec();
                        assert_eq!(bytes.len(), len);
                        let back = ExportTraceServiceRequest::decode(&bytes[..]).unwrap();
                        assert_eq!(
                            back.resource_spans[0].scope_spans[0].spans.len(),
                            batch.spans
                        );
                    }
                }
                sent += batch.spans;
                batches += 1;
            }
            assert_eq!(sent, 256);
            assert!(batches >= 256 * one_span / BOUND, "{batches}");
        }
    }

    #[test]
    fn small_spans_are_cut_by_count() {
        for encoder in encoders() {
            let mut pending = spans(300, 10);
            let batch = encoder.encode(&mut pending, 256, MAX_BATCH_BYTES);
            assert_eq!((batch.spans, pending.len()), (256, 44));
            if let Body::Json(json) = &batch.body {
                let v: serde_json::Value = serde_json::from_slice(json).unwrap();
                assert_eq!(v.as_array().unwrap().len(), 256);
            }
        }
    }

    #[test]
    fn a_span_over_the_bound_alone_is_dropped_not_sent() {
        for encoder in encoders() {
            let small = {
                let mut probe = spans(1, 10);
                encoder.encode(&mut probe, 1, usize::MAX).body.encoded_len()
            };
            // Room for the small span, not for one carrying a URL hundreds of bytes longer.
            let bound = small + 200;
            let mut pending = spans(1, 10);
            pending.extend(spans(1, 5000));
            let batch = encoder.encode(&mut pending, 256, bound);
            assert_eq!((batch.spans, batch.too_large), (1, 1));
            assert!(batch.body.encoded_len() <= bound);
        }
    }
}
