//! Every request that reached the sidecar leaves its span, whatever happened to it: a client
//! that leaves while the upstream stalls, a client's own timeout, the sidecar's response
//! timeout, an upstream that resets mid-body, gRPC failures in trailers and trailers-only
//! answers, a gRPC call the client cancels (RST_STREAM); and a client that half-closes still
//! gets its answer. Each case is read from what
//! a real collector decoded (Zipkin v2 JSON or OTLP protobuf), and after each the sidecar's
//! counters balance: spans started = exported + dropped.
//!
//! Explicit-mode sidecars on loopback: no root needed.

use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tracemesh_collector::span::Span;
use tracemesh_collector::{Collector, CollectorConfig, RunningCollector};
use tracemesh_tests::loopback::{free_ports, Spawned};
use tracemesh_tests::{binaries, tools, Sidecar as PodSidecar, WAIT};

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

/// A MeshConfig exporting every request to `c` over `protocol`, with `sidecar` (YAML lines
/// under `spec.sidecar`, already indented) when given.
fn write_config(
    dir: &Path,
    c: &RunningCollector,
    protocol: &str,
    sidecar: &str,
) -> std::path::PathBuf {
    let (port, endpoint) = match protocol {
        "zipkin" => (c.zipkin.expect("zipkin").port(), "/api/v2/spans"),
        _ => (c.otlp_http.expect("otlp").port(), "/v1/traces"),
    };
    let path = dir.join(format!("mesh-config-{protocol}.yaml"));
    let sidecar = if sidecar.is_empty() {
        String::new()
    } else {
        format!("  sidecar:\n{sidecar}")
    };
    std::fs::write(
        &path,
        format!(
            "apiVersion: config.tracemesh.dev/v1alpha1\nkind: MeshConfig\n\
             spec:\n  observability:\n    tracing:\n      enable: true\n      address: 127.0.0.1\n      \
             port: {port}\n      endpoint: {endpoint}\n      protocol: {protocol}\n      sampledFraction: 1.0\n{sidecar}"
        ),
    )
    .expect("config");
    path
}

/// An explicit-mode sidecar publishing `app` on `entry` (SERVER spans of service `b.demo`).
struct Sidecar {
    _process: Spawned,
    entry: SocketAddr,
    admin: SocketAddr,
}

fn sidecar(dir: &Path, config: &Path, app: SocketAddr) -> Sidecar {
    let proxy = binaries::mesh_proxy().expect("mesh-proxy binary");
    let up = |p: u16| SocketAddr::from(([127, 0, 0, 1], p));
    for attempt in 0..5 {
        let ports = free_ports(4);
        let [entry, admin, transparent_in, transparent_out] = ports[..] else {
            unreachable!("four ports")
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
        let mut process = Spawned::start(&format!("sidecar-{attempt}"), cmd, dir);
        if process.wait_listening(up(entry)) && process.wait_listening(up(admin)) {
            return Sidecar {
                _process: process,
                entry: up(entry),
                admin: up(admin),
            };
        }
    }
    panic!("sidecar: could not start on free ports in 5 attempts");
}

impl Sidecar {
    async fn metrics(&self) -> String {
        let mut tcp = TcpStream::connect(self.admin).await.expect("admin");
        tcp.write_all(b"GET /metrics HTTP/1.1\r\nhost: admin\r\nconnection: close\r\n\r\n")
            .await
            .expect("write");
        let mut out = String::new();
        tcp.read_to_string(&mut out).await.expect("metrics");
        out
    }

    /// Waits until the sidecar's span counters balance at `started` spans: every started span
    /// was exported or counted as dropped, none is left behind.
    async fn balanced(&self, started: u64) {
        let deadline = Instant::now() + WAIT;
        loop {
            let text = self.metrics().await;
            let sum = |m: &str| PodSidecar::metric_sum(&text, m, &[]) as u64;
            let (s, e, d) = (
                sum("spans_started_total"),
                sum("spans_exported_total"),
                sum("spans_dropped_total"),
            );
            if s == started && e + d == s {
                assert_eq!(d, 0, "no span dropped with a healthy collector");
                return;
            }
            assert!(
                Instant::now() < deadline,
                "counters do not balance: started {s} (want {started}), exported {e}, dropped {d}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// What the scripted upstream tells the test.
#[derive(Debug, PartialEq, Eq)]
enum Seen {
    /// A request head arrived, for this path.
    Request(String),
    /// The proxy closed a connection on which a request was left unanswered.
    Abandoned(String),
}

/// An HTTP/1 upstream whose behaviour is chosen by the request path:
/// `/stall`: never answers (and reports when the proxy gives the connection up);
/// `/reset`: sends the head and 10 of 100 body bytes, then resets the connection;
/// `/upload`: reads the request body without answering (and reports when the proxy gives the
/// connection up);
/// anything else: `200 ok`.
async fn upstream() -> (SocketAddr, mpsc::UnboundedReceiver<Seen>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((mut tcp, _)) = listener.accept().await {
            let tx = tx.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                loop {
                    let mut chunk = [0u8; 4096];
                    let n = match tcp.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => n,
                    };
                    buf.extend_from_slice(&chunk[..n]);
                    let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
                        continue;
                    };
                    let head = String::from_utf8_lossy(&buf[..end]).into_owned();
                    buf.drain(..end + 4);
                    let target = head.split(' ').nth(1).unwrap_or("");
                    let path = target.split('?').next().unwrap_or("").to_owned();
                    let _ = tx.send(Seen::Request(path.clone()));
                    match path.as_str() {
                        "/stall" | "/upload" => {
                            // Held until the proxy closes the connection: that is the oracle
                            // that the upstream request was cancelled.
                            let mut rest = [0u8; 1024];
                            while matches!(tcp.read(&mut rest).await, Ok(n) if n > 0) {}
                            let _ = tx.send(Seen::Abandoned(path));
                            return;
                        }
                        "/reset" => {
                            let _ = tcp
                                .write_all(
                                    b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\n0123456789",
                                )
                                .await;
                            let _ = tcp.flush().await;
                            // Let the 10 bytes reach the proxy before the reset.
                            tokio::time::sleep(Duration::from_millis(200)).await;
                            let _ = tcp.set_zero_linger();
                            return;
                        }
                        _ => {
                            let _ = tcp
                                .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                                .await;
                        }
                    }
                }
            });
        }
    });
    (addr, rx)
}

async fn next(rx: &mut mpsc::UnboundedReceiver<Seen>) -> Seen {
    tokio::time::timeout(WAIT, rx.recv())
        .await
        .expect("the upstream reported in time")
        .expect("upstream running")
}

/// The one span of `spans` whose URL (Zipkin's `http.url`, OTLP's `url.full` or `url.path`
/// and `url.query`) ends with `path`.
fn span_for<'a>(spans: &'a [Span], path: &str) -> &'a Span {
    let url = |s: &Span| -> String {
        if let Some(u) = s.tag("http.url").or(s.tag("url.full")) {
            return u.to_owned();
        }
        match s.tag("url.query") {
            Some(q) => format!("{}?{q}", s.tag("url.path").unwrap_or("")),
            None => s.tag("url.path").unwrap_or("").to_owned(),
        }
    };
    let found: Vec<&Span> = spans.iter().filter(|s| url(s).ends_with(path)).collect();
    assert_eq!(found.len(), 1, "one span for {path}: {spans:#?}");
    found[0]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_half_closed_client_gets_its_answer_and_a_gone_one_cancels() {
    let c = collector().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let config = write_config(dir.path(), &c, "zipkin", "");
    let (app, mut seen) = upstream().await;
    let sidecar = sidecar(dir.path(), &config, app);

    // A client that shuts its write side after the request still reads the whole answer.
    let mut tcp = TcpStream::connect(sidecar.entry).await.expect("connect");
    tcp.write_all(b"GET /half HTTP/1.1\r\nhost: b.demo\r\n\r\n")
        .await
        .expect("write");
    tcp.shutdown().await.expect("half-close");
    let mut answer = Vec::new();
    let read = tokio::time::timeout(WAIT, tcp.read_to_end(&mut answer)).await;
    let answer = String::from_utf8_lossy(&answer);
    assert!(
        read.is_ok(),
        "the half-closed client got no end: {answer:?}"
    );
    assert!(answer.starts_with("HTTP/1.1 200 OK\r\n"), "{answer:?}");
    assert!(answer.ends_with("\r\n\r\nok"), "{answer:?}");
    assert_eq!(next(&mut seen).await, Seen::Request("/half".into()));

    // A client that closes while the upstream stalls: the upstream request is cancelled
    // (the upstream sees its connection closed) and the span says why.
    let mut tcp = TcpStream::connect(sidecar.entry).await.expect("connect");
    tcp.write_all(b"GET /stall HTTP/1.1\r\nhost: b.demo\r\n\r\n")
        .await
        .expect("write");
    assert_eq!(next(&mut seen).await, Seen::Request("/stall".into()));
    let left = Instant::now();
    drop(tcp);
    assert_eq!(next(&mut seen).await, Seen::Abandoned("/stall".into()));
    assert!(left.elapsed() < WAIT);

    // A client that closes in the middle of its request body: the upstream request is
    // cancelled too, and the span says the client left.
    let mut tcp = TcpStream::connect(sidecar.entry).await.expect("connect");
    tcp.write_all(
        b"POST /upload HTTP/1.1\r\nhost: b.demo\r\ncontent-length: 100\r\n\r\n0123456789",
    )
    .await
    .expect("write");
    assert_eq!(next(&mut seen).await, Seen::Request("/upload".into()));
    drop(tcp);
    assert_eq!(next(&mut seen).await, Seen::Abandoned("/upload".into()));

    let spans = c.wait_for_spans(3, WAIT).await.expect("three spans");
    let upload = span_for(&spans, "/upload");
    assert_eq!(
        upload.tag("error"),
        Some("downstream_cancelled"),
        "{upload:?}"
    );
    let half = span_for(&spans, "/half");
    assert_eq!(half.tag("error"), None, "{half:?}");
    assert_eq!(half.tag("http.status_code"), Some("200"));
    let stall = span_for(&spans, "/stall");
    assert_eq!(stall.kind.map(|k| k.as_str()), Some("SERVER"));
    assert_eq!(
        stall.tag("error"),
        Some("downstream_cancelled"),
        "{stall:?}"
    );
    // Ended when the client left, not when the test ended.
    assert!(stall.duration.expect("duration") < WAIT.as_micros() as u64);
    sidecar.balanced(3).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_that_refuses_gives_a_connect_failed_span() {
    let c = collector().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let config = write_config(dir.path(), &c, "otlp-http", "");
    // A port nobody listens on: bound, then closed.
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("addr")
    };
    let sidecar = sidecar(dir.path(), &config, closed);
    let mut tcp = TcpStream::connect(sidecar.entry).await.expect("connect");
    tcp.write_all(b"GET /refused HTTP/1.1\r\nhost: b.demo\r\nconnection: close\r\n\r\n")
        .await
        .expect("write");
    let mut answer = String::new();
    tokio::time::timeout(WAIT, tcp.read_to_string(&mut answer))
        .await
        .expect("answer in time")
        .expect("read");
    assert!(answer.starts_with("HTTP/1.1 502"), "{answer}");
    let spans = c.wait_for_spans(1, WAIT).await.expect("one span");
    let s = span_for(&spans, "/refused");
    // OTLP: the status message and `error.type` both carry the reason.
    assert_eq!(s.tag("error"), Some("connect_failed"), "{s:?}");
    assert_eq!(s.tag("error.type"), Some("connect_failed"), "{s:?}");
    assert_eq!(s.tag("otel.status_code"), Some("ERROR"));
    sidecar.balanced(1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timeouts_and_resets_end_their_spans_with_the_reason() {
    let c = collector().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let config = write_config(dir.path(), &c, "zipkin", "    responseTimeout: 2s\n");
    let (app, mut seen) = upstream().await;
    let sidecar = sidecar(dir.path(), &config, app);

    // A real client's own timeout on a stalled upstream (curl closes its socket).
    let started = Instant::now();
    let curl = tokio::process::Command::new("curl")
        .args([
            "-s",
            "--noproxy",
            "*",
            "--max-time",
            "0.5",
            "-o",
            "/dev/null",
        ])
        .arg(format!("http://{}/stall?by=client", sidecar.entry))
        .status()
        .await
        .expect("curl");
    assert_eq!(curl.code(), Some(28), "curl timed out");
    assert_eq!(next(&mut seen).await, Seen::Request("/stall".into()));
    assert_eq!(next(&mut seen).await, Seen::Abandoned("/stall".into()));
    // Cancelled by the client leaving, well before the sidecar's own 2 s timeout.
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );

    // The sidecar's response timeout: the client gets 504 and the span says `timeout`.
    let mut tcp = TcpStream::connect(sidecar.entry).await.expect("connect");
    tcp.write_all(b"GET /stall?by=sidecar HTTP/1.1\r\nhost: b.demo\r\nconnection: close\r\n\r\n")
        .await
        .expect("write");
    let mut answer = String::new();
    tokio::time::timeout(WAIT, tcp.read_to_string(&mut answer))
        .await
        .expect("answer in time")
        .expect("read");
    assert!(answer.starts_with("HTTP/1.1 504"), "{answer}");
    assert_eq!(next(&mut seen).await, Seen::Request("/stall".into()));
    assert_eq!(next(&mut seen).await, Seen::Abandoned("/stall".into()));

    // The upstream resets mid-body: the client's answer is cut short, the span says so.
    let mut tcp = TcpStream::connect(sidecar.entry).await.expect("connect");
    tcp.write_all(b"GET /reset HTTP/1.1\r\nhost: b.demo\r\n\r\n")
        .await
        .expect("write");
    let mut got = Vec::new();
    let _ = tokio::time::timeout(WAIT, tcp.read_to_end(&mut got))
        .await
        .expect("the cut-short answer ends");
    let got = String::from_utf8_lossy(&got);
    assert!(got.starts_with("HTTP/1.1 200"), "{got}");
    let body = got.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    assert_eq!(
        body, "0123456789",
        "cut short after the bytes the upstream sent"
    );
    assert_eq!(next(&mut seen).await, Seen::Request("/reset".into()));

    let spans = c.wait_for_spans(3, WAIT).await.expect("three spans");
    let client = span_for(&spans, "/stall?by=client");
    assert_eq!(
        client.tag("error"),
        Some("downstream_cancelled"),
        "{client:?}"
    );
    let timeout = span_for(&spans, "/stall?by=sidecar");
    assert_eq!(timeout.tag("error"), Some("timeout"), "{timeout:?}");
    assert_eq!(timeout.tag("http.status_code"), Some("504"));
    let reset = span_for(&spans, "/reset");
    assert_eq!(reset.tag("error"), Some("upstream_reset"), "{reset:?}");
    assert_eq!(reset.tag("response_size"), Some("10"));
    sidecar.balanced(3).await;
}

/// A gRPC server with three methods: `Find` aborts at once with NOT_FOUND (a trailers-only
/// answer), `List` sends one message and then fails with INTERNAL (the status in the
/// trailers), `Slow` sends one message and then waits until the call is cancelled. `call` is
/// the client: it prints the code each call ended with; it cancels `Slow` (an HTTP/2
/// RST_STREAM) once its first message has arrived.
const GRPC_PEER: &str = r#"
import sys, time, grpc
from concurrent import futures

OPTIONS = [("grpc.enable_http_proxy", 0)]

def find(request, context):
    context.abort(grpc.StatusCode.NOT_FOUND, "no such item")

def items(request, context):
    yield b"\x08\x01"
    context.abort(grpc.StatusCode.INTERNAL, "broke after data")

def slow(request, context):
    yield b"\x08\x01"
    deadline = time.time() + 30
    while context.is_active() and time.time() < deadline:
        time.sleep(0.02)

if sys.argv[1] == "serve":
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4), options=OPTIONS)
    handlers = {
        "Find": grpc.unary_unary_rpc_method_handler(find),
        "List": grpc.unary_stream_rpc_method_handler(items),
        "Slow": grpc.unary_stream_rpc_method_handler(slow),
    }
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("demo.Items", handlers),))
    server.add_insecure_port(sys.argv[2])
    server.start()
    print("ready", flush=True)
    server.wait_for_termination()
else:
    with grpc.insecure_channel(sys.argv[2], options=OPTIONS) as channel:
        try:
            channel.unary_unary("/demo.Items/Find")(b"", timeout=10)
            print("Find OK")
        except grpc.RpcError as e:
            print("Find", e.code().name)
        got = 0
        try:
            for _ in channel.unary_stream("/demo.Items/List")(b"", timeout=10):
                got += 1
            print("List OK")
        except grpc.RpcError as e:
            print("List", e.code().name, got)
        call = channel.unary_stream("/demo.Items/Slow")(b"", timeout=60)
        next(call)
        call.cancel()
        print("Slow", call.code().name)
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_failures_are_read_from_trailers_and_trailers_only_answers() {
    if !tools::require("python3 grpcio", tools::python_has("grpc")) {
        return;
    }
    let c = collector().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let script = dir.path().join("grpc_peer.py");
    std::fs::write(&script, GRPC_PEER).expect("script");
    let app = SocketAddr::from(([127, 0, 0, 1], free_ports(1)[0]));
    let mut server = Command::new("python3");
    server.arg(&script).arg("serve").arg(app.to_string());
    let mut server = Spawned::start("grpc-server", server, dir.path());
    assert!(server.wait_listening(app), "the gRPC server did not start");

    let mut total = 0;
    for protocol in ["zipkin", "otlp-http"] {
        let config = write_config(dir.path(), &c, protocol, "");
        let sidecar = sidecar(dir.path(), &config, app);
        let out = tokio::process::Command::new("python3")
            .arg(&script)
            .arg("call")
            .arg(sidecar.entry.to_string())
            .env_remove("http_proxy")
            .env_remove("HTTP_PROXY")
            .output()
            .await
            .expect("grpc client");
        let printed = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{printed}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(printed, "Find NOT_FOUND\nList INTERNAL 1\nSlow CANCELLED\n");
        total += 3;
        let spans = c.wait_for_spans(total, WAIT).await.expect("spans");
        // Zipkin spans carry Envoy's tag names, OTLP ones OpenTelemetry's.
        let marker = if protocol == "zipkin" {
            "http.method"
        } else {
            "http.request.method"
        };
        let mine: Vec<Span> = spans
            .iter()
            .filter(|s| s.tag(marker).is_some())
            .cloned()
            .collect();
        let find = span_for(&mine, "/demo.Items/Find");
        let list = span_for(&mine, "/demo.Items/List");
        for s in [find, list] {
            assert_eq!(s.kind.map(|k| k.as_str()), Some("SERVER"));
            assert_eq!(
                s.tag("http.status_code")
                    .or(s.tag("http.response.status_code")),
                Some("200")
            );
        }
        if protocol == "zipkin" {
            assert_eq!(find.tag("grpc.status_code"), Some("5"), "{find:?}");
            assert_eq!(list.tag("grpc.status_code"), Some("13"), "{list:?}");
        } else {
            assert_eq!(find.tag("rpc.grpc.status_code"), Some("5"), "{find:?}");
            assert_eq!(list.tag("rpc.grpc.status_code"), Some("13"), "{list:?}");
            for s in [find, list] {
                assert_eq!(s.tag("rpc.system"), Some("grpc"));
                assert_eq!(s.tag("rpc.service"), Some("demo.Items"));
            }
            assert_eq!(find.tag("rpc.method"), Some("Find"));
            assert_eq!(list.tag("rpc.method"), Some("List"));
        }
        // On a SERVER span NOT_FOUND is the caller's problem; INTERNAL is the server's.
        assert_eq!(find.tag("error"), None, "{find:?}");
        assert_eq!(list.tag("error"), Some("INTERNAL"), "{list:?}");
        // The client's RST_STREAM: the span ends when the client left, with its reason.
        let slow = span_for(&mine, "/demo.Items/Slow");
        assert_eq!(slow.tag("error"), Some("downstream_cancelled"), "{slow:?}");
        assert!(slow.duration.expect("duration") < WAIT.as_micros() as u64);
        sidecar.balanced(3).await;
    }
}
