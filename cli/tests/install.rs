//! `mesh install` and `mesh uninstall` as kubectl would receive them: every document parses, the
//! same flags print the same bytes, the expected objects come in a safe order, the Kubernetes
//! objects pass the `kubernetes-validate` schema check (with the MeshConfig checked against the
//! CRD's own OpenAPI schema), and `kubectl kustomize manifests` renders the same objects.

use std::path::Path;
use std::process::{Command, Output};

/// The Kubernetes version the schemas are checked against (k8s-openapi's feature in Cargo.toml).
const KUBERNETES_VERSION: &str = "1.33.0";

fn mesh(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_mesh"))
        .args(args)
        .output()
        .expect("run mesh")
}

fn install(args: &[&str]) -> String {
    let output = mesh(&[&["install"], args].concat());
    assert!(
        output.status.success(),
        "mesh install failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).expect("utf-8")
}

fn documents(stream: &str) -> Vec<serde_yaml::Value> {
    let mut documents = Vec::new();
    for document in serde_yaml::Deserializer::from_str(stream) {
        let value = serde::Deserialize::deserialize(document).expect("every document parses");
        if value != serde_yaml::Value::Null {
            documents.push(value);
        }
    }
    documents
}

fn find<'a>(docs: &'a [serde_yaml::Value], kind: &str, name: &str) -> &'a serde_yaml::Value {
    docs.iter()
        .find(|d| d["kind"] == kind && d["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("no {kind} {name} in the stream"))
}

/// (kind, namespace, name): what identifies an object to the API server.
fn key(doc: &serde_yaml::Value) -> (String, String, String) {
    let text = |v: &serde_yaml::Value| v.as_str().unwrap_or_default().to_string();
    (
        text(&doc["kind"]),
        text(&doc["metadata"]["namespace"]),
        text(&doc["metadata"]["name"]),
    )
}

const FLAGS: &[&str] = &[
    "--mesh-name",
    "blue",
    "--registry",
    "registry.example.com/mesh",
    "--tag",
    "v2.0.0",
    "--replicas",
    "3",
    "--injector-memory-limit",
    "256Mi",
    "--sidecar-mode",
    "container",
    "--enable-tracing",
    "--tracing-address",
    "zipkin.tracing.svc.cluster.local",
    "--tracing-port",
    "9411",
];

#[test]
fn the_same_flags_print_the_same_bytes() {
    assert_eq!(install(&[]), install(&[]));
    assert_eq!(install(FLAGS), install(FLAGS));
}

#[test]
fn stream_has_the_whole_control_plane_crds_first_and_no_certificate() {
    let stream = install(&[]);
    assert!(!stream.contains("${"), "placeholder left in the stream");
    let docs = documents(&stream);
    find(&docs, "Namespace", "mesh-system");
    find(&docs, "MeshConfig", "mesh-config");
    find(&docs, "Deployment", "mesh-injector");
    find(&docs, "Service", "mesh-injector");
    let webhook = find(&docs, "MutatingWebhookConfiguration", "mesh-injector");
    for hook in webhook["webhooks"].as_sequence().expect("webhooks") {
        assert!(
            hook["clientConfig"].get("caBundle").is_none(),
            "the injector owns the caBundle"
        );
    }
    assert!(docs.iter().any(|d| d["kind"] == "ServiceAccount"));
    assert!(
        !docs.iter().any(|d| d["kind"] == "Secret"),
        "no key material in the stream"
    );
    let kinds: Vec<&str> = docs
        .iter()
        .map(|d| d["kind"].as_str().expect("kind"))
        .collect();
    let position = |kind: &str| kinds.iter().position(|k| *k == kind).expect(kind);
    assert_eq!(kinds[0], "CustomResourceDefinition");
    assert!(position("Namespace") < position("ServiceAccount"));
    assert!(position("RoleBinding") < position("Deployment"));
    assert!(position("Deployment") < position("Service"));
    assert!(position("Service") < position("MutatingWebhookConfiguration"));
    assert_eq!(kinds.last(), Some(&"MeshConfig"));
}

#[test]
fn flags_reach_the_mesh_config_the_injector_and_the_webhook() {
    let docs = documents(&install(FLAGS));
    let tracing = &find(&docs, "MeshConfig", "mesh-config")["spec"]["observability"]["tracing"];
    assert_eq!(tracing["enable"], true);
    assert_eq!(tracing["address"], "zipkin.tracing.svc.cluster.local");
    assert_eq!(tracing["port"], 9411);
    let deployment = find(&docs, "Deployment", "mesh-injector");
    assert_eq!(deployment["spec"]["replicas"], 3);
    let container = &deployment["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(
        container["image"],
        "registry.example.com/mesh/mesh-injector:v2.0.0"
    );
    let args = serde_yaml::to_string(&container["args"]).expect("yaml");
    assert!(
        args.contains("registry.example.com/mesh/mesh-proxy:v2.0.0"),
        "{args}"
    );
    assert!(args.contains("container"), "{args}");
    let webhook = find(&docs, "MutatingWebhookConfiguration", "mesh-injector");
    assert_eq!(
        webhook["webhooks"][0]["namespaceSelector"]["matchLabels"]["tracemesh.dev/monitored-by"],
        "blue"
    );
}

#[test]
fn invalid_tracing_flags_are_refused() {
    let output = mesh(&["install", "--enable-tracing", "--tracing-address", ""]);
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("spec.observability.tracing.address"),
        "{stderr}"
    );
    assert!(
        output.stdout.is_empty(),
        "nothing may be printed for kubectl to apply"
    );
}

#[test]
fn bad_flag_values_are_usage_errors() {
    for args in [
        &["install", "--mesh-name", "no spaces"][..],
        &["install", "--mesh-name=-dash"],
        &["uninstall", "--mesh-name", &"m".repeat(64)],
        &["install", "--replicas", "0"],
        &["install", "--tag", "v1:2"],
        &["install", "--injector-cpu-request", "fast"],
    ] {
        let output = mesh(args);
        assert_eq!(output.status.code(), Some(2), "{args:?}");
        assert!(output.stdout.is_empty());
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.contains("invalid value"), "{args:?}: {stderr}");
    }
}

#[test]
fn uninstall_deletes_what_install_made_webhook_first_and_names_the_labels_left() {
    let output = mesh(&["uninstall", "--mesh-name", "blue"]);
    assert!(output.status.success());
    let deleted = documents(&String::from_utf8(output.stdout).expect("utf-8"));
    let installed = documents(&install(&["--mesh-name", "blue"]));
    let mut deleted_keys: Vec<_> = deleted.iter().map(key).collect();
    let mut installed_keys: Vec<_> = installed.iter().map(key).collect();
    assert_eq!(deleted[0]["kind"], "MutatingWebhookConfiguration");
    let position = |kind: &str| {
        deleted
            .iter()
            .position(|d| d["kind"] == kind)
            .unwrap_or_else(|| panic!("{kind} not deleted"))
    };
    assert!(
        position("Deployment") < position("ClusterRole"),
        "the injector goes before its rights"
    );
    assert!(position("Namespace") > position("Service"));
    deleted_keys.sort();
    installed_keys.sort();
    assert_eq!(deleted_keys, installed_keys);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("tracemesh.dev/monitored-by=blue"),
        "{stderr}"
    );
    assert!(stderr.contains("kubectl label namespace"), "{stderr}");
}

/// Runs a third-party tool the test needs; a missing one is a setup problem, said as such.
fn tool(args: &[&str], what: &str) -> Output {
    Command::new(args[0])
        .args(&args[1..])
        .output()
        .unwrap_or_else(|err| {
            panic!(
                "{what}: cannot run {} ({err}); run scripts/setup to install it",
                args[0]
            )
        })
}

fn kustomize() -> String {
    let manifests = Path::new(env!("CARGO_MANIFEST_DIR")).join("../manifests");
    let output = tool(
        &["kubectl", "kustomize", manifests.to_str().expect("utf-8")],
        "kubectl kustomize",
    );
    assert!(
        output.status.success(),
        "kubectl kustomize manifests failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).expect("utf-8")
}

#[test]
fn kustomize_renders_the_objects_mesh_install_prints() {
    let kustomized = kustomize();
    assert!(
        !kustomized.contains("${"),
        "placeholder in the kustomize output"
    );
    let mut from_kustomize = documents(&kustomized);
    let mut from_install = documents(&install(&[]));
    from_kustomize.sort_by_key(key);
    from_install.sort_by_key(key);
    assert_eq!(
        from_kustomize.iter().map(key).collect::<Vec<_>>(),
        from_install.iter().map(key).collect::<Vec<_>>()
    );
    for (kustomized, installed) in from_kustomize.iter().zip(&from_install) {
        assert_eq!(kustomized, installed, "{:?} differs", key(installed));
    }
}

fn kubernetes_validate(stream: &str, what: &str) {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("stream.yaml");
    std::fs::write(&file, stream).expect("write");
    let output = tool(
        &[
            "kubernetes-validate",
            "--strict",
            "--kubernetes-version",
            KUBERNETES_VERSION,
            file.to_str().expect("utf-8"),
        ],
        "kubernetes-validate",
    );
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        output.status.success(),
        "{what}: kubernetes-validate failed:\n{report}"
    );
    assert!(!report.contains("ERROR"), "{what}: {report}");
    // Every built-in object was checked (only the custom MeshConfig has no built-in schema).
    let built_in = documents(stream)
        .iter()
        .filter(|d| d["kind"] != "MeshConfig")
        .count();
    assert_eq!(
        report.matches("passed for resource").count(),
        built_in,
        "{what}: {report}"
    );
}

#[test]
fn install_and_kustomize_outputs_pass_kubernetes_validate() {
    kubernetes_validate(&install(&[]), "mesh install");
    kubernetes_validate(&install(FLAGS), "mesh install with every flag");
    kubernetes_validate(&kustomize(), "kubectl kustomize manifests");
}

#[test]
fn mesh_config_matches_the_crd_schema() {
    // kubernetes-validate knows no custom kinds, so the MeshConfig is checked against the CRD's
    // openAPIV3Schema with jsonschema (a dependency of kubernetes-validate).
    let docs = documents(&install(&["--enable-tracing"]));
    let crd = find(
        &docs,
        "CustomResourceDefinition",
        "meshconfigs.config.tracemesh.dev",
    );
    let version = crd["spec"]["versions"]
        .as_sequence()
        .expect("versions")
        .iter()
        .find(|v| v["name"] == "v1alpha1")
        .expect("v1alpha1");
    let schema = serde_json::to_string(&version["schema"]["openAPIV3Schema"]).expect("schema");
    let object = serde_json::to_string(find(&docs, "MeshConfig", "mesh-config")).expect("object");
    let script = "import json, sys, jsonschema\n\
                  schema, obj = json.loads(sys.argv[1]), json.loads(sys.argv[2])\n\
                  errors = [e.message for e in jsonschema.Draft4Validator(schema).iter_errors(obj)]\n\
                  print('\\n'.join(errors))\n\
                  sys.exit(1 if errors else 0)\n";
    // The check itself can fail: an out-of-range port is refused by the same schema.
    let mut broken = find(&docs, "MeshConfig", "mesh-config").clone();
    broken["spec"]["observability"]["tracing"]["port"] = serde_yaml::Value::from(70000);
    let broken = serde_json::to_string(&broken).expect("object");
    let output = tool(&["python3", "-c", script, &schema, &broken], "jsonschema");
    assert!(
        !output.status.success(),
        "the CRD schema accepts port 70000"
    );

    let output = tool(&["python3", "-c", script, &schema, &object], "jsonschema");
    assert!(
        output.status.success(),
        "MeshConfig does not match the CRD schema:\n{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}
