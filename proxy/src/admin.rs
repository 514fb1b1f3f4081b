//! The admin server on 15000: liveness, readiness, Prometheus metrics and the effective config.
//!
//! The kubelet and Prometheus reach it from outside the pod, so `/live`, `/ready` and `/metrics`
//! answer any peer; everything else (the effective config today, anything that reveals or
//! changes state tomorrow) answers loopback only, as Envoy's admin and Istio's pilot-agent do.

use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;

use crate::config::ConfigRx;
use crate::shutdown::Watch;
use crate::trace::Tracer;

/// The paths any peer may read: the kubelet's probes and Prometheus' scrape come from outside
/// the pod, and none of them reveals configuration.
const PUBLIC: [&str; 3] = ["/live", "/ready", "/metrics"];

/// What the admin endpoints report.
#[derive(Debug)]
pub struct Admin {
    pub registry: Registry,
    pub config: ConfigRx,
    /// For `/config`: which span exporter runs and what its collector last answered.
    pub tracer: Tracer,
    /// Set once every listener is bound; cleared when shutdown starts.
    pub ready: AtomicBool,
}

impl Admin {
    pub fn new(registry: Registry, config: ConfigRx, tracer: Tracer) -> Arc<Self> {
        Arc::new(Self {
            registry,
            config,
            tracer,
            ready: AtomicBool::new(false),
        })
    }

    /// Answers one admin request from `peer`.
    pub fn respond<B>(&self, req: &Request<B>, peer: IpAddr) -> Response<Full<Bytes>> {
        let path = req.uri().path();
        if !PUBLIC.contains(&path) && !crate::peer::is_loopback(peer) {
            return text(StatusCode::FORBIDDEN, "loopback clients only\n");
        }
        if req.method() != Method::GET && req.method() != Method::HEAD {
            return text(StatusCode::METHOD_NOT_ALLOWED, "GET only\n");
        }
        match path {
            "/live" => text(StatusCode::OK, "live\n"),
            "/ready" => {
                if self.ready.load(Ordering::Acquire) {
                    text(StatusCode::OK, "ready\n")
                } else {
                    text(StatusCode::SERVICE_UNAVAILABLE, "not ready\n")
                }
            }
            "/metrics" => {
                let body = crate::metrics::encode(&self.registry);
                let mut resp = Response::new(Full::new(Bytes::from(body)));
                resp.headers_mut().insert(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static(
                        "application/openmetrics-text; version=1.0.0; charset=utf-8",
                    ),
                );
                resp
            }
            "/config" => {
                let snapshot = self.config.borrow().clone();
                let body = serde_json::json!({
                    "generation": snapshot.generation,
                    "source": snapshot.source,
                    "last_error": snapshot.last_error,
                    "warnings": snapshot.warnings,
                    "config": &*snapshot.config,
                    "tracing": self.tracer.status(),
                });
                let mut resp = Response::new(Full::new(Bytes::from(body.to_string())));
                resp.headers_mut().insert(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("application/json"),
                );
                resp
            }
            _ => text(StatusCode::NOT_FOUND, "not found\n"),
        }
    }
}

fn text(status: StatusCode, body: &'static str) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp
}

/// Serves admin requests until shutdown, through the shared accept loop and HTTP/1 server.
/// The proxy's connection cap does not apply: the kubelet's probes and the metrics scraper
/// must still get through while the proxy listeners are flooded.
pub async fn run(listener: TcpListener, admin: Arc<Admin>, watch: Watch) {
    crate::server::accept_loop(listener, None, watch, move |stream, peer, watch| {
        let admin = admin.clone();
        async move {
            let limits = crate::config::sidecar(&admin.config);
            let handler = move |req: Request<hyper::body::Incoming>| {
                let resp = admin.respond(&req, peer.ip());
                async move { resp }
            };
            if let Err(e) = crate::server::serve_http1(stream, handler, &limits, watch).await {
                tracing::debug!(error = %e, "admin connection ended with an error");
            }
        }
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{fixed, Snapshot};

    const LOOPBACK: IpAddr = IpAddr::V4(std::net::Ipv4Addr::LOCALHOST);

    fn get(admin: &Admin, path: &str) -> Response<Full<Bytes>> {
        admin.respond(&Request::get(path).body(()).unwrap(), LOOPBACK)
    }

    #[test]
    fn ready_only_after_listeners() {
        let admin = Admin::new(
            Registry::default(),
            fixed(Snapshot::default_config()),
            Tracer::disabled(),
        );
        assert_eq!(get(&admin, "/live").status(), StatusCode::OK);
        assert_eq!(
            get(&admin, "/ready").status(),
            StatusCode::SERVICE_UNAVAILABLE
        );
        admin.ready.store(true, Ordering::Release);
        assert_eq!(get(&admin, "/ready").status(), StatusCode::OK);
        assert_eq!(get(&admin, "/nope").status(), StatusCode::NOT_FOUND);
    }

    /// `/config` is the snapshot in force, every part of it: a reader must be able to tell which
    /// document runs, where it came from, and why a newer one was not applied.
    #[tokio::test]
    async fn config_is_json_with_generation() {
        use http_body_util::BodyExt;
        let mut config = mesh_config::MeshConfig::default();
        config.spec.observability.tracing.address = "collector.example".into();
        config.spec.traffic.opaque_ports = vec![2525];
        let snapshot = Snapshot {
            config: Arc::new(config.clone()),
            generation: 7,
            source: "/etc/tracemesh/mesh-config.yaml".into(),
            last_error: Some("spec.observability.tracing.port: 0 is out of range".into()),
            warnings: vec!["spec.extra: unknown field".into()],
        };
        let admin = Admin::new(Registry::default(), fixed(snapshot), Tracer::disabled());
        let resp = get(&admin, "/config");
        assert_eq!(resp.status(), StatusCode::OK);
        assert_eq!(resp.headers()[header::CONTENT_TYPE], "application/json");
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        let json: serde_json::Value = serde_json::from_slice(&body).expect("JSON");
        assert_eq!(json["generation"], 7);
        assert_eq!(json["source"], "/etc/tracemesh/mesh-config.yaml");
        assert_eq!(
            json["last_error"],
            "spec.observability.tracing.port: 0 is out of range"
        );
        assert_eq!(
            json["warnings"],
            serde_json::json!(["spec.extra: unknown field"])
        );
        let served: mesh_config::MeshConfig =
            serde_json::from_value(json["config"].clone()).expect("the config in force");
        assert_eq!(served, config);
        assert_eq!(json["tracing"]["enabled"], false, "{json}");
    }

    #[test]
    fn strangers_get_probes_and_metrics_but_not_state() {
        let admin = Admin::new(
            Registry::default(),
            fixed(Snapshot::default_config()),
            Tracer::disabled(),
        );
        admin.ready.store(true, Ordering::Release);
        let from = |path: &str, peer: &str| {
            admin
                .respond(&Request::get(path).body(()).unwrap(), peer.parse().unwrap())
                .status()
        };
        for peer in ["10.0.0.9", "fd00::9"] {
            assert_eq!(from("/live", peer), StatusCode::OK);
            assert_eq!(from("/ready", peer), StatusCode::OK);
            assert_eq!(from("/metrics", peer), StatusCode::OK);
            assert_eq!(from("/config", peer), StatusCode::FORBIDDEN);
            assert_eq!(from("/anything", peer), StatusCode::FORBIDDEN);
        }
        for peer in ["127.0.0.1", "::1", "::ffff:127.0.0.1"] {
            assert_eq!(from("/config", peer), StatusCode::OK, "{peer}");
        }
    }
}
