//! Our exporter boundary: the one place that knows wire protocols. The data path and the
//! pipeline only see [`Exporter::export`].
//!
//! Zipkin v2 JSON is encoded here: `opentelemetry-zipkin` (deprecated upstream) writes no
//! `localEndpoint.serviceName` and rewrites the `error` tag, both of which the contract needs.
//! OTLP goes through `opentelemetry-otlp` (HTTP protobuf with our hyper client, or gRPC with
//! tonic). Every exporter is built and runs on the pipeline's export thread (its own tokio
//! runtime), so its client always has a reactor and nothing blocks a request worker.

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::TokioExecutor;
use mesh_config::{Protocol, Tracing};
use opentelemetry::InstrumentationScope;
use opentelemetry_http::{HttpClient, HttpError};
use opentelemetry_otlp::{WithExportConfig, WithHttpConfig};
use opentelemetry_sdk::trace::SpanExporter as _;

use super::span::SpanRecord;
use super::zipkin::ZipkinEncoder;
use super::Identity;

/// One export attempt's limit: a slow collector costs the batch, never a request.
pub const EXPORT_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error("invalid collector URL {url}: {source}")]
    Url {
        url: String,
        source: http::uri::InvalidUri,
    },
    #[error("building the OTLP exporter: {0}")]
    Build(String),
    #[error("collector answered {0}")]
    Status(http::StatusCode),
    #[error("sending to the collector: {0}")]
    Send(String),
}

/// A connected exporter for one tracing config.
#[derive(Debug)]
pub struct Exporter {
    pub protocol: Protocol,
    kind: Kind,
}

#[derive(Debug)]
enum Kind {
    Zipkin {
        client: HyperClient,
        url: http::Uri,
        encoder: ZipkinEncoder,
    },
    Otlp {
        exporter: opentelemetry_otlp::SpanExporter,
        scope: InstrumentationScope,
    },
}

/// The collector URL a config points at. For OTLP/gRPC the endpoint path is ignored (the gRPC
/// method path is fixed).
pub fn collector_url(config: &Tracing) -> String {
    let host = if config.address.contains(':') && !config.address.starts_with('[') {
        format!("[{}]", config.address) // a bare IPv6 literal
    } else {
        config.address.clone()
    };
    match config.protocol {
        Protocol::OtlpGrpc => format!("http://{host}:{}", config.port),
        Protocol::Zipkin | Protocol::OtlpHttp => {
            format!("http://{host}:{}{}", config.port, config.endpoint)
        }
    }
}

impl Exporter {
    /// Builds the exporter for `config`. Must run inside the tokio runtime (tonic's channel
    /// spawns its worker there).
    pub fn build(config: &Tracing, identity: &Identity) -> Result<Self, ExportError> {
        let url = collector_url(config);
        let service = identity.service_name();
        let kind = match config.protocol {
            Protocol::Zipkin => Kind::Zipkin {
                client: HyperClient::new(),
                url: url.parse().map_err(|source| ExportError::Url {
                    url: url.clone(),
                    source,
                })?,
                encoder: ZipkinEncoder::new(&service, identity.pod_ip),
            },
            Protocol::OtlpHttp | Protocol::OtlpGrpc => {
                let built = if config.protocol == Protocol::OtlpHttp {
                    opentelemetry_otlp::SpanExporter::builder()
                        .with_http()
                        .with_http_client(HyperClient::new())
                        .with_protocol(opentelemetry_otlp::Protocol::HttpBinary)
                        .with_endpoint(url)
                        .with_timeout(EXPORT_TIMEOUT)
                        .build()
                } else {
                    opentelemetry_otlp::SpanExporter::builder()
                        .with_tonic()
                        .with_endpoint(url)
                        .with_timeout(EXPORT_TIMEOUT)
                        .build()
                };
                let mut exporter = built.map_err(|e| ExportError::Build(e.to_string()))?;
                exporter.set_resource(&super::otlp::resource(identity));
                let scope = InstrumentationScope::builder("mesh-proxy")
                    .with_version(env!("CARGO_PKG_VERSION"))
                    .build();
                Kind::Otlp { exporter, scope }
            }
        };
        Ok(Self {
            protocol: config.protocol,
            kind,
        })
    }

    /// Sends one batch. Bounded by [`EXPORT_TIMEOUT`].
    pub async fn export(&self, batch: &[SpanRecord]) -> Result<(), ExportError> {
        let send = async {
            match &self.kind {
                Kind::Zipkin {
                    client,
                    url,
                    encoder,
                } => {
                    client
                        .post_zipkin(url, Bytes::from(encoder.encode(batch)))
                        .await
                }
                Kind::Otlp { exporter, scope } => {
                    let spans = batch
                        .iter()
                        .map(|s| super::otlp::span_data(s, scope))
                        .collect();
                    exporter
                        .export(spans)
                        .await
                        .map_err(|e| ExportError::Send(e.to_string()))
                }
            }
        };
        match tokio::time::timeout(EXPORT_TIMEOUT, send).await {
            Ok(result) => result,
            Err(_) => Err(ExportError::Send("timed out".into())),
        }
    }
}

/// `opentelemetry_http::HttpClient` on hyper-util. Requests run on the tokio runtime that
/// built the client (captured handle), so the client also works when polled from a thread
/// without a reactor.
#[derive(Clone, Debug)]
pub struct HyperClient {
    client: Client<HttpConnector, Full<Bytes>>,
    runtime: tokio::runtime::Handle,
}

impl HyperClient {
    /// Must be called inside a tokio runtime (so no `Default`: it would panic elsewhere).
    #[allow(clippy::new_without_default)]
    pub fn new() -> Self {
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(Duration::from_secs(2)));
        connector.set_nodelay(true);
        Self {
            client: Client::builder(TokioExecutor::new())
                .pool_idle_timeout(Duration::from_secs(30))
                .build(connector),
            runtime: tokio::runtime::Handle::current(),
        }
    }
}

impl HttpClient for HyperClient {
    // The trait is declared with `#[async_trait]`; this is its expanded signature.
    fn send_bytes<'a, 'b>(
        &'a self,
        request: http::Request<Bytes>,
    ) -> Pin<Box<dyn Future<Output = Result<http::Response<Bytes>, HttpError>> + Send + 'b>>
    where
        'a: 'b,
        Self: 'b,
    {
        let client = self.clone();
        let task = self
            .runtime
            .spawn(async move { client.exchange(request).await });
        Box::pin(async move { task.await.map_err(|e| -> HttpError { Box::new(e) })? })
    }
}

impl HyperClient {
    /// One request and its whole answer, bounded by [`EXPORT_TIMEOUT`]. Runs on the runtime
    /// that polls it, which must be the one that built the client.
    pub async fn exchange(
        &self,
        request: http::Request<Bytes>,
    ) -> Result<http::Response<Bytes>, HttpError> {
        let exchange = async {
            let response = self.client.request(request.map(Full::new)).await?;
            let (parts, body) = response.into_parts();
            let body = body.collect().await?.to_bytes();
            Ok::<_, HttpError>(http::Response::from_parts(parts, body))
        };
        match tokio::time::timeout(EXPORT_TIMEOUT, exchange).await {
            Ok(result) => result,
            Err(elapsed) => Err(Box::new(elapsed) as HttpError),
        }
    }

    /// POSTs a Zipkin v2 JSON body; a non-2xx answer is an error.
    pub async fn post_zipkin(&self, url: &http::Uri, body: Bytes) -> Result<(), ExportError> {
        let request = http::Request::post(url.clone())
            .header(http::header::CONTENT_TYPE, "application/json")
            .body(body)
            .map_err(|e| ExportError::Send(e.to_string()))?;
        let response = self
            .exchange(request)
            .await
            .map_err(|e| ExportError::Send(e.to_string()))?;
        if response.status().is_success() {
            Ok(())
        } else {
            Err(ExportError::Status(response.status()))
        }
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
            sampled_fraction: 1.0,
            ..Tracing::default()
        }
    }

    #[test]
    fn urls_per_protocol() {
        assert_eq!(
            collector_url(&tracing(Protocol::OtlpHttp, "otel")),
            "http://otel:4317/v1/traces"
        );
        assert_eq!(
            collector_url(&tracing(Protocol::OtlpGrpc, "otel")),
            "http://otel:4317"
        );
        assert_eq!(
            collector_url(&tracing(Protocol::Zipkin, "::1")),
            "http://[::1]:4317/v1/traces"
        );
    }
}
