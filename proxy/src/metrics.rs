//! Prometheus metrics of the data path (prometheus-client).
//!
//! Every label combination is resolved once at startup into plain counters and histograms, so
//! the hot path only does atomic adds and never looks a label set up in a map.

use std::sync::atomic::AtomicI64;
use std::sync::Arc;

use prometheus_client::encoding::{EncodeLabelSet, EncodeMetric, MetricEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::exponential_buckets;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;

use crate::detect::{Detection, Protocol};
use crate::histogram::Histogram;
use crate::trace::Direction;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Labels {
    direction: &'static str,
    protocol: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ByteLabels {
    direction: &'static str,
    /// `in`: from the downstream client; `out`: towards it.
    flow: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DetectLabels {
    direction: &'static str,
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StatusLabels {
    direction: &'static str,
    protocol: &'static str,
    status_class: &'static str,
}

/// Counters of one direction and protocol.
#[derive(Clone, Debug)]
pub struct Path {
    pub connections: Counter,
    pub requests: Counter,
    pub latency: Histogram,
    /// Indexed by status / 100 (0 = the proxy failed the request itself).
    status: [Counter; 6],
}

impl Path {
    pub fn response(&self, status: u16) {
        let class = usize::from(status / 100).min(5);
        self.status[class].inc();
    }
}

/// Bytes in both flows of one direction.
#[derive(Clone, Debug)]
pub struct Bytes {
    pub received: Counter,
    pub sent: Counter,
}

/// How protocol detection ended on the connections of one direction.
#[derive(Clone, Debug)]
pub struct Detections {
    /// Indexed by [`Detection::index`].
    decided: [Counter; Detection::ALL.len()],
    /// Ports in `opaquePorts`: proxied at once, nothing detected.
    pub skipped: Counter,
    /// The client reset, or the connection opened for the server-first check failed.
    pub failed: Counter,
}

impl Detections {
    pub fn decided(&self, d: Detection) -> &Counter {
        &self.decided[d.index()]
    }
}

/// All metrics of the proxy; cheap to clone.
#[derive(Clone, Debug)]
pub struct Metrics {
    paths: Arc<[[Path; 3]; 2]>,
    bytes: Arc<[Bytes; 2]>,
    detections: Arc<[Detections; 2]>,
    pub config_generation: Gauge,
    pub config_errors: Counter,
    pub config_last_error: Gauge,
    pub connect_errors: Counter,
    /// Connections closed because the peer is outside the pod: a forward-proxy client that is
    /// not the pod itself, or the proxy's own port reached from outside.
    pub strangers_refused: Counter,
    /// Downstream connections refused at `spec.sidecar.maxConnections`.
    pub connections_refused: Counter,
    /// Downstream connections held now, the figure `spec.sidecar.maxConnections` caps.
    pub connections_open: Gauge,
    /// Connections closed for the idle timeout (HTTP keep-alive, opaque TCP, tunnels).
    pub idle_timeouts: Counter,
    /// HTTP/1 connections closed for the header read timeout.
    pub header_timeouts: Counter,
}

fn dir_index(d: Direction) -> usize {
    match d {
        Direction::Inbound => 0,
        Direction::Outbound => 1,
    }
}

fn dir_name(d: Direction) -> &'static str {
    match d {
        Direction::Inbound => "inbound",
        Direction::Outbound => "outbound",
    }
}

fn proto_index(p: Protocol) -> usize {
    match p {
        Protocol::Http1 => 0,
        Protocol::Http2 => 1,
        Protocol::Opaque => 2,
    }
}

const CLASSES: [&str; 6] = ["error", "1xx", "2xx", "3xx", "4xx", "5xx"];

impl Metrics {
    /// Registers the proxy's metrics under the `mesh_proxy` prefix of `registry`.
    pub fn new(registry: &mut Registry) -> Self {
        let reg = registry.sub_registry_with_prefix("mesh_proxy");
        let connections = Family::<Labels, Counter>::default();
        let requests = Family::<Labels, Counter>::default();
        let responses = Family::<StatusLabels, Counter>::default();
        // 50 µs .. ~26 s: the sidecar's own overhead sits at the low end, upstream time above.
        let latency = Family::<Labels, Histogram>::new_with_constructor(|| {
            Histogram::new(exponential_buckets(0.00005, 2.0, 20))
        });
        let bytes = Family::<ByteLabels, Counter>::default();
        reg.register(
            "connections",
            "Accepted connections by direction and detected protocol",
            connections.clone(),
        );
        reg.register(
            "requests",
            "HTTP requests by direction and protocol",
            requests.clone(),
        );
        reg.register(
            "responses",
            "HTTP responses by direction, protocol and status class",
            responses.clone(),
        );
        reg.register(
            "request_duration_seconds",
            "Time from request received to response headers sent",
            latency.clone(),
        );
        reg.register(
            "bytes",
            "Payload bytes by direction and flow (in: from the client, out: to it)",
            bytes.clone(),
        );
        let make = |d: Direction, p: Protocol| {
            let l = Labels {
                direction: dir_name(d),
                protocol: p.as_str(),
            };
            Path {
                connections: connections.get_or_create(&l).clone(),
                requests: requests.get_or_create(&l).clone(),
                latency: latency.get_or_create(&l).clone(),
                status: CLASSES.map(|c| {
                    responses
                        .get_or_create(&StatusLabels {
                            direction: l.direction,
                            protocol: l.protocol,
                            status_class: c,
                        })
                        .clone()
                }),
            }
        };
        let dirs = [Direction::Inbound, Direction::Outbound];
        let paths =
            dirs.map(|d| [Protocol::Http1, Protocol::Http2, Protocol::Opaque].map(|p| make(d, p)));
        // One statement per get_or_create: a guard kept alive by the struct literal would hold
        // the family's read lock while the next call takes the write lock (deadlock).
        let flows = dirs.map(|d| {
            let received = bytes
                .get_or_create(&ByteLabels {
                    direction: dir_name(d),
                    flow: "in",
                })
                .clone();
            let sent = bytes
                .get_or_create(&ByteLabels {
                    direction: dir_name(d),
                    flow: "out",
                })
                .clone();
            Bytes { received, sent }
        });
        let config_generation = Gauge::<i64, AtomicI64>::default();
        let config_errors = Counter::default();
        let config_last_error = Gauge::<i64, AtomicI64>::default();
        let outcomes = Family::<DetectLabels, Counter>::default();
        let detections = dirs.map(|d| {
            let counter = |outcome| {
                outcomes
                    .get_or_create(&DetectLabels {
                        direction: dir_name(d),
                        outcome,
                    })
                    .clone()
            };
            Detections {
                decided: Detection::ALL.map(|o| counter(o.as_str())),
                skipped: counter("skipped"),
                failed: counter("failed"),
            }
        });
        let connect_errors = Counter::default();
        let strangers_refused = Counter::default();
        reg.register(
            "strangers_refused",
            "Connections closed because the peer is outside the pod (forward proxy, own ports)",
            strangers_refused.clone(),
        );
        let connections_refused = Counter::default();
        let connections_open = Gauge::<i64, AtomicI64>::default();
        let idle_timeouts = Counter::default();
        let header_timeouts = Counter::default();
        reg.register(
            "connections_open",
            "Downstream connections held now by the proxy listeners (capped by maxConnections)",
            connections_open.clone(),
        );
        reg.register(
            "tasks",
            "Tasks alive on the proxy's runtime: every connection, request and tunnel holds \
             one, so a count that does not return to its level after a burst is a leak",
            RuntimeTasks,
        );
        reg.register(
            "connections_refused",
            "Downstream connections refused because spec.sidecar.maxConnections were open",
            connections_refused.clone(),
        );
        reg.register(
            "idle_timeouts",
            "Connections closed after the idle timeout (HTTP keep-alive, opaque TCP, tunnels)",
            idle_timeouts.clone(),
        );
        reg.register(
            "header_read_timeouts",
            "HTTP/1 connections closed because a request head was not received in time",
            header_timeouts.clone(),
        );
        reg.register(
            "config_generation",
            "Generation of the MeshConfig in use",
            config_generation.clone(),
        );
        reg.register(
            "config_errors",
            "Rejected MeshConfig versions",
            config_errors.clone(),
        );
        reg.register(
            "config_last_error",
            "1 when the latest MeshConfig version was rejected and the last good one is in use",
            config_last_error.clone(),
        );
        reg.register(
            "protocol_detections",
            "Connections by how protocol detection ended: http1, http2; opaque (the client's \
             bytes are not HTTP), client_closed (before a byte), timed_out (first message \
             incomplete), server_first (the server spoke first); idle, shutdown (closed, nothing \
             was said); skipped (opaquePorts); failed (client reset, upstream failure)",
            outcomes,
        );
        reg.register(
            "upstream_connect_errors",
            "Upstream connections that failed (refused, unreachable, timeout, loop)",
            connect_errors.clone(),
        );
        Self {
            paths: Arc::new(paths),
            bytes: Arc::new(flows),
            detections: Arc::new(detections),
            config_generation,
            config_errors,
            config_last_error,
            connect_errors,
            strangers_refused,
            connections_refused,
            connections_open,
            idle_timeouts,
            header_timeouts,
        }
    }

    pub fn path(&self, d: Direction, p: Protocol) -> &Path {
        &self.paths[dir_index(d)][proto_index(p)]
    }

    pub fn bytes(&self, d: Direction) -> &Bytes {
        &self.bytes[dir_index(d)]
    }

    pub fn detections(&self, d: Direction) -> &Detections {
        &self.detections[dir_index(d)]
    }

    /// Reflects the config snapshot in use.
    pub fn set_config(&self, generation: u64, has_error: bool) {
        self.config_generation
            .set(i64::try_from(generation).unwrap_or(i64::MAX));
        self.config_last_error.set(i64::from(has_error));
    }
}

/// The number of tasks alive on the runtime that renders the metrics, read at scrape time:
/// tokio counts them already, so nothing on the data path pays for it.
#[derive(Debug)]
struct RuntimeTasks;

impl EncodeMetric for RuntimeTasks {
    fn encode(&self, mut encoder: MetricEncoder<'_>) -> Result<(), std::fmt::Error> {
        let alive = tokio::runtime::Handle::try_current()
            .map(|h| h.metrics().num_alive_tasks())
            .unwrap_or(0);
        encoder.encode_gauge(&i64::try_from(alive).unwrap_or(i64::MAX))
    }

    fn metric_type(&self) -> MetricType {
        MetricType::Gauge
    }
}

/// Renders the registry in the Prometheus text format.
pub fn encode(registry: &Registry) -> String {
    let mut out = String::with_capacity(8 * 1024);
    // Writing into a String cannot fail.
    let _ = prometheus_client::encoding::text::encode(&mut out, registry);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_labelled_series() {
        let mut reg = Registry::default();
        let m = Metrics::new(&mut reg);
        m.path(Direction::Inbound, Protocol::Http1).requests.inc();
        m.path(Direction::Inbound, Protocol::Http1).response(503);
        m.bytes(Direction::Outbound).sent.inc_by(10);
        let text = encode(&reg);
        assert!(
            text.contains("mesh_proxy_requests_total{direction=\"inbound\",protocol=\"http1\"} 1"),
            "{text}"
        );
        assert!(text.contains("status_class=\"5xx\"} 1"), "{text}");
        assert!(text.contains("mesh_proxy_bytes_total{direction=\"outbound\",flow=\"out\"} 10"));
    }

    #[test]
    fn every_detection_outcome_is_a_series_from_the_start() {
        let mut reg = Registry::default();
        let m = Metrics::new(&mut reg);
        m.detections(Direction::Inbound)
            .decided(Detection::ServerFirst)
            .inc();
        m.detections(Direction::Outbound).skipped.inc();
        let text = encode(&reg);
        let series = |direction: &str, outcome: &str, value: u32| {
            format!(
                "mesh_proxy_protocol_detections_total{{direction=\"{direction}\",outcome=\"{outcome}\"}} {value}"
            )
        };
        assert!(
            text.contains(&series("inbound", "server_first", 1)),
            "{text}"
        );
        assert!(text.contains(&series("outbound", "skipped", 1)), "{text}");
        for d in Detection::ALL {
            assert!(text.contains(&series("outbound", d.as_str(), 0)), "{text}");
        }
        assert!(text.contains(&series("inbound", "failed", 0)), "{text}");
    }
}
