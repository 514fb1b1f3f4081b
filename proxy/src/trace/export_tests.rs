//! The export side against real local collectors and misbehaving receivers: errors seen in the
//! log and `/config`, recovery, a hung collector, gzip, one exporter per collector, failed
//! builds, and reload through the path `mesh-proxy run` uses (`app::follow_config`).

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use mesh_config::{MeshConfig, Protocol, Tracing};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use prost::Message as _;
use tokio::sync::watch;
use tracemesh_collector::{Collector, CollectorConfig, RunningCollector};

use super::*;

const WAIT: Duration = Duration::from_secs(30);

fn identity() -> Identity {
    Identity {
        service: "b".into(),
        namespace: "default".into(),
        pod_name: String::new(),
        pod_ip: Some("127.0.0.1".parse().unwrap()),
    }
}

fn config(protocol: Protocol, addr: SocketAddr) -> Tracing {
    Tracing {
        enable: true,
        address: addr.ip().to_string(),
        port: addr.port(),
        endpoint: match protocol {
            Protocol::Zipkin => "/api/v2/spans".into(),
            _ => "/v1/traces".into(),
        },
        protocol,
        ..Tracing::default()
    }
}

async fn collector_at(addr: SocketAddr) -> RunningCollector {
    Collector::start(CollectorConfig {
        zipkin: Some(addr),
        otlp_http: None,
        otlp_grpc: None,
        out: None,
    })
    .await
    .unwrap()
}

async fn collector() -> RunningCollector {
    collector_at("127.0.0.1:0".parse().unwrap()).await
}

/// One finished request through the tracer, to `path`.
fn one(tracer: &Tracer, path: &str) {
    let mut parts = http::Request::get(format!("http://b.default:8080{path}"))
        .body(())
        .unwrap()
        .into_parts()
        .0;
    let span = tracer.start(
        Direction::Inbound,
        &mut parts,
        "10.0.0.1:4000".parse().unwrap(),
        "127.0.0.1:8080".parse().unwrap(),
    );
    span.finish(Outcome {
        status: Some(http::StatusCode::OK),
        ..Outcome::default()
    });
}

async fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while !cond() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn free_port() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

/// Every log line of this test binary (a global subscriber: the export threads log there).
fn log() -> &'static Arc<Mutex<Vec<u8>>> {
    static LOG: OnceLock<Arc<Mutex<Vec<u8>>>> = OnceLock::new();
    LOG.get_or_init(|| {
        let buffer = Arc::new(Mutex::new(Vec::new()));
        let writer = buffer.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_max_level(tracing::Level::INFO)
            .with_ansi(false)
            .with_writer(move || Capture(writer.clone()))
            .finish();
        tracing::subscriber::set_global_default(subscriber).expect("first subscriber");
        buffer
    })
}

struct Capture(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Capture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn log_lines(containing: &str) -> Vec<String> {
    let text = String::from_utf8_lossy(&log().lock().unwrap()).into_owned();
    text.lines()
        .filter(|l| l.contains(containing))
        .map(str::to_owned)
        .collect()
}

/// What a test receiver saw of one request.
#[derive(Clone, Debug)]
struct Seen {
    headers: http::HeaderMap,
    /// The body as sent (compressed when it says so).
    body: Bytes,
}

impl Seen {
    fn decoded(&self) -> Vec<u8> {
        if self
            .headers
            .get("content-encoding")
            .is_some_and(|e| e == "gzip")
        {
            let mut out = Vec::new();
            std::io::Read::read_to_end(&mut flate2::read::GzDecoder::new(&self.body[..]), &mut out)
                .unwrap();
            out
        } else {
            self.body.to_vec()
        }
    }

    /// The `http.url` tags of a Zipkin body.
    fn zipkin_urls(&self) -> Vec<String> {
        let spans: serde_json::Value = serde_json::from_slice(&self.decoded()).unwrap();
        spans
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s["tags"]["http.url"].as_str().unwrap().to_owned())
            .collect()
    }
}

type Answer =
    Arc<dyn Fn(&Seen) -> (u16, Vec<(&'static str, &'static str)>, &'static str) + Send + Sync>;

/// An HTTP receiver that records every request and answers as `answer` says, once `gate` is
/// true (a hung collector until then).
struct Receiver {
    addr: SocketAddr,
    seen: Arc<Mutex<Vec<Seen>>>,
    /// Bumped when a request's body has been read.
    arrived: watch::Receiver<usize>,
    gate: watch::Sender<bool>,
}

async fn receiver(answer: Answer) -> Receiver {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let (arrived_tx, arrived) = watch::channel(0usize);
    let arrived_tx = Arc::new(arrived_tx);
    let (gate, gate_rx) = watch::channel(true);
    let task_seen = seen.clone();
    tokio::spawn(async move {
        while let Ok((io, _)) = listener.accept().await {
            let (seen, arrived, gate, answer) = (
                task_seen.clone(),
                arrived_tx.clone(),
                gate_rx.clone(),
                answer.clone(),
            );
            tokio::spawn(async move {
                let service =
                    hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| {
                        let (seen, arrived, mut gate, answer) =
                            (seen.clone(), arrived.clone(), gate.clone(), answer.clone());
                        async move {
                            let (parts, body) = req.into_parts();
                            let body = body.collect().await.unwrap().to_bytes();
                            let request = Seen {
                                headers: parts.headers,
                                body,
                            };
                            let (status, headers, text) = answer(&request);
                            seen.lock().unwrap().push(request);
                            arrived.send_modify(|n| *n += 1);
                            let _ = gate.wait_for(|open| *open).await;
                            let mut response =
                                http::Response::new(Full::new(Bytes::from_static(text.as_bytes())));
                            *response.status_mut() = http::StatusCode::from_u16(status).unwrap();
                            for (k, v) in headers {
                                response.headers_mut().insert(k, v.parse().unwrap());
                            }
                            Ok::<_, std::convert::Infallible>(response)
                        }
                    });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(io), service)
                    .await;
            });
        }
    });
    Receiver {
        addr,
        seen,
        arrived,
        gate,
    }
}

impl Receiver {
    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    async fn wait_for_requests(&mut self, n: usize) {
        tokio::time::timeout(WAIT, self.arrived.wait_for(|got| *got >= n))
            .await
            .unwrap_or_else(|_| panic!("timed out waiting for {n} requests"))
            .unwrap();
    }
}

fn answering(status: u16, body: &'static str) -> Answer {
    Arc::new(move |_| (status, vec![("retry-after", "1")], body))
}

#[tokio::test]
async fn error_answers_are_logged_at_warn_with_the_collectors_answer_and_counted() {
    log();
    for (status, body) in [
        (404, "no receiver at /wrong; use POST /api/v2/spans"),
        (500, "storage backend unavailable"),
        (429, "over the ingestion rate limit"),
    ] {
        let mut r = receiver(answering(status, body)).await;
        let tracer = Tracer::new(identity(), TraceMetrics::default());
        let mut c = config(Protocol::Zipkin, r.addr);
        c.endpoint = "/wrong".into();
        tracer.apply(&c);
        one(&tracer, "/a");
        r.wait_for_requests(1).await;
        wait_until("the failure counted", || {
            tracer.metrics().totals().export_errors == 1
        })
        .await;
        assert_eq!(tracer.metrics().dropped_for("rejected"), 1);
        let report = tracer.status().export.unwrap();
        let last = report.last_error.unwrap();
        assert_eq!(last.kind, "rejected");
        assert!(last.message.contains(&status.to_string()), "{last:?}");
        assert!(last.message.contains(body), "{last:?}");
        let port = format!(":{}/wrong", r.addr.port());
        let lines = log_lines(&port);
        assert_eq!(lines.len(), 1, "{lines:?}");
        assert!(lines[0].contains(" WARN "), "{}", lines[0]);
        assert!(lines[0].contains(body), "{}", lines[0]);

        // The next failure (after a backoff) is counted but not logged: one line per interval.
        one(&tracer, "/b");
        r.wait_for_requests(2).await;
        wait_until("the second failure counted", || {
            tracer.status().export.unwrap().suppressed_warnings == 1
        })
        .await;
        assert_eq!(log_lines(&port).len(), 1);
        assert_eq!(tracer.status().export.unwrap().consecutive_failures, 2);
    }
}

#[tokio::test]
async fn refused_and_closed_mid_request_are_counted_by_reason() {
    // Refused: nothing listens.
    let tracer = Tracer::new(identity(), TraceMetrics::default());
    tracer.apply(&config(Protocol::OtlpHttp, free_port()));
    one(&tracer, "/");
    wait_until("refused", || {
        tracer.metrics().dropped_for("unreachable") == 1
    })
    .await;
    assert_eq!(
        tracer.status().export.unwrap().last_error.unwrap().kind,
        "unreachable"
    );

    // Closed mid-request: reads the request head, then closes.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut io, _)) = listener.accept().await {
            let mut head = [0u8; 64];
            let _ = tokio::io::AsyncReadExt::read(&mut io, &mut head).await;
            drop(io);
        }
    });
    let tracer = Tracer::new(identity(), TraceMetrics::default());
    tracer.apply(&config(Protocol::Zipkin, addr));
    one(&tracer, "/");
    wait_until("closed", || tracer.metrics().dropped_for("closed") == 1).await;
    let t = tracer.metrics().totals();
    assert_eq!((t.started, t.exported, t.dropped), (1, 0, 1));
}

#[tokio::test]
async fn a_collector_that_comes_back_receives_spans_again() {
    let addr = free_port();
    let tracer = Tracer::new(identity(), TraceMetrics::default());
    tracer.apply(&config(Protocol::Zipkin, addr));
    one(&tracer, "/down");
    wait_until("refused while down", || {
        tracer.metrics().dropped_for("unreachable") >= 1
    })
    .await;
    let c = collector_at(addr).await;
    // Spans keep coming; the next attempt after the backoff reaches the collector.
    let deadline = tokio::time::Instant::now() + WAIT;
    while c.spans().is_empty() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no span after recovery"
        );
        one(&tracer, "/up");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(c
        .spans()
        .iter()
        .all(|s| s.tag("http.url").unwrap().ends_with("/up")));
    wait_until("healthy again", || {
        tracer.status().export.unwrap().consecutive_failures == 0
    })
    .await;
}

#[tokio::test]
async fn a_hung_collector_holds_one_batch_while_new_spans_are_accepted_and_go_first() {
    let mut r = receiver(Arc::new(|_| (202, vec![], ""))).await;
    r.gate.send_replace(false);
    let tracer = Tracer::new(identity(), TraceMetrics::default());
    tracer.apply(&config(Protocol::Zipkin, r.addr));
    for i in 0..pipeline::MAX_BATCH + 10 {
        one(&tracer, &format!("/stale/{i}"));
    }
    r.wait_for_requests(1).await;
    // While the first batch hangs, a queue's worth of fresh spans is taken without blocking.
    let fresh = pipeline::QUEUE_CAPACITY + 100;
    for i in 0..fresh {
        one(&tracer, &format!("/fresh/{i}"));
    }
    let first = r.seen()[0].zipkin_urls();
    assert_eq!(first.len(), pipeline::MAX_BATCH);
    assert!(first.iter().all(|u| u.contains("/stale/")));
    assert_eq!(*r.arrived.borrow(), 1, "one batch at a time");
    let evicted = tracer.metrics().dropped_for("queue_full");
    assert!(evicted >= 100, "oldest evicted: {evicted}");

    r.gate.send_replace(true);
    r.wait_for_requests(2).await;
    let second = r.seen()[1].zipkin_urls();
    assert!(second.iter().all(|u| u.contains("/fresh/")), "{second:?}");
    let newest = format!("/fresh/{}", fresh - 1);
    assert!(second.iter().any(|u| u.ends_with(&newest)), "newest first");
    wait_until("everything accounted for", || {
        let t = tracer.metrics().totals();
        t.started == t.exported + t.dropped
    })
    .await;
    let t = tracer.metrics().totals();
    assert_eq!(t.export_errors, 0);
    assert_eq!(t.exported + evicted, t.started);
}

#[tokio::test]
async fn bodies_are_gzipped_and_decode_with_the_official_schemas() {
    let mut r = receiver(Arc::new(|_| (200, vec![], ""))).await;
    let tracer = Tracer::new(identity(), TraceMetrics::default());
    tracer.apply(&config(Protocol::Zipkin, r.addr));
    one(&tracer, "/zipkin");
    r.wait_for_requests(1).await;
    tracer.apply(&config(Protocol::OtlpHttp, r.addr));
    one(&tracer, "/otlp");
    r.wait_for_requests(2).await;
    let seen = r.seen();
    for s in &seen {
        assert_eq!(s.headers["content-encoding"], "gzip");
        assert!(s.body.starts_with(&[0x1f, 0x8b]), "a gzip stream");
    }
    assert_eq!(seen[0].headers["content-type"], "application/json");
    assert!(seen[0].zipkin_urls()[0].ends_with("/zipkin"));
    assert_eq!(seen[1].headers["content-type"], "application/x-protobuf");
    let request = ExportTraceServiceRequest::decode(&seen[1].decoded()[..]).unwrap();
    let spans = &request.resource_spans[0].scope_spans[0].spans;
    assert_eq!(spans.len(), 1);

    // OTLP/gRPC: the tracemesh collector's receiver takes gzip like the OpenTelemetry
    // Collector's; the call says so in `grpc-encoding`.
    let c = Collector::start(CollectorConfig {
        zipkin: None,
        otlp_http: None,
        otlp_grpc: Some("127.0.0.1:0".parse().unwrap()),
        out: None,
    })
    .await
    .unwrap();
    let proxy = grpc_encoding_spy(c.otlp_grpc.unwrap()).await;
    tracer.apply(&config(Protocol::OtlpGrpc, proxy.0));
    one(&tracer, "/grpc");
    let spans = c.wait_for_spans(1, WAIT).await.unwrap();
    assert_eq!(spans.len(), 1);
    assert_eq!(proxy.1.lock().unwrap().as_slice(), ["gzip"]);
}

/// A TCP relay to `target` that records the `grpc-encoding` of each HTTP/2 request it sees,
/// by reading the request with hyper and forwarding it with a hyper client.
async fn grpc_encoding_spy(target: SocketAddr) -> (SocketAddr, Arc<Mutex<Vec<String>>>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let task_seen = seen.clone();
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .http2_only(true)
        .build_http::<hyper::body::Incoming>();
    tokio::spawn(async move {
        while let Ok((io, _)) = listener.accept().await {
            let (seen, client) = (task_seen.clone(), client.clone());
            tokio::spawn(async move {
                let service = hyper::service::service_fn(
                    move |mut req: http::Request<hyper::body::Incoming>| {
                        let (seen, client) = (seen.clone(), client.clone());
                        async move {
                            if let Some(e) = req.headers().get("grpc-encoding") {
                                seen.lock().unwrap().push(e.to_str().unwrap().to_owned());
                            }
                            let uri = format!("http://{target}{}", req.uri().path());
                            *req.uri_mut() = uri.parse().unwrap();
                            client.request(req).await
                        }
                    },
                );
                let _ =
                    hyper::server::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
                        .serve_connection(hyper_util::rt::TokioIo::new(io), service)
                        .await;
            });
        }
    });
    (addr, seen)
}

#[tokio::test]
async fn a_receiver_refusing_gzip_gets_the_batch_again_uncompressed() {
    let mut r = receiver(Arc::new(|seen| {
        if seen.headers.contains_key("content-encoding") {
            (415, vec![], "gzip not supported")
        } else {
            (202, vec![], "")
        }
    }))
    .await;
    let tracer = Tracer::new(identity(), TraceMetrics::default());
    tracer.apply(&config(Protocol::Zipkin, r.addr));
    one(&tracer, "/first");
    r.wait_for_requests(2).await;
    one(&tracer, "/second");
    r.wait_for_requests(3).await;
    let seen = r.seen();
    assert!(seen[0].headers.contains_key("content-encoding"));
    assert!(!seen[1].headers.contains_key("content-encoding"));
    assert!(seen[1].zipkin_urls()[0].ends_with("/first"));
    assert!(
        !seen[2].headers.contains_key("content-encoding"),
        "stays off"
    );
    wait_until("both exported", || tracer.metrics().totals().exported == 2).await;
    assert_eq!(tracer.metrics().totals().export_errors, 0);
}

fn snapshot(tracing: Tracing, generation: u64) -> Arc<crate::config::Snapshot> {
    let mut doc = MeshConfig::default();
    doc.spec.observability.tracing = tracing;
    Arc::new(crate::config::Snapshot {
        config: Arc::new(doc),
        generation,
        ..crate::config::Snapshot::default_config()
    })
}

#[tokio::test]
async fn reload_keeps_the_exporter_for_a_sampling_change_and_swaps_it_for_a_new_collector() {
    let old = collector().await;
    let new = collector().await;
    let tracer = Tracer::new(identity(), TraceMetrics::default());
    let first = config(Protocol::Zipkin, old.zipkin.unwrap());
    let (tx, rx) = watch::channel(snapshot(first.clone(), 1));
    let metrics =
        crate::metrics::Metrics::new(&mut prometheus_client::registry::Registry::default());
    let follower = tokio::spawn(crate::app::follow_config(rx, metrics, tracer.clone(), None));
    wait_until("first applied", || tracer.current().config == first).await;
    assert_eq!(tracer.metrics().exporters_started.get(), 1);
    assert_eq!(tracer.status().exporter_generation, Some(1));

    // A sampling change: same exporter, no new thread.
    let mut sampled = first.clone();
    sampled.sampled_fraction = 0.5;
    tx.send(snapshot(sampled.clone(), 2)).unwrap();
    wait_until("sampling applied", || tracer.current().config == sampled).await;
    assert_eq!(tracer.metrics().exporters_started.get(), 1);
    assert_eq!(tracer.status().exporter_generation, Some(1));

    // Spans queued, one request still in flight, then a new collector.
    let mut everything = sampled.clone();
    everything.sampled_fraction = 1.0;
    tx.send(snapshot(everything.clone(), 3)).unwrap();
    wait_until("full sampling", || tracer.current().config == everything).await;
    for _ in 0..200 {
        one(&tracer, "/queued");
    }
    let mut parts = http::Request::get("http://b.default:8080/in-flight")
        .body(())
        .unwrap()
        .into_parts()
        .0;
    let in_flight = tracer.start(
        Direction::Inbound,
        &mut parts,
        "10.0.0.1:4000".parse().unwrap(),
        "127.0.0.1:8080".parse().unwrap(),
    );
    let retired = tracer.current().pipeline.clone().unwrap();
    let target = config(Protocol::Zipkin, new.zipkin.unwrap());
    tx.send(snapshot(target.clone(), 4)).unwrap();
    wait_until("new collector applied", || {
        tracer.current().config == target
    })
    .await;
    assert_eq!(tracer.metrics().exporters_started.get(), 2);
    assert_eq!(tracer.status().exporter_generation, Some(2));
    // The old exporter flushes what it queued to the old collector and its thread ends, even
    // though a request it started on is still running.
    tokio::time::timeout(WAIT, retired.finished())
        .await
        .expect("the old exporter ends");
    assert_eq!(old.wait_for_spans(200, WAIT).await.unwrap().len(), 200);
    // The in-flight span goes to the new collector, with what is recorded after the switch.
    in_flight.finish(Outcome::default());
    one(&tracer, "/after");
    let spans = new.wait_for_spans(2, WAIT).await.unwrap();
    let urls: Vec<_> = spans
        .iter()
        .map(|s| s.tag("http.url").unwrap().to_owned())
        .collect();
    assert!(urls.iter().any(|u| u.ends_with("/in-flight")), "{urls:?}");
    assert!(urls.iter().any(|u| u.ends_with("/after")), "{urls:?}");
    drop(retired);

    // Off: nothing is recorded, and no exporter runs.
    let mut off = target.clone();
    off.enable = false;
    tx.send(snapshot(off.clone(), 5)).unwrap();
    wait_until("disabled", || tracer.current().config == off).await;
    assert!(tracer.status().collector.is_none());
    let t = tracer.metrics().totals();
    assert_eq!(t.started, 202);
    drop(tx);
    follower.await.unwrap();
}

#[tokio::test]
async fn an_exporter_that_fails_to_build_is_retried_with_backoff_and_not_recorded_as_applied() {
    let good = collector().await;
    // Only this test uses 127.0.0.3 (all of 127/8 is loopback on Linux).
    let bad = collector_at("127.0.0.3:0".parse().unwrap()).await;
    let tracer = Tracer::new(identity(), TraceMetrics::default());
    let mut registry = prometheus_client::registry::Registry::default();
    tracer.metrics().register(&mut registry);
    let admin = crate::admin::Admin::new(
        registry,
        crate::config::fixed(crate::config::Snapshot::default_config()),
        tracer.clone(),
    );
    let get = |path: &str| {
        let response = admin.respond(
            &http::Request::get(path).body(()).unwrap(),
            std::net::IpAddr::from([127, 0, 0, 1]),
        );
        let body = futures_util::FutureExt::now_or_never(response.into_body().collect())
            .unwrap()
            .unwrap()
            .to_bytes();
        String::from_utf8(body.to_vec()).unwrap()
    };
    let first = config(Protocol::Zipkin, good.zipkin.unwrap());
    tracer.apply(&first);

    let target = config(Protocol::Zipkin, bad.zipkin.unwrap());
    export::faults::fail_builds("127.0.0.3", 2);
    tracer.apply(&target);
    assert_eq!(tracer.current().config, first, "not recorded as applied");
    let status: serde_json::Value = serde_json::from_str(&get("/config")).unwrap();
    let build = &status["tracing"]["build_error"];
    assert_eq!(build["attempts"], 1, "{status}");
    assert!(
        build["error"].as_str().unwrap().contains("injected"),
        "{status}"
    );
    assert!(build["collector"].as_str().unwrap().contains("127.0.0.3"));
    assert!(get("/metrics").contains("mesh_proxy_trace_exporter_build_failing 1"));
    // The previous exporter keeps working meanwhile, and applying the same block again does
    // not pile up builds.
    tracer.apply(&target);
    one(&tracer, "/meanwhile");
    good.wait_for_spans(1, WAIT).await.unwrap();

    wait_until("built on a retry", || tracer.build_status().is_none()).await;
    assert_eq!(tracer.current().config, target);
    let metrics = get("/metrics");
    assert!(
        metrics.contains("mesh_proxy_trace_exporter_build_failing 0"),
        "{metrics}"
    );
    assert!(
        metrics.contains("mesh_proxy_trace_exporter_build_errors_total{protocol=\"zipkin\"} 2"),
        "{metrics}"
    );
    one(&tracer, "/built");
    let spans = bad.wait_for_spans(1, WAIT).await.unwrap();
    assert!(spans[0].tag("http.url").unwrap().ends_with("/built"));
}

/// An OTLP/gRPC receiver that takes identity-encoded calls only (tonic's default), as a
/// receiver built without gzip support would.
#[derive(Default)]
struct IdentityOnly {
    spans: Arc<Mutex<usize>>,
}

#[tonic::async_trait]
impl opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::TraceService
    for IdentityOnly
{
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<
        tonic::Response<
            opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceResponse,
        >,
        tonic::Status,
    > {
        let n: usize = request
            .get_ref()
            .resource_spans
            .iter()
            .flat_map(|r| &r.scope_spans)
            .map(|s| s.spans.len())
            .sum();
        *self.spans.lock().unwrap() += n;
        Ok(tonic::Response::new(Default::default()))
    }
}

#[tokio::test]
async fn a_grpc_receiver_without_gzip_gets_the_call_again_uncompressed() {
    use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::TraceServiceServer;
    log();
    let receiver = IdentityOnly::default();
    let spans = receiver.spans.clone();
    let service = TraceServiceServer::new(receiver);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((io, _)) = listener.accept().await {
            let service = service.clone();
            let service = hyper::service::service_fn(move |req| {
                tower::ServiceExt::oneshot(service.clone(), req)
            });
            tokio::spawn(
                hyper::server::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
                    .serve_connection(hyper_util::rt::TokioIo::new(io), service),
            );
        }
    });
    let tracer = Tracer::new(identity(), TraceMetrics::default());
    tracer.apply(&config(Protocol::OtlpGrpc, addr));
    one(&tracer, "/first");
    wait_until("exported uncompressed", || *spans.lock().unwrap() == 1).await;
    one(&tracer, "/second");
    wait_until("the next one too", || *spans.lock().unwrap() == 2).await;
    wait_until("counted", || tracer.metrics().totals().exported == 2).await;
    assert_eq!(tracer.metrics().totals().export_errors, 0);
    let refused = log_lines(&format!("http://{addr} "));
    assert_eq!(refused.len(), 1, "{refused:?}");
    assert!(refused[0].contains("refuses gzip"), "{refused:?}");
}

/// Batch after batch, the exporter writes the JSON body and the gzip member into the buffers
/// of the batch before (no fresh 160 KiB allocation per batch), and every batch still arrives
/// whole and in order.
#[tokio::test]
async fn batches_reuse_the_buffers_of_the_batch_before() {
    let mut r = receiver(Arc::new(|_| (202, vec![], ""))).await;
    let collector = super::collector::Collector::of(&config(Protocol::Zipkin, r.addr));
    let mut exporter = export::Exporter::build(&collector, &identity()).unwrap();
    let mut pointers = Vec::new();
    for round in 0..3 {
        let mut pending: Vec<_> = (0..40)
            .map(|i| {
                super::span::tests::fixture(
                    Direction::Inbound,
                    &format!("http://b.default/{round}/{i}"),
                    200,
                )
            })
            .collect();
        let batch = exporter.encode(&mut pending, 40);
        assert_eq!(batch.spans, 40);
        let batch::Body::Json(json) = &batch.body else {
            panic!("a Zipkin body")
        };
        pointers.push(json.as_ptr());
        exporter.send(&batch).await.unwrap();
        exporter.recycle(batch);
        assert!(exporter.holds_spare_buffers(), "buffers not kept");
    }
    assert_eq!(pointers[1], pointers[0], "the body buffer was not reused");
    assert_eq!(pointers[2], pointers[0], "the body buffer was not reused");
    r.wait_for_requests(3).await;
    let seen = r.seen();
    for (round, s) in seen.iter().enumerate() {
        let urls = s.zipkin_urls();
        assert_eq!(urls.len(), 40);
        // The newest span goes first.
        assert_eq!(urls[0], format!("http://b.default/{round}/39"));
        assert_eq!(urls[39], format!("http://b.default/{round}/0"));
    }
}
