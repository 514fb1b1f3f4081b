//! The upstream app: answers every request with its own body. It runs on its own runtime
//! thread so that serving does not compete with the load generator's scheduler.

use std::convert::Infallible;
use std::net::SocketAddr;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;

use crate::server;

async fn echo(req: http::Request<Incoming>) -> Result<http::Response<Full<Bytes>>, Infallible> {
    let body = match req.into_body().collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(_) => Bytes::new(),
    };
    Ok(http::Response::new(Full::new(body)))
}

/// Starts the echo server on 127.0.0.1 on a dedicated single-threaded runtime; returns its
/// address. The thread lives as long as the process.
pub fn start() -> anyhow::Result<SocketAddr> {
    server::spawn("echo", |tcp| async move {
        let _ = tcp.set_nodelay(true);
        let _ = hyper::server::conn::http1::Builder::new()
            .serve_connection(TokioIo::new(tcp), service_fn(echo))
            .await;
    })
}
