//! `mesh install`: the whole control plane as one multi-document YAML stream for
//! `kubectl apply -f -`. The manifests are compiled in, so the CLI and the manifests of one
//! release always match; only the TLS material and the flags' choices are made at run time.

use crate::certs;
use crate::namespace::{DEFAULT_MESH_NAME, MONITORED_BY_LABEL};
use anyhow::Context as _;
use base64::Engine as _;
use serde_json::json;
use std::io::Write;

/// The manifests of this release, as the INSTALL stream orders them.
pub struct Manifests {
    pub namespace: &'static str,
    pub crd: &'static str,
    pub mesh_config: &'static str,
    pub injector: &'static str,
    pub webhook: &'static str,
}

pub const EMBEDDED: Manifests = Manifests {
    namespace: include_str!("../../manifests/namespace.yaml"),
    crd: include_str!("../../manifests/crd.yaml"),
    mesh_config: include_str!("../../manifests/mesh-config.yaml"),
    injector: include_str!("../../manifests/injector.yaml"),
    webhook: include_str!("../../manifests/webhook.yaml"),
};

/// The literal the webhook manifest carries where the CA bundle goes.
const CA_BUNDLE_PLACEHOLDER: &str = "${CA_BUNDLE}";
pub const TLS_SECRET: &str = "mesh-injector-tls";

#[derive(Debug, clap::Args)]
#[command(after_help = "\
Examples:
  # Install the mesh
  mesh install | kubectl apply -f -

  # Install with tracing to a Zipkin in the cluster
  mesh install --enable-tracing --tracing-address zipkin.tracing.svc.cluster.local \\
    --tracing-port 9411 --tracing-endpoint /api/v2/spans | kubectl apply -f -

The MeshConfig custom resource comes last: if kubectl reports that its kind is unknown because the
CRD was not yet established, run the same command again.")]
pub struct Args {
    /// Name of the mesh (the value of the tracemesh.dev/monitored-by label it watches)
    #[arg(long, default_value = DEFAULT_MESH_NAME)]
    pub mesh_name: String,
    /// Turn span export on in the MeshConfig
    #[arg(long)]
    pub enable_tracing: bool,
    /// Collector host name or IP, no scheme
    #[arg(long, value_name = "HOST")]
    pub tracing_address: Option<String>,
    /// Collector port
    #[arg(long, value_name = "PORT")]
    pub tracing_port: Option<u16>,
    /// Collector HTTP path, e.g. /api/v2/spans
    #[arg(long, value_name = "PATH")]
    pub tracing_endpoint: Option<String>,
}

pub fn run(args: &Args, out: &mut impl Write) -> anyhow::Result<()> {
    out.write_all(render(&EMBEDDED, args)?.as_bytes())?;
    Ok(())
}

pub fn render(manifests: &Manifests, args: &Args) -> anyhow::Result<String> {
    let namespace = mesh_config::DEFAULT_NAMESPACE;
    let tls = certs::generate(namespace).context("generating the webhook certificates")?;
    let b64 = |text: &str| base64::engine::general_purpose::STANDARD.encode(text);

    let secret = json!({
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": TLS_SECRET, "namespace": namespace,
                     "labels": {"app.kubernetes.io/part-of": "tracemesh"}},
        "type": "kubernetes.io/tls",
        "data": {
            "tls.crt": b64(&tls.cert_pem),
            "tls.key": b64(&tls.key_pem),
            "ca.crt": b64(&tls.ca_pem),
        }
    });
    let webhook = manifests
        .webhook
        .replace(CA_BUNDLE_PLACEHOLDER, &b64(&tls.ca_pem));

    let documents = [
        manifests.namespace.to_string(),
        manifests.crd.to_string(),
        serde_yaml::to_string(&secret)?,
        with_mesh_name(manifests.injector, &args.mesh_name)?,
        with_mesh_name(&webhook, &args.mesh_name)?,
        mesh_config(manifests.mesh_config, args)?,
    ];
    let mut stream = String::new();
    for document in documents {
        for part in split_documents(&document) {
            stream.push_str("---\n");
            stream.push_str(part.trim_end());
            stream.push('\n');
        }
    }
    Ok(stream)
}

/// The default MeshConfig with the tracing flags merged in, validated like any other patch.
fn mesh_config(manifest: &str, args: &Args) -> anyhow::Result<String> {
    let parsed = mesh_config::parse(manifest).context("manifests/mesh-config.yaml")?;
    let mut tracing = serde_json::Map::new();
    if args.enable_tracing {
        tracing.insert("enable".into(), json!(true));
    }
    if let Some(address) = &args.tracing_address {
        tracing.insert("address".into(), json!(address));
    }
    if let Some(port) = args.tracing_port {
        tracing.insert("port".into(), json!(port));
    }
    if let Some(endpoint) = &args.tracing_endpoint {
        tracing.insert("endpoint".into(), json!(endpoint));
    }
    let config = mesh_config::merge_patch(
        &parsed.config,
        &json!({"spec": {"observability": {"tracing": tracing}}}),
    )
    .map_err(|err| {
        anyhow::anyhow!(
            "the tracing flags make an invalid MeshConfig:\n{}",
            crate::backend::problem_lines(&err)
        )
    })?;
    Ok(config.to_yaml())
}

/// Points the injector and the webhook's namespace selector at another mesh name. Done on the
/// parsed documents (label values and the injector's `--mesh-name` argument), not on text, so
/// that nothing else that happens to read "tracemesh" changes.
fn with_mesh_name(manifest: &str, mesh: &str) -> anyhow::Result<String> {
    if mesh == DEFAULT_MESH_NAME {
        return Ok(manifest.to_string());
    }
    let mut out = String::new();
    for part in split_documents(manifest) {
        let mut value: serde_yaml::Value = serde_yaml::from_str(part)?;
        rename_mesh(&mut value, mesh);
        out.push_str("---\n");
        out.push_str(&serde_yaml::to_string(&value)?);
    }
    Ok(out)
}

fn rename_mesh(value: &mut serde_yaml::Value, mesh: &str) {
    use serde_yaml::Value;
    match value {
        Value::Mapping(map) => {
            for (key, item) in map.iter_mut() {
                if key.as_str() == Some(MONITORED_BY_LABEL)
                    && item.as_str() == Some(DEFAULT_MESH_NAME)
                {
                    *item = Value::String(mesh.to_string());
                } else {
                    rename_mesh(item, mesh);
                }
            }
            // An env var `MESH_NAME` of the injector's container.
            if map.get("name").and_then(Value::as_str) == Some("MESH_NAME") {
                map.insert(Value::from("value"), Value::from(mesh));
            }
        }
        Value::Sequence(items) => {
            let mut next_is_value = false;
            for item in items.iter_mut() {
                if let Some(text) = item.as_str() {
                    if next_is_value {
                        *item = Value::String(mesh.to_string());
                        next_is_value = false;
                        continue;
                    }
                    if text == "--mesh-name" {
                        next_is_value = true;
                    } else if text.starts_with("--mesh-name=") {
                        *item = Value::String(format!("--mesh-name={mesh}"));
                    }
                } else {
                    rename_mesh(item, mesh);
                }
            }
        }
        _ => {}
    }
}

/// The non-empty documents of a YAML stream.
fn split_documents(stream: &str) -> Vec<&str> {
    let mut documents = Vec::new();
    let mut start = 0;
    let mut offset = 0;
    for line in stream.split_inclusive('\n') {
        if line.trim_end() == "---" || line.starts_with("--- ") {
            documents.push(&stream[start..offset]);
            start = offset + line.len();
        }
        offset += line.len();
    }
    documents.push(&stream[start..]);
    documents
        .into_iter()
        .filter(|doc| {
            doc.lines()
                .any(|line| !line.trim().is_empty() && !line.trim_start().starts_with('#'))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Small stand-ins with the shapes the real manifests have, so the rendering logic is tested
    /// on its own; the embedded manifests are tested through the binary in tests/install.rs.
    const SAMPLE: Manifests = Manifests {
        namespace: "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: mesh-system\n",
        crd: "# the CRD\n---\napiVersion: apiextensions.k8s.io/v1\nkind: CustomResourceDefinition\nmetadata:\n  name: meshconfigs.config.tracemesh.dev\n",
        mesh_config: "apiVersion: config.tracemesh.dev/v1alpha1\nkind: MeshConfig\nmetadata:\n  name: mesh-config\n  namespace: mesh-system\nspec: {}\n",
        injector: "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: mesh-injector\n  namespace: mesh-system\nspec:\n  template:\n    spec:\n      containers:\n      - name: injector\n        args: [\"--mesh-name\", \"tracemesh\", \"--listen=0.0.0.0:9090\"]\n        env:\n        - name: MESH_NAME\n          value: tracemesh\n",
        webhook: "apiVersion: admissionregistration.k8s.io/v1\nkind: MutatingWebhookConfiguration\nmetadata:\n  name: mesh-injector\nwebhooks:\n- name: inject.tracemesh.dev\n  clientConfig:\n    caBundle: ${CA_BUNDLE}\n  namespaceSelector:\n    matchLabels:\n      tracemesh.dev/monitored-by: tracemesh\n",
    };

    fn args(mesh: &str) -> Args {
        Args {
            mesh_name: mesh.into(),
            enable_tracing: false,
            tracing_address: None,
            tracing_port: None,
            tracing_endpoint: None,
        }
    }

    fn documents(stream: &str) -> Vec<serde_yaml::Value> {
        split_documents(stream)
            .into_iter()
            .map(|doc| serde_yaml::from_str(doc).expect("each document parses"))
            .collect()
    }

    #[test]
    fn stream_holds_every_object_once_with_the_secret_before_the_injector() {
        let docs = documents(&render(&SAMPLE, &args("tracemesh")).expect("render"));
        let kinds: Vec<_> = docs
            .iter()
            .map(|d| d["kind"].as_str().expect("kind"))
            .collect();
        assert_eq!(
            kinds,
            [
                "Namespace",
                "CustomResourceDefinition",
                "Secret",
                "Deployment",
                "MutatingWebhookConfiguration",
                "MeshConfig"
            ]
        );
    }

    #[test]
    fn webhook_ca_bundle_is_the_ca_that_signed_the_serving_certificate() {
        let docs = documents(&render(&SAMPLE, &args("tracemesh")).expect("render"));
        let b64 = base64::engine::general_purpose::STANDARD;
        let decode = |value: &serde_yaml::Value| {
            String::from_utf8(b64.decode(value.as_str().expect("string")).expect("base64"))
                .expect("PEM")
        };
        let secret = &docs[2];
        assert_eq!(secret["type"], "kubernetes.io/tls");
        assert_eq!(secret["metadata"]["name"], TLS_SECRET);
        let bundle = decode(&docs[4]["webhooks"][0]["clientConfig"]["caBundle"]);
        assert_eq!(bundle, decode(&secret["data"]["ca.crt"]));
        let cert = decode(&secret["data"]["tls.crt"]);
        crate::certs::tests::verify(&bundle, &cert, "mesh-injector.mesh-system.svc")
            .expect("chain");
        assert!(decode(&secret["data"]["tls.key"]).contains("PRIVATE KEY"));
    }

    #[test]
    fn mesh_name_reaches_the_selector_the_args_and_the_env() {
        let docs = documents(&render(&SAMPLE, &args("blue")).expect("render"));
        let container = &docs[3]["spec"]["template"]["spec"]["containers"][0];
        assert_eq!(container["args"][1], "blue");
        assert_eq!(container["args"][2], "--listen=0.0.0.0:9090");
        assert_eq!(container["env"][0]["value"], "blue");
        assert_eq!(
            docs[4]["webhooks"][0]["namespaceSelector"]["matchLabels"][MONITORED_BY_LABEL],
            "blue"
        );
    }

    #[test]
    fn tracing_flags_set_the_mesh_config_and_are_validated() {
        let mut with_tracing = args("tracemesh");
        with_tracing.enable_tracing = true;
        with_tracing.tracing_address = Some("zipkin.tracing".into());
        with_tracing.tracing_port = Some(9411);
        with_tracing.tracing_endpoint = Some("/api/v2/spans".into());
        let docs = documents(&render(&SAMPLE, &with_tracing).expect("render"));
        let tracing = &docs[5]["spec"]["observability"]["tracing"];
        assert_eq!(tracing["enable"], true);
        assert_eq!(tracing["address"], "zipkin.tracing");

        let mut bad = args("tracemesh");
        bad.tracing_endpoint = Some("no-slash".into());
        let err = render(&SAMPLE, &bad).expect_err("invalid endpoint");
        assert!(
            err.to_string()
                .contains("spec.observability.tracing.endpoint"),
            "{err}"
        );
    }

    #[test]
    fn split_ignores_empty_and_comment_only_documents() {
        assert_eq!(
            split_documents("---\n# c\n---\na: 1\n---\n"),
            vec!["a: 1\n"]
        );
        assert_eq!(split_documents("a: 1\n--- \nb: 2\n").len(), 2);
    }
}
