//! Where namespaces and the MeshConfig come from: the Kubernetes API, or the files under the
//! state dir that `mesh` writes (the same objects, so the webhook runs with no cluster).

pub mod kube;
pub mod local;

use crate::inject::NamespaceInfo;
use crate::served::ServedRx;

#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    #[error("Kubernetes API: {0}")]
    Kube(#[from] ::kube::Error),
    #[error("reading {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("{path} is not a v1 Namespace: {message}")]
    BadNamespace { path: String, message: String },
}

pub enum Backend {
    Kube(kube::KubeBackend),
    Local(local::LocalBackend),
}

impl Backend {
    /// `None` when the namespace does not exist.
    pub async fn namespace(&self, name: &str) -> Result<Option<NamespaceInfo>, BackendError> {
        match self {
            Backend::Kube(b) => b.namespace(name).await,
            Backend::Local(b) => b.namespace(name).await,
        }
    }

    /// The current validated MeshConfig, updated as the source changes.
    pub fn config(&self) -> ServedRx {
        match self {
            Backend::Kube(b) => b.config(),
            Backend::Local(b) => b.config(),
        }
    }
}
