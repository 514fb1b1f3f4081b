//! Soak bench: a constant request rate for minutes through two sidecars with tracing on
//! (client → sidecar A outbound forward proxy → sidecar B inbound → echo server, spans to a
//! local sink), sampling each sidecar's RSS, open fds and its open-connection and task gauges.
//! After warm-up each must be flat; at the end every span started must be exported or counted
//! as dropped. A leak that a short test cannot see (a task per request that never ends, a
//! socket kept per trace) shows here as a slope.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use bytes::Bytes;
use clap::Parser;
use mesh_config::{LogLevel, MeshConfig};
use tracemesh_benches::sidecar::{free_port, locate_proxy, Sidecar, Spec};
use tracemesh_benches::soak::{Series, SpanBalance, Tolerance, Verdict};
use tracemesh_benches::{echo, load, scrape, sink};

#[derive(Parser, Debug)]
#[command(
    about = "Constant load through two tracing sidecars; RSS, fds, connections and tasks must stay flat"
)]
struct Args {
    /// The mesh-proxy binary.
    #[arg(long, default_value = "target/release/mesh-proxy")]
    proxy: PathBuf,
    /// Length of the run, minutes (warm-up included).
    #[arg(long, default_value_t = 10.0)]
    minutes: f64,
    /// Warm-up, minutes: samples before it are printed but not judged. Default: a fifth of
    /// the run, at most 2 minutes.
    #[arg(long)]
    warmup_minutes: Option<f64>,
    /// Requests per second, held to a fixed schedule (open loop).
    #[arg(long, default_value_t = 500.0)]
    rate: f64,
    /// Client keep-alive connections.
    #[arg(long, default_value_t = 8)]
    concurrency: usize,
    /// Seconds between samples.
    #[arg(long, default_value_t = 10)]
    sample_seconds: u64,
    /// Worker threads per sidecar (`--threads`).
    #[arg(long, default_value_t = 1)]
    threads: usize,
    /// Request body size in bytes (echoed back).
    #[arg(long, default_value_t = 128)]
    body_size: usize,
    /// RSS may grow by this share of its mean after warm-up (fitted over the window) ...
    #[arg(long, default_value_t = 0.05)]
    rss_growth: f64,
    /// ... or by this many KiB, whichever is larger.
    #[arg(long, default_value_t = 1024.0)]
    rss_slack_kib: f64,
    /// Fds, open connections and tasks may grow by this many, fitted over the window.
    #[arg(long, default_value_t = 3.0)]
    count_slack: f64,
}

/// The gauges a sidecar publishes on `/metrics` that a leak would move.
const GAUGES: [(&str, &str); 2] = [
    ("mesh_proxy_connections_open", "connections"),
    ("mesh_proxy_tasks", "tasks"),
];
/// How long the exporters get, after the load, to send or drop what they hold.
const SETTLE: Duration = Duration::from_secs(30);

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if !(args.minutes > 0.0 && args.minutes.is_finite()) {
        bail!("--minutes must be a positive number");
    }
    if !(args.rate > 0.0 && args.rate.is_finite()) {
        bail!("--rate must be a positive number");
    }
    if args.sample_seconds == 0 {
        bail!("--sample-seconds must be at least 1");
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let passed = rt.block_on(run(args))?;
    if !passed {
        std::process::exit(1);
    }
    Ok(())
}

/// One sidecar's sampled series, in the order printed.
struct Watched {
    sidecar: Sidecar,
    series: Vec<Series>,
}

impl Watched {
    fn new(sidecar: Sidecar) -> Self {
        let label = sidecar.name.clone();
        let mut series = vec![
            Series::new(format!("{label} RSS"), "KiB"),
            Series::new(format!("{label} fds"), ""),
        ];
        for (_, what) in GAUGES {
            series.push(Series::new(format!("{label} {what}"), ""));
        }
        Watched { sidecar, series }
    }

    /// Takes one sample of every series at `t` seconds; returns them for the progress line.
    async fn sample(&mut self, t: f64) -> anyhow::Result<Vec<f64>> {
        let rss = self.sidecar.rss_kib().context("reading RSS")? as f64;
        let fds = self.sidecar.fd_count().context("reading fds")? as f64;
        let text = scrape::get(self.sidecar.admin_port, "/metrics").await?;
        let mut values = vec![rss, fds];
        for (name, _) in GAUGES {
            values.push(scrape::sum(&text, name).with_context(|| {
                format!("{name} missing from {}'s /metrics", self.sidecar.name)
            })?);
        }
        for (s, &v) in self.series.iter_mut().zip(&values) {
            s.push(t, v);
        }
        Ok(values)
    }

    async fn spans(&self) -> anyhow::Result<SpanBalance> {
        let text = scrape::get(self.sidecar.admin_port, "/metrics").await?;
        let get = |name: &str| scrape::sum(&text, name).unwrap_or(0.0);
        Ok(SpanBalance {
            started: get("mesh_proxy_trace_spans_started_total"),
            exported: get("mesh_proxy_trace_spans_exported_total"),
            dropped: get("mesh_proxy_trace_spans_dropped_total"),
        })
    }
}

async fn run(args: Args) -> anyhow::Result<bool> {
    let proxy = locate_proxy(&args.proxy);
    if !proxy.exists() {
        bail!(
            "{} not found (build it: cargo build --release -p mesh-proxy)",
            proxy.display()
        );
    }
    let server = echo::start()?;
    let (sink_addr, counts) = sink::start(sink::Behaviour::Ok)?;
    let work = std::env::temp_dir().join(format!("tracemesh-soak-{}", std::process::id()));
    std::fs::create_dir_all(&work)?;
    let config = work.join("mesh-config.yaml");
    write_config(&config, sink_addr)?;

    let b_listen = SocketAddr::from(([127, 0, 0, 1], free_port()?));
    let spec = |name: &'static str, inbound| Spec {
        name,
        proxy: &proxy,
        mesh_config: &config,
        inbound,
        outbound: Vec::new(),
        threads: args.threads,
        log_dir: &work,
    };
    let b = Sidecar::start(spec("sidecar-b", vec![(b_listen, server)])).await?;
    let a = match Sidecar::start(spec("sidecar-a", Vec::new())).await {
        Ok(a) => a,
        Err(e) => {
            b.stop().await;
            return Err(e);
        }
    };
    let mut watched = [Watched::new(a), Watched::new(b)];
    let result = soak(&args, &mut watched, b_listen, &counts).await;
    let [a, b] = watched;
    a.sidecar.stop().await;
    b.sidecar.stop().await;
    match &result {
        Ok(true) => {
            let _ = std::fs::remove_dir_all(&work);
        }
        _ => eprintln!("sidecar logs kept in {}", work.display()),
    }
    result
}

async fn soak(
    args: &Args,
    watched: &mut [Watched; 2],
    b_listen: SocketAddr,
    counts: &sink::Counts,
) -> anyhow::Result<bool> {
    let duration = Duration::from_secs_f64(args.minutes * 60.0);
    let warmup = args.warmup_minutes.unwrap_or((args.minutes / 5.0).min(2.0)) * 60.0;
    let requests = (args.rate * duration.as_secs_f64()).round() as usize;
    println!(
        "soak: {:.1} min at {} requests/s ({requests} requests, {} connections, {} B bodies), \
         2 sidecars with --threads {}, tracing 100% to a local sink; samples every {} s, \
         judged after {:.1} min of warm-up",
        args.minutes,
        args.rate,
        args.concurrency,
        args.body_size,
        args.threads,
        args.sample_seconds,
        warmup / 60.0
    );
    let target = load::Target::via_proxy(watched[0].sidecar.outbound(), b_listen)?;
    let plan = load::Plan {
        requests,
        concurrency: args.concurrency,
        // The schedule ends at `duration`; a little more lets the last requests finish.
        time_limit: duration + Duration::from_secs(5),
        body: Bytes::from(vec![b'x'; args.body_size]),
        rate: Some(args.rate),
        protocol: load::Protocol::Http1,
    };
    let start = Instant::now();
    let mut load = tokio::spawn(async move { load::run(&target, &plan).await });
    let mut tick = tokio::time::interval(Duration::from_secs(args.sample_seconds));
    let summary = loop {
        tokio::select! {
            done = &mut load => break done.context("load task")?,
            _ = tick.tick() => {
                let t = start.elapsed().as_secs_f64();
                // The schedule is over: the clients are closing their connections, which
                // is not the steady state being judged.
                if t >= duration.as_secs_f64() {
                    continue;
                }
                let mut line = format!("t={t:>6.0}s");
                for w in watched.iter_mut() {
                    let v = w.sample(t).await?;
                    line.push_str(&format!(
                        "  {}: rss {:.0} KiB fds {:.0} conns {:.0} tasks {:.0}",
                        w.sidecar.name, v[0], v[1], v[2], v[3]
                    ));
                }
                line.push_str(&format!("  spans at sink {}", counts.spans.load(Ordering::Relaxed)));
                println!("{line}");
            }
        }
    };
    println!("load: {summary}");

    let mut all_pass = true;
    let load_ok = summary.errors == 0 && !summary.truncated && summary.requests == requests;
    all_pass &= load_ok;
    println!(
        "{} requests: {} of {requests} answered, {} errors{}",
        pass(load_ok),
        summary.requests,
        summary.errors,
        if summary.truncated {
            ", time limit hit (the machine could not hold the rate)"
        } else {
            ""
        }
    );

    let tolerance = |s: &Series| {
        if s.unit == "KiB" {
            Tolerance {
                relative: args.rss_growth,
                absolute: args.rss_slack_kib,
            }
        } else {
            Tolerance {
                relative: 0.0,
                absolute: args.count_slack,
            }
        }
    };
    for w in watched.iter() {
        for s in &w.series {
            match s.verdict(warmup, tolerance(s)) {
                Some(v) => {
                    all_pass &= v.pass;
                    print_verdict(&v);
                }
                None => {
                    all_pass = false;
                    println!(
                        "FAIL {:<28} fewer than 3 samples after warm-up: run longer",
                        s.name
                    );
                }
            }
        }
    }

    // The synchronisation point for the balance: both sidecars' counters agree, or the
    // settle time is up and the figures say what is missing.
    let deadline = Instant::now() + SETTLE;
    let balances = loop {
        let a = watched[0].spans().await?;
        let b = watched[1].spans().await?;
        if (a.balanced() && b.balanced()) || Instant::now() >= deadline {
            break [a, b];
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let expected = 2.0 * summary.requests as f64;
    let exported: f64 = balances.iter().map(|b| b.exported).sum();
    for (w, b) in watched.iter().zip(&balances) {
        all_pass &= b.balanced();
        println!(
            "{} spans {:<18} started {:.0} = exported {:.0} + dropped {:.0}",
            pass(b.balanced()),
            w.sidecar.name,
            b.started,
            b.exported,
            b.dropped
        );
    }
    let started: f64 = balances.iter().map(|b| b.started).sum();
    // Every answered request made one span in each sidecar; failed ones may have too.
    let recorded = started >= expected;
    all_pass &= recorded;
    println!(
        "{} spans started in both sidecars {started:.0} for {} answered requests (2 per request)",
        pass(recorded),
        summary.requests
    );
    let at_sink = counts.spans.load(Ordering::Relaxed) as f64;
    let arrived = at_sink == exported;
    all_pass &= arrived;
    println!(
        "{} spans at the sink {at_sink:.0}, exported by the sidecars {exported:.0}",
        pass(arrived)
    );
    println!("soak {}", if all_pass { "PASSED" } else { "FAILED" });
    Ok(all_pass)
}

fn pass(ok: bool) -> &'static str {
    if ok {
        "PASS"
    } else {
        "FAIL"
    }
}

fn print_verdict(v: &Verdict) {
    println!("{v}");
}

/// Warn logging and tracing at 100% (Zipkin) to the sink.
fn write_config(path: &Path, sink: SocketAddr) -> anyhow::Result<()> {
    let mut config = MeshConfig::default();
    config.spec.sidecar.log_level = LogLevel::Warn;
    let t = &mut config.spec.observability.tracing;
    t.enable = true;
    t.address = sink.ip().to_string();
    t.port = sink.port();
    t.sampled_fraction = 1.0;
    config.validate().context("soak mesh config")?;
    std::fs::write(path, config.to_yaml())?;
    Ok(())
}
