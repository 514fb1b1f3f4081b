//! The built `mesh` binary, run as a user would, on the local backend in a temporary state dir:
//! messages on stdout/stderr and exit codes (0 done, 1 refused or failed, 2 bad usage).

use std::path::Path;
use std::process::{Command, Output};

fn mesh(state_dir: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_mesh"))
        .args(["--backend", "local", "--state-dir"])
        .arg(state_dir)
        .args(args)
        .env_remove("MESH_BACKEND")
        .env_remove("MESH_STATE_DIR")
        .output()
        .expect("run mesh")
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

fn code(output: &Output) -> i32 {
    output.status.code().expect("exited")
}

#[test]
fn help_lists_every_command() {
    let dir = tempfile::tempdir().expect("tempdir");
    let output = mesh(dir.path(), &["--help"]);
    assert_eq!(code(&output), 0);
    let text = stdout(&output);
    for command in [
        "namespace",
        "config",
        "install",
        "uninstall",
        "version",
        "check",
        "--kubeconfig",
        "--context",
        "run",
        "demo",
        "collector",
        "completions",
        "--backend",
        "--state-dir",
    ] {
        assert!(text.contains(command), "--help lacks {command}:\n{text}");
    }
}

#[test]
fn completions_are_generated_for_each_shell() {
    let dir = tempfile::tempdir().expect("tempdir");
    for shell in ["bash", "zsh", "fish", "elvish", "powershell"] {
        let output = mesh(dir.path(), &["completions", shell]);
        assert_eq!(code(&output), 0, "{shell}: {}", stderr(&output));
        assert!(stdout(&output).contains("namespace"), "{shell}");
    }
}

#[test]
fn bad_usage_exits_2() {
    let dir = tempfile::tempdir().expect("tempdir");
    assert_eq!(code(&mesh(dir.path(), &["namespace", "add"])), 2);
    assert_eq!(code(&mesh(dir.path(), &["config", "get", "-o", "xml"])), 2);
    assert_eq!(code(&mesh(dir.path(), &["nope"])), 2);
}

#[test]
fn namespace_lifecycle_messages_and_exit_codes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let state = dir.path();

    let output = mesh(state, &["namespace", "list"]);
    assert_eq!(
        (code(&output), stdout(&output).as_str()),
        (0, "No namespaces in any mesh\n")
    );

    let output = mesh(state, &["namespace", "add", "shop", "web"]);
    assert_eq!(code(&output), 0, "{}", stderr(&output));
    assert_eq!(
        stdout(&output),
        "Namespace [shop] successfully added to mesh [tracemesh]\n\
         Namespace [web] successfully added to mesh [tracemesh]\n"
    );
    let file = std::fs::read_to_string(state.join("namespaces/shop.yaml")).expect("namespace file");
    let object: serde_yaml::Value = serde_yaml::from_str(&file).expect("yaml");
    assert_eq!(object["kind"], "Namespace");
    assert_eq!(
        object["metadata"]["labels"]["tracemesh.dev/monitored-by"],
        "tracemesh"
    );
    assert_eq!(
        object["metadata"]["annotations"]["tracemesh.dev/sidecar-injection"],
        "enabled"
    );

    let output = mesh(state, &["namespace", "add", "shop"]);
    assert_eq!(code(&output), 0);
    assert_eq!(
        stdout(&output),
        "Namespace [shop] has already been added to mesh [tracemesh]\n"
    );

    let output = mesh(state, &["namespace", "add", "shop", "--mesh-name", "other"]);
    assert_eq!(code(&output), 1);
    assert!(
        stderr(&output).starts_with("Error: Namespace [shop] already belongs to mesh [tracemesh]"),
        "{}",
        stderr(&output)
    );

    let output = mesh(
        state,
        &["namespace", "remove", "shop", "--mesh-name", "other"],
    );
    assert_eq!(code(&output), 1);
    assert_eq!(
        stderr(&output),
        "Error: Namespace belongs to mesh [tracemesh], not mesh [other]. Please specify the correct mesh\n"
    );

    let output = mesh(state, &["namespace", "list", "--mesh-name", "tracemesh"]);
    assert_eq!(code(&output), 0);
    assert_eq!(
        stdout(&output),
        "NAMESPACE   MESH        SIDECAR-INJECTION\n\
         shop        tracemesh   enabled\n\
         web         tracemesh   enabled\n"
    );

    let output = mesh(state, &["namespace", "remove", "shop"]);
    assert_eq!(
        (code(&output), stdout(&output).as_str()),
        (
            0,
            "Namespace [shop] successfully removed from mesh [tracemesh]\n"
        )
    );
    let output = mesh(state, &["namespace", "remove", "shop"]);
    assert_eq!(
        (code(&output), stdout(&output).as_str()),
        (0, "Namespace [shop] already does not belong to any mesh\n")
    );

    let output = mesh(state, &["namespace", "remove", "ghost"]);
    assert_eq!(code(&output), 1);
    assert_eq!(
        stderr(&output),
        "Error: Could not get namespace [ghost]: namespaces \"ghost\" not found\n"
    );

    let output = mesh(state, &["namespace", "add", "mesh-system"]);
    assert_eq!(code(&output), 0);
    assert!(stdout(&output).contains("cannot be added to mesh [tracemesh]"));
    assert!(!state.join("namespaces/mesh-system.yaml").exists());

    let output = mesh(state, &["namespace", "add", "Bad_Name"]);
    assert_eq!(code(&output), 1);
    assert!(stderr(&output).contains("invalid namespace name [Bad_Name]"));
}

#[test]
fn ignored_namespace_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::create_dir_all(dir.path().join("namespaces")).expect("dir");
    std::fs::write(
        dir.path().join("namespaces/legacy.yaml"),
        "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: legacy\n  labels:\n    tracemesh.dev/ignore: \"true\"\n",
    )
    .expect("write");
    let output = mesh(dir.path(), &["namespace", "add", "legacy"]);
    assert_eq!(code(&output), 1);
    assert!(
        stderr(&output).contains("Cannot add ignored namespace [legacy]"),
        "{}",
        stderr(&output)
    );
}

#[test]
fn config_get_patch_and_validate() {
    let dir = tempfile::tempdir().expect("tempdir");
    let state = dir.path();

    let output = mesh(state, &["config", "get", "-o", "json"]);
    assert_eq!(code(&output), 0, "{}", stderr(&output));
    let defaults: serde_json::Value = serde_json::from_slice(&output.stdout).expect("json");
    assert_eq!(defaults["spec"]["observability"]["tracing"]["port"], 9411);

    let patch = r#"{"spec":{"observability":{"tracing":{"enable":true,"address":"127.0.0.1","port":4318,"protocol":"otlp-http","endpoint":"/v1/traces"}}}}"#;
    let output = mesh(state, &["config", "patch", "-p", patch]);
    assert_eq!(code(&output), 0, "{}", stderr(&output));
    assert_eq!(
        stdout(&output),
        "meshconfig.config.tracemesh.dev/mesh-config patched\n"
    );
    let written = std::fs::read_to_string(state.join("mesh-config.yaml")).expect("file");
    assert!(
        mesh_config::parse_strict(&written)
            .expect("valid")
            .spec
            .observability
            .tracing
            .enable
    );

    let output = mesh(state, &["config", "get"]);
    let yaml: serde_yaml::Value = serde_yaml::from_slice(&output.stdout).expect("yaml");
    assert_eq!(yaml["spec"]["observability"]["tracing"]["port"], 4318);

    // Invalid results are refused and the file is left as it was.
    let output = mesh(
        state,
        &[
            "config",
            "patch",
            "-p",
            r#"{"spec":{"observability":{"tracing":{"address":""}}}}"#,
        ],
    );
    assert_eq!(code(&output), 1);
    assert!(
        stderr(&output).contains("spec.observability.tracing.address"),
        "{}",
        stderr(&output)
    );
    assert_eq!(
        std::fs::read_to_string(state.join("mesh-config.yaml")).expect("file"),
        written
    );

    let output = mesh(state, &["config", "patch", "--type", "json", "-p", "[]"]);
    assert_eq!(code(&output), 1);
    assert!(stderr(&output).contains("use --type merge"));

    let good = state.join("good.yaml");
    std::fs::write(&good, &written).expect("write");
    let output = mesh(
        state,
        &["config", "validate", good.to_str().expect("utf-8")],
    );
    assert_eq!(code(&output), 0, "{}", stderr(&output));

    let bad = state.join("bad.yaml");
    std::fs::write(
        &bad,
        "spec:\n  observability:\n    tracing:\n      port: 0\n      protocol: carrier-pigeon\n  sidecar:\n    logLevl: debug\n",
    )
    .expect("write");
    let output = mesh(state, &["config", "validate", bad.to_str().expect("utf-8")]);
    assert_eq!(code(&output), 1);
    let text = stderr(&output);
    for path in [
        "spec.observability.tracing.port",
        "spec.observability.tracing.protocol",
        "spec.sidecar.logLevl",
    ] {
        assert!(text.contains(path), "{path} missing from:\n{text}");
    }
}

#[test]
fn concurrent_patch_processes_lose_no_update() {
    let dir = tempfile::tempdir().expect("tempdir");
    let patches = [
        r#"{"spec":{"observability":{"tracing":{"enable":true}}}}"#,
        r#"{"spec":{"observability":{"tracing":{"address":"collector.local"}}}}"#,
        r#"{"spec":{"observability":{"tracing":{"port":4318}}}}"#,
        r#"{"spec":{"observability":{"tracing":{"endpoint":"/v1/traces"}}}}"#,
        r#"{"spec":{"observability":{"tracing":{"protocol":"otlp-http"}}}}"#,
        r#"{"spec":{"observability":{"tracing":{"sampledFraction":0.5}}}}"#,
        r#"{"spec":{"traffic":{"inboundPortExclusionList":[8081]}}}"#,
        r#"{"spec":{"traffic":{"outboundPortExclusionList":[5432]}}}"#,
        r#"{"spec":{"traffic":{"outboundIPRangeExclusionList":["10.0.0.0/8"]}}}"#,
        r#"{"spec":{"traffic":{"opaquePorts":[3306]}}}"#,
        r#"{"spec":{"sidecar":{"logLevel":"trace"}}}"#,
    ];
    // Twenty processes at once: each field is written by at least one, some by two with the
    // same value, so the final document is known whatever the order.
    let children: Vec<_> = (0..20)
        .map(|i| {
            Command::new(env!("CARGO_BIN_EXE_mesh"))
                .args(["--backend", "local", "--state-dir"])
                .arg(dir.path())
                .args(["config", "patch", "-p", patches[i % patches.len()]])
                .stdout(std::process::Stdio::null())
                .spawn()
                .expect("spawn mesh")
        })
        .collect();
    for mut child in children {
        assert!(child.wait().expect("wait").success());
    }
    let text = std::fs::read_to_string(dir.path().join("mesh-config.yaml")).expect("file");
    let config = mesh_config::parse_strict(&text).expect("valid");
    let tracing = &config.spec.observability.tracing;
    assert!(tracing.enable);
    assert_eq!(tracing.address, "collector.local");
    assert_eq!(tracing.port, 4318);
    assert_eq!(tracing.endpoint, "/v1/traces");
    assert_eq!(tracing.protocol, mesh_config::Protocol::OtlpHttp);
    assert_eq!(tracing.sampled_fraction, 0.5);
    assert_eq!(config.spec.traffic.inbound_port_exclusion_list, vec![8081]);
    assert_eq!(config.spec.traffic.outbound_port_exclusion_list, vec![5432]);
    assert_eq!(
        config.spec.traffic.outbound_ip_range_exclusion_list,
        vec!["10.0.0.0/8".to_string()]
    );
    assert_eq!(config.spec.traffic.opaque_ports, vec![3306]);
    assert_eq!(config.spec.sidecar.log_level, mesh_config::LogLevel::Trace);
}

#[test]
fn kube_backend_without_a_cluster_points_to_the_local_backend() {
    let home = tempfile::tempdir().expect("tempdir");
    let output = Command::new(env!("CARGO_BIN_EXE_mesh"))
        .args(["namespace", "list"])
        .env_remove("MESH_BACKEND")
        .env_remove("KUBERNETES_SERVICE_HOST")
        .env_remove("KUBERNETES_SERVICE_PORT")
        .env("HOME", home.path())
        .env("KUBECONFIG", home.path().join("no-such-kubeconfig"))
        .output()
        .expect("run mesh");
    assert_eq!(code(&output), 1);
    assert!(
        stderr(&output).contains("--backend local"),
        "{}",
        stderr(&output)
    );

    // Checking a file needs no cluster, whatever the backend.
    let file = home.path().join("config.yaml");
    std::fs::write(&file, "spec: {}\n").expect("write");
    let output = Command::new(env!("CARGO_BIN_EXE_mesh"))
        .args(["config", "validate"])
        .arg(&file)
        .env_remove("MESH_BACKEND")
        .env_remove("KUBERNETES_SERVICE_HOST")
        .env("HOME", home.path())
        .env("KUBECONFIG", home.path().join("no-such-kubeconfig"))
        .output()
        .expect("run mesh");
    assert_eq!(code(&output), 0, "{}", stderr(&output));
}

#[test]
fn env_selects_backend_and_state_dir() {
    let dir = tempfile::tempdir().expect("tempdir");
    let output = Command::new(env!("CARGO_BIN_EXE_mesh"))
        .args(["namespace", "add", "shop"])
        .env("MESH_BACKEND", "local")
        .env("MESH_STATE_DIR", dir.path())
        .output()
        .expect("run mesh");
    assert_eq!(code(&output), 0, "{}", stderr(&output));
    assert!(dir.path().join("namespaces/shop.yaml").exists());
}
