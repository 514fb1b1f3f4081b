//! Every file in manifests/ checked by the external Kubernetes validator, and the default
//! MeshConfig checked against the CRD's own openAPIV3Schema.

mod common;

use std::path::PathBuf;
use std::process::Command;

use serde_json::Value;

fn manifest(name: &str) -> PathBuf {
    common::repo_root().join("manifests").join(name)
}

fn documents(name: &str) -> Vec<Value> {
    let text = std::fs::read_to_string(manifest(name)).expect("manifest");
    serde_yaml::Deserializer::from_str(&text)
        .map(|d| serde::Deserialize::deserialize(d).expect("yaml document"))
        .filter(|v: &Value| !v.is_null())
        .collect()
}

#[test]
fn manifests_pass_the_kubernetes_schema() {
    let files = [
        manifest("namespace.yaml"),
        manifest("crd.yaml"),
        manifest("injector.yaml"),
        manifest("webhook.yaml"),
    ];
    common::kubernetes_validate(&files.iter().map(PathBuf::as_path).collect::<Vec<_>>());
}

#[test]
fn webhook_configuration_is_what_the_injector_serves() {
    let docs = documents("webhook.yaml");
    assert_eq!(docs.len(), 1);
    let hooks = docs[0]["webhooks"].as_array().expect("webhooks");
    assert_eq!(hooks.len(), 2);
    for h in hooks {
        assert_eq!(h["sideEffects"], "None");
        assert_eq!(h["admissionReviewVersions"], serde_json::json!(["v1"]));
        assert_eq!(h["clientConfig"]["service"]["path"], "/mutate-pod-creation");
        // The injector patches the caBundle in; the manifest leaves it out.
        assert!(h["clientConfig"].get("caBundle").is_none());
        assert!(
            h["failurePolicy"].is_string() && h["timeoutSeconds"].as_i64().is_some_and(|t| t <= 10)
        );
        let excluded = h["namespaceSelector"]["matchExpressions"].to_string();
        assert!(
            excluded.contains("kube-system") && excluded.contains("mesh-system"),
            "{excluded}"
        );
    }
    assert_eq!(
        hooks[0]["namespaceSelector"]["matchLabels"]["tracemesh.dev/monitored-by"],
        "tracemesh"
    );
}

#[test]
fn default_mesh_config_is_the_documented_default() {
    let text = std::fs::read_to_string(manifest("mesh-config.yaml")).expect("mesh-config");
    let parsed = mesh_config::parse_strict(&text).expect("valid");
    assert_eq!(parsed, mesh_config::MeshConfig::default());
}

#[test]
fn crd_enums_match_the_document_types() {
    let crd = &documents("crd.yaml")[0];
    let spec = &crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
        ["properties"];
    let protocols: Vec<&str> = spec["observability"]["properties"]["tracing"]["properties"]
        ["protocol"]["enum"]
        .as_array()
        .expect("enum")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    let expected: Vec<&str> = mesh_config::Protocol::ALL
        .iter()
        .map(|p| p.as_str())
        .collect();
    assert_eq!(protocols, expected);
    assert!(crd["spec"]["versions"][0]["subresources"]["status"].is_object());
}

/// The CRD's schema applied to MeshConfig objects with Python's jsonschema (a dependency of
/// kubernetes-validate): the default passes, FSM's string fraction passes, typos fail.
#[test]
fn mesh_config_objects_against_the_crd_schema() {
    let script = r#"
import json, sys, yaml, jsonschema
crd = yaml.safe_load(open(sys.argv[1]))
schema = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
cases = json.loads(sys.argv[3])
docs = [yaml.safe_load(open(sys.argv[2]))] + cases
out = []
for d in docs:
    try:
        jsonschema.validate(d, schema)
        out.append("ok")
    except jsonschema.ValidationError as e:
        out.append("invalid: " + e.message)
print(json.dumps(out))
"#;
    let base = |spec: Value| {
        serde_json::json!({"apiVersion": "config.tracemesh.dev/v1alpha1", "kind": "MeshConfig",
        "metadata": {"name": "mesh-config", "namespace": "mesh-system"}, "spec": spec})
    };
    let cases = serde_json::json!([
        base(
            serde_json::json!({"observability": {"tracing": {"enable": true, "address": "otel.obs", "port": 4318,
            "endpoint": "/v1/traces", "protocol": "otlp-http", "sampledFraction": "0.25"}}})
        ),
        base(serde_json::json!({"observability": {"tracing": {"port": 70000}}})),
        base(serde_json::json!({"observability": {"tracing": {"protocol": "carrier-pigeon"}}})),
        base(serde_json::json!({"sidecar": {"logLevel": "loud"}})),
        base(serde_json::json!({"traffic": {"outboundPortExclusionList": [0]}})),
    ]);
    let out = Command::new("python3")
        .args(["-c", script])
        .arg(manifest("crd.yaml"))
        .arg(manifest("mesh-config.yaml"))
        .arg(cases.to_string())
        .output()
        .expect("python3");
    assert!(
        out.status.success(),
        "python3 with PyYAML and jsonschema is needed (run scripts/setup): {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let results: Vec<String> = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(results[0], "ok", "default MeshConfig");
    assert_eq!(results[1], "ok", "FSM-style tracing block");
    for (i, r) in results.iter().enumerate().skip(2) {
        assert!(r.starts_with("invalid"), "case {i} should be refused: {r}");
    }
}
