//! The control plane's manifests, compiled into the binary so that the CLI and the manifests of
//! one release always match, split into objects and put in the order the API needs them.
//!
//! `install` and `uninstall` both start here: one list of what makes up the control plane.

/// The manifests of this release (the same files `manifests/kustomization.yaml` lists).
pub struct Manifests {
    pub crd: &'static str,
    pub namespace: &'static str,
    pub injector: &'static str,
    pub webhook: &'static str,
    pub mesh_config: &'static str,
}

pub const EMBEDDED: Manifests = Manifests {
    crd: include_str!("../../manifests/crd.yaml"),
    namespace: include_str!("../../manifests/namespace.yaml"),
    injector: include_str!("../../manifests/injector.yaml"),
    webhook: include_str!("../../manifests/webhook.yaml"),
    mesh_config: include_str!("../../manifests/mesh-config.yaml"),
};

impl Manifests {
    pub fn files(&self) -> [&'static str; 5] {
        [
            self.crd,
            self.namespace,
            self.injector,
            self.webhook,
            self.mesh_config,
        ]
    }
}

/// One object of a manifest: its text as written (comments kept) and its parsed value.
#[derive(Debug, Clone)]
pub struct Object {
    pub text: String,
    pub value: serde_yaml::Value,
}

impl Object {
    pub fn kind(&self) -> &str {
        self.value["kind"].as_str().unwrap_or_default()
    }

    pub fn name(&self) -> &str {
        self.value["metadata"]["name"].as_str().unwrap_or_default()
    }

    pub fn namespace(&self) -> Option<&str> {
        self.value["metadata"]["namespace"].as_str()
    }
}

#[derive(Debug, thiserror::Error)]
#[error("embedded manifest, object {index}: {source}")]
pub struct ManifestError {
    index: usize,
    source: serde_yaml::Error,
}

/// Every object of every manifest, in apply order.
pub fn objects(manifests: &Manifests) -> Result<Vec<Object>, ManifestError> {
    let mut objects = Vec::new();
    for file in manifests.files() {
        for text in split_documents(file) {
            let value = serde_yaml::from_str(text).map_err(|source| ManifestError {
                index: objects.len(),
                source,
            })?;
            objects.push(Object {
                text: text.trim_end().to_string(),
                value,
            });
        }
    }
    sort_for_apply(&mut objects);
    Ok(objects)
}

/// Where a kind goes in an apply: definitions before their instances, the namespace before what
/// lives in it, identities and permissions before the Deployment that uses them, and the webhook
/// only once the injector it calls exists (a webhook with no server behind it would refuse pods
/// in enrolled namespaces meanwhile). Tools that apply in order (kapp, Argo CD, Flux) follow it;
/// kubectl resolves every kind before it applies the first object.
const APPLY_ORDER: &[&str] = &[
    "CustomResourceDefinition",
    "Namespace",
    "ServiceAccount",
    "ClusterRole",
    "ClusterRoleBinding",
    "Role",
    "RoleBinding",
    "Secret",
    "ConfigMap",
    "Deployment",
    "PodDisruptionBudget",
    "Service",
    "MutatingWebhookConfiguration",
    "MeshConfig",
];

/// Kinds not in the list go just before the webhook: after everything they may need.
fn rank(kind: &str) -> usize {
    APPLY_ORDER
        .iter()
        .position(|k| *k == kind)
        .unwrap_or(APPLY_ORDER.len() - 2)
}

/// Stable: objects of one kind keep the order their manifest gives them.
pub fn sort_for_apply(objects: &mut [Object]) {
    objects.sort_by_key(|object| rank(object.kind()));
}

/// The reverse, for `kubectl delete`: the webhook first, so that no pod creation waits on an
/// injector that is going away; the namespace last.
pub fn sort_for_delete(objects: &mut [Object]) {
    objects.sort_by_key(|object| {
        let rank = rank(object.kind());
        // The webhook and the MeshConfig (whose CRD goes too) lead, then the reverse apply order.
        match object.kind() {
            "MutatingWebhookConfiguration" => 0,
            "MeshConfig" => 1,
            _ => APPLY_ORDER.len() + 2 - rank,
        }
    });
}

/// Joins objects into one YAML stream, each opened by `---`.
pub fn stream<'a>(texts: impl IntoIterator<Item = &'a str>) -> String {
    let mut stream = String::new();
    for text in texts {
        stream.push_str("---\n");
        stream.push_str(text.trim_end());
        stream.push('\n');
    }
    stream
}

/// The non-empty documents of a YAML stream (a document of only comments is empty).
pub fn split_documents(stream: &str) -> Vec<&str> {
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

    fn kinds(objects: &[Object]) -> Vec<&str> {
        objects.iter().map(Object::kind).collect()
    }

    /// `mesh install --crds` prints the CRD that mesh-config generates from the document's
    /// types (manifests/crd.yaml is that output; mesh-config's crd test regenerates it).
    #[test]
    fn embedded_crd_is_the_generated_one() {
        assert!(
            EMBEDDED.crd == mesh_config::crd::yaml(),
            "manifests/crd.yaml is stale: UPDATE_CRD=1 cargo test -p mesh-config --test crd"
        );
    }

    #[test]
    fn embedded_manifests_come_in_apply_order() {
        let objects = objects(&EMBEDDED).expect("manifests parse");
        let kinds = kinds(&objects);
        assert_eq!(kinds[0], "CustomResourceDefinition");
        assert_eq!(kinds[1], "Namespace");
        let position = |kind: &str| kinds.iter().position(|k| *k == kind).expect(kind);
        assert!(position("ClusterRoleBinding") < position("Deployment"));
        assert!(position("Deployment") < position("Service"));
        assert!(position("Service") < position("MutatingWebhookConfiguration"));
        assert_eq!(kinds.last(), Some(&"MeshConfig"));
    }

    #[test]
    fn delete_order_starts_with_the_webhook_and_ends_with_the_namespace() {
        let mut objects = objects(&EMBEDDED).expect("manifests parse");
        sort_for_delete(&mut objects);
        let kinds = kinds(&objects);
        assert_eq!(kinds[0], "MutatingWebhookConfiguration");
        assert_eq!(kinds[1], "MeshConfig");
        let position = |kind: &str| kinds.iter().position(|k| *k == kind).expect(kind);
        assert!(position("Deployment") < position("ServiceAccount"));
        assert!(position("Deployment") < position("CustomResourceDefinition"));
        assert_eq!(
            kinds[kinds.len() - 2..],
            ["Namespace", "CustomResourceDefinition"]
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
