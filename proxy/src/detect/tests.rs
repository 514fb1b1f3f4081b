//! The detection state machine over `tokio::io::duplex` pairs, in paused time: every outcome,
//! and when the upstream connection of the server-first check is opened, kept or dropped.

use super::*;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use tokio::io::{AsyncWriteExt, DuplexStream};

#[test]
fn h2_preface_is_http2() {
    assert_eq!(classify(H2_PREFACE), Some(Protocol::Http2));
    assert_eq!(classify(b"PRI * HTTP/2.0\r\n"), None);
}

#[test]
fn http1_request_lines() {
    assert_eq!(
        classify(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n"),
        Some(Protocol::Http1)
    );
    assert_eq!(
        classify(b"POST /x?y=1 HTTP/1.0\r\nHost"),
        Some(Protocol::Http1)
    );
    assert_eq!(classify(b"GET / HTTP/1.1\r\n"), Some(Protocol::Http1));
    assert_eq!(classify(b"GET /ind"), None);
}

#[test]
fn bad_header_after_good_request_line_is_still_http1() {
    // The HTTP server answers 400 to this; detection must not make it opaque.
    assert_eq!(
        classify(b"GET / HTTP/1.1\r\nbad header\r\n\r\n"),
        Some(Protocol::Http1)
    );
}

#[test]
fn tls_and_binary_are_opaque() {
    assert_eq!(
        classify(&[0x16, 0x03, 0x01, 0x02, 0x00]),
        Some(Protocol::Opaque)
    );
    assert_eq!(classify(&[0x00, 0x01, 0x02]), Some(Protocol::Opaque));
    assert_eq!(classify(b"SSH-2.0-OpenSSH\r\n"), Some(Protocol::Opaque));
    assert_eq!(classify(b"GET / SMTP/1.0\r\n"), Some(Protocol::Opaque));
}

#[test]
fn very_long_request_line_is_http1() {
    let mut line = b"GET /".to_vec();
    line.resize(DETECT_BUFFER + 10, b'a');
    assert_eq!(classify(&line), Some(Protocol::Http1));
}

#[test]
fn every_outcome_maps_to_how_it_is_served() {
    for (i, d) in Detection::ALL.into_iter().enumerate() {
        assert_eq!(d.index(), i);
        let served = d.protocol();
        match d {
            Detection::Http1 => assert_eq!(served, Some(Protocol::Http1)),
            Detection::Http2 => assert_eq!(served, Some(Protocol::Http2)),
            Detection::Idle | Detection::Shutdown => assert_eq!(served, None),
            _ => assert_eq!(served, Some(Protocol::Opaque), "{d:?}"),
        }
    }
}

/// What the destination does on a connection opened for the server-first check.
#[derive(Clone, Copy, Default)]
enum Server {
    #[default]
    Silent,
    Greets(&'static [u8]),
    Closes,
}

/// The destination side of the server-first check: each connect hands out the proxy's end
/// of a fresh duplex pair and keeps the server's end for the test.
#[derive(Clone, Default)]
struct Upstreams {
    server: Server,
    connects: Arc<AtomicUsize>,
    servers: Arc<std::sync::Mutex<Vec<DuplexStream>>>,
}

impl Upstreams {
    fn new(server: Server) -> Self {
        Self {
            server,
            ..Self::default()
        }
    }

    fn connect(&self) -> impl Future<Output = Result<DuplexStream, ConnectError>> {
        let this = self.clone();
        async move {
            this.connects.fetch_add(1, Ordering::SeqCst);
            let (proxy_end, mut server_end) = tokio::io::duplex(1024);
            match this.server {
                Server::Silent => this.servers.lock().unwrap().push(server_end),
                Server::Greets(greeting) => {
                    server_end.write_all(greeting).await.unwrap();
                    this.servers.lock().unwrap().push(server_end);
                }
                Server::Closes => drop(server_end),
            }
            Ok(proxy_end)
        }
    }

    fn connects(&self) -> usize {
        self.connects.load(Ordering::SeqCst)
    }

    fn server(&self) -> DuplexStream {
        self.servers.lock().unwrap().pop().expect("a connection")
    }
}

async fn run(
    io: &mut DuplexStream,
    upstreams: &Upstreams,
) -> Result<Detected<DuplexStream>, DetectError> {
    detect(
        io,
        || upstreams.connect(),
        std::future::pending(),
        Timeouts::default(),
    )
    .await
}

/// A client that connects, stays silent for `delay`, then writes `bytes`.
fn late_client(delay: Duration, bytes: &'static [u8]) -> DuplexStream {
    let (mut client, server) = tokio::io::duplex(4096);
    tokio::spawn(async move {
        tokio::time::sleep(delay).await;
        client.write_all(bytes).await.unwrap();
        // Held open: the proxy must decide on the bytes, not on a close.
        std::future::pending::<()>().await;
    });
    server
}

#[tokio::test(start_paused = true)]
async fn silent_client_then_http1_is_http1() {
    let upstreams = Upstreams::default();
    let mut io = late_client(Duration::from_secs(3), b"GET / HTTP/1.1\r\nHost: a\r\n\r\n");
    let d = run(&mut io, &upstreams).await.unwrap();
    assert_eq!(d.detection, Detection::Http1);
    assert!(d.prefix.starts_with(b"GET / HTTP/1.1\r\n"));
    // The server-first check ran (the client was silent past the detection timeout).
    assert_eq!(upstreams.connects(), 1);
    assert!(d.upstream.is_some());
}

#[tokio::test(start_paused = true)]
async fn silent_client_then_h2_preface_is_http2() {
    let upstreams = Upstreams::default();
    let mut io = late_client(Duration::from_secs(3), H2_PREFACE);
    let d = run(&mut io, &upstreams).await.unwrap();
    assert_eq!(d.detection, Detection::Http2);
    assert_eq!(&d.prefix[..], H2_PREFACE);
}

#[tokio::test(start_paused = true)]
async fn prompt_http1_opens_no_upstream() {
    let upstreams = Upstreams::default();
    let mut io = late_client(Duration::ZERO, b"GET / HTTP/1.1\r\n\r\n");
    let d = run(&mut io, &upstreams).await.unwrap();
    assert_eq!(d.detection, Detection::Http1);
    assert_eq!(upstreams.connects(), 0);
    assert!(d.upstream.is_none());
}

#[tokio::test(start_paused = true)]
async fn server_greeting_decides_server_first_after_the_detection_timeout() {
    let upstreams = Upstreams::new(Server::Greets(b"220 hello\r\n"));
    let (_client, mut io) = tokio::io::duplex(64);
    let start = Instant::now();
    let d = run(&mut io, &upstreams).await.unwrap();
    assert_eq!(d.detection, Detection::ServerFirst);
    assert_eq!(
        start.elapsed(),
        DETECT_TIMEOUT,
        "no delay beyond the timeout"
    );
    assert!(d.prefix.is_empty());
    // The greeting is replayed from the connection detection opened: no second connect.
    let mut upstream = d.upstream.expect("the upstream connection");
    let mut greeting = [0u8; 11];
    upstream.read_exact(&mut greeting).await.unwrap();
    assert_eq!(&greeting, b"220 hello\r\n");
    assert_eq!(upstreams.connects(), 1);
}

#[tokio::test(start_paused = true)]
async fn server_closing_first_is_relayed_as_server_first() {
    let upstreams = Upstreams::new(Server::Closes);
    let (_client, mut io) = tokio::io::duplex(64);
    let d = run(&mut io, &upstreams).await.unwrap();
    assert_eq!(d.detection, Detection::ServerFirst);
    let mut rest = Vec::new();
    d.upstream.unwrap().read_to_end(&mut rest).await.unwrap();
    assert!(rest.is_empty());
}

#[tokio::test(start_paused = true)]
async fn opaque_client_after_the_check_reuses_the_upstream() {
    let upstreams = Upstreams::default();
    let mut io = late_client(Duration::from_secs(3), b"\x00\x01binary");
    let d = run(&mut io, &upstreams).await.unwrap();
    assert_eq!(d.detection, Detection::Opaque);
    assert_eq!(&d.prefix[..], b"\x00\x01binary");
    assert!(d.upstream.is_some());
    assert_eq!(upstreams.connects(), 1);
}

#[tokio::test(start_paused = true)]
async fn garbage_is_opaque_at_once() {
    let upstreams = Upstreams::default();
    let mut io = late_client(Duration::ZERO, b"\x16\x03\x01\x02\x00");
    let start = Instant::now();
    let d = run(&mut io, &upstreams).await.unwrap();
    assert_eq!(d.detection, Detection::Opaque);
    assert_eq!(start.elapsed(), Duration::ZERO);
    assert_eq!(upstreams.connects(), 0);
}

#[tokio::test(start_paused = true)]
async fn request_split_across_writes_is_http1() {
    let upstreams = Upstreams::default();
    let (mut client, mut io) = tokio::io::duplex(64);
    let writer = tokio::spawn(async move {
        client.write_all(b"GET /a").await.unwrap();
        tokio::time::sleep(Duration::from_millis(500)).await;
        client.write_all(b" HTTP/1.1\r\n\r\n").await.unwrap();
        client
    });
    let d = run(&mut io, &upstreams).await.unwrap();
    assert_eq!(d.detection, Detection::Http1);
    assert!(d.prefix.starts_with(b"GET /a HTTP/1.1"));
    drop(writer.await.unwrap());
}

#[tokio::test(start_paused = true)]
async fn stalled_first_message_times_out_as_opaque() {
    let upstreams = Upstreams::default();
    let mut io = late_client(Duration::from_millis(200), b"GET /ind");
    let start = Instant::now();
    let d = run(&mut io, &upstreams).await.unwrap();
    assert_eq!(d.detection, Detection::TimedOut);
    assert_eq!(d.detection.protocol(), Some(Protocol::Opaque));
    assert_eq!(&d.prefix[..], b"GET /ind");
    assert_eq!(
        start.elapsed(),
        Duration::from_millis(200) + FIRST_MESSAGE_TIMEOUT
    );
    // The client spoke first: the server was never asked.
    assert_eq!(upstreams.connects(), 0);
}

#[tokio::test(start_paused = true)]
async fn client_close_without_bytes_is_relayed() {
    let upstreams = Upstreams::default();
    let (client, mut io) = tokio::io::duplex(64);
    drop(client);
    let d = run(&mut io, &upstreams).await.unwrap();
    assert_eq!(d.detection, Detection::ClientClosed);
    assert_eq!(d.detection.protocol(), Some(Protocol::Opaque));
    assert!(d.prefix.is_empty());
}

#[tokio::test(start_paused = true)]
async fn client_close_after_the_check_keeps_its_upstream() {
    let upstreams = Upstreams::default();
    let (client, mut io) = tokio::io::duplex(64);
    let closer = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_secs(5)).await;
        drop(client);
    });
    let d = run(&mut io, &upstreams).await.unwrap();
    closer.await.unwrap();
    assert_eq!(d.detection, Detection::ClientClosed);
    assert!(d.upstream.is_some(), "the close goes to the server over it");
}

#[tokio::test(start_paused = true)]
async fn both_silent_until_the_idle_timeout_is_closed() {
    let upstreams = Upstreams::default();
    let (_client, mut io) = tokio::io::duplex(64);
    let start = Instant::now();
    let d = run(&mut io, &upstreams).await.unwrap();
    assert_eq!(d.detection, Detection::Idle);
    assert_eq!(d.detection.protocol(), None);
    assert_eq!(start.elapsed(), UNDECIDED_IDLE_TIMEOUT);
    assert!(
        d.upstream.is_none(),
        "the upstream connection is closed too"
    );
    // The server saw its connection closed.
    let mut server = upstreams.server();
    let mut rest = Vec::new();
    server.read_to_end(&mut rest).await.unwrap();
    assert!(rest.is_empty());
}

#[tokio::test(start_paused = true)]
async fn shutdown_closes_a_silent_connection() {
    let upstreams = Upstreams::default();
    let (_client, mut io) = tokio::io::duplex(64);
    let start = Instant::now();
    let shutdown = tokio::time::sleep(Duration::from_secs(30));
    let d = detect(
        &mut io,
        || upstreams.connect(),
        shutdown,
        Timeouts::default(),
    )
    .await
    .unwrap();
    assert_eq!(d.detection, Detection::Shutdown);
    assert_eq!(start.elapsed(), Duration::from_secs(30));
}

#[tokio::test(start_paused = true)]
async fn shutdown_does_not_cut_a_first_message_short() {
    let upstreams = Upstreams::default();
    let (mut client, mut io) = tokio::io::duplex(64);
    let writer = tokio::spawn(async move {
        client.write_all(b"GET /a").await.unwrap();
        tokio::time::sleep(Duration::from_millis(500)).await;
        client.write_all(b" HTTP/1.1\r\n\r\n").await.unwrap();
        client
    });
    let shutdown = tokio::time::sleep(Duration::from_millis(100));
    let d = detect(
        &mut io,
        || upstreams.connect(),
        shutdown,
        Timeouts::default(),
    )
    .await
    .unwrap();
    assert_eq!(d.detection, Detection::Http1);
    drop(writer.await.unwrap());
}

#[tokio::test(start_paused = true)]
async fn failed_connect_for_the_check_is_an_error() {
    let (_client, mut io) = tokio::io::duplex(64);
    let addr = "10.0.0.1:25".parse().unwrap();
    let err = detect::<_, DuplexStream, _, _, _>(
        &mut io,
        || async move { Err(ConnectError::Timeout(addr)) },
        std::future::pending(),
        Timeouts::default(),
    )
    .await
    .unwrap_err();
    assert!(matches!(
        err,
        DetectError::Connect(ConnectError::Timeout(_))
    ));
}

#[tokio::test(start_paused = true)]
async fn client_speaking_during_a_slow_connect_decides_without_it() {
    let (mut client, mut io) = tokio::io::duplex(64);
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_secs(2)).await;
        client.write_all(b"GET / HTTP/1.1\r\n\r\n").await.unwrap();
        std::future::pending::<()>().await;
    });
    // The connect takes 10 s (a black-holed destination); the client speaks after 2 s.
    let start = Instant::now();
    let d = detect::<_, DuplexStream, _, _, _>(
        &mut io,
        || async {
            tokio::time::sleep(Duration::from_secs(10)).await;
            Err(ConnectError::Timeout("10.0.0.1:80".parse().unwrap()))
        },
        std::future::pending(),
        Timeouts::default(),
    )
    .await
    .unwrap();
    assert_eq!(d.detection, Detection::Http1);
    assert_eq!(start.elapsed(), Duration::from_secs(2));
    assert!(d.upstream.is_none());
}

#[tokio::test(start_paused = true)]
async fn client_reset_is_a_client_error() {
    struct Failing;
    impl AsyncRead for Failing {
        fn poll_read(
            self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
            _: &mut tokio::io::ReadBuf<'_>,
        ) -> std::task::Poll<std::io::Result<()>> {
            std::task::Poll::Ready(Err(std::io::ErrorKind::ConnectionReset.into()))
        }
    }
    let upstreams = Upstreams::default();
    let err = detect(
        &mut Failing,
        || upstreams.connect(),
        std::future::pending(),
        Timeouts::default(),
    )
    .await
    .unwrap_err();
    assert!(matches!(err, DetectError::Client(_)));
}
