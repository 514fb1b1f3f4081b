//! A minimal HTTP/1 GET for readiness checks and demo requests, sent straight to an address
//! (never through `HTTP_PROXY`, which the CLI may itself have inherited).

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context as _;
use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;

/// One request must not hang a readiness loop or the demo.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// `GET http://addr{path}`; returns the status and the body as text.
pub async fn get(addr: SocketAddr, path: &str) -> anyhow::Result<(u16, String)> {
    tokio::time::timeout(REQUEST_TIMEOUT, get_inner(addr, path))
        .await
        .with_context(|| format!("GET http://{addr}{path} timed out"))?
}

async fn get_inner(addr: SocketAddr, path: &str) -> anyhow::Result<(u16, String)> {
    let stream = tokio::net::TcpStream::connect(addr)
        .await
        .with_context(|| format!("connecting to {addr}"))?;
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .context("HTTP handshake")?;
    tokio::spawn(connection);
    let request = http::Request::get(path)
        .header(http::header::HOST, addr.to_string())
        .body(Empty::<Bytes>::new())?;
    let response = sender.send_request(request).await.context("sending")?;
    let status = response.status().as_u16();
    let body = response.into_body().collect().await?.to_bytes();
    Ok((status, String::from_utf8_lossy(&body).into_owned()))
}
