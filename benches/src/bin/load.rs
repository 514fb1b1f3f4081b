//! Load bench: the same bounded load against an echo server directly, through one sidecar
//! (explicit inbound), and through two (client → sidecar A outbound forward proxy → sidecar B
//! inbound → server), all in one run so the three share the machine's conditions.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use bytes::Bytes;
use clap::{Parser, ValueEnum};
use mesh_config::{LogLevel, MeshConfig, Protocol};
use mesh_proxy::trace::pipeline;
use tracemesh_benches::sidecar::{free_port, locate_proxy, Sidecar, Spec};
use tracemesh_benches::stats::Summary;
use tracemesh_benches::{cpu, echo, load, scrape, sink, spans};

#[derive(Parser, Debug)]
#[command(about = "Latency and throughput through tracemesh sidecars vs a direct baseline")]
struct Args {
    /// The mesh-proxy binary.
    #[arg(long, default_value = "target/release/mesh-proxy")]
    proxy: PathBuf,
    /// Requests per scenario and concurrency level.
    #[arg(long, default_value_t = 20_000)]
    requests: usize,
    /// Concurrency levels (connections), comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "1,8,32")]
    concurrency: Vec<usize>,
    /// Hard time limit per measurement, seconds.
    #[arg(long, default_value_t = 30)]
    time_limit: u64,
    /// Warm-up requests before each measurement (not counted).
    #[arg(long, default_value_t = 500)]
    warmup: usize,
    /// Request body size in bytes (echoed back).
    #[arg(long, default_value_t = 128)]
    body_size: usize,
    /// Worker threads per sidecar (`--threads`).
    #[arg(long, default_value_t = 1)]
    threads: usize,
    /// Tracing in the sidecars, at `--sampled-fraction`, exporting to a local sink.
    #[arg(long, value_enum, default_value_t = TracingMode::Off)]
    tracing: TracingMode,
    /// `sampledFraction` when tracing is on: 1 records every request; 0 measures what
    /// propagating the trace context alone costs.
    #[arg(long, default_value_t = 1.0)]
    sampled_fraction: f64,
    /// How the trace sink answers: `down`, `slow` and `error` measure requests through
    /// sidecars whose collector refuses, stalls or fails every export.
    #[arg(long, value_enum, default_value_t = sink::Behaviour::Ok)]
    collector: sink::Behaviour,
    /// Span protocol when tracing is on.
    #[arg(long, default_value = "zipkin")]
    protocol: String,
    /// Rounds of the tracing CPU comparison (tracing off, then on, per round, through two
    /// sidecars); 0 skips it.
    #[arg(long, default_value_t = 0)]
    cpu_rounds: usize,
    /// Requests per configuration and round in the CPU comparison.
    #[arg(long, default_value_t = 10_000)]
    cpu_requests: usize,
    /// Requests per second in the CPU comparison, the same for both configurations, so each
    /// is measured under the same load; 0 sends as fast as answers come back (then the slower
    /// configuration also runs at a lower rate, which by itself changes CPU per request).
    #[arg(long, default_value_t = 0.0)]
    cpu_rate: f64,
    /// Connections in the CPU comparison.
    #[arg(long, default_value_t = 8)]
    cpu_concurrency: usize,
    /// Compare two builds instead of tracing off and on: the first column is this mesh-proxy
    /// binary, with tracing on like `--proxy`, so a change's cost is measured in one run.
    #[arg(long)]
    cpu_baseline: Option<PathBuf>,
    /// Tracing in both pairs when comparing builds with `--cpu-baseline`: `off` measures the
    /// request path alone (an older build may lack some tracing features, so it is the fair
    /// comparison), `on` at `--sampled-fraction` as without the option.
    #[arg(long, value_enum, default_value_t = Switch::On)]
    cpu_tracing: Switch,
    /// Skip the latency comparison (direct / 1 / 2 sidecars), e.g. to run only the CPU one.
    #[arg(long)]
    skip_latency: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Switch {
    On,
    Off,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum TracingMode {
    Off,
    On,
    Both,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    // Two workers: the client must not be the bottleneck, and the machine is small.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(run(args))
}

async fn run(args: Args) -> anyhow::Result<()> {
    let server = echo::start()?;
    let proxy = locate_proxy(&args.proxy);
    let work = std::env::temp_dir().join(format!("tracemesh-bench-{}", std::process::id()));
    std::fs::create_dir_all(&work)?;
    println!(
        "echo server {server}; proxy {}; logs in {}",
        proxy.display(),
        work.display()
    );

    let modes: &[bool] = match args.tracing {
        TracingMode::Off => &[false],
        TracingMode::On => &[true],
        TracingMode::Both => &[false, true],
    };
    let result = async {
        if !proxy.exists() {
            println!("\n{} not found (build it: cargo build --release -p mesh-proxy); direct baseline only", proxy.display());
            for &c in &args.concurrency {
                let s = measure(&args, &load::Target::direct(server), c).await;
                println!("c={c:<3} direct {s}");
            }
            anyhow::bail!("no proxy binary");
        }
        if !args.skip_latency {
            for &tracing in modes {
                run_mode(&args, &proxy, &work, server, tracing).await?;
            }
        }
        if args.cpu_rounds > 0 {
            tracing_cpu(&args, &proxy, &work, server).await?;
        }
        Ok(())
    }
    .await;
    // Keep the sidecars' logs when something failed: they say why.
    let has_logs = std::fs::read_dir(&work)
        .map(|dir| {
            dir.flatten()
                .any(|e| e.path().extension().is_some_and(|x| x == "log"))
        })
        .unwrap_or(false);
    if result.is_ok() || !has_logs {
        let _ = std::fs::remove_dir_all(&work);
    }
    result
}

async fn run_mode(
    args: &Args,
    proxy: &Path,
    work: &Path,
    server: SocketAddr,
    tracing: bool,
) -> anyhow::Result<()> {
    let label = if tracing { "tracing" } else { "plain" };
    let pair = Pair::start(args, proxy, work, server, tracing, label).await?;
    let (a, b, b_listen, sink) = (pair.a, pair.b, pair.b_listen, pair.sink);
    // Let allocations from startup settle before reading the idle footprint.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let idle = (a.rss_kib(), b.rss_kib());

    let scenarios = [
        ("direct", load::Target::direct(server)),
        ("1 sidecar", load::Target::direct(b_listen)),
        (
            "2 sidecars",
            load::Target::via_proxy(a.outbound(), b_listen)?,
        ),
    ];
    for &c in &args.concurrency {
        let mut summaries = Vec::new();
        for (name, target) in &scenarios {
            let s = measure(args, target, c).await;
            println!("c={c:<3} {name:<10} {s}");
            summaries.push(s);
        }
        report_overhead(c, &summaries[0], &summaries[1], &summaries[2]);
    }
    let loaded = (a.rss_kib(), b.rss_kib());
    println!(
        "RSS sidecar A: idle {} KiB, after load {} KiB; sidecar B: idle {} KiB, after load {} KiB",
        kib(idle.0),
        kib(loaded.0),
        kib(idle.1),
        kib(loaded.1)
    );
    if let Some((_, counts)) = &sink {
        // Give the exporters a moment to flush their last batch.
        tokio::time::sleep(Duration::from_secs(2)).await;
        println!(
            "trace sink: {} export requests, {} spans, {} bytes",
            counts.posts.load(Ordering::Relaxed),
            counts.spans.load(Ordering::Relaxed),
            counts.bytes.load(Ordering::Relaxed)
        );
    }
    a.stop().await;
    b.stop().await;
    Ok(())
}

fn kib(v: Option<u64>) -> String {
    v.map(|v| v.to_string()).unwrap_or_else(|| "?".into())
}

async fn measure(args: &Args, target: &load::Target, concurrency: usize) -> Summary {
    let body = Bytes::from(vec![b'x'; args.body_size]);
    let warm = load::Plan {
        requests: args.warmup,
        concurrency,
        time_limit: Duration::from_secs(5),
        body: body.clone(),
        rate: None,
        protocol: load::Protocol::Http1,
    };
    load::run(target, &warm).await;
    let plan = load::Plan {
        requests: args.requests,
        concurrency,
        time_limit: Duration::from_secs(args.time_limit),
        body,
        rate: None,
        protocol: load::Protocol::Http1,
    };
    load::run(target, &plan).await
}

/// Added latency per sidecar (one sidecar: the difference; two: half of it) and ratios.
fn report_overhead(c: usize, direct: &Summary, one: &Summary, two: &Summary) {
    let added = |x: Duration, base: Duration, n: u32| -> String {
        let d = x.as_secs_f64() - base.as_secs_f64();
        format!("{:+.1}", d * 1e6 / f64::from(n))
    };
    let ratio = |x: Duration, base: Duration| -> String {
        if base.is_zero() {
            "?".into()
        } else {
            format!("{:.2}x", x.as_secs_f64() / base.as_secs_f64())
        }
    };
    println!(
        "c={c:<3} added per sidecar: p50 {} µs (1 sidecar) / {} µs (2 sidecars, per hop); p99 {} / {} µs; \
         p50 ratio vs direct {} / {}; throughput ratio {:.2} / {:.2}",
        added(one.p50, direct.p50, 1),
        added(two.p50, direct.p50, 2),
        added(one.p99, direct.p99, 1),
        added(two.p99, direct.p99, 2),
        ratio(one.p50, direct.p50),
        ratio(two.p50, direct.p50),
        safe_div(one.throughput(), direct.throughput()),
        safe_div(two.throughput(), direct.throughput()),
    );
}

fn safe_div(a: f64, b: f64) -> f64 {
    if b > 0.0 {
        a / b
    } else {
        0.0
    }
}

/// Sidecar A (outbound forward proxy) and sidecar B (inbound in front of the server), with
/// their MeshConfig and, when tracing, the sink they export to.
struct Pair {
    a: Sidecar,
    b: Sidecar,
    b_listen: SocketAddr,
    sink: Option<(SocketAddr, Arc<sink::Counts>)>,
}

impl Pair {
    /// `label` names the pair's files and sidecars (`sidecar-a-<label>`). Free ports are found
    /// by binding port 0 and letting go, so another socket (a client's ephemeral port) can take
    /// one before a sidecar binds it: a pair that fails to start is tried again on new ports.
    async fn start(
        args: &Args,
        proxy: &Path,
        work: &Path,
        server: SocketAddr,
        tracing: bool,
        label: &str,
    ) -> anyhow::Result<Pair> {
        let mut attempt = 1;
        loop {
            match Self::start_once(args, proxy, work, server, tracing, label).await {
                Err(e) if attempt < 3 => {
                    eprintln!("{label} sidecars did not start ({e:#}); trying new ports");
                    attempt += 1;
                }
                result => return result,
            }
        }
    }

    async fn start_once(
        args: &Args,
        proxy: &Path,
        work: &Path,
        server: SocketAddr,
        tracing: bool,
        label: &str,
    ) -> anyhow::Result<Pair> {
        let sink = if tracing {
            Some(sink::start(args.collector)?)
        } else {
            None
        };
        let config_path = work.join(format!("mesh-config-{label}.yaml"));
        write_config(args, &config_path, sink.as_ref().map(|(addr, _)| *addr))?;
        let b_listen = SocketAddr::from(([127, 0, 0, 1], free_port()?));
        let b = Sidecar::start(Spec {
            name: &format!("sidecar-b-{label}"),
            proxy,
            mesh_config: &config_path,
            inbound: vec![(b_listen, server)],
            outbound: Vec::new(),
            threads: args.threads,
            log_dir: work,
        })
        .await?;
        let a = match Sidecar::start(Spec {
            name: &format!("sidecar-a-{label}"),
            proxy,
            mesh_config: &config_path,
            inbound: Vec::new(),
            outbound: Vec::new(),
            threads: args.threads,
            log_dir: work,
        })
        .await
        {
            Ok(a) => a,
            Err(e) => {
                b.stop().await;
                return Err(e);
            }
        };
        Ok(Pair {
            a,
            b,
            b_listen,
            sink,
        })
    }

    /// utime + stime of both sidecars, in clock ticks: the coarse cross-check.
    fn ticks(&self) -> Option<u64> {
        Some(cpu::ticks(self.a.pid()?)? + cpu::ticks(self.b.pid()?)?)
    }

    /// Nanoseconds on CPU of sidecar A, of sidecar B, and of both sidecars' span export
    /// threads (part of the first two).
    fn on_cpu_ns(&self) -> Option<(u64, u64, u64)> {
        let (a, a_export) = cpu::on_cpu_ns(self.a.pid()?, pipeline::EXPORT_THREAD)?;
        let (b, b_export) = cpu::on_cpu_ns(self.b.pid()?, pipeline::EXPORT_THREAD)?;
        Some((a, b, a_export + b_export))
    }

    /// The run's spans so far: `expected` from the requests sent, each sidecar's counters from
    /// its `/metrics`, the sink's count read after them.
    async fn tally(&self, expected: u64) -> anyhow::Result<spans::Tally> {
        let mut sidecars = Vec::with_capacity(2);
        for side in [&self.a, &self.b] {
            let text = scrape::get(side.admin_port, "/metrics").await?;
            sidecars.push(spans::SidecarSpans::from_metrics(&text));
        }
        let (received, undecodable) = self.sink.as_ref().map_or((0, 0), |(_, c)| {
            (
                c.spans.load(Ordering::Relaxed),
                c.undecodable.load(Ordering::Relaxed),
            )
        });
        Ok(spans::Tally {
            expected,
            sidecars,
            received,
            undecodable,
        })
    }

    /// [`Pair::tally`] once every started span is exported or dropped (within `limit`).
    async fn settled_tally(&self, expected: u64, limit: Duration) -> anyhow::Result<spans::Tally> {
        spans::settle(|| self.tally(expected), limit).await
    }

    async fn stop(self) {
        self.a.stop().await;
        self.b.stop().await;
    }
}

/// The bench MeshConfig: warn logging, and tracing at `--sampled-fraction` to `sink` when given.
fn write_config(args: &Args, path: &Path, sink: Option<SocketAddr>) -> anyhow::Result<()> {
    let mut config = MeshConfig::default();
    config.spec.sidecar.log_level = LogLevel::Warn;
    if let Some(addr) = sink {
        let t = &mut config.spec.observability.tracing;
        t.enable = true;
        t.address = addr.ip().to_string();
        t.port = addr.port();
        t.sampled_fraction = args.sampled_fraction;
        t.protocol = match args.protocol.as_str() {
            "otlp-http" => Protocol::OtlpHttp,
            "otlp-grpc" => Protocol::OtlpGrpc,
            _ => Protocol::Zipkin,
        };
        t.endpoint = match t.protocol {
            Protocol::Zipkin => "/api/v2/spans".into(),
            _ => "/v1/traces".into(),
        };
    }
    config.validate().context("bench mesh config")?;
    std::fs::write(path, config.to_yaml())?;
    Ok(())
}

/// How long the tracing sidecars get to export or drop every started span before the sink's
/// count is read: a batch leaves within `BATCH_DELAY` (100 ms) of its first span, so anything
/// still held after this is a stuck exporter, and the reading says so.
const SETTLE_LIMIT: Duration = Duration::from_secs(10);

/// Spans the tracing pair should have produced for `sent` requests: one per sidecar each.
fn expected_spans(args: &Args, sent: usize) -> u64 {
    (2.0 * args.sampled_fraction * sent as f64).round() as u64
}

/// Whether a round's tally shows nothing amiss: no span dropped, lost or undecodable, and at
/// `sampledFraction` 1 (where the count is exact) every expected span received.
fn round_is_whole(args: &Args, t: &spans::Tally) -> bool {
    let exact = args.sampled_fraction >= 1.0;
    t.settled()
        && t.lost() == 0
        && t.undecodable == 0
        && t.dropped().is_empty()
        && (!exact || t.complete())
}

/// One figure taken from a round.
type Metric = fn(&Round) -> f64;

/// One configuration's figures in one round.
struct Round {
    /// CPU µs per request in sidecar A and sidecar B.
    cpu: (f64, f64),
    /// Of which both sidecars' export threads.
    export: f64,
    /// The same for both together from utime + stime (tick-sampled, so coarser and biased
    /// low for bursty processes; printed as a cross-check).
    ticks: f64,
    p50: Duration,
    p99: Duration,
}

/// CPU per request with tracing on (at `--sampled-fraction`) vs off. Both sidecar pairs run side by side
/// for the whole comparison and are loaded in turn (off, on, off, on...), so machine drift
/// (other load on a shared host) hits both alike; the figures are medians over the rounds.
async fn tracing_cpu(
    args: &Args,
    proxy: &Path,
    work: &Path,
    server: SocketAddr,
) -> anyhow::Result<()> {
    // Comparing builds, both pairs trace alike (`--cpu-tracing`); otherwise off against on.
    let both = args.cpu_tracing == Switch::On;
    let off = match &args.cpu_baseline {
        Some(baseline) => Pair::start(args, baseline, work, server, both, "baseline").await?,
        None => Pair::start(args, proxy, work, server, false, "plain").await?,
    };
    let tracing = args.cpu_baseline.is_none() || both;
    let on = match Pair::start(args, proxy, work, server, tracing, "tracing").await {
        Ok(p) => p,
        Err(e) => {
            off.stop().await;
            return Err(e);
        }
    };
    let result = tracing_cpu_rounds(args, &off, &on).await;
    off.stop().await;
    on.stop().await;
    result
}

async fn tracing_cpu_rounds(args: &Args, off: &Pair, on: &Pair) -> anyhow::Result<()> {
    println!(
        "\n== tracing CPU: 2 sidecars, sampledFraction {}, {}, {} rounds x {} requests per \
         configuration, {} connections, {} B bodies, sidecar threads {}; CPU = run time of every \
         sidecar thread from /proc/PID/task/*/schedstat{}",
        args.sampled_fraction,
        if args.cpu_rate > 0.0 {
            format!("{} requests/s", args.cpu_rate)
        } else {
            "closed loop".to_owned()
        },
        args.cpu_rounds,
        args.cpu_requests,
        args.cpu_concurrency,
        args.body_size,
        args.threads,
        match &args.cpu_baseline {
            Some(b) => format!(
                "; \"off\" is {}, \"on\" this build, tracing {} in both (build against build)",
                b.display(),
                if args.cpu_tracing == Switch::On {
                    "on"
                } else {
                    "off"
                },
            ),
            None => String::new(),
        },
    );
    let mut sent_on = 0usize;
    let mut rounds: [Vec<Round>; 2] = [Vec::new(), Vec::new()];
    for round in 1..=args.cpu_rounds {
        // ABBA order (off, on, then on, off): whichever runs second in a round meets a warmer
        // (or busier) machine, and alternating cancels that out of the medians.
        let order = if round % 2 == 1 { [0, 1] } else { [1, 0] };
        for i in order {
            let pair = [off, on][i];
            let target = load::Target::via_proxy(pair.a.outbound(), pair.b_listen)?;
            let body = Bytes::from(vec![b'x'; args.body_size]);
            let warm = load::Plan {
                requests: args.warmup,
                concurrency: args.cpu_concurrency,
                time_limit: Duration::from_secs(5),
                body: body.clone(),
                rate: None,
                protocol: load::Protocol::Http1,
            };
            let w = load::run(&target, &warm).await;
            let before = pair.on_cpu_ns().context("reading sidecar CPU time")?;
            let ticks_before = pair.ticks().context("reading sidecar CPU ticks")?;
            let plan = load::Plan {
                requests: args.cpu_requests,
                concurrency: args.cpu_concurrency,
                time_limit: Duration::from_secs(args.time_limit),
                body,
                rate: (args.cpu_rate > 0.0).then_some(args.cpu_rate),
                protocol: load::Protocol::Http1,
            };
            let s = load::run(&target, &plan).await;
            // The exporter batches off the request path: let it send this round's spans so
            // their CPU lands in this round (both configurations wait alike).
            tokio::time::sleep(Duration::from_millis(300)).await;
            let after = pair.on_cpu_ns().context("reading sidecar CPU time")?;
            let ticks_after = pair.ticks().context("reading sidecar CPU ticks")?;
            if i == 1 {
                sent_on += w.requests + w.errors + s.requests + s.errors;
            }
            let r = Round {
                cpu: (
                    cpu::micros_per_request_ns(after.0.saturating_sub(before.0), s.requests),
                    cpu::micros_per_request_ns(after.1.saturating_sub(before.1), s.requests),
                ),
                export: cpu::micros_per_request_ns(after.2.saturating_sub(before.2), s.requests),
                ticks: cpu::micros_per_request(
                    ticks_after.saturating_sub(ticks_before),
                    s.requests,
                ),
                p50: s.p50,
                p99: s.p99,
            };
            println!(
                "round {round} tracing {:<3} CPU/request: A {:.1} µs, B {:.1} µs, sum {:.1} µs; {s}",
                if i == 1 { "on" } else { "off" },
                r.cpu.0,
                r.cpu.1,
                r.cpu.0 + r.cpu.1
            );
            rounds[i].push(r);
            if i == 1 && pair.sink.is_some() {
                // Checked every round, outside its CPU window, so a shortfall is pinned to the
                // round it happened in; a round with every span accounted for prints nothing.
                // A failing or slow collector holds spans for its backoff or answer: one reading
                // then, rather than a wait per round.
                let limit = if args.collector == sink::Behaviour::Ok {
                    SETTLE_LIMIT
                } else {
                    Duration::ZERO
                };
                let t = pair
                    .settled_tally(expected_spans(args, sent_on), limit)
                    .await?;
                if !round_is_whole(args, &t) {
                    println!("  spans after round {round}: {t}");
                }
            }
        }
    }
    let med = |rs: &[Round], f: Metric| cpu::median(&rs.iter().map(f).collect::<Vec<_>>());
    let rows: [(&str, Metric); 7] = [
        ("CPU/request sidecar A (µs)", |r| r.cpu.0),
        ("CPU/request sidecar B (µs)", |r| r.cpu.1),
        ("CPU/request both (µs)", |r| r.cpu.0 + r.cpu.1),
        ("  of which export threads", |r| r.export),
        ("  both, tick-sampled (µs)", |r| r.ticks),
        ("latency p50 (µs)", |r| r.p50.as_secs_f64() * 1e6),
        ("latency p99 (µs)", |r| r.p99.as_secs_f64() * 1e6),
    ];
    println!(
        "medians over {} rounds:      off        on   on/off",
        args.cpu_rounds
    );
    for (name, f) in rows {
        let (a, b) = (med(&rounds[0], f), med(&rounds[1], f));
        let ratio = if a > 0.0 {
            format!("{:.3}", b / a)
        } else {
            "-".to_owned()
        };
        println!("{name:<27} {a:>8.2} {b:>9.2}   {ratio}");
    }
    // Each round's on/off pair ran back to back, so its ratio is the least exposed to drift;
    // their median and spread say how far to trust the figure above.
    let mut ratios: Vec<f64> = rounds[0]
        .iter()
        .zip(&rounds[1])
        .map(|(off, on)| safe_div(on.cpu.0 + on.cpu.1, off.cpu.0 + off.cpu.1))
        .collect();
    ratios.sort_by(|a, b| a.total_cmp(b));
    if let (Some(lo), Some(hi), Some((ci_lo, ci_hi))) =
        (ratios.first(), ratios.last(), cpu::median_interval(&ratios))
    {
        println!(
            "CPU on/off per round: median {:.3} (95% interval {ci_lo:.3}-{ci_hi:.3}), range \
             {lo:.3}-{hi:.3}",
            cpu::median(&ratios)
        );
    }
    println!(
        "RSS after load (KiB): off A {} B {}; on A {} B {}",
        kib(off.a.rss_kib()),
        kib(off.b.rss_kib()),
        kib(on.a.rss_kib()),
        kib(on.b.rss_kib())
    );
    let posts = on
        .sink
        .as_ref()
        .map_or(0, |(_, c)| c.posts.load(Ordering::Relaxed));
    let (spans, share, tally) = if on.sink.is_some() {
        let expected = expected_spans(args, sent_on);
        let t = on.settled_tally(expected, SETTLE_LIMIT).await?;
        let share = if expected > 0 {
            format!("{:.3} of expected", t.received as f64 / expected as f64)
        } else {
            "none expected".to_owned()
        };
        (t.received, share, Some(t))
    } else {
        (0, "none expected".to_owned(), None)
    };
    println!(
        "trace sink ({:?} collector): {spans} spans in {posts} exports for {sent_on} requests \
         through the tracing sidecars (2 x sampledFraction spans expected per request: {share})",
        args.collector
    );
    if let Some(t) = tally {
        println!("spans: {t}");
    }
    Ok(())
}
