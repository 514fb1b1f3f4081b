//! `examples/backends/`, the files a user copies to send the mesh's traces to their backend: each
//! MeshConfig patch applies with `mesh config patch` and says what its name says, the
//! OpenTelemetry Collector's Kubernetes objects pass `kubernetes-validate`, its configuration
//! wires every pipeline to defined components and listens where the patches send, and the
//! operator's `Instrumentation` asks for the propagators the sidecars write.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_yaml::Value;

/// The Kubernetes version the schemas are checked against (k8s-openapi's feature in Cargo.toml).
const KUBERNETES_VERSION: &str = "1.33.0";

fn backends() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/backends")
}

fn read(name: &str) -> String {
    std::fs::read_to_string(backends().join(name)).unwrap_or_else(|e| panic!("{name}: {e}"))
}

fn documents(stream: &str) -> Vec<Value> {
    serde_yaml::Deserializer::from_str(stream)
        .map(|d| serde::Deserialize::deserialize(d).expect("every document parses"))
        .filter(|v: &Value| !v.is_null())
        .collect()
}

fn find<'a>(docs: &'a [Value], kind: &str) -> &'a Value {
    docs.iter()
        .find(|d| d["kind"] == kind)
        .unwrap_or_else(|| panic!("no {kind}"))
}

/// The collector configuration embedded in the example's ConfigMap.
fn collector_config() -> Value {
    let docs = documents(&read("otel-collector.yaml"));
    let text = find(&docs, "ConfigMap")["data"]["config.yaml"]
        .as_str()
        .expect("config.yaml in the ConfigMap")
        .to_owned();
    serde_yaml::from_str(&text).expect("collector config parses")
}

fn mesh(state: &Path, args: &[&str]) -> String {
    let output = Command::new(env!("CARGO_BIN_EXE_mesh"))
        .args(["--backend", "local", "--state-dir"])
        .arg(state)
        .args(args)
        .output()
        .expect("run mesh");
    assert!(
        output.status.success(),
        "mesh {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).expect("utf-8")
}

/// Every patch file, with what its name promises: (file, target host, protocol, port).
const PATCHES: [(&str, &str, &str, u64); 6] = [
    (
        "otel-collector-zipkin.json",
        "otel-collector.",
        "zipkin",
        9411,
    ),
    (
        "otel-collector-otlp-grpc.json",
        "otel-collector.",
        "otlp-grpc",
        4317,
    ),
    (
        "jaeger-otlp-http.json",
        "jaeger-collector.",
        "otlp-http",
        4318,
    ),
    (
        "jaeger-otlp-grpc.json",
        "jaeger-collector.",
        "otlp-grpc",
        4317,
    ),
    (
        "tempo-otlp-http.json",
        "tempo-distributor.",
        "otlp-http",
        4318,
    ),
    (
        "tempo-otlp-grpc.json",
        "tempo-distributor.",
        "otlp-grpc",
        4317,
    ),
];

#[test]
fn every_patch_applies_and_says_what_its_name_says() {
    let listed: BTreeSet<String> = std::fs::read_dir(backends())
        .expect("examples/backends")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".json"))
        .collect();
    let known: BTreeSet<String> = PATCHES.iter().map(|p| p.0.to_owned()).collect();
    assert_eq!(listed, known, "every patch file is checked here");

    for (file, host, protocol, port) in PATCHES {
        let state = tempfile::tempdir().expect("state dir");
        mesh(state.path(), &["config", "patch", "-p", &read(file)]);
        let config: serde_json::Value =
            serde_json::from_str(&mesh(state.path(), &["config", "get", "-o", "json"]))
                .expect("config get -o json");
        let tracing = &config["spec"]["observability"]["tracing"];
        assert_eq!(tracing["enable"], true, "{file}");
        assert!(
            tracing["address"]
                .as_str()
                .is_some_and(|a| a.starts_with(host)),
            "{file}: {tracing}"
        );
        assert_eq!(tracing["protocol"], protocol, "{file}");
        assert_eq!(tracing["port"], port, "{file}");
        if protocol == "otlp-http" {
            assert_eq!(tracing["endpoint"], "/v1/traces", "{file}");
        }
        // The stored result passes the strict validator too.
        let stored = state.path().join("mesh-config.yaml");
        let output = Command::new(env!("CARGO_BIN_EXE_mesh"))
            .args(["config", "validate"])
            .arg(&stored)
            .output()
            .expect("run mesh config validate");
        assert!(output.status.success(), "{file}: {output:?}");
    }
}

#[test]
fn the_collector_listens_where_the_patches_send_and_wires_every_pipeline() {
    let config = collector_config();
    let receivers = &config["receivers"];
    assert_eq!(receivers["zipkin"]["endpoint"], "0.0.0.0:9411");
    assert_eq!(
        receivers["otlp"]["protocols"]["grpc"]["endpoint"],
        "0.0.0.0:4317"
    );
    assert_eq!(
        receivers["otlp"]["protocols"]["http"]["endpoint"],
        "0.0.0.0:4318"
    );
    let traces = &config["service"]["pipelines"]["traces"];
    for (section, list) in [
        ("receivers", &traces["receivers"]),
        ("processors", &traces["processors"]),
        ("exporters", &traces["exporters"]),
    ] {
        let names = list.as_sequence().expect("a list");
        assert!(!names.is_empty(), "traces pipeline has no {section}");
        for name in names {
            let name = name.as_str().expect("a name");
            assert!(
                config[section].get(name).is_some(),
                "pipeline names {section}.{name}, which is not defined"
            );
        }
    }
    let receivers: Vec<&str> = traces["receivers"]
        .as_sequence()
        .expect("receivers")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert!(receivers.contains(&"zipkin") && receivers.contains(&"otlp"));
    let exporter = &config["exporters"]["otlp/jaeger"];
    assert!(
        exporter["endpoint"]
            .as_str()
            .is_some_and(|e| e.starts_with("jaeger-collector.") && e.ends_with(":4317")),
        "{exporter:?}"
    );
    for extension in config["service"]["extensions"]
        .as_sequence()
        .expect("extensions")
    {
        let name = extension.as_str().expect("a name");
        assert!(config["extensions"].get(name).is_some(), "{name} undefined");
    }

    // The Service serves every port the otel-collector patches use, under the patches' name.
    let docs = documents(&read("otel-collector.yaml"));
    let service = find(&docs, "Service");
    let host = format!(
        "{}.{}.svc.cluster.local",
        service["metadata"]["name"].as_str().expect("name"),
        service["metadata"]["namespace"]
            .as_str()
            .expect("namespace")
    );
    let ports: Vec<u64> = service["spec"]["ports"]
        .as_sequence()
        .expect("ports")
        .iter()
        .filter_map(|p| p["port"].as_u64())
        .collect();
    for (file, _, _, port) in PATCHES.iter().filter(|p| p.0.starts_with("otel-collector")) {
        let patch: serde_json::Value = serde_json::from_str(&read(file)).expect("json");
        assert_eq!(
            patch["spec"]["observability"]["tracing"]["address"], host,
            "{file}"
        );
        assert!(ports.contains(port), "{file}: port {port} not in {ports:?}");
    }
}

#[test]
fn collector_objects_pass_kubernetes_validate() {
    let file = backends().join("otel-collector.yaml");
    let output = Command::new("kubernetes-validate")
        .args(["--strict", "--kubernetes-version", KUBERNETES_VERSION])
        .arg(&file)
        .output()
        .unwrap_or_else(|e| {
            panic!("cannot run kubernetes-validate ({e}); run scripts/setup to install it")
        });
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(output.status.success(), "{report}");
    let objects = documents(&read("otel-collector.yaml")).len();
    assert_eq!(
        report.matches("passed for resource").count(),
        objects,
        "{report}"
    );
}

/// The operator's CRD is not available offline, so this checks the fields the example relies on
/// against the operator's documented values (`Instrumentation.spec.propagators` enum).
#[test]
fn instrumentation_propagates_what_the_sidecars_write() {
    let doc: Value = serde_yaml::from_str(&read("instrumentation.yaml")).expect("yaml");
    assert_eq!(doc["apiVersion"], "opentelemetry.io/v1alpha1");
    assert_eq!(doc["kind"], "Instrumentation");
    let operator_values = [
        "tracecontext",
        "baggage",
        "b3",
        "b3multi",
        "jaeger",
        "xray",
        "ottrace",
        "none",
    ];
    let propagators: Vec<&str> = doc["spec"]["propagators"]
        .as_sequence()
        .expect("propagators")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    for p in &propagators {
        assert!(operator_values.contains(p), "unknown propagator {p}");
    }
    // The formats every sidecar hop writes by default.
    assert!(propagators.contains(&"tracecontext") && propagators.contains(&"b3multi"));
    let endpoint = doc["spec"]["exporter"]["endpoint"]
        .as_str()
        .expect("endpoint");
    assert!(
        endpoint.starts_with("http://otel-collector.") && endpoint.ends_with(":4318"),
        "{endpoint}"
    );
}
