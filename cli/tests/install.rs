//! `mesh install` as `kubectl apply -f -` would receive it: every document parses, the expected
//! objects are there, the webhook trusts exactly the CA that signed the injector's serving
//! certificate, and the Kubernetes objects pass the `kubernetes-validate` schema check (with the
//! MeshConfig checked against the CRD's own OpenAPI schema).

use base64::Engine as _;
use rustls::client::danger::ServerCertVerifier;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use std::process::Command;
use std::sync::Arc;

/// The Kubernetes version the schemas are checked against (k8s-openapi's feature in Cargo.toml).
const KUBERNETES_VERSION: &str = "1.33.0";

fn install(args: &[&str]) -> String {
    let output = Command::new(env!("CARGO_BIN_EXE_mesh"))
        .arg("install")
        .args(args)
        .output()
        .expect("run mesh install");
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
        .unwrap_or_else(|| panic!("no {kind} {name} in the install stream"))
}

fn decode(value: &serde_yaml::Value) -> Vec<u8> {
    base64::engine::general_purpose::STANDARD
        .decode(value.as_str().expect("a base64 string"))
        .expect("valid base64")
}

fn verify(ca_pem: &[u8], cert_pem: &[u8], name: &str) -> Result<(), rustls::Error> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(CertificateDer::from_pem_slice(ca_pem).expect("CA PEM"))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier =
        rustls::client::WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider)
            .build()
            .expect("verifier");
    let cert = CertificateDer::from_pem_slice(cert_pem).expect("certificate PEM");
    let name = ServerName::try_from(name.to_string()).expect("name");
    verifier
        .verify_server_cert(&cert, &[], &name, &[], UnixTime::now())
        .map(|_| ())
}

#[test]
fn stream_has_the_whole_control_plane() {
    let stream = install(&[]);
    assert!(
        !stream.contains("${CA_BUNDLE}"),
        "placeholder left in the stream"
    );
    let docs = documents(&stream);
    find(&docs, "Namespace", "mesh-system");
    find(
        &docs,
        "CustomResourceDefinition",
        "meshconfigs.config.tracemesh.dev",
    );
    find(&docs, "MeshConfig", "mesh-config");
    find(&docs, "Deployment", "mesh-injector");
    find(&docs, "Service", "mesh-injector");
    assert!(docs.iter().any(|d| d["kind"] == "ServiceAccount"));
    assert!(docs
        .iter()
        .any(|d| d["kind"] == "MutatingWebhookConfiguration"));
    let secret = find(&docs, "Secret", "mesh-injector-tls");
    assert_eq!(secret["type"], "kubernetes.io/tls");
    assert_eq!(secret["metadata"]["namespace"], "mesh-system");
    // Namespace and CRD come before the objects that need them.
    let position = |kind: &str| docs.iter().position(|d| d["kind"] == kind).expect(kind);
    assert!(position("Namespace") < position("Secret"));
    assert!(position("CustomResourceDefinition") < position("MeshConfig"));
}

#[test]
fn webhook_trusts_the_ca_that_signed_the_serving_certificate() {
    let docs = documents(&install(&[]));
    let secret = find(&docs, "Secret", "mesh-injector-tls");
    let cert = decode(&secret["data"]["tls.crt"]);
    let ca = decode(&secret["data"]["ca.crt"]);
    let webhook = docs
        .iter()
        .find(|d| d["kind"] == "MutatingWebhookConfiguration")
        .expect("webhook");
    let hooks = webhook["webhooks"].as_sequence().expect("webhooks");
    assert!(!hooks.is_empty());
    for hook in hooks {
        let bundle = decode(&hook["clientConfig"]["caBundle"]);
        assert_eq!(bundle, ca, "caBundle differs from the Secret's ca.crt");
        let service = &hook["clientConfig"]["service"];
        let host = format!(
            "{}.{}.svc",
            service["name"].as_str().expect("service name"),
            service["namespace"].as_str().expect("service namespace")
        );
        verify(&bundle, &cert, &host).expect("the serving certificate verifies for the Service");
    }
    // A second install is a second CA: the first one's bundle does not trust it.
    let other = documents(&install(&[]));
    let other_cert = decode(&find(&other, "Secret", "mesh-injector-tls")["data"]["tls.crt"]);
    assert!(verify(&ca, &other_cert, "mesh-injector.mesh-system.svc").is_err());
}

#[test]
fn flags_reach_the_mesh_config_and_the_webhook() {
    let docs = documents(&install(&[
        "--mesh-name",
        "blue",
        "--enable-tracing",
        "--tracing-address",
        "zipkin.tracing.svc.cluster.local",
        "--tracing-port",
        "9411",
        "--tracing-endpoint",
        "/api/v2/spans",
    ]));
    let tracing = &find(&docs, "MeshConfig", "mesh-config")["spec"]["observability"]["tracing"];
    assert_eq!(tracing["enable"], true);
    assert_eq!(tracing["address"], "zipkin.tracing.svc.cluster.local");
    assert_eq!(tracing["port"], 9411);
    let webhook = docs
        .iter()
        .find(|d| d["kind"] == "MutatingWebhookConfiguration")
        .expect("webhook");
    let text = serde_yaml::to_string(&webhook["webhooks"][0]["namespaceSelector"]).expect("yaml");
    assert!(
        text.contains("blue"),
        "selector does not name the mesh: {text}"
    );
}

#[test]
fn invalid_tracing_flags_are_refused() {
    let output = Command::new(env!("CARGO_BIN_EXE_mesh"))
        .args(["install", "--enable-tracing", "--tracing-address", ""])
        .output()
        .expect("run mesh install");
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

/// Runs a Python validator; a missing validator is a setup problem, said as such.
fn python(args: &[&str], what: &str) -> std::process::Output {
    Command::new(args[0])
        .args(&args[1..])
        .output()
        .unwrap_or_else(|err| {
            panic!("{what}: cannot run {} ({err}); run scripts/setup to install tests/requirements.txt", args[0])
        })
}

#[test]
fn objects_pass_kubernetes_validate() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("install.yaml");
    std::fs::write(&file, install(&["--enable-tracing"])).expect("write");
    let output = python(
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
        "kubernetes-validate failed:\n{report}"
    );
    assert!(!report.contains("ERROR"), "{report}");
    // Every built-in object was checked (only the custom MeshConfig has no built-in schema).
    let stream = std::fs::read_to_string(&file).expect("read");
    let built_in = documents(&stream)
        .iter()
        .filter(|d| d["kind"] != "MeshConfig")
        .count();
    assert_eq!(
        report.matches("passed for resource").count(),
        built_in,
        "{report}"
    );
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
    let output = python(&["python3", "-c", script, &schema, &broken], "jsonschema");
    assert!(
        !output.status.success(),
        "the CRD schema accepts port 70000"
    );

    let output = python(&["python3", "-c", script, &schema, &object], "jsonschema");
    assert!(
        output.status.success(),
        "MeshConfig does not match the CRD schema:\n{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}
