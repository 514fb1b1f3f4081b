//! The layer's body and finish logic, against a real collector: each span is finished once,
//! at the end of its body, on a drop, or with an error when the body fails.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::Duration;

use http_body_util::BodyExt;
use mesh_config::{Protocol, Tracing};
use tower::{Layer, Service, ServiceExt};
use tracemesh_collector::{Collector, CollectorConfig, RunningCollector, Span};

use super::*;
use crate::trace::{Identity, TraceMetrics};

const WAIT: Duration = Duration::from_secs(20);

/// A response body that yields its frames, then ends, or hangs when `hang` is set.
#[derive(Debug)]
struct Scripted {
    frames: VecDeque<Result<Frame<Bytes>, std::io::Error>>,
    hang: bool,
}

impl Scripted {
    fn new(frames: Vec<Result<Frame<Bytes>, std::io::Error>>, hang: bool) -> Self {
        Self {
            frames: frames.into(),
            hang,
        }
    }
}

impl Body for Scripted {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, std::io::Error>>> {
        match self.frames.pop_front() {
            Some(f) => Poll::Ready(Some(f)),
            None if self.hang => Poll::Pending,
            None => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.frames.is_empty() && !self.hang
    }
}

/// A request body the tests drive by hand through its meter.
#[derive(Default)]
struct Req {
    meter: Option<Arc<Meter>>,
}

impl Measured for Req {
    fn measure(&mut self, meter: Arc<Meter>) {
        self.meter = Some(meter);
    }
}

async fn setup() -> (RunningCollector, Tracer) {
    let any: SocketAddr = "127.0.0.1:0".parse().unwrap();
    let c = Collector::start(CollectorConfig {
        zipkin: Some(any),
        otlp_http: None,
        otlp_grpc: None,
        out: None,
    })
    .await
    .unwrap();
    let addr = c.zipkin.unwrap();
    let tracer = Tracer::new(
        Identity {
            service: "b".into(),
            namespace: "default".into(),
            ..Identity::default()
        },
        TraceMetrics::default(),
    );
    tracer.apply(&Tracing {
        enable: true,
        address: addr.ip().to_string(),
        port: addr.port(),
        endpoint: "/api/v2/spans".into(),
        protocol: Protocol::Zipkin,
        sampled_fraction: 1.0,
        ..Tracing::default()
    });
    (c, tracer)
}

fn layer(tracer: &Tracer) -> TraceLayer {
    TraceLayer::new(
        tracer.clone(),
        Direction::Inbound,
        "10.0.0.1:4000".parse().unwrap(),
        "127.0.0.1:8080".parse().unwrap(),
    )
}

fn request(path: &str, grpc: bool) -> Request<Req> {
    let mut b = Request::post(format!("http://b.default:8080{path}"));
    if grpc {
        b = b.header("content-type", "application/grpc");
    }
    b.body(Req::default()).unwrap()
}

fn data(s: &'static str) -> Result<Frame<Bytes>, std::io::Error> {
    Ok(Frame::data(Bytes::from_static(s.as_bytes())))
}

fn trailers(status: &'static str) -> Result<Frame<Bytes>, std::io::Error> {
    let mut t = http::HeaderMap::new();
    t.insert("grpc-status", http::HeaderValue::from_static(status));
    Ok(Frame::trailers(t))
}

fn answer(
    status: u16,
    headers: &[(&'static str, &'static str)],
    body: Scripted,
) -> Result<Response<Scripted>, Failure> {
    let mut b = Response::builder().status(status);
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    Ok(b.body(body).unwrap())
}

/// Sends `req` through the layer to an inner service that answers `resp` (once).
async fn call(
    tracer: &Tracer,
    req: Request<Req>,
    resp: Result<Response<Scripted>, Failure>,
) -> Result<Response<SpanBody<Scripted>>, Failure> {
    let mut resp = Some(resp);
    layer(tracer)
        .layer(tower::service_fn(move |req: Request<Req>| {
            if let Some(m) = &req.body().meter {
                m.add(7);
            }
            let r = resp.take().expect("called once");
            async move { r }
        }))
        .oneshot(req)
        .await
}

async fn spans(c: &RunningCollector, tracer: &Tracer, n: usize) -> Vec<Span> {
    let spans = c.wait_for_spans(n, WAIT).await.unwrap();
    // Every started span was exported exactly once: none twice, none lost.
    let deadline = tokio::time::Instant::now() + WAIT;
    while tracer.metrics().totals().exported < n as u64 {
        assert!(tokio::time::Instant::now() < deadline, "not exported");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let t = tracer.metrics().totals();
    assert_eq!((t.started, t.exported, t.dropped), (n as u64, n as u64, 0));
    spans
}

#[tokio::test]
async fn a_span_ends_once_at_the_end_of_its_body() {
    let (c, tracer) = setup().await;
    let body = Scripted::new(vec![data("hello"), data(" world")], false);
    let resp = call(&tracer, request("/items", false), answer(200, &[], body))
        .await
        .unwrap();
    let collected = resp.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(collected, "hello world");
    let s = spans(&c, &tracer, 1).await;
    assert_eq!(s[0].tag("http.status_code"), Some("200"));
    assert_eq!(s[0].tag("response_size"), Some("11"));
    assert_eq!(s[0].tag("request_size"), Some("7"));
    assert_eq!(s[0].tag("error"), None);
}

#[tokio::test]
async fn a_dropped_body_or_future_is_a_cancelled_request() {
    let (c, tracer) = setup().await;
    // The client leaves mid-response: hyper drops the body.
    let body = Scripted::new(vec![data("part")], true);
    let mut resp = call(&tracer, request("/a", false), answer(200, &[], body))
        .await
        .unwrap();
    let frame = resp.body_mut().frame().await.unwrap().unwrap();
    assert_eq!(frame.data_ref().unwrap(), "part");
    drop(resp);
    // The client leaves while the upstream has not answered: hyper drops the future.
    let mut svc = layer(&tracer).layer(tower::service_fn(|_: Request<Req>| {
        std::future::pending::<Result<Response<Scripted>, Failure>>()
    }));
    let fut = svc.ready().await.unwrap().call(request("/b", false));
    assert!(tokio::time::timeout(Duration::from_millis(10), fut)
        .await
        .is_err());
    let s = spans(&c, &tracer, 2).await;
    for s in &s {
        assert_eq!(s.tag("error"), Some("downstream_cancelled"), "{s:?}");
    }
    let a = s
        .iter()
        .find(|s| s.tag("http.url").unwrap().ends_with("/a"))
        .unwrap();
    assert_eq!(a.tag("response_size"), Some("4"));
    assert_eq!(a.tag("http.status_code"), Some("200"));
}

#[tokio::test]
async fn a_body_known_complete_is_not_cancelled_when_dropped() {
    let (c, tracer) = setup().await;
    // A HEAD answer: hyper sees the end of the stream and drops the body unpolled.
    let resp = call(
        &tracer,
        request("/head", false),
        answer(200, &[], Scripted::new(vec![], false)),
    )
    .await
    .unwrap();
    assert!(resp.body().is_end_stream());
    drop(resp);
    let s = spans(&c, &tracer, 1).await;
    assert_eq!(s[0].tag("error"), None);
}

#[tokio::test]
async fn a_failing_body_is_an_upstream_reset_and_failures_keep_their_reason() {
    let (c, tracer) = setup().await;
    let body = Scripted::new(
        vec![data("abc"), Err(std::io::Error::other("stream reset"))],
        false,
    );
    let resp = call(&tracer, request("/reset", false), answer(200, &[], body))
        .await
        .unwrap();
    assert!(resp.into_body().collect().await.is_err());
    let timeout = Failure {
        status: StatusCode::GATEWAY_TIMEOUT,
        message: "upstream response timeout\n",
        reason: ErrorReason::Timeout,
    };
    let got = call(&tracer, request("/timeout", false), Err(timeout)).await;
    assert_eq!(got.unwrap_err(), timeout);
    // The upstream request failed because the client's body broke off: the client left.
    let failed = layer(&tracer)
        .layer(tower::service_fn(|req: Request<Req>| async move {
            req.body().meter.as_ref().unwrap().fail();
            Err::<Response<Scripted>, _>(crate::http::upstream_closed())
        }))
        .oneshot(request("/upload", false))
        .await;
    assert_eq!(failed.unwrap_err().status, StatusCode::BAD_GATEWAY);
    let s = spans(&c, &tracer, 3).await;
    let by = |p: &str| {
        s.iter()
            .find(|s| s.tag("http.url").unwrap().ends_with(p))
            .unwrap()
    };
    assert_eq!(by("/reset").tag("error"), Some("upstream_reset"));
    assert_eq!(by("/reset").tag("response_size"), Some("3"));
    assert_eq!(by("/timeout").tag("error"), Some("timeout"));
    assert_eq!(by("/timeout").tag("http.status_code"), Some("504"));
    assert_eq!(by("/upload").tag("error"), Some("downstream_cancelled"));
}

#[tokio::test]
async fn grpc_status_comes_from_trailers_or_a_trailers_only_answer() {
    let (c, tracer) = setup().await;
    let grpc = [("content-type", "application/grpc")];
    let body = Scripted::new(vec![data("\0\0\0\0\0"), trailers("13")], false);
    let resp = call(
        &tracer,
        request("/helloworld.Greeter/SayHello", true),
        answer(200, &grpc, body),
    )
    .await
    .unwrap();
    resp.into_body().collect().await.unwrap();
    let trailers_only = [("content-type", "application/grpc"), ("grpc-status", "5")];
    let resp = call(
        &tracer,
        request("/helloworld.Greeter/Find", true),
        answer(200, &trailers_only, Scripted::new(vec![], false)),
    )
    .await
    .unwrap();
    drop(resp);
    let s = spans(&c, &tracer, 2).await;
    let by = |p: &str| {
        s.iter()
            .find(|s| s.tag("http.url").unwrap().ends_with(p))
            .unwrap()
    };
    // SERVER spans: INTERNAL is the server's failure, NOT_FOUND is not.
    assert_eq!(by("/SayHello").tag("grpc.status_code"), Some("13"));
    assert_eq!(by("/SayHello").tag("error"), Some("INTERNAL"));
    assert_eq!(by("/Find").tag("grpc.status_code"), Some("5"));
    assert_eq!(by("/Find").tag("error"), None);
}
