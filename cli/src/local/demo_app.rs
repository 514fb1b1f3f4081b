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

    /// A stand-in for the sidecar's forward proxy: records the request line's URI and the
    /// headers of every request it gets, and answers as the next app would.
    async fn recording_proxy() -> (
        SocketAddr,
        tokio::sync::mpsc::UnboundedReceiver<(String, HeaderMap)>,
    ) {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let tx = tx.clone();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                        let _ = tx.send((req.uri().to_string(), req.headers().clone()));
                        async { Ok::<_, Infallible>(reply(StatusCode::OK, "c\n".into())) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        (addr, rx)
    }

    /// B calls its next hop through the proxy in absolute form, copying every trace header
    /// of the request it got (and only those), as the demo's traces depend on.
    #[tokio::test]
    async fn forwards_through_the_proxy_with_the_trace_headers() {
        let (proxy, mut seen) = recording_proxy().await;
        // The next hop's address is only named in the request, never dialled: the proxy is.
        let next: SocketAddr = "192.0.2.7:8080".parse().expect("addr");
        let b_listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let b = b_listener.local_addr().expect("addr");
        let _b = serve(
            b_listener,
            DemoApp {
                name: "b".into(),
                next: Some((next, proxy)),
                forwards: Forwards::TraceHeaders,
            },
        );
        let sent: Vec<(&str, String)> = PROPAGATED
            .iter()
            .enumerate()
            .map(|(i, name)| (*name, format!("value-{i}")))
            .collect();
        let stream = tokio::net::TcpStream::connect(b).await.expect("connect");
        let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .expect("handshake");
        tokio::spawn(connection);
        let mut request = Request::get("/")
            .header(http::header::HOST, b.to_string())
            .header("authorization", "Bearer secret")
            .header("x-not-a-trace-header", "1");
        for (name, value) in &sent {
            request = request.header(*name, value.as_str());
        }
        let response = sender
            .send_request(request.body(Empty::<Bytes>::new()).expect("request"))
            .await
            .expect("response");
        assert_eq!(response.status(), StatusCode::OK);
        let body = response
            .into_body()
            .collect()
            .await
            .expect("body")
            .to_bytes();
        assert_eq!(body, "b -> c\n");

        let (uri, headers) = seen.try_recv().expect("the proxy got the call");
        assert_eq!(
            uri,
            format!("http://{next}/"),
            "absolute form, for HTTP_PROXY"
        );
        assert_eq!(headers[http::header::HOST], next.to_string());
        for (name, value) in &sent {
            assert_eq!(
                headers.get(*name).and_then(|v| v.to_str().ok()),
                Some(value.as_str()),
                "{name} is passed on"
            );
        }
        assert!(headers.get("authorization").is_none(), "{headers:?}");
        assert!(headers.get("x-not-a-trace-header").is_none(), "{headers:?}");
        assert!(seen.try_recv().is_err(), "one call per request");
    }

    /// The demo's uninstrumented B: only `x-request-id` goes on, so its sidecar has nothing
    /// but that id to stitch by.
    #[tokio::test]
    async fn an_app_forwarding_only_the_request_id_sends_nothing_else() {
        let (proxy, mut seen) = recording_proxy().await;
        let next: SocketAddr = "192.0.2.7:8080".parse().expect("addr");
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let b = listener.local_addr().expect("addr");
        let _b = serve(
            listener,
            DemoApp {
                name: "b".into(),
                next: Some((next, proxy)),
                forwards: Forwards::RequestIdOnly,
            },
        );
        let stream = tokio::net::TcpStream::connect(b).await.expect("connect");
        let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .expect("handshake");
        tokio::spawn(connection);
        let mut request = Request::get("/").header(http::header::HOST, b.to_string());
        for name in PROPAGATED {
            request = request.header(*name, "v");
        }
        let response = sender
            .send_request(request.body(Empty::<Bytes>::new()).expect("request"))
            .await
            .expect("response");
        assert_eq!(response.status(), StatusCode::OK);
        let (_, headers) = seen.try_recv().expect("the proxy got the call");
        for name in PROPAGATED {
            assert_eq!(
                headers.contains_key(*name),
                *name == "x-request-id",
                "{name}: {headers:?}"
            );
        }
    }
}
