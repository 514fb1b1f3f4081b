//! What every connection shares: built once at startup, cheap to reach from any task.

use std::sync::Arc;
use std::time::Duration;

use crate::config::ConfigRx;
use crate::connect::{Connector, SelfAddrs};
use crate::http::Upstream;
use crate::metrics::Metrics;
use crate::server::ConnLimit;
use crate::trace::Tracer;

#[derive(Debug)]
pub struct Shared {
    pub config: ConfigRx,
    pub tracer: Tracer,
    pub metrics: Metrics,
    pub self_addrs: Arc<SelfAddrs>,
    /// Upper bound on `spec.sidecar.connectTimeout` (see `app::Options::connect_timeout`);
    /// read the effective value with [`Shared::connect_timeout`].
    connect_timeout_cap: Duration,
    /// Pooled HTTP clients towards upstreams.
    pub upstream: Upstream,
    /// `spec.sidecar.maxConnections`, shared by every proxy listener.
    pub conn_limit: Arc<ConnLimit>,
}

impl Shared {
    pub fn new(
        config: ConfigRx,
        tracer: Tracer,
        metrics: Metrics,
        self_addrs: SelfAddrs,
        connect_timeout: Duration,
    ) -> Arc<Self> {
        let self_addrs = Arc::new(self_addrs);
        let connector = Connector::with_config(self_addrs.clone(), connect_timeout, config.clone());
        let upstream = Upstream::new(connector);
        let conn_limit = ConnLimit::new(
            config.clone(),
            metrics.connections_refused.clone(),
            metrics.connections_open.clone(),
        );
        Arc::new(Self {
            config,
            tracer,
            metrics,
            self_addrs,
            connect_timeout_cap: connect_timeout,
            upstream,
            conn_limit,
        })
    }

    /// The connect timeout in force now: the MeshConfig's `spec.sidecar.connectTimeout`,
    /// bounded by the embedder's cap. Prefer `upstream.connector().dial`, which also applies
    /// the per-destination cap.
    pub fn connect_timeout(&self) -> Duration {
        crate::config::sidecar(&self.config)
            .connect_timeout
            .get()
            .min(self.connect_timeout_cap)
    }
}
