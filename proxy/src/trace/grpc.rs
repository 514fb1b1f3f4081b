//! gRPC as a span sees it: whether a request is gRPC, its service and method (from the path
//! `/pkg.Service/Method`), and its status, read from `grpc-status` in the trailers or, for a
//! trailers-only response, in the headers. A failed call answers HTTP 200, so without this a
//! failed RPC would be a green span.

use http::HeaderMap;

use super::Direction;

/// Whether `headers` describe gRPC (`content-type: application/grpc`, `+proto`, `+json`...).
pub fn is_grpc(headers: &HeaderMap) -> bool {
    headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| {
            ct.get(..16)
                .is_some_and(|p| p.eq_ignore_ascii_case("application/grpc"))
                && matches!(ct.as_bytes().get(16), None | Some(b'+' | b';'))
        })
}

/// The `grpc-status` in `headers` (trailers, or the headers of a trailers-only response).
/// Only the codes gRPC defines (0–16) are kept: anything else is no status at all.
pub fn status(headers: &HeaderMap) -> Option<u32> {
    let v = headers.get("grpc-status")?.to_str().ok()?;
    v.parse::<u32>().ok().filter(|c| *c <= 16)
}

/// `(service, method)` from a gRPC path `/pkg.Service/Method`; `None` for any other shape,
/// so a span never carries a raw path as a service name.
pub fn service_method(path: &str) -> Option<(&str, &str)> {
    let (service, method) = path.strip_prefix('/')?.split_once('/')?;
    let ok = |s: &str| !s.is_empty() && !s.contains('/');
    (ok(service) && ok(method)).then_some((service, method))
}

/// Whether `code` makes the span an error, as OpenTelemetry's RPC conventions say: on the
/// server, only codes that mean the server failed (UNKNOWN, DEADLINE_EXCEEDED, UNIMPLEMENTED,
/// INTERNAL, UNAVAILABLE, DATA_LOSS); on the client, any code but OK.
pub fn is_error(code: u32, direction: Direction) -> bool {
    match direction {
        Direction::Outbound => code != 0,
        Direction::Inbound => matches!(code, 2 | 4 | 12 | 13 | 14 | 15),
    }
}

/// The canonical name of a status code (`NOT_FOUND`), for the error reason.
pub fn code_name(code: u32) -> &'static str {
    const NAMES: [&str; 17] = [
        "OK",
        "CANCELLED",
        "UNKNOWN",
        "INVALID_ARGUMENT",
        "DEADLINE_EXCEEDED",
        "NOT_FOUND",
        "ALREADY_EXISTS",
        "PERMISSION_DENIED",
        "RESOURCE_EXHAUSTED",
        "FAILED_PRECONDITION",
        "ABORTED",
        "OUT_OF_RANGE",
        "UNIMPLEMENTED",
        "INTERNAL",
        "UNAVAILABLE",
        "DATA_LOSS",
        "UNAUTHENTICATED",
    ];
    NAMES.get(code as usize).copied().unwrap_or("UNKNOWN")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        pairs
            .iter()
            .map(|(k, v)| {
                (
                    http::HeaderName::from_static(k),
                    http::HeaderValue::from_static(v),
                )
            })
            .collect()
    }

    #[test]
    fn grpc_is_told_by_content_type() {
        assert!(is_grpc(&headers(&[("content-type", "application/grpc")])));
        assert!(is_grpc(&headers(&[(
            "content-type",
            "application/grpc+proto"
        )])));
        assert!(is_grpc(&headers(&[("content-type", "Application/GRPC")])));
        assert!(!is_grpc(&headers(&[(
            "content-type",
            "application/grpc-web"
        )])));
        assert!(!is_grpc(&headers(&[("content-type", "application/json")])));
        assert!(!is_grpc(&HeaderMap::new()));
    }

    #[test]
    fn status_is_a_defined_code_or_nothing() {
        assert_eq!(status(&headers(&[("grpc-status", "5")])), Some(5));
        assert_eq!(status(&headers(&[("grpc-status", "0")])), Some(0));
        assert_eq!(status(&headers(&[("grpc-status", "17")])), None);
        assert_eq!(status(&headers(&[("grpc-status", "x")])), None);
        assert_eq!(status(&HeaderMap::new()), None);
    }

    #[test]
    fn service_and_method_come_from_a_well_formed_path() {
        assert_eq!(
            service_method("/helloworld.Greeter/SayHello"),
            Some(("helloworld.Greeter", "SayHello"))
        );
        assert_eq!(service_method("/users/8812"), Some(("users", "8812")));
        assert_eq!(service_method("/a/b/c"), None);
        assert_eq!(service_method("/only"), None);
        assert_eq!(service_method("//m"), None);
        assert_eq!(service_method(""), None);
    }

    #[test]
    fn errors_follow_the_rpc_conventions() {
        for code in 0..=16 {
            assert_eq!(is_error(code, Direction::Outbound), code != 0);
        }
        let server: Vec<u32> = (0..=16)
            .filter(|c| is_error(*c, Direction::Inbound))
            .collect();
        assert_eq!(server, [2, 4, 12, 13, 14, 15]);
        assert_eq!(code_name(5), "NOT_FOUND");
        assert_eq!(code_name(13), "INTERNAL");
        assert_eq!(code_name(99), "UNKNOWN");
    }
}
