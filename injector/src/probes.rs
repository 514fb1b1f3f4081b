//! Rewriting app probes so they keep working under interception.
//!
//! Once `mesh-init` redirects inbound traffic, the kubelet's probes would reach the app through
//! the proxy, and with mTLS or strict policies they would fail. So HTTP probes are pointed at the
//! sidecar's probe ports (15901 liveness, 15902 readiness, 15903 startup), TCP probes at 15904,
//! each under `/app-health/<container>/<kind>`, and the original target is recorded in the
//! sidecar's `MESH_APP_PROBES` env (JSON); the sidecar (`mesh-proxy`'s `probes` module) answers
//! each probe by probing the app itself, at the pod IP as the kubelet would have. Clusters that
//! want the kubelet to probe the app directly turn the rewrite off with
//! `mesh-injector --rewrite-probes=false`. gRPC and exec probes are left alone: exec runs inside
//! the container and gRPC needs its own forwarding.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Container, HTTPGetAction, Probe};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use serde::Serialize;

pub const LIVENESS_PORT: i32 = 15901;
pub const READINESS_PORT: i32 = 15902;
pub const STARTUP_PORT: i32 = 15903;
pub const TCP_PORT: i32 = 15904;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Liveness,
    Readiness,
    Startup,
}

impl Kind {
    pub const ALL: [Kind; 3] = [Kind::Liveness, Kind::Readiness, Kind::Startup];

    /// The Pod spec field, used in JSON pointers.
    pub fn field(self) -> &'static str {
        match self {
            Kind::Liveness => "livenessProbe",
            Kind::Readiness => "readinessProbe",
            Kind::Startup => "startupProbe",
        }
    }

    fn http_port(self) -> i32 {
        match self {
            Kind::Liveness => LIVENESS_PORT,
            Kind::Readiness => READINESS_PORT,
            Kind::Startup => STARTUP_PORT,
        }
    }

    fn suffix(self) -> &'static str {
        match self {
            Kind::Liveness => "livez",
            Kind::Readiness => "readyz",
            Kind::Startup => "startupz",
        }
    }

    fn probe(self, c: &Container) -> Option<&Probe> {
        match self {
            Kind::Liveness => c.liveness_probe.as_ref(),
            Kind::Readiness => c.readiness_probe.as_ref(),
            Kind::Startup => c.startup_probe.as_ref(),
        }
    }
}

/// Where the sidecar must send a rewritten probe.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase", tag = "type")]
pub enum Original {
    Http {
        scheme: String,
        port: i32,
        path: String,
        #[serde(skip_serializing_if = "Option::is_none")]
        host: Option<String>,
        #[serde(skip_serializing_if = "Vec::is_empty")]
        headers: Vec<(String, String)>,
    },
    Tcp {
        port: i32,
        #[serde(skip_serializing_if = "Option::is_none")]
        host: Option<String>,
    },
}

/// One probe to replace: app container index, which probe, the new probe.
#[derive(Clone, Debug, PartialEq)]
pub struct Replacement {
    pub container: usize,
    pub kind: Kind,
    pub probe: Probe,
}

#[derive(Clone, Debug, Default, PartialEq)]
pub struct Rewrite {
    pub replacements: Vec<Replacement>,
    /// Sidecar path (`/app-health/<container>/<kind>`) → original target.
    pub originals: BTreeMap<String, Original>,
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ProbeError {
    #[error("container {container:?}: {field} refers to port {port:?}, which the container does not declare")]
    UnknownPortName {
        container: String,
        field: &'static str,
        port: String,
    },
}

/// Computes the rewrite of every HTTP and TCP probe of the app containers.
pub fn rewrite(containers: &[Container]) -> Result<Rewrite, ProbeError> {
    let mut out = Rewrite::default();
    for (index, c) in containers.iter().enumerate() {
        for kind in Kind::ALL {
            let Some(probe) = kind.probe(c) else { continue };
            let path = format!("/app-health/{}/{}", c.name, kind.suffix());
            let (original, port) = if let Some(http) = &probe.http_get {
                let port = resolve_port(c, kind, &http.port)?;
                let original = Original::Http {
                    scheme: http.scheme.clone().unwrap_or_else(|| "HTTP".into()),
                    port,
                    path: http.path.clone().unwrap_or_else(|| "/".into()),
                    host: http.host.clone(),
                    headers: http
                        .http_headers
                        .iter()
                        .flatten()
                        .map(|h| (h.name.clone(), h.value.clone()))
                        .collect(),
                };
                (original, kind.http_port())
            } else if let Some(tcp) = &probe.tcp_socket {
                let port = resolve_port(c, kind, &tcp.port)?;
                (
                    Original::Tcp {
                        port,
                        host: tcp.host.clone(),
                    },
                    TCP_PORT,
                )
            } else {
                continue;
            };
            let mut probe = probe.clone();
            probe.tcp_socket = None;
            probe.http_get = Some(HTTPGetAction {
                path: Some(path.clone()),
                port: IntOrString::Int(port),
                scheme: Some("HTTP".into()),
                ..Default::default()
            });
            out.originals.insert(path, original);
            out.replacements.push(Replacement {
                container: index,
                kind,
                probe,
            });
        }
    }
    Ok(out)
}

fn resolve_port(c: &Container, kind: Kind, port: &IntOrString) -> Result<i32, ProbeError> {
    match port {
        IntOrString::Int(p) => Ok(*p),
        IntOrString::String(name) => c
            .ports
            .iter()
            .flatten()
            .find(|p| p.name.as_deref() == Some(name.as_str()))
            .map(|p| p.container_port)
            .or_else(|| name.parse().ok())
            .ok_or_else(|| ProbeError::UnknownPortName {
                container: c.name.clone(),
                field: kind.field(),
                port: name.clone(),
            }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn container(v: serde_json::Value) -> Container {
        serde_json::from_value(v).expect("container")
    }

    #[test]
    fn http_probes_go_to_their_kind_port_and_keep_timing() {
        let c = container(json!({
            "name": "web", "image": "web",
            "ports": [{"name": "http", "containerPort": 8080}],
            "livenessProbe": {"httpGet": {"path": "/healthz", "port": "http"}, "periodSeconds": 7},
            "readinessProbe": {"httpGet": {"path": "/ready", "port": 8080, "scheme": "HTTPS"}},
            "startupProbe": {"tcpSocket": {"port": 8080}}
        }));
        let r = rewrite(&[c]).expect("rewrite");
        assert_eq!(r.replacements.len(), 3);
        let live = &r.replacements[0];
        assert_eq!(live.kind, Kind::Liveness);
        assert_eq!(live.probe.period_seconds, Some(7));
        let http = live.probe.http_get.as_ref().expect("http");
        assert_eq!(http.port, IntOrString::Int(LIVENESS_PORT));
        assert_eq!(http.path.as_deref(), Some("/app-health/web/livez"));
        assert_eq!(
            r.originals["/app-health/web/livez"],
            Original::Http {
                scheme: "HTTP".into(),
                port: 8080,
                path: "/healthz".into(),
                host: None,
                headers: vec![]
            }
        );
        let startup = &r.replacements[2];
        assert!(startup.probe.tcp_socket.is_none());
        assert_eq!(
            startup.probe.http_get.as_ref().map(|h| h.port.clone()),
            Some(IntOrString::Int(TCP_PORT))
        );
        assert_eq!(
            r.originals["/app-health/web/startupz"],
            Original::Tcp {
                port: 8080,
                host: None
            }
        );
    }

    #[test]
    fn exec_probes_are_left_alone_and_unknown_port_names_are_errors() {
        let c = container(json!({"name": "a", "livenessProbe": {"exec": {"command": ["true"]}}}));
        assert!(rewrite(&[c]).expect("ok").replacements.is_empty());
        let c = container(json!({"name": "a", "livenessProbe": {"httpGet": {"port": "nope"}}}));
        assert!(matches!(
            rewrite(&[c]),
            Err(ProbeError::UnknownPortName { .. })
        ));
    }
}
