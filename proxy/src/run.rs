//! `mesh-proxy run`: load the config, start the proxy, wait for a signal, drain, flush.

use std::time::Duration;

use anyhow::Context as _;

use crate::app::{self, Options};
use crate::cli::RunArgs;
use crate::trace::Identity;

pub fn run(args: RunArgs) -> anyhow::Result<()> {
    let log_level = crate::log::init();
    let runtime = crate::runtime::build(args.threads).context("starting the runtime")?;
    runtime.block_on(async move {
        // Listening from the start, so no signal is lost between the two the drain awaits.
        let mut signals = crate::shutdown::Signals::new();
        let config = crate::config::load(args.mesh_config.as_deref())
            .await
            .context("loading the MeshConfig")?;
        let probes = crate::probes::Probes::from_env()?;
        let pod = args.pod_addrs();
        let options = Options {
            bind_ip: args.bind,
            bind_ipv6: true,
            inbound_port: args.inbound_port,
            outbound_port: args.outbound_port,
            admin_port: args.admin_port,
            inbound: args.inbound,
            outbound: args.outbound,
            identity: Identity {
                service: args.service,
                namespace: args.namespace,
                pod_name: args.pod_name,
                pod_ip: pod.primary(),
            },
            pod: pod.clone(),
            // The MeshConfig's `spec.sidecar.connectTimeout` decides.
            connect_timeout: Duration::MAX,
            log_level: Some(log_level),
            stitching: args.stitching,
        };
        let running = app::start(options, config.clone()).await?;
        // The app's rewritten probes keep answering while the proxy drains.
        let probe_shutdown = crate::shutdown::Shutdown::new();
        let probe_options = crate::probes::Options {
            bind_ip: args.bind,
            config: config.clone(),
            ..crate::probes::Options::new(pod.primary())
        };
        crate::probes::serve(probes, probe_options, probe_shutdown.watch()).await?;
        signals.recv().await;
        let window = args.termination_drain_duration.unwrap_or_else(|| {
            crate::config::sidecar(&config)
                .termination_drain_duration
                .get()
        });
        tracing::info!(
            ?window,
            "SIGTERM: reporting not ready and still serving while endpoints converge"
        );
        running.begin_drain();
        // A second signal ends the window early (an operator in a hurry, `kubectl delete
        // --grace-period` short): the drain of in-flight requests still follows.
        tokio::select! {
            _ = tokio::time::sleep(window) => {}
            _ = signals.recv() => tracing::info!("second signal: ending the drain window"),
        }
        tracing::info!("draining: no new connections; finishing requests in flight");
        let drained = running.stop(Duration::from_secs(args.drain_timeout)).await;
        probe_shutdown.drain(Duration::from_secs(1)).await;
        if !drained {
            tracing::warn!("drain timeout reached with connections still open");
        }
        Ok(())
    })
}
