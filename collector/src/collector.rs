//! Starting and querying a collector, in-process (tests, `mesh demo`) or as `mesh collector`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use crate::span::Span;
use crate::store::Store;

/// Where to listen; port 0 picks a free port (see [`RunningCollector`] for the bound address).
#[derive(Debug, Clone, Default)]
pub struct CollectorConfig {
    /// Zipkin v2 JSON, `POST /api/v2/spans` (Zipkin's usual port is 9411).
    pub zipkin: Option<SocketAddr>,
    /// OTLP/HTTP protobuf, `POST /v1/traces` (usually 4318).
    pub otlp_http: Option<SocketAddr>,
    /// OTLP/gRPC `TraceService/Export` (usually 4317).
    pub otlp_grpc: Option<SocketAddr>,
    /// Appends every span as one Zipkin v2 JSON line.
    pub out: Option<PathBuf>,
}

/// Why a collector could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("no receiver configured: give at least one of zipkin, otlp-http, otlp-grpc")]
    NoReceiver,
    #[error("cannot listen on {addr} ({receiver}): {source}")]
    Bind {
        receiver: &'static str,
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("cannot open the output file {path}: {source}")]
    Out {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// Why waiting for spans ended without them: too few came in time, or a sender sent a span
/// the collector refused (a sender under test must send only valid spans).
#[derive(Debug, thiserror::Error)]
#[error("received {got} of {want} spans within {timeout:?}, refused {rejected} (the collector's log says why)")]
pub struct WaitError {
    pub got: usize,
    pub want: usize,
    pub rejected: usize,
    pub timeout: Duration,
}

/// The collector.
#[derive(Debug)]
pub struct Collector;

impl Collector {
    /// Binds every configured receiver and serves them on the current tokio runtime.
    pub async fn start(config: CollectorConfig) -> Result<RunningCollector, StartError> {
        if config.zipkin.is_none() && config.otlp_http.is_none() && config.otlp_grpc.is_none() {
            return Err(StartError::NoReceiver);
        }
        let store = Store::new(config.out.as_deref()).map_err(|source| StartError::Out {
            path: config.out.clone().unwrap_or_default(),
            source,
        })?;
        let store = Arc::new(store);
        let mut running = RunningCollector {
            zipkin: None,
            otlp_http: None,
            otlp_grpc: None,
            store: store.clone(),
            tasks: Vec::new(),
        };
        for (receiver, addr, slot) in [
            ("zipkin", config.zipkin, &mut running.zipkin),
            ("otlp-http", config.otlp_http, &mut running.otlp_http),
            ("otlp-grpc", config.otlp_grpc, &mut running.otlp_grpc),
        ] {
            let Some(addr) = addr else { continue };
            let bind_error = |source| StartError::Bind {
                receiver,
                addr,
                source,
            };
            let listener = TcpListener::bind(addr).await.map_err(bind_error)?;
            *slot = Some(listener.local_addr().map_err(bind_error)?);
            running
                .tasks
                .push(tokio::spawn(crate::http::serve(listener, store.clone())));
        }
        Ok(running)
    }
}

/// A serving collector; dropping it stops every receiver.
#[derive(Debug)]
pub struct RunningCollector {
    /// Bound Zipkin address, if configured.
    pub zipkin: Option<SocketAddr>,
    /// Bound OTLP/HTTP address, if configured.
    pub otlp_http: Option<SocketAddr>,
    /// Bound OTLP/gRPC address, if configured.
    pub otlp_grpc: Option<SocketAddr>,
    store: Arc<Store>,
    tasks: Vec<JoinHandle<()>>,
}

impl RunningCollector {
    /// Every span received so far, in arrival order.
    pub fn spans(&self) -> Vec<Span> {
        self.store.spans()
    }

    /// Spans grouped by trace id, traces ordered by start time.
    pub fn traces(&self) -> Vec<(String, Vec<Span>)> {
        crate::tree::group_by_trace(&self.store.spans())
    }

    /// Waits until at least `n` spans have arrived and returns them all; fails as soon as any
    /// span was refused, so a test of a sender stays as strict as a collector that rejects
    /// whole batches.
    pub async fn wait_for_spans(
        &self,
        n: usize,
        timeout: Duration,
    ) -> Result<Vec<Span>, WaitError> {
        let mut counts = self.store.subscribe();
        let _ = tokio::time::timeout(
            timeout,
            counts.wait_for(|c| c.received >= n || c.rejected > 0),
        )
        .await;
        let now = *counts.borrow();
        if now.received >= n && now.rejected == 0 {
            Ok(self.spans())
        } else {
            Err(WaitError {
                got: now.received,
                want: n,
                rejected: now.rejected,
                timeout,
            })
        }
    }

    /// Traces that received no span for `quiet`, each returned once (until it receives more).
    /// Returned traces become the first to be evicted when the collector's memory is full.
    pub fn take_completed(&self, quiet: Duration) -> Vec<Vec<Span>> {
        let mut done = self.store.take_quiet(quiet);
        done.sort_by_key(|spans| spans.iter().filter_map(|s| s.timestamp).min());
        done
    }

    /// Spans a receiver refused (invalid ids, timestamps...) while keeping the rest of their
    /// batch: a test of a sender asserts this stays zero.
    pub fn rejected(&self) -> usize {
        self.store.rejected()
    }

    /// Stops every receiver.
    pub fn shutdown(&mut self) {
        for task in self.tasks.drain(..) {
            task.abort();
        }
    }
}

impl Drop for RunningCollector {
    fn drop(&mut self) {
        self.shutdown();
    }
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;
    use std::time::Duration;

    use bytes::Bytes;
    use http_body_util::{BodyExt, Full};
    use hyper_util::client::legacy::Client;
    use hyper_util::rt::TokioExecutor;
    use opentelemetry::trace::{
        Span as _, SpanKind, Status, TraceContextExt, Tracer, TracerProvider,
    };
    use opentelemetry::KeyValue;
    use opentelemetry_otlp::{WithExportConfig, WithHttpConfig};
    use opentelemetry_sdk::trace::SdkTracerProvider;
    use opentelemetry_sdk::Resource;

    use super::*;
    use crate::span::Kind;

    /// Generous: nothing here should take more than a fraction of it.
    const WAIT: Duration = Duration::from_secs(30);

    fn loopback() -> Option<SocketAddr> {
        Some(SocketAddr::from(([127, 0, 0, 1], 0)))
    }

    async fn start_all(out: Option<PathBuf>) -> RunningCollector {
        Collector::start(CollectorConfig {
            zipkin: loopback(),
            otlp_http: loopback(),
            otlp_grpc: loopback(),
            out,
        })
        .await
        .expect("collector starts")
    }

    async fn post(
        addr: SocketAddr,
        path: &str,
        content_type: &str,
        body: Vec<u8>,
    ) -> (u16, String) {
        let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
        let request = http::Request::post(format!("http://{addr}{path}"))
            .header("content-type", content_type)
            .body(Full::new(Bytes::from(body)))
            .expect("request");
        let response = client.request(request).await.expect("response");
        let status = response.status().as_u16();
        let body = response
            .into_body()
            .collect()
            .await
            .expect("body")
            .to_bytes();
        (status, String::from_utf8_lossy(&body).into_owned())
    }

    /// Sends one SERVER span with a CLIENT child through a real OpenTelemetry SDK pipeline.
    /// The SDK's span processor exports synchronously off the runtime, as a sidecar's would not,
    /// so the spans are ended on a blocking thread.
    async fn send_with_sdk(exporter: impl opentelemetry_sdk::trace::SpanExporter + 'static) {
        let provider = SdkTracerProvider::builder()
            .with_simple_exporter(exporter)
            .with_resource(Resource::builder().with_service_name("a.demo").build())
            .build();
        let handle = tokio::runtime::Handle::current();
        tokio::task::spawn_blocking(move || {
            let _guard = handle.enter();
            let tracer = provider.tracer("tracemesh-test");
            let server = tracer
                .span_builder("GET /")
                .with_kind(SpanKind::Server)
                .with_attributes(vec![KeyValue::new("http.request.method", "GET")])
                .start(&tracer);
            let cx = opentelemetry::Context::current_with_span(server);
            let mut client = tracer
                .span_builder("GET")
                .with_kind(SpanKind::Client)
                .with_attributes(vec![KeyValue::new("http.response.status_code", 500_i64)])
                .start_with_context(&tracer, &cx);
            client.set_status(Status::error("upstream failed"));
            client.end();
            cx.span().end();
            provider.shutdown().expect("provider shuts down");
        })
        .await
        .expect("exporting thread");
    }

    fn assert_sdk_spans(spans: &[Span]) {
        assert_eq!(spans.len(), 2, "{spans:?}");
        let server = spans
            .iter()
            .find(|s| s.kind == Some(Kind::Server))
            .expect("server span");
        let client = spans
            .iter()
            .find(|s| s.kind == Some(Kind::Client))
            .expect("client span");
        assert_eq!(server.trace_id, client.trace_id);
        assert_eq!(server.trace_id.len(), 32);
        assert_eq!(client.parent_id.as_deref(), Some(server.id.as_str()));
        assert_eq!(server.parent_id, None);
        assert_eq!(server.service(), "a.demo");
        assert_eq!(server.name.as_deref(), Some("GET /"));
        assert_eq!(server.tag("http.request.method"), Some("GET"));
        assert_eq!(client.tag("http.response.status_code"), Some("500"));
        assert_eq!(client.tag("error"), Some("upstream failed"));
        for span in spans {
            assert!(crate::zipkin::validate(span).is_empty(), "{span:?}");
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn otlp_grpc_from_the_sdk_exporter() {
        let collector = start_all(None).await;
        let addr = collector.otlp_grpc.expect("bound");
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_tonic()
            .with_endpoint(format!("http://{addr}"))
            .build()
            .expect("exporter");
        send_with_sdk(exporter).await;
        let spans = collector.wait_for_spans(2, WAIT).await.expect("spans");
        assert_sdk_spans(&spans);
    }

    /// A minimal `HttpClient` for the SDK: runs each request on the test's runtime.
    #[derive(Debug)]
    struct HyperClient(tokio::runtime::Handle);

    #[tonic::async_trait]
    impl opentelemetry_http::HttpClient for HyperClient {
        async fn send_bytes(
            &self,
            request: http::Request<Bytes>,
        ) -> Result<http::Response<Bytes>, opentelemetry_http::HttpError> {
            self.0
                .spawn(async move {
                    let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
                    let response = client.request(request.map(Full::new)).await?;
                    let (parts, body) = response.into_parts();
                    let body = body.collect().await?.to_bytes();
                    Ok::<_, opentelemetry_http::HttpError>(http::Response::from_parts(parts, body))
                })
                .await?
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn otlp_http_protobuf_from_the_sdk_exporter() {
        let collector = start_all(None).await;
        let addr = collector.otlp_http.expect("bound");
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_http_client(HyperClient(tokio::runtime::Handle::current()))
            .with_endpoint(format!("http://{addr}/v1/traces"))
            .build()
            .expect("exporter");
        send_with_sdk(exporter).await;
        let spans = collector.wait_for_spans(2, WAIT).await.expect("spans");
        assert_sdk_spans(&spans);
    }

    // The crate is deprecated upstream, yet it is what Zipkin-speaking senders still use.
    #[allow(deprecated)]
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn zipkin_json_from_the_sdk_exporter() {
        let collector = start_all(None).await;
        let addr = collector.zipkin.expect("bound");
        let exporter = opentelemetry_zipkin::ZipkinExporter::builder()
            .with_http_client(HyperClient(tokio::runtime::Handle::current()))
            .with_collector_endpoint(format!("http://{addr}/api/v2/spans"))
            .build()
            .expect("exporter");
        send_with_sdk(exporter).await;
        let mut spans = collector.wait_for_spans(2, WAIT).await.expect("spans");
        // opentelemetry-zipkin 0.33 leaves localEndpoint empty (the resource never reaches it),
        // which is why the sidecar writes its Zipkin JSON itself; the rest must decode alike.
        for span in &mut spans {
            assert_eq!(span.service(), "");
            span.local_endpoint = Some(crate::span::Endpoint {
                service_name: Some("a.demo".into()),
                ..crate::span::Endpoint::default()
            });
        }
        assert_sdk_spans(&spans);
    }

    #[tokio::test]
    async fn otlp_grpc_refuses_bad_ids_with_invalid_argument() {
        use opentelemetry_proto::tonic::collector::trace::v1::trace_service_client::TraceServiceClient;
        let collector = start_all(None).await;
        let addr = collector.otlp_grpc.expect("bound");
        let mut client = TraceServiceClient::connect(format!("http://{addr}"))
            .await
            .expect("connect");
        let mut request = crate::otlp::tests::sample_request();
        request.resource_spans[0].scope_spans[0].spans[0].trace_id = vec![0; 16];
        let status = client.export(request).await.expect_err("refused");
        assert_eq!(status.code(), tonic::Code::InvalidArgument);
        assert!(
            status.message().contains("traceId: is all zeros"),
            "{}",
            status.message()
        );
        client
            .export(crate::otlp::tests::sample_request())
            .await
            .expect("a valid request is accepted");
        assert_eq!(collector.spans().len(), 1);
    }

    #[tokio::test]
    async fn zipkin_json_is_stored_and_written_to_out() {
        let dir = tempfile::tempdir().expect("tempdir");
        let out = dir.path().join("spans.jsonl");
        let collector = start_all(Some(out.clone())).await;
        let addr = collector.zipkin.expect("bound");
        let body = br#"[{"traceId":"48485a3953bb6124","id":"a2fb4a1d1a96d312","kind":"CLIENT",
            "name":"get","timestamp":1700000000000000,"duration":20,
            "localEndpoint":{"serviceName":"a.demo"},"tags":{"http.status_code":"200"}}]"#;
        let (status, _) = post(addr, "/api/v2/spans", "application/json", body.to_vec()).await;
        assert_eq!(status, 202);
        let spans = collector.wait_for_spans(1, WAIT).await.expect("spans");
        assert_eq!(spans[0].trace_id, "48485a3953bb6124");
        assert_eq!(spans[0].kind, Some(Kind::Client));
        assert_eq!(collector.traces().len(), 1);

        // An OTLP span arriving on another port lands in the same file, as Zipkin JSON.
        let otlp = prost::Message::encode_to_vec(&crate::otlp::tests::sample_request());
        let http_addr = collector.otlp_http.expect("bound");
        let (status, _) = post(http_addr, "/v1/traces", "application/x-protobuf", otlp).await;
        assert_eq!(status, 200);
        collector.wait_for_spans(2, WAIT).await.expect("spans");
        let lines: Vec<Span> = std::fs::read_to_string(&out)
            .expect("out file")
            .lines()
            .map(|l| serde_json::from_str(l).expect("zipkin json line"))
            .collect();
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[1].service(), "b.demo");
    }

    #[tokio::test]
    async fn bad_input_gets_a_clear_400_and_nothing_is_stored() {
        let collector = start_all(None).await;
        let zipkin = collector.zipkin.expect("bound");
        let otlp = collector.otlp_http.expect("bound");
        let (status, body) = post(zipkin, "/api/v2/spans", "application/json", b"{".to_vec()).await;
        assert_eq!(status, 400, "{body}");
        assert!(body.contains("Zipkin v2"), "{body}");
        let bad_id = br#"[{"traceId":"48485a3953bb6124","id":"A2FB4A1D1A96D312"}]"#.to_vec();
        let (status, body) = post(zipkin, "/api/v2/spans", "application/json", bad_id).await;
        assert_eq!(status, 400);
        assert!(
            body.contains("[0].id") && body.contains("lower-hex"),
            "{body}"
        );
        let (status, body) =
            post(otlp, "/v1/traces", "application/x-protobuf", vec![0xff; 7]).await;
        assert_eq!(status, 400);
        assert!(body.contains("OTLP"), "{body}");
        let (status, body) = post(
            otlp,
            "/v1/traces",
            "application/json",
            b"{\"resourceSpans\":7}".to_vec(),
        )
        .await;
        assert_eq!(status, 400);
        assert!(body.contains("OTLP/JSON"), "{body}");
        let (status, _) = post(otlp, "/v1/traces", "text/plain", b"{}".to_vec()).await;
        assert_eq!(status, 415);
        let (status, _) = post(otlp, "/nowhere", "application/json", Vec::new()).await;
        assert_eq!(status, 404);
        assert!(collector.spans().is_empty());
    }

    /// One bad span in a batch costs only itself: OTLP says so in `partial_success`, Zipkin
    /// (which has no such answer) accepts the rest; both count the refusal.
    #[tokio::test]
    async fn a_bad_span_is_refused_alone() {
        use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceResponse;
        let collector = start_all(None).await;
        let zipkin = collector.zipkin.expect("bound");
        let otlp = collector.otlp_http.expect("bound");
        let mixed = br#"[{"traceId":"48485a3953bb6124","id":"a2fb4a1d1a96d312"},
            {"traceId":"48485a3953bb6124","id":"A2FB4A1D1A96D312"}]"#;
        let (status, body) =
            post(zipkin, "/api/v2/spans", "application/json", mixed.to_vec()).await;
        assert_eq!(status, 202, "{body}");
        assert_eq!(collector.rejected(), 1);

        let mut request = crate::otlp::tests::sample_request();
        let mut bad = request.resource_spans[0].scope_spans[0].spans[0].clone();
        bad.span_id = vec![0; 8];
        request.resource_spans[0].scope_spans[0].spans.push(bad);
        let body = prost::Message::encode_to_vec(&request);
        let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
        let response = client
            .request(
                http::Request::post(format!("http://{otlp}/v1/traces"))
                    .header("content-type", "application/x-protobuf")
                    .body(Full::new(Bytes::from(body)))
                    .expect("request"),
            )
            .await
            .expect("response");
        assert_eq!(response.status(), 200);
        let bytes = response
            .into_body()
            .collect()
            .await
            .expect("body")
            .to_bytes();
        let reply: ExportTraceServiceResponse = prost::Message::decode(bytes).expect("protobuf");
        let partial = reply.partial_success.expect("partial success");
        assert_eq!(partial.rejected_spans, 1);
        assert!(
            partial.error_message.contains("spanId"),
            "{}",
            partial.error_message
        );
        assert_eq!(collector.rejected(), 2);
        let err = collector
            .wait_for_spans(2, WAIT)
            .await
            .expect_err("a span was refused");
        assert_eq!((err.got, err.rejected), (2, 2));
        assert_eq!(collector.spans().len(), 2);

        // OTLP/JSON gets its answer in JSON.
        let json = serde_json::to_vec(&request).expect("OTLP/JSON");
        let (status, body) = post(otlp, "/v1/traces", "application/json", json).await;
        assert_eq!(status, 200);
        let reply: serde_json::Value = serde_json::from_str(&body).expect("json reply");
        assert_eq!(reply["partialSuccess"]["rejectedSpans"], 1, "{body}");
        assert_eq!(collector.spans().len(), 3);
    }

    #[tokio::test]
    async fn gzip_bodies_are_inflated_and_bad_gzip_is_refused() {
        use std::io::Write as _;
        let collector = start_all(None).await;
        let addr = collector.zipkin.expect("bound");
        let json = br#"[{"traceId":"48485a3953bb6124","id":"a2fb4a1d1a96d312"}]"#;
        let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        encoder.write_all(json).expect("compress");
        let gzipped = encoder.finish().expect("compress");
        let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
        let send = |body: Vec<u8>| {
            let request = http::Request::post(format!("http://{addr}/api/v2/spans"))
                .header("content-type", "application/json")
                .header("content-encoding", "gzip")
                .body(Full::new(Bytes::from(body)))
                .expect("request");
            client.request(request)
        };
        assert_eq!(send(gzipped).await.expect("response").status(), 202);
        assert_eq!(
            collector.wait_for_spans(1, WAIT).await.expect("span").len(),
            1
        );
        assert_eq!(send(json.to_vec()).await.expect("response").status(), 400);
    }

    #[tokio::test]
    async fn waiting_for_spans_that_never_come_fails_with_the_count() {
        let collector = start_all(None).await;
        let err = collector
            .wait_for_spans(1, Duration::from_millis(50))
            .await
            .expect_err("no spans");
        assert_eq!((err.got, err.want), (0, 1));
    }

    #[tokio::test]
    async fn refuses_to_start_without_a_receiver() {
        let err = Collector::start(CollectorConfig::default())
            .await
            .expect_err("no receiver");
        assert!(matches!(err, StartError::NoReceiver));
    }
}
