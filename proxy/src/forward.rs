//! The explicit HTTP forward proxy (what `HTTP_PROXY` points at): absolute-form requests are
//! proxied like transparent ones; CONNECT opens a tunnel whose content goes through the same
//! detection, so HTTP inside a tunnel is still traced.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http::uri::{Authority, Scheme};
use http::{Method, Request, Response, StatusCode};
use http_body_util::{Either, Full};
use hyper::body::Incoming;

use tokio::net::TcpStream;

use crate::context::Shared;
use crate::detect::Protocol;
use crate::http::{error_response, Ctx, ResponseBodyOrError};
use crate::shutdown::Watch;
use crate::trace::Direction;

/// What a forward-proxy request asks for.
#[derive(Debug, PartialEq, Eq)]
pub enum ProxyRequest {
    /// `CONNECT host:port`: a tunnel.
    Connect { host: String, port: u16 },
    /// `GET http://host[:port]/path`: one request.
    Absolute { host: String, port: u16 },
}

/// Why a request cannot be forwarded (HTTP 400).
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum ForwardError {
    #[error("CONNECT needs host:port")]
    ConnectTarget,
    #[error("only http:// targets can be forwarded; use CONNECT for https")]
    Scheme,
    #[error("a forward proxy needs an absolute-form request target")]
    NotAbsolute,
}

impl ForwardError {
    fn message(&self) -> &'static str {
        match self {
            ForwardError::ConnectTarget => "CONNECT needs host:port\n",
            ForwardError::Scheme => {
                "only http:// targets can be forwarded; use CONNECT for https\n"
            }
            ForwardError::NotAbsolute => "a forward proxy needs an absolute-form request target\n",
        }
    }
}

/// Reads the target of a forward-proxy request.
pub fn parse<B>(req: &Request<B>) -> Result<ProxyRequest, ForwardError> {
    let uri = req.uri();
    if req.method() == Method::CONNECT {
        let authority = uri.authority().ok_or(ForwardError::ConnectTarget)?;
        let port = authority.port_u16().ok_or(ForwardError::ConnectTarget)?;
        return Ok(ProxyRequest::Connect {
            host: authority.host().to_owned(),
            port,
        });
    }
    let authority = uri.authority().ok_or(ForwardError::NotAbsolute)?;
    if uri.scheme() != Some(&Scheme::HTTP) {
        return Err(ForwardError::Scheme);
    }
    Ok(ProxyRequest::Absolute {
        host: authority.host().to_owned(),
        port: authority.port_u16().unwrap_or(80),
    })
}

/// Serves one client of the forward proxy (HTTP/1.1, as `HTTP_PROXY` clients speak).
pub async fn serve(shared: Arc<Shared>, stream: TcpStream, peer: SocketAddr, watch: Watch) {
    shared
        .metrics
        .path(Direction::Outbound, Protocol::Http1)
        .connections
        .inc();
    let limits = crate::config::sidecar(&shared.config);
    let metrics = shared.metrics.clone();
    let signal = watch.clone();
    let ctx = Arc::new(Ctx {
        shared,
        direction: Direction::Outbound,
        protocol: Protocol::Http1,
        peer,
        watch,
    });
    let handler = move |req| handle(ctx.clone(), req);
    let result = crate::server::serve_http1_proxied(stream, handler, &limits, signal).await;
    if let Err(e) = result {
        crate::http::count_timeout(&metrics, &e);
        tracing::debug!(error = %e, "forward-proxy connection ended with an error");
    }
}

/// One forward-proxy request. An async block rather than an `async fn`: an `async fn` keeps
/// its arguments in its future besides the locals they are moved into, which would hold the
/// request (264 bytes) twice in a future hyper moves by value.
#[allow(clippy::manual_async_fn)]
fn handle(
    ctx: Arc<Ctx>,
    mut req: Request<Incoming>,
) -> impl Future<Output = Response<ResponseBodyOrError>> + Send {
    async move {
        let target = match parse(&req) {
            Ok(t) => t,
            Err(e) => return error_response(StatusCode::BAD_REQUEST, e.message()),
        };
        let (ProxyRequest::Connect { host, port } | ProxyRequest::Absolute { host, port }) =
            &target;
        let dst = match crate::connect::resolve(host, *port).await {
            Ok(dst) => dst,
            Err(_) => {
                return error_response(StatusCode::BAD_GATEWAY, "cannot resolve the target host\n")
            }
        };
        if ctx.shared.self_addrs.contains(dst) {
            return error_response(StatusCode::BAD_GATEWAY, "destination is the proxy itself\n");
        }
        match target {
            // Once per tunnel rather than per request, and its dial is a large future: boxed, so
            // it does not set the size of every forwarded request's future.
            ProxyRequest::Connect { .. } => Box::pin(open_tunnel(&ctx, dst, req)).await,
            ProxyRequest::Absolute { .. } => match Authority::try_from(dst.to_string()) {
                Ok(authority) => {
                    // This proxy is the one addressed: from here the request goes to its origin,
                    // in origin form (an absolute target would be relayed as one for a proxy).
                    to_origin_form(&mut req);
                    crate::http::forward(&ctx, dst, &authority, req).await
                }
                Err(_) => error_response(StatusCode::BAD_REQUEST, "invalid target\n"),
            },
        }
    }
}

/// Answers a CONNECT once its target `dst` is connected, then serves the tunnel.
async fn open_tunnel(
    ctx: &Ctx,
    dst: SocketAddr,
    mut req: Request<Incoming>,
) -> Response<ResponseBodyOrError> {
    // Answered only once the target is connected: a refused or silent target must not look
    // like a successful tunnel that then ends.
    let shared = &ctx.shared;
    let upstream = match shared.upstream.connector().dial(dst).await {
        Ok(s) => s.into_inner(),
        Err(e) => {
            shared.metrics.connect_errors.inc();
            tracing::debug!(%dst, error = %e, "CONNECT target failed");
            return error_response(e.status(), crate::http::connect_failure(&e).message);
        }
    };
    let upgrade = hyper::upgrade::on(&mut req);
    let shared = ctx.shared.clone();
    let (peer, watch) = (ctx.peer, ctx.watch.clone());
    tokio::spawn(async move {
        if let Ok(upgraded) = upgrade.await {
            crate::tunnel::serve_dialed(shared, upgraded, peer, dst, upstream, watch).await;
        }
    });
    Response::new(Either::Right(Full::new(Bytes::new())))
}

/// `GET http://host/path` → `GET /path` with `Host: host` (kept when the client sent one).
fn to_origin_form<B>(req: &mut Request<B>) {
    if !req.headers().contains_key(http::header::HOST) {
        if let Some(a) = req.uri().authority() {
            if let Ok(v) = http::HeaderValue::from_str(a.as_str()) {
                req.headers_mut().insert(http::header::HOST, v);
            }
        }
    }
    let pq = req
        .uri()
        .path_and_query()
        .cloned()
        .unwrap_or_else(|| http::uri::PathAndQuery::from_static("/"));
    *req.uri_mut() = http::Uri::from(pq);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(method: &str, uri: &str) -> Request<()> {
        Request::builder().method(method).uri(uri).body(()).unwrap()
    }

    #[test]
    fn absolute_form() {
        assert_eq!(
            parse(&req("GET", "http://example.test/a?b")),
            Ok(ProxyRequest::Absolute {
                host: "example.test".into(),
                port: 80
            })
        );
        assert_eq!(
            parse(&req("POST", "http://10.0.0.1:8080/")),
            Ok(ProxyRequest::Absolute {
                host: "10.0.0.1".into(),
                port: 8080
            })
        );
    }

    #[test]
    fn connect_form() {
        assert_eq!(
            parse(&req("CONNECT", "db.local:5432")),
            Ok(ProxyRequest::Connect {
                host: "db.local".into(),
                port: 5432
            })
        );
    }

    #[test]
    fn origin_form_keeps_path_query_and_host() {
        let mut r = req("GET", "http://example.test:8080/a?b=1");
        to_origin_form(&mut r);
        assert_eq!(r.uri(), "/a?b=1");
        assert_eq!(r.headers()["host"], "example.test:8080");
        let mut r = Request::get("http://x.test")
            .header("host", "y.test")
            .body(())
            .unwrap();
        to_origin_form(&mut r);
        assert_eq!(r.uri(), "/");
        assert_eq!(r.headers()["host"], "y.test");
    }

    #[test]
    fn rejected_forms() {
        assert_eq!(parse(&req("GET", "/path")), Err(ForwardError::NotAbsolute));
        assert_eq!(parse(&req("GET", "https://x/")), Err(ForwardError::Scheme));
        assert_eq!(
            parse(&req("CONNECT", "db.local")),
            Err(ForwardError::ConnectTarget)
        );
    }

    #[test]
    fn the_request_future_stays_small() {
        // See `http::tests::the_request_futures_stay_small`.
        let size = crate::http::tests::future_size(handle);
        assert!(
            size <= 768,
            "a forward-proxy request's future takes {size} bytes"
        );
    }
}
