//! The configuration the proxy runs with: a stream of validated MeshConfig snapshots from
//! `mesh_config::watch`.
//!
//! Everything downstream reads the current snapshot from one `watch::Receiver`, so a change to
//! `opaquePorts` or `logLevel` applies to the next connection without a restart.

use std::sync::Arc;

pub use mesh_config::watch::Snapshot;
use mesh_config::watch::{Source, WatchError};
use tokio::sync::watch;

pub type ConfigRx = watch::Receiver<Arc<Snapshot>>;

/// Loads the config from `source` (and keeps watching it), or the defaults without one.
/// The initial load must succeed: a sidecar must not start on a config it cannot read.
pub async fn load(source: Option<&str>) -> Result<ConfigRx, WatchError> {
    match source {
        Some(text) => mesh_config::watch::watch(Source::parse(text)?).await,
        None => Ok(fixed(Snapshot::default_config())),
    }
}

/// A receiver that never changes (no source, and tests).
pub fn fixed(snapshot: Snapshot) -> ConfigRx {
    // Dropping the sender is fine: `borrow` keeps answering, only `changed` reports the end.
    watch::channel(Arc::new(snapshot)).1
}

/// The sidecar's current timeouts and limits; read per connection, so changes apply to
/// connections accepted after them.
pub fn sidecar(rx: &ConfigRx) -> mesh_config::Sidecar {
    rx.borrow().config.spec.sidecar.clone()
}

/// Whether `port` is configured as opaque (server-speaks-first): no protocol detection.
pub fn is_opaque_port(rx: &ConfigRx, port: u16) -> bool {
    rx.borrow().config.spec.traffic.opaque_ports.contains(&port)
}
