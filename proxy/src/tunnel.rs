//! Requests an app addresses to a proxy of its own, and CONNECT through the sidecar on both
//! paths, answered only once the far side is there.
//!
//! - Transparent: an app whose `HTTPS_PROXY` names a corporate proxy sends it `CONNECT
//!   host:443`; the sidecar relays the CONNECT to that proxy (the original destination) and,
//!   on its 2xx, joins the two upgraded connections. Anything else the proxy answers (407,
//!   403...) goes back to the app as is. An absolute-form request (`HTTP_PROXY`, plain http) is
//!   relayed with its request target untouched, as the proxy needs it. `Proxy-Authorization`
//!   is the addressed proxy's, so it is passed on, not stripped as for an ordinary hop. These
//!   go over a connection of their own, not the pool: the pooled client would rewrite the
//!   target to origin form.
//! - Explicit (the sidecar's own forward proxy): the target is dialled before the answer, so a
//!   refused or silent target is a 502 or 504, never a 200 followed by EOF. The tunnel's content
//!   still goes through detection: HTTP inside it is proxied and traced like any other, an
//!   opaque stream (TLS, mostly) is copied over the connection already dialled.

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use http::header::{self, HeaderValue};
use http::{Request, Response};
use http_body_util::{Either, Full};
use hyper::body::Incoming;
use hyper::upgrade::Upgraded;
use hyper_util::rt::TokioIo;

use crate::body::RequestBody;
use crate::context::Shared;
use crate::detect::{self, Protocol};
use crate::http::{Ctx, ResponseBodyOrError};
use crate::prefixed::Prefixed;
use crate::shutdown::Watch;
use crate::trace::layer::{Failure, SpanBody};
use crate::trace::{Direction, ErrorReason, Outcome};

/// Whether an HTTP/1 request is addressed to a proxy (CONNECT, or an absolute-form target)
/// and must reach `dst` as it is, over [`relay`].
pub fn is_for_a_proxy<B>(req: &Request<B>) -> bool {
    req.version() != http::Version::HTTP_2
        && (req.method() == http::Method::CONNECT || req.uri().scheme().is_some())
}

/// Relays a request the app addressed to `dst`, a proxy of its own (see [`is_for_a_proxy`]).
pub async fn relay(
    ctx: &Ctx,
    dst: SocketAddr,
    mut req: Request<Incoming>,
) -> Response<ResponseBodyOrError> {
    let shared = &*ctx.shared;
    let path = shared.metrics.path(ctx.direction, ctx.protocol);
    path.requests.inc();
    let connect = req.method() == http::Method::CONNECT;
    let client_upgrade = connect.then(|| hyper::upgrade::on(&mut req));
    let (mut parts, body) = req.into_parts();
    let proxy_auth: Vec<HeaderValue> = parts
        .headers
        .get_all(header::PROXY_AUTHORIZATION)
        .iter()
        .cloned()
        .collect();
    crate::headers::strip_hop_by_hop(&mut parts.headers, false);
    for v in proxy_auth {
        parts.headers.append(header::PROXY_AUTHORIZATION, v);
    }
    let span = shared
        .tracer
        .start(ctx.direction, &mut parts, ctx.peer, dst);
    let stream = match shared.upstream.connector().dial(dst).await {
        Ok(s) => s,
        Err(e) => {
            shared.metrics.connect_errors.inc();
            tracing::debug!(%dst, error = %e, "CONNECT upstream failed");
            return crate::http::fail(ctx, span, crate::http::connect_failure(&e));
        }
    };
    let handshake = hyper::client::conn::http1::Builder::new()
        .handshake::<_, RequestBody>(stream)
        .await;
    let (mut sender, conn) = match handshake {
        Ok(pair) => pair,
        Err(_) => {
            let failure = Failure {
                status: http::StatusCode::BAD_GATEWAY,
                message: "upstream connect error\n",
                reason: ErrorReason::ConnectFailed,
            };
            return crate::http::fail(ctx, span, failure);
        }
    };
    tokio::spawn(async move {
        if let Err(e) = conn.with_upgrades().await {
            tracing::debug!(error = %e, "CONNECT upstream connection ended with an error");
        }
    });
    let received = shared.metrics.bytes(ctx.direction).received.clone();
    let body = RequestBody::new(body, received);
    let mut resp = match sender.send_request(Request::from_parts(parts, body)).await {
        Ok(resp) => resp,
        Err(_) => return crate::http::fail(ctx, span, crate::http::upstream_closed()),
    };
    let status = resp.status();
    path.response(status.as_u16());
    if let (true, Some(client_upgrade)) = (status.is_success(), client_upgrade) {
        let upstream_upgrade = hyper::upgrade::on(&mut resp);
        tokio::spawn(crate::http::tunnel(
            client_upgrade,
            upstream_upgrade,
            ctx.shared.clone(),
            ctx.direction,
            ctx.watch.clone(),
        ));
        span.finish(Outcome {
            status: Some(status),
            ..Outcome::default()
        });
        let (mut parts, _) = resp.into_parts();
        crate::headers::strip_hop_by_hop(&mut parts.headers, false);
        return Response::from_parts(parts, Either::Right(Full::new(Bytes::new())));
    }
    // A refusal (407 with its Proxy-Authenticate, 403...) is the app's to see.
    let proxy_authenticate: Vec<HeaderValue> = resp
        .headers()
        .get_all(header::PROXY_AUTHENTICATE)
        .iter()
        .cloned()
        .collect();
    let (mut parts, body) = resp.into_parts();
    crate::headers::strip_hop_by_hop(&mut parts.headers, false);
    for v in proxy_authenticate {
        parts.headers.append(header::PROXY_AUTHENTICATE, v);
    }
    let sent = shared.metrics.bytes(ctx.direction).sent.clone();
    let body = SpanBody::new(
        crate::body::ResponseBody::new(body, sent),
        span,
        status,
        None,
    );
    Response::from_parts(parts, Either::Left(body))
}

/// Serves the content of an explicit-mode tunnel whose target `upstream` is already connected.
pub async fn serve_dialed(
    shared: Arc<Shared>,
    client: Upgraded,
    peer: SocketAddr,
    dst: SocketAddr,
    upstream: crate::dest_limit::Counted,
    watch: Watch,
) {
    let mut client = TokioIo::new(client);
    let detections = shared.metrics.detections(Direction::Outbound);
    let (protocol, prefix, upstream) = if crate::config::is_opaque_port(&shared.config, dst.port())
    {
        // Server-speaks-first protocols must not wait for the client.
        detections.skipped.inc();
        (
            Protocol::Opaque,
            BytesMut::new(),
            Prefixed::new(BytesMut::new(), upstream),
        )
    } else {
        // The target is already connected: the server-first check uses that connection.
        let dialed = std::sync::Mutex::new(Some(upstream));
        let connect = || async {
            dialed
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .take()
                .ok_or_else(|| crate::error::ConnectError::Unreachable {
                    addr: dst,
                    source: std::io::Error::other("tunnel connection already in use"),
                })
        };
        let mut draining = watch.clone();
        let shutdown = async move { draining.signaled().await };
        let detected =
            match detect::detect(&mut client, connect, shutdown, Default::default()).await {
                Ok(d) => d,
                Err(e) => {
                    detections.failed.inc();
                    tracing::debug!(%peer, error = %e, "tunnel ended during detection");
                    return;
                }
            };
        detections.decided(detected.detection).inc();
        let Some(protocol) = detected.detection.protocol() else {
            return;
        };
        let upstream = match detected.upstream {
            Some(checked) => checked,
            None => match dialed.lock().unwrap_or_else(|p| p.into_inner()).take() {
                Some(stream) => Prefixed::new(BytesMut::new(), stream),
                None => return,
            },
        };
        (protocol, detected.prefix, upstream)
    };
    if protocol != Protocol::Opaque {
        // HTTP inside the tunnel goes through the pooled clients, request by request.
        drop(upstream);
        let io = Prefixed::new(prefix, client);
        crate::connection::serve(shared, Direction::Outbound, io, peer, dst, watch).await;
        return;
    }
    shared
        .metrics
        .path(Direction::Outbound, Protocol::Opaque)
        .connections
        .inc();
    let client = Prefixed::new(prefix, client);
    if let Err(e) = crate::tcp::relay(&shared, Direction::Outbound, client, upstream).await {
        tracing::debug!(%dst, error = %e, "tunnel ended with an error");
    }
}
