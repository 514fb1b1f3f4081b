//! Live reload: follows the watched MeshConfig and applies its tracing block.

use std::sync::Arc;

use mesh_config::{MeshConfig, Tracing};
use tokio::sync::watch;

use super::Tracer;

/// Applies the current tracing block now, then every change, until the watch ends. The
/// switch is one pointer swap (see [`Tracer::apply`]), so it takes effect on the next request;
/// `extract` maps whatever the watch carries (a `Snapshot`) to the config.
pub fn follow<T, F>(
    tracer: Tracer,
    mut rx: watch::Receiver<T>,
    extract: F,
) -> tokio::task::JoinHandle<()>
where
    T: Send + Sync + 'static,
    F: Fn(&T) -> Arc<MeshConfig> + Send + Sync + 'static,
{
    let config = move |rx: &mut watch::Receiver<T>| -> Tracing {
        let value = rx.borrow_and_update();
        extract(&value).spec.observability.tracing.clone()
    };
    tracer.apply(&config(&mut rx));
    tokio::spawn(async move {
        while rx.changed().await.is_ok() {
            tracer.apply(&config(&mut rx));
        }
    })
}

/// [`follow`] for the proxy's config watch (`mesh_config::watch`): what `mesh-proxy run` uses.
pub fn follow_snapshots(
    tracer: Tracer,
    rx: watch::Receiver<Arc<mesh_config::watch::Snapshot>>,
) -> tokio::task::JoinHandle<()> {
    follow(tracer, rx, |snapshot| snapshot.config.clone())
}
