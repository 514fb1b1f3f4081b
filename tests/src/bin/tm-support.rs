//! Servers and clients that end-to-end tests run inside pod namespaces.
//!
//! Each server prints `ready <addr>` on stdout once it listens, which is what the harness waits
//! for. Every server reports the addresses it saw (`local`, `peer`), so a test can check that the
//! app saw the original destination and whether a sidecar sat in between.
#![deny(rust_2018_idioms)]
#![forbid(unsafe_code)]

use std::convert::Infallible;
use std::io::Write as _;
use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context as _;
use bytes::Bytes;
use clap::{Parser, Subcommand};
use futures_util::{SinkExt as _, StreamExt as _};
use http_body_util::{combinators::BoxBody, BodyExt as _, Full};
use hyper::body::Incoming;
use hyper::{Method, Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::tungstenite::Message;

/// Clients give up after this long: a hung proxy fails the test instead of hanging it.
const CLIENT_DEADLINE: Duration = Duration::from_secs(20);

#[derive(Parser)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// HTTP/1.1 and h2c (prior knowledge) echo: POST/PUT bodies are streamed back; other methods
    /// get a JSON description of the request (method, path, version, headers, local, peer).
    HttpEcho {
        #[arg(long)]
        listen: SocketAddr,
    },
    /// TCP echo; with --banner the server speaks first (`<banner> local=.. peer=..\n`).
    TcpEcho {
        #[arg(long)]
        listen: SocketAddr,
        #[arg(long)]
        banner: Option<String>,
    },
    /// WebSocket echo of text and binary messages.
    WsEcho {
        #[arg(long)]
        listen: SocketAddr,
    },
    /// Connects, (reads the banner line with --banner), sends MESSAGE, half-closes, prints all it
    /// reads until the server closes.
    TcpClient {
        addr: SocketAddr,
        message: String,
        #[arg(long)]
        banner: bool,
    },
    /// Sends MESSAGE as one text frame and prints the first message received.
    WsClient { url: String, message: String },
    /// POSTs CHUNKS chunks to an echo server, sending each only after the previous one came back:
    /// passes only if every hop streams both bodies (a buffering hop hangs until the deadline).
    /// With --trailer NAME:VALUE, sends it as a request trailer and prints response trailers.
    StreamClient {
        addr: SocketAddr,
        #[arg(long, default_value = "/stream")]
        path: String,
        #[arg(long, default_value_t = 5)]
        chunks: usize,
        /// HTTP/2 prior knowledge instead of HTTP/1.1.
        #[arg(long)]
        http2: bool,
        #[arg(long)]
        trailer: Option<String>,
    },
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        match cli.cmd {
            Cmd::HttpEcho { listen } => http_echo(listen).await,
            Cmd::TcpEcho { listen, banner } => tcp_echo(listen, banner).await,
            Cmd::WsEcho { listen } => ws_echo(listen).await,
            Cmd::TcpClient {
                addr,
                message,
                banner,
            } => deadline(tcp_client(addr, message, banner)).await,
            Cmd::WsClient { url, message } => deadline(ws_client(url, message)).await,
            Cmd::StreamClient {
                addr,
                path,
                chunks,
                http2,
                trailer,
            } => deadline(stream_client(addr, path, chunks, http2, trailer)).await,
        }
    })
}

async fn deadline(f: impl std::future::Future<Output = anyhow::Result<()>>) -> anyhow::Result<()> {
    tokio::time::timeout(CLIENT_DEADLINE, f)
        .await
        .context("client deadline passed")?
}

async fn bind(listen: SocketAddr) -> anyhow::Result<TcpListener> {
    let l = TcpListener::bind(listen)
        .await
        .with_context(|| format!("bind {listen}"))?;
    println!("ready {}", l.local_addr()?);
    std::io::stdout().flush()?;
    Ok(l)
}

type Body = BoxBody<Bytes, hyper::Error>;

async fn http_echo(listen: SocketAddr) -> anyhow::Result<()> {
    let l = bind(listen).await?;
    loop {
        let (s, peer) = l.accept().await?;
        let local = s.local_addr()?;
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req: Request<Incoming>| async move {
                Ok::<_, Infallible>(respond(req, local, peer))
            });
            let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(s), svc)
                .await;
        });
    }
}

fn respond(req: Request<Incoming>, local: SocketAddr, peer: SocketAddr) -> Response<Body> {
    let builder = Response::builder()
        .header("x-echo-local", local.to_string())
        .header("x-echo-peer", peer.to_string())
        .header("x-echo-version", format!("{:?}", req.version()));
    let built = if req.method() == Method::POST || req.method() == Method::PUT {
        // Streamed straight back: a proxy that buffers whole bodies still passes, one that breaks
        // streaming or chunking does not.
        builder.body(req.into_body().boxed())
    } else {
        let mut headers = serde_json::Map::new();
        for (name, value) in req.headers() {
            let v = String::from_utf8_lossy(value.as_bytes()).into_owned();
            headers
                .entry(name.as_str())
                .and_modify(|old| {
                    if let serde_json::Value::String(s) = old {
                        s.push_str(", ");
                        s.push_str(&v);
                    }
                })
                .or_insert_with(|| serde_json::Value::String(v.clone()));
        }
        let info = serde_json::json!({
            "method": req.method().as_str(),
            "path": req.uri().path_and_query().map(|p| p.as_str()).unwrap_or("/"),
            "version": format!("{:?}", req.version()),
            "headers": headers,
            "local": local.to_string(),
            "peer": peer.to_string(),
        });
        builder.header("content-type", "application/json").body(
            Full::new(Bytes::from(info.to_string()))
                .map_err(|never| match never {})
                .boxed(),
        )
    };
    built.unwrap_or_else(|_| Response::new(Full::new(Bytes::new()).map_err(|n| match n {}).boxed()))
}

async fn tcp_echo(listen: SocketAddr, banner: Option<String>) -> anyhow::Result<()> {
    let l = bind(listen).await?;
    loop {
        let (mut s, peer) = l.accept().await?;
        let local = s.local_addr()?;
        let banner = banner.clone();
        tokio::spawn(async move {
            if let Some(b) = banner {
                let line = format!("{b} local={local} peer={peer}\n");
                if s.write_all(line.as_bytes()).await.is_err() {
                    return;
                }
            }
            let (mut r, mut w) = s.split();
            if tokio::io::copy(&mut r, &mut w).await.is_ok() {
                let _ = w.shutdown().await;
            }
        });
    }
}

async fn tcp_client(addr: SocketAddr, message: String, banner: bool) -> anyhow::Result<()> {
    let s = TcpStream::connect(addr)
        .await
        .with_context(|| format!("connect {addr}"))?;
    let mut s = BufReader::new(s);
    let mut out = String::new();
    if banner {
        s.read_line(&mut out).await.context("read banner")?;
    }
    s.get_mut().write_all(message.as_bytes()).await?;
    s.get_mut().shutdown().await?;
    s.read_to_string(&mut out).await.context("read echo")?;
    print!("{out}");
    Ok(())
}

async fn ws_echo(listen: SocketAddr) -> anyhow::Result<()> {
    let l = bind(listen).await?;
    loop {
        let (s, _) = l.accept().await?;
        tokio::spawn(async move {
            let Ok(mut ws) = tokio_tungstenite::accept_async(s).await else {
                return;
            };
            while let Some(Ok(msg)) = ws.next().await {
                let echo = match msg {
                    Message::Text(_) | Message::Binary(_) => msg,
                    Message::Close(_) => return,
                    _ => continue,
                };
                if ws.send(echo).await.is_err() {
                    return;
                }
            }
        });
    }
}

async fn ws_client(url: String, message: String) -> anyhow::Result<()> {
    let (mut ws, _) = tokio_tungstenite::connect_async(url.as_str())
        .await
        .with_context(|| format!("connect {url}"))?;
    ws.send(Message::text(message)).await?;
    while let Some(msg) = ws.next().await {
        match msg? {
            Message::Text(t) => {
                println!("{}", t.as_str());
                break;
            }
            Message::Binary(b) => {
                println!("{}", String::from_utf8_lossy(&b));
                break;
            }
            _ => {}
        }
    }
    let _ = ws.close(None).await;
    Ok(())
}

type Frames = tokio::sync::mpsc::Sender<Result<hyper::body::Frame<Bytes>, Infallible>>;

async fn stream_client(
    addr: SocketAddr,
    path: String,
    chunks: usize,
    http2: bool,
    trailer: Option<String>,
) -> anyhow::Result<()> {
    use hyper::body::Frame;

    let tcp = TcpStream::connect(addr)
        .await
        .with_context(|| format!("connect {addr}"))?;
    let (tx, mut rx): (Frames, _) = tokio::sync::mpsc::channel(1);
    let frames = futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx));
    let body = http_body_util::StreamBody::new(frames);
    let chunk = |i: usize| Bytes::from(format!("chunk-{i}:{}\n", "x".repeat(1000)));

    tx.send(Ok(Frame::data(chunk(0)))).await?;
    let response = if http2 {
        let uri = format!("http://{addr}{path}");
        let req = Request::post(uri).body(body)?;
        let (mut sender, conn) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp)).await?;
        tokio::spawn(conn);
        sender.send_request(req).await?
    } else {
        let req = Request::post(path)
            .header("host", addr.to_string())
            .body(body)?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp)).await?;
        tokio::spawn(conn);
        sender.send_request(req).await?
    };
    anyhow::ensure!(
        response.status().is_success(),
        "status {}",
        response.status()
    );
    let mut body = response.into_body();
    let mut received = Vec::new();
    let mut expected = Vec::new();
    for i in 0..chunks {
        expected.extend_from_slice(&chunk(i));
        while received.len() < expected.len() {
            let frame = body
                .frame()
                .await
                .with_context(|| format!("response ended before chunk {i} came back"))??;
            if let Ok(data) = frame.into_data() {
                received.extend_from_slice(&data);
            }
        }
        anyhow::ensure!(received == expected, "chunk {i} came back different");
        if i + 1 < chunks {
            tx.send(Ok(Frame::data(chunk(i + 1)))).await?;
        }
    }
    if let Some(t) = trailer {
        let (name, value) = t.split_once(':').context("--trailer NAME:VALUE")?;
        let mut map = http::HeaderMap::new();
        map.insert(
            http::HeaderName::from_bytes(name.trim().as_bytes())?,
            http::HeaderValue::from_str(value.trim())?,
        );
        tx.send(Ok(Frame::trailers(map))).await?;
    }
    drop(tx);
    while let Some(frame) = body.frame().await {
        match frame?.into_trailers() {
            Ok(trailers) => {
                for (name, value) in &trailers {
                    println!(
                        "trailer {}: {}",
                        name,
                        String::from_utf8_lossy(value.as_bytes())
                    );
                }
            }
            Err(data) => {
                if let Ok(data) = data.into_data() {
                    anyhow::ensure!(data.is_empty(), "unexpected data after the last chunk");
                }
            }
        }
    }
    println!("{chunks} chunks echoed in lockstep");
    Ok(())
}
