//! The demo's workload: a tiny HTTP service that answers `GET /` and, when it has a next hop,
//! first calls it through its sidecar's forward proxy, passing the trace headers on as an
//! instrumented app would, or only `x-request-id` as many uninstrumented apps' logging
//! middleware does (its sidecar then stitches the hop by request id).

use std::convert::Infallible;
use std::net::SocketAddr;

use anyhow::Context as _;
use bytes::Bytes;
use http::{HeaderMap, Request, Response, StatusCode};
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

/// The headers an app copies from its inbound request to its outbound ones (Istio's list).
const PROPAGATED: &[&str] = &[
    "x-request-id",
    "x-b3-traceid",
    "x-b3-spanid",
    "x-b3-parentspanid",
    "x-b3-sampled",
    "x-b3-flags",
    "b3",
    "traceparent",
    "tracestate",
];

/// What an app copies from its inbound request onto the requests it makes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Forwards {
    /// Every trace header: an instrumented app.
    TraceHeaders,
    /// `x-request-id` alone: an app that knows nothing of tracing.
    RequestIdOnly,
}

/// One demo service.
#[derive(Debug, Clone)]
pub struct DemoApp {
    pub name: String,
    /// `(next service's public address, this app's forward proxy)`.
    pub next: Option<(SocketAddr, SocketAddr)>,
    pub forwards: Forwards,
}

/// Serves `app` on `listener` until the returned task is aborted.
pub fn serve(listener: TcpListener, app: DemoApp) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut connections = tokio::task::JoinSet::new();
        loop {
            let (stream, _) = tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok(accepted) => accepted,
                    Err(_) => continue,
                },
                Some(_) = connections.join_next() => continue,
            };
            let app = app.clone();
            connections.spawn(async move {
                let service = hyper::service::service_fn(move |req| handle(req, app.clone()));
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    })
}

async fn handle(req: Request<Incoming>, app: DemoApp) -> Result<Response<Full<Bytes>>, Infallible> {
    let Some((next, proxy)) = app.next else {
        return Ok(reply(StatusCode::OK, format!("{}\n", app.name)));
    };
    match call(next, proxy, req.headers(), app.forwards).await {
        Ok((200, body)) => Ok(reply(StatusCode::OK, format!("{} -> {body}", app.name))),
        Ok((status, body)) => Ok(reply(
            StatusCode::BAD_GATEWAY,
            format!("{}: next hop answered {status}: {body}", app.name),
        )),
        Err(e) => Ok(reply(
            StatusCode::BAD_GATEWAY,
            format!("{}: calling the next hop failed: {e:#}\n", app.name),
        )),
    }
}

/// `GET http://next/` as an absolute-form request to the forward proxy, as `HTTP_PROXY` clients do.
async fn call(
    next: SocketAddr,
    proxy: SocketAddr,
    incoming: &HeaderMap,
    forwards: Forwards,
) -> anyhow::Result<(u16, String)> {
    let stream = tokio::net::TcpStream::connect(proxy)
        .await
        .with_context(|| format!("connecting to the sidecar at {proxy}"))?;
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(connection);
    let mut request = Request::get(format!("http://{next}/"))
        .header(http::header::HOST, next.to_string())
        .body(Empty::<Bytes>::new())?;
    let names = match forwards {
        Forwards::TraceHeaders => PROPAGATED,
        Forwards::RequestIdOnly => &PROPAGATED[..1],
    };
    for name in names {
        if let Some(value) = incoming.get(*name) {
            request.headers_mut().insert(*name, value.clone());
        }
    }
    let response = sender.send_request(request).await?;
    let status = response.status().as_u16();
    let body = response.into_body().collect().await?.to_bytes();
    Ok((status, String::from_utf8_lossy(&body).into_owned()))
}

fn reply(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn forwards_through_the_proxy_with_the_trace_headers() {
        // The "proxy" here is the next app itself: an absolute-form request is still served.
        let c_listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let c = c_listener.local_addr().expect("addr");
        let _c = serve(
            c_listener,
            DemoApp {
                name: "c".into(),
                next: None,
                forwards: Forwards::TraceHeaders,
            },
        );
        let b_listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let b = b_listener.local_addr().expect("addr");
        let _b = serve(
            b_listener,
            DemoApp {
                name: "b".into(),
                next: Some((c, c)),
                forwards: Forwards::RequestIdOnly,
            },
        );
        let (status, body) = crate::local::probe::get(b, "/").await.expect("get");
        assert_eq!((status, body.as_str()), (200, "b -> c\n"));
    }
}
