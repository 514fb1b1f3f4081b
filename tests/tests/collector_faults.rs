//! A collector that fails must cost the mesh nothing but spans: requests through two sidecars
//! all succeed while the collector is blackholed (an iptables DROP in its pod, so exports hang
//! and connections time out rather than being refused), the drops are counted in `/metrics` by
//! reason, `/config` shows the last error, and once the DROP is removed spans arrive again. The
//! same for a collector that answers 500 or 429, closes the connection mid-request, or answers
//! slowly (within the export timeout: nothing is dropped then).

use std::time::{Duration, Instant};

use tracemesh_collector::span::Span;
use tracemesh_tests::{binaries, root_or_skip, Net, Pod, Sidecar, SidecarOpts, WAIT};

/// A misbehaving Zipkin receiver: `MODE` is `500`, `429`, `close` (reads part of the request,
/// then closes) or `slow` (answers 202 after 3 s). Appends the `http.url` of each span it
/// accepted to `OUT`.
const FAULTY: &str = r#"
import gzip, http.server, json, socket, sys, time
PORT, MODE, OUT = int(sys.argv[1]), sys.argv[2], sys.argv[3]
class Faulty(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def do_POST(self):
        n = int(self.headers.get("content-length", "0"))
        if MODE == "close":
            self.rfile.read(min(n, 16))
            self.connection.shutdown(socket.SHUT_RDWR)
            self.close_connection = True
            return
        body = self.rfile.read(n)
        if MODE == "slow":
            time.sleep(3)
        status = {"500": 500, "429": 429}.get(MODE, 202)
        if status == 202:
            if self.headers.get("content-encoding", "") == "gzip":
                body = gzip.decompress(body)
            with open(OUT, "a") as f:
                for span in json.loads(body):
                    f.write(span["tags"]["http.url"] + "\n")
        text = b"" if status == 202 else b"collector says no"
        self.send_response(status)
        if status == 429:
            self.send_header("retry-after", "1")
        self.send_header("content-length", str(len(text)))
        self.end_headers()
        self.wfile.write(text)
    def log_message(self, *args):
        pass
server = http.server.ThreadingHTTPServer(("0.0.0.0", PORT), Faulty)
print("ready", flush=True)
server.serve_forever()
"#;

/// Long enough for a backoff that grew during the outage (at most 30 s) to run out.
const RECOVERY: Duration = Duration::from_secs(90);

fn tracing_config(collector: std::net::Ipv4Addr) -> String {
    format!(
        "apiVersion: config.tracemesh.dev/v1alpha1\nkind: MeshConfig\n\
         metadata: {{name: mesh-config, namespace: mesh-system}}\n\
         spec:\n  observability:\n    tracing:\n      enable: true\n      address: {collector}\n      \
         port: 9411\n      endpoint: /api/v2/spans\n      protocol: zipkin\n"
    )
}

/// Spans `mesh collector --out` wrote so far (one Zipkin v2 JSON span per line).
fn received(path: &std::path::Path) -> Vec<Span> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).expect("one Zipkin v2 span per line"))
        .collect()
}

/// Whether spans of both sidecars (a CLIENT and a SERVER span) for `marker` arrived.
fn both_sides(spans: &[Span], marker: &str) -> bool {
    let kinds: Vec<&str> = spans
        .iter()
        .filter(|s| s.tag("http.url").is_some_and(|u| u.contains(marker)))
        .filter_map(|s| s.kind.map(|k| k.as_str()))
        .collect();
    kinds.contains(&"CLIENT") && kinds.contains(&"SERVER")
}

fn get(client: &Pod, server: &Pod, path: &str) {
    client
        .exec(&[
            "curl",
            "-sS",
            "--max-time",
            "20",
            &format!("http://{}:8080{path}", server.ip()),
        ])
        .expect("curl")
        .check("request through both sidecars")
        .expect("the request succeeds whatever the collector does");
}

fn dropped(sidecar: &Sidecar, reasons: &[&str]) -> f64 {
    let text = sidecar.metrics().expect("metrics");
    reasons
        .iter()
        .map(|r| {
            Sidecar::metric_sum(
                &text,
                "trace_spans_dropped_total",
                &[&format!("reason=\"{r}\"")],
            )
        })
        .sum()
}

#[test]
#[ignore = "needs root: network namespaces and iptables"]
fn blackholed_collector_costs_no_request_and_export_resumes_when_it_returns() {
    if !root_or_skip() {
        return;
    }
    let net = Net::new().expect("net");
    let collector_pod = Pod::new(&net, "collector").expect("collector pod");
    let out = net.dir().join("spans.jsonl");
    let mesh_bin =
        binaries::path("mesh").expect("the mesh binary (cargo build --workspace --bins)");
    let mut collector = collector_pod
        .spawn(
            "collector",
            &[
                &mesh_bin.to_string_lossy(),
                "collector",
                "--zipkin",
                "0.0.0.0:9411",
                "--out",
                &out.to_string_lossy(),
            ],
        )
        .expect("mesh collector");
    collector
        .wait_until(WAIT, |p| p.stderr().contains("listening"))
        .expect("collector listening");

    let Pair {
        client,
        server,
        client_sidecar,
        server_sidecar,
        _app,
    } = pair(&net, collector_pod.ip());
    let sidecars = [&client_sidecar, &server_sidecar];

    // Healthy: the CLIENT and SERVER spans of a request arrive.
    get(&client, &server, "/before");
    let deadline = Instant::now() + WAIT;
    while !both_sides(&received(&out), "/before") {
        assert!(Instant::now() < deadline, "spans before the outage");
        std::thread::sleep(Duration::from_millis(100));
    }

    // Blackholed: packets to the collector vanish (pooled connections hang, new ones time out).
    let drop_rule = ["INPUT", "-p", "tcp", "--dport", "9411", "-j", "DROP"];
    let iptables = |op: &str| {
        let mut args = vec!["iptables", op];
        args.extend(drop_rule);
        collector_pod
            .exec(&args)
            .expect("iptables")
            .check("iptables")
            .expect("DROP rule");
    };
    iptables("-A");
    let mut sent = 0;
    let deadline = Instant::now() + WAIT * 2;
    // Requests keep flowing until both sidecars have counted spans they could not deliver.
    while sidecars
        .iter()
        .any(|s| dropped(s, &["timeout", "unreachable"]) == 0.0)
    {
        assert!(
            Instant::now() < deadline,
            "drops never counted: {}",
            client_sidecar.metrics().unwrap_or_default()
        );
        get(&client, &server, "/during");
        sent += 1;
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(sent > 0);
    assert!(
        !received(&out)
            .iter()
            .any(|s| s.tag("http.url").is_some_and(|u| u.contains("/during"))),
        "nothing got through"
    );
    for sidecar in sidecars {
        let config: serde_json::Value =
            serde_json::from_str(&sidecar.admin("/config").expect("/config")).expect("JSON");
        let last = &config["tracing"]["export"]["last_error"];
        assert!(
            ["timeout", "unreachable"].contains(&last["kind"].as_str().unwrap_or_default()),
            "{config}"
        );
        assert!(
            sidecar.proc.stderr().contains("span export failed"),
            "warn logged"
        );
    }
    let requests = Sidecar::metric_sum(
        &server_sidecar.metrics().expect("metrics"),
        "responses_total",
        &["direction=\"inbound\"", "status_class=\"2xx\""],
    );
    assert!(requests >= (sent + 1) as f64, "{requests} of {}", sent + 1);

    // Back: the next attempt after the backoff delivers new spans.
    iptables("-D");
    let deadline = Instant::now() + RECOVERY;
    while !both_sides(&received(&out), "/after") {
        assert!(Instant::now() < deadline, "spans after the outage");
        get(&client, &server, "/after");
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// Two meshed pods (client, server with an echo app) on `net`, their sidecars exporting to
/// `collector`.
struct Pair {
    client: Pod,
    server: Pod,
    client_sidecar: Sidecar,
    server_sidecar: Sidecar,
    _app: tracemesh_tests::Proc,
}

fn pair(net: &Net, collector: std::net::Ipv4Addr) -> Pair {
    let opts = SidecarOpts {
        mesh_config: Some(tracing_config(collector)),
        ..Default::default()
    };
    let client = Pod::new(net, "client").expect("client pod");
    let server = Pod::new(net, "server").expect("server pod");
    client.init(&[]).expect("init client");
    server.init(&[]).expect("init server");
    let server_sidecar = server.start_sidecar(opts.clone()).expect("server sidecar");
    let client_sidecar = client.start_sidecar(opts).expect("client sidecar");
    let app = server
        .spawn_server(&["http-echo", "--listen", "0.0.0.0:8080"])
        .expect("app");
    Pair {
        client,
        server,
        client_sidecar,
        server_sidecar,
        _app: app,
    }
}

/// Requests through two sidecars whose collector misbehaves as `mode` says: every request
/// succeeds, and the spans are dropped for `reason` (or, for a collector that is only slow,
/// all arrive).
fn faulty_collector_case(mode: &str, reason: Option<&str>) {
    let net = Net::new().expect("net");
    let script = net.dir().join("faulty.py");
    std::fs::write(&script, FAULTY).expect("script");
    let urls = net.dir().join("urls.txt");
    let collector_pod = Pod::new(&net, "collector").expect("collector pod");
    let mut collector = collector_pod
        .spawn(
            "faulty",
            &[
                "python3",
                &script.to_string_lossy(),
                "9411",
                mode,
                &urls.to_string_lossy(),
            ],
        )
        .expect("faulty collector");
    collector
        .wait_for_stdout("ready", WAIT)
        .expect("collector ready");
    let p = pair(&net, collector_pod.ip());
    const REQUESTS: usize = 10;
    for i in 0..REQUESTS {
        get(&p.client, &p.server, &format!("/{mode}/{i}"));
    }
    let deadline = Instant::now() + WAIT * 2;
    for sidecar in [&p.client_sidecar, &p.server_sidecar] {
        loop {
            let text = sidecar.metrics().expect("metrics");
            let done = match reason {
                Some(r) => {
                    Sidecar::metric_sum(
                        &text,
                        "trace_spans_dropped_total",
                        &[&format!("reason=\"{r}\"")],
                    ) > 0.0
                }
                None => {
                    Sidecar::metric_sum(&text, "trace_spans_exported_total", &[]) >= REQUESTS as f64
                }
            };
            if done {
                break;
            }
            assert!(Instant::now() < deadline, "{mode}: {text}");
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    let text = p.client_sidecar.metrics().expect("metrics");
    let dropped = Sidecar::metric_sum(&text, "trace_spans_dropped_total", &[]);
    let accepted = std::fs::read_to_string(&urls).unwrap_or_default();
    match reason {
        Some(_) => {
            assert!(accepted.is_empty(), "{mode}: {accepted}");
            let config: serde_json::Value =
                serde_json::from_str(&p.client_sidecar.admin("/config").expect("/config"))
                    .expect("JSON");
            let last = config["tracing"]["export"]["last_error"]["message"]
                .as_str()
                .unwrap_or_default()
                .to_owned();
            if mode != "close" {
                assert!(last.contains("collector says no"), "{mode}: {config}");
            }
        }
        None => {
            assert_eq!(dropped, 0.0, "{mode}: {text}");
            assert_eq!(accepted.lines().count(), 2 * REQUESTS, "{mode}: {accepted}");
        }
    }
}

#[test]
#[ignore = "needs root: network namespaces and iptables"]
fn collector_answering_500_429_closing_or_slow_costs_no_request() {
    if !root_or_skip() {
        return;
    }
    faulty_collector_case("500", Some("rejected"));
    faulty_collector_case("429", Some("rejected"));
    faulty_collector_case("close", Some("closed"));
    faulty_collector_case("slow", None);
}
