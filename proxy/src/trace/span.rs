//! One hop's span: what is recorded while the request runs, protocol-neutral. Its two wire
//! shapes are [`super::zipkin`] (Envoy's tag names) and [`super::otlp`] (OpenTelemetry's
//! semantic conventions).
//!
//! What a span keeps is bounded whatever the request carries: the URL is cut to
//! `maxUrlTagLength` bytes and loses any `user:pass@`, the method is kept only when it is one
//! of HTTP's own (any other is a short prefix), and the name is the method, never the path, so
//! a trace backend's operation index holds a handful of names rather than one per URL.

use std::borrow::Cow;
use std::net::SocketAddr;
use std::ops::Range;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use trace_context::SpanIds;

use super::{Direction, Outcome};

/// A finished (or running) span. Kept compact and protocol-neutral; attribute names are chosen
/// at export time.
///
/// Memory per queued span, whatever the request carried: `size_of::<SpanRecord>()` (408
/// bytes today, at most 512 by a test), plus the URL on the heap only when it is longer than
/// [`INLINE_TEXT`] (at most `maxUrlTagLength`: 1 KiB by default, 8 KiB at most; the error
/// reason is a `Copy` enum, no text): at most about 1.6 KiB with the defaults, so a full queue of
/// 4 096 spans holds at most about 6.5 MiB (34 MiB with an 8 KiB bound).
#[derive(Debug)]
pub struct SpanRecord {
    pub direction: Direction,
    pub ids: SpanIds,
    pub debug: bool,
    /// The request's method when it is a standard one; otherwise its first
    /// [`MAX_METHOD_LEN`] bytes (so never a heap allocation).
    pub method: http::Method,
    /// `scheme://host[:port]/path?query` without userinfo, cut to the configured bound and
    /// copied so the span pins none of the request's buffers; the other parts are ranges of it.
    url: InlineText,
    scheme: Range<usize>,
    host: Range<usize>,
    path: Range<usize>,
    /// Empty when the URL has no query (or it was cut off).
    query: Range<usize>,
    pub peer: SocketAddr,
    pub upstream: SocketAddr,
    pub http2: bool,
    /// The request is gRPC (by its content type): the span carries the RPC attributes and
    /// its error follows the gRPC status.
    pub grpc: bool,
    pub start: SystemTime,
    pub duration: Duration,
    pub outcome: Outcome,
    /// How this span was joined to its parent when the app sent no trace context.
    pub stitch: Option<super::stitch::Stitch>,
}

/// Extension methods are kept to this many bytes: `http::Method` holds up to 15 inline, and a
/// method is a token of a few letters (WebDAV's longest, `VERSION-CONTROL`, is 15).
pub const MAX_METHOD_LEN: usize = 15;

impl SpanRecord {
    /// [`Self::begin_limited`] with the default URL bound (`maxUrlTagLength`'s default).
    pub fn begin(
        direction: Direction,
        request: &http::request::Parts,
        ids: SpanIds,
        debug: bool,
        peer: SocketAddr,
        upstream: SocketAddr,
    ) -> Self {
        let max_url = mesh_config::DEFAULT_MAX_URL_TAG_LENGTH as usize;
        Self::begin_limited(direction, request, ids, debug, peer, upstream, max_url)
    }

    /// Captures what the request says about itself before it is forwarded, keeping at most
    /// `max_url` bytes of its URL.
    pub fn begin_limited(
        direction: Direction,
        request: &http::request::Parts,
        ids: SpanIds,
        debug: bool,
        peer: SocketAddr,
        upstream: SocketAddr,
        max_url: usize,
    ) -> Self {
        let url = Url::of(&request.uri, &request.headers, upstream, max_url);
        Self {
            direction,
            ids,
            debug,
            method: bounded_method(&request.method),
            url: url.text,
            scheme: url.scheme,
            host: url.host,
            path: url.path,
            query: url.query,
            peer,
            upstream,
            http2: request.version == http::Version::HTTP_2,
            grpc: super::grpc::is_grpc(&request.headers),
            // Set by `end`, with the wall clock read when the span started.
            start: UNIX_EPOCH,
            duration: Duration::ZERO,
            outcome: Outcome::default(),
            stitch: None,
        }
    }

    /// `scheme://host/path?query`, without userinfo, at most the configured bound.
    pub fn url(&self) -> &str {
        self.url.as_str()
    }

    /// [`Self::url`], [`Self::host`] and [`Self::path`] as bytes, for the encoders: the text
    /// is UTF-8 by construction (built from whole `str`s, cut on a character boundary), so it
    /// is not checked again per span.
    pub fn url_host_path_bytes(&self) -> (&[u8], &[u8], &[u8]) {
        let url = self.url.as_bytes();
        let host = url.get(self.host.clone()).unwrap_or_default();
        let path = url.get(self.path.clone()).unwrap_or_default();
        (url, host, path)
    }

    fn part(&self, range: &Range<usize>) -> &str {
        self.url().get(range.clone()).unwrap_or_default()
    }

    /// `http` or `https`.
    pub fn scheme(&self) -> &str {
        self.part(&self.scheme)
    }

    /// Where the request said it was going, `host[:port]`: the URI's authority (without
    /// userinfo), else the `Host` header, else the address it was forwarded to.
    pub fn host(&self) -> &str {
        self.part(&self.host)
    }

    /// The path without the query.
    pub fn path(&self) -> &str {
        self.part(&self.path)
    }

    /// The query without its `?` (as much as the bound kept); `None` when there is none.
    pub fn query(&self) -> Option<&str> {
        (!self.query.is_empty()).then(|| self.part(&self.query))
    }

    /// [`Self::host`] split into the name (an IPv6 literal without brackets) and the port;
    /// without an explicit port, the scheme's.
    pub fn server_address(&self) -> (&str, Option<u16>) {
        let host = self.host();
        let (name, port) = match host.rsplit_once(':') {
            // `[::1]:80`, `b:80`; a bare `::1` has colons but no brackets and no port.
            Some((name, port)) if !name.contains(':') || name.ends_with(']') => {
                (name, port.parse().ok())
            }
            _ => (host, None),
        };
        let name = name
            .strip_prefix('[')
            .and_then(|n| n.strip_suffix(']'))
            .unwrap_or(name);
        let default_port = match self.scheme() {
            "https" => Some(443),
            "http" => Some(80),
            _ => None,
        };
        (name, port.or(default_port))
    }

    /// Records the outcome. `start` is the wall clock at start (for the timestamp), `duration`
    /// from a monotonic clock.
    pub fn end(&mut self, start: SystemTime, duration: Duration, outcome: Outcome) {
        self.start = start;
        self.duration = duration;
        self.outcome = outcome;
    }

    /// The method when it is one of HTTP's own (RFC 9110 and PATCH), else `None`: such a
    /// method is what OpenTelemetry calls `_OTHER`, and never names a span.
    pub fn known_method(&self) -> Option<&'static str> {
        const KNOWN: [http::Method; 9] = [
            http::Method::GET,
            http::Method::HEAD,
            http::Method::POST,
            http::Method::PUT,
            http::Method::DELETE,
            http::Method::CONNECT,
            http::Method::OPTIONS,
            http::Method::TRACE,
            http::Method::PATCH,
        ];
        const NAMES: [&str; 9] = [
            "GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH",
        ];
        KNOWN
            .iter()
            .position(|m| *m == self.method)
            .map(|i| NAMES[i])
    }

    /// The span name in upper case: the method, or `HTTP` for any other method (the HTTP
    /// semantic conventions' rule). Never the path: names must come from a bounded set, or
    /// Jaeger's and Zipkin's operation indexes grow with every distinct URL.
    pub fn name(&self) -> &'static str {
        self.known_method().unwrap_or("HTTP")
    }

    /// An error span: the request did not complete (an [`super::ErrorReason`]), a gRPC status
    /// that is an error on this side (see [`super::grpc::is_error`]), a 5xx, or, on a CLIENT
    /// span, a 4xx (the client's request failed; the server did its job, so SERVER spans stay
    /// clean).
    pub fn is_error(&self) -> bool {
        self.error_text().is_some()
    }

    /// The short reason an error span carries: the [`super::ErrorReason`], else the gRPC
    /// status name (`NOT_FOUND`), else the HTTP status code. Always from a small closed set.
    pub fn error_text(&self) -> Option<Cow<'static, str>> {
        if let Some(reason) = self.outcome.error {
            return Some(Cow::Borrowed(reason.as_str()));
        }
        if let Some(code) = self.outcome.grpc_status {
            return super::grpc::is_error(code, self.direction)
                .then(|| Cow::Borrowed(super::grpc::code_name(code)));
        }
        match self.outcome.status {
            Some(s) if self.is_error_status(s) => Some(Cow::Owned(s.as_u16().to_string())),
            _ => None,
        }
    }

    /// `(service, method)` of a gRPC request, from its path.
    pub fn rpc(&self) -> Option<(&str, &str)> {
        self.grpc
            .then(|| super::grpc::service_method(self.path()))
            .flatten()
    }

    fn is_error_status(&self, s: http::StatusCode) -> bool {
        s.is_server_error() || (self.direction == Direction::Outbound && s.is_client_error())
    }
}

/// The method as is when standard (no allocation), else its first [`MAX_METHOD_LEN`] bytes.
fn bounded_method(method: &http::Method) -> http::Method {
    let bytes = method.as_str().as_bytes();
    if bytes.len() <= MAX_METHOD_LEN {
        return method.clone();
    }
    http::Method::from_bytes(&bytes[..MAX_METHOD_LEN]).unwrap_or(http::Method::GET)
}

/// Text held inline up to [`INLINE_TEXT`] bytes, as nearly every URL is: a span then owns no
/// heap memory for the export thread to free, and allocating on one thread while freeing on
/// another is the slow path of most allocators.
#[derive(Debug, Default)]
struct InlineText(smallvec::SmallVec<[u8; INLINE_TEXT]>);

const INLINE_TEXT: usize = 128;

impl InlineText {
    fn len(&self) -> usize {
        self.0.len()
    }

    fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    fn as_str(&self) -> &str {
        // Only ever built from whole `str`s cut on character boundaries, so always UTF-8.
        std::str::from_utf8(&self.0).unwrap_or_default()
    }
}

/// A URL being written under a byte bound: whatever does not fit is dropped, on a character
/// boundary, so a 60 KiB request line costs a span no more than the bound.
struct Url {
    text: InlineText,
    max: usize,
    scheme: Range<usize>,
    host: Range<usize>,
    path: Range<usize>,
    query: Range<usize>,
}

impl Url {
    /// The URL as one string, with the ranges of its parts. Userinfo (`user:pass@`, legal in
    /// absolute-form request targets) is left out: a credential must not reach a collector.
    fn of(uri: &http::Uri, headers: &http::HeaderMap, upstream: SocketAddr, max: usize) -> Self {
        let mut url = Url {
            text: InlineText::default(),
            max,
            scheme: 0..0,
            host: 0..0,
            path: 0..0,
            query: 0..0,
        };
        url.scheme = url.push(uri.scheme_str().unwrap_or("http"));
        url.push("://");
        url.host = match uri.authority() {
            Some(authority) => {
                let start = url.text.len();
                url.push(authority.host());
                if let Some(port) = authority.port() {
                    url.push(":");
                    url.push(port.as_str());
                }
                start..url.text.len()
            }
            None => match headers
                .get(http::header::HOST)
                .and_then(|h| h.to_str().ok())
            {
                // A Host header has no userinfo, but one that does must not leak it either.
                Some(host) => url.push(host.rsplit_once('@').map_or(host, |(_, h)| h)),
                None => url.push(&upstream.to_string()),
            },
        };
        // Absent in authority form (CONNECT): the path is empty then, and so is the URL's.
        if uri.path_and_query().is_some() || uri.authority().is_none() {
            url.path = url.push(uri.path());
            if let Some(query) = uri.query() {
                url.push("?");
                url.query = url.push(query);
            }
        }
        url
    }

    /// Appends as much of `s` as fits; returns the range it took.
    fn push(&mut self, s: &str) -> Range<usize> {
        let start = self.text.len();
        let room = self.max.saturating_sub(start);
        let mut take = s.len().min(room);
        while !s.is_char_boundary(take) {
            take -= 1;
        }
        self.text.0.extend_from_slice(&s.as_bytes()[..take]);
        start..self.text.len()
    }
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
                request_size: 3,
                response_size: 42,
                ..Outcome::default()
            },
        );
        r
    }

    fn begin(request: http::Request<()>, max_url: usize) -> SpanRecord {
        let (parts, _) = request.into_parts();
        let r = record(Direction::Inbound, 200);
        SpanRecord::begin_limited(
            Direction::Inbound,
            &parts,
            r.ids,
            false,
            r.peer,
            r.upstream,
            max_url,
        )
    }

    #[test]
    fn errors_by_direction() {
        assert_eq!(
            record(Direction::Outbound, 503).error_text().as_deref(),
            Some("503")
        );
        assert!(record(Direction::Inbound, 503).is_error());
        // A 4xx is the client's failure: an error on the CLIENT span, not on the SERVER span.
        assert_eq!(
            record(Direction::Outbound, 404).error_text().as_deref(),
            Some("404")
        );
        assert!(!record(Direction::Inbound, 404).is_error());
        assert!(!record(Direction::Outbound, 302).is_error());
        let mut r = record(Direction::Inbound, 200);
        r.outcome.status = None;
        r.outcome.error = Some(super::super::ErrorReason::ConnectFailed);
        assert_eq!(r.error_text().as_deref(), Some("connect_failed"));
    }

    #[test]
    fn grpc_status_decides_over_the_http_status() {
        let grpc = |direction, code| {
            let (parts, _) = http::Request::post("http://b:8080/helloworld.Greeter/SayHello")
                .header("content-type", "application/grpc")
                .body(())
                .unwrap()
                .into_parts();
            let f = record(direction, 200);
            let mut r = SpanRecord::begin(direction, &parts, f.ids, false, f.peer, f.upstream);
            r.outcome.status = Some(http::StatusCode::OK);
            r.outcome.grpc_status = Some(code);
            r
        };
        let r = grpc(Direction::Inbound, 5);
        assert!(r.grpc);
        assert_eq!(r.rpc(), Some(("helloworld.Greeter", "SayHello")));
        // NOT_FOUND is the caller's problem: an error for the CLIENT only.
        assert_eq!(r.error_text(), None);
        assert_eq!(
            grpc(Direction::Outbound, 5).error_text().as_deref(),
            Some("NOT_FOUND")
        );
        assert_eq!(
            grpc(Direction::Inbound, 13).error_text().as_deref(),
            Some("INTERNAL")
        );
        assert_eq!(grpc(Direction::Outbound, 0).error_text(), None);
        // Not gRPC: no RPC attributes, whatever the path looks like.
        assert_eq!(record(Direction::Inbound, 200).rpc(), None);
    }

    #[test]
    fn url_parts_come_from_the_request() {
        let r = record(Direction::Outbound, 200);
        assert_eq!(r.url(), "http://b.default:8080/api/items?x=1");
        assert_eq!(r.scheme(), "http");
        assert_eq!(r.host(), "b.default:8080");
        assert_eq!(r.server_address(), ("b.default", Some(8080)));
        assert_eq!(r.path(), "/api/items");
        assert_eq!(r.query(), Some("x=1"));
        let r = begin(
            http::Request::get("/Api/ITEMS")
                .header("host", "b")
                .body(())
                .unwrap(),
            1024,
        );
        assert_eq!(r.url(), "http://b/Api/ITEMS");
        assert_eq!(r.server_address(), ("b", Some(80)));
        assert_eq!(r.path(), "/Api/ITEMS");
        assert_eq!(r.query(), None);
        // No authority and no Host: the address the request was forwarded to.
        let r = begin(http::Request::get("/").body(()).unwrap(), 1024);
        assert_eq!(r.url(), "http://10.0.0.2:8080/");
        assert_eq!(r.server_address(), ("10.0.0.2", Some(8080)));
        // IPv6 literals lose their brackets in server.address.
        let r = begin(
            http::Request::get("https://[fd00::2]/x").body(()).unwrap(),
            1024,
        );
        assert_eq!(r.server_address(), ("fd00::2", Some(443)));
        let r = begin(
            http::Request::get("http://[fd00::2]:81/x")
                .body(())
                .unwrap(),
            1024,
        );
        assert_eq!(r.server_address(), ("fd00::2", Some(81)));
        // Authority form (CONNECT): no path.
        let r = begin(
            http::Request::connect("db.local:5432").body(()).unwrap(),
            1024,
        );
        assert_eq!(r.url(), "http://db.local:5432");
        assert_eq!(r.path(), "");
    }

    #[test]
    fn userinfo_never_reaches_the_url() {
        let r = begin(
            http::Request::get("http://alice:s3cret@b.default:8080/login?next=/")
                .body(())
                .unwrap(),
            1024,
        );
        assert_eq!(r.url(), "http://b.default:8080/login?next=/");
        assert_eq!(r.host(), "b.default:8080");
        assert!(!format!("{r:?}").contains("s3cret"));
        let r = begin(
            http::Request::get("/")
                .header("host", "bob:pw@b")
                .body(())
                .unwrap(),
            1024,
        );
        assert_eq!(r.url(), "http://b/");
    }

    #[test]
    fn long_urls_are_cut_to_the_bound() {
        // Under the bound but past the inline buffer: kept whole.
        let long = format!("/{}?q={}", "p".repeat(150), "v".repeat(100));
        let r = begin(
            http::Request::get(long.as_str())
                .header("host", "b:80")
                .body(())
                .unwrap(),
            1024,
        );
        assert_eq!(r.url(), format!("http://b:80{long}"));
        assert_eq!(r.path(), format!("/{}", "p".repeat(150)));
        // 50 KiB of path and query: the bound, nothing more, and the parts stay consistent.
        let huge = format!("/{}?q={}", "p".repeat(30_000), "v".repeat(20_000));
        for max in [32, 100, 1024, 8192] {
            let r = begin(
                http::Request::get(huge.as_str())
                    .header("host", "b:80")
                    .body(())
                    .unwrap(),
                max,
            );
            assert_eq!(r.url().len(), max);
            assert!(format!("http://b:80{huge}").starts_with(r.url()));
            assert_eq!(r.host(), "b:80");
            assert!(r.path().len() <= max && r.path().bytes().all(|b| b == b'/' || b == b'p'));
            assert_eq!(r.query(), None, "the query did not fit");
        }
        // A host longer than the bound is cut too (a Host header may be 60 KiB).
        let host = "h".repeat(5000);
        let r = begin(
            http::Request::get("/")
                .header("host", &host)
                .body(())
                .unwrap(),
            64,
        );
        assert_eq!(r.url().len(), 64);
        assert_eq!(r.path(), "");
    }

    #[test]
    fn names_are_the_method_never_the_path() {
        let mut names = std::collections::BTreeSet::new();
        for (i, method) in ["GET", "POST", "DELETE", "PATCH"].iter().enumerate() {
            for n in 0..25 {
                let r = begin(
                    http::Request::builder()
                        .method(*method)
                        .uri(format!("/users/{n}/orders?page={i}"))
                        .body(())
                        .unwrap(),
                    1024,
                );
                names.insert(r.name());
            }
        }
        assert_eq!(
            names.into_iter().collect::<Vec<_>>(),
            ["DELETE", "GET", "PATCH", "POST"]
        );
        // Any other method is `HTTP`, and is kept short.
        let long = "PROPFINDEXTENDEDWITHMANYLETTERS";
        let r = begin(
            http::Request::builder()
                .method(long)
                .uri("/")
                .body(())
                .unwrap(),
            1024,
        );
        assert_eq!(r.name(), "HTTP");
        assert_eq!(r.known_method(), None);
        assert_eq!(r.method.as_str(), &long[..MAX_METHOD_LEN]);
    }

    #[test]
    fn a_span_record_is_small() {
        // The bound the README and the comment on `SpanRecord` state.
        assert!(
            std::mem::size_of::<SpanRecord>() <= 512,
            "{}",
            std::mem::size_of::<SpanRecord>()
        );
    }
}
