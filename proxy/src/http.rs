//! HTTP/1.1 and HTTP/2 proxying: a hyper server on the downstream connection, the pooled hyper
//! client towards the upstream, the trace hook in between.
//!
//! Per request ([`forward`]): strip hop-by-hop headers → span ([`TraceLayer`]: it starts the
//! span, which rewrites the trace headers, and finishes it however the request ends) → send
//! (point the URI at the destination, under the response timeout) → respond (strip the
//! response, stream the body back). HTTP/2 downstream goes to HTTP/2 upstream (h2c prior knowledge) over
//! [`H2Pool`], keyed by the destination address so the client's `:authority` is kept; HTTP/1
//! goes to HTTP/1 over hyper-util's pool, keyed by the URI (the destination; Host is kept).

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::future::{self, FutureExt};
use http::header::{self, HeaderValue};
use http::uri::{Authority, PathAndQuery, Scheme};
use http::{Request, Response, StatusCode, Uri, Version};
use http_body_util::{Either, Full};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tower::{Layer, Service};

use crate::body::{RequestBody, ResponseBody};
use crate::connect::Connector;
use crate::context::Shared;
use crate::detect::Protocol;
use crate::error::ConnectError;
use crate::h2_pool::{H2Error, H2Pool, InFlight};
use crate::half_close::BodyOpen;
use crate::headers;
use crate::shutdown::Watch;
use crate::tcp::Downstream;
use crate::trace::layer::{Failure, SpanBody};
use crate::trace::{Direction, ErrorReason, Outcome, TraceLayer};

pub use crate::server::MAX_HEADER_BYTES;

/// Idle pooled upstream connections are closed after this; below typical server keep-alive
/// timeouts' upper range, so the proxy seldom reuses a connection the server is closing.
const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(30);

pub type ResponseBodyOrError = Either<SpanBody<ResponseBody>, Full<Bytes>>;

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
        _ => crate::server::serve_http1_proxied(io, handler, &limits, watch).await,
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

/// Proxies one request to `dst` (whose `host:port` form is `authority`): strip → span → send
/// → respond. The span's start and finish are [`TraceLayer`]'s, around [`send`].
///
/// Everything up to the upstream exchange is done here, before the future is returned, and
/// the response is handled in a combinator: the future then holds only the exchange and what
/// the answer needs, not the request besides (an `async fn` keeps its arguments, the request
/// among them, in its future for its whole life). hyper moves this future by value into its
/// slot, so its size is copied on every request.
pub fn forward<'a>(
    ctx: &'a Ctx,
    dst: SocketAddr,
    authority: &'a Authority,
    mut req: Request<Incoming>,
) -> impl Future<Output = Response<ResponseBodyOrError>> + Send + 'a {
    if crate::tunnel::is_for_a_proxy(&req) {
        // Rare (an app that talks to a proxy of its own), and its future is larger than the
        // rest of this one: boxed, so it does not set the size of every request's future.
        return future::Either::Left(Box::pin(crate::tunnel::relay(ctx, dst, req)));
    }
    let start = Instant::now();
    let shared = &*ctx.shared;
    let path = shared.metrics.path(ctx.direction, ctx.protocol);
    path.requests.inc();

    // Strip.
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
    let received = shared.metrics.bytes(ctx.direction).received.clone();
    let open = parts.extensions.remove::<BodyOpen>();
    let req = Request::from_parts(parts, RequestBody::new(body, received).holding(open));

    // Span → send. `service_fn` is always ready and the trace layer adds no readiness of
    // its own, so the service is called at once, without awaiting `poll_ready`.
    let mut traced = TraceLayer::new(shared.tracer.clone(), ctx.direction, ctx.peer, dst)
        .layer(tower::service_fn(move |req| send(ctx, dst, authority, req)));
    let called = traced.call(req);

    // Respond.
    future::Either::Right(called.map(move |answer| {
        let mut resp = match answer {
            Ok(resp) => resp,
            Err(failure) => {
                path.response(failure.status.as_u16());
                return error_response(failure.status, failure.message);
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
        Response::from_parts(parts, Either::Left(body))
    }))
}

/// Sends one request (its span already started) to `dst`, under the response timeout. Like
/// [`forward`], it prepares the request before returning the future, which holds only the
/// exchange, its deadline and what the answer needs.
fn send<'a>(
    ctx: &'a Ctx,
    dst: SocketAddr,
    authority: &Authority,
    req: Request<RequestBody>,
) -> impl Future<Output = Result<Response<ResponseBody>, Failure>> + Send + 'a {
    let shared = &*ctx.shared;
    let (mut parts, body) = req.into_parts();
    let uri = match ctx.protocol {
        Protocol::Http2 => {
            // HTTP/2 names the host in `:authority` alone: a `host` header beside it is a
            // duplicate that servers such as nginx answer with 400.
            let host = parts.headers.remove(header::HOST);
            upstream_h2_uri(&parts.uri, host.as_ref(), authority)
        }
        _ => destination_uri(authority, parts.uri.path_and_query()),
    };
    let Some(uri) = uri else {
        return future::Either::Left(future::ready(Err(Failure {
            status: StatusCode::BAD_REQUEST,
            message: "invalid request target\n",
            reason: ErrorReason::InvalidRequest,
        })));
    };
    parts.uri = uri;
    if ctx.protocol == Protocol::Http2 {
        parts.version = Version::HTTP_2;
    }
    let req = Request::from_parts(parts, body);
    let response_timeout = shared
        .config
        .borrow()
        .config
        .spec
        .sidecar
        .response_timeout
        .non_zero();
    let sending = Sending::start(shared, ctx.protocol, dst, req);
    let sent = match response_timeout {
        // Dropping the send resets the upstream stream (HTTP/2) or closes its connection
        // (HTTP/1), so the upstream learns the answer is no longer wanted.
        Some(limit) => {
            future::Either::Left(tokio::time::timeout(limit, sending).map(move |sent| {
                sent.unwrap_or_else(|_| {
                    Err((
                        Failure {
                            status: StatusCode::GATEWAY_TIMEOUT,
                            message: "upstream response timeout\n",
                            reason: ErrorReason::Timeout,
                        },
                        format!("no response headers within {limit:?}"),
                    ))
                })
            }))
        }
        None => future::Either::Right(sending),
    };
    future::Either::Right(sent.map(move |sent| match sent {
        Ok((resp, stream)) => {
            let counter = shared.metrics.bytes(ctx.direction).sent.clone();
            Ok(resp.map(|body| ResponseBody::new(body, counter).holding(stream)))
        }
        Err((failure, error)) => {
            if matches!(
                failure.reason,
                ErrorReason::ConnectFailed | ErrorReason::ConnectionLimit
            ) {
                shared.metrics.connect_errors.inc();
            }
            tracing::debug!(%dst, %error, "upstream request failed");
            Err(failure)
        }
    }))
}

/// What [`Sending`] yields: the response and, for HTTP/2, the stream's place in the pool.
type Sent = Result<(Response<Incoming>, Option<InFlight>), (Failure, String)>;

/// HTTP/2's send future, boxed.
type H2Send<'a> =
    Pin<Box<dyn Future<Output = Result<(Response<Incoming>, InFlight), H2Error>> + Send + 'a>>;

/// One request's exchange with the upstream, kept to a few words because every future around
/// it (the response timeout, the trace layer's, the request's, hyper's slot for it) is moved
/// whole, by value, as the request is dispatched: HTTP/1's client future is already a
/// pointer; HTTP/2's (about 1 KiB) is boxed, which costs its requests one small allocation
/// and spares HTTP/1's requests copying that kilobyte several times each.
enum Sending<'a> {
    H1(hyper_util::client::legacy::ResponseFuture),
    H2(H2Send<'a>),
}

impl<'a> Sending<'a> {
    fn start(
        shared: &'a Shared,
        protocol: Protocol,
        dst: SocketAddr,
        req: Request<RequestBody>,
    ) -> Self {
        match protocol {
            Protocol::Http2 => Sending::H2(Box::pin(shared.upstream.h2.send(dst, req))),
            _ => Sending::H1(shared.upstream.h1.request(req)),
        }
    }
}

impl Future for Sending<'_> {
    type Output = Sent;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Sent> {
        match self.get_mut() {
            Sending::H1(f) => Pin::new(f)
                .poll(cx)
                .map_ok(|resp| (resp, None))
                .map_err(|e| (client_error(&e), e.to_string())),
            Sending::H2(f) => f
                .as_mut()
                .poll(cx)
                .map_ok(|(resp, stream)| (resp, Some(stream)))
                .map_err(|e| (h2_error(&e), e.to_string())),
        }
    }
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

/// Answers the client itself and ends the span with the failure's reason.
pub(crate) fn fail(
    ctx: &Ctx,
    span: crate::trace::ActiveSpan,
    failure: Failure,
) -> Response<ResponseBodyOrError> {
    ctx.shared
        .metrics
        .path(ctx.direction, ctx.protocol)
        .response(failure.status.as_u16());
    span.finish(Outcome {
        status: Some(failure.status),
        error: Some(failure.reason),
        ..Outcome::default()
    });
    error_response(failure.status, failure.message)
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

/// Maps a client failure to what the downstream client should see and the span's reason.
fn client_error(e: &hyper_util::client::legacy::Error) -> Failure {
    let mut source: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(e);
    while let Some(err) = source {
        if let Some(ce) = err.downcast_ref::<ConnectError>() {
            return connect_failure(ce);
        }
        source = err.source();
    }
    if e.is_connect() {
        Failure {
            status: StatusCode::BAD_GATEWAY,
            message: "upstream connect error\n",
            reason: ErrorReason::ConnectFailed,
        }
    } else if request_body_failed(e) {
        bad_request_body()
    } else {
        upstream_closed()
    }
}

/// The request failed on the client's own body (chunking hyper refused, a client gone
/// mid-body), not on the upstream: 400, as Envoy answers, rather than a 502 that blames the
/// upstream. The span's reason is the tracing layer's (`downstream_cancelled` when it saw the
/// body fail).
fn bad_request_body() -> Failure {
    Failure {
        status: StatusCode::BAD_REQUEST,
        message: "malformed or incomplete request body\n",
        reason: ErrorReason::InvalidRequest,
    }
}

/// Whether an upstream request failed because its body, the client's, failed: hyper reports
/// the body it was given failing as a user error.
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

/// The upstream closed or reset the connection (or stream) before a response head.
pub(crate) fn upstream_closed() -> Failure {
    Failure {
        status: StatusCode::BAD_GATEWAY,
        message: "upstream connection closed\n",
        reason: ErrorReason::UpstreamClosed,
    }
}

/// Maps an HTTP/2 upstream failure like [`client_error`] does.
fn h2_error(e: &H2Error) -> Failure {
    match e {
        H2Error::Connect(ce) => connect_failure(ce),
        H2Error::Handshake(_) => Failure {
            status: StatusCode::BAD_GATEWAY,
            message: "upstream connect error\n",
            reason: ErrorReason::ConnectFailed,
        },
        H2Error::Request(e) if request_body_failed(&**e) => bad_request_body(),
        H2Error::Request(_) => upstream_closed(),
    }
}

/// What a client is told when no connection to the upstream could be opened.
pub(crate) fn connect_failure(ce: &ConnectError) -> Failure {
    let (message, reason) = match ce {
        ConnectError::Timeout(_) => ("upstream connect timeout\n", ErrorReason::ConnectFailed),
        ConnectError::Loop(_) => (
            "destination is the proxy itself\n",
            ErrorReason::ConnectFailed,
        ),
        ConnectError::Limit(_) => (
            "upstream connection limit reached\n",
            ErrorReason::ConnectionLimit,
        ),
        _ => ("upstream connect error\n", ErrorReason::ConnectFailed),
    };
    Failure {
        status: ce.status(),
        message,
        reason,
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
pub(crate) mod tests {
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
            Failure {
                status: StatusCode::GATEWAY_TIMEOUT,
                message: "upstream connect timeout\n",
                reason: ErrorReason::ConnectFailed,
            }
        );
        let looped = H2Error::Connect(Arc::new(ConnectError::Loop(addr)));
        assert_eq!(h2_error(&looped).status, StatusCode::BAD_GATEWAY);
        let limit = H2Error::Connect(Arc::new(ConnectError::Limit(addr)));
        assert_eq!(h2_error(&limit).reason, ErrorReason::ConnectionLimit);
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

    /// The size of `F`, the future `f` returns, without calling `f`.
    pub(crate) fn future_size<A, B, F: Future>(_f: impl FnOnce(A, B) -> F) -> usize {
        std::mem::size_of::<F>()
    }

    /// hyper moves each request's future by value (into its slot for the request in flight,
    /// through the wrappers around the handler), so its size is copied on every request. It
    /// was 3 KiB while the request path held the request in an `async fn`'s arguments and
    /// locals both, HTTP/2's send future inline and tower's `Oneshot` state.
    #[test]
    fn the_request_futures_stay_small() {
        let dst: SocketAddr = "10.0.0.7:8080".parse().unwrap();
        let forward = future_size(
            |ctx: &'static Ctx, (authority, req): (&'static Authority, Request<Incoming>)| {
                forward(ctx, dst, authority, req)
            },
        );
        let send = future_size(
            |ctx: &'static Ctx, (authority, req): (&'static Authority, Request<RequestBody>)| {
                send(ctx, dst, authority, req)
            },
        );
        assert!(forward <= 512, "forward's future takes {forward} bytes");
        assert!(send <= 320, "send's future takes {send} bytes");
    }
}
