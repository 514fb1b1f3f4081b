//! The local backend: `<state-dir>/namespaces/<name>.yaml` (v1 Namespace objects) and
//! `<state-dir>/mesh-config.yaml`, as written by `mesh --backend local`.
//!
//! The MeshConfig file is polled (content compared, not only mtime, since `mesh config patch`
//! renames a new file in and two writes can share an mtime). Polling every 200 ms keeps a
//! change well inside the one-second budget at the cost of one small read.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::Namespace;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::BackendError;
use crate::document;
use crate::inject::NamespaceInfo;
use crate::metrics::ConfigMetrics;
use crate::served::{publish, Served, ServedRx, ServedTx};

const POLL: Duration = Duration::from_millis(200);

pub struct LocalBackend {
    state_dir: PathBuf,
    rx: ServedRx,
    metrics: ConfigMetrics,
    poller: JoinHandle<()>,
}

impl Drop for LocalBackend {
    fn drop(&mut self) {
        self.poller.abort();
    }
}

impl LocalBackend {
    /// Loads the MeshConfig once (an invalid file is an error: there is no last good yet) and
    /// starts watching it. A missing file means the defaults.
    pub async fn start(state_dir: impl Into<PathBuf>) -> Result<Self, StartError> {
        let state_dir = state_dir.into();
        let path = state_dir.join("mesh-config.yaml");
        let text = read_optional(&path)
            .await
            .map_err(|source| StartError::Io {
                path: path.display().to_string(),
                source,
            })?;
        let initial = match &text {
            None => Served::default(),
            Some(t) => Served::new(document::from_text(t).map_err(|e| StartError::Invalid {
                path: path.display().to_string(),
                message: e.to_string(),
            })?),
        };
        let (tx, rx) = watch::channel(Arc::new(initial));
        let metrics = ConfigMetrics::default();
        // The local document has no generation; each version read counts as one.
        metrics.generation.set(1);
        let poller = tokio::spawn(poll(path, text, tx, metrics.clone()));
        Ok(Self {
            state_dir,
            rx,
            metrics,
            poller,
        })
    }

    pub fn config_metrics(&self) -> ConfigMetrics {
        self.metrics.clone()
    }

    pub fn config(&self) -> ServedRx {
        self.rx.clone()
    }

    pub async fn namespace(&self, name: &str) -> Result<Option<NamespaceInfo>, BackendError> {
        // A DNS label only: the name comes from the request and becomes a file name.
        let valid = !name.is_empty()
            && name.len() <= 63
            && name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
        if !valid {
            return Ok(None);
        }
        let path = self
            .state_dir
            .join("namespaces")
            .join(format!("{name}.yaml"));
        let Some(text) = read_optional(&path)
            .await
            .map_err(|source| BackendError::Io {
                path: path.display().to_string(),
                source,
            })?
        else {
            return Ok(None);
        };
        let ns: Namespace =
            serde_yaml::from_str(&text).map_err(|e| BackendError::BadNamespace {
                path: path.display().to_string(),
                message: e.to_string(),
            })?;
        Ok(Some(NamespaceInfo {
            labels: ns.metadata.labels.unwrap_or_default(),
            annotations: ns.metadata.annotations.unwrap_or_default(),
        }))
    }
}

/// Errors of the one-time start; kept apart from `BackendError`, which is per request.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("reading {path}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Invalid { path: String, message: String },
}

async fn read_optional(path: &Path) -> std::io::Result<Option<String>> {
    match tokio::fs::read_to_string(path).await {
        Ok(t) => Ok(Some(t)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

async fn poll(path: PathBuf, mut last: Option<String>, tx: ServedTx, metrics: ConfigMetrics) {
    let mut tick = tokio::time::interval(POLL);
    loop {
        tick.tick().await;
        let text = match read_optional(&path).await {
            Ok(t) => t,
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "cannot read the MeshConfig; keeping the last good one");
                continue;
            }
        };
        if text == last {
            continue;
        }
        last = text.clone();
        let parsed = match &text {
            None => Ok(mesh_config::MeshConfig::default()),
            Some(t) => document::from_text(t),
        };
        match parsed {
            Ok(config) => {
                tracing::info!(path = %path.display(), "MeshConfig changed");
                metrics.generation.inc();
                publish(&tx, Served::new(config));
            }
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "invalid MeshConfig refused; keeping the last good one");
                metrics.rejected.inc();
                let current = tx.borrow().with_error(e.to_string());
                publish(&tx, current);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn changed(rx: &mut ServedRx) -> Arc<Served> {
        tokio::time::timeout(Duration::from_secs(10), rx.changed())
            .await
            .expect("change within 10s")
            .expect("sender alive");
        rx.borrow_and_update().clone()
    }

    #[tokio::test]
    async fn reads_namespaces_and_follows_the_config_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir_all(dir.path().join("namespaces")).expect("mkdir");
        std::fs::write(
            dir.path().join("namespaces/shop.yaml"),
            "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: shop\n  labels: {tracemesh.dev/monitored-by: tracemesh}\n",
        )
        .expect("write");
        let b = LocalBackend::start(dir.path()).await.expect("start");
        let ns = b.namespace("shop").await.expect("read").expect("exists");
        assert_eq!(
            ns.labels
                .get("tracemesh.dev/monitored-by")
                .map(String::as_str),
            Some("tracemesh")
        );
        assert_eq!(b.namespace("absent").await.expect("read"), None);
        assert_eq!(b.namespace("../etc").await.expect("read"), None);

        let mut rx = b.config();
        assert_eq!(
            *rx.borrow_and_update().config,
            mesh_config::MeshConfig::default()
        );
        let file = dir.path().join("mesh-config.yaml");
        std::fs::write(&file, "spec: {sidecar: {logLevel: debug}}\n").expect("write");
        let s = changed(&mut rx).await;
        assert_eq!(
            s.config.spec.sidecar.log_level,
            mesh_config::LogLevel::Debug
        );

        std::fs::write(&file, "spec: {observability: {tracing: {port: 0}}}\n").expect("write");
        let s = changed(&mut rx).await;
        assert_eq!(
            s.config.spec.sidecar.log_level,
            mesh_config::LogLevel::Debug,
            "last good kept"
        );
        assert!(s.last_error.as_deref().unwrap_or_default().contains("port"));
    }

    #[tokio::test]
    async fn an_invalid_file_at_start_is_an_error() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(
            dir.path().join("mesh-config.yaml"),
            "spec: {sidecar: {logLevel: loud}}\n",
        )
        .expect("write");
        assert!(LocalBackend::start(dir.path()).await.is_err());
    }
}
