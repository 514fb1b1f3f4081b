//! Our exporter boundary: the one place that knows wire protocols. The pipeline only sees
//! [`Exporter::encode`] and [`Exporter::send`].
//!
//! Zipkin v2 JSON is encoded by [`super::zipkin`]: `opentelemetry-zipkin` (deprecated upstream)
//! writes no `localEndpoint.serviceName` and rewrites the `error` tag, both of which the
//! contract needs. OTLP spans are mapped to the OpenTelemetry SDK's form and encoded with the
//! official protobuf schema (`opentelemetry-proto`); the transport is ours rather than
//! `opentelemetry-otlp`'s, because a batch must be measured once encoded (to bound it by bytes)
//! and a failure must keep the collector's answer, neither of which that exporter exposes.
//!
//! Bodies are gzipped by default, as the OpenTelemetry Collector's own exporters do: Zipkin's
//! and the OpenTelemetry Collector's receivers (HTTP and gRPC) accept it, and span batches
//! shrink several times. A receiver that refuses it (HTTP 415, or gRPC UNIMPLEMENTED about the
//! encoding) gets the same batch again uncompressed, and uncompressed bodies from then on.

use bytes::Bytes;
use mesh_config::Protocol;
use opentelemetry::InstrumentationScope;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceResponse;
use opentelemetry_proto::tonic::common::v1::InstrumentationScope as ProtoScope;
use opentelemetry_proto::tonic::resource::v1::Resource as ProtoResource;
use opentelemetry_proto::transform::common::tonic::ResourceAttributesWithSchema;
use prost::Message as _;

use super::batch::{Batch, Body, Encoder, MAX_BATCH_BYTES};
use super::collector::Collector;
use super::gzip::Gzip;
use super::span::SpanRecord;
use super::transport::{GrpcSender, HttpSender};
use super::zipkin::ZipkinEncoder;
use super::Identity;

pub use super::transport::EXPORT_TIMEOUT;

/// Why an exporter could not be built. Retried with backoff (see `reload`).
#[derive(Clone, Debug, thiserror::Error)]
pub enum BuildError {
    #[error("invalid collector URL {url}: {reason}")]
    Url { url: String, reason: String },
    #[error("starting the export runtime: {0}")]
    Runtime(String),
    #[error("starting the export thread: {0}")]
    Thread(String),
    #[cfg(test)]
    #[error("injected build failure")]
    Injected,
}

/// Why one batch did not reach the collector. Its [`ExportError::kind`] is the `reason` label
/// of the spans it dropped.
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error("collector unreachable: {0}")]
    Unreachable(String),
    #[error("collector did not answer within {0:?}")]
    Timeout(std::time::Duration),
    #[error("connection to the collector failed mid-request: {0}")]
    Closed(String),
    #[error("collector answered {status}: {body}")]
    Status {
        status: http::StatusCode,
        /// The start of the answer's body, one printable line.
        body: String,
        retry_after: Option<std::time::Duration>,
    },
    #[error("collector answered gRPC status {code:?}: {message}")]
    Grpc { code: tonic::Code, message: String },
}

impl ExportError {
    /// A low-cardinality name for `/metrics`.
    pub fn kind(&self) -> &'static str {
        match self {
            ExportError::Unreachable(_) => "unreachable",
            ExportError::Timeout(_) => "timeout",
            ExportError::Closed(_) => "closed",
            ExportError::Status { .. } | ExportError::Grpc { .. } => "rejected",
        }
    }

    /// The collector's `Retry-After`, honoured as the least backoff.
    pub fn retry_after(&self) -> Option<std::time::Duration> {
        match self {
            ExportError::Status { retry_after, .. } => *retry_after,
            _ => None,
        }
    }

    /// The receiver does not take gzip bodies: worth one more try uncompressed.
    fn refuses_gzip(&self) -> bool {
        match self {
            ExportError::Status { status, .. } => {
                *status == http::StatusCode::UNSUPPORTED_MEDIA_TYPE
            }
            ExportError::Grpc { code, message } => {
                *code == tonic::Code::Unimplemented && message.contains("compress")
            }
            _ => false,
        }
    }
}

/// What the collector took of a batch.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Sent {
    /// Spans refused by an OTLP partial-success answer (the rest were accepted).
    pub rejected: u64,
    pub message: String,
}

/// A connected exporter for one collector.
#[derive(Debug)]
pub struct Exporter {
    pub collector: Collector,
    encoder: Encoder,
    sender: Sender,
    /// Compress bodies; turned off for good when the receiver refuses gzip.
    gzip: bool,
    /// The HTTP senders' compressor, kept between batches.
    packer: Gzip,
    /// The last batch's JSON body and gzip output, emptied and reused for the next batch: a
    /// full batch is about 160 KiB of JSON, and allocating it afresh cost the export thread a
    /// page fault per 4 KiB and an `madvise` when the allocator gave it back.
    spare_json: Vec<u8>,
    spare_packed: Vec<u8>,
}

/// One per exporter, built once: the size difference of its variants costs nothing.
#[derive(Debug)]
#[allow(clippy::large_enum_variant)]
enum Sender {
    Http(HttpSender),
    Grpc(GrpcSender),
}

impl Exporter {
    /// Builds the exporter for `collector`. Must run inside the tokio runtime that will drive
    /// it (the gRPC channel spawns its worker there).
    pub fn build(collector: &Collector, identity: &Identity) -> Result<Self, BuildError> {
        #[cfg(test)]
        faults::check(&collector.address)?;
        let url = collector.url();
        let otlp = || {
            let scope = InstrumentationScope::builder("mesh-proxy")
                .with_version(env!("CARGO_PKG_VERSION"))
                .build();
            let attributes = ResourceAttributesWithSchema::from(&super::otlp::resource(identity));
            Encoder::Otlp {
                resource: ProtoResource {
                    attributes: attributes.attributes.0,
                    dropped_attributes_count: 0,
                    entity_refs: Vec::new(),
                },
                proto_scope: ProtoScope::from((&scope, None)),
                scope,
            }
        };
        let (encoder, sender) = match collector.protocol {
            Protocol::Zipkin => (
                Encoder::Zipkin(ZipkinEncoder::new(
                    &identity.service_name(),
                    identity.pod_ip,
                )),
                Sender::Http(HttpSender::new(&url, "application/json")?),
            ),
            Protocol::OtlpHttp => (
                otlp(),
                Sender::Http(HttpSender::new(&url, "application/x-protobuf")?),
            ),
            Protocol::OtlpGrpc => (otlp(), Sender::Grpc(GrpcSender::new(&url)?)),
        };
        Ok(Self {
            collector: collector.clone(),
            encoder,
            sender,
            gzip: true,
            packer: Gzip::default(),
            spare_json: Vec::new(),
            spare_packed: Vec::new(),
        })
    }

    pub fn protocol(&self) -> Protocol {
        self.collector.protocol
    }

    /// Whether bodies are gzipped (until the receiver refuses it).
    pub fn gzip(&self) -> bool {
        self.gzip
    }

    /// One batch from the end of `pending` (the newest spans), bounded by `max_spans` and by
    /// [`MAX_BATCH_BYTES`].
    pub fn encode(&mut self, pending: &mut Vec<SpanRecord>, max_spans: usize) -> Batch {
        let buffer = std::mem::take(&mut self.spare_json);
        self.encoder
            .encode_into(pending, max_spans, MAX_BATCH_BYTES, buffer)
    }

    /// Takes back a batch that is done with (sent or not), to reuse its body's buffer.
    pub fn recycle(&mut self, batch: Batch) {
        if let Body::Json(json) = batch.body {
            self.spare_json = json;
        }
    }

    /// Whether the last batch's buffers (its body, and its gzip member once the HTTP client
    /// let go of it) are held for the next batch.
    #[cfg(test)]
    pub(crate) fn holds_spare_buffers(&self) -> bool {
        self.spare_json.capacity() > 0 && self.spare_packed.capacity() > 0
    }

    /// Sends one batch; each attempt is bounded by [`EXPORT_TIMEOUT`].
    pub async fn send(&mut self, batch: &Batch) -> Result<Sent, ExportError> {
        match self.attempt(batch).await {
            Err(e) if self.gzip && e.refuses_gzip() => {
                tracing::info!(collector = %self.collector, error = %e, "collector refuses gzip; sending uncompressed");
                self.gzip = false;
                self.attempt(batch).await
            }
            other => other,
        }
    }

    async fn attempt(&mut self, batch: &Batch) -> Result<Sent, ExportError> {
        match (&self.sender, &batch.body) {
            (Sender::Http(http), body) => {
                let protobuf;
                let raw: &[u8] = match body {
                    Body::Json(json) => json,
                    Body::Otlp(request) => {
                        protobuf = request.encode_to_vec();
                        &protobuf
                    }
                };
                let bytes = if self.gzip {
                    let mut packed = std::mem::take(&mut self.spare_packed);
                    self.packer.pack_into(raw, &mut packed);
                    Bytes::from(packed)
                } else {
                    Bytes::copy_from_slice(raw)
                };
                let answer = http.post(bytes.clone(), self.gzip).await;
                // The answer came after the whole body was written, so hyper has normally let
                // go of it: then its buffer is ours again, without a copy.
                if let Ok(buffer) = bytes.try_into_mut() {
                    self.spare_packed = buffer.into();
                }
                let answer = answer?;
                Ok(match body {
                    Body::Otlp(_) => partial_success(&answer.body),
                    Body::Json(_) => Sent::default(),
                })
            }
            (Sender::Grpc(grpc), Body::Otlp(request)) => {
                let partial = grpc.export(request.clone(), self.gzip).await?;
                Ok(partial
                    .map(|(rejected, message)| Sent {
                        rejected: rejected.max(0) as u64,
                        message,
                    })
                    .unwrap_or_default())
            }
            (Sender::Grpc(_), Body::Json(_)) => {
                unreachable!("the gRPC exporter is built with the OTLP encoder")
            }
        }
    }
}

/// An OTLP/HTTP answer's partial success; an empty or undecodable body means all accepted.
fn partial_success(body: &[u8]) -> Sent {
    match ExportTraceServiceResponse::decode(body) {
        Ok(ExportTraceServiceResponse {
            partial_success: Some(p),
        }) => Sent {
            rejected: p.rejected_spans.max(0) as u64,
            message: p.error_message,
        },
        _ => Sent::default(),
    }
}

/// Test-only build failures, keyed by collector address.
#[cfg(test)]
pub(crate) mod faults {
    use std::collections::HashMap;
    use std::sync::Mutex;

    static FAIL: Mutex<Option<HashMap<String, usize>>> = Mutex::new(None);

    /// The next `n` builds of an exporter for `address` fail.
    pub(crate) fn fail_builds(address: &str, n: usize) {
        let mut fail = FAIL.lock().unwrap();
        fail.get_or_insert_with(HashMap::new)
            .insert(address.to_owned(), n);
    }

    pub(super) fn check(address: &str) -> Result<(), super::BuildError> {
        let mut fail = FAIL.lock().unwrap_or_else(|p| p.into_inner());
        match fail.as_mut().and_then(|m| m.get_mut(address)) {
            Some(n) if *n > 0 => {
                *n -= 1;
                Err(super::BuildError::Injected)
            }
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partial_success_is_read_from_the_answer() {
        use opentelemetry_proto::tonic::collector::trace::v1::ExportTracePartialSuccess;
        let answer = ExportTraceServiceResponse {
            partial_success: Some(ExportTracePartialSuccess {
                rejected_spans: 3,
                error_message: "bad spans".into(),
            }),
        };
        assert_eq!(
            partial_success(&answer.encode_to_vec()),
            Sent {
                rejected: 3,
                message: "bad spans".into()
            }
        );
        assert_eq!(partial_success(b""), Sent::default());
        assert_eq!(partial_success(b"\xff\xff"), Sent::default());
    }
}
