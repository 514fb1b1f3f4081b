//! Where the mesh's objects live. The commands speak to one small trait so that the Kubernetes API
//! and the files of the local backend obey the same rules; only storage differs.

pub mod kube;
pub mod state_dir;

use k8s_openapi::api::core::v1::Namespace;
use mesh_config::MeshConfig;
use std::path::PathBuf;

/// The failures a backend can report, translated once from the storage's own errors.
#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    #[error("namespaces \"{0}\" not found")]
    NamespaceNotFound(String),
    #[error(
        "MeshConfig {namespace}/{name} not found: is the mesh installed? \
         (mesh install | kubectl apply -f -)",
        namespace = mesh_config::DEFAULT_NAMESPACE,
        name = mesh_config::DEFAULT_NAME
    )]
    MeshConfigNotFound,
    #[error("the stored MeshConfig is not valid:\n{}", problem_lines(.0))]
    StoredMeshConfig(mesh_config::ConfigError),
    #[error("the patched MeshConfig is not valid, nothing was written:\n{}", problem_lines(.0))]
    InvalidPatch(mesh_config::ConfigError),
    #[error("the MeshConfig kept changing while it was patched; try again")]
    Conflict,
    #[error("Kubernetes API: {0}")]
    Kube(#[from] ::kube::Error),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: not a valid object: {message}")]
    Corrupt { path: PathBuf, message: String },
}

/// One indented line per field problem, so that a long list stays readable in a terminal.
pub fn problem_lines(err: &mesh_config::ConfigError) -> String {
    if err.problems().is_empty() {
        return format!("  {err}");
    }
    err.problems()
        .iter()
        .map(|problem| format!("  {problem}"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// The operations the CLI needs, and nothing more.
pub trait Backend {
    /// Whether `namespace add` may create a namespace that does not exist yet. Kubernetes
    /// namespaces belong to their owners, so the kube backend never creates one; the local backend
    /// has no other way to make them.
    fn creates_namespaces(&self) -> bool;

    async fn get_namespace(&self, name: &str) -> Result<Option<Namespace>, BackendError>;

    /// Namespaces carrying the enrolment label, for one mesh or for any.
    async fn list_enrolled(&self, mesh: Option<&str>) -> Result<Vec<Namespace>, BackendError>;

    /// Applies an RFC 7386 merge patch to the namespace (labels and annotations only are
    /// touched by the CLI), creating it first where `creates_namespaces` allows.
    async fn patch_namespace(
        &self,
        name: &str,
        patch: &serde_json::Value,
    ) -> Result<(), BackendError>;

    async fn get_mesh_config(&self) -> Result<MeshConfig, BackendError>;

    /// Applies an RFC 7386 merge patch to the MeshConfig, refusing to store an invalid result
    /// and writing nothing when the result is the document already stored.
    async fn patch_mesh_config(&self, patch: &serde_json::Value) -> Result<Patched, BackendError>;
}

/// The MeshConfig after a patch, and whether anything was written (`kubectl patch` says
/// "(no change)" when not, and so does `mesh config patch`).
#[derive(Debug)]
pub struct Patched {
    pub config: MeshConfig,
    pub changed: bool,
}

/// Reads the MeshConfig out of a stored JSON object, keeping only what the document defines of its
/// metadata (the API server adds uid, resourceVersion, managedFields...) and dropping the
/// `status` the injector writes.
pub fn mesh_config_from_object(mut object: serde_json::Value) -> Result<MeshConfig, BackendError> {
    if let Some(metadata) = object.get_mut("metadata").and_then(|m| m.as_object_mut()) {
        metadata.retain(|key, _| key == "name" || key == "namespace");
    }
    if let Some(root) = object.as_object_mut() {
        root.remove("status");
    }
    let text = object.to_string();
    let parsed = mesh_config::parse(&text).map_err(BackendError::StoredMeshConfig)?;
    for warning in &parsed.warnings {
        eprintln!("warning: stored MeshConfig: {warning}");
    }
    Ok(parsed.config)
}
