//! The load generator: `concurrency` workers, each sending one request at a time (closed
//! loop), until a shared request count or a hard time limit is reached. Closed-loop latency at
//! fixed concurrency is what a sidecar adds to a real caller's wait. With a `rate`, requests
//! are also held to a fixed schedule (request `i` not before `i / rate` seconds), so two
//! configurations compared for CPU per request see the same load.
//!
//! The [`Protocol`] says how workers reach the target: a keep-alive HTTP/1.1 connection each,
//! a new HTTP/1.1 connection per request (`connection: close`, the cost of connection setup),
//! or streams on a few shared h2c connections, carrying plain requests or gRPC unary calls.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpStream;

use crate::grpc;
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

/// How requests travel.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Protocol {
    /// HTTP/1.1, one keep-alive connection per worker.
    #[default]
    Http1,
    /// HTTP/1.1, a new connection for every request, sent with `connection: close`; latency
    /// includes the connect.
    Http1Close,
    /// h2c (HTTP/2 with prior knowledge): the workers share `connections` connections, one
    /// stream per request.
    H2c { connections: usize },
    /// gRPC unary calls over h2c as [`Protocol::H2c`]: the body is one gRPC message, the
    /// answer must carry it back with `grpc-status: 0` in the trailers.
    Grpc { connections: usize },
}

impl Protocol {
    fn h2_connections(self) -> Option<usize> {
        match self {
            Protocol::H2c { connections } | Protocol::Grpc { connections } => {
                Some(connections.max(1))
            }
            Protocol::Http1 | Protocol::Http1Close => None,
        }
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
    pub protocol: Protocol,
}

/// Runs the plan and summarises it. Never runs longer than `time_limit` (plus one request
/// timeout at worst), never sends more than `requests`.
pub async fn run(target: &Target, plan: &Plan) -> Summary {
    let issued = Arc::new(AtomicUsize::new(0));
    // The shared h2c connections are opened before the clock starts, as a client's pool would
    // be; a connection that fails is retried by the workers that would have used it.
    let mut shared = Vec::new();
    let mut errors = 0;
    for _ in 0..plan.protocol.h2_connections().unwrap_or(0) {
        match connect_h2(target).await {
            Ok(s) => shared.push(Some(s)),
            Err(_) => {
                errors += 1;
                shared.push(None);
            }
        }
    }
    let start = Instant::now();
    let deadline = start + plan.time_limit;
    let mut workers = Vec::with_capacity(plan.concurrency);
    for i in 0..plan.concurrency.max(1) {
        let target = target.clone();
        let plan = plan.clone();
        let issued = issued.clone();
        let sender = match shared.get(i % shared.len().max(1)) {
            Some(Some(s)) => Some(Sender::H2(s.clone())),
            _ => None,
        };
        workers.push(tokio::spawn(async move {
            worker(&target, &plan, &issued, start, deadline, sender).await
        }));
    }
    drop(shared);
    let mut samples = Vec::with_capacity(plan.requests);
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

/// A connection ready for the next request.
enum Sender {
    H1(http1::SendRequest<Full<Bytes>>),
    H2(http2::SendRequest<Full<Bytes>>),
}

impl Sender {
    fn is_closed(&self) -> bool {
        match self {
            Sender::H1(s) => s.is_closed(),
            Sender::H2(s) => s.is_closed(),
        }
    }

    async fn send(
        &mut self,
        req: http::Request<Full<Bytes>>,
    ) -> anyhow::Result<http::Response<hyper::body::Incoming>> {
        Ok(match self {
            Sender::H1(s) => {
                s.ready().await?;
                s.send_request(req).await?
            }
            Sender::H2(s) => {
                s.ready().await?;
                s.send_request(req).await?
            }
        })
    }
}

async fn tcp(target: &Target) -> anyhow::Result<TokioIo<TcpStream>> {
    let tcp = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(target.connect)).await??;
    tcp.set_nodelay(true)?;
    Ok(TokioIo::new(tcp))
}

async fn connect(target: &Target) -> anyhow::Result<http1::SendRequest<Full<Bytes>>> {
    let (sender, conn) = http1::handshake(tcp(target).await?).await?;
    tokio::spawn(conn);
    Ok(sender)
}

async fn connect_h2(target: &Target) -> anyhow::Result<http2::SendRequest<Full<Bytes>>> {
    let io = tcp(target).await?;
    let (sender, conn) =
        tokio::time::timeout(CONNECT_TIMEOUT, http2::handshake(TokioExecutor::new(), io)).await??;
    tokio::spawn(conn);
    Ok(sender)
}

/// A keep-alive HTTP/1.1 connection that has carried one request of `body` (answered in full),
/// for holding open while idle. Its connection task ends when the sender is dropped.
pub async fn held_connection(
    target: &Target,
    body: Bytes,
) -> anyhow::Result<http1::SendRequest<Full<Bytes>>> {
    let mut s = connect(target).await?;
    let len = body.len();
    let req = request(Protocol::Http1, target, body)?;
    let resp = tokio::time::timeout(REQUEST_TIMEOUT, async {
        s.ready().await?;
        anyhow::Ok(s.send_request(req).await?)
    })
    .await??;
    if !check(Protocol::Http1, resp, len).await {
        anyhow::bail!("wrong answer");
    }
    Ok(s)
}

async fn connect_for(protocol: Protocol, target: &Target) -> anyhow::Result<Sender> {
    Ok(match protocol {
        Protocol::Http1 | Protocol::Http1Close => Sender::H1(connect(target).await?),
        Protocol::H2c { .. } | Protocol::Grpc { .. } => Sender::H2(connect_h2(target).await?),
    })
}

/// The request of `protocol` carrying `body` (already framed for gRPC). HTTP/2 requests are
/// in absolute form, from which the client writes `:scheme` and `:authority`.
pub fn request(
    protocol: Protocol,
    target: &Target,
    body: Bytes,
) -> anyhow::Result<http::Request<Full<Bytes>>> {
    let req = match protocol {
        Protocol::Http1 => {
            http::Request::post(target.uri.clone()).header(http::header::HOST, target.host.as_str())
        }
        Protocol::Http1Close => http::Request::post(target.uri.clone())
            .header(http::header::HOST, target.host.as_str())
            .header(http::header::CONNECTION, "close"),
        Protocol::H2c { .. } => http::Request::post(format!("http://{}/echo", target.host)),
        Protocol::Grpc { .. } => {
            http::Request::post(format!("http://{}/bench.Echo/Echo", target.host))
                .header(http::header::CONTENT_TYPE, grpc::CONTENT_TYPE)
                .header(http::header::TE, "trailers")
        }
    };
    Ok(req.body(Full::new(body))?)
}

/// Whether an answer is right: 2xx with the whole body back; for gRPC, the message back in
/// one frame and `grpc-status: 0` in the trailers.
async fn check(
    protocol: Protocol,
    resp: http::Response<hyper::body::Incoming>,
    expect_len: usize,
) -> bool {
    let ok = resp.status().is_success();
    let Ok(collected) = resp.into_body().collect().await else {
        return false;
    };
    if !ok {
        return false;
    }
    match protocol {
        Protocol::Grpc { .. } => {
            let status_ok = collected
                .trailers()
                .and_then(|t| t.get("grpc-status"))
                .is_some_and(|s| s == "0");
            let body = collected.to_bytes();
            status_ok && grpc::decode(&body).is_ok_and(|m| m.len() == expect_len)
        }
        _ => collected.to_bytes().len() == expect_len,
    }
}

async fn worker(
    target: &Target,
    plan: &Plan,
    issued: &AtomicUsize,
    start: Instant,
    deadline: Instant,
    mut sender: Option<Sender>,
) -> WorkerResult {
    let mut out = WorkerResult {
        samples: Vec::new(),
        errors: 0,
        truncated: false,
    };
    let body = match plan.protocol {
        Protocol::Grpc { .. } => grpc::encode(&plan.body),
        _ => plan.body.clone(),
    };
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
        // A new connection per request is part of what that mode measures.
        let t0 = Instant::now();
        let mut s = match sender.take() {
            Some(s) if !s.is_closed() => s,
            _ => match connect_for(plan.protocol, target).await {
                Ok(s) => s,
                Err(_) => {
                    out.errors += 1;
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            },
        };
        let Ok(req) = request(plan.protocol, target, body.clone()) else {
            out.errors += 1;
            continue;
        };
        let t0 = if plan.protocol == Protocol::Http1Close {
            t0
        } else {
            Instant::now()
        };
        let result = tokio::time::timeout(REQUEST_TIMEOUT, async {
            match s.send(req).await {
                Ok(resp) => check(plan.protocol, resp, plan.body.len()).await,
                Err(_) => false,
            }
        })
        .await;
        let elapsed = t0.elapsed();
        match result {
            Ok(true) => {
                out.samples.push(elapsed);
                if plan.protocol != Protocol::Http1Close {
                    sender = Some(s);
                }
            }
            _ => out.errors += 1,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_carry_what_their_protocol_needs() {
        let t = Target::direct("127.0.0.1:8080".parse().unwrap());
        let body = Bytes::from_static(b"x");
        let r = request(Protocol::Http1, &t, body.clone()).unwrap();
        assert_eq!(r.uri(), "/echo");
        assert_eq!(r.headers()[http::header::HOST], "127.0.0.1:8080");
        assert!(!r.headers().contains_key(http::header::CONNECTION));
        let r = request(Protocol::Http1Close, &t, body.clone()).unwrap();
        assert_eq!(r.headers()[http::header::CONNECTION], "close");
        let r = request(Protocol::H2c { connections: 2 }, &t, body.clone()).unwrap();
        assert_eq!(r.uri(), "http://127.0.0.1:8080/echo");
        let r = request(Protocol::Grpc { connections: 2 }, &t, body).unwrap();
        assert_eq!(r.uri().path(), "/bench.Echo/Echo");
        assert_eq!(r.headers()[http::header::CONTENT_TYPE], "application/grpc");
        assert_eq!(r.headers()[http::header::TE], "trailers");
        assert_eq!(Protocol::Grpc { connections: 0 }.h2_connections(), Some(1));
        assert_eq!(Protocol::Http1Close.h2_connections(), None);
    }

    /// Every protocol against the real echo server: all answered, none counted as an error.
    #[tokio::test]
    async fn every_protocol_gets_its_answers_from_the_echo_server() {
        let t = Target::direct(crate::echo::start().unwrap());
        for protocol in [
            Protocol::Http1,
            Protocol::Http1Close,
            Protocol::H2c { connections: 2 },
            Protocol::Grpc { connections: 2 },
        ] {
            let plan = Plan {
                requests: 20,
                concurrency: 4,
                time_limit: Duration::from_secs(30),
                body: Bytes::from(vec![b'y'; 70_000]),
                rate: None,
                protocol,
            };
            let s = run(&t, &plan).await;
            assert_eq!((s.requests, s.errors), (20, 0), "{protocol:?}: {s}");
        }
    }

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
