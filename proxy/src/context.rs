//! What every connection shares: built once at startup, cheap to reach from any task.

use std::sync::Arc;
use std::time::Duration;

use crate::config::ConfigRx;
use crate::connect::SelfAddrs;
use crate::http::Upstream;
use crate::metrics::Metrics;
use crate::trace::Tracer;

#[derive(Debug)]
pub struct Shared {
    pub config: ConfigRx,
    pub tracer: Tracer,
    pub metrics: Metrics,
    pub self_addrs: Arc<SelfAddrs>,
    pub connect_timeout: Duration,
    /// Pooled HTTP clients towards upstreams.
    pub upstream: Upstream,
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
        let upstream = Upstream::new(self_addrs.clone(), connect_timeout);
        Arc::new(Self {
            config,
            tracer,
            metrics,
            self_addrs,
            connect_timeout,
            upstream,
        })
    }
}
