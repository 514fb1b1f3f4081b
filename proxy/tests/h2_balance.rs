//! HTTP/2 upstreams that balance, through a running sidecar over loopback: a real h2c upstream
//! that allows two concurrent streams per connection gets a pod's slow streams over more than
//! one connection (so a per-connection balancer such as kube-proxy can spread them), never over
//! more than `spec.sidecar.http2ConnectionsPerDestination`, and every request is answered.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use mesh_config::MeshConfig;
use mesh_proxy::app::{self, Options, Running};
use mesh_proxy::config::{fixed, Snapshot};
use tokio::net::{TcpListener, TcpStream};

/// Generous bound on any wait, so a broken proxy fails the test instead of hanging it.
const WAIT: Duration = Duration::from_secs(20);

async fn within<F: std::future::Future>(f: F) -> F::Output {
    tokio::time::timeout(WAIT, f).await.expect("timed out")
}

/// A proxy with `edit`ed settings and one inbound route to `backend`.
async fn proxy(edit: impl FnOnce(&mut MeshConfig), backend: SocketAddr) -> Running {
    let mut config = MeshConfig::default();
    edit(&mut config);
    config.validate().expect("valid test config");
    let snapshot = Snapshot {
        config: Arc::new(config),
        ..Snapshot::default_config()
    };
    let options = Options {
        bind_ip: "127.0.0.1".parse().unwrap(),
        bind_ipv6: false,
        inbound_port: 0,
        outbound_port: 0,
        admin_port: 0,
        inbound: vec![format!("127.0.0.1:0={backend}").parse().unwrap()],
        outbound: Vec::new(),
        identity: Default::default(),
        pod: Default::default(),
        connect_timeout: Duration::MAX,
        log_level: None,
        stitching: None,
    };
    app::start(options, fixed(snapshot)).await.unwrap()
}

/// An h2c server with `max_concurrent_streams(2)` whose answers wait for `release`. It counts
/// accepted connections and arrived requests, and names the connection that served each
/// response (`x-conn`).
struct Upstream {
    addr: SocketAddr,
    accepted: Arc<AtomicUsize>,
    arrived: Arc<AtomicUsize>,
    release: tokio::sync::watch::Sender<bool>,
}

async fn upstream() -> Upstream {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accepted = Arc::new(AtomicUsize::new(0));
    let arrived = Arc::new(AtomicUsize::new(0));
    let (release, released) = tokio::sync::watch::channel(false);
    let (count, seen) = (accepted.clone(), arrived.clone());
    tokio::spawn(async move {
        while let Ok((s, _)) = listener.accept().await {
            let conn = count.fetch_add(1, Ordering::SeqCst);
            let (seen, released) = (seen.clone(), released.clone());
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |_req: Request<Incoming>| {
                    let mut released = released.clone();
                    seen.fetch_add(1, Ordering::SeqCst);
                    async move {
                        let _ = released.wait_for(|r| *r).await;
                        let resp = Response::builder()
                            .header("x-conn", conn)
                            .body(Full::new(Bytes::from_static(b"ok")))
                            .unwrap();
                        Ok::<_, Infallible>(resp)
                    }
                });
                let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                    .max_concurrent_streams(2)
                    .serve_connection(TokioIo::new(s), svc)
                    .await;
            });
        }
    });
    Upstream {
        addr,
        accepted,
        arrived,
        release,
    }
}

/// Sends `n` concurrent requests over one h2c connection to `proxy`; returns their tasks, each
/// ending with (status, upstream connection, body).
async fn concurrent(
    proxy: SocketAddr,
    n: usize,
) -> Vec<tokio::task::JoinHandle<(StatusCode, String, Bytes)>> {
    let stream = TcpStream::connect(proxy).await.unwrap();
    let (send, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .unwrap();
    tokio::spawn(conn);
    (0..n)
        .map(|i| {
            let mut send = send.clone();
            tokio::spawn(async move {
                let req = Request::post(format!("http://svc.test/pkg.Svc/Call{i}"))
                    .body(Full::new(Bytes::new()))
                    .unwrap();
                let resp = send.send_request(req).await.unwrap();
                let status = resp.status();
                let conn = resp
                    .headers()
                    .get("x-conn")
                    .map(|v| v.to_str().unwrap().to_owned())
                    .unwrap_or_default();
                let body = resp.into_body().collect().await.unwrap().to_bytes();
                (status, conn, body)
            })
        })
        .collect()
}

/// Waits until `count` reaches `want`; fails with what it saw if it never does.
async fn reaches(what: &str, count: &AtomicUsize, want: usize) {
    let got = tokio::time::timeout(WAIT, async {
        while count.load(Ordering::SeqCst) < want {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
    assert!(
        got.is_ok(),
        "{what}: {} of {want}",
        count.load(Ordering::SeqCst)
    );
}

/// Collects the answers; every one must be a whole 200.
async fn answers(
    tasks: Vec<tokio::task::JoinHandle<(StatusCode, String, Bytes)>>,
) -> std::collections::BTreeMap<String, usize> {
    let mut by_conn = std::collections::BTreeMap::new();
    for task in tasks {
        let (status, conn, body) = within(task).await.unwrap();
        assert_eq!(status, StatusCode::OK);
        assert_eq!(&body[..], b"ok");
        *by_conn.entry(conn).or_insert(0) += 1;
    }
    by_conn
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_streams_spread_over_more_than_one_upstream_connection() {
    let up = upstream().await;
    let p = proxy(|_| {}, up.addr).await;
    // Six streams held open at a server that allows two per connection: by the default cap
    // of four the sidecar opens three connections and sends all six at once.
    let tasks = concurrent(p.route_addrs[0], 6).await;
    reaches("requests at the upstream", &up.arrived, 6).await;
    assert_eq!(up.accepted.load(Ordering::SeqCst), 3);
    up.release.send(true).unwrap();
    let by_conn = answers(tasks).await;
    assert_eq!(
        by_conn.into_iter().collect::<Vec<_>>(),
        [("0".into(), 2), ("1".into(), 2), ("2".into(), 2)]
    );
    assert_eq!(up.accepted.load(Ordering::SeqCst), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_connection_cap_holds_and_the_excess_waits() {
    let up = upstream().await;
    let p = proxy(
        |c| c.spec.sidecar.http2_connections_per_destination = 2,
        up.addr,
    )
    .await;
    // Seven streams, room for four at the upstream: four arrive over two connections, the
    // other three wait in the sidecar for a stream to end rather than opening more.
    let tasks = concurrent(p.route_addrs[0], 7).await;
    reaches("requests at the upstream", &up.arrived, 4).await;
    assert_eq!(up.accepted.load(Ordering::SeqCst), 2);
    up.release.send(true).unwrap();
    let by_conn = answers(tasks).await;
    assert_eq!(by_conn.values().sum::<usize>(), 7);
    assert_eq!(by_conn.len(), 2, "{by_conn:?}");
    assert_eq!(up.arrived.load(Ordering::SeqCst), 7);
    assert_eq!(up.accepted.load(Ordering::SeqCst), 2);
}
