//! `mesh install`: the whole control plane as one multi-document YAML stream for
//! `kubectl apply -f -`. The manifests are compiled in, so the CLI and the manifests of one
//! release always match; only the TLS material and the flags' choices are made at run time.

use crate::certs;
use crate::namespace::{DEFAULT_MESH_NAME, MONITORED_BY_LABEL};
use anyhow::Context as _;
use base64::Engine as _;
use serde_json::json;
use std::io::Write;

const NAMESPACE: &str = "";
const CRD: &str = "";
const MESH_CONFIG: &str = "";
const INJECTOR: &str = "";
const WEBHOOK: &str = "";

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
    out.write_all(render(args)?.as_bytes())?;
    Ok(())
}

pub fn render(args: &Args) -> anyhow::Result<String> {
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
    let webhook = WEBHOOK.replace(CA_BUNDLE_PLACEHOLDER, &b64(&tls.ca_pem));

    let documents = [
        NAMESPACE.to_string(),
        CRD.to_string(),
        serde_yaml::to_string(&secret)?,
        with_mesh_name(INJECTOR, &args.mesh_name)?,
        with_mesh_name(&webhook, &args.mesh_name)?,
        mesh_config(args)?,
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
fn mesh_config(args: &Args) -> anyhow::Result<String> {
    let parsed = mesh_config::parse(MESH_CONFIG).context("manifests/mesh-config.yaml")?;
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
