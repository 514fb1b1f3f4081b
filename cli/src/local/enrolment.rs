//! Whether a local workload gets a sidecar: the same rule the injector applies to pods.

use k8s_openapi::api::core::v1::Namespace;

use crate::namespace::{IGNORE_LABEL, MONITORED_BY_LABEL, SIDECAR_INJECTION_ANNOTATION};

/// Why a workload runs with or without a sidecar, for the message the user sees.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Enrolment {
    /// Enrolled in this mesh with injection on.
    Sidecar { mesh: String },
    /// No sidecar, and why.
    Plain(String),
}

pub fn enrolment(name: &str, namespace: Option<&Namespace>) -> Enrolment {
    let Some(namespace) = namespace else {
        return Enrolment::Plain(format!(
            "namespace {name} does not exist (add it with `mesh --backend local namespace add {name}`)"
        ));
    };
    let labels = namespace.metadata.labels.as_ref();
    let label = |key: &str| labels.and_then(|l| l.get(key)).map(String::as_str);
    let annotation = namespace
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(SIDECAR_INJECTION_ANNOTATION))
        .map(String::as_str);
    if label(IGNORE_LABEL) == Some("true") {
        return Enrolment::Plain(format!("namespace {name} is ignored by the mesh"));
    }
    match (label(MONITORED_BY_LABEL), annotation) {
        (None, _) => Enrolment::Plain(format!("namespace {name} is not enrolled in a mesh")),
        (Some(_), Some("disabled")) => {
            Enrolment::Plain(format!("namespace {name} has sidecar injection disabled"))
        }
        (Some(mesh), _) => Enrolment::Sidecar {
            mesh: mesh.to_string(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn namespace(labels: &[(&str, &str)], annotations: &[(&str, &str)]) -> Namespace {
        let map = |kv: &[(&str, &str)]| {
            Some(
                kv.iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
            )
        };
        let mut ns = Namespace::default();
        ns.metadata.name = Some("shop".into());
        ns.metadata.labels = map(labels);
        ns.metadata.annotations = map(annotations);
        ns
    }

    #[test]
    fn enrolled_namespaces_get_a_sidecar_unless_disabled_or_ignored() {
        let enrolled = namespace(&[(MONITORED_BY_LABEL, "tracemesh")], &[]);
        assert_eq!(
            enrolment("shop", Some(&enrolled)),
            Enrolment::Sidecar {
                mesh: "tracemesh".into()
            }
        );
        let disabled = namespace(
            &[(MONITORED_BY_LABEL, "tracemesh")],
            &[(SIDECAR_INJECTION_ANNOTATION, "disabled")],
        );
        assert!(
            matches!(enrolment("shop", Some(&disabled)), Enrolment::Plain(m) if m.contains("disabled"))
        );
        let ignored = namespace(
            &[(MONITORED_BY_LABEL, "tracemesh"), (IGNORE_LABEL, "true")],
            &[],
        );
        assert!(matches!(
            enrolment("shop", Some(&ignored)),
            Enrolment::Plain(_)
        ));
        let plain = namespace(&[], &[]);
        assert!(
            matches!(enrolment("shop", Some(&plain)), Enrolment::Plain(m) if m.contains("not enrolled"))
        );
        assert!(
            matches!(enrolment("shop", None), Enrolment::Plain(m) if m.contains("does not exist"))
        );
    }
}
