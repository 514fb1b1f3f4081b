//! tracemesh vs Envoy beyond HTTP/1.1 with small bodies: h2c and gRPC unary at fixed rates,
//! 64 KiB and 1 MiB bodies, a new connection per request, opaque TCP bulk transfer, and idle
//! keep-alive connections held open. Every workload goes through both pairs on the same
//! topology, interleaved round by round (A B, then B A), HTTP workloads with tracing at 100%.

use std::fmt;
use std::str::FromStr;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::Bytes;

use crate::compare::Proc;
use crate::compare::{self, ratio, Pair, Sample, Setup, Table, SYSTEMS};
use crate::load::{self, Protocol};
use crate::stats::Summary;
use crate::{cpu, echo, scrape, tcp};

/// One workload of the comparison.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Workload {
    /// HTTP/1.1 keep-alive, 1 KiB bodies: the existing mode's load, as the reference row.
    Http1,
    /// h2c: many streams on a few connections, 1 KiB bodies.
    H2c,
    /// gRPC unary over h2c, 1 KiB messages, `grpc-status` in trailers.
    Grpc,
    /// HTTP/1.1 with 64 KiB bodies (echoed, so 64 KiB answers too).
    Body64k,
    /// HTTP/1.1 with 1 MiB bodies.
    Body1m,
    /// HTTP/1.1, one request per connection (`connection: close`): connection setup cost.
    Short,
    /// Opaque TCP bulk transfer: throughput against direct, CPU per GiB.
    Tcp,
    /// Keep-alive connections held open and idle: RSS growth per connection.
    Idle,
}

/// Every workload, in the order they run and print.
pub const ALL: [Workload; 8] = [
    Workload::Http1,
    Workload::H2c,
    Workload::Grpc,
    Workload::Body64k,
    Workload::Body1m,
    Workload::Short,
    Workload::Tcp,
    Workload::Idle,
];

impl Workload {
    pub fn name(self) -> &'static str {
        match self {
            Workload::Http1 => "http1",
            Workload::H2c => "h2c",
            Workload::Grpc => "grpc",
            Workload::Body64k => "64k",
            Workload::Body1m => "1m",
            Workload::Short => "short",
            Workload::Tcp => "tcp",
            Workload::Idle => "idle",
        }
    }

    /// For an HTTP workload: how requests travel, the body size, and the rate before
    /// `--rate-scale` (lower for large bodies, so that no system is pushed past saturation on
    /// a 2-core machine and CPU per request compares like with like).
    pub fn http(self, h2_connections: usize) -> Option<(Protocol, usize, f64)> {
        let h2 = h2_connections;
        Some(match self {
            Workload::Http1 => (Protocol::Http1, 1024, 1000.0),
            Workload::H2c => (Protocol::H2c { connections: h2 }, 1024, 1000.0),
            Workload::Grpc => (Protocol::Grpc { connections: h2 }, 1024, 1000.0),
            Workload::Body64k => (Protocol::Http1, 64 << 10, 200.0),
            Workload::Body1m => (Protocol::Http1, 1 << 20, 20.0),
            Workload::Short => (Protocol::Http1Close, 1024, 300.0),
            Workload::Tcp | Workload::Idle => return None,
        })
    }
}

impl fmt::Display for Workload {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Workload {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let s = s.trim();
        ALL.into_iter()
            .find(|w| w.name().eq_ignore_ascii_case(s))
            .ok_or_else(|| {
                let names: Vec<_> = ALL.iter().map(|w| w.name()).collect();
                format!("unknown workload {s:?}: one of all, {}", names.join(", "))
            })
    }
}

/// A set of workloads from the command line: `all`, or names separated by commas. Kept in
/// [`ALL`]'s order, each once.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Selection(pub Vec<Workload>);

impl FromStr for Selection {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let mut picked = Vec::new();
        for part in s.split(',').filter(|p| !p.trim().is_empty()) {
            if part.trim().eq_ignore_ascii_case("all") {
                picked.extend(ALL);
            } else {
                picked.push(part.parse()?);
            }
        }
        if picked.is_empty() {
            return Err("no workload named".into());
        }
        Ok(Selection(
            ALL.into_iter().filter(|w| picked.contains(w)).collect(),
        ))
    }
}

/// The knobs of a workloads run.
#[derive(Clone, Debug)]
pub struct Options {
    pub rounds: usize,
    pub seconds: f64,
    pub concurrency: usize,
    pub warmup: usize,
    pub h2_connections: usize,
    pub rate_scale: f64,
    pub tcp_bytes: u64,
    pub idle_connections: usize,
}

/// One opaque TCP transfer through a pair: Gbit/s and CPU per GiB of both sidecars.
#[derive(Clone, Copy, Debug, Default)]
struct TcpSample {
    gbps: f64,
    cpu_ms_per_gib: f64,
    failed: bool,
}

/// One idle measurement: RSS growth per held connection, A and B together.
#[derive(Clone, Copy, Debug, Default)]
struct IdleSample {
    kib_per_conn: f64,
    held: usize,
    failed: usize,
}

/// The median of figure `f` over the transfers that completed.
fn tcp_median(samples: &[TcpSample], f: fn(&TcpSample) -> f64) -> f64 {
    cpu::median(
        &samples
            .iter()
            .filter(|s| !s.failed)
            .map(f)
            .collect::<Vec<_>>(),
    )
}

/// The median RSS growth per connection over the rounds that held any.
fn kib_per_conn(samples: &[IdleSample]) -> f64 {
    cpu::median(
        &samples
            .iter()
            .filter(|s| s.held > 0)
            .map(|s| s.kib_per_conn)
            .collect::<Vec<_>>(),
    )
}

/// Runs the selected workloads and prints every measurement, then the Markdown tables.
pub async fn run(opts: &Options, setup: &Setup<'_>, selection: &Selection) -> anyhow::Result<()> {
    let list = &selection.0;
    let mut out = Report::default();
    let needs_pairs = list.iter().any(|w| *w != Workload::Idle);
    if needs_pairs {
        let [mesh, envoy] = compare::start_both(setup).await?;
        let result = shared_pairs(opts, setup, list, [&mesh, &envoy], &mut out).await;
        mesh.stop().await;
        envoy.stop().await;
        result?;
    }
    if list.contains(&Workload::Idle) {
        out.idle = Some(idle(opts, setup).await?);
    }
    out.print(opts);
    Ok(())
}

#[derive(Default)]
struct Report {
    http: Vec<(Workload, Table)>,
    /// For h2c and gRPC: requests that reached the app over HTTP/2, and requests answered,
    /// sent (warm-up included), per system: both should match, the sidecars keep HTTP/2
    /// upstream.
    upstream_h2: Vec<(Workload, [u64; 2], [usize; 2])>,
    tcp: Option<([Vec<TcpSample>; 2], Vec<f64>)>,
    /// Connections tracemesh's A proxied on the opaque path (detection skipped).
    tcp_opaque: Option<f64>,
    idle: Option<[Vec<IdleSample>; 2]>,
    spans: Option<([u64; 2], [usize; 2])>,
}

/// The workloads that share one long-lived pair of each system: the HTTP loads and TCP bulk.
async fn shared_pairs(
    opts: &Options,
    setup: &Setup<'_>,
    list: &[Workload],
    pairs: [&Pair; 2],
    out: &mut Report,
) -> anyhow::Result<()> {
    let direct = load::Target::direct(setup.server);
    let targets = pairs.map(|p| load::Target::direct(p.entry));
    let mut sent = [0usize; 2];
    for &w in list {
        let Some((protocol, body_size, rate)) = w.http(opts.h2_connections) else {
            continue;
        };
        let rate = rate * opts.rate_scale;
        let requests = ((rate * opts.seconds).round() as usize).max(1);
        let plan = load::Plan {
            requests,
            concurrency: opts.concurrency,
            time_limit: Duration::from_secs_f64(opts.seconds + 10.0),
            body: Bytes::from(vec![b'x'; body_size]),
            rate: Some(rate),
            protocol,
        };
        // At most a second of the workload's own rate: 200 warm-up requests of 1 MiB at
        // 20/s would take longer than the measurement.
        let warm = load::Plan {
            requests: opts.warmup.min(rate.ceil() as usize).max(1),
            ..plan.clone()
        };
        let label = format!("{w}, {rate} rps");
        let mut base: Vec<Summary> = Vec::new();
        let mut samples: [Vec<Sample>; 2] = [Vec::new(), Vec::new()];
        let mut h2 = [0u64; 2];
        let mut sent_here = [0usize; 2];
        for round in 1..=opts.rounds {
            load::run(&direct, &warm).await;
            let d = load::run(&direct, &plan).await;
            println!("{label} round {round} direct     {d}");
            base.push(d);
            for i in order(round) {
                let h2_before = echo::http2_requests();
                let (s, sample, n) = compare::measure(pairs[i], &targets[i], &warm, &plan).await?;
                h2[i] += echo::http2_requests() - h2_before;
                sent_here[i] += n;
                sent[i] += n;
                println!(
                    "{label} round {round} {:<10} {s}  CPU {:.1} µs/request",
                    SYSTEMS[i], sample.cpu_us
                );
                samples[i].push(sample);
            }
        }
        if matches!(protocol, Protocol::H2c { .. } | Protocol::Grpc { .. }) {
            out.upstream_h2.push((w, h2, sent_here));
        }
        out.http
            .push((w, Table::new(label, requests, &base, &samples)));
    }
    if list.contains(&Workload::Tcp) {
        out.tcp = Some(tcp_bulk(opts, setup, pairs).await?);
        // As benches/tcp_bulk.sh: the transfers must have taken the opaque path.
        if let Proc::Mesh(a) = &pairs[0].a {
            out.tcp_opaque = scrape::get(a.admin_port, "/metrics").await.ok().and_then(|m| {
                scrape::sum(
                    &m,
                    "mesh_proxy_protocol_detections_total{direction=\"outbound\",outcome=\"skipped\"}",
                )
            });
        }
    }
    if !out.http.is_empty() {
        // Envoy flushes a partial span batch every 5 s: wait it out before counting.
        tokio::time::sleep(Duration::from_secs(6)).await;
        let spans = [0, 1].map(|i| pairs[i].spans.spans.load(Ordering::Relaxed));
        out.spans = Some((spans, sent));
    }
    Ok(())
}

/// A B in odd rounds, B A in even ones: whichever goes second meets a warmer (or busier)
/// machine.
fn order(round: usize) -> [usize; 2] {
    if round % 2 == 1 {
        [0, 1]
    } else {
        [1, 0]
    }
}

const TCP_TIME_LIMIT: Duration = Duration::from_secs(60);

async fn tcp_bulk(
    opts: &Options,
    setup: &Setup<'_>,
    pairs: [&Pair; 2],
) -> anyhow::Result<([Vec<TcpSample>; 2], Vec<f64>)> {
    let sink = setup
        .tcp_sink
        .ok_or_else(|| anyhow::anyhow!("no TCP sink"))?;
    let gib = opts.tcp_bytes as f64 / (1u64 << 30) as f64;
    let mut direct = Vec::new();
    let mut samples: [Vec<TcpSample>; 2] = [Vec::new(), Vec::new()];
    for round in 1..=opts.rounds {
        match tcp::transfer(sink, opts.tcp_bytes, TCP_TIME_LIMIT).await {
            Ok(t) => {
                println!("tcp round {round} direct     {:.2} Gbit/s", t.gbit_per_s());
                direct.push(t.gbit_per_s());
            }
            Err(e) => println!("tcp round {round} direct     failed: {e:#}"),
        }
        for i in order(round) {
            let entry = pairs[i]
                .tcp_entry
                .ok_or_else(|| anyhow::anyhow!("{} pair has no TCP route", SYSTEMS[i]))?;
            let before = pairs[i].cpu()?;
            let result = tcp::transfer(entry, opts.tcp_bytes, TCP_TIME_LIMIT).await;
            let after = pairs[i].cpu()?;
            let sample = match result {
                Ok(t) => TcpSample {
                    gbps: t.gbit_per_s(),
                    cpu_ms_per_gib: after.0.saturating_sub(before.0) as f64 / 1e6 / gib,
                    failed: false,
                },
                Err(e) => {
                    println!("tcp round {round} {:<10} failed: {e:#}", SYSTEMS[i]);
                    TcpSample {
                        failed: true,
                        ..TcpSample::default()
                    }
                }
            };
            if !sample.failed {
                println!(
                    "tcp round {round} {:<10} {:.2} Gbit/s  CPU {:.0} ms/GiB",
                    SYSTEMS[i], sample.gbps, sample.cpu_ms_per_gib
                );
            }
            samples[i].push(sample);
        }
    }
    Ok((samples, direct))
}

/// Connections opened at once while building up the idle set, so neither system sees a burst
/// of a thousand simultaneous requests (which would size its upstream pool, not its idle
/// footprint).
const IDLE_BATCH: usize = 50;

/// Idle keep-alive connections: for each round and system, a fresh pair (so memory freed by
/// earlier workloads does not hide the growth), warmed up, its RSS taken, then
/// `idle_connections` connections opened through it, each carrying one 1 KiB request and then
/// left idle, and the RSS taken again.
async fn idle(opts: &Options, setup: &Setup<'_>) -> anyhow::Result<[Vec<IdleSample>; 2]> {
    let no_tcp = Setup {
        tcp_sink: None,
        ..*setup
    };
    let body = Bytes::from(vec![b'x'; 1024]);
    let mut samples: [Vec<IdleSample>; 2] = [Vec::new(), Vec::new()];
    for round in 1..=opts.rounds {
        for i in order(round) {
            let pair = compare::start(i, &no_tcp, &format!("-idle{round}")).await?;
            let target = load::Target::direct(pair.entry);
            let warm = load::Plan {
                requests: 200,
                concurrency: 8,
                time_limit: Duration::from_secs(10),
                body: body.clone(),
                rate: None,
                protocol: Protocol::Http1,
            };
            load::run(&target, &warm).await;
            tokio::time::sleep(Duration::from_secs(1)).await;
            let before = pair.rss_kib();
            let mut held = Vec::with_capacity(opts.idle_connections);
            let mut failed = 0;
            let mut left = opts.idle_connections;
            while left > 0 {
                let n = left.min(IDLE_BATCH);
                left -= n;
                let batch: Vec<_> = (0..n)
                    .map(|_| {
                        let target = target.clone();
                        let body = body.clone();
                        tokio::spawn(async move { load::held_connection(&target, body).await })
                    })
                    .collect();
                for task in batch {
                    match task.await {
                        Ok(Ok(s)) => held.push(s),
                        _ => failed += 1,
                    }
                }
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
            let after = pair.rss_kib();
            let sample = match (before, after) {
                (Some(b), Some(a)) if !held.is_empty() => IdleSample {
                    kib_per_conn: (a as f64 - b as f64) / held.len() as f64,
                    held: held.len(),
                    failed,
                },
                _ => IdleSample {
                    held: held.len(),
                    failed: failed.max(1),
                    ..IdleSample::default()
                },
            };
            println!(
                "idle round {round} {:<10} {} held ({} failed), RSS A+B {} -> {} KiB: {:.1} KiB per connection",
                SYSTEMS[i],
                sample.held,
                sample.failed,
                before.unwrap_or(0),
                after.unwrap_or(0),
                sample.kib_per_conn
            );
            samples[i].push(sample);
            drop(held);
            pair.stop().await;
        }
    }
    Ok(samples)
}

impl Report {
    fn print(&self, opts: &Options) {
        println!();
        println!(
            "tracemesh vs Envoy, workloads: {} rounds, {} s per HTTP measurement, {} client \
             connections ({} shared h2c connections), rates × {}, medians over the rounds \
             (CPU: both sidecars' threads, from /proc/PID/task/*/schedstat)",
            opts.rounds, opts.seconds, opts.concurrency, opts.h2_connections, opts.rate_scale
        );
        println!();
        println!("| workload | figure | tracemesh | Envoy | tracemesh / Envoy |");
        println!("|---|---|---|---|---|");
        for (_, t) in &self.http {
            t.print();
        }
        if let Some((samples, direct)) = &self.tcp {
            let label = format!("opaque TCP, {} MiB", opts.tcp_bytes >> 20);
            let ok = |i: usize, f: fn(&TcpSample) -> f64| tcp_median(&samples[i], f);
            let gbps = [ok(0, |s| s.gbps), ok(1, |s| s.gbps)];
            let cpu = [ok(0, |s| s.cpu_ms_per_gib), ok(1, |s| s.cpu_ms_per_gib)];
            let d = cpu::median(direct);
            println!(
                "| {label} | throughput (Gbit/s; direct {d:.2}) | {:.2} | {:.2} | {} |",
                gbps[0],
                gbps[1],
                ratio(gbps[0], gbps[1])
            );
            println!(
                "| {label} | throughput / direct | {} | {} | |",
                ratio(gbps[0], d),
                ratio(gbps[1], d)
            );
            println!(
                "| {label} | CPU per GiB, both sidecars (ms) | {:.0} | {:.0} | {} |",
                cpu[0],
                cpu[1],
                ratio(cpu[0], cpu[1])
            );
            let failed = |i: usize| samples[i].iter().filter(|s| s.failed).count();
            println!(
                "| {label} | failed / transfers | {} / {} | {} / {} | |",
                failed(0),
                samples[0].len(),
                failed(1),
                samples[1].len()
            );
        }
        if let Some(samples) = &self.idle {
            let label = format!("{} idle connections", opts.idle_connections);
            let kib = [0, 1].map(|i| kib_per_conn(&samples[i]));
            println!(
                "| {label} | RSS growth per connection, both sidecars (KiB) | {:.1} | {:.1} | {} |",
                kib[0],
                kib[1],
                ratio(kib[0], kib[1])
            );
            let sum =
                |i: usize, f: fn(&IdleSample) -> usize| samples[i].iter().map(f).sum::<usize>();
            println!(
                "| {label} | failed / held | {} / {} | {} / {} | |",
                sum(0, |s| s.failed),
                sum(0, |s| s.held),
                sum(1, |s| s.failed),
                sum(1, |s| s.held)
            );
        }
        println!();
        for (_, t) in &self.http {
            t.note();
        }
        if let Some((samples, _)) = &self.tcp {
            let r = compare::sorted_ratios(
                samples[0]
                    .iter()
                    .zip(&samples[1])
                    .filter(|(a, b)| !a.failed && !b.failed)
                    .map(|(a, b)| (a.cpu_ms_per_gib, b.cpu_ms_per_gib)),
            );
            let (m, lo, hi) = compare::median_range(&r);
            println!(
                "opaque TCP: CPU per GiB ratio per round median {m:.2}, range {lo:.2}-{hi:.2}"
            );
        }
        for (w, h2, sent) in &self.upstream_h2 {
            println!(
                "{w}: requests reaching the app over HTTP/2: tracemesh {} of {} sent, Envoy {} of {}",
                h2[0], sent[0], h2[1], sent[1]
            );
        }
        if self.tcp.is_some() {
            match self.tcp_opaque {
                Some(n) if n > 0.0 => println!(
                    "opaque TCP: tracemesh A proxied {n} connections as opaque (detection skipped)"
                ),
                _ => println!(
                    "opaque TCP: WARNING tracemesh A reports no connection with detection skipped: \
                     the route was not opaque"
                ),
            }
        }
        if let Some((spans, sent)) = self.spans {
            for (i, name) in SYSTEMS.iter().enumerate() {
                println!(
                    "spans at {name}'s sink: {} for {} HTTP requests sent (2 expected per request: {:.3})",
                    spans[i],
                    sent[i],
                    spans[i] as f64 / (2.0 * sent[i].max(1) as f64)
                );
            }
        }
        println!();
        println!("Summary (tracemesh / Envoy; below 1: tracemesh uses less):");
        println!();
        println!("| workload | CPU per request (TCP: per GiB) | added p50 (TCP: throughput) | added p99 | errors tracemesh / Envoy |");
        println!("|---|---|---|---|---|");
        for (w, t) in &self.http {
            println!(
                "| {w} | {} | {} | {} | {} / {} |",
                ratio(t.cpu[0], t.cpu[1]),
                ratio(t.added_p50[0], t.added_p50[1]),
                ratio(t.added_p99[0], t.added_p99[1]),
                t.errors[0],
                t.errors[1]
            );
        }
        if let Some((samples, direct)) = &self.tcp {
            let ok = |i: usize, f: fn(&TcpSample) -> f64| tcp_median(&samples[i], f);
            let failed = |i: usize| samples[i].iter().filter(|s| s.failed).count();
            println!(
                "| opaque TCP | {} per GiB | throughput {} (tracemesh {} of direct, Envoy {}) | | {} / {} |",
                ratio(ok(0, |s| s.cpu_ms_per_gib), ok(1, |s| s.cpu_ms_per_gib)),
                ratio(ok(0, |s| s.gbps), ok(1, |s| s.gbps)),
                ratio(ok(0, |s| s.gbps), cpu::median(direct)),
                ratio(ok(1, |s| s.gbps), cpu::median(direct)),
                failed(0),
                failed(1)
            );
        }
        if let Some(samples) = &self.idle {
            let kib = [0, 1].map(|i| kib_per_conn(&samples[i]));
            let failed = |i: usize| samples[i].iter().map(|s| s.failed).sum::<usize>();
            println!(
                "| {} idle connections | RSS per connection {} ({:.1} vs {:.1} KiB) | | | {} / {} |",
                opts.idle_connections,
                ratio(kib[0], kib[1]),
                kib[0],
                kib[1],
                failed(0),
                failed(1)
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn workloads_parse_by_name_and_all() {
        assert_eq!("h2c".parse::<Workload>(), Ok(Workload::H2c));
        assert_eq!(" GRPC ".parse::<Workload>(), Ok(Workload::Grpc));
        assert!("http3"
            .parse::<Workload>()
            .unwrap_err()
            .contains("one of all"));
        for w in ALL {
            assert_eq!(w.name().parse::<Workload>(), Ok(w));
        }
        assert_eq!("all".parse::<Selection>(), Ok(Selection(ALL.to_vec())));
        // Order of ALL, each once.
        assert_eq!(
            "idle,h2c,idle".parse::<Selection>(),
            Ok(Selection(vec![Workload::H2c, Workload::Idle]))
        );
        assert!("".parse::<Selection>().is_err());
        assert!(",".parse::<Selection>().is_err());
        assert!("h2c,nope".parse::<Selection>().is_err());
    }

    #[test]
    fn http_workloads_have_a_protocol_and_the_others_none() {
        assert_eq!(
            Workload::Grpc.http(4),
            Some((Protocol::Grpc { connections: 4 }, 1024, 1000.0))
        );
        assert_eq!(Workload::Body1m.http(4).map(|h| h.1), Some(1 << 20));
        assert_eq!(
            Workload::Short.http(4).map(|h| h.0),
            Some(Protocol::Http1Close)
        );
        assert_eq!(Workload::Tcp.http(4), None);
        assert_eq!(Workload::Idle.http(4), None);
    }

    #[test]
    fn rounds_alternate_the_order() {
        assert_eq!(order(1), [0, 1]);
        assert_eq!(order(2), [1, 0]);
        assert_eq!(order(3), [0, 1]);
    }
}
