//! Wiring: bind every listener, share one context, follow config changes, drain on shutdown.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use prometheus_client::registry::Registry;
use tokio::net::TcpListener;

use crate::admin::Admin;
use crate::config::ConfigRx;
use crate::connect::SelfAddrs;
use crate::context::Shared;
use crate::error::StartError;
use crate::metrics::Metrics;
use crate::peer::PodAddrs;
use crate::route::{Route, StaticRoute};
use crate::shutdown::Shutdown;
use crate::trace::{Direction, Identity, TraceMetrics, Tracer};

/// Time given to the span exporter at exit: with the 10 s drain it stays within Kubernetes'
/// default 30 s grace period.
pub const FLUSH_TIMEOUT: Duration = Duration::from_secs(5);

/// Everything `start` needs; flags and env are read in `cli`, nowhere else.
#[derive(Debug)]
pub struct Options {
    /// Address the transparent and admin listeners bind (0.0.0.0 in a pod).
    pub bind_ip: IpAddr,
    /// Also bind the transparent listeners on `::` when the host has IPv6.
    pub bind_ipv6: bool,
    pub inbound_port: u16,
    pub outbound_port: u16,
    pub admin_port: u16,
    pub inbound: Vec<StaticRoute>,
    pub outbound: Vec<StaticRoute>,
    pub identity: Identity,
    /// Every pod IP: the loop guard's and the forward proxy's idea of "the pod itself".
    pub pod: PodAddrs,
    /// Upper bound on the MeshConfig's `spec.sidecar.connectTimeout`: `run` passes
    /// `Duration::MAX` (the config decides); embedders and tests may shorten it.
    pub connect_timeout: Duration,
    /// Follows `sidecar.logLevel`; `None` leaves logging alone (tests).
    pub log_level: Option<crate::log::LevelHandle>,
    /// The pod's own stitching mode (`MESH_STITCHING`), over the MeshConfig's; `None` follows it.
    pub stitching: Option<mesh_config::Stitching>,
}

/// A started proxy: its bound addresses and the handle to stop it.
#[derive(Debug)]
pub struct Running {
    pub outbound_addr: SocketAddr,
    pub inbound_addr: SocketAddr,
    pub admin_addr: SocketAddr,
    /// Bound addresses of `--inbound` then `--outbound` routes, in flag order.
    pub route_addrs: Vec<SocketAddr>,
    pub admin: Arc<Admin>,
    pub tracer: Tracer,
    shutdown: Shutdown,
}

impl Running {
    /// Starts the termination drain window: `/ready` answers 503 so endpoints drop the pod,
    /// while every listener keeps accepting and serving.
    pub fn begin_drain(&self) {
        self.admin.ready.store(false, Ordering::Release);
    }

    /// Stops accepting, lets connections finish for at most `drain`, then flushes the spans
    /// they produced. Returns whether every connection finished in time.
    pub async fn stop(self, drain: Duration) -> bool {
        self.admin.ready.store(false, Ordering::Release);
        let drained = self.shutdown.drain(drain).await;
        self.tracer.flush(FLUSH_TIMEOUT).await;
        drained
    }
}

/// Binds everything and starts serving on the current tokio runtime.
pub async fn start(options: Options, config: ConfigRx) -> Result<Running, StartError> {
    let mut registry = Registry::default();
    let metrics = Metrics::new(&mut registry);
    let trace_metrics = TraceMetrics::default();
    trace_metrics.register(&mut registry);
    let tracer = Tracer::new(options.identity.clone(), trace_metrics);
    tracer.stitching().set_override(options.stitching);
    // Before the first connection, so no request slips through under the default settings.
    tracer.apply(&config.borrow().config.spec.observability.tracing);

    let ip = options.bind_ip;
    let outbound = crate::listener::bind(SocketAddr::new(ip, options.outbound_port))?;
    let inbound = crate::listener::bind(SocketAddr::new(ip, options.inbound_port))?;
    let admin_listener = crate::listener::bind(SocketAddr::new(ip, options.admin_port))?;
    let local = |l: &TcpListener, addr| {
        l.local_addr()
            .map_err(|source| StartError::Bind { addr, source })
    };
    let outbound_addr = local(&outbound, SocketAddr::new(ip, options.outbound_port))?;
    let inbound_addr = local(&inbound, SocketAddr::new(ip, options.inbound_port))?;
    let admin_addr = local(&admin_listener, SocketAddr::new(ip, options.admin_port))?;

    // (listener, direction, route)
    let mut listeners: Vec<(TcpListener, Direction, Route)> = vec![
        (outbound, Direction::Outbound, Route::Transparent),
        (inbound, Direction::Inbound, Route::Transparent),
    ];
    if options.bind_ipv6 && ip == IpAddr::V4(Ipv4Addr::UNSPECIFIED) {
        // IPv6 is optional: a host or pod without it simply gets IPv4 listeners.
        for (port, dir) in [
            (outbound_addr.port(), Direction::Outbound),
            (inbound_addr.port(), Direction::Inbound),
        ] {
            match crate::listener::bind(SocketAddr::new(IpAddr::V6(Ipv6Addr::UNSPECIFIED), port)) {
                Ok(l) => listeners.push((l, dir, Route::Transparent)),
                Err(e) => tracing::debug!(error = %e, "no IPv6 listener"),
            }
        }
    }
    let mut route_addrs = Vec::new();
    for (routes, dir) in [
        (&options.inbound, Direction::Inbound),
        (&options.outbound, Direction::Outbound),
    ] {
        for r in routes {
            let l = crate::listener::bind(r.listen)?;
            route_addrs.push(local(&l, r.listen)?);
            listeners.push((l, dir, Route::Static(r.target.clone())));
        }
    }

    let mut own: Vec<SocketAddr> = vec![outbound_addr, inbound_addr, admin_addr];
    own.extend(listeners.iter().filter_map(|(l, _, _)| l.local_addr().ok()));
    let self_addrs = SelfAddrs::new(own, options.pod.clone());
    let shared = Shared::new(
        config.clone(),
        tracer.clone(),
        metrics.clone(),
        self_addrs,
        options.connect_timeout,
    );

    let shutdown = Shutdown::new();
    for (listener, direction, route) in listeners {
        if let Ok(addr) = listener.local_addr() {
            tracing::info!(%addr, ?direction, ?route, "listening");
        }
        tokio::spawn(crate::listener::run(
            listener,
            shared.clone(),
            direction,
            route,
            shutdown.watch(),
        ));
    }
    tokio::spawn(follow_config(
        config.clone(),
        metrics,
        tracer.clone(),
        options.log_level.clone(),
    ));

    let admin = Admin::new(registry, config, tracer.clone());
    let mut admin_listeners = vec![admin_listener];
    if options.bind_ipv6 && ip == IpAddr::V4(Ipv4Addr::UNSPECIFIED) {
        // The kubelet probes `[POD_IPv6]:15000` on an IPv6-only pod; optional like the others.
        let v6 = SocketAddr::new(IpAddr::V6(Ipv6Addr::UNSPECIFIED), admin_addr.port());
        match crate::listener::bind(v6) {
            Ok(l) => admin_listeners.push(l),
            Err(e) => tracing::debug!(error = %e, "no IPv6 admin listener"),
        }
    }
    for listener in admin_listeners {
        tokio::spawn(crate::admin::run(listener, admin.clone(), shutdown.watch()));
    }
    admin.ready.store(true, Ordering::Release);
    tracing::info!(%admin_addr, "admin listening");

    Ok(Running {
        outbound_addr,
        inbound_addr,
        admin_addr,
        route_addrs,
        admin,
        tracer,
        shutdown,
    })
}

/// Applies each new config snapshot: metrics, tracing block, log level.
pub async fn follow_config(
    mut config: ConfigRx,
    metrics: Metrics,
    tracer: Tracer,
    log_level: Option<crate::log::LevelHandle>,
) {
    let mut last_error: Option<String> = None;
    loop {
        let snapshot = config.borrow_and_update().clone();
        metrics.set_config(snapshot.generation, snapshot.last_error.is_some());
        if snapshot.last_error.is_some() && snapshot.last_error != last_error {
            metrics.config_errors.inc();
            tracing::warn!(
                error = snapshot.last_error.as_deref().unwrap_or_default(),
                generation = snapshot.generation,
                "new MeshConfig rejected; keeping the last good one"
            );
        }
        last_error.clone_from(&snapshot.last_error);
        for w in &snapshot.warnings {
            tracing::warn!(warning = %w, "MeshConfig");
        }
        tracer.apply(&snapshot.config.spec.observability.tracing);
        if let Some(handle) = &log_level {
            handle.set(snapshot.config.spec.sidecar.log_level.as_str());
        }
        if config.changed().await.is_err() {
            return;
        }
    }
}
