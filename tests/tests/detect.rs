//! Protocol detection between two transparent sidecars, with tracing on: silence never makes a
//! connection opaque, a server that speaks first still gets through, garbage is proxied as bytes,
//! and under keep-alive load every request has both its spans.
//!
//! A client pod and a server pod (each with `mesh-proxy init` and a sidecar as UID 1500) and a
//! collector pod running `mesh collector --zipkin 0.0.0.0:9411 --out FILE`; the tests read the
//! spans the sidecars exported from that file (Zipkin v2 JSON, one span per line).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use tracemesh_collector::span::{Kind, Span};
use tracemesh_tests::{binaries, root_or_skip, Net, Pod, Proc, Sidecar, SidecarOpts, WAIT};

/// Client and server pods with traced sidecars, the collector, and the server's app.
struct Traced {
    client_sidecar: Sidecar,
    server_sidecar: Sidecar,
    _app: Proc,
    _collector: Proc,
    client: Pod,
    server: Pod,
    _collector_pod: Pod,
    spans_file: std::path::PathBuf,
    _net: Net,
}

/// Builds the pods; `app` is the `tm-support` server to run in the server pod.
fn traced(app: &[&str]) -> Traced {
    let net = Net::new().expect("net");
    let collector_pod = Pod::new(&net, "collector").expect("collector pod");
    let spans_file = net.dir().join("spans.jsonl");
    let mesh = binaries::path("mesh").expect("the mesh CLI (cargo build --workspace --bins)");
    let mut collector = collector_pod
        .spawn(
            "collector",
            &[
                &mesh.to_string_lossy(),
                "collector",
                "--zipkin",
                "0.0.0.0:9411",
                "--out",
                &spans_file.to_string_lossy(),
            ],
        )
        .expect("collector");
    collector
        .wait_until(WAIT, |p| p.stderr().contains("listening"))
        .expect("collector listening");
    let config = format!(
        "apiVersion: config.tracemesh.dev/v1alpha1\nkind: MeshConfig\nmetadata: {{name: mesh-config, namespace: mesh-system}}\n\
         spec:\n  observability:\n    tracing:\n      enable: true\n      address: {}\n      port: 9411\n      \
         endpoint: /api/v2/spans\n      protocol: zipkin\n      sampledFraction: \"1.0\"\n",
        collector_pod.ip()
    );
    let opts = SidecarOpts {
        mesh_config: Some(config),
        ..Default::default()
    };
    let client = Pod::new(&net, "client").expect("client pod");
    let server = Pod::new(&net, "server").expect("server pod");
    client.init(&[]).expect("client init");
    server.init(&[]).expect("server init");
    let server_sidecar = server.start_sidecar(opts.clone()).expect("server sidecar");
    let client_sidecar = client.start_sidecar(opts).expect("client sidecar");
    let app = server.spawn_server(app).expect("app");
    Traced {
        client_sidecar,
        server_sidecar,
        _app: app,
        _collector: collector,
        client,
        server,
        _collector_pod: collector_pod,
        spans_file,
        _net: net,
    }
}

impl Traced {
    /// The spans received so far (complete lines only: the collector may be mid-write).
    fn spans(&self) -> Vec<Span> {
        let text = std::fs::read_to_string(&self.spans_file).unwrap_or_default();
        let complete = text.rfind('\n').map_or("", |end| &text[..end]);
        complete
            .lines()
            .map(|l| serde_json::from_str::<Span>(l).expect("a Zipkin v2 span per line"))
            .collect()
    }

    /// Waits until at least `n` spans arrived (bounded), then returns them all.
    fn wait_spans(&self, n: usize) -> Vec<Span> {
        let deadline = Instant::now() + WAIT;
        loop {
            let spans = self.spans();
            if spans.len() >= n {
                return spans;
            }
            assert!(
                Instant::now() < deadline,
                "{} of {n} spans arrived",
                spans.len()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// `outcome`'s count in `mesh_proxy_protocol_detections_total` of one sidecar and direction.
    fn detections(sidecar: &Sidecar, direction: &str, outcome: &str) -> f64 {
        let text = sidecar.metrics().expect("metrics");
        let direction = format!("direction=\"{direction}\"");
        let outcome = format!("outcome=\"{outcome}\"");
        Sidecar::metric_sum(&text, "protocol_detections_total", &[&direction, &outcome])
    }
}

/// The trace headers the app saw, from the http-echo JSON.
fn seen(info: &serde_json::Value) -> (String, String, String) {
    let h = |name: &str| {
        info["headers"][name]
            .as_str()
            .unwrap_or_else(|| panic!("the app saw no {name}: {info}"))
            .to_owned()
    };
    (h("x-b3-traceid"), h("x-b3-spanid"), h("x-b3-parentspanid"))
}

/// The request the app saw as (trace, span, parent) has a SERVER span at the server sidecar
/// (the span the app saw) whose parent is a CLIENT span at the client sidecar.
fn assert_both_spans(by_id: &HashMap<&str, &Span>, (trace, span, parent): (&str, &str, &str)) {
    let server = by_id
        .get(span)
        .unwrap_or_else(|| panic!("no SERVER span {span} (trace {trace})"));
    assert_eq!(server.kind, Some(Kind::Server), "{server:?}");
    assert_eq!(server.service(), "server.default", "{server:?}");
    assert_eq!(server.trace_id, trace, "{server:?}");
    assert_eq!(server.parent_id.as_deref(), Some(parent), "{server:?}");
    let client = by_id
        .get(parent)
        .unwrap_or_else(|| panic!("no CLIENT span {parent} (trace {trace})"));
    assert_eq!(client.kind, Some(Kind::Client), "{client:?}");
    assert_eq!(client.service(), "client.default", "{client:?}");
    assert_eq!(client.trace_id, trace, "{client:?}");
}

/// A client that connects, says nothing for 3 s (past the detection timeout on both sidecars),
/// then sends one GET: both hops trace it and the app sees the server sidecar's span.
fn late_request_is_traced(http2: bool) {
    let t = traced(&["http-echo", "--listen", "0.0.0.0:8080"]);
    let addr = format!("{}:8080", t.server.ip());
    let mut args = vec!["late-get", addr.as_str(), "--delay-ms", "3000"];
    if http2 {
        args.push("--http2");
    }
    let out = t
        .client
        .support(&args)
        .expect("run late-get")
        .check("late-get")
        .expect("a late request through both sidecars");
    let info: serde_json::Value = serde_json::from_str(&out.stdout).expect("echo JSON");
    let version = if http2 { "HTTP/2.0" } else { "HTTP/1.1" };
    assert_eq!(info["version"], version, "{info}");
    assert_eq!(
        info["peer"]
            .as_str()
            .and_then(|p| p.rsplit_once(':'))
            .map(|p| p.0),
        Some(t.server.ip().to_string().as_str()),
        "the inbound sidecar made the last hop: {info}"
    );
    let (trace, span, parent) = seen(&info);
    let spans = t.wait_spans(2);
    let by_id: HashMap<&str, &Span> = spans.iter().map(|s| (s.id.as_str(), s)).collect();
    assert_both_spans(&by_id, (&trace, &span, &parent));
    let protocol = if http2 { "http2" } else { "http1" };
    assert_eq!(
        Traced::detections(&t.client_sidecar, "outbound", protocol),
        1.0
    );
    assert_eq!(
        Traced::detections(&t.server_sidecar, "inbound", protocol),
        1.0
    );
}

#[test]
#[ignore = "needs root: network namespaces and iptables"]
fn client_silent_for_3s_then_http1_is_traced_at_both_sidecars() {
    if !root_or_skip() {
        return;
    }
    late_request_is_traced(false);
}

#[test]
#[ignore = "needs root: network namespaces and iptables"]
fn client_silent_for_3s_then_h2c_is_traced_at_both_sidecars() {
    if !root_or_skip() {
        return;
    }
    late_request_is_traced(true);
}

#[test]
#[ignore = "needs root: network namespaces and iptables"]
fn server_first_protocol_on_an_unlisted_port_gets_its_greeting_through() {
    if !root_or_skip() {
        return;
    }
    // 2525 is not in opaquePorts: both sidecars wait for the client, which waits for the
    // greeting, as an SMTP client does.
    let t = traced(&[
        "tcp-echo",
        "--listen",
        "0.0.0.0:2525",
        "--banner",
        "220 hello",
    ]);
    let addr = format!("{}:2525", t.server.ip());
    let start = Instant::now();
    let out = t
        .client
        .support(&["tcp-client", "--banner", &addr, "QUIT\r\n"])
        .expect("run tcp-client")
        .check("tcp-client")
        .expect("a server-first session through both sidecars");
    eprintln!(
        "greeting and echo through two sidecars in {:?}",
        start.elapsed()
    );
    let mut lines = out.stdout.splitn(2, '\n');
    let greeting = lines.next().unwrap_or_default();
    assert!(
        greeting.starts_with(&format!("220 hello local={addr} peer={}:", t.server.ip())),
        "greeting: {greeting:?}"
    );
    assert_eq!(lines.next(), Some("QUIT\r\n"));
    assert_eq!(
        Traced::detections(&t.client_sidecar, "outbound", "server_first"),
        1.0
    );
    assert_eq!(
        Traced::detections(&t.server_sidecar, "inbound", "server_first"),
        1.0
    );
}

#[test]
#[ignore = "needs root: network namespaces and iptables"]
fn garbage_from_the_client_is_proxied_as_opaque() {
    if !root_or_skip() {
        return;
    }
    let t = traced(&["tcp-echo", "--listen", "0.0.0.0:7001"]);
    let addr = format!("{}:7001", t.server.ip());
    let garbage = "\u{7f}\u{1}\u{2}GET / not-http\r\n\u{3}binary";
    let out = t
        .client
        .support(&["tcp-client", &addr, garbage])
        .expect("run tcp-client")
        .check("tcp-client")
        .expect("opaque TCP through both sidecars");
    assert_eq!(out.stdout, garbage);
    assert_eq!(
        Traced::detections(&t.client_sidecar, "outbound", "opaque"),
        1.0
    );
    assert_eq!(
        Traced::detections(&t.server_sidecar, "inbound", "opaque"),
        1.0
    );
    assert!(t.spans().is_empty(), "opaque TCP has no spans");
}

/// Runs the `tm-support load` client in the client pod and returns its per-request lines.
fn load(t: &Traced, args: &[&str]) -> Vec<(String, String, String)> {
    let support = binaries::support().expect("tm-support");
    let support = support.to_string_lossy();
    let url = format!("http://{}:8080/load", t.server.ip());
    let mut full = vec![support.as_ref(), "load", url.as_str()];
    full.extend_from_slice(args);
    let mut proc = t.client.spawn("load", &full).expect("load client");
    // The client bounds itself (tm-support's load deadline); this only waits for its end.
    let limit = Duration::from_secs(300);
    let start = Instant::now();
    while proc.is_running() && start.elapsed() < limit {
        std::thread::sleep(Duration::from_millis(100));
    }
    let stdout = proc.stdout();
    assert!(
        stdout.lines().any(|l| l.starts_with("done ")),
        "load client failed: {}",
        proc.stderr()
    );
    stdout
        .lines()
        .filter(|l| !l.starts_with("done "))
        .map(|l| {
            let mut f = l.split(' ').map(str::to_owned);
            let mut next = || f.next().unwrap_or_default();
            (next(), next(), next())
        })
        .collect()
}

#[test]
#[ignore = "needs root: network namespaces and iptables"]
fn keep_alive_load_through_two_sidecars_leaves_both_spans_for_every_request() {
    if !root_or_skip() {
        return;
    }
    let t = traced(&["http-echo", "--listen", "0.0.0.0:8080"]);
    // Sequential keep-alive requests, then concurrent ones in rounds separated by quiet longer
    // than the detection timeout, then a wider burst. Connections the client sidecar's pool
    // opened but parked unused (hyper's pool finishes a connect even when an idle connection
    // won the race) sit silent past the detection timeout before their first request; the
    // wider burst reaches the ones buried under busier connections.
    let quiet = ["--pause-ms", "1500"];
    let mut seen = load(&t, &["--requests", "300", "--concurrency", "1"]);
    let concurrent = ["--requests", "2000", "--concurrency", "8", "--rounds", "4"];
    seen.extend(load(&t, &[&concurrent[..], &quiet[..]].concat()));
    std::thread::sleep(Duration::from_millis(1500));
    seen.extend(load(&t, &["--requests", "400", "--concurrency", "32"]));
    // A pool warmed up ahead of its first requests: every connection is silent past the
    // detection timeout at the client sidecar, whose server-first check is silent in turn at
    // the server sidecar.
    let warm = [
        "--requests",
        "400",
        "--concurrency",
        "8",
        "--preconnect-ms",
        "1500",
    ];
    seen.extend(load(&t, &warm));
    assert_eq!(seen.len(), 3100);
    let spans = t.wait_spans(2 * seen.len());
    assert_eq!(spans.len(), 2 * seen.len(), "one span per request and side");
    let by_id: HashMap<&str, &Span> = spans.iter().map(|s| (s.id.as_str(), s)).collect();
    assert_eq!(by_id.len(), spans.len(), "distinct span ids");
    for (i, (trace, span, parent)) in seen.iter().enumerate() {
        assert!(
            trace != "-" && span != "-" && parent != "-",
            "request {i}: the app saw no sidecar context"
        );
        assert_both_spans(&by_id, (trace, span, parent));
    }
    let inbound_http1 = Traced::detections(&t.server_sidecar, "inbound", "http1");
    let inbound_opaque = ["opaque", "timed_out", "server_first"]
        .iter()
        .map(|o| Traced::detections(&t.server_sidecar, "inbound", o))
        .sum::<f64>();
    assert!(inbound_http1 >= 1.0);
    assert_eq!(inbound_opaque, 0.0, "no inbound connection went opaque");
}
