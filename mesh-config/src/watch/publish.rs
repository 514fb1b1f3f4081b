//! The one place that decides what a new version means for the snapshot: a real change bumps
//! the generation, an identical config does not, a rejected one keeps the config.

use std::sync::Arc;

use tokio::sync::watch;

use super::Snapshot;
use crate::Parsed;

pub(super) struct Publisher {
    tx: watch::Sender<Arc<Snapshot>>,
}

impl Publisher {
    pub(super) fn new(source: String, parsed: Parsed) -> (Self, watch::Receiver<Arc<Snapshot>>) {
        let snapshot = Snapshot {
            config: Arc::new(parsed.config),
            generation: 1,
            source,
            last_error: None,
            warnings: parsed.warnings,
        };
        let (tx, rx) = watch::channel(Arc::new(snapshot));
        (Publisher { tx }, rx)
    }

    /// Resolves when nobody listens any more, which ends the watcher.
    pub(super) async fn closed(&self) {
        self.tx.closed().await
    }

    pub(super) fn accept(&self, parsed: Parsed) {
        self.tx.send_if_modified(|current| {
            let changed = *current.config != parsed.config;
            if !changed && current.last_error.is_none() && current.warnings == parsed.warnings {
                return false;
            }
            let mut next = Snapshot::clone(current);
            if changed {
                next.generation += 1;
                next.config = Arc::new(parsed.config.clone());
                tracing::info!(source = %next.source, generation = next.generation, "mesh config applied");
            }
            for warning in &parsed.warnings {
                tracing::warn!(source = %next.source, "mesh config: {warning}");
            }
            next.warnings = parsed.warnings.clone();
            next.last_error = None;
            *current = Arc::new(next);
            true
        });
    }

    /// Keeps the config in force and records why the new version was not applied.
    pub(super) fn reject(&self, error: String) {
        self.set_error(Some(error));
    }

    pub(super) fn set_error(&self, error: Option<String>) {
        self.tx.send_if_modified(|current| {
            if current.last_error == error {
                return false;
            }
            if let Some(e) = &error {
                tracing::warn!(
                    source = %current.source,
                    generation = current.generation,
                    "keeping the last good mesh config: {e}"
                );
            }
            let mut next = Snapshot::clone(current);
            next.last_error = error.clone();
            *current = Arc::new(next);
            true
        });
    }
}
