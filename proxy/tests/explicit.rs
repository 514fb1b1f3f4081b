//! The proxy in explicit mode over loopback with real sockets: every protocol path and error
//! mapping, end to end through one sidecar.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper_util::rt::{TokioExecutor, TokioIo};
use mesh_proxy::app::{self, Options, Running};
use mesh_proxy::config::{fixed, Snapshot};
use mesh_proxy::route::StaticRoute;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Generous bound on any wait, so a broken proxy fails the test instead of hanging it.
const WAIT: Duration = Duration::from_secs(20);

async fn proxy(inbound: &[String], outbound: &[String], connect_timeout: Duration) -> Running {
    let options = Options {
        bind_ip: "127.0.0.1".parse().unwrap(),
        bind_ipv6: false,
        inbound_port: 0,
        outbound_port: 0,
        admin_port: 0,
        inbound: inbound
            .iter()
            .map(|r| r.parse::<StaticRoute>().unwrap())
            .collect(),
        outbound: outbound
            .iter()
            .map(|r| r.parse::<StaticRoute>().unwrap())
            .collect(),
        identity: Default::default(),
        pod: Default::default(),
        connect_timeout,
        log_level: None,
        stitching: None,
    };
    app::start(options, fixed(Snapshot::default_config()))
        .await
        .unwrap()
}

/// A proxy publishing `backend` through one inbound route; returns the route's address.
async fn inbound_to(backend: SocketAddr) -> (Running, SocketAddr) {
    let p = proxy(
        &[format!("127.0.0.1:0={backend}")],
        &[],
        Duration::from_secs(5),
    )
    .await;
    let addr = p.route_addrs[0];
    (p, addr)
}

/// An HTTP server (HTTP/1 and h2c) that echoes the request body frame by frame and ends with
/// a trailer; answers upgrades by echoing bytes on the upgraded connection.
async fn echo_http() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(echo);
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection_with_upgrades(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    addr
}

type EchoBody = http_body_util::combinators::BoxBody<Bytes, hyper::Error>;

async fn echo(mut req: Request<Incoming>) -> Result<Response<EchoBody>, Infallible> {
    if req.headers().contains_key(http::header::UPGRADE) {
        let on = hyper::upgrade::on(&mut req);
        tokio::spawn(async move {
            if let Ok(up) = on.await {
                let mut io = TokioIo::new(up);
                let mut buf = [0u8; 64];
                while let Ok(n) = io.read(&mut buf).await {
                    if n == 0 || io.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                }
            }
        });
        let resp = Response::builder()
            .status(StatusCode::SWITCHING_PROTOCOLS)
            .header("connection", "upgrade")
            .header("upgrade", "echo")
            .body(Full::new(Bytes::new()).map_err(|e| match e {}).boxed())
            .unwrap();
        return Ok(resp);
    }
    // HTTP/1 names the host in `Host`, HTTP/2 in `:authority`.
    let host = req
        .headers()
        .get("host")
        .map(|h| h.to_str().unwrap_or("").to_owned())
        .or_else(|| req.uri().authority().map(|a| a.to_string()))
        .unwrap_or_default();
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, hyper::Error>>(4);
    let mut body = req.into_body();
    tokio::spawn(async move {
        while let Some(frame) = body.frame().await {
            let Ok(frame) = frame else { return };
            if let Ok(data) = frame.into_data() {
                if tx.send(Ok(Frame::data(data))).await.is_err() {
                    return;
                }
            }
        }
        let mut trailers = http::HeaderMap::new();
        trailers.insert("grpc-status", "0".parse().unwrap());
        let _ = tx.send(Ok(Frame::trailers(trailers))).await;
    });
    let stream = tokio_stream_from(rx);
    let resp = Response::builder()
        .header("x-host-seen", host)
        // HTTP/1 only carries trailers that the head announces.
        .header("trailer", "grpc-status")
        .body(BodyExt::boxed(StreamBody::new(stream)))
        .unwrap();
    Ok(resp)
}

fn tokio_stream_from<T: Send + 'static>(
    mut rx: tokio::sync::mpsc::Receiver<T>,
) -> impl futures_util::Stream<Item = T> + Send {
    futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx))
}

type FrameTx = tokio::sync::mpsc::Sender<Result<Frame<Bytes>, Infallible>>;

/// A channel-fed request body, so a test controls when each chunk leaves.
fn channel_body() -> (
    FrameTx,
    StreamBody<impl futures_util::Stream<Item = Result<Frame<Bytes>, Infallible>> + Send>,
) {
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    (tx, StreamBody::new(tokio_stream_from(rx)))
}

async fn within<F: std::future::Future>(f: F) -> F::Output {
    tokio::time::timeout(WAIT, f).await.expect("timed out")
}

#[tokio::test]
async fn http1_streams_chunks_both_ways_with_trailers() {
    let backend = echo_http().await;
    let (_p, addr) = inbound_to(backend).await;
    let stream = TcpStream::connect(addr).await.unwrap();
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    let (tx, body) = channel_body();
    let req = Request::post("/echo")
        .header("host", "app.test")
        .header("te", "trailers")
        .body(body)
        .unwrap();
    let resp = within(async {
        tx.send(Ok(Frame::data(Bytes::from_static(b"first"))))
            .await
            .unwrap();
        send.send_request(req).await.unwrap()
    })
    .await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.headers()["x-host-seen"], "app.test");
    let mut body = resp.into_body();
    // The first chunk comes back while the request body is still open: nothing is buffered.
    let first = within(body.frame()).await.unwrap().unwrap();
    assert_eq!(first.into_data().unwrap(), "first");
    tx.send(Ok(Frame::data(Bytes::from_static(b"second"))))
        .await
        .unwrap();
    drop(tx);
    let rest = within(body.collect()).await.unwrap();
    let trailers = rest.trailers().cloned().expect("trailers");
    assert_eq!(trailers["grpc-status"], "0");
    assert_eq!(rest.to_bytes(), "second");
}

#[tokio::test]
async fn h2c_with_trailers() {
    let backend = echo_http().await;
    let (_p, addr) = inbound_to(backend).await;
    let stream = TcpStream::connect(addr).await.unwrap();
    let (mut send, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .unwrap();
    tokio::spawn(conn);
    for i in 0..3 {
        let req = Request::post("http://grpc.test/svc/Method")
            .header("te", "trailers")
            .body(Full::new(Bytes::from(format!("msg{i}"))))
            .unwrap();
        let resp = within(send.send_request(req)).await.unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
        assert_eq!(resp.version(), http::Version::HTTP_2);
        assert_eq!(resp.headers()["x-host-seen"], "grpc.test");
        let collected = within(resp.into_body().collect()).await.unwrap();
        assert_eq!(collected.trailers().unwrap()["grpc-status"], "0");
        assert_eq!(collected.to_bytes(), format!("msg{i}"));
    }
}

async fn read_head(stream: &mut TcpStream) -> String {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        let n = within(stream.read(&mut byte)).await.unwrap();
        if n == 0 {
            break;
        }
        head.push(byte[0]);
    }
    String::from_utf8_lossy(&head).into_owned()
}

#[tokio::test]
async fn upgrade_is_passed_through() {
    let backend = echo_http().await;
    let (_p, addr) = inbound_to(backend).await;
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(
        b"GET /ws HTTP/1.1\r\nHost: ws.test\r\nConnection: Upgrade\r\nUpgrade: echo\r\n\r\n",
    )
    .await
    .unwrap();
    let head = read_head(&mut s).await;
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    assert!(
        head.to_ascii_lowercase().contains("upgrade: echo"),
        "{head}"
    );
    s.write_all(b"ping").await.unwrap();
    let mut buf = [0u8; 4];
    within(s.read_exact(&mut buf)).await.unwrap();
    assert_eq!(&buf, b"ping");
}

/// A TCP server that reads until the client half-closes, then answers with the byte count.
async fn count_server() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let mut all = Vec::new();
                if s.read_to_end(&mut all).await.is_ok() {
                    let _ = s.write_all(format!("got {}", all.len()).as_bytes()).await;
                }
            });
        }
    });
    addr
}

#[tokio::test]
async fn opaque_tcp_passes_half_close() {
    let backend = count_server().await;
    let p = proxy(
        &[],
        &[format!("127.0.0.1:0={backend}")],
        Duration::from_secs(5),
    )
    .await;
    let mut s = TcpStream::connect(p.route_addrs[0]).await.unwrap();
    s.write_all(&[0u8, 1, 2, 3, 4, 5, 6]).await.unwrap();
    s.shutdown().await.unwrap();
    let mut answer = String::new();
    within(s.read_to_string(&mut answer)).await.unwrap();
    assert_eq!(answer, "got 7");
}

#[tokio::test]
async fn connect_tunnel_goes_through_detection() {
    let backend = count_server().await;
    let p = proxy(&[], &[], Duration::from_secs(5)).await;
    let mut s = TcpStream::connect(p.outbound_addr).await.unwrap();
    s.write_all(format!("CONNECT {backend} HTTP/1.1\r\nHost: {backend}\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let head = read_head(&mut s).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    s.write_all(&[0u8, 9, 9]).await.unwrap();
    s.shutdown().await.unwrap();
    let mut answer = String::new();
    within(s.read_to_string(&mut answer)).await.unwrap();
    assert_eq!(answer, "got 3");
}

/// Sends `CONNECT target` to the forward proxy; returns the response head.
async fn connect_via(proxy: SocketAddr, target: SocketAddr) -> String {
    let mut s = TcpStream::connect(proxy).await.unwrap();
    s.write_all(format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n").as_bytes())
        .await
        .unwrap();
    read_head(&mut s).await
}

#[tokio::test]
async fn connect_answers_only_once_the_target_is_connected() {
    let p = proxy(&[], &[], Duration::from_millis(300)).await;
    // Refused: 502, not a 200 followed by EOF.
    let head = connect_via(p.outbound_addr, closed_port()).await;
    assert!(head.starts_with("HTTP/1.1 502"), "{head}");
    // No answer within the connect timeout: 504.
    let (full, _socket, _fillers) = unanswering_port().await;
    let head = connect_via(p.outbound_addr, full).await;
    assert!(head.starts_with("HTTP/1.1 504"), "{head}");
    // The proxy itself: refused, never dialled.
    let head = connect_via(p.outbound_addr, p.admin_addr).await;
    assert!(head.starts_with("HTTP/1.1 502"), "{head}");
}

/// A listener that never accepts, with its queue full: further SYNs go unanswered. Keep the
/// socket and the fillers alive while the port is used.
async fn unanswering_port() -> (SocketAddr, socket2::Socket, Vec<TcpStream>) {
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    socket
        .bind(&"127.0.0.1:0".parse::<SocketAddr>().unwrap().into())
        .unwrap();
    socket.listen(0).unwrap();
    let full = socket.local_addr().unwrap().as_socket().unwrap();
    let mut fillers = Vec::new();
    for _ in 0..4 {
        if let Ok(Ok(s)) =
            tokio::time::timeout(Duration::from_millis(300), TcpStream::connect(full)).await
        {
            fillers.push(s);
        }
    }
    (full, socket, fillers)
}

#[tokio::test]
async fn forward_proxy_absolute_form() {
    let backend = echo_http().await;
    let p = proxy(&[], &[], Duration::from_secs(5)).await;
    let mut s = TcpStream::connect(p.outbound_addr).await.unwrap();
    s.write_all(
        format!(
            "POST http://{backend}/x HTTP/1.1\r\nHost: {backend}\r\nProxy-Connection: keep-alive\r\nContent-Length: 2\r\n\r\nhi"
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    let head = read_head(&mut s).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    // Origin-form on the forward proxy is not a proxy request.
    let mut s = TcpStream::connect(p.outbound_addr).await.unwrap();
    s.write_all(b"GET /x HTTP/1.1\r\nHost: a\r\n\r\n")
        .await
        .unwrap();
    let head = read_head(&mut s).await;
    assert!(head.starts_with("HTTP/1.1 400"), "{head}");
}

fn closed_port() -> SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap()
}

#[tokio::test]
async fn refused_upstream_is_502_for_http_and_reset_for_tcp() {
    let dead = closed_port();
    let p = proxy(
        &[format!("127.0.0.1:0={dead}")],
        &[format!("127.0.0.1:0={dead}")],
        Duration::from_secs(5),
    )
    .await;
    let mut s = TcpStream::connect(p.route_addrs[0]).await.unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
        .await
        .unwrap();
    let head = read_head(&mut s).await;
    assert!(head.starts_with("HTTP/1.1 502"), "{head}");

    let mut s = TcpStream::connect(p.route_addrs[1]).await.unwrap();
    s.write_all(&[0u8, 1]).await.unwrap();
    let mut buf = [0u8; 8];
    let read = within(s.read(&mut buf)).await;
    assert_eq!(
        read.map_err(|e| e.kind()),
        Err(std::io::ErrorKind::ConnectionReset)
    );
}

#[tokio::test]
async fn malformed_is_400_and_huge_headers_431() {
    let backend = echo_http().await;
    let (_p, addr) = inbound_to(backend).await;
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nbad header line\r\n\r\n")
        .await
        .unwrap();
    let head = read_head(&mut s).await;
    assert!(head.starts_with("HTTP/1.1 400"), "{head}");

    let mut s = TcpStream::connect(addr).await.unwrap();
    let big = "a".repeat(100 * 1024);
    // The proxy may answer and close before reading everything: ignore write errors.
    let _ = s
        .write_all(format!("GET / HTTP/1.1\r\nHost: a\r\nX-Big: {big}\r\n\r\n").as_bytes())
        .await;
    let head = read_head(&mut s).await;
    assert!(head.starts_with("HTTP/1.1 431"), "{head}");
}

#[tokio::test]
async fn connect_timeout_is_504() {
    // A listener that never accepts, with its queue full: further SYNs go unanswered.
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    socket
        .bind(&"127.0.0.1:0".parse::<SocketAddr>().unwrap().into())
        .unwrap();
    socket.listen(0).unwrap();
    let full = socket.local_addr().unwrap().as_socket().unwrap();
    let mut fillers = Vec::new();
    for _ in 0..4 {
        if let Ok(Ok(s)) =
            tokio::time::timeout(Duration::from_millis(300), TcpStream::connect(full)).await
        {
            fillers.push(s);
        }
    }
    let p = proxy(
        &[format!("127.0.0.1:0={full}")],
        &[],
        Duration::from_millis(300),
    )
    .await;
    let mut s = TcpStream::connect(p.route_addrs[0]).await.unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
        .await
        .unwrap();
    let head = read_head(&mut s).await;
    assert!(head.starts_with("HTTP/1.1 504"), "{head}");
    drop(socket);
}

#[tokio::test]
async fn metrics_count_requests_and_shutdown_drains() {
    let backend = echo_http().await;
    let (p, addr) = inbound_to(backend).await;
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\n\r\n")
        .await
        .unwrap();
    let head = read_head(&mut s).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    drop(s);

    let mut admin = TcpStream::connect(p.admin_addr).await.unwrap();
    admin
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut text = String::new();
    within(admin.read_to_string(&mut text)).await.unwrap();
    assert!(
        text.contains("mesh_proxy_requests_total{direction=\"inbound\",protocol=\"http1\"} 1"),
        "{text}"
    );
    assert!(text.contains("mesh_proxy_config_generation 1"), "{text}");

    // A request in flight when the shutdown begins: its body is still open, its first chunk
    // has come back, so the proxy is mid-request on both sides.
    let stream = TcpStream::connect(addr).await.unwrap();
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    let (tx, body) = channel_body();
    let req = Request::post("/in-flight")
        .header("host", "app.test")
        .header("te", "trailers")
        .body(body)
        .unwrap();
    let resp = within(async {
        tx.send(Ok(Frame::data(Bytes::from_static(b"first"))))
            .await
            .unwrap();
        send.send_request(req).await.unwrap()
    })
    .await;
    assert_eq!(resp.status(), StatusCode::OK);
    let mut body = resp.into_body();
    let first = within(body.frame()).await.unwrap().unwrap();
    assert_eq!(first.into_data().unwrap(), "first");

    let stopping = tokio::spawn(p.stop(WAIT));
    // The synchronisation point: the listener is closed, so the shutdown has begun...
    within(async {
        while TcpStream::connect(addr).await.is_ok() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    // ...yet it waits for the request in flight, which still completes, trailers and all.
    assert!(
        !stopping.is_finished(),
        "stop returned with a request in flight"
    );
    tx.send(Ok(Frame::data(Bytes::from_static(b"second"))))
        .await
        .unwrap();
    drop(tx);
    let rest = within(body.collect()).await.unwrap();
    assert_eq!(rest.trailers().expect("trailers")["grpc-status"], "0");
    assert_eq!(rest.to_bytes(), "second");
    assert!(within(stopping).await.unwrap(), "drained in time");
}

#[tokio::test]
async fn opaque_ports_skip_detection_for_server_first_protocols() {
    // A server that speaks first, like MySQL or SMTP.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let backend = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            let _ = s.write_all(b"220 ready\r\n").await;
        }
    });
    let mut config = mesh_config::MeshConfig::default();
    config.spec.traffic.opaque_ports = vec![backend.port()];
    let snapshot = Snapshot {
        config: std::sync::Arc::new(config),
        ..Snapshot::default_config()
    };
    let options = Options {
        bind_ip: "127.0.0.1".parse().unwrap(),
        bind_ipv6: false,
        inbound_port: 0,
        outbound_port: 0,
        admin_port: 0,
        inbound: vec![],
        outbound: vec![format!("127.0.0.1:0={backend}").parse().unwrap()],
        identity: Default::default(),
        pod: Default::default(),
        connect_timeout: Duration::from_secs(5),
        log_level: None,
        stitching: None,
    };
    let p = app::start(options, fixed(snapshot)).await.unwrap();
    let mut s = TcpStream::connect(p.route_addrs[0]).await.unwrap();
    let mut greeting = [0u8; 11];
    within(s.read_exact(&mut greeting)).await.unwrap();
    assert_eq!(&greeting, b"220 ready\r\n");
    // Served without waiting for client bytes: detection was skipped.
    let text = mesh_proxy::metrics::encode(&p.admin.registry);
    assert!(
        text.contains(
            "mesh_proxy_protocol_detections_total{direction=\"outbound\",outcome=\"skipped\"} 1"
        ),
        "{text}"
    );
    assert!(
        text.contains("mesh_proxy_connections_total{direction=\"outbound\",protocol=\"opaque\"} 1"),
        "{text}"
    );
}

/// What an h2c upstream saw: the request URI authority of each request, connections accepted
/// and connections ended.
#[derive(Default)]
struct H2Seen {
    authorities: std::sync::Mutex<Vec<String>>,
    /// The `host` header of each request, if it had one.
    hosts: std::sync::Mutex<Vec<Option<String>>>,
    accepted: std::sync::atomic::AtomicUsize,
    ended: tokio::sync::Notify,
}

/// An h2c-only upstream that records each request's `:authority`; with `close_after_one` it
/// closes every connection once its first request is answered.
async fn h2_recording_server(close_after_one: bool) -> (SocketAddr, std::sync::Arc<H2Seen>) {
    use std::sync::atomic::Ordering;
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = std::sync::Arc::new(H2Seen::default());
    let state = seen.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            state.accepted.fetch_add(1, Ordering::SeqCst);
            let state = state.clone();
            let (done_tx, mut done_rx) = tokio::sync::mpsc::channel::<()>(8);
            tokio::spawn(async move {
                let record = state.clone();
                let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                    let authority = req.uri().authority().map(|a| a.to_string());
                    let host = req.headers().get("host").map(|h| format!("{h:?}"));
                    record.hosts.lock().unwrap().push(host);
                    record
                        .authorities
                        .lock()
                        .unwrap()
                        .push(authority.unwrap_or_default());
                    let _ = done_tx.try_send(());
                    async { Ok::<_, Infallible>(Response::new(Full::new(Bytes::from("ok")))) }
                });
                let conn = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), svc);
                tokio::pin!(conn);
                tokio::select! {
                    _ = conn.as_mut() => {}
                    Some(()) = done_rx.recv(), if close_after_one => {
                        conn.as_mut().graceful_shutdown();
                        let _ = conn.as_mut().await;
                    }
                }
                state.ended.notify_one();
            });
        }
    });
    (addr, seen)
}

/// One request on a fresh downstream h2c connection; returns the status.
async fn h2_get(proxy: SocketAddr, uri: &str) -> StatusCode {
    let stream = TcpStream::connect(proxy).await.unwrap();
    let (mut send, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .unwrap();
    tokio::spawn(conn);
    let req = Request::get(uri).body(Full::new(Bytes::new())).unwrap();
    let resp = within(send.send_request(req)).await.unwrap();
    let status = resp.status();
    within(resp.into_body().collect()).await.unwrap();
    status
}

#[tokio::test]
async fn h2_upstream_sees_client_authority_over_one_reused_connection() {
    let (backend, seen) = h2_recording_server(false).await;
    let (_p, addr) = inbound_to(backend).await;
    for i in 0..5 {
        let status = h2_get(addr, &format!("http://svc-b.ns:8080/pkg.Svc/Call{i}")).await;
        assert_eq!(status, StatusCode::OK);
    }
    let authorities = seen.authorities.lock().unwrap().clone();
    assert_eq!(authorities, vec!["svc-b.ns:8080"; 5]);
    // `:authority` alone: nginx answers 400 to a `host` header beside it.
    assert_eq!(seen.hosts.lock().unwrap().clone(), vec![None; 5]);
    // Five downstream connections, one upstream connection.
    assert_eq!(seen.accepted.load(std::sync::atomic::Ordering::SeqCst), 1);
}

#[tokio::test]
async fn h2_upstream_closed_connection_is_replaced() {
    let (backend, seen) = h2_recording_server(true).await;
    let (_p, addr) = inbound_to(backend).await;
    for round in 1..=3 {
        let status = h2_get(addr, "http://grpc.test/svc/Method").await;
        assert_eq!(status, StatusCode::OK, "request {round}");
        // The upstream closes the connection after answering; the proxy hears of it while idle.
        within(seen.ended.notified()).await;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(seen.accepted.load(std::sync::atomic::Ordering::SeqCst), 3);
    assert_eq!(
        seen.authorities.lock().unwrap().clone(),
        vec!["grpc.test"; 3]
    );
}

/// A server that speaks first (`220 hello`, like SMTP), then echoes; counts its connections.
async fn greeting_server() -> (SocketAddr, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accepted = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let count = accepted.clone();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            tokio::spawn(async move {
                if s.write_all(b"220 hello\r\n").await.is_ok() {
                    let (mut r, mut w) = s.split();
                    let _ = tokio::io::copy(&mut r, &mut w).await;
                }
            });
        }
    });
    (addr, accepted)
}

#[tokio::test]
async fn server_first_on_an_unlisted_port_is_relayed_over_the_checking_connection() {
    let (backend, accepted) = greeting_server().await;
    let p = proxy(&[], &[format!("127.0.0.1:0={backend}")], WAIT).await;
    let mut s = TcpStream::connect(p.route_addrs[0]).await.unwrap();
    // The client says nothing until it has the greeting, as an SMTP or MySQL client does.
    let mut greeting = [0u8; 11];
    within(s.read_exact(&mut greeting)).await.unwrap();
    assert_eq!(&greeting, b"220 hello\r\n");
    s.write_all(b"QUIT\r\n").await.unwrap();
    let mut echo = [0u8; 6];
    within(s.read_exact(&mut echo)).await.unwrap();
    assert_eq!(&echo, b"QUIT\r\n");
    // One upstream connection: the one opened to let the server speak carried the session.
    assert_eq!(accepted.load(std::sync::atomic::Ordering::SeqCst), 1);
    let text = mesh_proxy::metrics::encode(&p.admin.registry);
    assert!(
        text.contains(
            "mesh_proxy_protocol_detections_total{direction=\"outbound\",outcome=\"server_first\"} 1"
        ),
        "{text}"
    );
}

#[tokio::test]
async fn client_silent_past_the_detection_timeout_is_still_http() {
    let backend = echo_http().await;
    let (p, addr) = inbound_to(backend).await;
    let stream = TcpStream::connect(addr).await.unwrap();
    // A pooled or pre-connecting client: the connection stays unused past the detection timeout.
    tokio::time::sleep(mesh_proxy::detect::DETECT_TIMEOUT * 2).await;
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    let req = Request::get("/late")
        .header("host", "late.test")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let resp = within(send.send_request(req)).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let text = mesh_proxy::metrics::encode(&p.admin.registry);
    assert!(
        text.contains("mesh_proxy_requests_total{direction=\"inbound\",protocol=\"http1\"} 1"),
        "{text}"
    );
    assert!(
        text.contains(
            "mesh_proxy_protocol_detections_total{direction=\"inbound\",outcome=\"http1\"} 1"
        ),
        "{text}"
    );
}

#[tokio::test]
async fn silent_client_is_reset_when_the_destination_refuses_the_server_first_check() {
    let p = proxy(&[], &[format!("127.0.0.1:0={}", closed_port())], WAIT).await;
    let mut s = TcpStream::connect(p.route_addrs[0]).await.unwrap();
    // Says nothing: once the detection timeout passes the proxy connects, is refused, and the
    // client learns it as it would have without the proxy.
    let mut buf = [0u8; 16];
    let read = within(s.read(&mut buf)).await;
    assert!(
        matches!(&read, Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset),
        "{read:?}"
    );
    let text = mesh_proxy::metrics::encode(&p.admin.registry);
    assert!(
        text.contains(
            "mesh_proxy_protocol_detections_total{direction=\"outbound\",outcome=\"failed\"} 1"
        ),
        "{text}"
    );
    assert!(
        text.contains("mesh_proxy_upstream_connect_errors_total 1"),
        "{text}"
    );
}

#[tokio::test]
async fn shutdown_closes_connections_on_which_nothing_was_said() {
    let backend = echo_http().await;
    let (p, addr) = inbound_to(backend).await;
    let mut silent = TcpStream::connect(addr).await.unwrap();
    // Past the detection timeout, so the server-first check holds an upstream connection too.
    tokio::time::sleep(mesh_proxy::detect::DETECT_TIMEOUT * 2).await;
    // The drain does not wait on an undecided connection: everything finishes in time...
    assert!(within(p.stop(WAIT)).await, "drained");
    // ...and the client sees a clean close, as from an HTTP server closing an idle connection.
    let mut rest = Vec::new();
    within(silent.read_to_end(&mut rest)).await.unwrap();
    assert!(rest.is_empty());
}

/// A corporate-style CONNECT proxy: answers 407 unless the client authenticates, then 200 and
/// echoes the tunnel's bytes. Sends each request head it read on `heads`.
async fn connect_proxy() -> (SocketAddr, tokio::sync::mpsc::UnboundedReceiver<String>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            let tx = tx.clone();
            tokio::spawn(async move {
                let head = read_head(&mut s).await;
                let authenticated = head
                    .to_ascii_lowercase()
                    .contains("proxy-authorization: basic dxnlcjpwdw==");
                let plain = head.starts_with("GET ");
                let _ = tx.send(head);
                if plain && authenticated {
                    let _ = s
                        .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 7\r\n\r\nproxied")
                        .await;
                    return;
                }
                if !authenticated {
                    let _ = s
                        .write_all(b"HTTP/1.1 407 Proxy Authentication Required\r\nProxy-Authenticate: Basic realm=\"corp\"\r\nContent-Length: 0\r\n\r\n")
                        .await;
                    return;
                }
                let _ = s
                    .write_all(b"HTTP/1.1 200 Connection established\r\n\r\n")
                    .await;
                let (mut r, mut w) = s.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
            });
        }
    });
    (addr, rx)
}

#[tokio::test]
async fn connect_to_an_apps_own_proxy_is_relayed_then_joined() {
    let (corp, mut heads) = connect_proxy().await;
    // A static route stands in for the redirected connection to the app's HTTPS_PROXY.
    let p = proxy(
        &[],
        &[format!("127.0.0.1:0={corp}")],
        Duration::from_secs(5),
    )
    .await;
    let route = p.route_addrs[0];

    // Refused by the proxy: its 407 and challenge reach the app.
    let mut s = TcpStream::connect(route).await.unwrap();
    s.write_all(b"CONNECT example.test:443 HTTP/1.1\r\nHost: example.test:443\r\n\r\n")
        .await
        .unwrap();
    let head = read_head(&mut s).await;
    assert!(head.starts_with("HTTP/1.1 407"), "{head}");
    assert!(
        head.to_ascii_lowercase()
            .contains("proxy-authenticate: basic realm=\"corp\""),
        "{head}"
    );
    let seen = within(heads.recv()).await.unwrap();
    assert!(
        seen.starts_with("CONNECT example.test:443 HTTP/1.1\r\n"),
        "{seen}"
    );

    // Authenticated: the credentials are the proxy's, passed on; the tunnel is joined.
    let mut s = TcpStream::connect(route).await.unwrap();
    s.write_all(
        b"CONNECT example.test:443 HTTP/1.1\r\nHost: example.test:443\r\nProxy-Authorization: Basic dXNlcjpwdw==\r\n\r\n",
    )
    .await
    .unwrap();
    let head = read_head(&mut s).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    s.write_all(b"\x16\x03\x01 not http").await.unwrap();
    let mut echoed = [0u8; 12];
    within(s.read_exact(&mut echoed)).await.unwrap();
    assert_eq!(&echoed, b"\x16\x03\x01 not http");
    within(heads.recv()).await.unwrap();

    // Plain http through the app's proxy: the absolute target and credentials reach it.
    let mut s = TcpStream::connect(route).await.unwrap();
    s.write_all(
        b"GET http://example.test/x?y=1 HTTP/1.1\r\nHost: example.test\r\nProxy-Authorization: Basic dXNlcjpwdw==\r\n\r\n",
    )
    .await
    .unwrap();
    let head = read_head(&mut s).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let seen = within(heads.recv()).await.unwrap();
    assert!(
        seen.starts_with("GET http://example.test/x?y=1 HTTP/1.1\r\n"),
        "{seen}"
    );
    let mut body = [0u8; 7];
    within(s.read_exact(&mut body)).await.unwrap();
    assert_eq!(&body, b"proxied");
}
