//! Conformance with the B3 spec and brave's behaviour, and what goes downstream in each case.

use super::*;
use http::{HeaderMap, HeaderName, HeaderValue};

const T128: &str = "463ac35c9f6413ad48485a3953bb6124";
const T64: &str = "48485a3953bb6124";
const S: &str = "a2fb4a1d1a96d312";
const P: &str = "0020000000000001";

fn map(pairs: &[(&str, &str)]) -> HeaderMap {
    let mut h = HeaderMap::new();
    for (k, v) in pairs {
        h.append(
            HeaderName::from_bytes(k.as_bytes()).unwrap(),
            HeaderValue::from_str(v).unwrap(),
        );
    }
    h
}

fn get<'a>(h: &'a HeaderMap, k: &str) -> Option<&'a str> {
    h.get(k).map(|v| v.to_str().unwrap())
}

/// What the proxy does: a child span of the caller's, with the decision made, injected.
fn downstream(h: &HeaderMap, decide: bool) -> (Extracted, TraceContext, HeaderMap) {
    downstream_as(h, decide, Propagation::default())
}

/// [`downstream`] writing the formats `propagation` names.
fn downstream_as(
    h: &HeaderMap,
    decide: bool,
    propagation: Propagation,
) -> (Extracted, TraceContext, HeaderMap) {
    let e = extract(h);
    let mut child = e.context.child();
    if child.sampling == Sampling::Deferred {
        child.sampling = if decide {
            Sampling::Sampled
        } else {
            Sampling::NotSampled
        };
    }
    let mut out = h.clone();
    inject_as(&child, propagation, &mut out);
    // The one-pass form must agree exactly with extract-then-inject, in every case here.
    let mut one_pass = h.clone();
    let (seen, sent) = propagate_as(&mut one_pass, propagation, |seen| {
        assert_eq!(seen, &e);
        child.clone()
    });
    assert_eq!((&seen, &sent), (&e, &child));
    assert_eq!(
        one_pass, out,
        "propagate and extract + inject disagree on {h:?}"
    );
    (e, child, out)
}

fn ids(e: &Extracted) -> SpanIds {
    e.context.ids.expect("ids")
}

#[test]
fn multi_128bit_trace_id() {
    let h = map(&[
        ("x-b3-traceid", T128),
        ("x-b3-spanid", S),
        ("x-b3-parentspanid", P),
        ("x-b3-sampled", "1"),
    ]);
    let (e, child, out) = downstream(&h, false);
    assert_eq!(e.format, Format::B3Multi);
    assert_eq!(e.malformed, None);
    assert_eq!(ids(&e).trace_id.to_string(), T128);
    assert_eq!(ids(&e).span_id.to_string(), S);
    assert_eq!(ids(&e).parent_id.unwrap().to_string(), P);
    assert_eq!(e.context.sampling, Sampling::Sampled);
    assert_eq!(get(&out, "x-b3-traceid"), Some(T128));
    assert_eq!(get(&out, "x-b3-parentspanid"), Some(S));
    let new_span = child.ids.unwrap().span_id.to_string();
    assert_eq!(get(&out, "x-b3-spanid"), Some(new_span.as_str()));
    assert_ne!(new_span, S);
    assert_eq!(get(&out, "x-b3-sampled"), Some("1"));
}

#[test]
fn multi_64bit_trace_id_stays_64bit_downstream() {
    let h = map(&[("x-b3-traceid", T64), ("x-b3-spanid", S)]);
    let (e, _, out) = downstream(&h, true);
    assert!(!ids(&e).trace_id.is_128bit());
    assert_eq!(get(&out, "x-b3-traceid"), Some(T64));
}

#[test]
fn upper_case_ids_are_malformed_and_a_new_trace_starts() {
    let h = map(&[
        ("x-b3-traceid", &T128.to_uppercase()),
        ("x-b3-spanid", S),
        ("x-b3-sampled", "1"),
    ]);
    let (e, child, out) = downstream(&h, true);
    assert_eq!(e.malformed, Some(Malformed::TraceId));
    assert_eq!(e.context.ids, None);
    // The valid sampling decision is kept; the ids are not forwarded.
    assert_eq!(e.context.sampling, Sampling::Sampled);
    assert_ne!(get(&out, "x-b3-traceid").unwrap().to_lowercase(), T128);
    assert_eq!(get(&out, "x-b3-traceid").unwrap().len(), 32);
    assert_eq!(get(&out, "x-b3-parentspanid"), None);
    assert_eq!(child.ids.unwrap().parent_id, None);
}

#[test]
fn non_hex_ids_are_malformed() {
    let e = extract(&map(&[
        ("x-b3-traceid", T64),
        ("x-b3-spanid", "a2fb4a1d1a96d31z"),
    ]));
    assert_eq!(e.malformed, Some(Malformed::SpanId));
    assert_eq!(e.context.ids, None);
    let e = extract(&map(&[
        ("x-b3-traceid", T64),
        ("x-b3-spanid", S),
        ("x-b3-parentspanid", "xyz"),
    ]));
    assert_eq!(e.malformed, Some(Malformed::ParentSpanId));
    assert_eq!(e.context.ids, None);
}

#[test]
fn wrong_length_ids_are_malformed() {
    for (t, s) in [
        ("48485a3953bb612", S),
        ("463ac35c9f6413ad48485a3953bb61240", S),
        (T64, "a2fb4a1d1a96d31"),
        (T64, T128),
    ] {
        let (e, _, out) = downstream(&map(&[("x-b3-traceid", t), ("x-b3-spanid", s)]), true);
        assert!(e.malformed.is_some(), "{t} {s}");
        assert_eq!(e.context.ids, None);
        assert_ne!(get(&out, "x-b3-traceid"), Some(t));
        assert_ne!(get(&out, "x-b3-parentspanid"), Some(s));
    }
}

#[test]
fn all_zero_ids_are_malformed() {
    let e = extract(&map(&[
        ("x-b3-traceid", "00000000000000000000000000000000"),
        ("x-b3-spanid", S),
    ]));
    assert_eq!(e.malformed, Some(Malformed::TraceId));
    let e = extract(&map(&[
        ("x-b3-traceid", T64),
        ("x-b3-spanid", "0000000000000000"),
    ]));
    assert_eq!(e.malformed, Some(Malformed::SpanId));
    // An all-zero parent is "root" as old tracers send it.
    let e = extract(&map(&[
        ("x-b3-traceid", T64),
        ("x-b3-spanid", S),
        ("x-b3-parentspanid", "0000000000000000"),
    ]));
    assert_eq!(e.malformed, None);
    assert_eq!(ids(&e).parent_id, None);
}

#[test]
fn trace_id_without_span_id_is_malformed() {
    let (e, _, out) = downstream(&map(&[("x-b3-traceid", T128), ("x-b3-sampled", "0")]), true);
    assert_eq!(e.malformed, Some(Malformed::IncompleteIds));
    assert_eq!(e.context.sampling, Sampling::NotSampled);
    assert_ne!(get(&out, "x-b3-traceid"), Some(T128));
    assert_eq!(get(&out, "x-b3-sampled"), Some("0"));
}

#[test]
fn span_id_without_trace_id_is_malformed() {
    let (e, _, out) = downstream(&map(&[("x-b3-spanid", S)]), true);
    assert_eq!(e.malformed, Some(Malformed::IncompleteIds));
    assert_eq!(e.context.ids, None);
    assert_eq!(get(&out, "x-b3-parentspanid"), None);
    assert_ne!(get(&out, "x-b3-spanid"), Some(S));
}

#[test]
fn sampled_values() {
    let cases = [
        ("1", Sampling::Sampled, None),
        ("0", Sampling::NotSampled, None),
        ("true", Sampling::Sampled, None),
        ("false", Sampling::NotSampled, None),
        ("TRUE", Sampling::Sampled, None),
        ("yes", Sampling::Deferred, Some(Malformed::Sampled)),
        ("2", Sampling::Deferred, Some(Malformed::Sampled)),
        ("", Sampling::Deferred, None),
    ];
    for (v, want, bad) in cases {
        let h = map(&[
            ("x-b3-traceid", T64),
            ("x-b3-spanid", S),
            ("x-b3-sampled", v),
        ]);
        let (e, _, out) = downstream(&h, true);
        assert_eq!(e.context.sampling, want, "{v:?}");
        assert_eq!(e.malformed, bad, "{v:?}");
        // Valid ids survive a bad decision; downstream always gets a normalized 0/1.
        assert_eq!(ids(&e).span_id.to_string(), S);
        let sent = get(&out, "x-b3-sampled").unwrap();
        assert!(sent == "1" || sent == "0");
        if want == Sampling::NotSampled {
            assert_eq!(sent, "0");
        }
    }
}

#[test]
fn debug_flag_wins_over_sampled_zero() {
    let h = map(&[
        ("x-b3-traceid", T64),
        ("x-b3-spanid", S),
        ("x-b3-sampled", "0"),
        ("x-b3-flags", "1"),
    ]);
    let (e, _, out) = downstream(&h, false);
    assert_eq!(e.context.sampling, Sampling::Debug);
    assert_eq!(e.context.sampling.decision(), Some(true));
    assert_eq!(get(&out, "x-b3-flags"), Some("1"));
    // Sent along for Envoy, which reads only `x-b3-sampled`.
    assert_eq!(get(&out, "x-b3-sampled"), Some("1"));
}

#[test]
fn debug_is_sent_as_sampled_too_for_readers_without_flags() {
    for incoming in [
        &[("x-b3-flags", "1")][..],
        &[("b3", "d")][..],
        &[
            ("x-b3-traceid", T128),
            ("x-b3-spanid", S),
            ("x-b3-flags", "1"),
        ][..],
    ] {
        let (e, _, out) = downstream(&map(incoming), false);
        assert_eq!(e.context.sampling, Sampling::Debug, "{incoming:?}");
        assert_eq!(get(&out, "x-b3-flags"), Some("1"), "{incoming:?}");
        assert_eq!(get(&out, "x-b3-sampled"), Some("1"), "{incoming:?}");
        // Read back, it is still a debug decision: the flag wins over sampled.
        assert_eq!(extract(&out).context.sampling, Sampling::Debug);
    }
}

#[test]
fn flags_other_than_one_are_ignored() {
    for flags in ["0", "2", "debug", "11"] {
        let h = map(&[
            ("x-b3-traceid", T64),
            ("x-b3-spanid", S),
            ("x-b3-sampled", "0"),
            ("x-b3-flags", flags),
        ]);
        let (e, _, out) = downstream(&h, true);
        assert_eq!(e.context.sampling, Sampling::NotSampled, "{flags}");
        assert_eq!(e.malformed, None);
        assert_eq!(get(&out, "x-b3-flags"), None);
    }
}

#[test]
fn sampling_only_multi() {
    let (e, child, out) = downstream(&map(&[("x-b3-sampled", "0")]), true);
    assert_eq!(e.format, Format::B3Multi);
    assert_eq!(e.malformed, None);
    assert_eq!(e.context.ids, None);
    assert_eq!(e.context.sampling, Sampling::NotSampled);
    // A new trace is started with the caller's decision.
    assert_eq!(get(&out, "x-b3-sampled"), Some("0"));
    assert_eq!(
        get(&out, "x-b3-traceid").unwrap(),
        child.ids.unwrap().trace_id.to_string()
    );
    assert_eq!(get(&out, "x-b3-parentspanid"), None);
}

#[test]
fn sampling_only_single() {
    let (e, _, out) = downstream(&map(&[("b3", "0")]), true);
    assert_eq!(
        (e.format, e.context.sampling, e.context.ids),
        (Format::B3Single, Sampling::NotSampled, None)
    );
    assert_eq!(get(&out, "x-b3-sampled"), Some("0"));
    assert!(get(&out, "b3").unwrap().ends_with("-0"));

    let (e, _, out) = downstream(&map(&[("b3", "d")]), false);
    assert_eq!(e.context.sampling, Sampling::Debug);
    assert_eq!(get(&out, "x-b3-flags"), Some("1"));
    assert!(get(&out, "b3").unwrap().ends_with("-d"));
}

#[test]
fn deferred_decision_is_made_by_this_hop() {
    let h = map(&[("x-b3-traceid", T128), ("x-b3-spanid", S)]);
    let (e, _, out) = downstream(&h, true);
    assert_eq!(e.context.sampling, Sampling::Deferred);
    assert_eq!(get(&out, "x-b3-sampled"), Some("1"));
    let (_, _, out) = downstream(&h, false);
    assert_eq!(get(&out, "x-b3-sampled"), Some("0"));
    // Without a decision nothing about sampling is written.
    let mut raw = HeaderMap::new();
    inject(&extract(&h).context, &mut raw);
    assert_eq!(get(&raw, "x-b3-sampled"), None);
    assert_eq!(get(&raw, "x-b3-flags"), None);
}

#[test]
fn duplicate_headers_first_wins() {
    let h = map(&[
        ("x-b3-traceid", T64),
        ("x-b3-traceid", T128),
        ("x-b3-spanid", S),
        ("x-b3-sampled", "1"),
        ("x-b3-sampled", "0"),
    ]);
    let (e, _, out) = downstream(&h, false);
    assert_eq!(ids(&e).trace_id.to_string(), T64);
    assert_eq!(e.context.sampling, Sampling::Sampled);
    assert_eq!(out.get_all("x-b3-traceid").iter().count(), 1);
    assert_eq!(out.get_all("x-b3-sampled").iter().count(), 1);
}

#[test]
fn mixed_case_header_names() {
    let h = map(&[
        ("X-B3-TraceId", T64),
        ("X-B3-SpanId", S),
        ("X-B3-Sampled", "1"),
        ("B3", ""),
    ]);
    let e = extract(&h);
    assert_eq!(ids(&e).trace_id.to_string(), T64);
    assert_eq!(e.context.sampling, Sampling::Sampled);
}

#[test]
fn single_header_forms() {
    let e = extract(&map(&[("b3", &format!("{T128}-{S}-1-{P}"))]));
    assert_eq!(e.format, Format::B3Single);
    assert_eq!(ids(&e).parent_id.unwrap().to_string(), P);
    assert_eq!(e.context.sampling, Sampling::Sampled);
    let e = extract(&map(&[("b3", &format!("{T64}-{S}"))]));
    assert_eq!(e.context.sampling, Sampling::Deferred);
    assert!(!ids(&e).trace_id.is_128bit());
    for bad in [
        format!("{T64}-{S}-x"),
        format!("{T64}-{S}-1-{P}-1"),
        T64.to_string(),
        "2".into(),
        format!("{T64}-{S}-1-zz"),
    ] {
        let e = extract(&map(&[("b3", &bad)]));
        assert_eq!(e.malformed, Some(Malformed::B3Single), "{bad}");
        assert_eq!(e.context.ids, None);
    }
}

#[test]
fn single_wins_over_multi_unless_malformed() {
    let other = "1111111111111111";
    let h = map(&[
        ("b3", &format!("{T128}-{S}-1")),
        ("x-b3-traceid", T64),
        ("x-b3-spanid", other),
    ]);
    let (e, child, out) = downstream(&h, false);
    assert_eq!(e.format, Format::B3Single);
    assert_eq!(ids(&e).trace_id.to_string(), T128);
    // Both forms leave describing the same (new) span.
    let span = child.ids.unwrap().span_id.to_string();
    assert_eq!(get(&out, "x-b3-traceid"), Some(T128));
    assert_eq!(get(&out, "b3").unwrap(), format!("{T128}-{span}-1-{S}"));

    let h = map(&[
        ("b3", "garbage"),
        ("x-b3-traceid", T64),
        ("x-b3-spanid", other),
    ]);
    let (e, child, out) = downstream(&h, true);
    assert_eq!(e.format, Format::B3Multi);
    assert_eq!(e.malformed, Some(Malformed::B3Single));
    assert_eq!(ids(&e).span_id.to_string(), other);
    let span = child.ids.unwrap().span_id.to_string();
    assert_eq!(get(&out, "b3").unwrap(), format!("{T64}-{span}-1-{other}"));
}

#[test]
fn traceparent_without_b3_joins_the_trace() {
    let tp = format!("00-{T128}-{S}-01");
    let h = map(&[("traceparent", &tp), ("tracestate", "congo=t61rcWkgMzE")]);
    let (e, child, out) = downstream(&h, false);
    assert_eq!(e.format, Format::TraceParent);
    assert_eq!(ids(&e).trace_id.to_string(), T128);
    assert_eq!(e.context.sampling, Sampling::Sampled);
    let span = child.ids.unwrap().span_id.to_string();
    assert_eq!(get(&out, "x-b3-traceid"), Some(T128));
    assert_eq!(get(&out, "x-b3-parentspanid"), Some(S));
    assert_eq!(
        get(&out, "traceparent").unwrap(),
        format!("00-{T128}-{span}-01")
    );
    assert_eq!(get(&out, "tracestate"), Some("congo=t61rcWkgMzE"));

    let e = extract(&map(&[("traceparent", &format!("00-{T128}-{S}-00"))]));
    assert_eq!(e.context.sampling, Sampling::NotSampled);
    for bad in [
        format!("ff-{T128}-{S}-01"),
        format!("00-{T128}-{S}-01-x"),
        format!("00-{}-{S}-01", "0".repeat(32)),
        format!("00-{T128}-{S}"),
    ] {
        let (e, _, out) = downstream(&map(&[("traceparent", &bad), ("tracestate", "a=b")]), true);
        assert_eq!(e.malformed, Some(Malformed::TraceParent), "{bad}");
        assert_ne!(get(&out, "traceparent"), Some(bad.as_str()));
        assert!(get(&out, "traceparent").is_some_and(|t| t.len() == 55));
        assert_eq!(get(&out, "tracestate"), None);
    }
    // A future version with extra fields is accepted.
    assert!(
        extract(&map(&[("traceparent", &format!("01-{T128}-{S}-01-abc"))]))
            .malformed
            .is_none()
    );
}

#[test]
fn b3_wins_over_traceparent_and_both_are_rewritten() {
    let h = map(&[
        ("traceparent", &format!("00-{}-{S}-01", "1".repeat(32))),
        ("x-b3-traceid", T64),
        ("x-b3-spanid", S),
        ("x-b3-sampled", "1"),
    ]);
    let (_, child, out) = downstream(&h, false);
    let span = child.ids.unwrap().span_id.to_string();
    assert_eq!(
        get(&out, "traceparent").unwrap(),
        format!("00-0000000000000000{T64}-{span}-01")
    );
}

#[test]
fn no_headers_new_root() {
    let (e, child, out) = downstream(&HeaderMap::new(), true);
    assert_eq!((e.format, e.malformed), (Format::None, None));
    let c = child.ids.unwrap();
    assert_eq!(c.parent_id, None);
    assert_eq!(get(&out, "x-b3-traceid").unwrap().len(), 32);
    assert_eq!(get(&out, "x-b3-spanid").unwrap().len(), 16);
    assert_eq!(get(&out, "b3"), None);
    // Both default formats describe the new root.
    assert_eq!(
        get(&out, "traceparent").unwrap(),
        format!("00-{}-{}-01", c.trace_id, c.span_id)
    );
}

/// Random bytes in random trace headers: never a panic, and what goes out is well-formed and
/// exactly what an independent reference writes, for every choice of formats.
#[test]
fn randomized_headers_never_panic_and_output_is_well_formed() {
    let names = TRACE_HEADERS;
    let alphabet = b"0123456789abcdefABCDEF-xdz =,";
    let mut rng = fastrand::Rng::with_seed(7);
    for round in 0..20_000 {
        let mut h = HeaderMap::new();
        for _ in 0..rng.usize(0..6) {
            let len = rng.usize(0..70);
            let bytes: Vec<u8> = if rng.bool() {
                (0..len)
                    .map(|_| alphabet[rng.usize(..alphabet.len())])
                    .collect()
            } else {
                (0..len).map(|_| rng.u8(0x20..0x7f)).collect()
            };
            if let Ok(v) = HeaderValue::from_bytes(&bytes) {
                h.append(names[rng.usize(..names.len())], v);
            }
        }
        // Often a well-formed traceparent, so that random tracestate lists are read.
        if rng.u8(0..4) == 0 {
            let tp = format!("00-{T128}-{S}-0{}", rng.u8(0..2));
            h.append("traceparent", HeaderValue::from_str(&tp).unwrap());
            for _ in 0..rng.usize(1..4) {
                let list = random_tracestate(&mut rng);
                h.append("tracestate", HeaderValue::from_str(&list).unwrap());
            }
        }
        let propagation = [
            Propagation::default(),
            Propagation {
                b3_multi: true,
                trace_context: false,
            },
            Propagation {
                b3_multi: false,
                trace_context: true,
            },
        ][round % 3];
        let (e, child, out) = downstream_as(&h, rng.bool(), propagation);
        if e.malformed.is_none() && e.format == Format::None {
            assert_eq!(e.context.ids, None);
        }
        let ids = child.ids.unwrap();
        let hex = |s: &str, lens: &[usize]| {
            lens.contains(&s.len())
                && s.bytes()
                    .all(|c| c.is_ascii_digit() || (b'a'..=b'f').contains(&c))
        };
        if propagation.b3_multi {
            assert!(hex(get(&out, "x-b3-traceid").unwrap(), &[16, 32]));
            assert!(hex(get(&out, "x-b3-spanid").unwrap(), &[16]));
            assert_eq!(get(&out, "x-b3-spanid").unwrap(), ids.span_id.to_string());
        }
        // What goes out parses back to exactly what was sent (the parent survives in B3 only).
        let back = extract(&out);
        assert_eq!(back.malformed, None);
        let got = back.context.ids.unwrap();
        assert_eq!(
            (got.trace_id.low(), got.span_id),
            (ids.trace_id.low(), ids.span_id)
        );
        assert_eq!(back.context.sampling, child.sampling);
        assert_eq!(
            trace_headers(&out),
            trace_headers(&reference_inject(&child, &h, propagation, &e))
        );
    }
}

/// A `tracestate` list of valid and invalid members, with optional white space and empty
/// members, sometimes long or with a repeated key.
fn random_tracestate(rng: &mut fastrand::Rng) -> String {
    let keys = [
        "a", "b", "vendor", "t0@sys", "0t@s", "k_-*/9", "Bad", "x.y", "@s", "t@",
    ];
    let values = ["1", "v a", "", " ", "a=b", "!~"];
    let n = rng.usize(0..12);
    let members: Vec<String> = (0..n)
        .map(|i| {
            let key = if rng.u8(0..3) == 0 {
                keys[rng.usize(..keys.len())].to_owned()
            } else {
                format!("k{i}{}", rng.u8(0..40))
            };
            // Lengths around the spec's limits: 128 for a long member, 256 for a value.
            let long;
            let value = if rng.bool() {
                long = "x".repeat(rng.usize(1..260));
                long.as_str()
            } else {
                values[rng.usize(..values.len())]
            };
            let ows = [" ", "\t", ""][rng.usize(..3)];
            if rng.u8(0..10) == 0 {
                String::new()
            } else {
                format!("{ows}{key}={value}{ows}")
            }
        })
        .collect();
    members.join(",")
}

const TRACE_HEADERS: [&str; 8] = [
    "b3",
    "x-b3-traceid",
    "x-b3-spanid",
    "x-b3-parentspanid",
    "x-b3-sampled",
    "x-b3-flags",
    "traceparent",
    "tracestate",
];

/// Every value of every trace header, by name.
fn trace_headers(h: &HeaderMap) -> Vec<(&'static str, Vec<String>)> {
    TRACE_HEADERS
        .iter()
        .map(|&n| {
            let values = h
                .get_all(n)
                .iter()
                .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
                .collect();
            (n, values)
        })
        .collect()
}

/// `inject` by the letter of its contract, with no care for cost and no use of the codec's
/// writer: drop every trace header, then write each format from the ids with `format!`: the
/// `x-b3-*` set and `traceparent` (with the caller's combined `tracestate`) as `propagation`
/// says, and `b3` where the request had it.
fn reference_inject(
    ctx: &TraceContext,
    original: &HeaderMap,
    propagation: Propagation,
    extracted: &Extracted,
) -> HeaderMap {
    let mut h = original.clone();
    for n in TRACE_HEADERS {
        h.remove(n);
    }
    let mut put = |name: &'static str, value: String| {
        h.insert(name, HeaderValue::from_str(&value).unwrap());
    };
    let ids = ctx.ids.expect("a child always has ids");
    let trace = if ids.trace_id.is_128bit() {
        format!("{:016x}{:016x}", ids.trace_id.high(), ids.trace_id.low())
    } else {
        format!("{:016x}", ids.trace_id.low())
    };
    let span = format!("{:016x}", ids.span_id.get());
    let parent = ids.parent_id.map(|p| format!("{:016x}", p.get()));
    let flag = match ctx.sampling {
        Sampling::Deferred => None,
        Sampling::Sampled => Some("1"),
        Sampling::NotSampled => Some("0"),
        Sampling::Debug => Some("d"),
    };
    if propagation.b3_multi {
        put("x-b3-traceid", trace.clone());
        put("x-b3-spanid", span.clone());
        if let Some(p) = &parent {
            put("x-b3-parentspanid", p.clone());
        }
        match ctx.sampling {
            Sampling::Sampled => put("x-b3-sampled", "1".into()),
            Sampling::NotSampled => put("x-b3-sampled", "0".into()),
            Sampling::Debug => {
                put("x-b3-sampled", "1".into());
                put("x-b3-flags", "1".into());
            }
            Sampling::Deferred => {}
        }
    }
    if original.contains_key("b3") {
        let b3 = match (flag, &parent) {
            (None, _) => format!("{trace}-{span}"),
            (Some(f), None) => format!("{trace}-{span}-{f}"),
            (Some(f), Some(p)) => format!("{trace}-{span}-{f}-{p}"),
        };
        put("b3", b3);
    }
    if propagation.trace_context {
        let sampled = matches!(ctx.sampling, Sampling::Sampled | Sampling::Debug);
        put(
            "traceparent",
            format!(
                "00-{:016x}{:016x}-{span}-{}",
                ids.trace_id.high(),
                ids.trace_id.low(),
                if sampled { "01" } else { "00" }
            ),
        );
        // Carried when the caller's trace continues and its traceparent was well-formed.
        let traceparent_ok = original
            .get("traceparent")
            .is_some_and(|v| reference_traceparent_ok(v.as_bytes()));
        if extracted.context.ids.is_some() && traceparent_ok {
            let values: Vec<String> = original
                .get_all("tracestate")
                .iter()
                .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
                .collect();
            if let Some(state) = reference_tracestate(&values) {
                put("tracestate", state);
            }
        }
    }
    h
}

/// The W3C `traceparent` grammar, spelled out on characters.
fn reference_traceparent_ok(v: &[u8]) -> bool {
    let Ok(v) = std::str::from_utf8(v) else {
        return false;
    };
    let fields: Vec<&str> = v.split('-').collect();
    let lower_hex =
        |f: &str, n: usize| f.len() == n && f.chars().all(|c| matches!(c, '0'..='9' | 'a'..='f'));
    if fields.len() < 4 || !lower_hex(fields[0], 2) || fields[0] == "ff" {
        return false;
    }
    if fields[0] == "00" && fields.len() != 4 {
        return false;
    }
    lower_hex(fields[1], 32)
        && fields[1] != "0".repeat(32)
        && lower_hex(fields[2], 16)
        && fields[2] != "0".repeat(16)
        && lower_hex(fields[3], 2)
}

/// The W3C rules for `tracestate`, on strings: one list from every header, white space and
/// empty members gone, invalid members dropped, a repeated key or more than 32 members drop
/// the list, then long members and then the last ones go until it fits in 512 characters.
fn reference_tracestate(values: &[String]) -> Option<String> {
    let joined = values.join(",");
    let mut members: Vec<&str> = Vec::new();
    for m in joined.split(',') {
        let m = m.trim_matches(|c| c == ' ' || c == '\t');
        if m.is_empty() {
            continue;
        }
        let Some((key, value)) = m.split_once('=') else {
            continue;
        };
        let key_char = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || "_-*/".contains(c);
        let key_ok = match key.split_once('@') {
            None => {
                key.starts_with(|c: char| c.is_ascii_lowercase())
                    && key.len() <= 256
                    && key.chars().all(key_char)
            }
            Some((tenant, system)) => {
                !tenant.is_empty()
                    && tenant.len() <= 241
                    && tenant.chars().all(key_char)
                    && system.starts_with(|c: char| c.is_ascii_lowercase())
                    && system.len() <= 14
                    && system.chars().all(key_char)
            }
        };
        let value_ok = !value.is_empty()
            && value.len() <= 256
            && !value.ends_with(' ')
            && value
                .chars()
                .all(|c| (' '..='~').contains(&c) && c != ',' && c != '=');
        if !(key_ok && value_ok) {
            continue;
        }
        if members.iter().any(|k| k.split('=').next() == Some(key)) {
            return None;
        }
        members.push(m);
    }
    if members.len() > 32 {
        return None;
    }
    while members.join(",").len() > 512 {
        match members.iter().position(|m| m.len() > 128) {
            Some(i) => members.remove(i),
            None => members.pop().unwrap(),
        };
    }
    (!members.is_empty()).then(|| members.join(","))
}

#[test]
fn headers_already_right_are_kept_and_stale_ones_go() {
    // The usual hop: the trace id and decision carry over, the span ids change.
    let h = map(&[
        ("x-b3-traceid", T128),
        ("x-b3-spanid", S),
        ("x-b3-sampled", "1"),
        ("x-b3-flags", "0"),
        ("tracestate", "congo=t61rcWkgMzE"),
        ("host", "b.example"),
    ]);
    let (_, child, out) = downstream(&h, false);
    let ids = child.ids.unwrap();
    assert_eq!(get(&out, "x-b3-traceid"), Some(T128));
    assert_eq!(get(&out, "x-b3-spanid").unwrap(), ids.span_id.to_string());
    assert_eq!(get(&out, "x-b3-parentspanid"), Some(S));
    assert_eq!(get(&out, "x-b3-sampled"), Some("1"));
    // Flags other than 1 are not forwarded; tracestate without a traceparent is not read.
    assert_eq!(get(&out, "x-b3-flags"), None);
    assert_eq!(get(&out, "tracestate"), None);
    assert_eq!(get(&out, "host"), Some("b.example"));
    assert_eq!(
        get(&out, "traceparent").unwrap(),
        format!("00-{T128}-{}-01", ids.span_id)
    );
    assert_eq!(out.len(), 6);
}

#[test]
fn undecided_single_header_has_no_parent() {
    // `b3` orders sampling before the parent, so an undecided context is `{trace}-{span}`.
    let h = map(&[("b3", &format!("{T64}-{S}")), ("x-b3-parentspanid", P)]);
    let child = extract(&h).context.child();
    let mut out = h.clone();
    inject(&child, &mut out);
    let span = child.ids.unwrap().span_id.to_string();
    assert_eq!(get(&out, "b3").unwrap(), format!("{T64}-{span}"));
    assert_eq!(get(&out, "x-b3-parentspanid"), Some(S));
}

#[test]
fn injected_values_stay_intact_across_many_requests() {
    // Values are cut from shared per-thread buffers; thousands of them, kept alive together,
    // span many buffers and must each keep their own bytes.
    let sent: Vec<(TraceContext, HeaderMap)> = (0..2_000)
        .map(|_| {
            let mut ctx = TraceContext::default().child();
            ctx.sampling = Sampling::Sampled;
            let mut h = HeaderMap::new();
            inject(&ctx, &mut h);
            (ctx, h)
        })
        .collect();
    for (ctx, h) in &sent {
        let ids = ctx.ids.unwrap();
        assert_eq!(get(h, "x-b3-traceid").unwrap(), ids.trace_id.to_string());
        assert_eq!(get(h, "x-b3-spanid").unwrap(), ids.span_id.to_string());
        assert_eq!(extract(h).context.ids, Some(ids));
    }
}

#[test]
fn traceparent_is_written_when_only_b3_came() {
    let h = map(&[
        ("x-b3-traceid", T64),
        ("x-b3-spanid", S),
        ("x-b3-sampled", "1"),
    ]);
    let (_, child, out) = downstream(&h, false);
    let span = child.ids.unwrap().span_id.to_string();
    // The 64-bit B3 trace id, widened as W3C needs, and the same new span.
    assert_eq!(
        get(&out, "traceparent").unwrap(),
        format!("00-0000000000000000{T64}-{span}-01")
    );
    assert_eq!(get(&out, "x-b3-spanid"), Some(span.as_str()));
    assert_eq!(get(&out, "tracestate"), None);
    assert_eq!(get(&out, "b3"), None, "b3 single only when it came");
}

#[test]
fn b3_is_written_when_only_traceparent_came() {
    let h = map(&[("traceparent", &format!("00-{T128}-{S}-00"))]);
    let (_, child, out) = downstream(&h, true);
    let ids = child.ids.unwrap();
    assert_eq!(get(&out, "x-b3-traceid"), Some(T128));
    assert_eq!(get(&out, "x-b3-spanid").unwrap(), ids.span_id.to_string());
    assert_eq!(get(&out, "x-b3-parentspanid"), Some(S));
    // The caller's decision (not sampled) wins over this hop's.
    assert_eq!(get(&out, "x-b3-sampled"), Some("0"));
    assert_eq!(
        get(&out, "traceparent").unwrap(),
        format!("00-{T128}-{}-00", ids.span_id)
    );
    assert_eq!(get(&out, "b3"), None);
}

#[test]
fn b3_single_is_kept_beside_both_formats() {
    let h = map(&[("b3", &format!("{T128}-{S}-1"))]);
    let (_, child, out) = downstream(&h, false);
    let span = child.ids.unwrap().span_id.to_string();
    assert_eq!(get(&out, "b3").unwrap(), format!("{T128}-{span}-1-{S}"));
    assert_eq!(get(&out, "x-b3-spanid"), Some(span.as_str()));
    assert_eq!(
        get(&out, "traceparent").unwrap(),
        format!("00-{T128}-{span}-01")
    );
    // And when neither listed format is written, `b3` still is.
    let none = Propagation {
        b3_multi: false,
        trace_context: false,
    };
    let (_, child, out) = downstream_as(&h, false, none);
    let span = child.ids.unwrap().span_id.to_string();
    assert_eq!(get(&out, "b3").unwrap(), format!("{T128}-{span}-1-{S}"));
    assert_eq!(
        trace_headers(&out)
            .iter()
            .filter(|(_, v)| !v.is_empty())
            .count(),
        1
    );
}

#[test]
fn tracestate_is_kept_when_b3_wins() {
    let h = map(&[
        ("x-b3-traceid", T128),
        ("x-b3-spanid", S),
        ("x-b3-sampled", "1"),
        ("traceparent", &format!("00-{T128}-{P}-01")),
        ("tracestate", "rojo=00f067aa0ba902b7"),
        ("tracestate", "congo=t61rcWkgMzE"),
    ]);
    let (e, child, out) = downstream(&h, false);
    assert_eq!(e.format, Format::B3Multi);
    assert_eq!(ids(&e).span_id.to_string(), S);
    let span = child.ids.unwrap().span_id.to_string();
    assert_eq!(
        get(&out, "traceparent").unwrap(),
        format!("00-{T128}-{span}-01")
    );
    // Two headers are one list, sent on as one header, in order.
    assert_eq!(
        out.get_all("tracestate").iter().collect::<Vec<_>>(),
        ["rojo=00f067aa0ba902b7,congo=t61rcWkgMzE"]
    );
}

#[test]
fn tracestate_combination_follows_the_w3c_rules() {
    let tp = format!("00-{T128}-{S}-01");
    let out_state = |states: &[&str]| {
        let mut pairs = vec![("traceparent", tp.as_str())];
        pairs.extend(states.iter().map(|s| ("tracestate", *s)));
        let (_, _, out) = downstream(&map(&pairs), true);
        let all: Vec<String> = out
            .get_all("tracestate")
            .iter()
            .map(|v| v.to_str().unwrap().to_owned())
            .collect();
        assert!(all.len() <= 1, "one combined header: {all:?}");
        all.into_iter().next()
    };
    // Order kept across headers; white space and empty members dropped.
    assert_eq!(
        out_state(&["foo=1, bar=2", "", "baz=3 ,"]).as_deref(),
        Some("foo=1,bar=2,baz=3")
    );
    // Invalid members dropped, the valid ones kept.
    assert_eq!(
        out_state(&["foo=1,BAR=2,ba z=3,qux=4"]).as_deref(),
        Some("foo=1,qux=4")
    );
    // A repeated key or more than 32 members: the whole header is dropped.
    assert_eq!(out_state(&["foo=1", "foo=2"]), None);
    let many: Vec<String> = (0..33).map(|i| format!("k{i}=v")).collect();
    assert_eq!(
        out_state(&[&many[..16].join(","), &many[16..32].join(",")]).map(|s| s.split(',').count()),
        Some(32)
    );
    assert_eq!(
        out_state(&[&many[..16].join(","), &many[16..].join(",")]),
        None
    );
    // With a malformed traceparent, tracestate is not read at all.
    let (_, _, out) = downstream(
        &map(&[("traceparent", "00-xyz"), ("tracestate", "foo=1")]),
        true,
    );
    assert_eq!(get(&out, "tracestate"), None);
}

#[test]
fn propagation_setting_narrows_the_output() {
    let h = map(&[
        ("x-b3-traceid", T128),
        ("x-b3-spanid", S),
        ("x-b3-sampled", "1"),
        ("traceparent", &format!("00-{T128}-{S}-01")),
        ("tracestate", "foo=1"),
    ]);
    let only_b3 = Propagation {
        b3_multi: true,
        trace_context: false,
    };
    let (_, child, out) = downstream_as(&h, false, only_b3);
    assert_eq!(
        get(&out, "x-b3-spanid").unwrap(),
        child.ids.unwrap().span_id.to_string()
    );
    // Not left behind stale either.
    assert_eq!(get(&out, "traceparent"), None);
    assert_eq!(get(&out, "tracestate"), None);

    let only_w3c = Propagation {
        b3_multi: false,
        trace_context: true,
    };
    let (_, child, out) = downstream_as(&h, false, only_w3c);
    let span = child.ids.unwrap().span_id.to_string();
    assert_eq!(
        get(&out, "traceparent").unwrap(),
        format!("00-{T128}-{span}-01")
    );
    assert_eq!(get(&out, "tracestate"), Some("foo=1"));
    for n in [
        "x-b3-traceid",
        "x-b3-spanid",
        "x-b3-parentspanid",
        "x-b3-sampled",
        "x-b3-flags",
    ] {
        assert_eq!(get(&out, n), None, "{n}");
    }
    // The next hop still reads the whole context from traceparent alone.
    let back = extract(&out);
    assert_eq!(back.context.ids.unwrap().span_id.to_string(), span);
    assert_eq!(back.context.sampling, Sampling::Sampled);
}
