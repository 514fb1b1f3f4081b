//! The MeshConfig document: Kubernetes-object shaped, every field defaulted so that `spec: {}`
//! is a complete configuration. Field names follow FSM's MeshConfig so its tracing block is
//! accepted as is.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::openapi;
use crate::validate::{MAX_COUNT, MAX_HTTP2_CONNECTIONS, PORT_MAX, PORT_MIN};

use crate::Duration;

pub const API_VERSION: &str = "config.tracemesh.dev/v1alpha1";
pub const KIND: &str = "MeshConfig";
pub const DEFAULT_NAME: &str = "mesh-config";
pub const DEFAULT_NAMESPACE: &str = "mesh-system";

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MeshConfig {
    #[serde(default = "default_api_version")]
    pub api_version: String,
    #[serde(default = "default_kind")]
    pub kind: String,
    #[serde(default)]
    pub metadata: Metadata,
    #[serde(default)]
    pub spec: Spec,
}

impl Default for MeshConfig {
    fn default() -> Self {
        Self {
            api_version: default_api_version(),
            kind: default_kind(),
            metadata: Metadata::default(),
            spec: Spec::default(),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Metadata {
    #[serde(default = "default_name")]
    pub name: String,
    #[serde(default = "default_namespace")]
    pub namespace: String,
}

impl Default for Metadata {
    fn default() -> Self {
        Self {
            name: default_name(),
            namespace: default_namespace(),
        }
    }
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", default)]
pub struct Spec {
    /// How the sidecars trace requests and where they send spans.
    pub observability: Observability,
    /// Which traffic the sidecars redirect and how they treat it.
    pub traffic: Traffic,
    /// The sidecar's log level, timeouts and limits.
    pub sidecar: Sidecar,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", default)]
pub struct Observability {
    /// FSM's tracing block, accepted as is, plus the export protocol, propagation and stitching.
    pub tracing: Tracing,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", default)]
#[schemars(transform = openapi::tracing_rules)]
pub struct Tracing {
    /// Whether sidecars record and export spans (context is propagated either way).
    pub enable: bool,
    /// Host name or IP of the collector, no scheme; required when tracing is enabled.
    #[schemars(length(max = 253), regex(pattern = openapi::address_pattern()))]
    pub address: String,
    /// The collector's port.
    #[schemars(range(min = PORT_MIN, max = PORT_MAX))]
    pub port: u16,
    /// HTTP path of the collector, starting with "/"; ignored for `otlp-grpc`, whose method
    /// path is fixed.
    pub endpoint: String,
    /// The export protocol.
    pub protocol: Protocol,
    /// Fraction of new traces recorded, 0..1, as a number or a decimal string (FSM writes a
    /// string, so both are accepted).
    #[schemars(schema_with = "openapi::fraction_schema")]
    pub sampled_fraction: f64,
    /// The formats every hop writes (a `b3` single header is also kept when it came in).
    #[schemars(length(min = 1))]
    pub propagation: Vec<PropagationFormat>,
    /// The longest URL a span records (`http.url` / `url.full`), in bytes; longer ones are cut.
    #[schemars(range(min = *MAX_URL_TAG_LENGTH_RANGE.start(), max = *MAX_URL_TAG_LENGTH_RANGE.end()))]
    pub max_url_tag_length: u32,
    /// How a request that arrives without trace context is tied to the inbound request that
    /// caused it, for apps that forward no trace headers.
    pub stitching: Stitching,
}

/// The default of `maxUrlTagLength`: long enough for any REST path and a short query (Envoy
/// keeps 256 bytes of path), short enough that a queued span stays under about 1.6 KiB and a
/// 4 096-span queue under about 6.5 MiB, whatever URLs clients send (a request head may be
/// 60 KiB).
pub const DEFAULT_MAX_URL_TAG_LENGTH: u32 = 1024;

/// The range of `maxUrlTagLength`: below 32 bytes not even `scheme://host` fits; above 8 KiB a
/// full queue of spans would hold tens of MiB for URLs no trace viewer shows whole.
pub const MAX_URL_TAG_LENGTH_RANGE: std::ops::RangeInclusive<u32> = 32..=8192;

impl Default for Tracing {
    fn default() -> Self {
        Self {
            enable: false,
            address: "jaeger.mesh-system.svc.cluster.local".into(),
            port: 9411,
            endpoint: "/api/v2/spans".into(),
            protocol: Protocol::Zipkin,
            sampled_fraction: 1.0,
            propagation: PropagationFormat::ALL.to_vec(),
            max_url_tag_length: DEFAULT_MAX_URL_TAG_LENGTH,
            stitching: Stitching::default(),
        }
    }
}

/// A trace-context format a hop writes. Both by default, so apps that only read one of them
/// (Zipkin's brave and Envoy: B3; OpenTelemetry's default propagator: W3C) join one trace.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum PropagationFormat {
    /// `x-b3-traceid`, `x-b3-spanid`, `x-b3-parentspanid`, `x-b3-sampled`, `x-b3-flags`.
    B3multi,
    /// W3C `traceparent` and `tracestate`.
    Tracecontext,
}

impl PropagationFormat {
    pub const ALL: [PropagationFormat; 2] =
        [PropagationFormat::B3multi, PropagationFormat::Tracecontext];

    pub const fn as_str(self) -> &'static str {
        match self {
            PropagationFormat::B3multi => "b3multi",
            PropagationFormat::Tracecontext => "tracecontext",
        }
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum Protocol {
    /// Zipkin v2 JSON over HTTP.
    #[default]
    Zipkin,
    /// OTLP protobuf over HTTP (usually port 4318, `/v1/traces`).
    OtlpHttp,
    /// OTLP over gRPC (usually port 4317).
    OtlpGrpc,
}

impl Protocol {
    pub const ALL: [Protocol; 3] = [Protocol::Zipkin, Protocol::OtlpHttp, Protocol::OtlpGrpc];

    pub const fn as_str(self) -> &'static str {
        match self {
            Protocol::Zipkin => "zipkin",
            Protocol::OtlpHttp => "otlp-http",
            Protocol::OtlpGrpc => "otlp-grpc",
        }
    }
}

/// How an outbound request without trace context is made the child of an inbound request in
/// flight in the same pod. Requests that carry context are never touched.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum Stitching {
    /// Nothing is stitched.
    Off,
    /// A request whose `x-request-id` equals that of an inbound request in flight.
    #[default]
    RequestId,
    /// As `request-id`, and also a request made while exactly one inbound request is in flight.
    InFlight,
}

impl Stitching {
    pub const ALL: [Stitching; 3] = [Stitching::Off, Stitching::RequestId, Stitching::InFlight];

    pub const fn as_str(self) -> &'static str {
        match self {
            Stitching::Off => "off",
            Stitching::RequestId => "request-id",
            Stitching::InFlight => "in-flight",
        }
    }
}

impl std::fmt::Display for Stitching {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Stitching {
    type Err = String;

    /// The MeshConfig spelling, for the `tracemesh.dev/stitching` annotation and the sidecar's
    /// `MESH_STITCHING` (where `off` is plain text, not a YAML boolean).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Stitching::ALL
            .into_iter()
            .find(|m| m.as_str() == s.trim())
            .ok_or_else(|| {
                format!(
                    "unknown stitching mode {s:?} (expected {})",
                    Stitching::ALL.map(Stitching::as_str).join(", ")
                )
            })
    }
}

impl std::fmt::Display for Protocol {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", default)]
pub struct Traffic {
    /// Ports never redirected to the sidecar inbound.
    #[schemars(inner(range(min = PORT_MIN, max = PORT_MAX)))]
    pub inbound_port_exclusion_list: Vec<u16>,
    /// Ports never redirected to the sidecar outbound.
    #[schemars(inner(range(min = PORT_MIN, max = PORT_MAX)))]
    pub outbound_port_exclusion_list: Vec<u16>,
    /// CIDRs never redirected outbound, each with its prefix length (`10.0.0.0/8`,
    /// `169.254.169.254/32`, `fd00::/8`).
    // camelCase would spell it `outboundIpRange...`; FSM's name wins.
    #[serde(rename = "outboundIPRangeExclusionList")]
    #[schemars(inner(regex(pattern = openapi::cidr_pattern())))]
    pub outbound_ip_range_exclusion_list: Vec<String>,
    /// Server-speaks-first ports, proxied without protocol detection (where the client does
    /// not speak first, detection would only add delay).
    #[schemars(inner(range(min = PORT_MIN, max = PORT_MAX)))]
    pub opaque_ports: Vec<u16>,
}

impl Default for Traffic {
    fn default() -> Self {
        Self {
            inbound_port_exclusion_list: Vec::new(),
            outbound_port_exclusion_list: Vec::new(),
            outbound_ip_range_exclusion_list: Vec::new(),
            opaque_ports: vec![25, 587, 3306, 4444, 5432, 6379, 9300, 11211],
        }
    }
}

/// The sidecar's own settings: logging, and the timeouts and limits that bound what a slow,
/// dead or hostile peer can hold. Each default's reason is beside it in [`Sidecar::default`];
/// the README lists them for users. Changes apply to connections accepted after them.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", default)]
pub struct Sidecar {
    /// The least severe level the sidecar logs.
    pub log_level: LogLevel,
    /// Time a client has to send a whole HTTP/1 request head, from its first byte (or from
    /// the connection's start for its first request). Cuts slowloris clients.
    pub header_read_timeout: Duration,
    /// An HTTP connection with no request in flight and no bytes moving for this long is
    /// closed (downstream keep-alive connections).
    pub http_idle_timeout: Duration,
    /// Opaque TCP, CONNECT tunnels and upgraded (WebSocket) connections with no bytes in
    /// either direction for this long are closed.
    pub tcp_idle_timeout: Duration,
    /// HTTP/2 PING interval on downstream and upstream connections with streams open; `0s`
    /// turns pings off.
    pub http2_keepalive_interval: Duration,
    /// A PING unanswered for this long closes the connection: its streams fail, the next
    /// request gets a new connection.
    pub http2_keepalive_timeout: Duration,
    /// Time an upstream has to accept a TCP connection (504 past it).
    pub connect_timeout: Duration,
    /// Time from sending a request upstream to its response headers (504 past it); `0s`, the
    /// default, means no limit, so long polls and streams live.
    pub response_timeout: Duration,
    /// Downstream connections held at once across the proxy listeners; beyond it new
    /// connections are accepted and closed at once, and counted.
    #[schemars(range(min = 1, max = MAX_COUNT))]
    pub max_connections: u32,
    /// Upstream connections held at once to one destination address; beyond it a request
    /// gets 503 and a TCP connection is reset.
    #[schemars(range(min = 1, max = MAX_COUNT))]
    pub max_connections_per_destination: u32,
    /// HTTP/2 connections the sidecar opens to one destination address as its streams grow,
    /// so a balancer that spreads per connection (kube-proxy) sees more than one; they count
    /// towards `maxConnectionsPerDestination` too.
    #[schemars(range(min = 1, max = MAX_HTTP2_CONNECTIONS))]
    pub http2_connections_per_destination: u32,
    /// After SIGTERM the sidecar keeps accepting for this long (reporting not ready) while
    /// endpoints converge, then stops accepting and drains (Istio's name).
    pub termination_drain_duration: Duration,
}

impl Sidecar {
    /// Also the proxy's fallback where no MeshConfig applies (its reason is in `default`).
    pub const DEFAULT_CONNECT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);
}

impl Default for Sidecar {
    fn default() -> Self {
        Self {
            log_level: LogLevel::default(),
            // Go's http.Server users commonly set ReadHeaderTimeout to 10 s: far beyond any
            // honest client's head, short enough that a slowloris holds little for long.
            header_read_timeout: Duration::from_secs(10),
            // Envoy's default HTTP connection idle timeout (1 h): apps pool keep-alive
            // connections for minutes, and closing one under them causes retry races.
            http_idle_timeout: Duration::from_secs(3600),
            // Envoy's tcp_proxy default idle timeout (1 h): database and WebSocket sessions
            // may be quiet for long, but a dead peer must not hold a slot forever.
            tcp_idle_timeout: Duration::from_secs(3600),
            // Linkerd pings HTTP/2 peers every 10 s; with the 20 s timeout a dead node is
            // noticed within 30 s instead of the kernel's ~15 min retransmission limit.
            http2_keepalive_interval: Duration::from_secs(10),
            // gRPC's default keepalive timeout (20 s): a busy peer's ACK may queue behind
            // large DATA frames, so a shorter wait would cut healthy connections.
            http2_keepalive_timeout: Duration::from_secs(20),
            // Envoy's scale for cluster connect timeouts: long enough for a pod starting under
            // load, short enough that a black-holed address fails before the client gives up.
            connect_timeout: Duration(Self::DEFAULT_CONNECT_TIMEOUT),
            // Istio's route timeout is off by default: long polls, streams and slow batch
            // endpoints are legitimate, and only the app knows its deadlines.
            response_timeout: Duration::ZERO,
            // Far above any honest pod's concurrent connections (each takes two descriptors,
            // well inside a container's usual 1M descriptor limit), low enough that a flood
            // cannot exhaust the process's memory or descriptors.
            max_connections: 10_000,
            // Envoy's default circuit-breaker max_connections per cluster (1024).
            max_connections_per_destination: 1024,
            // A few connections spread a gRPC client's streams over a few backends behind a
            // Service (kube-proxy picks a backend per connection); a new one opens only when
            // every open one carries its stream target, so a quiet pod still holds one.
            http2_connections_per_destination: 4,
            // Istio's default terminationDrainDuration (5 s): enough for endpoint removal to
            // reach the callers' proxies in a typical cluster.
            termination_drain_duration: Duration::from_secs(5),
        }
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum LogLevel {
    Error,
    Warn,
    #[default]
    Info,
    Debug,
    Trace,
}

impl LogLevel {
    pub const fn as_str(self) -> &'static str {
        match self {
            LogLevel::Error => "error",
            LogLevel::Warn => "warn",
            LogLevel::Info => "info",
            LogLevel::Debug => "debug",
            LogLevel::Trace => "trace",
        }
    }
}

fn default_api_version() -> String {
    API_VERSION.into()
}
fn default_kind() -> String {
    KIND.into()
}
fn default_name() -> String {
    DEFAULT_NAME.into()
}
fn default_namespace() -> String {
    DEFAULT_NAMESPACE.into()
}
