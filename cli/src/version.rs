//! `mesh version`: the client's version and, when the cluster answers, the control plane's, read
//! from the image tag of the injector's Deployment (the one thing every install sets, whatever
//! registry it came from). An unreachable cluster is reported, not an error: the client's version
//! is still worth printing (as `linkerd version` does).

use crate::output::{self, Format};
use k8s_openapi::api::apps::v1::Deployment;
use kube::api::Api;
use kube::Client;
use serde::Serialize;
use std::io::Write;

/// The Deployment whose image tag is the control plane's version.
const INJECTOR_DEPLOYMENT: &str = "mesh-injector";

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Output format
    #[arg(short, long, value_enum, default_value = "table")]
    pub output: Format,
    /// Only the client's version; do not ask the cluster
    #[arg(long)]
    pub client: bool,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Versions {
    pub client: ClientVersion,
    /// None when not asked for, or when the cluster did not say (then `controlPlaneError` says why).
    pub control_plane: Option<ControlPlane>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub control_plane_error: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct ClientVersion {
    pub version: String,
}

#[derive(Debug, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ControlPlane {
    pub version: String,
    pub image: String,
    pub replicas: i32,
    pub ready_replicas: i32,
}

pub fn client_version() -> String {
    format!("v{}", env!("CARGO_PKG_VERSION"))
}

/// The control plane as the injector's Deployment describes it.
pub async fn control_plane(client: Client) -> Result<ControlPlane, String> {
    let deployments: Api<Deployment> = Api::namespaced(client, mesh_config::DEFAULT_NAMESPACE);
    let deployment = match deployments.get_opt(INJECTOR_DEPLOYMENT).await {
        Ok(Some(deployment)) => deployment,
        Ok(None) => {
            return Err(format!(
                "not installed (no Deployment {}/{INJECTOR_DEPLOYMENT})",
                mesh_config::DEFAULT_NAMESPACE
            ))
        }
        Err(err) => return Err(format!("the cluster did not answer: {err}")),
    };
    let image = deployment
        .spec
        .as_ref()
        .and_then(|spec| spec.template.spec.as_ref())
        .and_then(|pod| {
            pod.containers
                .iter()
                .find_map(|c| c.image.clone().filter(|i| i.contains(INJECTOR_DEPLOYMENT)))
        })
        .ok_or_else(|| {
            format!("the Deployment {INJECTOR_DEPLOYMENT} runs no mesh-injector image")
        })?;
    let status = deployment.status.unwrap_or_default();
    Ok(ControlPlane {
        version: image_tag(&image).to_string(),
        replicas: deployment.spec.and_then(|s| s.replicas).unwrap_or(1),
        ready_replicas: status.ready_replicas.unwrap_or(0),
        image,
    })
}

/// The tag of an image reference; its digest when pinned by digest; `latest` when it has neither,
/// as the container runtime reads it.
fn image_tag(image: &str) -> &str {
    if let Some((_, digest)) = image.split_once('@') {
        return digest;
    }
    let name = image.rsplit('/').next().unwrap_or(image);
    name.split_once(':').map(|(_, tag)| tag).unwrap_or("latest")
}

/// Prints the versions; `client` is None when the cluster is not to be asked (`--client`, the
/// local backend) or could not be configured (then `not_asked` says why).
pub async fn run(
    args: &Args,
    client: Result<Client, String>,
    out: &mut impl Write,
) -> anyhow::Result<()> {
    let (control_plane, control_plane_error) = if args.client {
        (None, None)
    } else {
        match client {
            Ok(client) => match control_plane(client).await {
                Ok(plane) => (Some(plane), None),
                Err(err) => (None, Some(err)),
            },
            Err(err) => (None, Some(err)),
        }
    };
    let versions = Versions {
        client: ClientVersion {
            version: client_version(),
        },
        control_plane,
        control_plane_error,
    };
    if let Some(text) = output::serialized(&versions, args.output)? {
        out.write_all(text.as_bytes())?;
        return Ok(());
    }
    writeln!(out, "Client version: {}", versions.client.version)?;
    match (&versions.control_plane, &versions.control_plane_error) {
        (Some(plane), _) => writeln!(
            out,
            "Control plane version: {} ({INJECTOR_DEPLOYMENT} {}/{} ready, image {})",
            plane.version, plane.ready_replicas, plane.replicas, plane.image
        )?,
        (None, Some(err)) => writeln!(out, "Control plane version: unavailable: {err}")?,
        (None, None) => {}
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::kube::tests::{expect, mock_client, not_found, reply};
    use serde_json::json;

    const DEPLOYMENT_PATH: &str = "/apis/apps/v1/namespaces/mesh-system/deployments/mesh-injector";

    pub fn deployment(image: &str, replicas: i32, ready: i32) -> serde_json::Value {
        json!({
            "apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "mesh-injector", "namespace": "mesh-system"},
            "spec": {"replicas": replicas,
                     "selector": {"matchLabels": {"app.kubernetes.io/name": "mesh-injector"}},
                     "template": {"spec": {"containers": [{"name": "mesh-injector", "image": image}]}}},
            "status": {"replicas": replicas, "readyReplicas": ready}
        })
    }

    async fn version_json(reply_with: Option<(u16, serde_json::Value)>) -> serde_json::Value {
        let (backend, mut handle) = mock_client();
        let server = tokio::spawn(async move {
            if let Some((code, body)) = reply_with {
                let (_, send) = expect(&mut handle, "GET", DEPLOYMENT_PATH).await;
                reply(send, code, body);
            }
        });
        let args = Args {
            output: Format::Json,
            client: false,
        };
        let mut out = Vec::new();
        run(&args, Ok(backend.client()), &mut out)
            .await
            .expect("version never fails on the cluster's account");
        server.await.expect("server");
        serde_json::from_slice(&out).expect("JSON")
    }

    #[tokio::test]
    async fn the_control_plane_version_is_the_injector_image_tag() {
        let value = version_json(Some((
            200,
            deployment("registry.example.com:5000/mesh/mesh-injector:v0.3.1", 2, 1),
        )))
        .await;
        assert_eq!(value["client"]["version"], client_version());
        assert_eq!(value["controlPlane"]["version"], "v0.3.1");
        assert_eq!(value["controlPlane"]["readyReplicas"], 1);
        assert!(value.get("controlPlaneError").is_none());
    }

    #[tokio::test]
    async fn a_missing_control_plane_is_reported_not_an_error() {
        let value = version_json(Some((404, not_found("deployments.apps", "mesh-injector")))).await;
        assert_eq!(value["client"]["version"], client_version());
        assert!(value["controlPlane"].is_null());
        assert!(
            value["controlPlaneError"]
                .as_str()
                .expect("a reason")
                .contains("not installed"),
            "{value}"
        );
    }

    #[tokio::test]
    async fn text_output_names_both_and_client_only_asks_nothing() {
        let (backend, handle) = mock_client();
        drop(handle);
        let mut out = Vec::new();
        let args = Args {
            output: Format::Table,
            client: true,
        };
        run(&args, Ok(backend.client()), &mut out)
            .await
            .expect("ok");
        assert_eq!(
            String::from_utf8(out).expect("utf-8"),
            format!("Client version: {}\n", client_version())
        );
        let mut out = Vec::new();
        let args = Args {
            output: Format::Table,
            client: false,
        };
        run(&args, Err("no kubeconfig".into()), &mut out)
            .await
            .expect("ok");
        assert!(String::from_utf8(out)
            .expect("utf-8")
            .contains("Control plane version: unavailable: no kubeconfig"));
    }

    #[test]
    fn tags_digests_and_bare_names() {
        assert_eq!(
            image_tag("ghcr.io/tracemesh/mesh-injector:v0.1.0"),
            "v0.1.0"
        );
        assert_eq!(image_tag("localhost:5000/mesh-injector"), "latest");
        assert_eq!(
            image_tag("ghcr.io/t/mesh-injector@sha256:abc"),
            "sha256:abc"
        );
    }
}
