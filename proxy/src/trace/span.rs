//! One hop's span: what is recorded while the request runs, and its two wire shapes (Zipkin v2
//! with Envoy's tag names, OTLP with OpenTelemetry semantic conventions).

use std::borrow::Cow;
use std::net::SocketAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use opentelemetry::trace::{SpanContext, SpanKind, Status, TraceFlags, TraceState};
use opentelemetry::{InstrumentationScope, KeyValue};
use opentelemetry_sdk::trace::SpanData;
use serde::ser::{Serialize, SerializeMap, Serializer};
use serde_json::Value;
use trace_context::SpanIds;

use super::{Direction, Outcome};

/// A finished (or running) span. Kept compact and protocol-neutral; attribute names are chosen
/// at export time.
#[derive(Debug)]
pub struct SpanRecord {
    pub direction: Direction,
    pub ids: SpanIds,
    pub debug: bool,
    pub method: http::Method,
    /// `scheme://host/path?query` in one allocation, copied so the span pins none of the
    /// request's buffers; `host` and `path` are ranges of it.
    url: String,
    host: std::ops::Range<usize>,
    path: std::ops::Range<usize>,
    pub peer: SocketAddr,
    pub upstream: SocketAddr,
    pub http2: bool,
    pub start: SystemTime,
    pub duration: Duration,
    pub outcome: Outcome,
}

impl SpanRecord {
    /// Captures what the request says about itself before it is forwarded.
    pub fn begin(
        direction: Direction,
        request: &http::request::Parts,
        ids: SpanIds,
        debug: bool,
        peer: SocketAddr,
        upstream: SocketAddr,
    ) -> Self {
        let (url, host, path) = url_of(&request.uri, &request.headers, upstream);
        Self {
            direction,
            ids,
            debug,
            method: request.method.clone(),
            url,
            host,
            path,
            peer,
            upstream,
            http2: request.version == http::Version::HTTP_2,
            // Set by `end`, with the wall clock read when the span started.
            start: UNIX_EPOCH,
            duration: Duration::ZERO,
            outcome: Outcome::default(),
        }
    }

    /// `scheme://host/path?query`.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Where the request said it was going: the URI's authority, else the `Host` header, else
    /// the address it was forwarded to.
    pub fn host(&self) -> &str {
        &self.url[self.host.clone()]
    }

    /// The path without the query, for the span name.
    pub fn path(&self) -> &str {
        &self.url[self.path.clone()]
    }

    /// Records the outcome. `start` is the wall clock at start (for the timestamp), `duration`
    /// from a monotonic clock.
    pub fn end(&mut self, start: SystemTime, duration: Duration, outcome: Outcome) {
        self.start = start;
        self.duration = duration;
        self.outcome = outcome;
    }

    pub fn name(&self) -> String {
        format!("{} {}", self.method, self.path())
    }

    /// An error span: the proxy failed the request, or the answer was a 5xx.
    pub fn is_error(&self) -> bool {
        self.outcome.error.is_some() || self.outcome.status.is_some_and(|s| s.is_server_error())
    }

    fn error_text(&self) -> Option<String> {
        match (&self.outcome.error, self.outcome.status) {
            (Some(e), _) => Some(e.clone()),
            (None, Some(s)) if s.is_server_error() => Some(s.as_u16().to_string()),
            _ => None,
        }
    }

    /// Envoy's `upstream_cluster` analogue: where the request went.
    fn upstream_cluster(&self) -> String {
        match self.direction {
            Direction::Inbound => format!("inbound|{}", self.upstream.port()),
            Direction::Outbound => format!("outbound|{}", self.host()),
        }
    }

    /// The Zipkin v2 JSON span as a value (what [`SpanRecord::write_zipkin`] writes).
    pub fn to_zipkin(&self, service_name: &str, local_ip: Option<std::net::IpAddr>) -> Value {
        serde_json::to_value(Zipkin {
            span: self,
            service: service_name,
            local_ip,
        })
        .unwrap_or(Value::Null)
    }

    /// Appends the Zipkin v2 JSON span (zipkin2 API schema: lower-hex ids, microsecond
    /// timestamps) to `out`, straight from the record: no intermediate JSON tree or strings.
    pub fn write_zipkin(
        &self,
        out: &mut Vec<u8>,
        service_name: &str,
        local_ip: Option<std::net::IpAddr>,
    ) -> serde_json::Result<()> {
        serde_json::to_writer(
            out,
            &Zipkin {
                span: self,
                service: service_name,
                local_ip,
            },
        )
    }

    /// The OpenTelemetry SDK form, for the OTLP exporters (semantic-convention attributes).
    pub fn to_span_data(&self, scope: &InstrumentationScope) -> SpanData {
        let trace_id = opentelemetry::trace::TraceId::from_bytes(
            ((u128::from(self.ids.trace_id.high()) << 64) | u128::from(self.ids.trace_id.low()))
                .to_be_bytes(),
        );
        let span_id =
            opentelemetry::trace::SpanId::from_bytes(self.ids.span_id.get().to_be_bytes());
        let parent = self
            .ids
            .parent_id
            .map(|p| opentelemetry::trace::SpanId::from_bytes(p.get().to_be_bytes()))
            .unwrap_or(opentelemetry::trace::SpanId::INVALID);

        let mut attributes = vec![
            KeyValue::new("http.request.method", self.method.to_string()),
            KeyValue::new("url.full", self.url().to_owned()),
            KeyValue::new(
                "network.protocol.version",
                if self.http2 { "2" } else { "1.1" },
            ),
            KeyValue::new("network.peer.address", self.peer.ip().to_string()),
            KeyValue::new("network.peer.port", i64::from(self.peer.port())),
            KeyValue::new("server.address", self.host().to_owned()),
            KeyValue::new("http.request.body.size", self.outcome.request_size as i64),
            KeyValue::new("http.response.body.size", self.outcome.response_size as i64),
            KeyValue::new("upstream_cluster", self.upstream_cluster()),
        ];
        if let Some(s) = self.outcome.status {
            attributes.push(KeyValue::new(
                "http.response.status_code",
                i64::from(s.as_u16()),
            ));
        }
        let status = match self.error_text() {
            Some(e) => {
                attributes.push(KeyValue::new("error.type", e.clone()));
                Status::Error {
                    description: Cow::Owned(e),
                }
            }
            None => Status::Unset,
        };
        SpanData {
            span_context: SpanContext::new(
                trace_id,
                span_id,
                TraceFlags::SAMPLED,
                false,
                TraceState::default(),
            ),
            parent_span_id: parent,
            parent_span_is_remote: self.ids.parent_id.is_some(),
            span_kind: match self.direction {
                Direction::Inbound => SpanKind::Server,
                Direction::Outbound => SpanKind::Client,
            },
            name: Cow::Owned(self.name()),
            start_time: self.start,
            end_time: self.start + self.duration,
            attributes,
            dropped_attributes_count: 0,
            events: Default::default(),
            links: Default::default(),
            status,
            instrumentation_scope: scope.clone(),
        }
    }
}

/// One span in Zipkin v2 JSON form, serialised field by field (keys in sorted order).
struct Zipkin<'a> {
    span: &'a SpanRecord,
    service: &'a str,
    local_ip: Option<std::net::IpAddr>,
}

impl Serialize for Zipkin<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let r = self.span;
        let mut map = serializer.serialize_map(None)?;
        if r.debug {
            map.serialize_entry("debug", &true)?;
        }
        // zipkin2 requires a duration of at least 1 µs when present.
        map.serialize_entry("duration", &(r.duration.as_micros() as u64).max(1))?;
        map.serialize_entry("id", r.ids.span_id.encode().as_str())?;
        let kind = match r.direction {
            Direction::Inbound => "SERVER",
            Direction::Outbound => "CLIENT",
        };
        map.serialize_entry("kind", kind)?;
        map.serialize_entry(
            "localEndpoint",
            &LocalEndpoint {
                service: self.service,
                ip: self.local_ip,
            },
        )?;
        map.serialize_entry(
            "name",
            &Lowercase(format_args!("{} {}", r.method, r.path())),
        )?;
        if let Some(parent) = r.ids.parent_id {
            map.serialize_entry("parentId", parent.encode().as_str())?;
        }
        // The other side of the hop: the caller for a SERVER span, the upstream for a CLIENT.
        let remote = match r.direction {
            Direction::Inbound => r.peer,
            Direction::Outbound => r.upstream,
        };
        map.serialize_entry("remoteEndpoint", &RemoteEndpoint(remote))?;
        map.serialize_entry("tags", &ZipkinTags(r))?;
        map.serialize_entry("timestamp", &micros_since_epoch(r.start))?;
        map.serialize_entry("traceId", r.ids.trace_id.encode().as_str())?;
        map.end()
    }
}

struct LocalEndpoint<'a> {
    service: &'a str,
    ip: Option<std::net::IpAddr>,
}

impl Serialize for LocalEndpoint<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(None)?;
        match self.ip {
            Some(ip @ std::net::IpAddr::V4(_)) => map.serialize_entry("ipv4", &Shown(ip))?,
            Some(ip @ std::net::IpAddr::V6(_)) => map.serialize_entry("ipv6", &Shown(ip))?,
            None => {}
        }
        map.serialize_entry("serviceName", self.service)?;
        map.end()
    }
}

struct RemoteEndpoint(SocketAddr);

impl Serialize for RemoteEndpoint {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(None)?;
        let family = if self.0.is_ipv4() { "ipv4" } else { "ipv6" };
        map.serialize_entry(family, &Shown(self.0.ip()))?;
        map.serialize_entry("port", &self.0.port())?;
        map.end()
    }
}

/// Envoy's tag names; every value is a string.
struct ZipkinTags<'a>(&'a SpanRecord);

impl Serialize for ZipkinTags<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let r = self.0;
        let mut map = serializer.serialize_map(None)?;
        match (&r.outcome.error, r.outcome.status) {
            (Some(e), _) => map.serialize_entry("error", e)?,
            (None, Some(s)) if s.is_server_error() => {
                map.serialize_entry("error", &Shown(s.as_u16()))?
            }
            _ => {}
        }
        map.serialize_entry("http.method", r.method.as_str())?;
        let protocol = if r.http2 { "HTTP/2" } else { "HTTP/1.1" };
        map.serialize_entry("http.protocol", protocol)?;
        if let Some(s) = r.outcome.status {
            map.serialize_entry("http.status_code", &Shown(s.as_u16()))?;
        }
        map.serialize_entry("http.url", r.url())?;
        map.serialize_entry("peer.address", &Shown(r.peer))?;
        map.serialize_entry("request_size", &Shown(r.outcome.request_size))?;
        map.serialize_entry("response_size", &Shown(r.outcome.response_size))?;
        match r.direction {
            Direction::Inbound => map.serialize_entry(
                "upstream_cluster",
                &Shown(format_args!("inbound|{}", r.upstream.port())),
            )?,
            Direction::Outbound => map.serialize_entry(
                "upstream_cluster",
                &Shown(format_args!("outbound|{}", r.host())),
            )?,
        }
        map.end()
    }
}

/// A JSON string written from `Display`, without an intermediate `String`.
struct Shown<T>(T);

impl<T: std::fmt::Display> Serialize for Shown<T> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(&self.0)
    }
}

/// A JSON string of the lowercased `Display` output, written without an intermediate `String`.
/// Methods and URI paths are ASCII, for which this equals `str::to_lowercase`.
struct Lowercase<T>(T);

impl<T: std::fmt::Display> Serialize for Lowercase<T> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<T: std::fmt::Display> std::fmt::Display for Lowercase<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        use std::fmt::Write;
        write!(LowercaseWriter(f), "{}", self.0)
    }
}

struct LowercaseWriter<'a, 'b>(&'a mut std::fmt::Formatter<'b>);

impl std::fmt::Write for LowercaseWriter<'_, '_> {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        if !s.chars().any(char::is_uppercase) {
            return self.0.write_str(s);
        }
        for c in s.chars() {
            for lower in c.to_lowercase() {
                self.0.write_char(lower)?;
            }
        }
        Ok(())
    }
}

/// The URL as one string, with the ranges of its host and of its path (without the query).
fn url_of(
    uri: &http::Uri,
    headers: &http::HeaderMap,
    upstream: SocketAddr,
) -> (String, std::ops::Range<usize>, std::ops::Range<usize>) {
    use std::fmt::Write;
    let scheme = uri.scheme_str().unwrap_or("http");
    let path_and_query = uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
    let header_host = || {
        headers
            .get(http::header::HOST)
            .and_then(|h| h.to_str().ok())
    };
    let mut url = String::with_capacity(scheme.len() + 3 + 32 + path_and_query.len());
    url.push_str(scheme);
    url.push_str("://");
    let host_start = url.len();
    match uri.authority().map(|a| a.as_str()).or_else(header_host) {
        Some(h) => url.push_str(h),
        None => {
            let _ = write!(url, "{upstream}");
        }
    }
    let host_end = url.len();
    url.push_str(path_and_query);
    // `Uri::path` is empty without a path (authority form), else a prefix of path-and-query.
    let path_len = if path_and_query.starts_with(uri.path()) {
        uri.path().len()
    } else {
        0
    };
    (url, host_start..host_end, host_end..host_end + path_len)
}

fn micros_since_epoch(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use trace_context::{SpanId, TraceId};

    fn record(direction: Direction, status: u16) -> SpanRecord {
        let req = http::Request::get("http://b.default:8080/api/items?x=1")
            .body(())
            .unwrap();
        let (parts, _) = req.into_parts();
        let ids = SpanIds {
            trace_id: TraceId::parse(b"48485a3953bb6124").unwrap(),
            span_id: SpanId::parse(b"a2fb4a1d1a96d312").unwrap(),
            parent_id: SpanId::parse(b"0020000000000001"),
        };
        let mut r = SpanRecord::begin(
            direction,
            &parts,
            ids,
            false,
            "10.0.0.1:4000".parse().unwrap(),
            "10.0.0.2:8080".parse().unwrap(),
        );
        r.end(
            SystemTime::now(),
            Duration::from_micros(1500),
            Outcome {
                status: http::StatusCode::from_u16(status).ok(),
                error: None,
                request_size: 3,
                response_size: 42,
            },
        );
        r
    }

    #[test]
    fn zipkin_server_span_has_envoy_tags() {
        let z = record(Direction::Inbound, 200)
            .to_zipkin("b.default", Some("10.0.0.2".parse().unwrap()));
        assert_eq!(z["kind"], "SERVER");
        assert_eq!(z["traceId"], "48485a3953bb6124");
        assert_eq!(z["id"], "a2fb4a1d1a96d312");
        assert_eq!(z["parentId"], "0020000000000001");
        assert_eq!(z["localEndpoint"]["serviceName"], "b.default");
        assert_eq!(z["duration"], 1500);
        let tags = &z["tags"];
        assert_eq!(tags["http.method"], "GET");
        assert_eq!(tags["http.url"], "http://b.default:8080/api/items?x=1");
        assert_eq!(tags["http.status_code"], "200");
        assert_eq!(tags["upstream_cluster"], "inbound|8080");
        assert_eq!(tags["peer.address"], "10.0.0.1:4000");
        assert_eq!(tags["request_size"], "3");
        assert_eq!(tags["response_size"], "42");
        assert!(tags.get("error").is_none());
        assert!(z["timestamp"].as_u64().unwrap() > 1_600_000_000_000_000);
    }

    #[test]
    fn five_hundreds_and_proxy_errors_are_marked() {
        let z = record(Direction::Outbound, 503).to_zipkin("a.default", None);
        assert_eq!(z["kind"], "CLIENT");
        assert_eq!(z["tags"]["error"], "503");
        let mut r = record(Direction::Outbound, 200);
        r.outcome.status = None;
        r.outcome.error = Some("connection refused".into());
        assert!(r.is_error());
        assert_eq!(
            r.to_zipkin("a", None)["tags"]["error"],
            "connection refused"
        );
        assert!(!record(Direction::Outbound, 404).is_error());
    }

    #[test]
    fn written_zipkin_is_the_same_json() {
        let mut r = record(Direction::Outbound, 503);
        r.debug = true;
        r.outcome.error = Some("upstream \"reset\"".into());
        let mut out = Vec::new();
        r.write_zipkin(&mut out, "a.default", Some("::1".parse().unwrap()))
            .unwrap();
        let v: Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v, r.to_zipkin("a.default", Some("::1".parse().unwrap())));
        assert_eq!(v["debug"], true);
        assert_eq!(v["name"], "get /api/items");
        let (parts, _) = http::Request::get("/Api/ITEMS?X=1")
            .header("host", "b:80")
            .body(())
            .unwrap()
            .into_parts();
        let r = SpanRecord::begin(Direction::Inbound, &parts, r.ids, false, r.peer, r.upstream);
        assert_eq!(r.url(), "http://b:80/Api/ITEMS?X=1");
        assert_eq!(r.host(), "b:80");
        assert_eq!(r.path(), "/Api/ITEMS");
        assert_eq!(r.to_zipkin("a", None)["name"], "get /api/items");
        let (parts, _) = http::Request::get("/").body(()).unwrap().into_parts();
        let r = SpanRecord::begin(Direction::Inbound, &parts, r.ids, false, r.peer, r.upstream);
        assert_eq!(r.url(), "http://10.0.0.2:8080/");
        assert_eq!(v["localEndpoint"]["ipv6"], "::1");
        assert_eq!(v["remoteEndpoint"]["ipv4"], "10.0.0.2");
        assert_eq!(v["remoteEndpoint"]["port"], 8080);
        assert_eq!(v["tags"]["error"], "upstream \"reset\"");
        assert_eq!(v["tags"]["upstream_cluster"], "outbound|b.default:8080");
        assert_eq!(v["tags"]["http.protocol"], "HTTP/1.1");
    }

    #[test]
    fn otlp_span_uses_semconv() {
        let d = record(Direction::Outbound, 500)
            .to_span_data(&InstrumentationScope::builder("mesh-proxy").build());
        assert_eq!(d.span_kind, SpanKind::Client);
        assert_eq!(d.span_context.span_id().to_string(), "a2fb4a1d1a96d312");
        assert_eq!(
            d.span_context.trace_id().to_string(),
            "000000000000000048485a3953bb6124"
        );
        assert_eq!(d.parent_span_id.to_string(), "0020000000000001");
        let attr = |k: &str| {
            d.attributes
                .iter()
                .find(|kv| kv.key.as_str() == k)
                .map(|kv| kv.value.to_string())
        };
        assert_eq!(attr("http.request.method").as_deref(), Some("GET"));
        assert_eq!(attr("http.response.status_code").as_deref(), Some("500"));
        assert_eq!(
            attr("url.full").as_deref(),
            Some("http://b.default:8080/api/items?x=1")
        );
        assert!(matches!(d.status, Status::Error { .. }));
    }
}
