//! The HTTPS server: accept, TLS, route. One `App` is shared by every connection.

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;

use bytes::Bytes;
use http::{header, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

use crate::admission;
use crate::backend::Backend;
use crate::configserver::{self, plain};
use crate::inject::{self, Decision, Settings};

/// The API server caps objects at about 3 MiB; anything larger is not a real review.
const MAX_BODY: usize = 4 * 1024 * 1024;

pub struct App {
    pub backend: Backend,
    pub settings: Settings,
}

/// Serves until `shutdown` resolves. Per-connection errors (TLS, protocol) are logged and
/// affect only that connection.
pub async fn serve(
    listener: TcpListener,
    acceptor: TlsAcceptor,
    app: Arc<App>,
    shutdown: impl Future<Output = ()>,
) {
    tokio::pin!(shutdown);
    loop {
        let (tcp, peer) = tokio::select! {
            _ = &mut shutdown => return,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    continue;
                }
            },
        };
        let (acceptor, app) = (acceptor.clone(), app.clone());
        tokio::spawn(async move {
            let tls = match acceptor.accept(tcp).await {
                Ok(t) => t,
                Err(e) => {
                    tracing::debug!(%peer, error = %e, "TLS handshake failed");
                    return;
                }
            };
            let service = hyper::service::service_fn(move |req| {
                let app = app.clone();
                async move { Ok::<_, Infallible>(route(&app, req).await) }
            });
            if let Err(e) = auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(tls), service)
                .await
            {
                tracing::debug!(%peer, error = %e, "connection ended with an error");
            }
        });
    }
}

pub async fn route(app: &App, req: Request<Incoming>) -> Response<Full<Bytes>> {
    match (req.method(), req.uri().path()) {
        (&Method::GET, "/healthz") => plain(StatusCode::OK, "ok".into()),
        (&Method::GET, "/v1/meshconfig") => {
            let inm = req
                .headers()
                .get(header::IF_NONE_MATCH)
                .and_then(|v| v.to_str().ok());
            configserver::serve(req.uri().query(), inm, app.backend.config()).await
        }
        (&Method::POST, "/mutate-pod-creation") => mutate(app, req).await,
        (_, "/healthz" | "/v1/meshconfig" | "/mutate-pod-creation") => {
            plain(StatusCode::METHOD_NOT_ALLOWED, "method not allowed".into())
        }
        _ => plain(StatusCode::NOT_FOUND, "not found".into()),
    }
}

async fn mutate(app: &App, req: Request<Incoming>) -> Response<Full<Bytes>> {
    let ct = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok());
    if let Err(e) = admission::check_content_type(ct) {
        return plain(e.status(), e.to_string());
    }
    let body = match Limited::new(req.into_body(), MAX_BODY).collect().await {
        Ok(b) => b.to_bytes(),
        Err(e) => {
            return plain(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("reading the body: {e}"),
            )
        }
    };
    let review = match admission::decode(&body) {
        Ok(r) => r,
        Err(e) => {
            tracing::info!(error = %e, "bad admission request");
            return plain(e.status(), e.to_string());
        }
    };
    let decision = match &review.pod {
        // UPDATE/DELETE/CONNECT: nothing to inject, let it through.
        None => Decision::Skip(inject::Skip::NotACreate),
        Some(pod) => {
            let namespace = review.namespace();
            let ns = match app.backend.namespace(namespace).await {
                Ok(ns) => ns,
                Err(e) => {
                    // A 500 lets the API server apply the webhook's failurePolicy.
                    tracing::warn!(%namespace, error = %e, "cannot read the namespace");
                    return plain(StatusCode::INTERNAL_SERVER_ERROR, e.to_string());
                }
            };
            let config = app.backend.config().borrow().config.clone();
            let d = inject::decide(pod, namespace, ns.as_ref(), &config, &app.settings);
            let name = pod
                .metadata
                .name
                .as_deref()
                .or(pod.metadata.generate_name.as_deref())
                .unwrap_or("");
            match &d {
                Decision::Inject(_) => {
                    tracing::info!(%namespace, pod = %name, "injecting the sidecar")
                }
                Decision::Skip(why) => {
                    tracing::info!(%namespace, pod = %name, %why, "not injecting")
                }
                Decision::Deny(why) => tracing::info!(%namespace, pod = %name, %why, "denied"),
            }
            d
        }
    };
    Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, "application/json")
        .body(Full::new(Bytes::from(admission::respond(
            &review.request,
            &decision,
        ))))
        .unwrap_or_else(|_| {
            plain(
                StatusCode::INTERNAL_SERVER_ERROR,
                "encoding the response".into(),
            )
        })
}
