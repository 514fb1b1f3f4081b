//! The servers: accept, TLS (or plain, for metrics), route. One `App` is shared by every
//! connection.
//!
//! Shutdown, for a webhook whose failurePolicy is `Fail`: first `/readyz` turns 503 and held
//! long-polls end (so the Service stops sending work here and sidecars go elsewhere), then, after
//! `delay` (the time endpoints take to drop this pod), the listener closes and open connections
//! are drained: in-flight admissions are answered, idle keep-alive connections are closed.

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{header, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Body;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_rustls::TlsAcceptor;

use crate::admission;
use crate::backend::{Backend, ConfigSync};
use crate::configserver::{self, plain, LongPolls};
use crate::inject::{self, Decision, Settings};
use crate::metrics::{AdmissionResult, Metrics};
use crate::tls::LiveCert;

/// The API server caps objects at about 3 MiB; anything larger is not a real review.
const MAX_BODY: usize = 4 * 1024 * 1024;

pub struct App {
    pub backend: Backend,
    pub settings: Settings,
    pub metrics: Metrics,
    pub polls: LongPolls,
    /// The certificate served from the Secret, whose CA bundle injected pods get; `None` when
    /// serving from files (then `settings.config_ca_pem` is the CA).
    pub live_cert: Option<Arc<LiveCert>>,
    closing: watch::Sender<bool>,
}

impl App {
    pub fn new(backend: Backend, settings: Settings, max_long_polls: usize) -> Self {
        let metrics = Metrics::new(&backend.config_metrics());
        let (closing, closing_rx) = watch::channel(false);
        let polls = LongPolls::new(max_long_polls, metrics.long_polls.clone(), closing_rx);
        Self {
            backend,
            settings,
            metrics,
            polls,
            live_cert: None,
            closing,
        }
    }

    pub fn with_live_cert(mut self, cert: Arc<LiveCert>) -> Self {
        self.live_cert = Some(cert);
        self
    }

    /// Not ready from now on, and held long-polls end.
    pub fn begin_shutdown(&self) {
        self.closing.send_replace(true);
    }

    fn closing(&self) -> bool {
        *self.closing.borrow()
    }

    /// `Ok` when ready to serve, else why not.
    pub fn readiness(&self) -> Result<(), String> {
        if self.closing() {
            return Err("shutting down".into());
        }
        match self.backend.sync() {
            ConfigSync::Synced => Ok(()),
            ConfigSync::Waiting(why) => Err(why),
        }
    }
}

/// Which routes a listener offers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Routes {
    /// HTTPS: the webhook, the config server, health.
    Main,
    /// Plain HTTP for Prometheus: `/metrics` and health only.
    Metrics,
}

/// Serves until `shutdown` resolves, then drains open connections for at most `drain`.
/// Per-connection errors (TLS, protocol) are logged and affect only that connection.
pub async fn serve(
    listener: TcpListener,
    acceptor: Option<TlsAcceptor>,
    routes: Routes,
    app: Arc<App>,
    shutdown: impl Future<Output = ()>,
    drain: Duration,
) {
    let graceful = GracefulShutdown::new();
    tokio::pin!(shutdown);
    loop {
        let (tcp, peer) = tokio::select! {
            _ = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // EMFILE and friends: pause instead of spinning on a full descriptor table.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let (acceptor, app, watcher) = (acceptor.clone(), app.clone(), graceful.watcher());
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| {
                let app = app.clone();
                async move { Ok::<_, Infallible>(route(&app, req, routes).await) }
            });
            let builder = auto::Builder::new(TokioExecutor::new());
            let result = match acceptor {
                Some(acceptor) => match acceptor.accept(tcp).await {
                    Ok(tls) => {
                        watcher
                            .watch(builder.serve_connection(TokioIo::new(tls), service))
                            .await
                    }
                    Err(e) => {
                        tracing::debug!(%peer, error = %e, "TLS handshake failed");
                        return;
                    }
                },
                None => {
                    watcher
                        .watch(builder.serve_connection(TokioIo::new(tcp), service))
                        .await
                }
            };
            if let Err(e) = result {
                tracing::debug!(%peer, error = %e, "connection ended with an error");
            }
        });
    }
    drop(listener);
    if tokio::time::timeout(drain, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!(
            ?drain,
            "connections still open after the drain timeout; closing them"
        );
    }
}

pub async fn route<B>(app: &App, req: Request<B>, routes: Routes) -> Response<Full<Bytes>>
where
    B: Body<Data = Bytes>,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    match (routes, req.method(), req.uri().path()) {
        (_, &Method::GET, "/healthz") => plain(StatusCode::OK, "ok".into()),
        (_, &Method::GET, "/readyz") => match app.readiness() {
            Ok(()) => plain(StatusCode::OK, "ready".into()),
            Err(why) => plain(StatusCode::SERVICE_UNAVAILABLE, format!("not ready: {why}")),
        },
        (Routes::Metrics, &Method::GET, "/metrics") => Response::builder()
            .header(
                header::CONTENT_TYPE,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )
            .body(Full::new(Bytes::from(app.metrics.encode())))
            .unwrap_or_else(|_| {
                plain(StatusCode::INTERNAL_SERVER_ERROR, "encoding metrics".into())
            }),
        (Routes::Main, &Method::GET, "/v1/meshconfig") => {
            let inm = req
                .headers()
                .get(header::IF_NONE_MATCH)
                .and_then(|v| v.to_str().ok());
            configserver::serve(req.uri().query(), inm, app.backend.config(), &app.polls).await
        }
        (Routes::Main, &Method::POST, "/mutate-pod-creation") => {
            let started = Instant::now();
            let (response, result) = mutate(app, req).await;
            app.metrics
                .admitted(result, started.elapsed().as_secs_f64());
            response
        }
        (_, _, "/healthz" | "/readyz")
        | (Routes::Metrics, _, "/metrics")
        | (Routes::Main, _, "/v1/meshconfig" | "/mutate-pod-creation") => {
            plain(StatusCode::METHOD_NOT_ALLOWED, "method not allowed".into())
        }
        _ => plain(StatusCode::NOT_FOUND, "not found".into()),
    }
}

async fn mutate<B>(app: &App, req: Request<B>) -> (Response<Full<Bytes>>, AdmissionResult)
where
    B: Body<Data = Bytes>,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let error = |status, message| (plain(status, message), AdmissionResult::Error);
    let ct = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok());
    if let Err(e) = admission::check_content_type(ct) {
        return error(e.status(), e.to_string());
    }
    let body = match Limited::new(req.into_body(), MAX_BODY).collect().await {
        Ok(b) => b.to_bytes(),
        Err(e) => {
            return error(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("reading the body: {e}"),
            )
        }
    };
    let review = match admission::decode(&body) {
        Ok(r) => r,
        Err(e) => {
            tracing::info!(error = %e, "bad admission request");
            return error(e.status(), e.to_string());
        }
    };
    // The CA handed to the pod is the bundle of the certificate being served right now.
    let live_settings;
    let settings = match app.live_cert.as_ref().and_then(|c| c.ca_pem()) {
        Some(ca) => {
            live_settings = Settings {
                config_ca_pem: Some(ca),
                ..app.settings.clone()
            };
            &live_settings
        }
        None => &app.settings,
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
                    return error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string());
                }
            };
            let config = app.backend.config().borrow().config.clone();
            let d = inject::decide(pod, namespace, ns.as_ref(), &config, settings);
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
    let result = match &decision {
        Decision::Inject(_) => AdmissionResult::Injected,
        Decision::Skip(_) => AdmissionResult::Skipped,
        Decision::Deny(_) => AdmissionResult::Denied,
    };
    let response = Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, "application/json")
        .body(Full::new(Bytes::from(admission::respond(
            &review.request,
            &decision,
        ))));
    match response {
        Ok(r) => (r, result),
        Err(_) => error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "encoding the response".into(),
        ),
    }
}
