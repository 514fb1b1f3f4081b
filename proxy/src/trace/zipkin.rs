//! Zipkin v2 JSON (the zipkin2 API's `ListOfSpans`), written straight from [`SpanRecord`]s
//! into one export body.
//!
//! Written by hand because it runs for every span at full sampling. Nearly everything in a
//! span is JSON-safe by construction (hex ids, addresses, numbers, fixed names) and is copied
//! as is; only text that came with the request (URL, method, error) is checked for escapes.
//! The local endpoint is the same for every span of a sidecar, so it is encoded once.

use std::io::Write as _;
use std::net::{IpAddr, SocketAddr};
use std::time::{SystemTime, UNIX_EPOCH};

use super::span::SpanRecord;
use super::Direction;

/// What every span of one sidecar shares: its `localEndpoint`, already encoded.
#[derive(Clone, Debug)]
pub struct ZipkinEncoder {
    local_endpoint: Vec<u8>,
}

impl ZipkinEncoder {
    pub fn new(service_name: &str, local_ip: Option<IpAddr>) -> Self {
        let mut local_endpoint = Vec::with_capacity(64);
        local_endpoint.push(b'{');
        match local_ip {
            Some(ip @ IpAddr::V4(_)) => {
                local_endpoint.extend_from_slice(b"\"ipv4\":");
                push_ip_string(&mut local_endpoint, ip);
                local_endpoint.push(b',');
            }
            Some(ip @ IpAddr::V6(_)) => {
                local_endpoint.extend_from_slice(b"\"ipv6\":");
                push_ip_string(&mut local_endpoint, ip);
                local_endpoint.push(b',');
            }
            None => {}
        }
        local_endpoint.extend_from_slice(b"\"serviceName\":");
        push_str(&mut local_endpoint, service_name);
        local_endpoint.push(b'}');
        Self { local_endpoint }
    }

    /// A batch as one JSON array.
    pub fn encode(&self, batch: &[SpanRecord]) -> Vec<u8> {
        let mut out = Vec::with_capacity(2 + batch.len() * 640);
        out.push(b'[');
        for (i, span) in batch.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            self.write_span(&mut out, span);
        }
        out.push(b']');
        out
    }

    /// One span object (keys in sorted order, as zipkin2's own encoder writes them).
    pub fn write_span(&self, out: &mut Vec<u8>, r: &SpanRecord) {
        out.push(b'{');
        if r.debug {
            out.extend_from_slice(b"\"debug\":true,");
        }
        // zipkin2 requires a duration of at least 1 µs when present.
        out.extend_from_slice(b"\"duration\":");
        push_u64(out, (r.duration.as_micros() as u64).max(1));
        out.extend_from_slice(b",\"id\":\"");
        out.extend_from_slice(r.ids.span_id.encode().as_bytes());
        out.extend_from_slice(match r.direction {
            Direction::Inbound => b"\",\"kind\":\"SERVER\",\"localEndpoint\":",
            Direction::Outbound => b"\",\"kind\":\"CLIENT\",\"localEndpoint\":",
        });
        out.extend_from_slice(&self.local_endpoint);
        let (url, host, _) = r.url_host_path_bytes();
        out.extend_from_slice(b",\"name\":\"");
        out.extend_from_slice(lower_case_name(r).as_bytes());
        out.push(b'"');
        if let Some(parent) = r.ids.parent_id {
            out.extend_from_slice(b",\"parentId\":\"");
            out.extend_from_slice(parent.encode().as_bytes());
            out.push(b'"');
        }
        // The other side of the hop: the caller for a SERVER span, the upstream for a CLIENT.
        let remote = match r.direction {
            Direction::Inbound => r.peer,
            Direction::Outbound => r.upstream,
        };
        out.extend_from_slice(if remote.is_ipv4() {
            b",\"remoteEndpoint\":{\"ipv4\":"
        } else {
            b",\"remoteEndpoint\":{\"ipv6\":"
        });
        push_ip_string(out, remote.ip());
        out.extend_from_slice(b",\"port\":");
        push_u64(out, u64::from(remote.port()));
        out.extend_from_slice(b"},\"tags\":{");
        write_tags(out, r, url, host);
        out.extend_from_slice(b"},\"timestamp\":");
        push_u64(out, micros_since_epoch(r.start));
        out.extend_from_slice(b",\"traceId\":\"");
        out.extend_from_slice(r.ids.trace_id.encode().as_bytes());
        out.extend_from_slice(b"\"}");
    }
}

/// Envoy's tag names; every value is a string.
fn write_tags(out: &mut Vec<u8>, r: &SpanRecord, url: &[u8], host: &[u8]) {
    if let Some(e) = r.error_text() {
        out.extend_from_slice(b"\"error\":");
        push_str(out, &e);
        out.push(b',');
    }
    if let Some(code) = r.outcome.grpc_status {
        out.extend_from_slice(b"\"grpc.status_code\":\"");
        push_u64(out, u64::from(code));
        out.extend_from_slice(b"\",");
    }
    out.extend_from_slice(b"\"http.method\":");
    push_str(out, r.method.as_str());
    out.extend_from_slice(if r.http2 {
        b",\"http.protocol\":\"HTTP/2\""
    } else {
        b",\"http.protocol\":\"HTTP/1.1\""
    });
    if let Some(s) = r.outcome.status {
        out.extend_from_slice(b",\"http.status_code\":\"");
        push_u64(out, u64::from(s.as_u16()));
        out.push(b'"');
    }
    out.extend_from_slice(b",\"http.url\":");
    push_text(out, url);
    out.extend_from_slice(b",\"peer.address\":\"");
    push_socket_addr(out, r.peer);
    out.extend_from_slice(b"\",\"request_size\":\"");
    push_u64(out, r.outcome.request_size);
    out.extend_from_slice(b"\",\"response_size\":\"");
    push_u64(out, r.outcome.response_size);
    match r.direction {
        Direction::Inbound => {
            out.extend_from_slice(b"\",\"upstream_cluster\":\"inbound|");
            push_u64(out, u64::from(r.upstream.port()));
            out.push(b'"');
        }
        Direction::Outbound => {
            out.extend_from_slice(b"\",\"upstream_cluster\":\"outbound|");
            push_str_contents(out, host);
            out.push(b'"');
        }
    }
    if let Some(how) = r.stitch {
        out.extend_from_slice(b",\"tracemesh.stitch\":");
        push_str(out, how.as_str());
    }
}

/// The span name in lower case, as Zipkin shows names: the method, or `http` for any other
/// (see [`SpanRecord::name`]; never the path).
fn lower_case_name(r: &SpanRecord) -> &'static str {
    match r.name() {
        "GET" => "get",
        "HEAD" => "head",
        "POST" => "post",
        "PUT" => "put",
        "DELETE" => "delete",
        "CONNECT" => "connect",
        "OPTIONS" => "options",
        "TRACE" => "trace",
        "PATCH" => "patch",
        _ => "http",
    }
}

/// A JSON string. Text without characters to escape (the usual case) is copied in one go.
fn push_str(out: &mut Vec<u8>, s: &str) {
    push_text(out, s.as_bytes());
}

/// A JSON string from text known to be UTF-8 (a span's URL, built from whole `str`s).
fn push_text(out: &mut Vec<u8>, text: &[u8]) {
    out.push(b'"');
    push_str_contents(out, text);
    out.push(b'"');
}

/// The inside of a JSON string, escaped. `bytes` is UTF-8.
fn push_str_contents(out: &mut Vec<u8>, bytes: &[u8]) {
    if needs_escape(bytes) {
        push_escaped(out, bytes);
    } else {
        out.extend_from_slice(bytes);
    }
}

/// Whether any byte is a control character, `"` or `\`, eight bytes at a time.
fn needs_escape(bytes: &[u8]) -> bool {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGHS: u64 = 0x8080_8080_8080_8080;
    // Exact for "is any byte below n" with n <= 128; bytes >= 0x80 (UTF-8) never match.
    let any_below = |x: u64, n: u8| x.wrapping_sub(ONES * u64::from(n)) & !x & HIGHS != 0;
    let any_equal = |x: u64, b: u8| any_below(x ^ (ONES * u64::from(b)), 1);
    let mut chunks = bytes.chunks_exact(8);
    for chunk in &mut chunks {
        let mut word = [0u8; 8];
        word.copy_from_slice(chunk);
        let x = u64::from_le_bytes(word);
        if any_below(x, 0x20) || any_equal(x, b'"') || any_equal(x, b'\\') {
            return true;
        }
    }
    chunks
        .remainder()
        .iter()
        .any(|&b| b < 0x20 || b == b'"' || b == b'\\')
}

/// RFC 8259 escaping: `"`, `\` and the control characters. UTF-8 passes through.
fn push_escaped(out: &mut Vec<u8>, bytes: &[u8]) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut start = 0;
    for (i, &b) in bytes.iter().enumerate() {
        let short: &[u8] = match b {
            b'"' => b"\\\"",
            b'\\' => b"\\\\",
            b'\n' => b"\\n",
            b'\r' => b"\\r",
            b'\t' => b"\\t",
            0x08 => b"\\b",
            0x0c => b"\\f",
            0..=0x1f => b"",
            _ => continue,
        };
        out.extend_from_slice(&bytes[start..i]);
        if short.is_empty() {
            out.extend_from_slice(&[
                b'\\',
                b'u',
                b'0',
                b'0',
                HEX[usize::from(b >> 4)],
                HEX[usize::from(b & 0xf)],
            ]);
        } else {
            out.extend_from_slice(short);
        }
        start = i + 1;
    }
    out.extend_from_slice(&bytes[start..]);
}

fn push_u64(out: &mut Vec<u8>, n: u64) {
    out.extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
}

/// An address as a JSON string: dotted quad, or RFC 5952 text for IPv6.
fn push_ip_string(out: &mut Vec<u8>, ip: IpAddr) {
    out.push(b'"');
    push_ip(out, ip);
    out.push(b'"');
}

fn push_ip(out: &mut Vec<u8>, ip: IpAddr) {
    match ip {
        IpAddr::V4(v4) => {
            // Built on the stack with fixed-size copies, then appended in one go: a copy of
            // one to three bytes per octet would each be a call to `memcpy`.
            let mut text = [0u8; 16];
            let mut len = 0;
            for octet in v4.octets() {
                let (digits, n) = OCTETS[usize::from(octet)];
                text[len..len + 3].copy_from_slice(&digits);
                len += usize::from(n);
                text[len] = b'.';
                len += 1;
            }
            out.extend_from_slice(&text[..len - 1]);
        }
        // Rare in a cluster, and its text form (zero compression) is the standard library's.
        IpAddr::V6(v6) => {
            let _ = write!(out, "{v6}");
        }
    }
}

/// The decimal text of every octet, for dotted quads without formatting.
const OCTETS: [([u8; 3], u8); 256] = {
    let mut table = [([0u8; 3], 0u8); 256];
    let mut i = 0;
    while i < 256 {
        let (h, t, u) = ((i / 100) as u8, (i / 10 % 10) as u8, (i % 10) as u8);
        table[i] = if i >= 100 {
            ([b'0' + h, b'0' + t, b'0' + u], 3)
        } else if i >= 10 {
            ([b'0' + t, b'0' + u, 0], 2)
        } else {
            ([b'0' + u, 0, 0], 1)
        };
        i += 1;
    }
    table
};

/// `ip:port`, or `[ip]:port` for IPv6 (how `SocketAddr` displays).
fn push_socket_addr(out: &mut Vec<u8>, addr: SocketAddr) {
    match addr {
        SocketAddr::V4(_) => push_ip(out, addr.ip()),
        SocketAddr::V6(v6) => {
            let _ = write!(out, "[{}]", v6.ip());
        }
    }
    out.push(b':');
    push_u64(out, u64::from(addr.port()));
}

fn micros_since_epoch(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use serde_json::Value;

    use super::*;

    fn record(direction: Direction, uri: &str, status: u16) -> SpanRecord {
        crate::trace::span::tests::fixture(direction, uri, status)
    }

    fn encode_one(r: &SpanRecord, service: &str, ip: Option<IpAddr>) -> Value {
        let body = ZipkinEncoder::new(service, ip).encode(std::slice::from_ref(r));
        let mut list: Vec<Value> = serde_json::from_slice(&body).expect("valid JSON");
        assert_eq!(list.len(), 1);
        list.remove(0)
    }

    #[test]
    fn server_span_has_the_contract_fields_and_envoy_tags() {
        let r = record(
            Direction::Inbound,
            "http://b.default:8080/api/items?x=1",
            200,
        );
        let z = encode_one(&r, "b.default", Some("10.0.0.2".parse().unwrap()));
        assert_eq!(z["kind"], "SERVER");
        assert_eq!(z["traceId"], "48485a3953bb6124");
        assert_eq!(z["id"], "a2fb4a1d1a96d312");
        assert_eq!(z["parentId"], "0020000000000001");
        assert_eq!(z["name"], "get");
        assert_eq!(z["duration"], 1500);
        assert_eq!(z["timestamp"], 1_700_000_000_123_456u64);
        assert_eq!(z["localEndpoint"]["serviceName"], "b.default");
        assert_eq!(z["localEndpoint"]["ipv4"], "10.0.0.2");
        assert_eq!(z["remoteEndpoint"]["ipv4"], "10.0.0.1");
        assert_eq!(z["remoteEndpoint"]["port"], 4000);
        assert!(z.get("debug").is_none());
        let tags = &z["tags"];
        assert_eq!(tags["http.method"], "GET");
        assert_eq!(tags["http.protocol"], "HTTP/1.1");
        assert_eq!(tags["http.url"], "http://b.default:8080/api/items?x=1");
        assert_eq!(tags["http.status_code"], "200");
        assert_eq!(tags["upstream_cluster"], "inbound|8080");
        assert_eq!(tags["peer.address"], "10.0.0.1:4000");
        assert_eq!(tags["request_size"], "3");
        assert_eq!(tags["response_size"], "42");
        assert!(tags.get("error").is_none());
        // Every tag value is a string, as zipkin2 requires.
        assert!(tags.as_object().unwrap().values().all(Value::is_string));
        assert!(tags.get("tracemesh.stitch").is_none());
    }

    /// A stitched span says how, so a user can filter stitched spans.
    #[test]
    fn stitched_span_carries_how() {
        let mut r = record(Direction::Outbound, "http://c.default:8080/", 200);
        r.stitch = Some(super::super::stitch::Stitch::InFlight);
        let z = encode_one(&r, "b.default", None);
        assert_eq!(z["tags"]["tracemesh.stitch"], "in-flight");
        assert_eq!(z["tags"]["upstream_cluster"], "outbound|c.default:8080");
    }

    #[test]
    fn client_span_errors_debug_and_ipv6() {
        let mut r = record(Direction::Outbound, "http://b.default:8080/Api/ITEMS", 503);
        r.debug = true;
        r.peer = "[fd00::1]:4000".parse().unwrap();
        r.upstream = "[fd00::2]:8080".parse().unwrap();
        let z = encode_one(&r, "a.default", Some("::1".parse().unwrap()));
        assert_eq!(z["kind"], "CLIENT");
        assert_eq!(z["debug"], true);
        assert_eq!(z["name"], "get");
        assert_eq!(z["localEndpoint"]["ipv6"], "::1");
        assert_eq!(z["remoteEndpoint"]["ipv6"], "fd00::2");
        assert_eq!(z["remoteEndpoint"]["port"], 8080);
        assert_eq!(z["tags"]["peer.address"], "[fd00::1]:4000");
        assert_eq!(z["tags"]["error"], "503");
        assert_eq!(z["tags"]["upstream_cluster"], "outbound|b.default:8080");

        r.outcome.status = None;
        r.outcome.error = Some(crate::trace::ErrorReason::UpstreamReset);
        let z = encode_one(&r, "a.default", None);
        assert_eq!(z["tags"]["error"], "upstream_reset");
        assert!(z["tags"].get("http.status_code").is_none());
        assert!(z["localEndpoint"].get("ipv4").is_none());
    }

    #[test]
    fn zero_duration_is_written_as_one_microsecond() {
        let mut r = record(Direction::Inbound, "http://b/", 200);
        r.duration = Duration::ZERO;
        assert_eq!(encode_one(&r, "b", None)["duration"], 1);
    }

    #[test]
    fn any_text_round_trips_through_the_json() {
        let mut rng = fastrand::Rng::with_seed(11);
        let alphabet: Vec<char> = "aZ09 \"\\/\n\r\t\u{0}\u{1}\u{8}\u{c}\u{1f}\u{7f}é€😀{}[]:,"
            .chars()
            .collect();
        for _ in 0..2_000 {
            let text: String = (0..rng.usize(0..40))
                .map(|_| alphabet[rng.usize(..alphabet.len())])
                .collect();
            let r = record(Direction::Outbound, "http://b/x", 200);
            let z = encode_one(&r, &text, None);
            assert_eq!(z["localEndpoint"]["serviceName"], text.as_str());
        }
    }

    #[test]
    fn names_are_lower_case_methods_and_urls_are_clean() {
        let r = record(Direction::Inbound, "http://b/%C3%89T%C3%89?Q=1", 200);
        assert_eq!(encode_one(&r, "b", None)["name"], "get");
        let (parts, _) = http::Request::builder()
            .method("PROPFIND")
            .uri("http://u:p@b:81/Dav/Item")
            .body(())
            .unwrap()
            .into_parts();
        let mut r = SpanRecord::begin(
            Direction::Outbound,
            &parts,
            r.ids,
            false,
            r.peer,
            r.upstream,
        );
        r.outcome.status = http::StatusCode::from_u16(207).ok();
        let z = encode_one(&r, "b", None);
        assert_eq!(z["name"], "http");
        assert_eq!(z["tags"]["http.method"], "PROPFIND");
        assert_eq!(z["tags"]["http.url"], "http://b:81/Dav/Item");
        assert_eq!(z["tags"]["upstream_cluster"], "outbound|b:81");
        for m in [
            "GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH",
        ] {
            let (parts, _) = http::Request::builder()
                .method(m)
                .uri("http://b/x")
                .body(())
                .unwrap()
                .into_parts();
            let r = SpanRecord::begin(Direction::Inbound, &parts, r.ids, false, r.peer, r.upstream);
            assert_eq!(lower_case_name(&r), m.to_lowercase());
        }
    }

    #[test]
    fn client_4xx_is_an_error_and_server_4xx_is_not() {
        let z = encode_one(&record(Direction::Outbound, "http://b/x", 404), "a", None);
        assert_eq!(z["tags"]["error"], "404");
        let z = encode_one(&record(Direction::Inbound, "http://b/x", 404), "b", None);
        assert!(z["tags"].get("error").is_none());
    }

    #[test]
    fn escape_check_agrees_with_a_byte_by_byte_one() {
        let mut rng = fastrand::Rng::with_seed(5);
        for _ in 0..20_000 {
            let bytes: Vec<u8> = (0..rng.usize(0..40))
                .map(|_| match rng.u8(0..4) {
                    0 => rng.u8(0..0x20),
                    1 => *rng.choice(b"\"\\").unwrap(),
                    _ => rng.u8(0x20..=0xff),
                })
                .collect();
            let slow = bytes.iter().any(|&b| b < 0x20 || b == b'"' || b == b'\\');
            assert_eq!(needs_escape(&bytes), slow, "{bytes:?}");
        }
    }

    #[test]
    fn dotted_quads_match_the_standard_library() {
        for ip in [
            "0.0.0.0",
            "10.0.0.1",
            "255.255.255.255",
            "192.168.100.9",
            "1.20.199.250",
        ] {
            let mut out = Vec::new();
            push_ip(&mut out, ip.parse().unwrap());
            assert_eq!(out, ip.as_bytes());
        }
        for octet in 0..=255u8 {
            let mut out = Vec::new();
            push_ip(&mut out, IpAddr::from([octet, 0, 0, octet]));
            assert_eq!(
                String::from_utf8(out).unwrap(),
                format!("{octet}.0.0.{octet}")
            );
        }
    }

    #[test]
    fn a_batch_is_a_json_array() {
        let spans = [
            record(Direction::Inbound, "http://b/1", 200),
            record(Direction::Outbound, "http://c/2", 500),
        ];
        let body = ZipkinEncoder::new("b.default", None).encode(&spans);
        let list: Vec<Value> = serde_json::from_slice(&body).unwrap();
        assert_eq!(list.len(), 2);
        assert_eq!(list[1]["tags"]["error"], "500");
        let empty = ZipkinEncoder::new("b.default", None).encode(&[]);
        assert_eq!(empty, b"[]");
    }
}
