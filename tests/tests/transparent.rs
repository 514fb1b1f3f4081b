//! Transparent interception for real: a client pod (app + sidecar) talks to a server pod
//! (sidecar + app) through `mesh-proxy init` rules, for each protocol the sidecar handles.
//!
//! The server app reports the addresses it saw: `local` must be the original destination (the
//! pod IP and port the client dialled) and `peer` the server pod's own IP, which is only the case
//! when the inbound sidecar made the last hop. The client side is intercepted because nothing but
//! the sidecar answers on 15001 (the init tests show a redirected connection is refused otherwise).

use std::net::Ipv4Addr;

use tracemesh_tests::{root_or_skip, Mesh, Output, Sidecar, SidecarOpts};

fn mesh() -> Mesh {
    Mesh::new(SidecarOpts::default()).expect("meshed client and server pods")
}

/// The value of a response header in `curl -D -` output (case-insensitive name).
fn header(out: &str, name: &str) -> Option<String> {
    out.lines().find_map(|l| {
        let (n, v) = l.split_once(':')?;
        n.trim()
            .eq_ignore_ascii_case(name)
            .then(|| v.trim().to_string())
    })
}

fn ip_of(addr: &str) -> Option<Ipv4Addr> {
    addr.rsplit_once(':')?.0.parse().ok()
}

fn curl(mesh: &Mesh, args: &[&str]) -> Output {
    let mut full = vec!["curl", "-sS", "--max-time", "20"];
    full.extend_from_slice(args);
    mesh.client
        .exec(&full)
        .expect("run curl")
        .check("curl")
        .expect("curl through both sidecars")
}

#[test]
#[ignore = "needs root: network namespaces and iptables"]
fn http1_get_crosses_both_sidecars_to_the_original_destination() {
    if !root_or_skip() {
        return;
    }
    let mesh = mesh();
    let _app = mesh
        .server
        .spawn_server(&["http-echo", "--listen", "0.0.0.0:8080"])
        .expect("app");
    let url = format!("http://{}:8080/hello?x=1", mesh.server.ip());
    let out = curl(&mesh, &["-D", "/dev/stderr", "-H", "x-test: kept", &url]);
    let info: serde_json::Value = serde_json::from_str(&out.stdout).expect("echo JSON");
    assert_eq!(info["path"], "/hello?x=1");
    assert_eq!(info["method"], "GET");
    assert_eq!(info["headers"]["x-test"], "kept");
    assert_eq!(
        info["local"],
        format!("{}:8080", mesh.server.ip()),
        "app did not see the original destination"
    );
    let peer = info["peer"].as_str().and_then(ip_of);
    assert_eq!(
        peer,
        Some(mesh.server.ip()),
        "inbound sidecar not in the path"
    );
    assert!(out.stderr.contains("HTTP/1.1 200"), "{}", out.stderr);

    // Keep-alive: several requests on one client connection all work.
    let out = curl(
        &mesh,
        &[
            "-w",
            "%{http_code}\n",
            "-o",
            "/dev/null",
            &url,
            "-o",
            "/dev/null",
            &url,
            "-o",
            "/dev/null",
            &url,
        ],
    );
    assert_eq!(
        out.stdout.lines().collect::<Vec<_>>(),
        ["200", "200", "200"]
    );

    // Each sidecar counted the four requests in its own direction.
    let server = mesh.server_sidecar.metrics().expect("server metrics");
    let client = mesh.client_sidecar.metrics().expect("client metrics");
    let inbound = ["direction=\"inbound\""];
    let outbound = ["direction=\"outbound\""];
    assert!(
        Sidecar::metric_sum(&server, "requests_total", &inbound) >= 4.0,
        "{server}"
    );
    assert!(
        Sidecar::metric_sum(&client, "requests_total", &outbound) >= 4.0,
        "{client}"
    );
}

#[test]
#[ignore = "needs root: network namespaces and iptables"]
fn http1_streamed_post_body_is_echoed_whole() {
    if !root_or_skip() {
        return;
    }
    let mesh = mesh();
    let _app = mesh
        .server
        .spawn_server(&["http-echo", "--listen", "0.0.0.0:8080"])
        .expect("app");
    // 3 MiB of varied bytes, sent chunked so nothing knows the length up front.
    let body: Vec<u8> = (0..3 * 1024 * 1024u32)
        .map(|i| (i % 251) as u8 ^ (i >> 13) as u8)
        .collect();
    let input = mesh.net.dir().join("body.in");
    let output = mesh.net.dir().join("body.out");
    std::fs::write(&input, &body).expect("write body");
    let url = format!("http://{}:8080/upload", mesh.server.ip());
    let data = format!("@{}", input.display());
    let out = curl(
        &mesh,
        &[
            "-D",
            "-",
            "-o",
            &output.to_string_lossy(),
            "-H",
            "Transfer-Encoding: chunked",
            "-H",
            "Content-Type: application/octet-stream",
            "--data-binary",
            &data,
            &url,
        ],
    );
    let echoed = std::fs::read(&output).expect("read echoed body");
    assert_eq!(echoed.len(), body.len(), "headers:\n{}", out.stdout);
    assert!(echoed == body, "echoed body differs");
    let peer = header(&out.stdout, "x-echo-peer");
    assert_eq!(peer.as_deref().and_then(ip_of), Some(mesh.server.ip()));
}

#[test]
#[ignore = "needs root: network namespaces and iptables"]
fn h2c_prior_knowledge_crosses_both_sidecars() {
    if !root_or_skip() {
        return;
    }
    let mesh = mesh();
    let _app = mesh
        .server
        .spawn_server(&["http-echo", "--listen", "0.0.0.0:8080"])
        .expect("app");
    let url = format!("http://{}:8080/h2", mesh.server.ip());
    let out = curl(
        &mesh,
        &["--http2-prior-knowledge", "-D", "/dev/stderr", &url],
    );
    assert!(
        out.stderr.contains("HTTP/2 200"),
        "not HTTP/2 to the client: {}",
        out.stderr
    );
    let info: serde_json::Value = serde_json::from_str(&out.stdout).expect("echo JSON");
    assert_eq!(info["path"], "/h2");
    assert_eq!(info["local"], format!("{}:8080", mesh.server.ip()));
    assert_eq!(
        info["peer"].as_str().and_then(ip_of),
        Some(mesh.server.ip())
    );

    let out = curl(
        &mesh,
        &["--http2-prior-knowledge", "--data-binary", "h2 body", &url],
    );
    assert_eq!(out.stdout, "h2 body");
}

#[test]
#[ignore = "needs root: network namespaces and iptables"]
fn opaque_port_server_speaks_first() {
    if !root_or_skip() {
        return;
    }
    let mesh = mesh();
    // 6379 is in the default opaquePorts: the server's banner must come through before the client
    // has sent anything, so no sidecar may wait for client bytes to detect a protocol.
    let _redis = mesh
        .server
        .spawn_server(&["tcp-echo", "--listen", "0.0.0.0:6379", "--banner", "+OK"])
        .expect("server");
    let addr = format!("{}:6379", mesh.server.ip());
    let out = mesh
        .client
        .support(&["tcp-client", "--banner", &addr, "PING\r\n"])
        .expect("run client")
        .check("tcp-client")
        .expect("opaque TCP through both sidecars");
    let mut lines = out.stdout.splitn(2, '\n');
    let banner = lines.next().unwrap_or_default();
    assert!(
        banner.starts_with(&format!("+OK local={addr} peer={}:", mesh.server.ip())),
        "banner: {banner:?}"
    );
    assert_eq!(lines.next(), Some("PING\r\n"));
}

#[test]
#[ignore = "needs root: network namespaces and iptables"]
fn opaque_tcp_on_a_detected_port_falls_back_to_tcp() {
    if !root_or_skip() {
        return;
    }
    let mesh = mesh();
    let _echo = mesh
        .server
        .spawn_server(&["tcp-echo", "--listen", "0.0.0.0:7000"])
        .expect("server");
    let addr = format!("{}:7000", mesh.server.ip());
    let message = "\u{1}\u{2}not http at all\nsecond line\n";
    let out = mesh
        .client
        .support(&["tcp-client", &addr, message])
        .expect("run client")
        .check("tcp-client")
        .expect("TCP through both sidecars");
    assert_eq!(out.stdout, message);
}

#[test]
#[ignore = "needs root: network namespaces and iptables"]
fn websocket_echo_crosses_both_sidecars() {
    if !root_or_skip() {
        return;
    }
    let mesh = mesh();
    let _ws = mesh
        .server
        .spawn_server(&["ws-echo", "--listen", "0.0.0.0:8081"])
        .expect("server");
    let url = format!("ws://{}:8081/chat", mesh.server.ip());
    let out = mesh
        .client
        .support(&["ws-client", &url, "hello over websocket"])
        .expect("run client")
        .check("ws-client")
        .expect("WebSocket through both sidecars");
    assert_eq!(out.stdout.trim_end(), "hello over websocket");
}

#[test]
#[ignore = "needs root: network namespaces and iptables"]
fn http1_over_ipv6_crosses_both_sidecars() {
    if !root_or_skip() {
        return;
    }
    let mesh = mesh();
    let _app = mesh
        .server
        .spawn_server(&["http-echo", "--listen", "[::]:8080"])
        .expect("app");
    let url = format!("http://[{}]:8080/v6", mesh.server.ip6());
    let out = curl(&mesh, &["-g", &url]);
    let info: serde_json::Value = serde_json::from_str(&out.stdout).expect("echo JSON");
    assert_eq!(info["path"], "/v6");
    assert_eq!(info["local"], format!("[{}]:8080", mesh.server.ip6()));
    let peer = info["peer"]
        .as_str()
        .and_then(|p| p.rsplit_once(':'))
        .map(|(ip, _)| ip);
    assert_eq!(
        peer,
        Some(format!("[{}]", mesh.server.ip6()).as_str()),
        "inbound sidecar not in the path"
    );
}

#[test]
#[ignore = "needs root: network namespaces and iptables"]
fn app_calling_its_own_pod_ip_passes_its_inbound_sidecar_once() {
    if !root_or_skip() {
        return;
    }
    let mesh = mesh();
    let _app = mesh
        .server
        .spawn_server(&["http-echo", "--listen", "0.0.0.0:8080"])
        .expect("app");
    let url = format!("http://{}:8080/self", mesh.server.ip());
    let out = mesh
        .server
        .exec(&["curl", "-sS", "--max-time", "20", &url])
        .expect("run curl")
        .check("curl to own pod IP")
        .expect("app -> own pod IP");
    let info: serde_json::Value = serde_json::from_str(&out.stdout).expect("echo JSON");
    assert_eq!(info["path"], "/self");
    assert_eq!(info["local"], format!("{}:8080", mesh.server.ip()));
    let metrics = mesh.server_sidecar.metrics().expect("metrics");
    let inbound = Sidecar::metric_sum(&metrics, "requests_total", &["direction=\"inbound\""]);
    let outbound = Sidecar::metric_sum(&metrics, "requests_total", &["direction=\"outbound\""]);
    // Exactly one inbound hop: the sidecar's own connection to the app was not redirected again.
    assert_eq!((inbound, outbound), (1.0, 0.0), "{metrics}");
}

/// Runs `tm-support stream-client` from the client pod to the server's echo on 8080.
fn stream(mesh: &Mesh, extra: &[&str]) -> String {
    let addr = format!("{}:8080", mesh.server.ip());
    let mut args = vec!["stream-client", addr.as_str(), "--chunks", "8"];
    args.extend_from_slice(extra);
    mesh.client
        .support(&args)
        .expect("run stream client")
        .check("stream-client")
        .expect("bodies streamed both ways through both sidecars")
        .stdout
}

#[test]
#[ignore = "needs root: network namespaces and iptables"]
fn http1_bodies_stream_both_ways_in_lockstep() {
    if !root_or_skip() {
        return;
    }
    let mesh = mesh();
    let _app = mesh
        .server
        .spawn_server(&["http-echo", "--listen", "0.0.0.0:8080"])
        .expect("app");
    // Each chunk is sent only once the previous one has come back: a hop that waits for the whole
    // request body before answering makes this hang until the client's deadline.
    let out = stream(&mesh, &[]);
    assert!(out.contains("8 chunks echoed in lockstep"), "{out}");
}

#[test]
#[ignore = "needs root: network namespaces and iptables"]
fn h2c_bodies_stream_in_lockstep_and_trailers_pass() {
    if !root_or_skip() {
        return;
    }
    let mesh = mesh();
    let _app = mesh
        .server
        .spawn_server(&["http-echo", "--listen", "0.0.0.0:8080"])
        .expect("app");
    // gRPC's shape: a streamed HTTP/2 body ending in trailers (the echo returns them).
    let out = stream(&mesh, &["--http2", "--trailer", "grpc-status: 0"]);
    assert!(out.contains("8 chunks echoed in lockstep"), "{out}");
    assert!(
        out.contains("trailer grpc-status: 0"),
        "trailers lost: {out}"
    );
}

#[test]
#[ignore = "needs root: network namespaces and iptables"]
fn refused_upstream_is_a_gateway_error_not_a_hang() {
    if !root_or_skip() {
        return;
    }
    let mesh = mesh();
    // Nothing listens on 8089 in the server pod.
    let url = format!("http://{}:8089/", mesh.server.ip());
    let out = mesh
        .client
        .exec(&[
            "curl",
            "-s",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "--max-time",
            "20",
            &url,
        ])
        .expect("run curl");
    assert!(
        matches!(out.stdout.as_str(), "502" | "503"),
        "status {:?}, curl exit {:?}",
        out.stdout,
        out.code
    );
}

#[test]
#[ignore = "needs root: network namespaces and iptables"]
fn sidecar_exits_zero_on_sigterm() {
    if !root_or_skip() {
        return;
    }
    let mut mesh = mesh();
    let status = mesh
        .server_sidecar
        .proc
        .terminate(std::time::Duration::from_secs(30))
        .expect("sidecar stops after SIGTERM");
    assert!(status.success(), "exit status {status}");
}
