//! The load generator: `concurrency` keep-alive HTTP/1.1 connections, each sending one request
//! at a time (closed loop), until a shared request count or a hard time limit is reached.
//! Closed-loop latency at fixed concurrency is what a sidecar adds to a real caller's wait.
//! With a `rate`, requests are also held to a fixed schedule (request `i` not before
//! `i / rate` seconds), so two configurations compared for CPU per request see the same load.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use crate::stats::Summary;

/// Any single request slower than this counts as an error (a stuck proxy must not hang the bench).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// Where requests go: the TCP address to connect to and the request target written on the
/// wire (origin-form `/echo`, or absolute-form `http://host:port/echo` for a forward proxy).
#[derive(Clone, Debug)]
pub struct Target {
    pub connect: SocketAddr,
    pub uri: http::Uri,
    pub host: String,
}

impl Target {
    /// A server or a sidecar's inbound listener, addressed directly.
    pub fn direct(addr: SocketAddr) -> Self {
        Target {
            connect: addr,
            uri: http::Uri::from_static("/echo"),
            host: addr.to_string(),
        }
    }

    /// `destination` reached through the forward proxy at `proxy`.
    pub fn via_proxy(proxy: SocketAddr, destination: SocketAddr) -> anyhow::Result<Self> {
        Ok(Target {
            connect: proxy,
            uri: format!("http://{destination}/echo").parse()?,
            host: destination.to_string(),
        })
    }
}

#[derive(Clone, Debug)]
pub struct Plan {
    pub requests: usize,
    pub concurrency: usize,
    pub time_limit: Duration,
    pub body: Bytes,
    /// Requests per second for the whole plan; `None` sends as fast as answers come back.
    pub rate: Option<f64>,
}

/// Runs the plan and summarises it. Never runs longer than `time_limit` (plus one request
/// timeout at worst), never sends more than `requests`.
pub async fn run(target: &Target, plan: &Plan) -> Summary {
    let issued = Arc::new(AtomicUsize::new(0));
    let start = Instant::now();
    let deadline = start + plan.time_limit;
    let mut workers = Vec::with_capacity(plan.concurrency);
    for _ in 0..plan.concurrency.max(1) {
        let target = target.clone();
        let plan = plan.clone();
        let issued = issued.clone();
        workers.push(tokio::spawn(async move {
            worker(&target, &plan, &issued, start, deadline).await
        }));
    }
    let mut samples = Vec::with_capacity(plan.requests);
    let mut errors = 0;
    let mut truncated = false;
    for w in workers {
        if let Ok(result) = w.await {
            samples.extend(result.samples);
            errors += result.errors;
            truncated |= result.truncated;
        } else {
            errors += 1;
        }
    }
    Summary::from_samples(samples, errors, start.elapsed(), truncated)
}

/// When request `index` is due at `rate` requests per second; `None` without a rate.
fn due_at(start: Instant, index: usize, rate: Option<f64>) -> Option<Instant> {
    let rate = rate.filter(|r| r.is_finite() && *r > 0.0)?;
    Some(start + Duration::from_secs_f64(index as f64 / rate))
}

struct WorkerResult {
    samples: Vec<Duration>,
    errors: usize,
    truncated: bool,
}

async fn connect(target: &Target) -> anyhow::Result<http1::SendRequest<Full<Bytes>>> {
    let tcp = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(target.connect)).await??;
    tcp.set_nodelay(true)?;
    let (sender, conn) = http1::handshake(TokioIo::new(tcp)).await?;
    tokio::spawn(conn);
    Ok(sender)
}

async fn worker(
    target: &Target,
    plan: &Plan,
    issued: &AtomicUsize,
    start: Instant,
    deadline: Instant,
) -> WorkerResult {
    let mut out = WorkerResult {
        samples: Vec::new(),
        errors: 0,
        truncated: false,
    };
    let mut sender: Option<http1::SendRequest<Full<Bytes>>> = None;
    loop {
        if Instant::now() >= deadline {
            out.truncated = issued.load(Ordering::Relaxed) < plan.requests;
            return out;
        }
        // Errors use up the budget too, so a broken path ends the run instead of spinning.
        let index = issued.fetch_add(1, Ordering::Relaxed);
        if index >= plan.requests {
            return out;
        }
        if let Some(due) = due_at(start, index, plan.rate) {
            if due > deadline {
                out.truncated = true;
                return out;
            }
            tokio::time::sleep_until(due.into()).await;
        }
        let mut s = match sender.take() {
            Some(s) if !s.is_closed() => s,
            _ => match connect(target).await {
                Ok(s) => s,
                Err(_) => {
                    out.errors += 1;
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            },
        };
        let req = http::Request::post(target.uri.clone())
            .header(http::header::HOST, target.host.as_str())
            .body(Full::new(plan.body.clone()));
        let Ok(req) = req else {
            out.errors += 1;
            continue;
        };
        let t0 = Instant::now();
        let result = tokio::time::timeout(REQUEST_TIMEOUT, async {
            if s.ready().await.is_err() {
                return false;
            }
            match s.send_request(req).await {
                Ok(resp) => {
                    let ok = resp.status().is_success();
                    let body = resp.into_body().collect().await;
                    ok && body
                        .map(|b| b.to_bytes().len() == plan.body.len())
                        .unwrap_or(false)
                }
                Err(_) => false,
            }
        })
        .await;
        let elapsed = t0.elapsed();
        match result {
            Ok(true) => {
                out.samples.push(elapsed);
                sender = Some(s);
            }
            _ => out.errors += 1,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_due_on_a_fixed_schedule() {
        let t0 = Instant::now();
        assert_eq!(due_at(t0, 5, None), None);
        assert_eq!(due_at(t0, 5, Some(0.0)), None);
        assert_eq!(due_at(t0, 0, Some(100.0)), Some(t0));
        assert_eq!(
            due_at(t0, 150, Some(100.0)),
            Some(t0 + Duration::from_millis(1500))
        );
    }
}
