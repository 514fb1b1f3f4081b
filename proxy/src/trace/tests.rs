//! The tracer end to end inside one process: requests through `start`/`finish`, spans into a
//! real collector (all three protocols), failure modes of the collector, and reload.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use mesh_config::{Protocol, Tracing};
use tracemesh_collector::{Collector, CollectorConfig, RunningCollector};

use super::*;

const WAIT: Duration = Duration::from_secs(20);
const CALLER_TRACE: &str = "463ac35c9f6413ad48485a3953bb6124";
const CALLER_SPAN: &str = "a2fb4a1d1a96d312";

fn identity() -> Identity {
    Identity {
        service: "b".into(),
        namespace: "default".into(),
        pod_name: "b-7d4f9-x2x8q".into(),
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
        sampled_fraction: 1.0,
        ..Tracing::default()
    }
}

async fn collector() -> RunningCollector {
    let any: SocketAddr = "127.0.0.1:0".parse().unwrap();
    Collector::start(CollectorConfig {
        zipkin: Some(any),
        otlp_http: Some(any),
        otlp_grpc: Some(any),
        out: None,
    })
    .await
    .unwrap()
}

fn address_of(c: &RunningCollector, p: Protocol) -> SocketAddr {
    match p {
        Protocol::Zipkin => c.zipkin,
        Protocol::OtlpHttp => c.otlp_http,
        Protocol::OtlpGrpc => c.otlp_grpc,
    }
    .unwrap()
}

fn request(headers: &[(&str, &str)]) -> http::request::Parts {
    let mut b = http::Request::get("http://b.default:8080/items?id=7");
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    b.body(()).unwrap().into_parts().0
}

const PEER: &str = "10.0.0.1:4000";
const UPSTREAM: &str = "127.0.0.1:8080";

/// One request through the tracer, as the HTTP path drives it.
fn one(
    tracer: &Tracer,
    direction: Direction,
    headers: &[(&str, &str)],
    status: u16,
) -> http::request::Parts {
    let mut parts = request(headers);
    let span = tracer.start(
        direction,
        &mut parts,
        PEER.parse().unwrap(),
        UPSTREAM.parse().unwrap(),
    );
    span.finish(Outcome {
        status: http::StatusCode::from_u16(status).ok(),
        request_size: 5,
        response_size: 11,
        ..Outcome::default()
    });
    parts
}

#[tokio::test]
async fn server_span_reaches_collector_over_every_protocol() {
    let c = collector().await;
    let tracer = Tracer::new(identity(), TraceMetrics::default());
    for (i, protocol) in Protocol::ALL.into_iter().enumerate() {
        tracer.apply(&config(protocol, address_of(&c, protocol)));
        let parts = one(
            &tracer,
            Direction::Inbound,
            &[
                ("x-b3-traceid", CALLER_TRACE),
                ("x-b3-spanid", CALLER_SPAN),
                ("x-b3-sampled", "1"),
            ],
            503,
        );
        // The app sees this hop's SERVER span, with the caller's span as parent.
        let sent_span = parts.headers["x-b3-spanid"].to_str().unwrap().to_owned();
        assert_eq!(parts.headers["x-b3-parentspanid"], CALLER_SPAN);
        assert_eq!(parts.headers["x-b3-traceid"], CALLER_TRACE);
        assert!(parts.headers.contains_key("x-request-id"));

        let spans = c
            .wait_for_spans(i + 1, WAIT)
            .await
            .unwrap_or_else(|e| panic!("{protocol}: {e}"));
        let s = spans
            .iter()
            .find(|s| s.id == sent_span)
            .unwrap_or_else(|| panic!("{protocol}: {spans:?}"));
        assert_eq!(s.trace_id, CALLER_TRACE, "{protocol}");
        assert_eq!(s.parent_id.as_deref(), Some(CALLER_SPAN), "{protocol}");
        assert_eq!(s.kind.map(|k| k.as_str()), Some("SERVER"), "{protocol}");
        assert_eq!(s.service(), "b.default", "{protocol}");
        if protocol == Protocol::Zipkin {
            assert_eq!(s.tag("http.method"), Some("GET"));
            assert_eq!(s.tag("http.status_code"), Some("503"));
            assert_eq!(s.tag("http.url"), Some("http://b.default:8080/items?id=7"));
            assert_eq!(s.tag("peer.address"), Some(PEER));
            assert_eq!(s.tag("upstream_cluster"), Some("inbound|8080"));
            assert_eq!(s.tag("error"), Some("503"));
            assert_eq!(s.tag("response_size"), Some("11"));
        }
    }
    // The collector may hold the span before the exporter has counted its answer.
    wait_until("three exports counted", || {
        tracer.metrics().totals().exported == 3
    })
    .await;
    let totals = tracer.metrics().totals();
    assert_eq!(
        (
            totals.started,
            totals.exported,
            totals.dropped,
            totals.export_errors
        ),
        (3, 3, 0, 0)
    );
}

#[tokio::test]
async fn client_span_parent_is_the_apps_span() {
    let c = collector().await;
    let tracer = Tracer::new(identity(), TraceMetrics::default());
    tracer.apply(&config(Protocol::Zipkin, c.zipkin.unwrap()));
    let parts = one(
        &tracer,
        Direction::Outbound,
        &[("x-b3-traceid", CALLER_TRACE), ("x-b3-spanid", CALLER_SPAN)],
        200,
    );
    let spans = c.wait_for_spans(1, WAIT).await.unwrap();
    assert_eq!(spans[0].kind.map(|k| k.as_str()), Some("CLIENT"));
    assert_eq!(spans[0].id, parts.headers["x-b3-spanid"].to_str().unwrap());
    assert_eq!(spans[0].parent_id.as_deref(), Some(CALLER_SPAN));
    assert_eq!(parts.headers["x-b3-sampled"], "1");
    assert_eq!(
        spans[0].tag("upstream_cluster"),
        Some("outbound|b.default:8080")
    );
}

#[tokio::test]
async fn unsampled_and_disabled_build_no_span() {
    let c = collector().await;
    let tracer = Tracer::new(identity(), TraceMetrics::default());
    let mut parts = request(&[("x-b3-traceid", "BAD")]);
    let span = tracer.start(
        Direction::Inbound,
        &mut parts,
        PEER.parse().unwrap(),
        UPSTREAM.parse().unwrap(),
    );
    assert!(!span.is_recording());
    // Disabled: not a tracing hop, headers pass through.
    assert_eq!(parts.headers["x-b3-traceid"], "BAD");

    tracer.apply(&config(Protocol::Zipkin, c.zipkin.unwrap()));
    let mut parts = request(&[("x-b3-sampled", "0")]);
    let span = tracer.start(
        Direction::Inbound,
        &mut parts,
        PEER.parse().unwrap(),
        UPSTREAM.parse().unwrap(),
    );
    assert!(!span.is_recording());
    assert_eq!(parts.headers["x-b3-sampled"], "0");
    assert!(parts.headers.contains_key("x-b3-traceid"));

    let mut zero = config(Protocol::Zipkin, c.zipkin.unwrap());
    zero.sampled_fraction = 0.0;
    tracer.apply(&zero);
    for _ in 0..100 {
        let parts = one(&tracer, Direction::Inbound, &[], 200);
        assert_eq!(parts.headers["x-b3-sampled"], "0");
    }
    assert_eq!(tracer.metrics().totals().started, 0);
}

#[tokio::test]
async fn malformed_context_is_counted_and_replaced() {
    let c = collector().await;
    let tracer = Tracer::new(identity(), TraceMetrics::default());
    tracer.apply(&config(Protocol::Zipkin, c.zipkin.unwrap()));
    let parts = one(
        &tracer,
        Direction::Inbound,
        &[
            ("b3", "not-a-context"),
            ("x-b3-traceid", "XYZ"),
            ("x-b3-spanid", CALLER_SPAN),
        ],
        200,
    );
    assert_eq!(parts.headers["x-b3-traceid"].len(), 32);
    assert!(parts.headers.get("x-b3-parentspanid").is_none());
    assert_ne!(parts.headers["b3"], "not-a-context");
    let mut text = String::new();
    let mut registry = prometheus_client::registry::Registry::default();
    tracer.metrics().register(&mut registry);
    prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
    assert!(
        text.contains("mesh_proxy_trace_malformed_contexts_total{header=\"b3\"} 1"),
        "{text}"
    );
    assert!(
        text.contains("mesh_proxy_trace_spans_started_total{protocol=\"zipkin\"} 1"),
        "{text}"
    );
}

/// A receiver that answers every request with `status` after `delay`, counting requests.
async fn bad_collector(status: u16, delay: Duration) -> (SocketAddr, Arc<AtomicUsize>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let hits = Arc::new(AtomicUsize::new(0));
    let counter = hits.clone();
    tokio::spawn(async move {
        while let Ok((io, _)) = listener.accept().await {
            let counter = counter.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |_req| {
                    counter.fetch_add(1, Ordering::SeqCst);
                    async move {
                        tokio::time::sleep(delay).await;
                        let mut response =
                            http::Response::new(Full::new(Bytes::from_static(b"no")));
                        *response.status_mut() = http::StatusCode::from_u16(status).unwrap();
                        Ok::<_, std::convert::Infallible>(response)
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(io), service)
                    .await;
            });
        }
    });
    (addr, hits)
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

#[tokio::test]
async fn collector_down_counts_errors_and_drops() {
    let free = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let tracer = Tracer::new(identity(), TraceMetrics::default());
    tracer.apply(&config(Protocol::Zipkin, free));
    for _ in 0..50 {
        one(&tracer, Direction::Inbound, &[], 200);
    }
    wait_until("export error", || tracer.metrics().totals().dropped == 50).await;
    assert!(tracer.metrics().totals().export_errors >= 1);
}

#[tokio::test]
async fn collector_answering_500_counts_errors() {
    let (addr, hits) = bad_collector(500, Duration::ZERO).await;
    let tracer = Tracer::new(identity(), TraceMetrics::default());
    for protocol in [Protocol::Zipkin, Protocol::OtlpHttp] {
        tracer.apply(&config(protocol, addr));
        one(&tracer, Direction::Inbound, &[], 200);
    }
    wait_until("two failed exports", || {
        tracer.metrics().totals().export_errors >= 2
    })
    .await;
    assert!(hits.load(Ordering::SeqCst) >= 2);
    assert_eq!(tracer.metrics().totals().exported, 0);
}

#[tokio::test]
async fn slow_collector_fills_the_queue_and_drops_without_blocking() {
    let (addr, _) = bad_collector(200, Duration::from_secs(60)).await;
    let tracer = Tracer::new(identity(), TraceMetrics::default());
    tracer.apply(&config(Protocol::Zipkin, addr));
    let n = pipeline::QUEUE_CAPACITY + 2 * pipeline::MAX_BATCH;
    for _ in 0..n {
        one(&tracer, Direction::Inbound, &[], 200);
    }
    // At most one batch is in flight and one queue is buffered; the rest is dropped, counted.
    let t = tracer.metrics().totals();
    assert_eq!(t.started as usize, n);
    assert!(
        t.dropped as usize >= n - pipeline::QUEUE_CAPACITY - pipeline::MAX_BATCH,
        "{t:?}"
    );
}

#[tokio::test]
async fn flush_at_shutdown_exports_what_is_queued() {
    let c = collector().await;
    let tracer = Tracer::new(identity(), TraceMetrics::default());
    tracer.apply(&config(Protocol::OtlpHttp, c.otlp_http.unwrap()));
    for _ in 0..700 {
        one(&tracer, Direction::Inbound, &[], 200);
    }
    tracer.flush(WAIT).await;
    assert_eq!(tracer.metrics().totals().exported, 700);
    assert_eq!(c.spans().len(), 700);
    // Nothing is recorded after the flush.
    assert!(!tracer
        .start(
            Direction::Inbound,
            &mut request(&[]),
            PEER.parse().unwrap(),
            UPSTREAM.parse().unwrap()
        )
        .is_recording());
}
