//! This hop's place in the trace: read the caller's context, decide sampling, and rewrite the
//! headers so the next hop sees this hop's span as its parent.

use http::{HeaderMap, HeaderName, HeaderValue};
use mesh_config::PropagationFormat;
use trace_context::{Malformed, Propagation, Sampling, SpanIds};

use super::stitch::Parent;

pub const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// This hop's span and its sampling decision.
#[derive(Clone, Copy, Debug)]
pub struct Decided {
    /// This hop's span: a child of the caller's span (or a new root).
    pub ids: SpanIds,
    pub sampled: bool,
    pub debug: bool,
    pub malformed: Option<Malformed>,
    /// The request carried no trace header at all (not even a malformed one or a lone
    /// sampling decision): the only kind of request stitching may touch.
    pub orphan: bool,
}

/// The codec's form of MeshConfig's `propagation` list.
pub fn formats(list: &[PropagationFormat]) -> Propagation {
    Propagation {
        b3_multi: list.contains(&PropagationFormat::B3multi),
        trace_context: list.contains(&PropagationFormat::Tracecontext),
    }
}

/// Extracts the caller's context, makes this hop's span a child of it, decides sampling (the
/// caller's decision wins; otherwise `fraction`, deterministically from the trace id), and
/// injects the result in the formats `propagation` names (and `b3` when it came), replacing
/// every trace header the request carried.
pub fn propagate(headers: &mut HeaderMap, fraction: f64, propagation: Propagation) -> Decided {
    let (extracted, child) = trace_context::propagate_as(headers, propagation, |extracted| {
        let mut child = extracted.context.child();
        if child.sampling == Sampling::Deferred {
            // `child` always has ids: a child of the caller's span or a new root.
            let sampled = child
                .ids
                .is_some_and(|ids| trace_context::sampled_at(&ids.trace_id, fraction));
            child.sampling = if sampled {
                Sampling::Sampled
            } else {
                Sampling::NotSampled
            };
        }
        child
    });
    Decided {
        // Never taken: see above.
        ids: child.ids.unwrap_or_else(SpanIds::new_root),
        sampled: child.sampling.decision().unwrap_or(false),
        debug: child.sampling == Sampling::Debug,
        malformed: extracted.malformed,
        orphan: extracted.format == trace_context::Format::None
            && extracted.malformed.is_none()
            && extracted.context.sampling == Sampling::Deferred,
    }
}

/// Makes this hop's span a child of `parent` (a SERVER span of this pod that the request was
/// stitched to), rewriting the headers [`propagate`] wrote: the upstream receives the full
/// context, with the parent's sampling decision.
pub fn adopt(headers: &mut HeaderMap, parent: &Parent, propagation: Propagation) -> Decided {
    let ids = parent.ids.child();
    let context = trace_context::TraceContext {
        ids: Some(ids),
        sampling: parent.sampling,
        tracestate: None,
    };
    trace_context::inject_as(&context, propagation, headers);
    Decided {
        ids,
        sampled: parent.sampling.decision().unwrap_or(false),
        debug: parent.sampling == Sampling::Debug,
        malformed: None,
        orphan: true,
    }
}

/// The sampling decision of a span this hop decided, as a parent hands it on.
pub fn sampling_of(decided: &Decided) -> Sampling {
    match (decided.debug, decided.sampled) {
        (true, _) => Sampling::Debug,
        (false, true) => Sampling::Sampled,
        (false, false) => Sampling::NotSampled,
    }
}

/// Keeps the caller's `x-request-id` or adds a random UUID (v4 form), as Envoy does. One hashed
/// look-up either way (the entry API), and the id written a byte at a time: this runs on every
/// traced request that came without an id.
pub fn ensure_request_id(headers: &mut HeaderMap) {
    let http::header::Entry::Vacant(slot) = headers.entry(REQUEST_ID) else {
        return;
    };
    let hi = (fastrand::u64(..) & !0xf000) | 0x4000; // version 4
    let lo = (fastrand::u64(..) & !(0xc << 60)) | (0x8 << 60); // RFC 4122 variant
    if let Ok(v) = HeaderValue::from_bytes(&uuid_text(hi, lo)) {
        slot.insert(v);
    }
}

/// 8-4-4-4-12 lower-hex digits of the 128 bits `hi`, `lo`, written on the stack.
fn uuid_text(hi: u64, lo: u64) -> [u8; 36] {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut id = [b'-'; 36];
    let mut at = 0;
    let bits = (u128::from(hi) << 64) | u128::from(lo);
    for (i, byte) in bits.to_be_bytes().into_iter().enumerate() {
        // A dash before the 5th, 7th, 9th and 11th byte.
        if matches!(i, 4 | 6 | 8 | 10) {
            at += 1;
        }
        id[at] = HEX[usize::from(byte >> 4)];
        id[at + 1] = HEX[usize::from(byte & 0xf)];
        at += 2;
    }
    id
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_ids_are_uuid_text() {
        assert_eq!(
            &uuid_text(0x0123_4567_89ab_4def, 0x8edc_ba98_7654_3210),
            b"01234567-89ab-4def-8edc-ba9876543210"
        );
        for _ in 0..1000 {
            let (hi, lo) = (fastrand::u64(..), fastrand::u64(..));
            let want = format!("{:016x}{:016x}", hi, lo);
            let want = format!(
                "{}-{}-{}-{}-{}",
                &want[..8],
                &want[8..12],
                &want[12..16],
                &want[16..20],
                &want[20..]
            );
            assert_eq!(std::str::from_utf8(&uuid_text(hi, lo)).unwrap(), want);
        }
    }

    #[test]
    fn request_id_kept_or_added() {
        let mut h = HeaderMap::new();
        ensure_request_id(&mut h);
        let id = h.get(&REQUEST_ID).unwrap().to_str().unwrap().to_owned();
        assert_eq!(id.len(), 36);
        assert_eq!(&id[14..15], "4");
        ensure_request_id(&mut h);
        assert_eq!(h.get(&REQUEST_ID).unwrap(), id.as_str());
    }

    #[test]
    fn caller_decision_wins_over_fraction() {
        let mut h = HeaderMap::new();
        h.insert("x-b3-sampled", HeaderValue::from_static("1"));
        assert!(propagate(&mut h, 0.0, Propagation::default()).sampled);
        let mut h = HeaderMap::new();
        h.insert("x-b3-sampled", HeaderValue::from_static("0"));
        assert!(!propagate(&mut h, 1.0, Propagation::default()).sampled);
        assert_eq!(h.get("x-b3-sampled").unwrap(), "0");
        let mut h = HeaderMap::new();
        h.insert("x-b3-flags", HeaderValue::from_static("1"));
        let d = propagate(&mut h, 0.0, Propagation::default());
        assert!(d.sampled && d.debug);
    }

    #[test]
    fn deferred_decision_uses_fraction_and_is_propagated() {
        let mut h = HeaderMap::new();
        assert!(propagate(&mut h, 1.0, Propagation::default()).sampled);
        assert_eq!(h.get("x-b3-sampled").unwrap(), "1");
        let mut h = HeaderMap::new();
        assert!(!propagate(&mut h, 0.0, Propagation::default()).sampled);
        assert_eq!(h.get("x-b3-sampled").unwrap(), "0");
    }

    #[test]
    fn next_hop_sees_this_span_as_parent() {
        let mut h = HeaderMap::new();
        h.insert("x-b3-traceid", HeaderValue::from_static("48485a3953bb6124"));
        h.insert("x-b3-spanid", HeaderValue::from_static("a2fb4a1d1a96d312"));
        let d = propagate(&mut h, 1.0, Propagation::default());
        assert_eq!(d.ids.parent_id.unwrap().to_string(), "a2fb4a1d1a96d312");
        assert_eq!(h.get("x-b3-traceid").unwrap(), "48485a3953bb6124");
        assert_eq!(
            h.get("x-b3-spanid").unwrap(),
            d.ids.span_id.to_string().as_str()
        );
        assert_eq!(h.get("x-b3-parentspanid").unwrap(), "a2fb4a1d1a96d312");
    }

    #[test]
    fn malformed_is_reported_and_not_forwarded() {
        let mut h = HeaderMap::new();
        h.insert("x-b3-traceid", HeaderValue::from_static("NOTHEX"));
        h.insert("x-b3-spanid", HeaderValue::from_static("a2fb4a1d1a96d312"));
        let d = propagate(&mut h, 1.0, Propagation::default());
        assert_eq!(d.malformed, Some(Malformed::TraceId));
        assert_ne!(h.get("x-b3-traceid").unwrap(), "NOTHEX");
        assert!(h.get("x-b3-parentspanid").is_none());
    }

    #[test]
    fn formats_follow_the_mesh_config_list() {
        use PropagationFormat::*;
        assert_eq!(formats(&[B3multi, Tracecontext]), Propagation::default());
        assert_eq!(
            formats(&[Tracecontext]),
            Propagation {
                b3_multi: false,
                trace_context: true
            }
        );
        assert_eq!(
            formats(&[B3multi]),
            Propagation {
                b3_multi: true,
                trace_context: false
            }
        );
    }

    /// The tracer reads `propagation` and `maxUrlTagLength` from the config it runs with.
    #[tokio::test]
    async fn the_tracer_applies_the_configured_formats_and_url_bound() {
        use crate::trace::{Direction, Tracer};
        let tracer = Tracer::new(Default::default(), Default::default());
        let config = mesh_config::Tracing {
            enable: true,
            address: "127.0.0.1".into(),
            // Nothing is exported in this test.
            port: 9,
            propagation: vec![PropagationFormat::Tracecontext],
            max_url_tag_length: 64,
            ..Default::default()
        };
        tracer.apply(&config);
        let long = format!("http://b/{}", "x".repeat(500));
        let (mut parts, _) = http::Request::get(long.as_str())
            .header("x-b3-traceid", "48485a3953bb6124")
            .header("x-b3-spanid", "a2fb4a1d1a96d312")
            .header("x-b3-sampled", "1")
            .body(())
            .unwrap()
            .into_parts();
        let addr = "10.0.0.1:80".parse().unwrap();
        let span = tracer.start(Direction::Outbound, &mut parts, addr, addr);
        let record = &span.pending.as_ref().expect("recording").record;
        assert_eq!(record.url().len(), 64);
        let tp = parts.headers["traceparent"].to_str().unwrap();
        assert_eq!(
            tp,
            format!(
                "00-000000000000000048485a3953bb6124-{}-01",
                record.ids.span_id
            )
        );
        assert!(!parts.headers.contains_key("x-b3-traceid"));
        assert!(!parts.headers.contains_key("x-b3-spanid"));
        drop(span);
        tracer.flush(std::time::Duration::from_secs(1)).await;
    }
}
