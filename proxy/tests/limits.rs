//! Timeouts and limits of `spec.sidecar`, over loopback with real sockets: slow, idle and
//! silent peers are cut, a connection flood is refused while the admin port answers, and the
//! proxy's file descriptors return to their baseline after each case.
//!
//! The tests of this file run one at a time (see [`serial`]): each counts the descriptors of
//! this process, which holds the proxy under test.

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
use mesh_config::{Duration as ConfigDuration, MeshConfig};
use mesh_proxy::app::{self, Options, Running};
use mesh_proxy::config::{fixed, Snapshot};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Generous bound on any wait, so a broken proxy fails the test instead of hanging it.
const WAIT: Duration = Duration::from_secs(20);

/// Serialises the tests of this file: descriptor counts are per process.
async fn serial() -> tokio::sync::MutexGuard<'static, ()> {
    static LOCK: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
    LOCK.lock().await
}

async fn within<F: std::future::Future>(f: F) -> F::Output {
    tokio::time::timeout(WAIT, f).await.expect("timed out")
}

/// Distinct open sockets of this process. Other descriptors come and go with the runtimes of
/// the tests waiting for their turn (and the harness duplicates one socket per test thread),
/// so they are left out.
fn fds() -> usize {
    let sockets: std::collections::BTreeSet<String> = fd_list()
        .into_iter()
        .filter_map(|l| l.split_once(" -> ").map(|(_, t)| t.to_owned()))
        .filter(|t| t.starts_with("socket:"))
        .collect();
    sockets.len()
}

/// What each open descriptor is, for the failure message.
fn fd_list() -> Vec<String> {
    let mut out: Vec<String> = std::fs::read_dir("/proc/self/fd")
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| {
            let target = std::fs::read_link(e.path()).unwrap_or_default();
            format!(
                "{} -> {}",
                e.file_name().to_string_lossy(),
                target.display()
            )
        })
        .collect();
    out.sort();
    out
}

/// Waits until the descriptor count is back at `baseline` (the proxy closes its side of a
/// connection asynchronously); fails with both counts if it never gets there.
async fn fds_back_to(baseline: usize) {
    let settled = tokio::time::timeout(WAIT, async {
        while fds() > baseline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    assert!(
        settled.is_ok(),
        "descriptors leaked: {} open, baseline {baseline}: {:#?}",
        fds(),
        fd_list()
    );
}

/// A proxy with `sidecar` settings and the given static routes.
async fn proxy(
    edit: impl FnOnce(&mut MeshConfig),
    inbound: &[String],
    outbound: &[String],
) -> Running {
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
        inbound: inbound.iter().map(|r| r.parse().unwrap()).collect(),
        outbound: outbound.iter().map(|r| r.parse().unwrap()).collect(),
        identity: Default::default(),
        pod: Default::default(),
        connect_timeout: Duration::MAX,
        log_level: None,
        stitching: None,
    };
    app::start(options, fixed(snapshot)).await.unwrap()
}

/// A TCP echo server.
async fn tcp_echo() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            tokio::spawn(async move {
                let (mut r, mut w) = s.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
            });
        }
    });
    addr
}

/// An HTTP/1 server answering `200 ok` at once.
async fn http_ok() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((s, _)) = listener.accept().await {
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(|_req: Request<Incoming>| async {
                    Ok::<_, Infallible>(Response::new(Full::new(Bytes::from("ok"))))
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(s), svc)
                    .await;
            });
        }
    });
    addr
}

/// Waits for the peer to close `stream` (EOF or reset), failing after [`WAIT`].
async fn closed_by_peer(stream: &mut TcpStream) {
    let mut buf = [0u8; 256];
    loop {
        match within(stream.read(&mut buf)).await {
            Ok(0) | Err(_) => return,
            Ok(_) => continue,
        }
    }
}

/// One HTTP/1 GET with `Connection: close`; returns the status line.
async fn get_status(addr: SocketAddr, path: &str) -> String {
    let mut s = within(TcpStream::connect(addr)).await.unwrap();
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut text = String::new();
    let _ = within(s.read_to_string(&mut text)).await;
    text.lines().next().unwrap_or_default().to_owned()
}

fn millis(ms: u64) -> ConfigDuration {
    ConfigDuration::from_millis(ms)
}

#[tokio::test]
async fn slowloris_is_cut_after_the_header_read_timeout() {
    let _serial = serial().await;
    let backend = http_ok().await;
    let p = proxy(
        |c| c.spec.sidecar.header_read_timeout = millis(300),
        &[format!("127.0.0.1:0={backend}")],
        &[],
    )
    .await;
    let addr = p.route_addrs[0];
    // Warm up: the pooled upstream connection (both of its ends live in this process) is
    // part of the baseline.
    assert!(get_status(addr, "/").await.ends_with("200 OK"));
    let baseline = fds();

    let (mut read, mut write) = TcpStream::connect(addr).await.unwrap().into_split();
    let trickle = tokio::spawn(async move {
        let head = format!("GET / HTTP/1.1\r\nX-Slow: {}", "a".repeat(4000));
        for byte in head.as_bytes() {
            if write.write_all(&[*byte]).await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    });
    let mut buf = [0u8; 64];
    let got = within(read.read(&mut buf)).await;
    assert!(matches!(got, Ok(0) | Err(_)), "{got:?}");
    trickle.abort();
    let _ = trickle.await;
    drop(read);

    // Others are still served, and the count says why the slow one went.
    assert!(get_status(addr, "/").await.ends_with("200 OK"));
    let text = mesh_proxy::metrics::encode(&p.admin.registry);
    assert!(
        text.contains("mesh_proxy_header_read_timeouts_total 1"),
        "{text}"
    );
    fds_back_to(baseline).await;
}

#[tokio::test]
async fn idle_keep_alive_connection_is_closed_but_a_long_request_is_not() {
    let _serial = serial().await;
    // An upstream that answers after 600 ms: longer than the idle timeout.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let backend = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((s, _)) = listener.accept().await {
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(|_req: Request<Incoming>| async {
                    tokio::time::sleep(Duration::from_millis(600)).await;
                    Ok::<_, Infallible>(Response::new(Full::new(Bytes::from("late"))))
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(s), svc)
                    .await;
            });
        }
    });
    let p = proxy(
        |c| c.spec.sidecar.http_idle_timeout = millis(200),
        &[format!("127.0.0.1:0={backend}")],
        &[],
    )
    .await;
    // Warm up: the pooled upstream connection is part of the baseline.
    assert!(get_status(p.route_addrs[0], "/").await.ends_with("200 OK"));
    let baseline = fds();
    let mut s = TcpStream::connect(p.route_addrs[0]).await.unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
        .await
        .unwrap();
    // The request in flight outlives the idle timeout and still gets its answer.
    let mut buf = vec![0u8; 4096];
    let mut head = Vec::new();
    while !head.ends_with(b"late") {
        let n = within(s.read(&mut buf)).await.unwrap();
        assert!(
            n > 0,
            "closed mid-request: {:?}",
            String::from_utf8_lossy(&head)
        );
        head.extend_from_slice(&buf[..n]);
    }
    assert!(head.starts_with(b"HTTP/1.1 200"));
    // Then, with nothing in flight, the keep-alive connection is closed.
    closed_by_peer(&mut s).await;
    drop(s);
    let text = mesh_proxy::metrics::encode(&p.admin.registry);
    assert!(text.contains("mesh_proxy_idle_timeouts_total 1"), "{text}");
    fds_back_to(baseline).await;
}

#[tokio::test]
async fn idle_opaque_tcp_and_idle_tunnel_are_closed() {
    let _serial = serial().await;
    let echo = tcp_echo().await;
    let p = proxy(
        |c| {
            c.spec.sidecar.tcp_idle_timeout = millis(300);
            c.spec.traffic.opaque_ports = vec![echo.port()];
        },
        &[],
        &[format!("127.0.0.1:0={echo}")],
    )
    .await;
    let baseline = fds();

    // Opaque TCP: bytes flow, then silence closes it.
    let mut s = TcpStream::connect(p.route_addrs[0]).await.unwrap();
    s.write_all(b"ping").await.unwrap();
    let mut buf = [0u8; 4];
    within(s.read_exact(&mut buf)).await.unwrap();
    assert_eq!(&buf, b"ping");
    closed_by_peer(&mut s).await;
    drop(s);

    // A CONNECT tunnel through the forward proxy: established, used, then left idle.
    let mut t = TcpStream::connect(p.outbound_addr).await.unwrap();
    t.write_all(format!("CONNECT {echo} HTTP/1.1\r\nHost: {echo}\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut byte = [0u8; 1];
        within(t.read_exact(&mut byte)).await.unwrap();
        head.push(byte[0]);
    }
    assert!(head.starts_with(b"HTTP/1.1 200"), "{head:?}");
    t.write_all(b"pong").await.unwrap();
    within(t.read_exact(&mut buf)).await.unwrap();
    assert_eq!(&buf, b"pong");
    closed_by_peer(&mut t).await;
    drop(t);

    let text = mesh_proxy::metrics::encode(&p.admin.registry);
    assert!(text.contains("mesh_proxy_idle_timeouts_total 2"), "{text}");
    fds_back_to(baseline).await;
}

#[tokio::test]
async fn connection_flood_beyond_the_cap_is_refused_and_admin_still_answers() {
    let _serial = serial().await;
    let echo = tcp_echo().await;
    let p = proxy(
        |c| {
            c.spec.sidecar.max_connections = 5;
            c.spec.traffic.opaque_ports = vec![echo.port()];
        },
        &[format!("127.0.0.1:0={echo}")],
        &[],
    )
    .await;
    let addr = p.route_addrs[0];
    let baseline = fds();

    // Five held connections, each proven established end to end.
    let mut held = Vec::new();
    for _ in 0..5 {
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(b"x").await.unwrap();
        let mut b = [0u8; 1];
        within(s.read_exact(&mut b)).await.unwrap();
        held.push(s);
    }
    // The flood: every further connection is closed at once, unserved.
    for _ in 0..20 {
        let mut s = TcpStream::connect(addr).await.unwrap();
        let _ = s.write_all(b"y").await;
        closed_by_peer(&mut s).await;
    }
    assert_eq!(get_status(p.admin_addr, "/live").await, "HTTP/1.1 200 OK");
    let text = mesh_proxy::metrics::encode(&p.admin.registry);
    assert!(
        text.contains("mesh_proxy_connections_refused_total 20"),
        "{text}"
    );

    // Once the flood ends, the sidecar serves again.
    drop(held);
    let served = tokio::time::timeout(WAIT, async {
        loop {
            let mut s = TcpStream::connect(addr).await.unwrap();
            let mut b = [0u8; 1];
            if s.write_all(b"z").await.is_ok() && s.read_exact(&mut b).await.is_ok() {
                return b;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("never served again");
    assert_eq!(&served, b"z");
    fds_back_to(baseline).await;
}

/// An "HTTP/2 server" that sends its SETTINGS, then never reads or answers again: a peer
/// whose node died with the connection open. Counts accepted connections.
async fn silent_h2() -> (SocketAddr, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accepted = Arc::new(AtomicUsize::new(0));
    let count = accepted.clone();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((mut s, _)) = listener.accept().await {
            count.fetch_add(1, Ordering::SeqCst);
            // An empty SETTINGS frame: length 0, type 4, no flags, stream 0.
            let _ = s.write_all(&[0, 0, 0, 4, 0, 0, 0, 0, 0]).await;
            held.push(s);
        }
    });
    (addr, accepted)
}

async fn h2_status(proxy: SocketAddr) -> StatusCode {
    let stream = TcpStream::connect(proxy).await.unwrap();
    let (mut send, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .unwrap();
    tokio::spawn(conn);
    let req = Request::get("http://svc.test/pkg.Svc/Call")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let resp = within(send.send_request(req)).await.unwrap();
    let status = resp.status();
    let _ = within(resp.into_body().collect()).await;
    status
}

#[tokio::test]
async fn silent_http2_upstream_is_detected_by_pings_and_replaced() {
    let _serial = serial().await;
    let (backend, accepted) = silent_h2().await;
    let p = proxy(
        |c| {
            c.spec.sidecar.http2_keepalive_interval = millis(200);
            c.spec.sidecar.http2_keepalive_timeout = millis(200);
        },
        &[format!("127.0.0.1:0={backend}")],
        &[],
    )
    .await;
    let addr = p.route_addrs[0];
    // The request hangs on the silent peer until its PINGs go unanswered: then a clean 502.
    assert_eq!(h2_status(addr).await, StatusCode::BAD_GATEWAY);
    assert_eq!(accepted.load(Ordering::SeqCst), 1);
    // The dead connection is gone: the next request dials a fresh one.
    assert_eq!(h2_status(addr).await, StatusCode::BAD_GATEWAY);
    assert_eq!(accepted.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn response_timeout_gives_504_and_is_off_by_default() {
    let _serial = serial().await;
    // An upstream that reads requests and never answers.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let backend = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = listener.accept().await {
            held.push(s);
        }
    });
    let p = proxy(
        |c| c.spec.sidecar.response_timeout = millis(300),
        &[format!("127.0.0.1:0={backend}")],
        &[],
    )
    .await;
    assert_eq!(
        get_status(p.route_addrs[0], "/").await,
        "HTTP/1.1 504 Gateway Timeout"
    );
    drop(p);

    // Off by default: an upstream that answers only after holding the request well past those
    // 300 ms gets its answer through. The oracle is the upstream's own answer arriving, not a
    // client that merely heard nothing for a while.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let late = listener.local_addr().unwrap();
    let (arrived_tx, mut arrived) = tokio::sync::mpsc::channel::<()>(1);
    let release = Arc::new(tokio::sync::Notify::new());
    let hold = release.clone();
    tokio::spawn(async move {
        while let Ok((s, _)) = listener.accept().await {
            let (arrived_tx, hold) = (arrived_tx.clone(), hold.clone());
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |_req: Request<Incoming>| {
                    let (arrived_tx, hold) = (arrived_tx.clone(), hold.clone());
                    async move {
                        let _ = arrived_tx.send(()).await;
                        hold.notified().await;
                        Ok::<_, Infallible>(Response::new(Full::new(Bytes::from("late"))))
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(s), svc)
                    .await;
            });
        }
    });
    let p = proxy(|_| {}, &[format!("127.0.0.1:0={late}")], &[]).await;
    let pending = tokio::spawn(get_status(p.route_addrs[0], "/"));
    within(arrived.recv()).await.unwrap();
    // Held for more than three times the timeout that gave 504 above.
    tokio::time::sleep(Duration::from_secs(1)).await;
    release.notify_one();
    assert_eq!(within(pending).await.unwrap(), "HTTP/1.1 200 OK");
}

#[tokio::test]
async fn upstream_connections_per_destination_are_capped() {
    let _serial = serial().await;
    let echo = tcp_echo().await;
    let backend = http_ok().await;
    let p = proxy(
        |c| {
            c.spec.sidecar.max_connections_per_destination = 1;
            c.spec.traffic.opaque_ports = vec![echo.port()];
        },
        &[
            format!("127.0.0.1:0={echo}"),
            format!("127.0.0.1:0={backend}"),
        ],
        &[],
    )
    .await;
    // One opaque connection holds the only slot to the echo server...
    let mut first = TcpStream::connect(p.route_addrs[0]).await.unwrap();
    first.write_all(b"a").await.unwrap();
    let mut b = [0u8; 1];
    within(first.read_exact(&mut b)).await.unwrap();
    // ...so a second one is reset rather than dialled.
    let mut second = TcpStream::connect(p.route_addrs[0]).await.unwrap();
    let _ = second.write_all(b"b").await;
    closed_by_peer(&mut second).await;
    // Other destinations have their own budget.
    assert!(get_status(p.route_addrs[1], "/").await.ends_with("200 OK"));
}

pin_project_lite::pin_project! {
    /// A client whose machine vanished at `dead`: it reads nothing more and its writes go
    /// nowhere, while its socket stays open (no FIN, no RST), like a node that lost power.
    struct Blackhole {
        #[pin]
        inner: TcpStream,
        dead: Arc<std::sync::atomic::AtomicBool>,
    }
}

impl tokio::io::AsyncRead for Blackhole {
    fn poll_read(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let this = self.project();
        if this.dead.load(Ordering::SeqCst) {
            return std::task::Poll::Pending;
        }
        this.inner.poll_read(cx, buf)
    }
}

impl tokio::io::AsyncWrite for Blackhole {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        let this = self.project();
        if this.dead.load(Ordering::SeqCst) {
            return std::task::Poll::Ready(Ok(buf.len()));
        }
        this.inner.poll_write(cx, buf)
    }

    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        self.project().inner.poll_flush(cx)
    }

    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        self.project().inner.poll_shutdown(cx)
    }
}

/// Sends on its channel when dropped: tells when a server dropped a request's handler.
struct DropSignal(Option<tokio::sync::oneshot::Sender<()>>);

impl Drop for DropSignal {
    fn drop(&mut self) {
        if let Some(tx) = self.0.take() {
            let _ = tx.send(());
        }
    }
}

#[tokio::test]
async fn vanished_http2_client_is_detected_by_pings_and_its_request_cancelled() {
    let _serial = serial().await;
    // An h2c upstream whose one request hangs; it reports arrival and, once the proxy gives
    // the request up (RST_STREAM), the drop of its handler.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let backend = listener.local_addr().unwrap();
    let (arrived_tx, arrived) = tokio::sync::oneshot::channel::<()>();
    let (dropped_tx, dropped) = tokio::sync::oneshot::channel::<()>();
    let slots = Arc::new(std::sync::Mutex::new(Some((arrived_tx, dropped_tx))));
    tokio::spawn(async move {
        while let Ok((s, _)) = listener.accept().await {
            let slots = slots.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |_req: Request<Incoming>| {
                    let slot = slots.lock().unwrap().take();
                    async move {
                        if let Some((arrived, dropped)) = slot {
                            let _signal = DropSignal(Some(dropped));
                            let _ = arrived.send(());
                            std::future::pending::<()>().await;
                        }
                        Ok::<_, Infallible>(Response::new(Full::new(Bytes::new())))
                    }
                });
                let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(s), svc)
                    .await;
            });
        }
    });
    let p = proxy(
        |c| {
            c.spec.sidecar.http2_keepalive_interval = millis(200);
            c.spec.sidecar.http2_keepalive_timeout = millis(200);
        },
        &[format!("127.0.0.1:0={backend}")],
        &[],
    )
    .await;
    let dead = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let io = Blackhole {
        inner: TcpStream::connect(p.route_addrs[0]).await.unwrap(),
        dead: dead.clone(),
    };
    let (mut send, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(io))
            .await
            .unwrap();
    tokio::spawn(conn);
    let req = Request::get("http://svc.test/hang")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let _pending = tokio::spawn(async move { send.send_request(req).await });
    within(arrived).await.unwrap();
    // The client's node vanishes with the request in flight: no idle timeout applies, only the
    // proxy's unanswered PINGs can free the connection and cancel the upstream request.
    dead.store(true, Ordering::SeqCst);
    within(dropped).await.unwrap();
}
