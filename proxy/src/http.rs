//! HTTP/1.1 and HTTP/2 proxying: a hyper server on the downstream connection, the pooled hyper
//! client towards the upstream, the trace hook in between.
//!
//! Per request: strip hop-by-hop headers → start the span (it rewrites trace headers) → point the
//! URI at the destination → send → strip the response → stream the body back, ending the span
//! when it completes. HTTP/2 downstream goes to HTTP/2 upstream (h2c prior knowledge) over
//! [`H2Pool`], keyed by the destination address so the client's `:authority` is kept; HTTP/1
//! goes to HTTP/1 over hyper-util's pool, keyed by the URI (the destination; Host is kept).

use std::net::SocketAddr;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::uri::{Authority, PathAndQuery, Scheme};
use http::{Request, Response, StatusCode, Uri, Version};
use http_body_util::{Either, Full};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};

use crate::body::{Finish, RequestBody, ResponseBody};
use crate::connect::Connector;
use crate::context::Shared;
use crate::detect::Protocol;
use crate::error::ConnectError;
use crate::h2_pool::{H2Error, H2Pool};
use crate::headers;
use crate::shutdown::Watch;
use crate::tcp::Downstream;
use crate::trace::{Direction, Outcome};

pub use crate::server::MAX_HEADER_BYTES;

/// Idle pooled upstream connections are closed after this; below typical server keep-alive
/// timeouts' upper range, so the proxy seldom reuses a connection the server is closing.
const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(30);

pub type ResponseBodyOrError = Either<ResponseBody, Full<Bytes>>;

/// Pooled keep-alive upstream connections, keyed by destination address.
#[derive(Clone, Debug)]
pub struct Upstream {
    h1: Client<Connector, RequestBody>,
    h2: H2Pool<RequestBody>,
    connector: Connector,
}

impl Upstream {
    pub fn new(connector: Connector) -> Self {
        let mut builder = Client::builder(TokioExecutor::new());
        builder
            .pool_timer(TokioTimer::new())
            .timer(TokioTimer::new())
            .pool_idle_timeout(POOL_IDLE_TIMEOUT)
            // The client's Host header is kept as is; only a request without one gets the
            // destination's.
            .set_host(true);
        let h1 = builder.build(connector.clone());
        let h2 = H2Pool::new(connector.clone(), POOL_IDLE_TIMEOUT);
        Self { h1, h2, connector }
    }

    /// The connector every upstream connection goes through (pools and opaque TCP alike), so
    /// the per-destination cap counts them all.
    pub fn connector(&self) -> &Connector {
        &self.connector
    }
}

/// One downstream connection's facts, shared by its requests.
#[derive(Debug)]
pub struct Ctx {
    pub shared: Arc<Shared>,
    pub direction: Direction,
    pub protocol: Protocol,
    pub peer: SocketAddr,
    pub watch: Watch,
}

/// Serves HTTP on a detected connection; every request goes to `dst`.
pub async fn serve<I: Downstream>(ctx: Ctx, io: I, dst: SocketAddr) {
    let authority = match Authority::try_from(dst.to_string()) {
        Ok(a) => a,
        Err(_) => return,
    };
    let watch = ctx.watch.clone();
    let protocol = ctx.protocol;
    let limits = crate::config::sidecar(&ctx.shared.config);
    let shared = ctx.shared.clone();
    let conn = Arc::new((ctx, authority));
    let handler = move |req| {
        let conn = conn.clone();
        async move { forward(&conn.0, dst, &conn.1, req).await }
    };
    let result = match protocol {
        Protocol::Http2 => crate::server::serve_http2(io, handler, &limits, watch).await,
        _ => crate::server::serve_http1(io, handler, &limits, watch).await,
    };
    if let Err(e) = result {
        count_timeout(&shared.metrics, &e);
        tracing::debug!(error = %e, "downstream HTTP connection ended with an error");
    }
}

/// Counts a connection the proxy closed for a timeout.
pub fn count_timeout(metrics: &crate::metrics::Metrics, e: &crate::server::ServeError) {
    match e {
        crate::server::ServeError::Idle => {
            metrics.idle_timeouts.inc();
        }
        crate::server::ServeError::HeaderTimeout => {
            metrics.header_timeouts.inc();
        }
        crate::server::ServeError::Http(_) => {}
    }
}

/// Proxies one request to `dst` (whose `host:port` form is `authority`).
pub async fn forward(
    ctx: &Ctx,
    dst: SocketAddr,
    authority: &Authority,
    mut req: Request<Incoming>,
) -> Response<ResponseBodyOrError> {
    if crate::tunnel::is_for_a_proxy(&req) {
        return crate::tunnel::relay(ctx, dst, req).await;
    }
    let start = Instant::now();
    let shared = &*ctx.shared;
    let path = shared.metrics.path(ctx.direction, ctx.protocol);
    path.requests.inc();

    let upgrading = req.version() != Version::HTTP_2 && headers::is_upgrade(req.headers());
    let client_upgrade = upgrading.then(|| hyper::upgrade::on(&mut req));
    let (mut parts, body) = req.into_parts();
    headers::strip_hop_by_hop(&mut parts.headers, upgrading);
    // HTTP/2 carries the host in :authority; the upstream still gets it, as Host.
    if !parts.headers.contains_key(header::HOST) {
        if let Some(a) = parts.uri.authority() {
            if let Ok(v) = HeaderValue::from_str(a.as_str()) {
                parts.headers.insert(header::HOST, v);
            }
        }
    }

    let span = shared
        .tracer
        .start(ctx.direction, &mut parts, ctx.peer, dst);

    let uri = match ctx.protocol {
        Protocol::Http2 => {
            // HTTP/2 names the host in `:authority` alone: a `host` header beside it is a
            // duplicate that servers such as nginx answer with 400.
            let host = parts.headers.remove(header::HOST);
            upstream_h2_uri(&parts.uri, host.as_ref(), authority)
        }
        _ => destination_uri(authority, parts.uri.path_and_query()),
    };
    parts.uri = match uri {
        Some(uri) => uri,
        None => {
            return fail(ctx, span, StatusCode::BAD_REQUEST, "invalid request target");
        }
    };
    if ctx.protocol == Protocol::Http2 {
        parts.version = Version::HTTP_2;
    }
    let request_size = span.is_recording().then(|| Arc::new(AtomicU64::new(0)));
    let received = shared.metrics.bytes(ctx.direction).received.clone();
    let body = RequestBody::new(body, received, request_size.clone());
    let req = Request::from_parts(parts, body);
    let send = async {
        match ctx.protocol {
            Protocol::Http2 => shared.upstream.h2.send(dst, req).await.map_err(|e| {
                let (status, message, connect) = h2_error(&e);
                (status, message, connect, e.to_string())
            }),
            _ => shared.upstream.h1.request(req).await.map_err(|e| {
                let (status, message) = client_error(&e);
                (status, message, e.is_connect(), e.to_string())
            }),
        }
    };
    let response_timeout = shared
        .config
        .borrow()
        .config
        .spec
        .sidecar
        .response_timeout
        .non_zero();
    let sent = match response_timeout {
        // Dropping the send resets the upstream stream (HTTP/2) or closes its connection
        // (HTTP/1), so the upstream learns the answer is no longer wanted.
        Some(limit) => match tokio::time::timeout(limit, send).await {
            Ok(sent) => sent,
            Err(_) => Err((
                StatusCode::GATEWAY_TIMEOUT,
                "upstream response timeout\n",
                false,
                format!("no response headers within {limit:?}"),
            )),
        },
        None => send.await,
    };
    let mut resp = match sent {
        Ok(resp) => resp,
        Err((status, message, connect, error)) => {
            if connect {
                shared.metrics.connect_errors.inc();
            }
            tracing::debug!(%dst, %error, "upstream request failed");
            return fail(ctx, span, status, message);
        }
    };
    let status = resp.status();
    path.response(status.as_u16());
    path.latency.observe(start.elapsed().as_secs_f64());

    let switching = status == StatusCode::SWITCHING_PROTOCOLS;
    if let (true, Some(client_upgrade)) = (switching, client_upgrade) {
        let upstream_upgrade = hyper::upgrade::on(&mut resp);
        tokio::spawn(tunnel(
            client_upgrade,
            upstream_upgrade,
            ctx.shared.clone(),
            ctx.direction,
            ctx.watch.clone(),
        ));
    }
    let (mut parts, body) = resp.into_parts();
    headers::strip_hop_by_hop(&mut parts.headers, switching && upgrading);
    let sent = shared.metrics.bytes(ctx.direction).sent.clone();
    let body = ResponseBody::new(body, sent, Finish::new(span, status, request_size));
    Response::from_parts(parts, Either::Left(body))
}

/// `http://<dst>/<path>`: the authority is what the connector dials and the pool is keyed by.
fn destination_uri(authority: &Authority, pq: Option<&PathAndQuery>) -> Option<Uri> {
    let mut parts = http::uri::Parts::default();
    parts.scheme = Some(Scheme::HTTP);
    parts.authority = Some(authority.clone());
    parts.path_and_query = Some(
        pq.cloned()
            .unwrap_or_else(|| PathAndQuery::from_static("/")),
    );
    Uri::from_parts(parts).ok()
}

/// The client's own URI for an HTTP/2 upstream, so the server sees the client's `:authority`;
/// the `host` header, then the destination, stand in for a missing authority, `http` for a
/// missing scheme.
fn upstream_h2_uri(uri: &Uri, host: Option<&HeaderValue>, dst: &Authority) -> Option<Uri> {
    let from_host = host.and_then(|h| Authority::try_from(h.as_bytes()).ok());
    let mut parts = http::uri::Parts::default();
    parts.scheme = Some(uri.scheme().cloned().unwrap_or(Scheme::HTTP));
    parts.authority = Some(
        uri.authority()
            .cloned()
            .or(from_host)
            .unwrap_or_else(|| dst.clone()),
    );
    parts.path_and_query = Some(
        uri.path_and_query()
            .cloned()
            .unwrap_or_else(|| PathAndQuery::from_static("/")),
    );
    Uri::from_parts(parts).ok()
}

/// Answers the client itself and ends the span with the reason.
pub(crate) fn fail(
    ctx: &Ctx,
    span: crate::trace::ActiveSpan,
    status: StatusCode,
    message: &'static str,
) -> Response<ResponseBodyOrError> {
    ctx.shared
        .metrics
        .path(ctx.direction, ctx.protocol)
        .response(status.as_u16());
    span.finish(Outcome {
        status: Some(status),
        error: Some(message.to_owned()),
        request_size: 0,
        response_size: 0,
    });
    error_response(status, message)
}

/// A short plain-text answer generated by the proxy.
pub fn error_response(status: StatusCode, message: &'static str) -> Response<ResponseBodyOrError> {
    let mut resp = Response::new(Either::Right(Full::new(Bytes::from_static(
        message.as_bytes(),
    ))));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp
}

/// Maps a client failure to what the downstream client should see.
fn client_error(e: &hyper_util::client::legacy::Error) -> (StatusCode, &'static str) {
    let mut source: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(e);
    while let Some(err) = source {
        if let Some(ce) = err.downcast_ref::<ConnectError>() {
            return (ce.status(), connect_message(ce));
        }
        source = err.source();
    }
    if e.is_connect() {
        (StatusCode::BAD_GATEWAY, "upstream connect error\n")
    } else if request_body_failed(e) {
        (StatusCode::BAD_REQUEST, BAD_REQUEST_BODY)
    } else {
        (StatusCode::BAD_GATEWAY, "upstream connection closed\n")
    }
}

const BAD_REQUEST_BODY: &str = "malformed or incomplete request body\n";

/// Whether the upstream request failed on the client's body (chunking hyper refused, a client
/// gone mid-body) rather than on the upstream: hyper reports the body it was given failing as
/// a user error. The client is answered 400, as Envoy does, not a 502 that blames the upstream.
fn request_body_failed(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut source = Some(e);
    while let Some(err) = source {
        if err
            .downcast_ref::<hyper::Error>()
            .is_some_and(|h| h.is_user())
        {
            return true;
        }
        source = err.source();
    }
    false
}

/// Maps an HTTP/2 upstream failure like [`client_error`] does; the flag says whether the
/// connection could not be opened (counted as a connect error).
fn h2_error(e: &H2Error) -> (StatusCode, &'static str, bool) {
    match e {
        H2Error::Connect(ce) => (ce.status(), connect_message(ce), true),
        H2Error::Handshake(_) => (StatusCode::BAD_GATEWAY, "upstream connect error\n", true),
        H2Error::Request(e) if request_body_failed(&**e) => {
            (StatusCode::BAD_REQUEST, BAD_REQUEST_BODY, false)
        }
        H2Error::Request(_) => (
            StatusCode::BAD_GATEWAY,
            "upstream connection closed\n",
            false,
        ),
    }
}

pub(crate) fn connect_message(ce: &ConnectError) -> &'static str {
    match ce {
        ConnectError::Timeout(_) => "upstream connect timeout\n",
        ConnectError::Loop(_) => "destination is the proxy itself\n",
        ConnectError::Limit(_) => "upstream connection limit reached\n",
        _ => "upstream connect error\n",
    }
}

/// Joins the two halves of an upgraded connection (WebSocket...) and copies until both close.
pub(crate) async fn tunnel(
    client: hyper::upgrade::OnUpgrade,
    upstream: hyper::upgrade::OnUpgrade,
    shared: Arc<Shared>,
    direction: Direction,
    _watch: Watch,
) {
    let (client, upstream) = tokio::join!(client, upstream);
    let (Ok(client), Ok(upstream)) = (client, upstream) else {
        return;
    };
    let idle = crate::config::sidecar(&shared.config)
        .tcp_idle_timeout
        .get();
    let (client, upstream) = (TokioIo::new(client), TokioIo::new(upstream));
    if let Err(e) = crate::tcp::copy(&shared, direction, client, upstream, idle).await {
        tracing::debug!(error = %e, "upgraded connection ended with an error");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn destination_uri_targets_the_socket_address() {
        let authority = Authority::from_static("10.0.0.7:8080");
        let pq = PathAndQuery::from_static("/api/v1?x=1");
        let uri = destination_uri(&authority, Some(&pq)).unwrap();
        assert_eq!(uri.to_string(), "http://10.0.0.7:8080/api/v1?x=1");
        let uri = destination_uri(&authority, None).unwrap();
        assert_eq!(uri.to_string(), "http://10.0.0.7:8080/");
    }

    #[test]
    fn h2_uri_keeps_the_client_authority() {
        let dst = Authority::from_static("10.0.0.7:8080");
        let uri = Uri::from_static("http://svc-b.ns:8080/pkg.Svc/Call?x=1");
        let out = upstream_h2_uri(&uri, None, &dst).unwrap();
        assert_eq!(out.to_string(), "http://svc-b.ns:8080/pkg.Svc/Call?x=1");
        let out = upstream_h2_uri(&Uri::from_static("/only/path"), None, &dst).unwrap();
        assert_eq!(out.to_string(), "http://10.0.0.7:8080/only/path");
        let host = HeaderValue::from_static("web.shop:8080");
        let out = upstream_h2_uri(&Uri::from_static("/p"), Some(&host), &dst).unwrap();
        assert_eq!(out.to_string(), "http://web.shop:8080/p");
    }

    #[test]
    fn h2_errors_map_like_the_http1_client() {
        let addr: SocketAddr = "10.0.0.7:8080".parse().unwrap();
        let timeout = H2Error::Connect(Arc::new(ConnectError::Timeout(addr)));
        assert_eq!(
            h2_error(&timeout),
            (
                StatusCode::GATEWAY_TIMEOUT,
                "upstream connect timeout\n",
                true
            )
        );
        let looped = H2Error::Connect(Arc::new(ConnectError::Loop(addr)));
        assert_eq!(h2_error(&looped).0, StatusCode::BAD_GATEWAY);
    }

    #[test]
    fn error_responses_are_plain_text() {
        let resp = error_response(StatusCode::BAD_GATEWAY, "upstream connect error\n");
        assert_eq!(resp.status(), StatusCode::BAD_GATEWAY);
        assert_eq!(
            resp.headers()[header::CONTENT_TYPE],
            "text/plain; charset=utf-8"
        );
    }
}
