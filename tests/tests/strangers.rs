//! A sidecar closed to strangers: a third pod that is not the meshed pod cannot use the
//! outbound listener as a forward proxy (absolute-form or CONNECT, with or without the pod's
//! iptables rules), cannot read `/config`, but reads `/live` and `/metrics` as the kubelet and
//! Prometheus do; the pod's own app uses its sidecar as before. And an IPv6-only pod pair passes
//! its probes over IPv6.

use tracemesh_tests::{root_or_skip, Net, Output, Pod, Sidecar, SidecarOpts};

/// curl from `pod`, printing only the status code (`000` when there was no HTTP answer).
fn status(pod: &Pod, args: &[&str]) -> Output {
    let mut full = vec![
        "curl",
        "-sS",
        "-o",
        "/dev/null",
        "-w",
        "%{http_code}",
        "--max-time",
        "10",
    ];
    full.extend_from_slice(args);
    pod.exec(&full).expect("run curl")
}

/// The value of `mesh_proxy_strangers_refused_total`.
fn refused(sidecar: &Sidecar) -> f64 {
    let text = sidecar.metrics().expect("metrics");
    Sidecar::metric_sum(&text, "strangers_refused_total", &[])
}

/// Asserts that `stranger`'s forward-proxy attempts through `proxy` (absolute-form, then
/// CONNECT) to the pod's loopback-only service get no HTTP answer at all, and that `sidecar`
/// counted each refusal (counted before the close, so it is there once curl returns).
fn assert_refused(stranger: &Pod, proxy: &str, sidecar: &Sidecar) {
    let before = refused(sidecar);
    let target = "http://127.0.0.1:9000/secret";
    let absolute = status(stranger, &["-x", proxy, target]);
    assert!(
        !absolute.ok(),
        "absolute-form through {proxy}: {absolute:?}"
    );
    assert_eq!(
        absolute.stdout, "000",
        "absolute-form answered: {absolute:?}"
    );
    let connect = status(stranger, &["-p", "-x", proxy, target]);
    assert!(!connect.ok(), "CONNECT through {proxy}: {connect:?}");
    assert_eq!(connect.stdout, "000", "CONNECT answered: {connect:?}");
    assert_eq!(refused(sidecar) - before, 2.0, "refusals not counted");
}

#[test]
#[ignore = "needs root: network namespaces and iptables"]
fn strangers_cannot_use_the_forward_proxy_or_read_config() {
    if !root_or_skip() {
        return;
    }
    let net = Net::new().expect("net");
    let meshed = Pod::new(&net, "meshed").expect("pod");
    let explicit = Pod::new(&net, "explicit").expect("pod");
    let stranger = Pod::new(&net, "stranger").expect("pod");
    meshed.init(&[]).expect("init");
    let meshed_sidecar = meshed
        .start_sidecar(SidecarOpts::default())
        .expect("sidecar");
    // Explicit mode: no iptables, the outbound listener is reachable on 0.0.0.0:15001.
    let explicit_sidecar = explicit
        .start_sidecar(SidecarOpts::default())
        .expect("sidecar");
    let mut apps = Vec::new();
    for pod in [&meshed, &explicit] {
        // A service bound to the pod's loopback only: what an open proxy would expose.
        apps.push(
            pod.spawn_server(&["http-echo", "--listen", "127.0.0.1:9000"])
                .expect("loopback app"),
        );
    }
    let _web = stranger
        .spawn_server(&["http-echo", "--listen", "0.0.0.0:8080"])
        .expect("web");

    // With the pod's rules, the stranger's connection to POD_IP:15001 is redirected to the
    // inbound listener, whose loop guard refuses it; without them the listener checks the peer.
    assert_refused(
        &stranger,
        &format!("http://{}:15001", meshed.ip()),
        &meshed_sidecar,
    );
    // The meshed sidecar was given only its IPv4 address: its IPv6 one is still itself.
    assert_refused(
        &stranger,
        &format!("http://[{}]:15001", meshed.ip6()),
        &meshed_sidecar,
    );
    assert_refused(
        &stranger,
        &format!("http://{}:15001", explicit.ip()),
        &explicit_sidecar,
    );
    assert_refused(
        &stranger,
        &format!("http://[{}]:15001", explicit.ip6()),
        &explicit_sidecar,
    );

    // Admin: probes and metrics for anyone, state for loopback only, on IPv4 and IPv6.
    for host in [meshed.ip().to_string(), format!("[{}]", meshed.ip6())] {
        let admin = |path: &str| status(&stranger, &["-g", &format!("http://{host}:15000{path}")]);
        assert_eq!(admin("/live").stdout, "200", "{host}");
        assert_eq!(admin("/ready").stdout, "200", "{host}");
        assert_eq!(admin("/metrics").stdout, "200", "{host}");
        assert_eq!(admin("/config").stdout, "403", "{host}");
    }
    let config = meshed_sidecar
        .admin("/config")
        .expect("/config from loopback");
    assert!(config.contains("\"generation\""), "{config}");

    // The pods' own apps still use their sidecars: loopback and the pod's own address, both
    // forms, transparent too.
    let web = format!("http://{}:8080/web", stranger.ip());
    for (pod, proxy) in [
        (&meshed, "http://127.0.0.1:15001".to_string()),
        (&meshed, format!("http://{}:15001", meshed.ip())),
        (&explicit, "http://127.0.0.1:15001".to_string()),
        (&explicit, format!("http://{}:15001", explicit.ip())),
    ] {
        assert_eq!(status(pod, &["-x", &proxy, &web]).stdout, "200", "{proxy}");
        assert_eq!(
            status(pod, &["-p", "-x", &proxy, &web]).stdout,
            "200",
            "CONNECT via {proxy}"
        );
    }
    assert_eq!(status(&meshed, &[&web]).stdout, "200", "transparent");
    // The sidecars never refused their own pods.
    assert_eq!(refused(&meshed_sidecar), 4.0);
    assert_eq!(refused(&explicit_sidecar), 4.0);

    // CONNECT answers only once the target is connected: a closed port is a 502 to curl,
    // never a 200 followed by EOF.
    let closed = format!("http://{}:9/", stranger.ip());
    let out = meshed
        .exec(&[
            "curl",
            "-sS",
            "-o",
            "/dev/null",
            "-w",
            "%{http_connect}",
            "--max-time",
            "10",
            "-p",
            "-x",
            "http://127.0.0.1:15001",
            &closed,
        ])
        .expect("run curl");
    assert_eq!(out.stdout, "502", "{out:?}");
}

#[test]
#[ignore = "needs root: network namespaces and iptables"]
fn ipv6_only_pods_pass_their_probes_and_talk() {
    if !root_or_skip() {
        return;
    }
    let net = Net::new().expect("net");
    let client = Pod::new(&net, "client").expect("pod");
    let server = Pod::new(&net, "server").expect("pod");
    let kubelet = Pod::new(&net, "kubelet").expect("pod");
    for pod in [&client, &server] {
        // An IPv6-only pod: no IPv4 address but loopback.
        pod.exec(&["ip", "-4", "addr", "flush", "dev", "eth0"])
            .expect("ip")
            .check("remove IPv4")
            .expect("IPv6-only pod");
        pod.init(&[]).expect("init");
    }
    let _app = server
        .spawn_server(&["http-echo", "--listen", "[::]:8080"])
        .expect("app");
    // The injector's rewrite of a readiness probe `httpGet: {path: /healthz, port: 8080}`.
    let probes = r#"{"/app-health/app/readyz":{"type":"http","port":8080,"path":"/healthz"}}"#;
    let opts = |pod: &Pod| SidecarOpts {
        pod_ip: Some(pod.ip6().to_string()),
        env: vec![("MESH_APP_PROBES".into(), probes.into())],
        ..Default::default()
    };
    let _server_sidecar = server.start_sidecar(opts(&server)).expect("sidecar");
    let _client_sidecar = client.start_sidecar(opts(&client)).expect("sidecar");

    let host = format!("[{}]", server.ip6());
    let ready = status(&kubelet, &["-g", &format!("http://{host}:15000/ready")]);
    assert_eq!(ready.stdout, "200", "admin /ready over IPv6: {ready:?}");
    let probe = status(
        &kubelet,
        &["-g", &format!("http://{host}:15902/app-health/app/readyz")],
    );
    assert_eq!(probe.stdout, "200", "rewritten probe over IPv6: {probe:?}");
    // The loop guard knows the IPv6 pod IP: a stranger's `[POD_IPv6]:15001` is refused.
    let proxy = format!("http://{host}:15001");
    let open = status(&kubelet, &["-x", &proxy, "http://127.0.0.1:15000/config"]);
    assert_eq!(open.stdout, "000", "forward proxy open over IPv6: {open:?}");

    let out = client
        .exec(&[
            "curl",
            "-sS",
            "--max-time",
            "10",
            "-g",
            &format!("http://{host}:8080/v6only"),
        ])
        .expect("run curl")
        .check("curl over IPv6 through both sidecars")
        .expect("IPv6-only pod pair");
    let info: serde_json::Value = serde_json::from_str(&out.stdout).expect("echo JSON");
    assert_eq!(info["path"], "/v6only");
    assert_eq!(info["local"], format!("{host}:8080"));
}
