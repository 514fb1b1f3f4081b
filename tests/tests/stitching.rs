//! Stitching end to end: A → B → C, each behind its own `mesh-proxy`, where B is an app that
//! forwards no trace headers (or only `x-request-id`). A copies the trace headers as a
//! well-behaved app does; B's sidecar must join B's outbound requests to the inbound request
//! that caused them, or say it could not, and never name a wrong parent.
//!
//! The truth the test knows: every request carries its own path (`/n/<i>`) through all three
//! hops, and each span records its URL, so the B SERVER span a B CLIENT span belongs to is the
//! one with the same path.
//!
//! Explicit mode (loopback) and transparent mode (pods, iptables: root only, `--ignored`).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use tracemesh_collector::span::Span;
use tracemesh_collector::{Collector, CollectorConfig, RunningCollector};
use tracemesh_tests::loopback::{free_ports, Spawned};
use tracemesh_tests::{binaries, root_or_skip, Pod, Proc, SidecarOpts, WAIT};

/// An uninstrumented app: serves GET by calling `NEXT` + its path (if set), forwarding what
/// `FORWARD` says of the headers it received: `all` trace headers, only `request-id`, or
/// `none`. `DELAY_MS` is spent before the call, so concurrent requests overlap in B.
const RELAY: &str = r#"
import http.server, os, sys, time, urllib.request
HOST, PORT, NEXT = sys.argv[1], int(sys.argv[2]), os.environ.get("NEXT", "")
FORWARD = os.environ.get("FORWARD", "all")
DELAY = int(os.environ.get("DELAY_MS", "0")) / 1000.0
TRACE = {"x-b3-traceid", "x-b3-spanid", "x-b3-parentspanid", "x-b3-sampled", "x-b3-flags",
         "b3", "traceparent", "tracestate", "x-request-id"}
KEEP = {"all": TRACE, "request-id": {"x-request-id"}, "none": set()}[FORWARD]
OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))
class Relay(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def do_GET(self):
        status, body = 200, b"leaf"
        if NEXT:
            time.sleep(DELAY)
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
server.daemon_threads = True
print("ready", flush=True)
server.serve_forever()
"#;

/// A Zipkin receiver for pods: appends each POSTed body as one line to a file.
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

/// What B does with the headers of the request it serves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Forward {
    RequestId,
    Nothing,
}

impl Forward {
    fn env(self) -> &'static str {
        match self {
            Forward::RequestId => "request-id",
            Forward::Nothing => "none",
        }
    }
}

/// B's sidecar's `mesh_proxy_trace_outbound_context_total`, by outcome.
#[derive(Debug, Default, PartialEq)]
struct Outcomes {
    propagated: u64,
    stitched_request_id: u64,
    stitched_in_flight: u64,
    ambiguous: u64,
    root: u64,
}

impl Outcomes {
    fn parse(metrics: &str) -> Outcomes {
        let get = |outcome: &str| {
            metrics
                .lines()
                .filter(|l| l.starts_with("mesh_proxy_trace_outbound_context_total{"))
                .filter(|l| l.contains(&format!("outcome=\"{outcome}\"")))
                .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
                .sum::<f64>() as u64
        };
        Outcomes {
            propagated: get("propagated"),
            stitched_request_id: get("stitched_request_id"),
            stitched_in_flight: get("stitched_in_flight"),
            ambiguous: get("ambiguous"),
            root: get("root"),
        }
    }
}

fn config_yaml(collector: &str, port: u16, stitching: &str) -> String {
    format!(
        "apiVersion: config.tracemesh.dev/v1alpha1\nkind: MeshConfig\nmetadata: {{name: mesh-config, namespace: mesh-system}}\n\
         spec:\n  observability:\n    tracing:\n      enable: true\n      address: {collector}\n      port: {port}\n      \
         endpoint: /api/v2/spans\n      protocol: zipkin\n      sampledFraction: 1.0\n      stitching: '{stitching}'\n"
    )
}

/// The path every hop of request `i` carries: the test's truth about which spans belong together.
fn path_of(i: usize) -> String {
    format!("/n/{i}")
}

/// `/n/<i>` from a span's `http.url`.
fn path_in(span: &Span) -> Option<&str> {
    let url = span.tag("http.url")?;
    let rest = url.strip_prefix("http://")?;
    Some(&rest[rest.find('/')?..])
}

fn is(span: &Span, kind: &str, service: &str) -> bool {
    span.kind.map(|k| k.as_str()) == Some(kind) && span.service() == service
}

/// Each request's spans, found by path (not by trace id, which stitching may not have joined).
fn by_path(spans: &[Span], requests: usize) -> BTreeMap<String, Vec<&Span>> {
    let mut out: BTreeMap<String, Vec<&Span>> = BTreeMap::new();
    for s in spans {
        if let Some(p) = path_in(s) {
            out.entry(p.to_owned()).or_default().push(s);
        }
    }
    assert_eq!(out.len(), requests, "one path per request: {out:#?}");
    out
}

/// A request's five spans: [A SERVER, A CLIENT, B SERVER, B CLIENT, C SERVER].
fn hops<'a>(spans: &[&'a Span]) -> [&'a Span; 5] {
    assert_eq!(spans.len(), 5, "one span per hop and side: {spans:#?}");
    let find = |kind: &str, service: &str| -> &'a Span {
        let found: Vec<_> = spans.iter().filter(|s| is(s, kind, service)).collect();
        assert_eq!(found.len(), 1, "{kind} {service}: {spans:#?}");
        found[0]
    };
    [
        find("SERVER", "a.demo"),
        find("CLIENT", "a.demo"),
        find("SERVER", "b.demo"),
        find("CLIENT", "b.demo"),
        find("SERVER", "c.demo"),
    ]
}

/// Every request is one tree of five spans, B's hop stitched as `how`.
fn assert_one_tree_each(spans: &[Span], requests: usize, how: &str) {
    for (path, spans) in by_path(spans, requests) {
        let [a_in, a_out, b_in, b_out, c_in] = hops(&spans);
        assert!(
            a_in.parent_id.is_none(),
            "{path}: A is the root: {spans:#?}"
        );
        for (child, parent) in [(a_out, a_in), (b_in, a_out), (b_out, b_in), (c_in, b_out)] {
            assert_eq!(
                child.parent_id.as_deref(),
                Some(parent.id.as_str()),
                "{path}: {spans:#?}"
            );
            assert_eq!(
                child.trace_id, a_in.trace_id,
                "{path}: one trace: {spans:#?}"
            );
        }
        assert_eq!(
            b_out.tag("tracemesh.stitch"),
            Some(how),
            "{path}: {b_out:#?}"
        );
        for s in [a_in, a_out, b_in, c_in] {
            assert_eq!(
                s.tag("tracemesh.stitch"),
                None,
                "{path}: only B's CLIENT: {s:#?}"
            );
        }
    }
}

/// B forwarding nothing under concurrency: no span has a wrong parent, every stitched span says
/// so, and B's counts add up with what the collector received. Returns (stitched, unstitched).
fn assert_no_wrong_parent(spans: &[Span], requests: usize, outcomes: &Outcomes) -> (u64, u64) {
    let (mut stitched, mut unstitched) = (0, 0);
    for (path, spans) in by_path(spans, requests) {
        let [a_in, a_out, b_in, b_out, c_in] = hops(&spans);
        // The hops that propagate are always right.
        for (child, parent) in [(a_out, a_in), (b_in, a_out), (c_in, b_out)] {
            assert_eq!(
                child.parent_id.as_deref(),
                Some(parent.id.as_str()),
                "{path}"
            );
        }
        match b_out.parent_id.as_deref() {
            Some(parent) => {
                assert_eq!(parent, b_in.id, "{path}: a wrong parent: {spans:#?}");
                assert_eq!(b_out.trace_id, b_in.trace_id, "{path}");
                assert_eq!(b_out.tag("tracemesh.stitch"), Some("in-flight"), "{path}");
                stitched += 1;
            }
            None => {
                assert_ne!(b_out.trace_id, b_in.trace_id, "{path}: a trace of its own");
                assert_eq!(b_out.tag("tracemesh.stitch"), None, "{path}: {b_out:#?}");
                unstitched += 1;
            }
        }
    }
    assert_eq!(
        (outcomes.propagated, outcomes.stitched_request_id),
        (0, 0),
        "B forwards nothing: {outcomes:?}"
    );
    assert_eq!(
        outcomes.stitched_in_flight, stitched,
        "every stitch counted, every counted stitch seen: {outcomes:?}"
    );
    assert_eq!(
        outcomes.ambiguous + outcomes.root,
        unstitched,
        "every other request counted once: {outcomes:?}"
    );
    (stitched, unstitched)
}

// ---------------------------------------------------------------------------------------------
// Explicit mode: every process on loopback, distinct ports.

/// A → B → C on loopback; `entry` is A's published port.
struct ExplicitMesh {
    _procs: Vec<Spawned>,
    entry: SocketAddr,
    b_admin: u16,
    _dir: tempfile::TempDir,
}

/// `b_env` is extra environment for B's sidecar (its stitching override).
fn explicit_mesh(
    config: &str,
    forward: Forward,
    delay_ms: u64,
    b_env: &[(&str, &str)],
) -> ExplicitMesh {
    let dir = tempfile::tempdir().expect("tempdir");
    let relay = dir.path().join("relay.py");
    std::fs::write(&relay, RELAY).expect("relay script");
    let config_path = dir.path().join("mesh-config.yaml");
    std::fs::write(&config_path, config).expect("config");
    let proxy = binaries::mesh_proxy().expect("mesh-proxy binary");
    let mut procs = Vec::new();
    let mut next_entry: Option<u16> = None;
    let mut b_admin = 0;
    for name in ["c", "b", "a"] {
        let is_b = name == "b";
        let app_env: Vec<(&str, String)> = if is_b {
            vec![
                ("FORWARD", forward.env().to_owned()),
                ("DELAY_MS", delay_ms.to_string()),
            ]
        } else {
            vec![]
        };
        let sidecar_env = if is_b { b_env } else { &[] };
        let node = start_node(
            name,
            dir.path(),
            &relay,
            &config_path,
            &proxy,
            next_entry,
            &app_env,
            sidecar_env,
        );
        procs.extend(node.processes);
        if name == "b" {
            b_admin = node.admin_port;
        }
        next_entry = Some(node.inbound_port);
    }
    ExplicitMesh {
        _procs: procs,
        entry: SocketAddr::from(([127, 0, 0, 1], next_entry.expect("a's entry"))),
        b_admin,
        _dir: dir,
    }
}

struct Node {
    processes: [Spawned; 2],
    inbound_port: u16,
    admin_port: u16,
}

/// Starts one service's app and sidecar on free ports, retrying on fresh ports when a parallel
/// test took one meanwhile.
#[allow(clippy::too_many_arguments)]
fn start_node(
    name: &str,
    dir: &Path,
    relay: &Path,
    config: &Path,
    proxy: &Path,
    next_entry: Option<u16>,
    app_env: &[(&str, String)],
    sidecar_env: &[(&str, &str)],
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
            .env_remove("HTTP_PROXY")
            .envs(app_env.iter().map(|(k, v)| (k, v)));
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
            .args(["--service", name, "--namespace", "demo"])
            .args(["--pod-ip", "127.0.0.1", "--bind", "127.0.0.1"])
            .args(["--inbound-port", &transparent_in.to_string()])
            .args(["--outbound-port", &transparent_out.to_string()])
            .args(["--admin-port", &admin_port.to_string()])
            .args([
                "--inbound",
                &format!("127.0.0.1:{inbound_port}=127.0.0.1:{app_port}"),
            ])
            .env("RUST_LOG", "info")
            .env_remove("MESH_STITCHING")
            .envs(sidecar_env.iter().copied());
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

async fn collector() -> RunningCollector {
    Collector::start(CollectorConfig {
        zipkin: Some("127.0.0.1:0".parse().expect("addr")),
        otlp_http: None,
        otlp_grpc: None,
        out: None,
    })
    .await
    .expect("collector")
}

type HyperClient = hyper_util::client::legacy::Client<
    hyper_util::client::legacy::connect::HttpConnector,
    http_body_util::Empty<bytes::Bytes>,
>;

/// GETs `/n/0` .. `/n/<requests-1>` from `entry`, `concurrency` at a time; every one must
/// answer 200 within the deadline.
async fn drive(entry: SocketAddr, requests: usize, concurrency: usize) {
    let client: HyperClient =
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .build(hyper_util::client::legacy::connect::HttpConnector::new());
    let next = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let workers: Vec<_> = (0..concurrency)
        .map(|_| {
            let (client, next) = (client.clone(), next.clone());
            tokio::spawn(async move {
                loop {
                    let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    if i >= requests {
                        return;
                    }
                    let uri: http::Uri = format!("http://{entry}{}", path_of(i)).parse().unwrap();
                    let req = http::Request::get(uri)
                        .body(http_body_util::Empty::new())
                        .unwrap();
                    let resp = tokio::time::timeout(WAIT, client.request(req))
                        .await
                        .expect("answered in time")
                        .expect("answered");
                    assert_eq!(resp.status(), 200, "request {i}");
                    let body = http_body_util::BodyExt::collect(resp.into_body())
                        .await
                        .expect("body")
                        .to_bytes();
                    assert_eq!(&body[..], b"leaf", "request {i} reached C");
                }
            })
        })
        .collect();
    for w in workers {
        w.await.expect("worker");
    }
}

fn admin_metrics(port: u16) -> String {
    let out = Command::new("curl")
        .args(["-sf", "--max-time", "5"])
        .arg(format!("http://127.0.0.1:{port}/metrics"))
        .output()
        .expect("curl");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Runs `requests` through the explicit mesh and returns every span and B's outcomes, once the
/// collector holds all five spans of every request.
async fn explicit_run(
    stitching: &str,
    forward: Forward,
    b_env: &[(&str, &str)],
    requests: usize,
    concurrency: usize,
) -> (Vec<Span>, Outcomes) {
    let collector = collector().await;
    let port = collector.zipkin.expect("zipkin").port();
    let delay = if concurrency > 1 { 30 } else { 0 };
    let mesh = explicit_mesh(
        &config_yaml("127.0.0.1", port, stitching),
        forward,
        delay,
        b_env,
    );
    drive(mesh.entry, requests, concurrency).await;
    let spans = collector
        .wait_for_spans(5 * requests, WAIT)
        .await
        .expect("every span");
    // Spans are queued when the response ends; the counters moved before the request left B.
    (spans, Outcomes::parse(&admin_metrics(mesh.b_admin)))
}

/// Sequential requests, B forwarding nothing, in-flight mode set for B's pod alone (its
/// `MESH_STITCHING`, as the injector passes the `tracemesh.dev/stitching` annotation): every
/// trace is one tree of five spans.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn explicit_sequential_b_forwarding_nothing_is_one_tree_per_request() {
    const REQUESTS: usize = 6;
    let (spans, outcomes) = explicit_run(
        "request-id",
        Forward::Nothing,
        &[("MESH_STITCHING", "in-flight")],
        REQUESTS,
        1,
    )
    .await;
    assert_one_tree_each(&spans, REQUESTS, "in-flight");
    assert_eq!(
        outcomes,
        Outcomes {
            stitched_in_flight: REQUESTS as u64,
            ..Default::default()
        }
    );
}

/// B forwarding only `x-request-id`, eight requests at a time, default mode: every trace is
/// one tree, joined by request id whatever else is in flight.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn explicit_request_id_under_concurrency_8_is_one_tree_per_request() {
    const REQUESTS: usize = 48;
    let (spans, outcomes) = explicit_run("request-id", Forward::RequestId, &[], REQUESTS, 8).await;
    assert_one_tree_each(&spans, REQUESTS, "request-id");
    assert_eq!(
        outcomes,
        Outcomes {
            stitched_request_id: REQUESTS as u64,
            ..Default::default()
        }
    );
}

/// B forwarding nothing, eight requests at a time, in-flight mode: not one span has a wrong
/// parent, and B's counts of stitched and ambiguous add up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn explicit_in_flight_under_concurrency_8_names_no_wrong_parent() {
    const REQUESTS: usize = 64;
    let (spans, outcomes) = explicit_run("in-flight", Forward::Nothing, &[], REQUESTS, 8).await;
    let (_stitched, unstitched) = assert_no_wrong_parent(&spans, REQUESTS, &outcomes);
    eprintln!("B's outbound requests: {outcomes:?}");
    // Eight clients and a 30 ms pause in B: requests overlap there, so some are ambiguous
    // (otherwise this run proved nothing about concurrency).
    assert!(outcomes.ambiguous > 0, "{outcomes:?}");
    assert_eq!(
        outcomes.ambiguous, unstitched,
        "B is never idle mid-request: {outcomes:?}"
    );
}

/// `off`: B's requests start their own traces, untagged, counted as roots.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn explicit_off_stitches_nothing() {
    const REQUESTS: usize = 3;
    let (spans, outcomes) = explicit_run("off", Forward::RequestId, &[], REQUESTS, 1).await;
    for (path, spans) in by_path(&spans, REQUESTS) {
        let [_, _, b_in, b_out, _] = hops(&spans);
        assert!(b_out.parent_id.is_none(), "{path}: {b_out:#?}");
        assert_ne!(b_out.trace_id, b_in.trace_id, "{path}");
        assert_eq!(b_out.tag("tracemesh.stitch"), None);
    }
    assert_eq!(
        outcomes,
        Outcomes {
            root: REQUESTS as u64,
            ..Default::default()
        }
    );
}

// ---------------------------------------------------------------------------------------------
// Transparent mode: pods, iptables, sidecars as UID 1500.

/// Fields drop in order: processes, then pods, then the network.
struct PodMesh {
    _keep: Vec<(tracemesh_tests::Sidecar, Proc)>,
    _receiver: Proc,
    client: Pod,
    /// A, B, C and the collector's pod: a pod's namespace goes when it is dropped.
    _pods: Vec<Pod>,
    spans_file: PathBuf,
    a_ip: std::net::Ipv4Addr,
    _net: tracemesh_tests::Net,
}

fn pod_mesh(stitching: &str, forward: Forward, delay_ms: u64, b_env: &[(&str, &str)]) -> PodMesh {
    let net = tracemesh_tests::Net::new().expect("net");
    let relay = net.dir().join("relay.py");
    std::fs::write(&relay, RELAY).expect("relay");
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
    let config = config_yaml(&collector.ip().to_string(), 9411, stitching);
    let pods: Vec<Pod> = ["a", "b", "c"]
        .iter()
        .map(|n| Pod::new(&net, n).expect("pod"))
        .collect();
    let mut keep = Vec::new();
    for (i, pod) in pods.iter().enumerate() {
        pod.init(&[]).expect("init");
        let is_b = pod.name() == "b";
        let sidecar = pod
            .start_sidecar(SidecarOpts {
                mesh_config: Some(config.clone()),
                namespace: Some("demo".into()),
                env: if is_b {
                    b_env
                        .iter()
                        .map(|(k, v)| (k.to_string(), v.to_string()))
                        .collect()
                } else {
                    vec![]
                },
                ..Default::default()
            })
            .expect("sidecar");
        let mut cmd = vec!["env".to_string()];
        if let Some(next) = pods.get(i + 1) {
            cmd.push(format!("NEXT=http://{}:8080", next.ip()));
        }
        if is_b {
            cmd.push(format!("FORWARD={}", forward.env()));
            cmd.push(format!("DELAY_MS={delay_ms}"));
        }
        cmd.extend([
            "python3".into(),
            relay.to_string_lossy().into_owned(),
            "0.0.0.0".into(),
            "8080".into(),
        ]);
        let mut app = pod
            .spawn("app", &cmd.iter().map(String::as_str).collect::<Vec<_>>())
            .expect("app");
        app.wait_for_stdout("ready", WAIT).expect("app ready");
        keep.push((sidecar, app));
    }
    let client = Pod::new(&net, "client").expect("client pod");
    PodMesh {
        spans_file,
        client,
        a_ip: pods[0].ip(),
        _keep: keep,
        _receiver: receiver_proc,
        _pods: pods.into_iter().chain([collector]).collect(),
        _net: net,
    }
}

impl PodMesh {
    /// `requests` GETs from the client pod (no sidecar) to A, `concurrency` at a time (curl's
    /// parallel transfers), each checked to reach C.
    fn drive(&self, requests: usize, concurrency: usize) {
        let urls: Vec<String> = (0..requests)
            .map(|i| format!("http://{}:8080{}", self.a_ip, path_of(i)))
            .collect();
        let mut args = vec![
            "curl".to_string(),
            "-sS".into(),
            "--fail".into(),
            "--max-time".into(),
            "30".into(),
            "-w".into(),
            "%{http_code}\\n".into(),
        ];
        if concurrency > 1 {
            args.extend([
                "-Z".into(),
                "--parallel-max".into(),
                concurrency.to_string(),
            ]);
        }
        for url in urls {
            args.extend(["-o".into(), "/dev/null".into(), url]);
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = self
            .client
            .exec(&args)
            .expect("curl")
            .check("curl A")
            .expect("requests through A → B → C");
        assert_eq!(
            out.stdout.lines().filter(|l| *l == "200").count(),
            requests,
            "{}",
            out.stdout
        );
    }

    fn spans(&self, want: usize) -> Vec<Span> {
        let deadline = Instant::now() + WAIT;
        loop {
            let text = std::fs::read_to_string(&self.spans_file).unwrap_or_default();
            let spans: Vec<Span> = text
                .lines()
                .flat_map(|l| serde_json::from_str::<Vec<Span>>(l).expect("Zipkin v2 JSON"))
                .collect();
            if spans.len() >= want {
                return spans;
            }
            assert!(
                Instant::now() < deadline,
                "{} of {want} spans arrived",
                spans.len()
            );
            // Polling a file the receiver appends to: the deadline above bounds it.
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn b_outcomes(&self) -> Outcomes {
        let b = &self._keep[1].0;
        Outcomes::parse(&b.metrics().expect("B's /metrics"))
    }
}

#[test]
#[ignore = "needs root: network namespaces and iptables"]
fn transparent_sequential_b_forwarding_nothing_is_one_tree_per_request() {
    if !root_or_skip() {
        return;
    }
    const REQUESTS: usize = 4;
    let mesh = pod_mesh(
        "request-id",
        Forward::Nothing,
        0,
        &[("MESH_STITCHING", "in-flight")],
    );
    mesh.drive(REQUESTS, 1);
    assert_one_tree_each(&mesh.spans(5 * REQUESTS), REQUESTS, "in-flight");
    assert_eq!(mesh.b_outcomes().stitched_in_flight, REQUESTS as u64);
}

#[test]
#[ignore = "needs root: network namespaces and iptables"]
fn transparent_request_id_under_concurrency_8_is_one_tree_per_request() {
    if !root_or_skip() {
        return;
    }
    const REQUESTS: usize = 32;
    let mesh = pod_mesh("request-id", Forward::RequestId, 30, &[]);
    mesh.drive(REQUESTS, 8);
    assert_one_tree_each(&mesh.spans(5 * REQUESTS), REQUESTS, "request-id");
    assert_eq!(
        mesh.b_outcomes(),
        Outcomes {
            stitched_request_id: REQUESTS as u64,
            ..Default::default()
        }
    );
}

#[test]
#[ignore = "needs root: network namespaces and iptables"]
fn transparent_in_flight_under_concurrency_8_names_no_wrong_parent() {
    if !root_or_skip() {
        return;
    }
    const REQUESTS: usize = 32;
    let mesh = pod_mesh("in-flight", Forward::Nothing, 30, &[]);
    mesh.drive(REQUESTS, 8);
    let outcomes = mesh.b_outcomes();
    let (_, unstitched) = assert_no_wrong_parent(&mesh.spans(5 * REQUESTS), REQUESTS, &outcomes);
    eprintln!("B's outbound requests: {outcomes:?}");
    assert!(outcomes.ambiguous > 0, "{outcomes:?}");
    assert_eq!(outcomes.ambiguous, unstitched, "{outcomes:?}");
}
