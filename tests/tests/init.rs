//! `mesh-proxy init` in a real pod namespace: the rules it writes and what they do to traffic.
//! No sidecar runs here, so a redirected connection is refused: that is how redirection shows.

use tracemesh_tests::{root_or_skip, Net, Pod};

/// Lines that add rules to the nat table.
fn rules(text: &str) -> Vec<String> {
    text.lines()
        .filter(|l| l.starts_with("-A "))
        .map(str::to_string)
        .collect()
}

/// `curl` exit status for a GET from `pod` (as root, or as `uid`).
fn curl_code(pod: &Pod, uid: Option<u32>, url: &str) -> Option<i32> {
    let args = ["curl", "-s", "-o", "/dev/null", "--max-time", "10", url];
    let out = match uid {
        Some(uid) => pod.exec_as(uid, &args),
        None => pod.exec(&args),
    };
    out.expect("run curl").code
}

#[test]
#[ignore = "needs root: network namespaces and iptables"]
fn init_twice_leaves_no_duplicate_rules_and_cleanup_removes_them() {
    if !root_or_skip() {
        return;
    }
    let net = Net::new().expect("net");
    let pod = Pod::new(&net, "a").expect("pod");
    let flags = [
        "--outbound-ip-range-exclusions",
        "10.96.0.0/12",
        "--inbound-port-exclusions",
        "22",
    ];
    pod.init(&flags).expect("first init");
    let first = rules(&pod.nat_rules().expect("save"));
    assert!(
        first.contains(&"-A PREROUTING -p tcp -j MESH_PROXY_INBOUND".to_string()),
        "{first:#?}"
    );
    assert!(
        first.contains(&"-A OUTPUT -p tcp -j MESH_PROXY_OUTBOUND".to_string()),
        "{first:#?}"
    );
    assert!(first
        .iter()
        .any(|l| l.contains("10.96.0.0/12") && l.ends_with("RETURN")));
    assert!(first
        .iter()
        .any(|l| l.contains("--dport 22 ") && l.ends_with("RETURN")));

    pod.init(&flags).expect("second init");
    let second = rules(&pod.nat_rules().expect("save"));
    assert_eq!(first, second, "running init twice changed the rules");

    let dry = pod.init(&["--dry-run"]).expect("dry run");
    assert!(
        dry.stdout.contains("*nat") && dry.stdout.contains("COMMIT"),
        "{}",
        dry.stdout
    );
    assert_eq!(
        rules(&pod.nat_rules().expect("save")),
        second,
        "--dry-run applied rules"
    );

    pod.init(&["--cleanup"]).expect("cleanup");
    let after = pod.nat_rules().expect("save");
    assert!(
        !after.contains("MESH_PROXY"),
        "left after cleanup:\n{after}"
    );
    pod.init(&["--cleanup"])
        .expect("cleanup with nothing to remove");
}

#[test]
#[ignore = "needs root: network namespaces and iptables"]
fn bad_flags_fail_with_a_one_line_reason() {
    if !root_or_skip() {
        return;
    }
    let net = Net::new().expect("net");
    let pod = Pod::new(&net, "a").expect("pod");
    for bad in [
        ["--outbound-port-exclusions", "80,99999"],
        ["--outbound-ip-range-exclusions", "10.0.0.0/33"],
    ] {
        let err = pod.init(&bad).expect_err("bad flag accepted");
        let text = format!("{err:#}");
        assert!(
            text.contains(bad[1].split(',').next_back().unwrap_or("")),
            "{text}"
        );
    }
    let after = pod.nat_rules().expect("save");
    assert!(
        !after.contains("MESH_PROXY"),
        "rules written despite a bad flag:\n{after}"
    );
}

#[test]
#[ignore = "needs root: network namespaces and iptables"]
fn outbound_is_redirected_except_proxy_uid_localhost_and_exclusions() {
    if !root_or_skip() {
        return;
    }
    let net = Net::new().expect("net");
    let app = Pod::new(&net, "app").expect("pod");
    let other = Pod::new(&net, "other").expect("pod");
    let _echo = other
        .spawn_server(&["http-echo", "--listen", "0.0.0.0:8080"])
        .expect("echo");
    let _local = app
        .spawn_server(&["http-echo", "--listen", "127.0.0.1:9000"])
        .expect("local echo");
    let url = format!("http://{}:8080/", other.ip());
    assert_eq!(curl_code(&app, None, &url), Some(0), "before init");

    app.init(&[]).expect("init");
    // Nobody listens on 15001: a redirected connection is refused (curl exit 7).
    assert_eq!(
        curl_code(&app, None, &url),
        Some(7),
        "app traffic not redirected"
    );
    assert_eq!(
        curl_code(&app, Some(1500), &url),
        Some(0),
        "proxy UID was redirected"
    );
    assert_eq!(
        curl_code(&app, Some(1000), &url),
        Some(7),
        "another UID was not redirected"
    );
    assert_eq!(
        curl_code(&app, None, "http://127.0.0.1:9000/"),
        Some(0),
        "127.0.0.1 was redirected"
    );

    app.init(&["--outbound-port-exclusions", "8080"])
        .expect("init");
    assert_eq!(
        curl_code(&app, None, &url),
        Some(0),
        "excluded port redirected"
    );

    let cidr = format!("{}/32", other.ip());
    app.init(&["--outbound-ip-range-exclusions", &cidr])
        .expect("init");
    assert_eq!(
        curl_code(&app, None, &url),
        Some(0),
        "excluded CIDR redirected"
    );

    app.init(&[]).expect("init");
    assert_eq!(
        curl_code(&app, None, &url),
        Some(7),
        "re-init lost the redirect"
    );
    app.init(&["--cleanup"]).expect("cleanup");
    assert_eq!(
        curl_code(&app, None, &url),
        Some(0),
        "cleanup left a redirect"
    );
}

#[test]
#[ignore = "needs root: network namespaces and iptables"]
fn inbound_is_redirected_except_admin_probe_ports_and_exclusions() {
    if !root_or_skip() {
        return;
    }
    let net = Net::new().expect("net");
    let server = Pod::new(&net, "server").expect("pod");
    let client = Pod::new(&net, "client").expect("pod");
    let _app = server
        .spawn_server(&["http-echo", "--listen", "0.0.0.0:8080"])
        .expect("app");
    // Stand-ins for the sidecar's admin server and a rewritten probe port.
    let _admin = server
        .spawn_server(&["http-echo", "--listen", "0.0.0.0:15000"])
        .expect("admin");
    let _probe = server
        .spawn_server(&["http-echo", "--listen", "0.0.0.0:15901"])
        .expect("probe");
    let ip = server.ip();
    server.init(&[]).expect("init");

    let app_url = format!("http://{ip}:8080/");
    assert_eq!(
        curl_code(&client, None, &app_url),
        Some(7),
        "inbound not redirected"
    );
    for port in [15000, 15901] {
        let url = format!("http://{ip}:{port}/");
        assert_eq!(
            curl_code(&client, None, &url),
            Some(0),
            "port {port} redirected"
        );
    }
    // The app calling its own pod IP goes through the inbound side too.
    assert_eq!(
        curl_code(&server, None, &app_url),
        Some(7),
        "app -> own pod IP"
    );

    server
        .init(&["--inbound-port-exclusions", "8080"])
        .expect("init");
    assert_eq!(
        curl_code(&client, None, &app_url),
        Some(0),
        "excluded port redirected"
    );
    assert_eq!(
        curl_code(&server, None, &app_url),
        Some(0),
        "excluded port redirected (lo)"
    );
}

#[test]
#[ignore = "needs root: network namespaces and iptables"]
fn ipv6_gets_the_same_rules_and_its_own_cidr_exclusions() {
    if !root_or_skip() {
        return;
    }
    let net = Net::new().expect("net");
    let app = Pod::new(&net, "app").expect("pod");
    let other = Pod::new(&net, "other").expect("pod");
    let _echo = other
        .spawn_server(&["http-echo", "--listen", "[::]:8080"])
        .expect("echo");
    let url = format!("http://[{}]:8080/", other.ip6());
    let curl6 = |uid: Option<u32>| {
        let args = [
            "curl",
            "-g",
            "-s",
            "-o",
            "/dev/null",
            "--max-time",
            "10",
            &url,
        ];
        match uid {
            Some(uid) => app.exec_as(uid, &args),
            None => app.exec(&args),
        }
        .expect("run curl")
        .code
    };
    assert_eq!(curl6(None), Some(0), "before init");
    app.init(&[]).expect("init");
    assert_eq!(curl6(None), Some(7), "IPv6 app traffic not redirected");
    assert_eq!(curl6(Some(1500)), Some(0), "IPv6 proxy UID was redirected");

    let cidr = format!("{}/128", other.ip6());
    app.init(&["--outbound-ip-range-exclusions", &cidr])
        .expect("init");
    assert_eq!(curl6(None), Some(0), "excluded IPv6 CIDR redirected");
    let v6 = app
        .exec(&["ip6tables-save", "-t", "nat"])
        .expect("save")
        .stdout;
    assert!(v6.contains(&cidr), "{v6}");
    assert!(
        !app.nat_rules().expect("save").contains(&cidr),
        "IPv6 CIDR in iptables"
    );

    app.init(&["--cleanup"]).expect("cleanup");
    let v6 = app
        .exec(&["ip6tables-save", "-t", "nat"])
        .expect("save")
        .stdout;
    assert!(!v6.contains("MESH_PROXY"), "{v6}");
}
