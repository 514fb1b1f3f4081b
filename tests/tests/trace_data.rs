//! What a trace is made of, end to end through explicit-mode sidecars on loopback (no root): an
//! app that only speaks W3C trace context joins the trace its sidecar started, and span data
//! stays bounded and clean whatever URL a client sends. The collector decodes what arrives
//! (Zipkin v2 JSON, OTLP protobuf with the official schema).

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tracemesh_collector::span::Span;
use tracemesh_collector::{Collector, CollectorConfig, RunningCollector};
use tracemesh_tests::loopback::{free_ports, Spawned};
use tracemesh_tests::{binaries, WAIT};

/// An app instrumented with the OpenTelemetry Python SDK and nothing but the W3C tracecontext
/// propagator (`OTEL_PROPAGATORS=tracecontext`): it reads `traceparent` only, records a SERVER
/// span and a CLIENT span around its call to `NEXT`, writes `traceparent` only, and exports
/// its own spans over OTLP/HTTP.
const OTEL_APP: &str = r#"
import http.server, sys, urllib.request
from opentelemetry import propagate, trace
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

HOST, PORT, NEXT, OTLP = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
propagate.set_global_textmap(TraceContextTextMapPropagator())
provider = TracerProvider(resource=Resource.create({"service.name": "otel-app"}))
provider.add_span_processor(SimpleSpanProcessor(OTLPSpanExporter(endpoint=OTLP)))
trace.set_tracer_provider(provider)
tracer = trace.get_tracer("otel-app")
OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))

class App(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def do_GET(self):
        carrier = {k.lower(): v for k, v in self.headers.items()}
        with tracer.start_as_current_span("app work", context=propagate.extract(carrier),
                                          kind=trace.SpanKind.SERVER):
            with tracer.start_as_current_span("app call", kind=trace.SpanKind.CLIENT):
                headers = {}
                propagate.inject(headers)
                with OPENER.open(urllib.request.Request(NEXT, headers=headers), timeout=20) as r:
                    body = r.read()
        self.send_response(200)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *args):
        pass

server = http.server.ThreadingHTTPServer((HOST, PORT), App)
print("ready", flush=True)
server.serve_forever()
"#;

/// Whether the OpenTelemetry Python SDK is installed. Missing, the test that needs it fails
/// under `CI=true` (scripts/setup installs it) and is skipped with a note elsewhere.
fn otel_sdk_or_skip() -> bool {
    let found = Command::new("python3")
        .args([
            "-c",
            "import opentelemetry.sdk.trace, opentelemetry.exporter.otlp.proto.http.trace_exporter",
        ])
        .output()
        .is_ok_and(|o| o.status.success());
    if !found {
        assert!(
            !tracemesh_tests::tools::in_ci(),
            "the OpenTelemetry Python SDK is missing (opentelemetry-sdk and \
             opentelemetry-exporter-otlp-proto-http from tests/requirements.txt): run scripts/setup"
        );
        eprintln!("skipped: the OpenTelemetry Python SDK is not installed (run scripts/setup)");
    }
    found
}

async fn collector() -> RunningCollector {
    let any: SocketAddr = "127.0.0.1:0".parse().expect("addr");
    Collector::start(CollectorConfig {
        zipkin: Some(any),
        otlp_http: Some(any),
        otlp_grpc: None,
        out: None,
    })
    .await
    .expect("collector")
}

/// A MeshConfig with tracing on, every request sampled, exporting to `port` over `protocol`.
fn write_config(dir: &Path, protocol: &str, port: u16) -> std::path::PathBuf {
    let endpoint = if protocol == "zipkin" {
        "/api/v2/spans"
    } else {
        "/v1/traces"
    };
    let path = dir.join("mesh-config.yaml");
    std::fs::write(
        &path,
        format!(
            "apiVersion: config.tracemesh.dev/v1alpha1\nkind: MeshConfig\n\
             spec:\n  observability:\n    tracing:\n      enable: true\n      address: 127.0.0.1\n      \
             port: {port}\n      endpoint: {endpoint}\n      protocol: {protocol}\n      sampledFraction: 1.0\n"
        ),
    )
    .expect("config");
    path
}

/// A leaf app: answers 200 to anything and records the headers of every request.
type Seen = Arc<Mutex<Vec<http::HeaderMap>>>;

async fn leaf() -> (SocketAddr, Seen) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let seen: Seen = Arc::default();
    let recorded = seen.clone();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let recorded = recorded.clone();
            tokio::spawn(async move {
                let svc =
                    hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| {
                        let recorded = recorded.clone();
                        async move {
                            recorded.lock().expect("lock").push(req.headers().clone());
                            Ok::<_, std::convert::Infallible>(http::Response::new(
                                http_body_util::Full::new(bytes::Bytes::from_static(b"leaf")),
                            ))
                        }
                    });
                let _ = hyper_util::server::conn::auto::Builder::new(
                    hyper_util::rt::TokioExecutor::new(),
                )
                .serve_connection(hyper_util::rt::TokioIo::new(tcp), svc)
                .await;
            });
        }
    });
    (addr, seen)
}

/// A running sidecar: `entry` is its `--inbound` route, `forward_proxy` its outbound listener
/// (a forward proxy in explicit mode), `outbound` its `--outbound` route when asked for.
struct Sidecar {
    _process: Spawned,
    entry: u16,
    forward_proxy: u16,
    outbound: Option<u16>,
}

/// Starts a sidecar publishing `app` on its inbound route and, with `next`, routing an
/// outbound port to it; retries on fresh ports when a parallel test took one.
fn sidecar(dir: &Path, config: &Path, app: SocketAddr, next: Option<SocketAddr>) -> Sidecar {
    let proxy = binaries::mesh_proxy().expect("mesh-proxy binary");
    for _attempt in 0..5 {
        let ports = free_ports(5);
        let [entry, route, admin, transparent_in, transparent_out] = ports[..] else {
            unreachable!("five ports")
        };
        let mut cmd = Command::new(&proxy);
        cmd.args(["run", "--mesh-config"])
            .arg(config)
            .args(["--service", "b", "--namespace", "demo"])
            .args(["--pod-ip", "127.0.0.1", "--bind", "127.0.0.1"])
            .args(["--inbound-port", &transparent_in.to_string()])
            .args(["--outbound-port", &transparent_out.to_string()])
            .args(["--admin-port", &admin.to_string()])
            .args(["--inbound", &format!("127.0.0.1:{entry}={app}")]);
        if let Some(next) = next {
            cmd.args(["--outbound", &format!("127.0.0.1:{route}={next}")]);
        }
        let mut process = Spawned::start("sidecar", cmd, dir);
        let up = |p: u16| SocketAddr::from(([127, 0, 0, 1], p));
        if process.wait_listening(up(entry))
            && process.wait_listening(up(transparent_out))
            && (next.is_none() || process.wait_listening(up(route)))
        {
            return Sidecar {
                _process: process,
                entry,
                forward_proxy: transparent_out,
                outbound: next.map(|_| route),
            };
        }
    }
    panic!("sidecar: could not start on free ports in 5 attempts");
}

/// Sends raw HTTP/1.1 bytes and reads the whole answer (the request says `connection: close`).
async fn exchange(addr: SocketAddr, request: &[u8]) -> String {
    let mut tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
    tcp.write_all(request).await.expect("write");
    let mut answer = Vec::new();
    tokio::time::timeout(WAIT, tcp.read_to_end(&mut answer))
        .await
        .expect("answer in time")
        .expect("read");
    String::from_utf8_lossy(&answer).into_owned()
}

fn by_kind<'a>(spans: &'a [Span], kind: &str, service: &str) -> Vec<&'a Span> {
    spans
        .iter()
        .filter(|s| s.kind.map(|k| k.as_str()) == Some(kind) && s.service() == service)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn w3c_only_otel_app_joins_the_trace_its_sidecar_started() {
    if !otel_sdk_or_skip() {
        return;
    }
    let c = collector().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let config = write_config(dir.path(), "zipkin", c.zipkin.expect("zipkin").port());
    let (next, seen) = leaf().await;

    // The app's port is taken before the sidecar starts, so the sidecar knows where it is.
    let script = dir.path().join("otel_app.py");
    std::fs::write(&script, OTEL_APP).expect("script");
    let app_port = free_ports(1)[0];
    let app_addr = SocketAddr::from(([127, 0, 0, 1], app_port));
    let sidecar = sidecar(dir.path(), &config, app_addr, Some(next));
    let mut app = Command::new("python3");
    app.arg(&script)
        .args(["127.0.0.1", &app_port.to_string()])
        .arg(format!(
            "http://127.0.0.1:{}/next",
            sidecar.outbound.expect("route")
        ))
        .arg(format!(
            "http://{}/v1/traces",
            c.otlp_http.expect("otlp-http")
        ))
        .env("OTEL_PROPAGATORS", "tracecontext")
        .env_remove("http_proxy")
        .env_remove("HTTP_PROXY");
    let mut app = Spawned::start("otel-app", app, dir.path());
    assert!(app.wait_listening(app_addr), "the OTel app did not start");

    // An edge request with no trace context: the sidecar starts the trace.
    let answer = exchange(
        SocketAddr::from(([127, 0, 0, 1], sidecar.entry)),
        b"GET /work HTTP/1.1\r\nhost: b.demo\r\nconnection: close\r\n\r\n",
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");

    // Sidecar SERVER + CLIENT, app SERVER + CLIENT.
    let spans = c.wait_for_spans(4, WAIT).await.expect("four spans");
    let trace = &spans[0].trace_id;
    assert!(
        spans.iter().all(|s| &s.trace_id == trace),
        "one trace: {spans:#?}"
    );
    let sidecar_server = by_kind(&spans, "SERVER", "b.demo");
    let app_server = by_kind(&spans, "SERVER", "otel-app");
    let app_client = by_kind(&spans, "CLIENT", "otel-app");
    let sidecar_client = by_kind(&spans, "CLIENT", "b.demo");
    assert_eq!(
        [&sidecar_server, &app_server, &app_client, &sidecar_client].map(|v| v.len()),
        [1, 1, 1, 1],
        "{spans:#?}"
    );
    // One tree: the sidecar's SERVER span is the root, the app's spans hang under it (read
    // from the traceparent the sidecar wrote), and the sidecar's CLIENT span under the app's.
    assert_eq!(sidecar_server[0].parent_id, None, "{spans:#?}");
    assert_eq!(
        app_server[0].parent_id.as_deref(),
        Some(sidecar_server[0].id.as_str()),
        "{spans:#?}"
    );
    assert_eq!(
        app_client[0].parent_id.as_deref(),
        Some(app_server[0].id.as_str())
    );
    assert_eq!(
        sidecar_client[0].parent_id.as_deref(),
        Some(app_client[0].id.as_str()),
        "{spans:#?}"
    );
    // The next hop sees both formats describing the sidecar's CLIENT span.
    let headers = seen.lock().expect("lock")[0].clone();
    let client_span = &sidecar_client[0].id;
    assert_eq!(headers["x-b3-spanid"], client_span.as_str());
    let traceparent = headers["traceparent"].to_str().expect("ascii");
    assert!(
        traceparent.contains(&format!("-{client_span}-")) && traceparent.contains(trace.as_str()),
        "{traceparent}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_50_kib_url_with_credentials_leaves_a_short_clean_url_tag() {
    let c = collector().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let config = write_config(dir.path(), "zipkin", c.zipkin.expect("zipkin").port());
    let (app, seen) = leaf().await;
    let client_side = sidecar(dir.path(), &config, app, None);
    let server_side = sidecar(dir.path(), &config, app, None);

    // Absolute form through one sidecar's forward proxy to the other's inbound route: a CLIENT
    // span and a SERVER span, both of a 50 KiB URL carrying `user:pass@`.
    let path = format!("/files/{}?sig={}", "p".repeat(40_000), "s".repeat(11_000));
    let target = format!("http://alice:s3cret@127.0.0.1:{}{path}", server_side.entry);
    let request = format!(
        "GET {target} HTTP/1.1\r\nhost: 127.0.0.1:{}\r\nconnection: close\r\n\r\n",
        server_side.entry
    );
    let answer = exchange(
        SocketAddr::from(([127, 0, 0, 1], client_side.forward_proxy)),
        request.as_bytes(),
    )
    .await;
    assert!(
        answer.starts_with("HTTP/1.1 200"),
        "{}",
        &answer[..answer.len().min(200)]
    );
    assert_eq!(
        seen.lock().expect("lock").len(),
        1,
        "the app got the request"
    );

    let spans = c.wait_for_spans(2, WAIT).await.expect("two spans");
    let kinds: BTreeSet<&str> = spans
        .iter()
        .filter_map(|s| s.kind.map(|k| k.as_str()))
        .collect();
    assert_eq!(kinds, BTreeSet::from(["CLIENT", "SERVER"]), "{spans:#?}");
    let prefix = format!("http://127.0.0.1:{}/files/ppp", server_side.entry);
    for span in &spans {
        let url = span.tag("http.url").expect("http.url");
        assert!(url.len() <= 1024, "{} bytes", url.len());
        assert!(url.starts_with(&prefix), "{url}");
        let text = serde_json::to_string(&span.tags).expect("json");
        assert!(
            !text.contains("s3cret") && !text.contains("alice"),
            "{text}"
        );
        // Named by the method, in Zipkin's lower case.
        assert_eq!(span.name.as_deref(), Some("get"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_distinct_paths_give_a_handful_of_span_names_over_otlp() {
    let c = collector().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let config = write_config(dir.path(), "otlp-http", c.otlp_http.expect("otlp").port());
    let (app, _) = leaf().await;
    let sidecar = sidecar(dir.path(), &config, app, None);
    let entry = SocketAddr::from(([127, 0, 0, 1], sidecar.entry));

    for i in 0..100 {
        let method = if i % 4 == 0 { "POST" } else { "GET" };
        let request = format!(
            "{method} /users/{i}/orders/{}?page={i} HTTP/1.1\r\nhost: b.demo:8080\r\n\
             content-length: 0\r\nconnection: close\r\n\r\n",
            i * 7919
        );
        let answer = exchange(entry, request.as_bytes()).await;
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    }
    let spans = c.wait_for_spans(100, WAIT).await.expect("a hundred spans");
    let names: BTreeSet<&str> = spans.iter().filter_map(|s| s.name.as_deref()).collect();
    // OTLP names are the method in upper case; never the path or the query.
    assert_eq!(names, BTreeSet::from(["GET", "POST"]), "{names:?}");
    let paths: BTreeSet<&str> = spans.iter().filter_map(|s| s.tag("url.path")).collect();
    assert_eq!(paths.len(), 100, "the path is still recorded, as url.path");
    assert!(
        spans.iter().all(|s| s.tag("url.full").is_none()),
        "SERVER spans"
    );
    assert!(
        spans
            .iter()
            .all(|s| s.tag("server.address") == Some("b.demo")
                && s.tag("server.port") == Some("8080"))
    );
}
