//! The config server end to end, on loopback (no root): `mesh-injector --backend local` serves
//! the MeshConfig of a state directory over https, a sidecar long-polls it, and the real `mesh`
//! binary patches the document. Changes must reach the sidecar; invalid ones must not.

use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use tracemesh_collector::{Collector, CollectorConfig, RunningCollector};
use tracemesh_tests::binaries;
use tracemesh_tests::loopback::{free_ports, Spawned};

/// Upper bound for every wait in this file.
const BOUND: Duration = Duration::from_secs(10);

const INITIAL: &str = "apiVersion: config.tracemesh.dev/v1alpha1\nkind: MeshConfig\n\
    metadata: {name: mesh-config, namespace: mesh-system}\nspec:\n  sidecar:\n    logLevel: info\n";

/// One plain HTTP GET on loopback; the body, or None on any failure.
fn http_get(port: u16, path: &str) -> Option<String> {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut raw = String::new();
    stream.read_to_string(&mut raw).ok()?;
    let (head, body) = raw.split_once("\r\n\r\n")?;
    head.starts_with("HTTP/1.1 200").then(|| body.to_string())
}

/// The sidecar's `/config` as JSON.
fn sidecar_config(admin_port: u16) -> serde_json::Value {
    let body = http_get(admin_port, "/config").expect("GET /config");
    serde_json::from_str(&body).expect("/config is JSON")
}

fn generation(config: &serde_json::Value) -> u64 {
    config["generation"].as_u64().expect("generation")
}

fn log_level(config: &serde_json::Value) -> String {
    config
        .pointer("/config/spec/sidecar/logLevel")
        .and_then(|v| v.as_str())
        .unwrap_or_default()
        .to_string()
}

/// Polls `/config` until `done` holds; the snapshot and the time it took.
fn wait_config(
    admin_port: u16,
    done: impl Fn(&serde_json::Value) -> bool,
) -> (serde_json::Value, Duration) {
    wait_config_within(BOUND, admin_port, done)
}

/// [`wait_config`] with its own bound.
fn wait_config_within(
    bound: Duration,
    admin_port: u16,
    done: impl Fn(&serde_json::Value) -> bool,
) -> (serde_json::Value, Duration) {
    let start = Instant::now();
    loop {
        let config = sidecar_config(admin_port);
        if done(&config) {
            return (config, start.elapsed());
        }
        assert!(
            start.elapsed() < bound,
            "sidecar config never changed: {config}"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// A config server over https on a state directory, and the CA that trusts it.
struct ConfigServer {
    injector: Option<Spawned>,
    dir: PathBuf,
    port: u16,
    /// Plain HTTP `/metrics` of the injector.
    metrics_port: u16,
    url: String,
    ca: PathBuf,
    state: PathBuf,
}

impl ConfigServer {
    /// The injector's counter `name` (a `mesh_injector_...` sample without labels).
    fn metric(&self, name: &str) -> Option<f64> {
        http_get(self.metrics_port, "/metrics")?
            .lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
    }

    /// Kills the injector and waits until its port refuses connections.
    fn kill(&mut self) {
        drop(self.injector.take());
        let addr = SocketAddr::from(([127, 0, 0, 1], self.port));
        let start = Instant::now();
        while TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
            assert!(start.elapsed() < BOUND, "the killed injector still accepts");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Starts the injector again on the same ports (the sidecar knows only its URL).
    fn restart(&mut self) {
        let injector = start_injector(
            &self.dir,
            &self.state,
            self.port,
            self.metrics_port,
            "again",
        )
        .expect("the injector's port was taken while it was down");
        self.injector = Some(injector);
    }
}

/// Starts `mesh-injector --backend local` on `port`; None if it exited before listening (a
/// parallel test took the port).
fn start_injector(
    dir: &Path,
    state: &Path,
    port: u16,
    metrics_port: u16,
    name: &str,
) -> Option<Spawned> {
    let injector_bin = binaries::path("mesh-injector").expect("mesh-injector binary");
    let mut cmd = Command::new(&injector_bin);
    cmd.args(["--backend", "local", "--state-dir"])
        .arg(state)
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .args(["--metrics-listen", &format!("127.0.0.1:{metrics_port}")])
        .arg("--tls-cert")
        .arg(dir.join("tls.crt"))
        .arg("--tls-key")
        .arg(dir.join("tls.key"))
        .env("RUST_LOG", "info");
    let mut injector = Spawned::start(&format!("injector-{name}"), cmd, dir);
    (injector.wait_listening(SocketAddr::from(([127, 0, 0, 1], port)))
        && injector.wait_listening(SocketAddr::from(([127, 0, 0, 1], metrics_port))))
    .then_some(injector)
}

fn config_server(dir: &Path) -> ConfigServer {
    let ca_key = rcgen::KeyPair::generate().expect("ca key");
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("ca params");
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca_cert = ca_params.self_signed(&ca_key).expect("ca cert");
    let issuer = rcgen::Issuer::new(ca_params, ca_key);
    let key = rcgen::KeyPair::generate().expect("key");
    let params = rcgen::CertificateParams::new(vec!["localhost".into(), "127.0.0.1".into()])
        .expect("params");
    let cert = params.signed_by(&key, &issuer).expect("cert");
    let ca = dir.join("ca.pem");
    std::fs::write(&ca, ca_cert.pem()).expect("ca.pem");
    std::fs::write(dir.join("tls.crt"), cert.pem()).expect("tls.crt");
    std::fs::write(dir.join("tls.key"), key.serialize_pem()).expect("tls.key");

    let state = dir.join("state");
    std::fs::create_dir_all(&state).expect("state dir");
    std::fs::write(state.join("mesh-config.yaml"), INITIAL).expect("initial config");

    for attempt in 0..5 {
        let [port, metrics_port] = free_ports(2)[..] else {
            unreachable!("two ports")
        };
        if let Some(injector) =
            start_injector(dir, &state, port, metrics_port, &attempt.to_string())
        {
            return ConfigServer {
                injector: Some(injector),
                dir: dir.to_path_buf(),
                port,
                metrics_port,
                url: format!("https://127.0.0.1:{port}/v1/meshconfig"),
                ca,
                state,
            };
        }
    }
    panic!("mesh-injector could not start on a free port in 5 attempts");
}

/// A sidecar watching the config server, with an `--inbound` route to `app_port` if given.
/// Returns the process, its admin port and its inbound route's listener port.
fn sidecar(dir: &Path, server: &ConfigServer, app_port: Option<u16>) -> (Spawned, u16, u16) {
    let proxy = binaries::mesh_proxy().expect("mesh-proxy binary");
    for attempt in 0..5 {
        let [inbound, outbound, admin, entry] = free_ports(4)[..] else {
            unreachable!("four ports")
        };
        let mut cmd = Command::new(&proxy);
        cmd.args(["run", "--mesh-config", &server.url])
            .args(["--service", "web", "--namespace", "demo"])
            .args(["--pod-ip", "127.0.0.1", "--bind", "127.0.0.1"])
            .args(["--inbound-port", &inbound.to_string()])
            .args(["--outbound-port", &outbound.to_string()])
            .args(["--admin-port", &admin.to_string()])
            .env("MESH_CONFIG_CA", &server.ca)
            .env("RUST_LOG", "info");
        if let Some(app) = app_port {
            cmd.args(["--inbound", &format!("127.0.0.1:{entry}=127.0.0.1:{app}")]);
        }
        let mut process = Spawned::start(&format!("sidecar-{attempt}"), cmd, dir);
        if process.wait_listening(SocketAddr::from(([127, 0, 0, 1], admin)))
            && (app_port.is_none()
                || process.wait_listening(SocketAddr::from(([127, 0, 0, 1], entry))))
        {
            return (process, admin, entry);
        }
    }
    panic!("sidecar could not start on free ports in 5 attempts");
}

/// Runs the real `mesh` CLI on the state directory.
fn mesh_patch(state: &Path, patch: &str) -> std::process::Output {
    Command::new(binaries::path("mesh").expect("mesh binary"))
        .args(["--backend", "local", "--state-dir"])
        .arg(state)
        .args(["config", "patch", "-p", patch])
        .output()
        .expect("run mesh")
}

#[test]
fn patches_reach_the_sidecar_and_invalid_documents_do_not() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = config_server(dir.path());
    let (_sidecar, admin, _) = sidecar(dir.path(), &server, None);

    let first = sidecar_config(admin);
    assert_eq!(log_level(&first), "info", "{first}");
    assert_eq!(
        first["source"].as_str(),
        Some(server.url.as_str()),
        "{first}"
    );
    let start_gen = generation(&first);

    let out = mesh_patch(
        &server.state,
        r#"{"spec":{"sidecar":{"logLevel":"debug"}}}"#,
    );
    assert!(out.status.success(), "mesh config patch: {out:?}");
    let (patched, took) = wait_config(admin, |c| log_level(c) == "debug");
    println!("patch reached the sidecar in {took:?}");
    assert!(generation(&patched) > start_gen, "{patched}");
    let good_gen = generation(&patched);

    let out = mesh_patch(&server.state, r#"{"spec":{"sidecar":{"logLevel":"loud"}}}"#);
    assert!(!out.status.success(), "an invalid patch was accepted");

    std::fs::write(
        server.state.join("mesh-config.yaml"),
        "apiVersion: config.tracemesh.dev/v1alpha1\nkind: MeshConfig\nspec:\n  sidecar:\n    logLevel: [1, 2]\n",
    )
    .expect("write invalid document");
    // The synchronisation point: the server has read the invalid document and refused it.
    let start = Instant::now();
    while server
        .metric("mesh_injector_config_rejected_total")
        .is_none_or(|n| n < 1.0)
    {
        assert!(
            start.elapsed() < BOUND,
            "the config server never refused the invalid document: {:?}",
            http_get(server.metrics_port, "/metrics")
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let kept = sidecar_config(admin);
    assert_eq!(generation(&kept), good_gen, "{kept}");
    assert_eq!(log_level(&kept), "debug", "{kept}");
    // The next valid change is the very next generation: nothing was applied in between, and
    // the sidecar's long poll survived the refusal.
    std::fs::write(
        server.state.join("mesh-config.yaml"),
        INITIAL.replace("logLevel: info", "logLevel: warn"),
    )
    .expect("write the next document");
    let (next, _) = wait_config(admin, |c| log_level(c) == "warn");
    assert_eq!(generation(&next), good_gen + 1, "{next}");
}

/// The config server dies mid-run: the sidecar keeps its last good config and says why it has
/// no newer one; a change made meanwhile reaches it once the server is back on its address.
#[test]
fn sidecar_keeps_its_config_while_the_server_is_down_and_reconnects() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut server = config_server(dir.path());
    let (_sidecar, admin, _) = sidecar(dir.path(), &server, None);
    let (first, _) = wait_config(admin, |c| log_level(c) == "info");
    let good_gen = generation(&first);

    server.kill();
    // The synchronisation point: the sidecar has tried the dead server and reports it.
    let (down, _) = wait_config(admin, |c| {
        c["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("config server"))
    });
    assert_eq!(generation(&down), good_gen, "{down}");
    assert_eq!(
        log_level(&down),
        "info",
        "the last good config stays: {down}"
    );
    assert!(
        http_get(admin, "/live").is_some(),
        "the sidecar stays alive"
    );

    // Changed while the server is down (the CLI writes the state directory directly).
    let out = mesh_patch(
        &server.state,
        r#"{"spec":{"sidecar":{"logLevel":"debug"}}}"#,
    );
    assert!(out.status.success(), "mesh config patch: {out:?}");
    server.restart();
    // Reconnecting waits out the sidecar's backoff (at most 5 s, jittered).
    let (back, took) =
        wait_config_within(Duration::from_secs(30), admin, |c| log_level(c) == "debug");
    println!("the sidecar had the new config {took:?} after the server came back");
    assert_eq!(generation(&back), good_gen + 1, "{back}");
    assert!(back["last_error"].is_null(), "the error clears: {back}");
}

/// A tiny HTTP app answering 200 to everything.
fn app(dir: &Path) -> (Spawned, u16) {
    const APP: &str = r#"
import http.server, sys
class H(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def do_GET(self):
        self.send_response(200)
        self.send_header("content-length", "2")
        self.end_headers()
        self.wfile.write(b"ok")
    def log_message(self, *a):
        pass
http.server.ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), H).serve_forever()
"#;
    let script = dir.join("app.py");
    std::fs::write(&script, APP).expect("app script");
    for attempt in 0..5 {
        let port = free_ports(1)[0];
        let mut cmd = Command::new("python3");
        cmd.arg(&script).arg(port.to_string());
        let mut process = Spawned::start(&format!("app-{attempt}"), cmd, dir);
        if process.wait_listening(SocketAddr::from(([127, 0, 0, 1], port))) {
            return (process, port);
        }
    }
    panic!("app could not start on a free port in 5 attempts");
}

async fn collector() -> RunningCollector {
    let any: SocketAddr = "127.0.0.1:0".parse().expect("addr");
    Collector::start(CollectorConfig {
        zipkin: Some(any),
        otlp_http: None,
        otlp_grpc: None,
        out: None,
    })
    .await
    .expect("collector")
}

fn tracing_patch(port: u16) -> String {
    serde_json::json!({"spec": {"observability": {"tracing": {
        "enable": true, "address": "127.0.0.1", "port": port,
        "endpoint": "/api/v2/spans", "protocol": "zipkin", "sampledFraction": 1.0
    }}}})
    .to_string()
}

/// Sends `n` requests through the sidecar; every one must succeed.
fn send(entry: u16, n: usize) {
    for i in 0..n {
        let body = http_get(entry, &format!("/r{i}"));
        assert_eq!(body.as_deref(), Some("ok"), "request {i} failed");
    }
}

/// Waits until `collector` holds at least `n` spans.
async fn wait_spans(collector: &RunningCollector, n: usize) -> usize {
    let start = Instant::now();
    loop {
        let have = collector.spans().len();
        if have >= n {
            return have;
        }
        assert!(
            start.elapsed() < BOUND,
            "collector got {have} spans, expected {n}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tracing_moves_between_collectors_through_the_config_server() {
    let first = collector().await;
    let second = collector().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let server = config_server(dir.path());
    let (_app, app_port) = app(dir.path());
    let (_sidecar, admin, entry) = sidecar(dir.path(), &server, Some(app_port));
    let zipkin = |c: &RunningCollector| c.zipkin.expect("zipkin").port();
    const REQUESTS: usize = 5;

    let before = generation(&sidecar_config(admin));
    let out = mesh_patch(&server.state, &tracing_patch(zipkin(&first)));
    assert!(out.status.success(), "mesh config patch: {out:?}");
    let (_, took) = wait_config(admin, |c| generation(c) > before);
    println!("tracing to collector 1 after {took:?}");
    send(entry, REQUESTS);
    wait_spans(&first, REQUESTS).await;

    let before = generation(&sidecar_config(admin));
    let out = mesh_patch(&server.state, &tracing_patch(zipkin(&second)));
    assert!(out.status.success(), "mesh config patch: {out:?}");
    let (_, took) = wait_config(admin, |c| generation(c) > before);
    println!("tracing to collector 2 after {took:?}");
    send(entry, REQUESTS);
    wait_spans(&second, REQUESTS).await;
}
