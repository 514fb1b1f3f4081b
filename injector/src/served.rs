//! The document the config server hands out, encoded once per change with its ETag.

use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::Arc;

use bytes::Bytes;
use mesh_config::MeshConfig;
use tokio::sync::watch;

#[derive(Debug, Clone, PartialEq)]
pub struct Served {
    pub config: Arc<MeshConfig>,
    /// The JSON body, encoded once and shared by every long-poller.
    pub body: Bytes,
    /// Quoted, as it goes on the wire. A hash of the body, so an unchanged document keeps its
    /// ETag across injector restarts and sidecars are not woken for nothing.
    pub etag: String,
    /// Why the latest version of the source was refused, if it was; the config is the last good.
    pub last_error: Option<String>,
}

impl Served {
    pub fn new(config: MeshConfig) -> Self {
        let body = Bytes::from(serde_json::to_vec(&config).unwrap_or_default());
        let mut h = DefaultHasher::new();
        body.hash(&mut h);
        Self {
            etag: format!("\"{:016x}\"", h.finish()),
            config: Arc::new(config),
            body,
            last_error: None,
        }
    }

    pub fn with_error(&self, error: String) -> Self {
        Self {
            last_error: Some(error),
            ..self.clone()
        }
    }
}

impl Default for Served {
    fn default() -> Self {
        Self::new(MeshConfig::default())
    }
}

pub type ServedRx = watch::Receiver<Arc<Served>>;
pub type ServedTx = watch::Sender<Arc<Served>>;

/// Publishes `next` unless it says the same as what is served (no needless wake-ups).
pub fn publish(tx: &ServedTx, next: Served) {
    tx.send_if_modified(|cur| {
        if **cur == next {
            false
        } else {
            *cur = Arc::new(next);
            true
        }
    });
}
