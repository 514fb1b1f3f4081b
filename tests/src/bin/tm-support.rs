//! Servers and clients that end-to-end tests run inside pod namespaces.
//!
//! Each server prints `ready <addr>` on stdout once it listens, which is what the harness waits
//! for. Every server reports the addresses it saw (`local`, `peer`), so a test can check that the
//! app saw the original destination and whether a sidecar sat in between.

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

/// The load client's bound: thousands of requests through debug-built sidecars on a shared
/// machine take seconds, not minutes; past this the proxy is hung, not slow.
const LOAD_DEADLINE: Duration = Duration::from_secs(240);

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
    /// Connects, says nothing for DELAY_MS (a pooled or pre-connecting client), then sends one
    /// GET and prints the response body (the http-echo JSON).
    LateGet {
        addr: SocketAddr,
        #[arg(long, default_value_t = 3000)]
        delay_ms: u64,
        #[arg(long, default_value = "/late")]
        path: String,
        /// HTTP/2 prior knowledge (the preface is sent after the delay too).
        #[arg(long)]
        http2: bool,
    },
    /// GETs URL REQUESTS times over one pooled keep-alive client (hyper-util's), CONCURRENCY at
    /// a time, in ROUNDS separated by PAUSE_MS of quiet. With --preconnect-ms, a warmed-up pool
    /// instead: CONCURRENCY connections opened first and left silent that long, then each
    /// carries its share of the requests in turn. Prints one line per request with the trace
    /// headers the http-echo app saw (`<x-b3-traceid> <x-b3-spanid> <x-b3-parentspanid>`, `-`
    /// when missing), then `done <n>`; any failed request stops it with an error.
    Load {
        url: String,
        #[arg(long, default_value_t = 100)]
        requests: usize,
        #[arg(long, default_value_t = 1)]
        concurrency: usize,
        #[arg(long, default_value_t = 1)]
        rounds: usize,
        #[arg(long, default_value_t = 0)]
        pause_ms: u64,
        #[arg(long)]
        preconnect_ms: Option<u64>,
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
            Cmd::LateGet {
                addr,
                delay_ms,
                path,
                http2,
            } => deadline(late_get(addr, Duration::from_millis(delay_ms), path, http2)).await,
            Cmd::Load {
                url,
                requests,
                concurrency,
                rounds,
                pause_ms,
                preconnect_ms,
            } => {
                let pause = Duration::from_millis(pause_ms);
                let concurrency = concurrency.max(1);
                let run = async {
                    match preconnect_ms {
                        Some(ms) => {
                            let silence = Duration::from_millis(ms);
                            warm_pool_load(url, requests, concurrency, silence).await
                        }
                        None => load(url, requests, concurrency, rounds.max(1), pause).await,
                    }
                };
                tokio::time::timeout(LOAD_DEADLINE, run)
                    .await
                    .context("load deadline passed")?
            }
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

async fn late_get(
    addr: SocketAddr,
    delay: Duration,
    path: String,
    http2: bool,
) -> anyhow::Result<()> {
    let tcp = TcpStream::connect(addr)
        .await
        .with_context(|| format!("connect {addr}"))?;
    // Nothing is written before this: not a request line, not an HTTP/2 preface.
    tokio::time::sleep(delay).await;
    let body = http_body_util::Empty::<Bytes>::new();
    let response = if http2 {
        let req = Request::get(format!("http://{addr}{path}")).body(body)?;
        let (mut sender, conn) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp)).await?;
        tokio::spawn(conn);
        sender.send_request(req).await?
    } else {
        let req = Request::get(path)
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
    let body = response.into_body().collect().await?.to_bytes();
    println!("{}", String::from_utf8_lossy(&body));
    Ok(())
}

/// The `load` line of one echo response: the trace headers the app saw.
fn trace_line(uri: &http::Uri, body: &[u8]) -> anyhow::Result<String> {
    let info: serde_json::Value =
        serde_json::from_slice(body).with_context(|| format!("GET {uri}: echo JSON"))?;
    let header = |name: &str| info["headers"][name].as_str().unwrap_or("-").to_owned();
    Ok(format!(
        "{} {} {}",
        header("x-b3-traceid"),
        header("x-b3-spanid"),
        header("x-b3-parentspanid")
    ))
}

/// A warmed-up pool: `concurrency` connections opened up front and left silent for `silence`
/// (as pools that pre-connect do), then each sends its share of the requests, one at a time.
async fn warm_pool_load(
    url: String,
    requests: usize,
    concurrency: usize,
    silence: Duration,
) -> anyhow::Result<()> {
    let base: http::Uri = url.parse()?;
    let authority = base.authority().context("URL without host")?.clone();
    let addr: SocketAddr = authority.as_str().parse().context("URL host:port")?;
    let mut conns = Vec::new();
    for _ in 0..concurrency {
        conns.push(TcpStream::connect(addr).await?);
    }
    tokio::time::sleep(silence).await;
    let mut workers = tokio::task::JoinSet::new();
    for (w, tcp) in conns.into_iter().enumerate() {
        let n = requests / concurrency + usize::from(w < requests % concurrency);
        let (path, authority) = (base.path().to_owned(), authority.clone());
        workers.spawn(async move {
            let (mut sender, conn) =
                hyper::client::conn::http1::handshake(TokioIo::new(tcp)).await?;
            tokio::spawn(conn);
            let mut lines = Vec::with_capacity(n);
            for i in 0..n {
                let uri: http::Uri = format!("{path}/warm/{w}/{i}").parse()?;
                let req = Request::get(uri.clone())
                    .header("host", authority.as_str())
                    .body(http_body_util::Empty::<Bytes>::new())?;
                sender.ready().await?;
                let response = sender.send_request(req).await?;
                anyhow::ensure!(response.status().is_success(), "GET {uri}: status");
                let body = response.into_body().collect().await?.to_bytes();
                lines.push(trace_line(&uri, &body)?);
            }
            anyhow::Ok(lines)
        });
    }
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    while let Some(lines) = workers.join_next().await {
        for line in lines?? {
            writeln!(out, "{line}")?;
        }
    }
    writeln!(out, "done {requests}")?;
    out.flush()?;
    Ok(())
}

/// One GET through the pooled client; the trace headers the echo app saw.
async fn traced_get(
    client: &hyper_util::client::legacy::Client<
        hyper_util::client::legacy::connect::HttpConnector,
        http_body_util::Empty<Bytes>,
    >,
    uri: http::Uri,
) -> anyhow::Result<String> {
    let response = client
        .get(uri.clone())
        .await
        .with_context(|| format!("GET {uri}"))?;
    anyhow::ensure!(
        response.status().is_success(),
        "GET {uri}: status {}",
        response.status()
    );
    let body = response.into_body().collect().await?.to_bytes();
    trace_line(&uri, &body)
}

async fn load(
    url: String,
    requests: usize,
    concurrency: usize,
    rounds: usize,
    pause: Duration,
) -> anyhow::Result<()> {
    use futures_util::TryStreamExt as _;

    let client = hyper_util::client::legacy::Client::builder(TokioExecutor::new()).build_http();
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    let mut done = 0;
    for round in 0..rounds {
        if round > 0 {
            tokio::time::sleep(pause).await;
        }
        let n = requests / rounds + usize::from(round < requests % rounds);
        let uris = (0..n)
            .map(|i| format!("{url}/{round}/{i}").parse::<http::Uri>())
            .collect::<Result<Vec<_>, _>>()?;
        let lines: Vec<String> = futures_util::stream::iter(uris.into_iter().map(Ok))
            .map_ok(|uri| traced_get(&client, uri))
            .try_buffer_unordered(concurrency)
            .try_collect()
            .await?;
        for line in lines {
            writeln!(out, "{line}")?;
        }
        done += n;
    }
    writeln!(out, "done {done}")?;
    out.flush()?;
    Ok(())
}
