//! What the tracemesh-vs-Envoy modes share: the two sidecar pairs on the same topology
//! (client → sidecar A → sidecar B → app, every hop on loopback, both tracing every request to
//! a sink of their own), one measurement of a pair (CPU around a bounded load), and the table of
//! medians and ratios.
//!
//! Each pair also carries an opaque TCP route beside the HTTP one when a TCP sink is given:
//! tracemesh with both of its ports in `opaquePorts` (bytes copied without detection), Envoy
//! with `tcp_proxy` listeners, as Istio configures a port of protocol `tcp`.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use mesh_config::{LogLevel, MeshConfig};

use crate::envoy::{self, Envoy};
use crate::sidecar::{free_port, Sidecar, Spec};
use crate::stats::Summary;
use crate::{cpu, load, sink};

/// The two systems compared, in the order of the table's columns.
pub const SYSTEMS: [&str; 2] = ["tracemesh", "Envoy"];

/// What both pairs are started from.
#[derive(Clone, Copy)]
pub struct Setup<'a> {
    pub proxy: &'a Path,
    pub envoy: &'a Path,
    /// Worker threads of every sidecar (tracemesh `--threads`, Envoy `--concurrency`).
    pub threads: usize,
    /// Configs and logs.
    pub work: &'a Path,
    /// The HTTP app (the echo server).
    pub server: SocketAddr,
    /// The opaque TCP app (the bulk sink), if the pair should route to one.
    pub tcp_sink: Option<SocketAddr>,
}

/// One sidecar process, of either kind.
pub enum Proc {
    Mesh(Sidecar),
    Envoy(Envoy),
}

impl Proc {
    pub fn pid(&self) -> Option<u32> {
        match self {
            Proc::Mesh(s) => s.pid(),
            Proc::Envoy(e) => e.pid(),
        }
    }

    /// Resident set size in KiB, from /proc/PID/status.
    pub fn rss_kib(&self) -> Option<u64> {
        crate::sidecar::rss_kib(self.pid()?)
    }

    pub async fn stop(self) {
        match self {
            Proc::Mesh(s) => s.stop().await,
            Proc::Envoy(e) => e.stop().await,
        }
    }
}

/// A pair of sidecars (A, the caller's; B, the server's), the addresses the client calls, and
/// the sink their spans go to.
pub struct Pair {
    pub a: Proc,
    pub b: Proc,
    /// A's HTTP listener.
    pub entry: SocketAddr,
    /// A's opaque TCP listener, when the setup had a TCP sink.
    pub tcp_entry: Option<SocketAddr>,
    pub spans: Arc<sink::Counts>,
}

impl Pair {
    /// Scheduler run time of every thread of both sidecars (ns), and utime+stime (ticks).
    pub fn cpu(&self) -> anyhow::Result<(u64, u64)> {
        let mut ns = 0;
        let mut ticks = 0;
        for p in [&self.a, &self.b] {
            let pid = p.pid().context("sidecar exited")?;
            ns += cpu::on_cpu_ns(pid, "").context("reading schedstat")?.0;
            ticks += cpu::ticks(pid).context("reading /proc/PID/stat")?;
        }
        Ok((ns, ticks))
    }

    /// RSS of A and B together, KiB.
    pub fn rss_kib(&self) -> Option<u64> {
        Some(self.a.rss_kib()? + self.b.rss_kib()?)
    }

    pub async fn stop(self) {
        self.a.stop().await;
        self.b.stop().await;
    }
}

/// Starts both pairs, tracemesh's and Envoy's (stopping the first if the second fails).
pub async fn start_both(setup: &Setup<'_>) -> anyhow::Result<[Pair; 2]> {
    let mesh = start(0, setup, "").await?;
    match start(1, setup, "").await {
        Ok(envoy) => Ok([mesh, envoy]),
        Err(e) => {
            mesh.stop().await;
            Err(e)
        }
    }
}

/// Starts the pair of system `i` of [`SYSTEMS`].
pub async fn start(i: usize, setup: &Setup<'_>, tag: &str) -> anyhow::Result<Pair> {
    if i == 0 {
        start_mesh(setup, tag).await
    } else {
        start_envoy(setup, tag).await
    }
}

pub async fn start_mesh(setup: &Setup<'_>, tag: &str) -> anyhow::Result<Pair> {
    let (sink_addr, spans) = sink::start(sink::Behaviour::Ok)?;
    let config = setup.work.join(format!("mesh-config{tag}.yaml"));
    let b_listen = SocketAddr::from(([127, 0, 0, 1], free_port()?));
    let a_listen = SocketAddr::from(([127, 0, 0, 1], free_port()?));
    let tcp = match setup.tcp_sink {
        Some(sink) => Some((
            sink,
            SocketAddr::from(([127, 0, 0, 1], free_port()?)),
            SocketAddr::from(([127, 0, 0, 1], free_port()?)),
        )),
        None => None,
    };
    let mut mc = MeshConfig::default();
    mc.spec.sidecar.log_level = LogLevel::Warn;
    let t = &mut mc.spec.observability.tracing;
    t.enable = true;
    t.address = sink_addr.ip().to_string();
    t.port = sink_addr.port();
    t.sampled_fraction = 1.0;
    if let Some((sink, b_tcp, _)) = tcp {
        // As benches/tcp_bulk.sh: the app's port and B's listener port are opaque.
        let opaque = &mut mc.spec.traffic.opaque_ports;
        opaque.extend([sink.port(), b_tcp.port()]);
    }
    mc.validate().context("bench mesh config")?;
    std::fs::write(&config, mc.to_yaml())?;
    let name_a = format!("tracemesh-a{tag}");
    let name_b = format!("tracemesh-b{tag}");
    let spec = |name, inbound, outbound| Spec {
        name,
        proxy: setup.proxy,
        mesh_config: &config,
        inbound,
        outbound,
        threads: setup.threads,
        log_dir: setup.work,
    };
    let mut b_routes = vec![(b_listen, setup.server)];
    let mut a_routes = vec![(a_listen, b_listen)];
    if let Some((sink, b_tcp, a_tcp)) = tcp {
        b_routes.push((b_tcp, sink));
        a_routes.push((a_tcp, b_tcp));
    }
    let b = Sidecar::start(spec(&name_b, b_routes, Vec::new())).await?;
    // Like Envoy's per-port outbound listener: the client calls A in origin form, A routes to B.
    let a = match Sidecar::start(spec(&name_a, Vec::new(), a_routes)).await {
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
        tcp_entry: tcp.map(|(_, _, a_tcp)| a_tcp),
        spans,
    })
}

pub async fn start_envoy(setup: &Setup<'_>, tag: &str) -> anyhow::Result<Pair> {
    use envoy::{Direction, Kind};
    let (sink_addr, spans) = sink::start(sink::Behaviour::Ok)?;
    let mut b_routes = vec![(Direction::Inbound, Kind::Http, setup.server)];
    if let Some(sink) = setup.tcp_sink {
        b_routes.push((Direction::Inbound, Kind::Tcp, sink));
    }
    let b = Envoy::start(
        setup.envoy,
        &format!("envoy-b{tag}"),
        &b_routes,
        sink_addr,
        setup.threads,
        setup.work,
    )
    .await?;
    let b_listen = b.listener(0).context("envoy-b listener")?;
    let mut a_routes = vec![(Direction::Outbound, Kind::Http, b_listen)];
    if setup.tcp_sink.is_some() {
        let b_tcp = b.listener(1).context("envoy-b TCP listener")?;
        a_routes.push((Direction::Outbound, Kind::Tcp, b_tcp));
    }
    let a = match Envoy::start(
        setup.envoy,
        &format!("envoy-a{tag}"),
        &a_routes,
        sink_addr,
        setup.threads,
        setup.work,
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
    let tcp_entry = setup.tcp_sink.and_then(|_| a.listener(1));
    Ok(Pair {
        a: Proc::Envoy(a),
        b: Proc::Envoy(b),
        entry,
        tcp_entry,
        spans,
    })
}

/// One measurement of one system in one round.
#[derive(Clone, Debug)]
pub struct Sample {
    pub cpu_us: f64,
    pub ticks_us: f64,
    pub p50: f64,
    pub p99: f64,
    pub errors: usize,
    pub answered: usize,
}

/// Warms the pair up with `warm`, then runs `plan` through it and takes both sidecars' CPU
/// around it. Returns the load summary, the sample, and the requests sent (warm-up included,
/// for the span count).
pub async fn measure(
    pair: &Pair,
    target: &load::Target,
    warm: &load::Plan,
    plan: &load::Plan,
) -> anyhow::Result<(Summary, Sample, usize)> {
    let w = load::run(target, warm).await;
    let before = pair.cpu()?;
    let s = load::run(target, plan).await;
    // Let the exporters send this batch's spans, so their CPU lands in this measurement (both
    // systems wait alike).
    tokio::time::sleep(Duration::from_millis(300)).await;
    let after = pair.cpu()?;
    let sample = Sample {
        cpu_us: cpu::micros_per_request_ns(after.0.saturating_sub(before.0), s.requests),
        ticks_us: cpu::micros_per_request(after.1.saturating_sub(before.1), s.requests),
        p50: micros(s.p50),
        p99: micros(s.p99),
        errors: s.errors,
        answered: s.requests,
    };
    let sent = w.requests + w.errors + s.requests + s.errors;
    Ok((s, sample, sent))
}

/// The medians of one load (a rate, a workload) over the rounds.
pub struct Table {
    pub label: String,
    pub requests: usize,
    pub cpu: [f64; 2],
    pub ticks: [f64; 2],
    pub added_p50: [f64; 2],
    pub added_p99: [f64; 2],
    pub errors: [usize; 2],
    /// Per-round CPU ratio tracemesh / Envoy: (median, min, max).
    pub cpu_ratio: (f64, f64, f64),
    pub answered: [usize; 2],
}

impl Table {
    pub fn new(
        label: String,
        requests: usize,
        base: &[Summary],
        samples: &[Vec<Sample>; 2],
    ) -> Self {
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
        let ratios = sorted_ratios(
            samples[0]
                .iter()
                .zip(&samples[1])
                .map(|(t, e)| (t.cpu_us, e.cpu_us)),
        );
        let both = |f: &dyn Fn(usize) -> f64| [f(0), f(1)];
        Table {
            label,
            requests,
            cpu: both(&|i| med(i, |s| s.cpu_us)),
            ticks: both(&|i| med(i, |s| s.ticks_us)),
            added_p50: both(&|i| added(i, |d| d.p50, |s| s.p50)),
            added_p99: both(&|i| added(i, |d| d.p99, |s| s.p99)),
            errors: [0, 1].map(|i| samples[i].iter().map(|s| s.errors).sum()),
            cpu_ratio: median_range(&ratios),
            answered: [0, 1].map(|i| samples[i].iter().map(|s| s.answered).sum()),
        }
    }

    pub fn print(&self) {
        let r = &self.label;
        let row = |name: &str, v: [f64; 2]| {
            println!(
                "| {r} | {name} | {:.1} | {:.1} | {} |",
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
            "| {r} | errors / answered | {} / {} | {} / {} | |",
            self.errors[0], self.answered[0], self.errors[1], self.answered[1]
        );
    }

    /// How far to trust the CPU ratio: each round's pair ran back to back.
    pub fn note(&self) {
        println!(
            "{} ({} requests a round): CPU ratio per round median {:.2}, range {:.2}-{:.2}",
            self.label, self.requests, self.cpu_ratio.0, self.cpu_ratio.1, self.cpu_ratio.2
        );
    }
}

/// The ratios a / b of the pairs whose b is positive, sorted.
pub fn sorted_ratios(pairs: impl Iterator<Item = (f64, f64)>) -> Vec<f64> {
    let mut r: Vec<f64> = pairs
        .filter(|(_, b)| *b > 0.0)
        .map(|(a, b)| a / b)
        .collect();
    r.sort_by(|a, b| a.total_cmp(b));
    r
}

/// (median, min, max) of sorted values; zeros when empty.
pub fn median_range(sorted: &[f64]) -> (f64, f64, f64) {
    (
        cpu::median(sorted),
        sorted.first().copied().unwrap_or(0.0),
        sorted.last().copied().unwrap_or(0.0),
    )
}

/// `a / b` with two decimals, or `-` when there is nothing to divide by.
pub fn ratio(a: f64, b: f64) -> String {
    if b > 0.0 && a >= 0.0 {
        format!("{:.2}", a / b)
    } else {
        "-".to_owned()
    }
}

pub fn micros(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ratios_skip_zero_denominators_and_sort() {
        let r = sorted_ratios([(1.0, 2.0), (3.0, 0.0), (4.0, 2.0), (1.0, 4.0)].into_iter());
        assert_eq!(r, vec![0.25, 0.5, 2.0]);
        assert_eq!(median_range(&r), (0.5, 0.25, 2.0));
        assert_eq!(median_range(&[]), (0.0, 0.0, 0.0));
        assert_eq!(ratio(1.0, 4.0), "0.25");
        assert_eq!(ratio(1.0, 0.0), "-");
    }
}
