//! The `tracemesh.dev/stitching` annotation: a pod's (or its namespace's) own stitching mode,
//! handed to the sidecar as `MESH_STITCHING`, where it wins over the MeshConfig's
//! `spec.observability.tracing.stitching`.
//!
//! Per pod because the right mode is a property of the app: `in-flight` is exact for an app
//! that serves one request at a time and merely ambiguous for the others, so a team turns it on
//! where it knows the app, not mesh-wide.

use k8s_openapi::api::core::v1::Pod;
use mesh_config::Stitching;

use crate::annotations as ann;
use crate::inject::NamespaceInfo;

/// The pod's annotation, else the namespace's; `None` follows the MeshConfig. An unknown mode
/// is refused (the message goes back to whoever created the pod) rather than ignored, so a
/// typo never silently leaves traces disconnected.
pub fn choice(pod: &Pod, ns: Option<&NamespaceInfo>) -> Result<Option<Stitching>, String> {
    let from_pod = pod
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(ann::STITCHING))
        .map(|v| ("pod", v));
    let from_ns = ns
        .and_then(|ns| ns.annotations.get(ann::STITCHING))
        .map(|v| ("namespace", v));
    let Some((source, value)) = from_pod.or(from_ns) else {
        return Ok(None);
    };
    value
        .parse()
        .map(Some)
        .map_err(|e| format!("{source} annotation {}: {e}", ann::STITCHING))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(annotations: &[(&str, &str)]) -> Pod {
        let mut pod = Pod::default();
        pod.metadata.annotations = Some(
            annotations
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        );
        pod
    }

    fn ns(value: &str) -> NamespaceInfo {
        NamespaceInfo {
            annotations: [(ann::STITCHING.to_string(), value.to_string())].into(),
            ..Default::default()
        }
    }

    #[test]
    fn pod_wins_over_namespace_and_neither_follows_the_mesh_config() {
        assert_eq!(choice(&pod(&[]), None), Ok(None));
        assert_eq!(
            choice(&pod(&[]), Some(&ns("in-flight"))),
            Ok(Some(Stitching::InFlight))
        );
        assert_eq!(
            choice(&pod(&[(ann::STITCHING, "off")]), Some(&ns("in-flight"))),
            Ok(Some(Stitching::Off))
        );
    }

    #[test]
    fn an_unknown_mode_is_refused_with_its_source() {
        let err = choice(&pod(&[(ann::STITCHING, "guess")]), None).unwrap_err();
        assert!(
            err.starts_with("pod annotation tracemesh.dev/stitching: unknown stitching mode"),
            "{err}"
        );
        let err = choice(&pod(&[]), Some(&ns("yes"))).unwrap_err();
        assert!(err.starts_with("namespace annotation"), "{err}");
    }

    /// The annotation reaches the sidecar as `MESH_STITCHING`; a bad one denies the pod.
    #[test]
    fn the_sidecar_gets_the_mode_as_env() {
        use crate::inject::{decide, Decision, Settings};
        let enrolled = NamespaceInfo {
            labels: [(ann::MONITORED_BY.to_string(), "tracemesh".to_string())].into(),
            annotations: [(ann::STITCHING.to_string(), "in-flight".to_string())].into(),
        };
        let v = serde_json::json!({"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "web", "namespace": "shop"},
            "spec": {"containers": [{"name": "web", "image": "nginx"}]}});
        let pod: Pod = serde_json::from_value(v.clone()).unwrap();
        let config = mesh_config::MeshConfig::default();
        let settings = Settings::new("tracemesh");
        let Decision::Inject(ops) = decide(&pod, "shop", Some(&enrolled), &config, &settings)
        else {
            panic!("injected")
        };
        let mut doc = v.clone();
        json_patch::patch(&mut doc, &ops).unwrap();
        let sidecar = &doc["spec"]["initContainers"][1];
        assert_eq!(sidecar["name"], ann::SIDECAR_CONTAINER);
        let env = sidecar["env"].as_array().unwrap();
        assert!(
            env.iter()
                .any(|e| e["name"] == "MESH_STITCHING" && e["value"] == "in-flight"),
            "{env:?}"
        );

        let bad = NamespaceInfo {
            annotations: [(ann::STITCHING.to_string(), "maybe".to_string())].into(),
            ..enrolled
        };
        assert!(matches!(
            decide(&pod, "shop", Some(&bad), &config, &settings),
            Decision::Deny(_)
        ));
    }
}
