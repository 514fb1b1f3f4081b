//! Sending one encoded batch and reading what the collector answered: an HTTP POST for Zipkin
//! and OTLP/HTTP, a `TraceService/Export` call for OTLP/gRPC.
//!
//! Every failure is translated here, once, into what it means for the exporter
//! ([`ExportError`]): the collector could not be reached, did not answer in time, dropped the
//! connection, or answered with an error (whose status and the start of whose body are kept,
//! since that is what tells a user a wrong path from an overloaded receiver).

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::TokioExecutor;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_client::TraceServiceClient;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use tonic::codec::CompressionEncoding;
use tonic::transport::{Channel, Endpoint};

use super::export::{BuildError, ExportError};

/// One export attempt's limit, the OpenTelemetry SDKs' default export timeout: a hung collector
/// costs the one batch in flight, never a request.
pub const EXPORT_TIMEOUT: Duration = Duration::from_secs(10);
/// A collector that does not accept a connection in this time is treated as unreachable.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// How much of an answer's body is read: enough for an OTLP partial-success message or an error
/// page's first lines, never a whole misrouted page.
const ANSWER_LIMIT: usize = 64 * 1024;
/// How much of an error answer goes into the log line and `/config`.
const SNIPPET_CHARS: usize = 256;
/// Idle connections are kept this long, so a steady trickle of batches reuses one.
const POOL_IDLE: Duration = Duration::from_secs(30);

/// An accepted answer's body (bounded by [`ANSWER_LIMIT`]).
#[derive(Debug, Default)]
pub struct Accepted {
    pub body: Bytes,
}

/// POSTs export bodies to one URL.
#[derive(Debug, Clone)]
pub struct HttpSender {
    client: Client<HttpConnector, Full<Bytes>>,
    url: http::Uri,
    content_type: &'static str,
}

impl HttpSender {
    pub fn new(url: &str, content_type: &'static str) -> Result<Self, BuildError> {
        let url = url
            .parse()
            .map_err(|e: http::uri::InvalidUri| BuildError::Url {
                url: url.to_owned(),
                reason: e.to_string(),
            })?;
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(CONNECT_TIMEOUT));
        connector.set_nodelay(true);
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(POOL_IDLE)
            .build(connector);
        Ok(Self {
            client,
            url,
            content_type,
        })
    }

    /// One POST and its answer, bounded by [`EXPORT_TIMEOUT`]; a non-2xx answer is an error.
    pub async fn post(&self, body: Bytes, gzip: bool) -> Result<Accepted, ExportError> {
        let mut request = http::Request::post(self.url.clone())
            .header(http::header::CONTENT_TYPE, self.content_type)
            .body(Full::new(body))
            .map_err(|e| ExportError::Closed(e.to_string()))?;
        if gzip {
            request.headers_mut().insert(
                http::header::CONTENT_ENCODING,
                http::HeaderValue::from_static("gzip"),
            );
        }
        let exchange = async {
            let response = self.client.request(request).await.map_err(classify)?;
            let (parts, body) = response.into_parts();
            let body = read_bounded(body).await?;
            if parts.status.is_success() {
                Ok(Accepted { body })
            } else {
                Err(ExportError::Status {
                    status: parts.status,
                    body: snippet(&body),
                    retry_after: retry_after(&parts.headers),
                })
            }
        };
        tokio::time::timeout(EXPORT_TIMEOUT, exchange)
            .await
            .unwrap_or(Err(ExportError::Timeout(EXPORT_TIMEOUT)))
    }
}

/// A hyper-util client error, as what happened to the collector.
fn classify(e: hyper_util::client::legacy::Error) -> ExportError {
    if e.is_connect() {
        return ExportError::Unreachable(source_text(&e));
    }
    ExportError::Closed(source_text(&e))
}

/// The innermost cause, which is what says "connection refused" or "connection reset".
fn source_text(e: &(dyn std::error::Error + 'static)) -> String {
    let mut inner = e;
    while let Some(next) = inner.source() {
        inner = next;
    }
    inner.to_string()
}

/// Reads at most [`ANSWER_LIMIT`] bytes of an answer; a longer one is cut (the rest is dropped
/// with the connection).
async fn read_bounded(mut body: hyper::body::Incoming) -> Result<Bytes, ExportError> {
    let mut out = Vec::new();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| ExportError::Closed(source_text(&e)))?;
        if let Ok(data) = frame.into_data() {
            let room = ANSWER_LIMIT - out.len();
            out.extend_from_slice(&data[..data.len().min(room)]);
            if out.len() == ANSWER_LIMIT {
                break;
            }
        }
    }
    Ok(Bytes::from(out))
}

/// The start of an answer's body as one printable line.
pub fn snippet(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    let mut out: String = text
        .trim()
        .chars()
        .take(SNIPPET_CHARS)
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    if text.trim().chars().count() > SNIPPET_CHARS {
        out.push('…');
    }
    out
}

/// `Retry-After` in seconds (the form collectors send with 429 and 503).
fn retry_after(headers: &http::HeaderMap) -> Option<Duration> {
    let value = headers.get(http::header::RETRY_AFTER)?.to_str().ok()?;
    value.trim().parse().ok().map(Duration::from_secs)
}

/// Calls `TraceService/Export` on one collector over a lazily connected channel.
#[derive(Debug, Clone)]
pub struct GrpcSender {
    client: TraceServiceClient<Channel>,
}

impl GrpcSender {
    /// Must run inside the tokio runtime that will drive the channel.
    pub fn new(url: &str) -> Result<Self, BuildError> {
        let endpoint = Endpoint::from_shared(url.to_owned()).map_err(|e| BuildError::Url {
            url: url.to_owned(),
            reason: e.to_string(),
        })?;
        let channel = endpoint
            .connect_timeout(CONNECT_TIMEOUT)
            .timeout(EXPORT_TIMEOUT)
            .tcp_nodelay(true)
            .connect_lazy();
        Ok(Self {
            client: TraceServiceClient::new(channel),
        })
    }

    /// One call; returns the partial-success part of the answer, if any.
    pub async fn export(
        &self,
        request: ExportTraceServiceRequest,
        gzip: bool,
    ) -> Result<Option<(i64, String)>, ExportError> {
        let mut client = self.client.clone();
        if gzip {
            client = client.send_compressed(CompressionEncoding::Gzip);
        }
        let call = client.export(request);
        let answer = tokio::time::timeout(EXPORT_TIMEOUT, call)
            .await
            .map_err(|_| ExportError::Timeout(EXPORT_TIMEOUT))?;
        match answer {
            Ok(response) => Ok(response
                .into_inner()
                .partial_success
                .map(|p| (p.rejected_spans, p.error_message))),
            Err(status) => Err(match status.code() {
                tonic::Code::Unavailable if std::error::Error::source(&status).is_some() => {
                    ExportError::Unreachable(source_text(&status))
                }
                tonic::Code::DeadlineExceeded => ExportError::Timeout(EXPORT_TIMEOUT),
                code => ExportError::Grpc {
                    code,
                    message: snippet(status.message().as_bytes()),
                },
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snippets_are_one_bounded_printable_line() {
        assert_eq!(snippet(b"  no receiver at /x\n"), "no receiver at /x");
        assert_eq!(snippet(b"a\r\nb\x1b[31m"), "a  b [31m");
        let long = snippet("é".repeat(1000).as_bytes());
        assert_eq!(long.chars().count(), SNIPPET_CHARS + 1);
        assert!(long.ends_with('…'));
        assert_eq!(snippet(&[0xff, b'x']), "\u{fffd}x");
    }

    #[test]
    fn retry_after_seconds() {
        let mut h = http::HeaderMap::new();
        assert_eq!(retry_after(&h), None);
        h.insert(http::header::RETRY_AFTER, "7".parse().unwrap());
        assert_eq!(retry_after(&h), Some(Duration::from_secs(7)));
        h.insert(
            http::header::RETRY_AFTER,
            "Wed, 21 Oct 2015 07:28:00 GMT".parse().unwrap(),
        );
        assert_eq!(retry_after(&h), None);
    }
}
