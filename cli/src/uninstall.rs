//! `mesh uninstall`: what `kubectl delete -f -` needs to remove the control plane, in a safe order,
//! and (on stderr) what stays behind: the enrolment labels of the mesh's namespaces, which
//! belong to their namespaces' owners and are not the control plane's to delete.

use crate::manifests::{self, Object};
use crate::namespace::{
    parse_mesh_name, DEFAULT_MESH_NAME, MONITORED_BY_LABEL, SIDECAR_INJECTION_ANNOTATION,
};
use serde_json::json;
use std::io::Write;

#[derive(Debug, clap::Args)]
#[command(after_help = "\
Examples:
  mesh uninstall | kubectl delete --ignore-not-found -f -

The webhook goes first, so that no pod creation waits on an injector that is going away; the
mesh-system namespace (with the Secret the injector made) goes last but for the CRD. Running pods
keep their sidecars until they are restarted.")]
pub struct Args {
    /// Name of the mesh (whose namespace labels are listed as left behind)
    #[arg(long, default_value = DEFAULT_MESH_NAME, value_parser = parse_mesh_name)]
    pub mesh_name: String,
}

pub fn run(args: &Args, out: &mut impl Write, err: &mut impl Write) -> anyhow::Result<()> {
    out.write_all(render(&manifests::EMBEDDED)?.as_bytes())?;
    err.write_all(left_behind(&args.mesh_name).as_bytes())?;
    Ok(())
}

/// Each object reduced to what identifies it, so the stream deletes whatever version of the
/// object the cluster holds, with nothing that could be mistaken for a desired state.
pub fn render(manifests: &manifests::Manifests) -> anyhow::Result<String> {
    let mut objects = manifests::objects(manifests)?;
    manifests::sort_for_delete(&mut objects);
    let texts = objects
        .iter()
        .map(identity)
        .map(|value| serde_yaml::to_string(&value))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(manifests::stream(texts.iter().map(String::as_str)))
}

fn identity(object: &Object) -> serde_json::Value {
    let mut metadata = json!({"name": object.name()});
    if let Some(namespace) = object.namespace() {
        metadata["namespace"] = json!(namespace);
    }
    json!({
        "apiVersion": object.value["apiVersion"].as_str().unwrap_or_default(),
        "kind": object.kind(),
        "metadata": metadata,
    })
}

/// What `mesh uninstall` leaves in place and how to remove it.
fn left_behind(mesh: &str) -> String {
    format!(
        "Namespaces enrolled in mesh [{mesh}] keep the label {MONITORED_BY_LABEL}={mesh} and the \
         annotation {SIDECAR_INJECTION_ANNOTATION}; their running pods keep their sidecars until \
         restarted.\n\
         List them:   kubectl get namespaces -l {MONITORED_BY_LABEL}={mesh}\n\
         Remove them: kubectl annotate namespace -l {MONITORED_BY_LABEL}={mesh} \
         {SIDECAR_INJECTION_ANNOTATION}- && kubectl label namespace -l {MONITORED_BY_LABEL}={mesh} \
         {MONITORED_BY_LABEL}-\n\
         (or, one at a time: mesh namespace remove NAMESPACE --mesh-name {mesh})\n"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stream_names_every_installed_object_in_delete_order() {
        let stream = render(&manifests::EMBEDDED).expect("render");
        let deleted: Vec<serde_json::Value> = manifests::split_documents(&stream)
            .into_iter()
            .map(|doc| serde_yaml::from_str(doc).expect("parses"))
            .collect();
        let installed = manifests::objects(&manifests::EMBEDDED).expect("objects");
        assert_eq!(deleted.len(), installed.len());
        for object in &installed {
            assert!(
                deleted.iter().any(|d| d["kind"] == object.kind()
                    && d["metadata"]["name"] == object.name()
                    && d["metadata"]["namespace"].as_str() == object.namespace()),
                "{} {} is not deleted",
                object.kind(),
                object.name()
            );
        }
        assert_eq!(deleted[0]["kind"], "MutatingWebhookConfiguration");
        // Identity only: no spec that could read as a desired state.
        assert!(deleted.iter().all(|d| d.get("spec").is_none()));
    }

    #[test]
    fn stderr_says_which_labels_remain_and_how_to_remove_them() {
        let (mut out, mut err) = (Vec::new(), Vec::new());
        run(
            &Args {
                mesh_name: "blue".into(),
            },
            &mut out,
            &mut err,
        )
        .expect("run");
        let err = String::from_utf8(err).expect("utf-8");
        assert!(err.contains("tracemesh.dev/monitored-by=blue"), "{err}");
        assert!(err.contains("kubectl label namespace -l tracemesh.dev/monitored-by=blue tracemesh.dev/monitored-by-"), "{err}");
        assert!(!String::from_utf8(out).expect("utf-8").contains("blue"));
    }
}
