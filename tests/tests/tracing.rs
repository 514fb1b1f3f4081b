//! Tracing end to end: three services A → B → C, each behind its own `mesh-proxy`, and a
//! collector decoding what the sidecars send (Zipkin v2 JSON / OTLP protobuf).
//!
//! The apps are not instrumented: like Istio's sample apps they copy the trace headers of the
//! request they serve onto the request they make (a small Python relay). The sidecars alone
//! must turn that into one connected tree: A SERVER → A CLIENT → B SERVER → B CLIENT → C SERVER.
//!
//! Explicit mode (loopback, no root) runs in every `cargo test`; transparent mode (pods, iptables)
//! is root-only like the rest of the e2e suite.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tracemesh_collector::span::Span;
use tracemesh_collector::{Collector, CollectorConfig, RunningCollector};
use tracemesh_tests::loopback::{free_port, free_ports, Spawned};
use tracemesh_tests::{binaries, root_or_skip, Pod, Proc, SidecarOpts, WAIT};

/// An uninstrumented app: serves GET, calls `NEXT` (if set) with the trace headers it received.
const RELAY: &str = r#"
import http.server, os, sys, urllib.request
HOST, PORT, NEXT = sys.argv[1], int(sys.argv[2]), os.environ.get("NEXT", "")
KEEP = {"x-b3-traceid", "x-b3-spanid", "x-b3-parentspanid", "x-b3-sampled", "x-b3-flags",
        "b3", "traceparent", "tracestate", "x-request-id"}
OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))
class Relay(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def do_GET(self):
        status, body = 200, b"leaf"
        if NEXT:
            headers = {k: v for k, v in self.headers.items() if k.lower() in KEEP}
            try:
                with OPENER.open(urllib.request.Request(NEXT + self.path, headers=headers), timeout=20) as r:
                    body = r.read()
            except Exception as e:
                status, body = 502, str(e).encode()
        self.send_response(status)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *args):
        pass
server = http.server.ThreadingHTTPServer((HOST, PORT), Relay)
print("ready", flush=True)
server.serve_forever()
"#;

/// A Zipkin receiver for pods (the in-process collector is not reachable from a namespace):
/// appends each POSTed body (inflated when gzip, as Zipkin does) as one line to a file.
const RECEIVER: &str = r#"
import gzip, http.server, sys
OUT = sys.argv[2]
class Receiver(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("content-length", "0")))
        if self.headers.get("content-encoding", "").lower() == "gzip":
            body = gzip.decompress(body)
        with open(OUT, "ab") as f:
            f.write(body.replace(b"\n", b" ") + b"\n")
        self.send_response(202)
        self.send_header("content-length", "0")
        self.end_headers()
    def log_message(self, *args):
        pass
server = http.server.ThreadingHTTPServer(("0.0.0.0", int(sys.argv[1])), Receiver)
print("ready", flush=True)
server.serve_forever()
"#;

// ---------------------------------------------------------------------------------------------
// Assertions on what the collector received.

fn is_lower_hex(s: &str, lens: &[usize]) -> bool {
    lens.contains(&s.len())
        && s.bytes()
            .all(|c| c.is_ascii_digit() || (b'a'..=b'f').contains(&c))
}

/// The zipkin2 API schema's rules for one span.
fn assert_zipkin_schema(s: &Span) {
    assert!(is_lower_hex(&s.trace_id, &[16, 32]), "traceId {s:?}");
    assert!(is_lower_hex(&s.id, &[16]), "id {s:?}");
    if let Some(p) = &s.parent_id {
        assert!(is_lower_hex(p, &[16]), "parentId {s:?}");
    }
    // Epoch microseconds: after 2020, before 2100.
    let ts = s.timestamp.expect("timestamp");
    assert!(
        (1_577_836_800_000_000..4_102_444_800_000_000).contains(&ts),
        "timestamp {ts}"
    );
    assert!(s.duration.expect("duration") >= 1);
}

/// One request's trace: A SERVER → A CLIENT → B SERVER → B CLIENT → C SERVER, connected by
/// parent ids, with the contract's services and tags.
fn assert_chain(spans: &[Span], services: [&str; 3], zipkin_tags: bool) {
    assert_eq!(spans.len(), 5, "one span per hop and side: {spans:#?}");
    let trace = &spans[0].trace_id;
    assert!(
        spans.iter().all(|s| &s.trace_id == trace),
        "one trace: {spans:#?}"
    );
    let by_id: HashMap<&str, &Span> = spans.iter().map(|s| (s.id.as_str(), s)).collect();
    assert_eq!(by_id.len(), 5, "distinct span ids: {spans:#?}");
    let roots: Vec<_> = spans.iter().filter(|s| s.parent_id.is_none()).collect();
    assert_eq!(roots.len(), 1, "exactly one root: {spans:#?}");

    let expected = [
        ("SERVER", services[0]),
        ("CLIENT", services[0]),
        ("SERVER", services[1]),
        ("CLIENT", services[1]),
        ("SERVER", services[2]),
    ];
    let mut current = roots[0];
    for (i, (kind, service)) in expected.iter().enumerate() {
        assert_zipkin_schema(current);
        assert_eq!(
            current.kind.map(|k| k.as_str()),
            Some(*kind),
            "hop {i}: {current:#?}"
        );
        assert_eq!(current.service(), *service, "hop {i}: {current:#?}");
        if zipkin_tags {
            assert_eq!(current.tag("http.method"), Some("GET"), "{current:#?}");
            assert_eq!(current.tag("http.status_code"), Some("200"), "{current:#?}");
            assert!(
                current
                    .tag("http.url")
                    .is_some_and(|u| u.starts_with("http://")),
                "{current:#?}"
            );
            for tag in [
                "upstream_cluster",
                "peer.address",
                "request_size",
                "response_size",
            ] {
                assert!(current.tag(tag).is_some(), "{tag} missing: {current:#?}");
            }
            assert!(current.tag("error").is_none(), "{current:#?}");
        }
        let children: Vec<_> = spans
            .iter()
            .filter(|s| s.parent_id.as_deref() == Some(current.id.as_str()))
            .collect();
        if i + 1 < expected.len() {
            assert_eq!(children.len(), 1, "hop {i} has one child: {spans:#?}");
            current = children[0];
        } else {
            assert!(children.is_empty());
        }
    }
}

fn group(spans: &[Span]) -> BTreeMap<String, Vec<Span>> {
    let mut traces: BTreeMap<String, Vec<Span>> = BTreeMap::new();
    for s in spans {
        traces
            .entry(s.trace_id.clone())
            .or_default()
            .push(s.clone());
    }
    traces
}

// ---------------------------------------------------------------------------------------------
// Explicit mode: every process on loopback, distinct ports, no root.

fn tracing_yaml(enable: bool, protocol: &str, port: u16, endpoint: &str) -> String {
    format!(
        "apiVersion: config.tracemesh.dev/v1alpha1\nkind: MeshConfig\nmetadata: {{name: mesh-config, namespace: mesh-system}}\n\
         spec:\n  observability:\n    tracing:\n      enable: {enable}\n      address: 127.0.0.1\n      port: {port}\n      \
         endpoint: {endpoint}\n      protocol: {protocol}\n      sampledFraction: 1.0\n"
    )
}

/// Rewrites the MeshConfig atomically, as `mesh config patch` does.
fn write_config(path: &Path, text: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).expect("write config");
    std::fs::rename(&tmp, path).expect("rename config");
}

/// A → B → C on loopback. `entry` is A's inbound listener, where requests enter the mesh.
struct ExplicitMesh {
    _procs: Vec<Spawned>,
    entry: SocketAddr,
    config: PathBuf,
    admin_ports: Vec<u16>,
    _dir: tempfile::TempDir,
}

fn explicit_mesh(config_yaml: &str) -> ExplicitMesh {
    let dir = tempfile::tempdir().expect("tempdir");
    let relay = dir.path().join("relay.py");
    std::fs::write(&relay, RELAY).expect("relay script");
    let config = dir.path().join("mesh-config.yaml");
    write_config(&config, config_yaml);
    let proxy = binaries::mesh_proxy().expect("mesh-proxy binary");

    let mut procs = Vec::new();
    let mut admin_ports = Vec::new();
    // Built from the leaf up, so each knows its next hop's entry point.
    let mut next_entry: Option<u16> = None;
    for name in ["c", "b", "a"] {
        let node = start_node(name, dir.path(), &relay, &config, &proxy, next_entry);
        procs.extend(node.processes);
        admin_ports.push(node.admin_port);
        next_entry = Some(node.inbound_port);
    }
    let entry = SocketAddr::from(([127, 0, 0, 1], next_entry.expect("a's entry")));
    ExplicitMesh {
        _procs: procs,
        entry,
        config,
        admin_ports,
        _dir: dir,
    }
}

/// One service of the explicit mesh: its app and its sidecar.
struct Node {
    processes: [Spawned; 2],
    inbound_port: u16,
    admin_port: u16,
}

/// Starts a service's app and sidecar on free ports, starting over on fresh ports when either
/// exits before listening (a parallel test took one of its ports in the meantime).
fn start_node(
    name: &str,
    dir: &Path,
    relay: &Path,
    config: &Path,
    proxy: &Path,
    next_entry: Option<u16>,
) -> Node {
    for _attempt in 0..5 {
        let ports = free_ports(6);
        let [app_port, route_port, inbound_port, admin_port, transparent_in, transparent_out] =
            ports[..]
        else {
            unreachable!("six ports")
        };
        let mut app = Command::new("python3");
        app.arg(relay)
            .arg("127.0.0.1")
            .arg(app_port.to_string())
            .env_remove("http_proxy")
            .env_remove("HTTP_PROXY");
        if next_entry.is_some() {
            app.env("NEXT", format!("http://127.0.0.1:{route_port}"));
        }
        let mut app = Spawned::start(&format!("{name}-app"), app, dir);
        if !app.wait_listening(SocketAddr::from(([127, 0, 0, 1], app_port))) {
            continue;
        }

        let mut sidecar = Command::new(proxy);
        sidecar
            .args(["run", "--mesh-config"])
            .arg(config)
            .args([
                "--service",
                name,
                "--namespace",
                "demo",
                "--pod-ip",
                "127.0.0.1",
            ])
            .args(["--bind", "127.0.0.1"])
            .args(["--inbound-port", &transparent_in.to_string()])
            .args(["--outbound-port", &transparent_out.to_string()])
            .args(["--admin-port", &admin_port.to_string()])
            .args([
                "--inbound",
                &format!("127.0.0.1:{inbound_port}=127.0.0.1:{app_port}"),
            ])
            .env("RUST_LOG", "info");
        if let Some(next) = next_entry {
            sidecar.args([
                "--outbound",
                &format!("127.0.0.1:{route_port}=127.0.0.1:{next}"),
            ]);
        }
        let mut sidecar = Spawned::start(&format!("{name}-sidecar"), sidecar, dir);
        let listening = sidecar.wait_listening(SocketAddr::from(([127, 0, 0, 1], inbound_port)))
            && (next_entry.is_none()
                || sidecar.wait_listening(SocketAddr::from(([127, 0, 0, 1], route_port))));
        if !listening {
            continue;
        }
        return Node {
            processes: [app, sidecar],
            inbound_port,
            admin_port,
        };
    }
    panic!("{name}: could not start on free ports in 5 attempts");
}

/// One GET through the mesh; the status (0 on a transport error).
async fn get(client: &HyperClient, url: &str) -> u16 {
    let Ok(uri) = url.parse::<http::Uri>() else {
        return 0;
    };
    let request = http::Request::get(uri).body(http_body_util::Empty::<bytes::Bytes>::new());
    let Ok(request) = request else { return 0 };
    match tokio::time::timeout(WAIT, client.request(request)).await {
        Ok(Ok(response)) => {
            let status = response.status().as_u16();
            let _ = http_body_util::BodyExt::collect(response.into_body()).await;
            status
        }
        _ => 0,
    }
}

type HyperClient = hyper_util::client::legacy::Client<
    hyper_util::client::legacy::connect::HttpConnector,
    http_body_util::Empty<bytes::Bytes>,
>;

fn client() -> HyperClient {
    hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build(hyper_util::client::legacy::connect::HttpConnector::new())
}

async fn collector() -> RunningCollector {
    let any: SocketAddr = "127.0.0.1:0".parse().expect("addr");
    Collector::start(CollectorConfig {
        zipkin: Some(any),
        otlp_http: Some(any),
        otlp_grpc: Some(any),
        out: None,
    })
    .await
    .expect("collector")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn explicit_mode_a_b_c_is_one_connected_tree_over_zipkin() {
    let collector = collector().await;
    let port = collector.zipkin.expect("zipkin").port();
    let mesh = explicit_mesh(&tracing_yaml(true, "zipkin", port, "/api/v2/spans"));
    let client = client();
    const REQUESTS: usize = 5;
    for _ in 0..REQUESTS {
        assert_eq!(
            get(&client, &format!("http://{}/items/7", mesh.entry)).await,
            200
        );
    }
    let spans = collector
        .wait_for_spans(5 * REQUESTS, WAIT)
        .await
        .expect("every span");
    let traces = group(&spans);
    assert_eq!(traces.len(), REQUESTS, "one trace per request");
    for spans in traces.values() {
        assert_chain(spans, ["a.demo", "b.demo", "c.demo"], true);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn explicit_mode_tree_over_otlp_http_and_grpc() {
    let collector = collector().await;
    for (protocol, port, endpoint) in [
        (
            "otlp-http",
            collector.otlp_http.expect("otlp-http").port(),
            "/v1/traces",
        ),
        (
            "otlp-grpc",
            collector.otlp_grpc.expect("otlp-grpc").port(),
            "/ignored",
        ),
    ] {
        let before = collector.spans().len();
        let mesh = explicit_mesh(&tracing_yaml(true, protocol, port, endpoint));
        assert_eq!(
            get(&client(), &format!("http://{}/x", mesh.entry)).await,
            200
        );
        let spans = collector
            .wait_for_spans(before + 5, WAIT)
            .await
            .expect("every span");
        let new: Vec<Span> = spans[before..].to_vec();
        assert_chain(&new, ["a.demo", "b.demo", "c.demo"], false);
        // OTLP carries semantic-convention attributes.
        assert!(
            new.iter()
                .all(|s| s.tag("http.request.method") == Some("GET")),
            "{protocol}: {new:#?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn explicit_mode_reload_under_load_moves_spans_without_failures_or_loss() {
    let old = collector().await;
    let new = collector().await;
    let mesh = explicit_mesh(&tracing_yaml(
        true,
        "zipkin",
        old.zipkin.expect("zipkin").port(),
        "/api/v2/spans",
    ));
    let url = format!("http://{}/load", mesh.entry);

    // Bounded load: 4 workers, 300 requests, running while the document flips.
    const REQUESTS: usize = 300;
    let sent = Arc::new(AtomicUsize::new(0));
    let failed = Arc::new(AtomicUsize::new(0));
    let mut workers = Vec::new();
    for _ in 0..4 {
        let (sent, failed, url, client) = (sent.clone(), failed.clone(), url.clone(), client());
        workers.push(tokio::spawn(async move {
            while sent.fetch_add(1, Ordering::SeqCst) < REQUESTS {
                if get(&client, &url).await != 200 {
                    failed.fetch_add(1, Ordering::SeqCst);
                }
            }
        }));
    }
    while sent.load(Ordering::SeqCst) < REQUESTS / 3 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    write_config(
        &mesh.config,
        &tracing_yaml(
            true,
            "otlp-http",
            new.otlp_http.expect("otlp-http").port(),
            "/v1/traces",
        ),
    );
    for w in workers {
        w.await.expect("worker");
    }
    assert_eq!(
        failed.load(Ordering::SeqCst),
        0,
        "no request failed across the reload"
    );

    // Requests after the switch reach the new collector.
    for _ in 0..5 {
        assert_eq!(get(&client(), &url).await, 200);
    }
    // Every request is HTTP from its first byte (a hyper client), so every connection is
    // detected as HTTP and every request makes five spans (three sidecars: A's SERVER and
    // CLIENT, B's SERVER and CLIENT, C's SERVER). The oracle is the number of requests sent,
    // not what the sidecars say they started: a span a sidecar never started is lost too.
    let untraced: Vec<String> = mesh
        .admin_ports
        .iter()
        .flat_map(|p| {
            admin_get(*p, "/metrics")
                .lines()
                .filter(|l| {
                    l.starts_with("mesh_proxy_protocol_detections")
                        && (l.contains("outcome=\"timed_out\"") || l.contains("outcome=\"opaque\""))
                        && l.rsplit_once(' ').and_then(|(_, v)| v.parse::<f64>().ok()) != Some(0.0)
                })
                .map(|l| format!("{p}: {l}"))
                .collect::<Vec<_>>()
        })
        .collect();
    assert!(
        untraced.is_empty(),
        "HTTP connections proxied as bytes (no spans): {untraced:#?}"
    );
    let started: f64 = mesh.admin_ports.iter().map(|p| spans_started(*p)).sum();
    assert_eq!(
        started as usize,
        5 * (REQUESTS + 5),
        "five spans started per request"
    );
    let total = 5 * (REQUESTS + 5);
    let deadline = Instant::now() + WAIT;
    loop {
        let (o, n) = (old.spans().len(), new.spans().len());
        if o + n >= total {
            assert_eq!(o + n, total, "no span lost or duplicated");
            assert!(n >= 25, "the new collector gets the new spans ({n})");
            break;
        }
        if Instant::now() >= deadline {
            let counters: Vec<String> = mesh
                .admin_ports
                .iter()
                .flat_map(|p| {
                    admin_get(*p, "/metrics")
                        .lines()
                        .filter(|l| {
                            l.starts_with("mesh_proxy_trace_")
                                || l.contains("detect")
                                || l.contains("opaque")
                        })
                        .map(|l| format!("{p}: {l}"))
                        .collect::<Vec<_>>()
                })
                .collect();
            let mut all = old.spans();
            all.extend(new.spans());
            let mut shapes: BTreeMap<String, usize> = BTreeMap::new();
            for spans in group(&all).values() {
                let mut shape: Vec<String> = spans
                    .iter()
                    .map(|s| {
                        format!(
                            "{}:{}",
                            s.service(),
                            s.kind.map(|k| k.as_str()).unwrap_or("-")
                        )
                    })
                    .collect();
                shape.sort();
                *shapes.entry(shape.join(",")).or_default() += 1;
            }
            panic!(
                "spans lost: old {o} + new {n} < {total}\n{}\n{shapes:#?}",
                counters.join("\n")
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Each sidecar counted nothing dropped.
    for port in &mesh.admin_ports {
        let out = Command::new("curl")
            .args(["-sf", &format!("http://127.0.0.1:{port}/metrics")])
            .output()
            .expect("curl");
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(text.contains("trace_spans_started"), "{text}");
        let dropped: f64 = text
            .lines()
            .filter(|l| l.contains("trace_spans_dropped") && !l.starts_with('#'))
            .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
            .sum();
        assert_eq!(dropped, 0.0, "{text}");
    }
}

/// With nothing listening at the collector's address, every request still succeeds, and the
/// sidecars did trace them (five spans per request): the export fails, is counted, and never
/// reaches the data path. Without the span count this would also pass with tracing off.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn explicit_mode_collector_down_requests_still_succeed() {
    const REQUESTS: usize = 20;
    let mesh = explicit_mesh(&tracing_yaml(true, "zipkin", free_port(), "/api/v2/spans"));
    let client = client();
    for _ in 0..REQUESTS {
        assert_eq!(
            get(&client, &format!("http://{}/down", mesh.entry)).await,
            200
        );
    }
    let started: f64 = mesh.admin_ports.iter().map(|p| spans_started(*p)).sum();
    assert_eq!(started as usize, 5 * REQUESTS, "every request was traced");
    // Each sidecar tries its collector, fails, and says so; nothing is counted as exported.
    let deadline = Instant::now() + WAIT;
    for port in &mesh.admin_ports {
        loop {
            let errors = metric_sum(*port, "mesh_proxy_trace_export_errors");
            if errors > 0.0 {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "sidecar {port} never counted a failed export:\n{}",
                admin_get(*port, "/metrics")
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert_eq!(
            metric_sum(*port, "mesh_proxy_trace_spans_exported"),
            0.0,
            "no collector, so nothing exported"
        );
    }
}

/// The sum of every sample of `name` (all label sets) on a sidecar's `/metrics`.
fn metric_sum(port: u16, name: &str) -> f64 {
    admin_get(port, "/metrics")
        .lines()
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with(['{', ' ']) || rest.starts_with("_total"))
        })
        .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
        .sum()
}

// ---------------------------------------------------------------------------------------------
// Transparent mode: pods, iptables, sidecars as UID 1500.

#[test]
#[ignore = "needs root: network namespaces and iptables"]
fn transparent_mode_a_b_c_is_one_connected_tree() {
    if !root_or_skip() {
        return;
    }
    let net = tracemesh_tests::Net::new().expect("net");
    let scripts = net.dir().join("relay.py");
    std::fs::write(&scripts, RELAY).expect("relay");
    let receiver = net.dir().join("receiver.py");
    std::fs::write(&receiver, RECEIVER).expect("receiver");
    let spans_file = net.dir().join("spans.jsonl");

    let collector = Pod::new(&net, "collector").expect("collector pod");
    let mut receiver_proc = collector
        .spawn(
            "receiver",
            &[
                "python3",
                &receiver.to_string_lossy(),
                "9411",
                &spans_file.to_string_lossy(),
            ],
        )
        .expect("receiver");
    receiver_proc
        .wait_for_stdout("ready", WAIT)
        .expect("receiver ready");

    let config = format!(
        "apiVersion: config.tracemesh.dev/v1alpha1\nkind: MeshConfig\nmetadata: {{name: mesh-config, namespace: mesh-system}}\n\
         spec:\n  observability:\n    tracing:\n      enable: true\n      address: {}\n      port: 9411\n      \
         endpoint: /api/v2/spans\n      protocol: zipkin\n      sampledFraction: \"1.0\"\n",
        collector.ip()
    );
    let pods: Vec<Pod> = ["a", "b", "c"]
        .iter()
        .map(|n| Pod::new(&net, n).expect("pod"))
        .collect();
    let mut keep: Vec<(tracemesh_tests::Sidecar, Proc)> = Vec::new();
    for (i, pod) in pods.iter().enumerate() {
        pod.init(&[]).expect("init");
        let sidecar = pod
            .start_sidecar(SidecarOpts {
                mesh_config: Some(config.clone()),
                namespace: Some("demo".into()),
                ..Default::default()
            })
            .expect("sidecar");
        let mut cmd = vec!["env".to_string()];
        if let Some(next) = pods.get(i + 1) {
            cmd.push(format!("NEXT=http://{}:8080", next.ip()));
        }
        cmd.extend([
            "python3".into(),
            scripts.to_string_lossy().into_owned(),
            "0.0.0.0".into(),
            "8080".into(),
        ]);
        let mut app = pod
            .spawn("app", &cmd.iter().map(String::as_str).collect::<Vec<_>>())
            .expect("app");
        app.wait_for_stdout("ready", WAIT).expect("app ready");
        keep.push((sidecar, app));
    }

    // A client pod without a sidecar calls A.
    let client = Pod::new(&net, "client").expect("client pod");
    const REQUESTS: usize = 3;
    for _ in 0..REQUESTS {
        let out = client
            .exec(&[
                "curl",
                "-sS",
                "--max-time",
                "20",
                &format!("http://{}:8080/items", pods[0].ip()),
            ])
            .expect("curl")
            .check("curl A")
            .expect("request through A → B → C");
        assert_eq!(out.stdout, "leaf");
    }

    let deadline = Instant::now() + WAIT;
    let spans = loop {
        let text = std::fs::read_to_string(&spans_file).unwrap_or_default();
        let spans: Vec<Span> = text
            .lines()
            .flat_map(|l| serde_json::from_str::<Vec<Span>>(l).expect("Zipkin v2 JSON list"))
            .collect();
        if spans.len() >= 5 * REQUESTS {
            break spans;
        }
        assert!(
            Instant::now() < deadline,
            "{} of {} spans arrived",
            spans.len(),
            5 * REQUESTS
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    let traces = group(&spans);
    assert_eq!(traces.len(), REQUESTS);
    for spans in traces.values() {
        assert_chain(spans, ["a.demo", "b.demo", "c.demo"], true);
    }
    drop(keep);
}

fn admin_get(port: u16, path: &str) -> String {
    let out = Command::new("curl")
        .args([
            "-sf",
            "--max-time",
            "5",
            &format!("http://127.0.0.1:{port}{path}"),
        ])
        .output()
        .expect("curl");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn spans_started(port: u16) -> f64 {
    admin_get(port, "/metrics")
        .lines()
        .filter(|l| l.starts_with("mesh_proxy_trace_spans_started"))
        .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
        .sum()
}

/// Waits until every sidecar serves `sampledFraction == fraction` and `enable == enable`.
async fn wait_applied(mesh: &ExplicitMesh, enable: bool, fraction: f64) {
    let deadline = Instant::now() + WAIT;
    for port in &mesh.admin_ports {
        loop {
            let text = admin_get(*port, "/config");
            let config: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
            let tracing = &config["config"]["spec"]["observability"]["tracing"];
            if tracing["enable"] == enable && tracing["sampledFraction"].as_f64() == Some(fraction)
            {
                break;
            }
            assert!(Instant::now() < deadline, "config never applied: {text}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn explicit_mode_reload_enables_disables_and_changes_sampling() {
    let collector = collector().await;
    let port = collector.zipkin.expect("zipkin").port();
    let mesh = explicit_mesh(&tracing_yaml(false, "zipkin", port, "/api/v2/spans"));
    let client = client();
    let url = format!("http://{}/r", mesh.entry);

    // Disabled: requests pass, nothing is recorded.
    assert_eq!(get(&client, &url).await, 200);
    assert!(mesh.admin_ports.iter().all(|p| spans_started(*p) == 0.0));

    // Enabled without restart: the switch is measured from the document change to the first
    // span at the collector (the contract asks for well under a second; logged, bounded here).
    let flipped = Instant::now();
    write_config(
        &mesh.config,
        &tracing_yaml(true, "zipkin", port, "/api/v2/spans"),
    );
    loop {
        assert_eq!(get(&client, &url).await, 200);
        if !collector.spans().is_empty() {
            break;
        }
        assert!(flipped.elapsed() < WAIT, "tracing never enabled");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    eprintln!(
        "tracing enabled {:?} after the document changed",
        flipped.elapsed()
    );

    // sampledFraction 0: propagated, not recorded.
    write_config(
        &mesh.config,
        &tracing_yaml(true, "zipkin", port, "/api/v2/spans")
            .replace("sampledFraction: 1.0", "sampledFraction: 0"),
    );
    wait_applied(&mesh, true, 0.0).await;
    let before: Vec<f64> = mesh.admin_ports.iter().map(|p| spans_started(*p)).collect();
    for _ in 0..10 {
        assert_eq!(get(&client, &url).await, 200);
    }
    let after: Vec<f64> = mesh.admin_ports.iter().map(|p| spans_started(*p)).collect();
    assert_eq!(before, after, "no span started at fraction 0");

    // Disabled again.
    write_config(
        &mesh.config,
        &tracing_yaml(false, "zipkin", port, "/api/v2/spans"),
    );
    wait_applied(&mesh, false, 1.0).await;
    for _ in 0..5 {
        assert_eq!(get(&client, &url).await, 200);
    }
    let last: Vec<f64> = mesh.admin_ports.iter().map(|p| spans_started(*p)).collect();
    assert_eq!(after, last);
}

// ---------------------------------------------------------------------------------------------
// HTTP/2: the same span per hop when the caller speaks h2c.

/// An h2c-only app that answers 200 and records the trace headers of every request it serves.
async fn h2c_app() -> (SocketAddr, Arc<std::sync::Mutex<Vec<http::HeaderMap>>>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
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
                                http_body_util::Full::new(bytes::Bytes::from_static(b"h2 leaf")),
                            ))
                        }
                    });
                let _ =
                    hyper::server::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
                        .serve_connection(hyper_util::rt::TokioIo::new(tcp), svc)
                        .await;
            });
        }
    });
    (addr, seen)
}

/// A sidecar with one static route (`--inbound` or `--outbound`, to `target`); returns it and
/// the route's port once that listens.
fn route_sidecar(
    name: &str,
    dir: &Path,
    config: &Path,
    flag: &str,
    target: SocketAddr,
) -> (Spawned, u16) {
    let proxy = binaries::mesh_proxy().expect("mesh-proxy binary");
    for _attempt in 0..5 {
        let ports = free_ports(4);
        let [listen, admin, transparent_in, transparent_out] = ports[..] else {
            unreachable!("four ports")
        };
        let mut cmd = Command::new(&proxy);
        cmd.args(["run", "--mesh-config"])
            .arg(config)
            .args(["--service", name, "--namespace", "demo"])
            .args(["--pod-ip", "127.0.0.1", "--bind", "127.0.0.1"])
            .args(["--inbound-port", &transparent_in.to_string()])
            .args(["--outbound-port", &transparent_out.to_string()])
            .args(["--admin-port", &admin.to_string()])
            .args([flag, &format!("127.0.0.1:{listen}={target}")]);
        let mut sidecar = Spawned::start(&format!("{name}-sidecar"), cmd, dir);
        if sidecar.wait_listening(SocketAddr::from(([127, 0, 0, 1], listen))) {
            return (sidecar, listen);
        }
    }
    panic!("{name}: could not start on free ports in 5 attempts");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn explicit_mode_h2c_hops_are_traced_like_http1() {
    let collector = collector().await;
    let port = collector.zipkin.expect("zipkin").port();
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("mesh-config.yaml");
    write_config(
        &config,
        &tracing_yaml(true, "zipkin", port, "/api/v2/spans"),
    );
    let (app, seen) = h2c_app().await;
    // The caller's app → its sidecar's outbound route → the server's sidecar inbound → app.
    let (b, b_port) = route_sidecar("b", dir.path(), &config, "--inbound", app);
    let b_in = SocketAddr::from(([127, 0, 0, 1], b_port));
    let (a, a_port) = route_sidecar("a", dir.path(), &config, "--outbound", b_in);

    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", a_port))
        .await
        .expect("connect");
    let (mut send, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(tcp),
    )
    .await
    .expect("h2c handshake");
    tokio::spawn(conn);
    const APP_SPAN: &str = "00f067aa0ba902b7";
    const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
    let request = http::Request::get("http://b.demo:8080/h2/items")
        .header("x-b3-traceid", TRACE)
        .header("x-b3-spanid", APP_SPAN)
        .header("x-b3-sampled", "1")
        .body(http_body_util::Empty::<bytes::Bytes>::new())
        .expect("request");
    let response = tokio::time::timeout(WAIT, send.send_request(request))
        .await
        .expect("in time")
        .expect("h2 response");
    assert_eq!(response.status(), 200);
    assert_eq!(response.version(), http::Version::HTTP_2);

    let spans = collector.wait_for_spans(2, WAIT).await.expect("both spans");
    assert_eq!(spans.len(), 2, "{spans:#?}");
    let client = spans
        .iter()
        .find(|s| s.kind.map(|k| k.as_str()) == Some("CLIENT"))
        .expect("a CLIENT span");
    let server = spans
        .iter()
        .find(|s| s.kind.map(|k| k.as_str()) == Some("SERVER"))
        .expect("a SERVER span");
    for s in [client, server] {
        assert_zipkin_schema(s);
        assert_eq!(s.trace_id, TRACE);
        assert_eq!(s.tag("http.protocol"), Some("HTTP/2"), "{s:#?}");
        assert_eq!(s.tag("http.method"), Some("GET"));
        assert_eq!(s.tag("http.status_code"), Some("200"));
    }
    assert_eq!(client.service(), "a.demo");
    assert_eq!(client.parent_id.as_deref(), Some(APP_SPAN));
    assert_eq!(server.service(), "b.demo");
    assert_eq!(server.parent_id.as_deref(), Some(client.id.as_str()));

    // The app behind the server's sidecar sees the SERVER span as its parent hop.
    let seen = seen.lock().expect("lock");
    assert_eq!(seen.len(), 1);
    let header = |name: &str| seen[0].get(name).and_then(|v| v.to_str().ok());
    assert_eq!(header("x-b3-traceid"), Some(TRACE));
    assert_eq!(header("x-b3-spanid"), Some(server.id.as_str()));
    assert_eq!(header("x-b3-parentspanid"), Some(client.id.as_str()));
    assert_eq!(header("x-b3-sampled"), Some("1"));
    drop((a, b));
}
