//! Command line: `mesh-proxy run` and `mesh-proxy init` (see CONTRACT.md).

use std::net::IpAddr;

use clap::{Args, Parser, Subcommand};

use crate::route::StaticRoute;

#[derive(Debug, Parser)]
#[command(name = "mesh-proxy", version, about = "The tracemesh sidecar proxy")]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the sidecar (transparent listeners, explicit routes, admin server).
    Run(RunArgs),
    /// Write the pod's iptables rules.
    Init(crate::init::Args),
}

#[derive(Debug, Clone, Args)]
pub struct RunArgs {
    /// MeshConfig source: a file path (watched) or the injector's http(s):// config endpoint.
    #[arg(long, env = "MESH_CONFIG", value_name = "SOURCE")]
    pub mesh_config: Option<String>,
    /// Service name of this workload (spans' `<service>.<namespace>`).
    #[arg(long, env = "SERVICE_NAME", default_value = "")]
    pub service: String,
    #[arg(long, env = "POD_NAMESPACE", default_value = "")]
    pub namespace: String,
    #[arg(long, env = "POD_NAME", default_value = "", hide = true)]
    pub pod_name: String,
    /// The pod's IPs: repeat the flag or separate them with commas (dual stack gives one per
    /// family). The first is the primary one (spans, probes); all are the pod's own addresses.
    #[arg(long, env = "POD_IP", value_delimiter = ',', value_name = "IP")]
    pub pod_ip: Vec<IpAddr>,
    /// Every pod IP as the downward API writes `status.podIPs` (comma-separated); added to
    /// `--pod-ip`.
    #[arg(
        long,
        env = "POD_IPS",
        value_delimiter = ',',
        value_name = "IP",
        hide = true
    )]
    pub pod_ips: Vec<IpAddr>,
    #[arg(long, default_value_t = 15003)]
    pub inbound_port: u16,
    #[arg(long, default_value_t = 15001)]
    pub outbound_port: u16,
    #[arg(long, default_value_t = 15000)]
    pub admin_port: u16,
    /// Address of the transparent and admin listeners.
    #[arg(long, default_value = "0.0.0.0", hide = true)]
    pub bind: IpAddr,
    /// Publish an app through the sidecar: LISTEN=TARGET, e.g. 0.0.0.0:9080=127.0.0.1:8080.
    #[arg(long = "inbound", value_name = "LISTEN=TARGET")]
    pub inbound: Vec<StaticRoute>,
    /// Static outbound route for any TCP protocol: LISTEN=TARGET, e.g. 127.0.0.1:13306=db.local:3306.
    #[arg(long = "outbound", value_name = "LISTEN=TARGET")]
    pub outbound: Vec<StaticRoute>,
    /// Worker threads. Two keep a sidecar responsive while one is busy, at a small memory cost.
    #[arg(long, env = "MESH_PROXY_THREADS", default_value_t = 2, value_parser = clap::value_parser!(u16).range(1..=256))]
    pub threads: u16,
    /// After SIGTERM, keep serving this long (reporting not ready) before draining, e.g.
    /// `5s`; overrides the MeshConfig's `spec.sidecar.terminationDrainDuration` for this pod.
    #[arg(long, env = "TERMINATION_DRAIN_DURATION", value_name = "DURATION", value_parser = parse_duration)]
    pub termination_drain_duration: Option<std::time::Duration>,
    /// This pod's stitching mode (off, request-id, in-flight), overriding the MeshConfig's
    /// `spec.observability.tracing.stitching`; the injector sets it from the
    /// `tracemesh.dev/stitching` annotation of the pod or its namespace.
    #[arg(long, env = "MESH_STITCHING", value_name = "MODE")]
    pub stitching: Option<mesh_config::Stitching>,
    /// Seconds to let connections finish after SIGTERM.
    #[arg(long, value_name = "SECONDS", default_value_t = crate::shutdown::DRAIN_TIMEOUT.as_secs())]
    pub drain_timeout: u64,
}

impl RunArgs {
    /// `--pod-ip` then `POD_IPS`, each address once.
    pub fn pod_addrs(&self) -> crate::peer::PodAddrs {
        crate::peer::PodAddrs::new(self.pod_ip.iter().chain(&self.pod_ips).copied())
    }
}

fn parse_duration(text: &str) -> Result<std::time::Duration, String> {
    mesh_config::parse_duration(text).map(mesh_config::Duration::get)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn run_flags() {
        let cli = Cli::try_parse_from([
            "mesh-proxy",
            "run",
            "--inbound",
            "0.0.0.0:9080=127.0.0.1:8080",
            "--outbound",
            "127.0.0.1:13306=db.local:3306",
            "--threads",
            "1",
            "--service",
            "web",
        ])
        .unwrap();
        let Command::Run(args) = cli.command else {
            panic!("not run")
        };
        assert_eq!(args.inbound.len(), 1);
        assert_eq!(args.outbound.len(), 1);
        assert_eq!(args.threads, 1);
        assert_eq!(args.outbound_port, 15001);
        assert_eq!(args.termination_drain_duration, None);
    }

    #[test]
    fn stitching_flag_takes_a_mode_and_refuses_others() {
        let cli = Cli::try_parse_from(["mesh-proxy", "run", "--stitching", "in-flight"]).unwrap();
        let Command::Run(args) = cli.command else {
            panic!("not run")
        };
        assert_eq!(args.stitching, Some(mesh_config::Stitching::InFlight));
        let Err(err) = Cli::try_parse_from(["mesh-proxy", "run", "--stitching", "guess"]) else {
            panic!("an unknown mode is refused")
        };
        assert!(err.to_string().contains("unknown stitching mode"), "{err}");
    }

    #[test]
    fn drain_window_flag_takes_a_duration() {
        let cli =
            Cli::try_parse_from(["mesh-proxy", "run", "--termination-drain-duration", "1m30s"])
                .unwrap();
        let Command::Run(args) = cli.command else {
            panic!("not run")
        };
        assert_eq!(
            args.termination_drain_duration,
            Some(std::time::Duration::from_secs(90))
        );
        assert!(
            Cli::try_parse_from(["mesh-proxy", "run", "--termination-drain-duration", "5"])
                .is_err()
        );
    }

    #[test]
    fn pod_ips_repeat_or_split_on_commas() {
        let cli = Cli::try_parse_from([
            "mesh-proxy",
            "run",
            "--pod-ip",
            "10.0.0.5,fd00::5",
            "--pod-ip",
            "10.0.0.5",
            "--pod-ips",
            "fd00::6",
        ])
        .unwrap();
        let Command::Run(args) = cli.command else {
            panic!("not run")
        };
        let ips: Vec<String> = args.pod_addrs().iter().map(|ip| ip.to_string()).collect();
        assert_eq!(ips, ["10.0.0.5", "fd00::5", "fd00::6"]);
        assert!(Cli::try_parse_from(["mesh-proxy", "run", "--pod-ip", "10.0.0.5,x"]).is_err());
    }

    #[test]
    fn bad_route_is_an_error() {
        assert!(Cli::try_parse_from(["mesh-proxy", "run", "--inbound", "9080"]).is_err());
        assert!(Cli::try_parse_from(["mesh-proxy", "run", "--threads", "0"]).is_err());
    }
}
