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
    /// Upper bound on `spec.sidecar.connectTimeout` (see `app::Options::connect_timeout`).
    pub connect_timeout: Duration,
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
        let conn_limit = ConnLimit::new(config.clone(), metrics.connections_refused.clone());
        Arc::new(Self {
            config,
            tracer,
            metrics,
            self_addrs,
            connect_timeout,
            upstream,
            conn_limit,
        })
    }
}
