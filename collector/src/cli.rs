//! `mesh collector`: the receivers of [`Collector`] plus a printer that shows each trace as a
//! tree once it has been quiet for a moment (spans of one trace arrive in several batches).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;

use crate::{render_tree, Collector, CollectorConfig, RunningCollector};

/// A trace is printed after this long without a new span.
pub const QUIET_PERIOD: Duration = Duration::from_secs(1);

/// `mesh collector` flags.
#[derive(Debug, Clone, clap::Args)]
#[command(after_help = "\
Every listener accepts all three formats (gRPC by its content type); with no address given it
listens on 127.0.0.1:9411 (Zipkin), :4318 (OTLP/HTTP) and :4317 (OTLP/gRPC). Invalid spans get
400 with the field named. A trace prints once no span arrived for it for a second.

Examples:
  mesh collector --zipkin 127.0.0.1:9411 --out spans.jsonl
  mesh config patch -p '{\"spec\":{\"observability\":{\"tracing\":{\"enable\":true,\"address\":\"127.0.0.1\"}}}}'")]
pub struct Args {
    /// Zipkin v2 JSON receiver (POST /api/v2/spans).
    #[arg(long, value_name = "ADDR")]
    pub zipkin: Option<SocketAddr>,
    /// OTLP/HTTP protobuf receiver (POST /v1/traces).
    #[arg(long = "otlp-http", value_name = "ADDR")]
    pub otlp_http: Option<SocketAddr>,
    /// OTLP/gRPC receiver (TraceService/Export).
    #[arg(long = "otlp-grpc", value_name = "ADDR")]
    pub otlp_grpc: Option<SocketAddr>,
    /// Append every span to FILE as one Zipkin v2 JSON object per line.
    #[arg(long, value_name = "FILE")]
    pub out: Option<PathBuf>,
}

impl Args {
    /// With no receiver named, listen where Zipkin and OTLP collectors usually do.
    fn config(&self) -> CollectorConfig {
        let mut config = CollectorConfig {
            zipkin: self.zipkin,
            otlp_http: self.otlp_http,
            otlp_grpc: self.otlp_grpc,
            out: self.out.clone(),
        };
        if config.zipkin.is_none() && config.otlp_http.is_none() && config.otlp_grpc.is_none() {
            config.zipkin = Some(SocketAddr::from(([127, 0, 0, 1], 9411)));
            config.otlp_http = Some(SocketAddr::from(([127, 0, 0, 1], 4318)));
            config.otlp_grpc = Some(SocketAddr::from(([127, 0, 0, 1], 4317)));
        }
        config
    }
}

/// Runs until Ctrl-C (or SIGTERM), printing traces as they complete.
pub async fn run(args: Args) -> anyhow::Result<()> {
    // Refused batches are logged: a sender getting 400s wants to see why here too.
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("tracemesh_collector=info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
    let collector = Collector::start(args.config())
        .await
        .context("starting the collector")?;
    for (what, addr, path) in [
        ("zipkin", collector.zipkin, "/api/v2/spans"),
        ("otlp-http", collector.otlp_http, "/v1/traces"),
        ("otlp-grpc", collector.otlp_grpc, ""),
    ] {
        if let Some(addr) = addr {
            eprintln!("listening: {what} on http://{addr}{path}");
        }
    }
    tokio::select! {
        () = print_traces(&collector, QUIET_PERIOD) => {}
        () = shutdown_signal() => {}
    }
    // Whatever arrived just before the signal is still worth showing.
    print!(
        "{}",
        render_tree(&collector.take_completed(Duration::ZERO).concat())
    );
    Ok(())
}

/// Prints completed traces forever.
pub async fn print_traces(collector: &RunningCollector, quiet: Duration) {
    let mut tick = tokio::time::interval(Duration::from_millis(200));
    loop {
        tick.tick().await;
        for trace in collector.take_completed(quiet) {
            println!("{}", render_tree(&trace));
        }
    }
}

/// Resolves on Ctrl-C or SIGTERM.
pub async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
