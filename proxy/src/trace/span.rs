//! One hop's span: what is recorded while the request runs, and its two wire shapes (Zipkin v2
//! with Envoy's tag names, OTLP with OpenTelemetry semantic conventions).

use std::borrow::Cow;
use std::net::SocketAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use opentelemetry::trace::{SpanContext, SpanKind, Status, TraceFlags, TraceState};
use opentelemetry::{InstrumentationScope, KeyValue};
use opentelemetry_sdk::trace::SpanData;
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
    /// `scheme://host/path?query`, copied so the span pins none of the request's buffers;
    /// `host` and `path` are ranges of it.
    url: InlineText,
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
        self.url.as_str()
    }

    /// [`Self::url`], [`Self::host`] and [`Self::path`] as bytes, for the encoders: the text
    /// is UTF-8 by construction (built from whole `str`s), so it is not checked again per span.
    pub fn url_host_path_bytes(&self) -> (&[u8], &[u8], &[u8]) {
        let url = self.url.as_bytes();
        let host = url.get(self.host.clone()).unwrap_or_default();
        let path = url.get(self.path.clone()).unwrap_or_default();
        (url, host, path)
    }

    /// Where the request said it was going: the URI's authority, else the `Host` header, else
    /// the address it was forwarded to.
    pub fn host(&self) -> &str {
        self.url().get(self.host.clone()).unwrap_or_default()
    }

    /// The path without the query, for the span name.
    pub fn path(&self) -> &str {
        self.url().get(self.path.clone()).unwrap_or_default()
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

/// Text held inline up to [`INLINE_TEXT`] bytes, as nearly every URL is: a span then owns no
/// heap memory for the export thread to free, and allocating on one thread while freeing on
/// another is the slow path of most allocators.
#[derive(Debug, Default)]
struct InlineText(smallvec::SmallVec<[u8; INLINE_TEXT]>);

const INLINE_TEXT: usize = 128;

impl InlineText {
    fn push_str(&mut self, s: &str) {
        self.0.extend_from_slice(s.as_bytes());
    }

    fn len(&self) -> usize {
        self.0.len()
    }

    fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    fn as_str(&self) -> &str {
        // Only ever built from whole `str`s, so always UTF-8.
        std::str::from_utf8(&self.0).unwrap_or_default()
    }
}

impl std::fmt::Write for InlineText {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        self.push_str(s);
        Ok(())
    }
}

/// The URL as one string, with the ranges of its host and of its path (without the query).
fn url_of(
    uri: &http::Uri,
    headers: &http::HeaderMap,
    upstream: SocketAddr,
) -> (InlineText, std::ops::Range<usize>, std::ops::Range<usize>) {
    use std::fmt::Write;
    let scheme = uri.scheme_str().unwrap_or("http");
    let path_and_query = uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
    let header_host = || {
        headers
            .get(http::header::HOST)
            .and_then(|h| h.to_str().ok())
    };
    let mut url = InlineText::default();
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

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use trace_context::{SpanId, TraceId};

    fn record(direction: Direction, status: u16) -> SpanRecord {
        fixture(direction, "http://b.default:8080/api/items?x=1", status)
    }

    /// A finished span: fixed ids (64-bit trace), 10.0.0.1:4000 calling 10.0.0.2:8080, 1.5 ms,
    /// 3 bytes in and 42 out, started at a fixed time.
    pub(crate) fn fixture(direction: Direction, uri: &str, status: u16) -> SpanRecord {
        let (parts, _) = http::Request::get(uri).body(()).unwrap().into_parts();
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
            UNIX_EPOCH + Duration::from_micros(1_700_000_000_123_456),
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
    fn five_hundreds_and_proxy_errors_are_marked() {
        assert!(record(Direction::Outbound, 503).is_error());
        assert_eq!(
            record(Direction::Outbound, 503).error_text().as_deref(),
            Some("503")
        );
        let mut r = record(Direction::Outbound, 200);
        r.outcome.status = None;
        r.outcome.error = Some("connection refused".into());
        assert!(r.is_error());
        assert_eq!(r.error_text().as_deref(), Some("connection refused"));
        assert!(!record(Direction::Outbound, 404).is_error());
    }

    #[test]
    fn url_host_and_path_come_from_the_request() {
        let r = record(Direction::Outbound, 200);
        assert_eq!(r.url(), "http://b.default:8080/api/items?x=1");
        assert_eq!(r.host(), "b.default:8080");
        assert_eq!(r.path(), "/api/items");
        assert_eq!(r.name(), "GET /api/items");
        let (parts, _) = http::Request::get("/Api/ITEMS?X=1")
            .header("host", "b:80")
            .body(())
            .unwrap()
            .into_parts();
        let r = SpanRecord::begin(Direction::Inbound, &parts, r.ids, false, r.peer, r.upstream);
        assert_eq!(r.url(), "http://b:80/Api/ITEMS?X=1");
        assert_eq!(r.host(), "b:80");
        assert_eq!(r.path(), "/Api/ITEMS");
        // No authority and no Host: the address the request was forwarded to.
        let (parts, _) = http::Request::get("/").body(()).unwrap().into_parts();
        let r = SpanRecord::begin(Direction::Inbound, &parts, r.ids, false, r.peer, r.upstream);
        assert_eq!(r.url(), "http://10.0.0.2:8080/");
        assert_eq!(r.host(), "10.0.0.2:8080");
        // Longer than the inline buffer: kept whole on the heap.
        let long = format!("/{}?q={}", "p".repeat(150), "v".repeat(100));
        let (parts, _) = http::Request::get(long.as_str())
            .header("host", "b:80")
            .body(())
            .unwrap()
            .into_parts();
        let r = SpanRecord::begin(Direction::Inbound, &parts, r.ids, false, r.peer, r.upstream);
        assert!(r.url().len() > INLINE_TEXT);
        assert_eq!(r.url(), format!("http://b:80{long}"));
        assert_eq!(r.path(), format!("/{}", "p".repeat(150)));
        assert_eq!(r.host(), "b:80");
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
