//! Where namespaces and the MeshConfig come from: the Kubernetes API, or the files under the
//! state dir that `mesh` writes (the same objects, so the webhook runs with no cluster).

pub mod kube;
pub mod local;

use crate::inject::NamespaceInfo;
use crate::metrics::ConfigMetrics;
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

/// Whether the MeshConfig source has been read. Until then the injector would hand sidecars the
/// defaults and new pods the default exclusion lists, so it is not ready.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ConfigSync {
    Synced,
    /// Not yet, and the latest reason (RBAC forbidden, CRD missing, API unreachable, ...).
    Waiting(String),
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

    /// Whether the first read of the MeshConfig is done.
    pub fn sync(&self) -> ConfigSync {
        match self {
            Backend::Kube(b) => b.sync(),
            // Read before the backend exists.
            Backend::Local(_) => ConfigSync::Synced,
        }
    }

    /// The source's counters, for the metrics registry.
    pub fn config_metrics(&self) -> ConfigMetrics {
        match self {
            Backend::Kube(b) => b.config_metrics(),
            Backend::Local(b) => b.config_metrics(),
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
