//! The upstreams behind the sidecar: a well-behaved app with hooks, and faulty or strict
//! servers written on raw sockets.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{oneshot, Notify};

/// Sends on its channel when dropped: tells when a server dropped a request's handler.
pub struct DropSignal(Option<oneshot::Sender<()>>);

impl Drop for DropSignal {
    fn drop(&mut self) {
        if let Some(tx) = self.0.take() {
            let _ = tx.send(());
        }
    }
}

pub type BoxBody = http_body_util::combinators::BoxBody<Bytes, std::io::Error>;

pub fn full(text: &'static str) -> BoxBody {
    Full::new(Bytes::from_static(text.as_bytes()))
        .map_err(|e| match e {})
        .boxed()
}

/// What an [`app`] request may wait on: released by the test, or never answered.
pub struct AppHooks {
    /// `/slow` answers once this is notified.
    pub release: Notify,
    /// Requests to `/slow` and `/hang` that arrived.
    pub arrived: AtomicUsize,
    /// `/hang` requests whose handler was dropped: the sidecar gave them up.
    dropped: tokio::sync::mpsc::UnboundedSender<()>,
}

/// An HTTP/1 and h2c app. `/fast` answers at once, `/slow` once released, `/hang` never (it
/// reports the drop of its handler), `/reset` sends part of a body then fails it (HTTP/2:
/// RST_STREAM). HTTP/1 connections are not kept alive, so no pooled upstream connection
/// blurs the descriptor count.
pub async fn app(hooks: Arc<AppHooks>) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((s, _)) = listener.accept().await {
            let hooks = hooks.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                    let hooks = hooks.clone();
                    async move { Ok::<_, Infallible>(answer(&hooks, req.uri().path()).await) }
                });
                let mut builder =
                    hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
                builder.http1().keep_alive(false);
                let _ = builder.serve_connection(TokioIo::new(s), svc).await;
            });
        }
    });
    addr
}

pub async fn answer(hooks: &AppHooks, path: &str) -> Response<BoxBody> {
    match path {
        "/slow" => {
            hooks.arrived.fetch_add(1, Ordering::SeqCst);
            hooks.release.notified().await;
            Response::new(full("slow"))
        }
        "/hang" => {
            let (tx, rx) = oneshot::channel();
            let _signal = DropSignal(Some(tx));
            let dropped = hooks.dropped.clone();
            tokio::spawn(async move {
                if rx.await.is_ok() {
                    let _ = dropped.send(());
                }
            });
            hooks.arrived.fetch_add(1, Ordering::SeqCst);
            std::future::pending::<()>().await;
            unreachable!()
        }
        "/reset" => {
            // The head and a first chunk go out; a moment later the body fails.
            let body = futures_util::stream::unfold(0, |step| async move {
                match step {
                    0 => Some((Ok(Frame::data(Bytes::from_static(b"partial"))), 1)),
                    1 => {
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        Some((Err(std::io::Error::other("upstream gave up")), 2))
                    }
                    _ => None,
                }
            });
            Response::new(BodyExt::boxed(StreamBody::new(body)))
        }
        _ => Response::new(full("ok")),
    }
}

pub fn hooks() -> (Arc<AppHooks>, tokio::sync::mpsc::UnboundedReceiver<()>) {
    let (dropped, rx) = tokio::sync::mpsc::unbounded_channel();
    let hooks = AppHooks {
        dropped,
        ..AppHooks::default()
    };
    (Arc::new(hooks), rx)
}

impl Default for AppHooks {
    fn default() -> Self {
        Self {
            release: Notify::new(),
            arrived: AtomicUsize::new(0),
            dropped: tokio::sync::mpsc::unbounded_channel().0,
        }
    }
}

/// An HTTP/1 upstream that reads one request head, answers `head` and the first `sent` bytes
/// of what it announced, then resets the connection (SO_LINGER 0): a crash mid-response.
pub async fn resetting_upstream(head: &'static str, sent: &'static [u8]) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut seen = Vec::new();
                let mut buf = [0u8; 1024];
                while !seen.windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => seen.extend_from_slice(&buf[..n]),
                    }
                }
                let _ = s.write_all(head.as_bytes()).await;
                let _ = s.write_all(sent).await;
                let _ = s.flush().await;
                // Let the bytes leave before the reset overtakes them.
                tokio::time::sleep(Duration::from_millis(50)).await;
                let _ = socket2::SockRef::from(&s).set_linger(Some(Duration::ZERO));
            });
        }
    });
    addr
}

/// An upstream that accepts and reads but never answers; reports each connection it sees
/// closed by the sidecar.
pub async fn stalled_upstream() -> (SocketAddr, tokio::sync::mpsc::UnboundedReceiver<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (closed_tx, closed) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            let closed_tx = closed_tx.clone();
            tokio::spawn(async move {
                let mut buf = [0u8; 1024];
                while let Ok(n) = s.read(&mut buf).await {
                    if n == 0 {
                        break;
                    }
                }
                let _ = closed_tx.send(());
            });
        }
    });
    (addr, closed)
}

/// A request as a strict upstream saw it on the wire.
#[derive(Clone, Debug)]
pub struct Seen {
    pub path: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Seen {
    pub fn count(&self, name: &str) -> usize {
        self.headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .count()
    }
}

/// An HTTP/1 upstream with its own parser, the independent judge of request smuggling: it
/// records every request it reads on the wire, to the end of each connection, with its raw
/// headers, so a second request or a doubled framing header cannot hide.
pub async fn recording_upstream() -> (SocketAddr, Arc<Mutex<Vec<Seen>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = seen.clone();
    tokio::spawn(async move {
        while let Ok((s, _)) = listener.accept().await {
            let log = log.clone();
            tokio::spawn(async move {
                let mut wire = Wire { s, buf: Vec::new() };
                while let Some(req) = wire.request().await {
                    log.lock().unwrap().push(req);
                    // Not kept alive by the sidecar's pool (no descriptor blurs the count),
                    // yet read on to the end: bytes behind the first request still show.
                    let ok = b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\nok";
                    if wire.s.write_all(ok).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    (addr, seen)
}

/// The recording upstream's connection: a buffer over a socket.
pub struct Wire {
    s: TcpStream,
    buf: Vec<u8>,
}

impl Wire {
    async fn more(&mut self) -> Option<()> {
        let mut chunk = [0u8; 4096];
        match self.s.read(&mut chunk).await {
            Ok(0) | Err(_) => None,
            Ok(n) => {
                self.buf.extend_from_slice(&chunk[..n]);
                Some(())
            }
        }
    }

    async fn take(&mut self, n: usize) -> Option<Vec<u8>> {
        while self.buf.len() < n {
            self.more().await?;
        }
        Some(self.buf.drain(..n).collect())
    }

    /// One CRLF-terminated line, without its CRLF.
    async fn line(&mut self) -> Option<Vec<u8>> {
        loop {
            if let Some(i) = self.buf.windows(2).position(|w| w == b"\r\n") {
                let line = self.buf.drain(..i + 2).take(i).collect();
                return Some(line);
            }
            self.more().await?;
        }
    }

    /// The next complete request, or `None` at EOF or on anything it cannot parse.
    async fn request(&mut self) -> Option<Seen> {
        let (path, headers, len) = loop {
            let mut headers = [httparse::EMPTY_HEADER; 128];
            let mut req = httparse::Request::new(&mut headers);
            match req.parse(&self.buf) {
                Ok(httparse::Status::Complete(len)) => {
                    let headers: Vec<(String, String)> = req
                        .headers
                        .iter()
                        .map(|h| {
                            (
                                h.name.to_owned(),
                                String::from_utf8_lossy(h.value).into_owned(),
                            )
                        })
                        .collect();
                    break (req.path.unwrap().to_owned(), headers, len);
                }
                Ok(httparse::Status::Partial) => self.more().await?,
                Err(_) => return None,
            }
        };
        self.buf.drain(..len);
        let mut seen = Seen {
            path,
            headers,
            body: Vec::new(),
        };
        if seen.count("transfer-encoding") > 0 {
            loop {
                let line = self.line().await?;
                let size = std::str::from_utf8(&line).ok()?.split(';').next()?.trim();
                let size = usize::from_str_radix(size, 16).ok()?;
                if size == 0 {
                    while !self.line().await?.is_empty() {}
                    break;
                }
                seen.body.extend(self.take(size).await?);
                self.line().await?;
            }
        } else if let Some((_, v)) = seen
            .headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case("content-length"))
        {
            let len = v.trim().parse().ok()?;
            seen.body = self.take(len).await?;
        }
        Some(seen)
    }
}

/// An HTTP/1 upstream that answers with a head trickled one byte every 10 ms; `short` heads
/// complete in about a second (and are not kept alive, so no pooled connection blurs the
/// count), the others never do. Reports each connection the sidecar closes.
pub async fn trickling_upstream(
    short: bool,
) -> (SocketAddr, tokio::sync::mpsc::UnboundedReceiver<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (closed_tx, closed) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((s, _)) = listener.accept().await {
            let closed_tx = closed_tx.clone();
            tokio::spawn(async move {
                let (mut read, mut write) = s.into_split();
                let mut buf = [0u8; 1024];
                let mut seen = Vec::new();
                while !seen.windows(4).any(|w| w == b"\r\n\r\n") {
                    match read.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => seen.extend_from_slice(&buf[..n]),
                    }
                }
                let head = if short {
                    format!(
                        "HTTP/1.1 200 OK\r\nX-Slow: {}\r\nConnection: close\r\nContent-Length: 4\r\n\r\nslow",
                        "a".repeat(40)
                    )
                } else {
                    format!("HTTP/1.1 200 OK\r\nX-Slow: {}", "a".repeat(100_000))
                };
                let trickle = async {
                    for byte in head.as_bytes() {
                        if write.write_all(&[*byte]).await.is_err() {
                            return;
                        }
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                    std::future::pending::<()>().await
                };
                let gone = async {
                    while let Ok(n) = read.read(&mut buf).await {
                        if n == 0 {
                            break;
                        }
                    }
                };
                tokio::select! {
                    _ = trickle => {}
                    _ = gone => {}
                }
                let _ = closed_tx.send(());
            });
        }
    });
    (addr, closed)
}

/// A TCP echo server.
pub async fn tcp_echo() -> SocketAddr {
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
