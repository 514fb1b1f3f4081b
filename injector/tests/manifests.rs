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
    let formats: Vec<&str> = spec["observability"]["properties"]["tracing"]["properties"]
        ["propagation"]["items"]["enum"]
        .as_array()
        .expect("enum")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    let expected: Vec<&str> = mesh_config::PropagationFormat::ALL
        .iter()
        .map(|p| p.as_str())
        .collect();
    assert_eq!(formats, expected);
    let stitching: Vec<&str> = spec["observability"]["properties"]["tracing"]["properties"]
        ["stitching"]["enum"]
        .as_array()
        .expect("enum")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    let expected: Vec<&str> = mesh_config::Stitching::ALL
        .iter()
        .map(|m| m.as_str())
        .collect();
    assert_eq!(stitching, expected);
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
        base(
            serde_json::json!({"observability": {"tracing": {"propagation": ["tracecontext"], "maxUrlTagLength": 256, "stitching": "in-flight"}},
            "sidecar": {"headerReadTimeout": "500ms", "tcpIdleTimeout": "1m30s",
            "http2KeepaliveInterval": "0", "maxConnections": 50, "terminationDrainDuration": "0s"}})
        ),
        base(serde_json::json!({"observability": {"tracing": {"port": 70000}}})),
        base(serde_json::json!({"observability": {"tracing": {"propagation": ["b3"]}}})),
        base(serde_json::json!({"observability": {"tracing": {"propagation": []}}})),
        base(serde_json::json!({"observability": {"tracing": {"maxUrlTagLength": 16}}})),
        base(serde_json::json!({"observability": {"tracing": {"stitching": "guess"}}})),
        base(serde_json::json!({"observability": {"tracing": {"protocol": "carrier-pigeon"}}})),
        base(serde_json::json!({"sidecar": {"logLevel": "loud"}})),
        base(serde_json::json!({"traffic": {"outboundPortExclusionList": [0]}})),
        base(serde_json::json!({"sidecar": {"httpIdleTimeout": 10}})),
        base(serde_json::json!({"sidecar": {"connectTimeout": "soon"}})),
        base(serde_json::json!({"sidecar": {"maxConnections": 0}})),
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
    assert_eq!(
        results[2], "ok",
        "narrowed propagation, a URL bound, sidecar timeouts and limits"
    );
    for (i, r) in results.iter().enumerate().skip(3) {
        assert!(r.starts_with("invalid"), "case {i} should be refused: {r}");
    }
}

fn find<'a>(docs: &'a [Value], kind: &str) -> &'a Value {
    docs.iter()
        .find(|d| d["kind"] == kind)
        .unwrap_or_else(|| panic!("no {kind} in injector.yaml"))
}

/// What the injector needs from its manifest: no certificate volume or flags (it reads the
/// Secret through the API), RBAC on its Secret and its webhook by name only, readiness on
/// `/readyz`, metrics, topology spread and a disruption budget.
#[test]
fn injector_manifest_fits_a_fail_webhook() {
    let docs = documents("injector.yaml");
    let deployment = find(&docs, "Deployment");
    let pod = &deployment["spec"]["template"]["spec"];
    let container = &pod["containers"][0];
    let args: Vec<&str> = container["args"]
        .as_array()
        .expect("args")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    for flag in ["--tls-cert", "--tls-key", "--config-ca"] {
        assert!(!args.contains(&flag), "{flag} in {args:?}");
    }
    assert!(pod.get("volumes").is_none(), "no Secret volume");
    assert_eq!(container["readinessProbe"]["httpGet"]["path"], "/readyz");
    assert!(deployment["spec"]["replicas"].as_i64() >= Some(2));
    let keys: Vec<&str> = pod["topologySpreadConstraints"]
        .as_array()
        .expect("topology spread")
        .iter()
        .filter_map(|c| c["topologyKey"].as_str())
        .collect();
    assert_eq!(
        keys,
        ["kubernetes.io/hostname", "topology.kubernetes.io/zone"]
    );
    let ports: Vec<i64> = container["ports"]
        .as_array()
        .expect("ports")
        .iter()
        .filter_map(|p| p["containerPort"].as_i64())
        .collect();
    assert_eq!(ports, [9090, 9091]);
    assert_eq!(
        find(&docs, "PodDisruptionBudget")["spec"]["minAvailable"],
        1
    );

    let rules = |kind: &str| {
        find(&docs, kind)["rules"]
            .as_array()
            .expect("rules")
            .clone()
    };
    let secret_rules: Vec<Value> = rules("Role")
        .into_iter()
        .filter(|r| r["resources"] == serde_json::json!(["secrets"]))
        .collect();
    assert_eq!(
        secret_rules,
        [
            serde_json::json!({"apiGroups": [""], "resources": ["secrets"],
                "resourceNames": ["mesh-injector-tls"], "verbs": ["get", "update"]}),
            serde_json::json!({"apiGroups": [""], "resources": ["secrets"], "verbs": ["create"]}),
        ]
    );
    let webhook_rule = rules("ClusterRole")
        .into_iter()
        .find(|r| r["resources"] == serde_json::json!(["mutatingwebhookconfigurations"]))
        .expect("webhook rule");
    assert_eq!(
        webhook_rule["resourceNames"],
        serde_json::json!(["mesh-injector"])
    );
    assert_eq!(webhook_rule["verbs"], serde_json::json!(["get", "patch"]));
}

/// The cert-manager example issues what `--cert-manager` reads: the Secret the Deployment
/// names, for the Service name the injector checks, signed by a CA Issuer (so `ca.crt` is set).
#[test]
fn cert_manager_example_issues_what_the_injector_reads() {
    let text = std::fs::read_to_string(common::repo_root().join("examples/cert-manager.yaml"))
        .expect("example");
    let docs: Vec<Value> = serde_yaml::Deserializer::from_str(&text)
        .map(|d| serde::Deserialize::deserialize(d).expect("yaml document"))
        .collect();
    let serving = docs
        .iter()
        .find(|d| d["kind"] == "Certificate" && d["spec"]["isCA"] != true)
        .expect("serving Certificate");
    assert_eq!(serving["spec"]["secretName"], "mesh-injector-tls");
    let names = mesh_injector::certs::service_dns_names("mesh-injector", "mesh-system");
    assert_eq!(serving["spec"]["dnsNames"][0], names[0].as_str());
    let issuer_name = &serving["spec"]["issuerRef"]["name"];
    let issuer = docs
        .iter()
        .find(|d| d["kind"] == "Issuer" && &d["metadata"]["name"] == issuer_name)
        .expect("its Issuer");
    assert!(issuer["spec"]["ca"].is_object(), "a CA Issuer sets ca.crt");
    for d in &docs {
        assert_eq!(d["metadata"]["namespace"], "mesh-system");
    }
}
