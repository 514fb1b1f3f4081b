//! Timeouts of `spec.sidecar` between real pods: a peer that vanishes behind an iptables DROP
//! (no FIN, no RST, as when its node dies) is detected by HTTP/2 PINGs instead of holding
//! every request to it until the kernel gives up, ~15 minutes later.

use tracemesh_tests::{root_or_skip, Mesh, SidecarOpts};

/// Short keepalive, so the test sees the detection well within curl's own limit.
const CONFIG: &str =
    "spec:\n  sidecar:\n    http2KeepaliveInterval: 500ms\n    http2KeepaliveTimeout: 500ms\n";

/// curl's whole-request limit: far above the keepalive's 1 s, far below the kernel's timeout.
const CURL_MAX: &str = "20";

/// The status code of one h2c GET from the client pod, `000` when curl got none.
fn h2_status(mesh: &Mesh, url: &str) -> String {
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
            CURL_MAX,
            "--http2-prior-knowledge",
            url,
        ])
        .expect("run curl");
    out.stdout.trim().to_owned()
}

#[test]
#[ignore = "needs root: network namespaces and iptables"]
fn blackholed_http2_upstream_fails_cleanly_and_the_next_request_reconnects() {
    if !root_or_skip() {
        return;
    }
    let opts = SidecarOpts {
        mesh_config: Some(CONFIG.into()),
        ..SidecarOpts::default()
    };
    let mesh = Mesh::new(opts).expect("meshed client and server pods");
    let _app = mesh
        .server
        .spawn_server(&["http-echo", "--listen", "0.0.0.0:8080"])
        .expect("app");
    let url = format!("http://{}:8080/h2", mesh.server.ip());
    // The client sidecar now holds a pooled HTTP/2 connection to the server pod.
    assert_eq!(h2_status(&mesh, &url), "200");

    // The server pod vanishes: every packet to it is dropped, nothing is answered.
    let drop_rule = ["-p", "tcp", "-j", "DROP"];
    let mut add = vec!["iptables", "-I", "INPUT"];
    add.extend_from_slice(&drop_rule);
    mesh.server
        .exec(&add)
        .expect("iptables")
        .check("add DROP")
        .expect("DROP rule");
    // The request on the dead connection ends with a gateway error from the sidecar, not a
    // hang until curl's limit (which would print 000).
    let status = h2_status(&mesh, &url);
    assert!(
        status == "502" || status == "503" || status == "504",
        "expected a gateway error, got {status:?}"
    );

    // The pod is back: the next request gets a fresh connection and succeeds.
    let mut del = vec!["iptables", "-D", "INPUT"];
    del.extend_from_slice(&drop_rule);
    mesh.server
        .exec(&del)
        .expect("iptables")
        .check("remove DROP")
        .expect("DROP rule removed");
    assert_eq!(h2_status(&mesh, &url), "200");
}
