use std::collections::HashMap;

use super::*;
use trace_context::{SpanId, TraceId};

fn parent(n: u64) -> Parent {
    Parent {
        ids: SpanIds {
            trace_id: TraceId::new_64(n).unwrap(),
            span_id: SpanId::new(n).unwrap(),
            parent_id: None,
        },
        sampling: Sampling::Sampled,
    }
}

fn rid(s: &str) -> HeaderValue {
    HeaderValue::from_str(s).unwrap()
}

#[test]
fn request_id_finds_its_inbound_request_while_it_is_in_flight() {
    let table = Arc::new(Table::default());
    let a = table.register(Some(&rid("a")), parent(1));
    let b = table.register(Some(&rid("b")), parent(2));
    assert_eq!(
        table.look_up(Stitching::RequestId, Some(&rid("b"))),
        Answer::Stitched(Stitch::RequestId, parent(2))
    );
    assert_eq!(
        table.look_up(Stitching::RequestId, Some(&rid("c"))),
        Answer::Root
    );
    // Off stitches nothing, even an exact match.
    assert_eq!(table.look_up(Stitching::Off, Some(&rid("b"))), Answer::Root);
    drop(b);
    assert_eq!(
        table.look_up(Stitching::RequestId, Some(&rid("b"))),
        Answer::Root
    );
    drop(a);
    assert_eq!((table.in_flight(), table.held()), (0, 0));
}

#[test]
fn one_request_id_in_flight_twice_is_ambiguous() {
    let table = Arc::new(Table::default());
    let _a = table.register(Some(&rid("same")), parent(1));
    let _b = table.register(Some(&rid("same")), parent(2));
    assert_eq!(
        table.look_up(Stitching::InFlight, Some(&rid("same"))),
        Answer::Ambiguous
    );
}

#[test]
fn in_flight_stitches_only_the_only_request() {
    let table = Arc::new(Table::default());
    assert_eq!(table.look_up(Stitching::InFlight, None), Answer::Root);
    let a = table.register(None, parent(1));
    assert_eq!(
        table.look_up(Stitching::InFlight, None),
        Answer::Stitched(Stitch::InFlight, parent(1))
    );
    // request-id mode never guesses.
    assert_eq!(table.look_up(Stitching::RequestId, None), Answer::Root);
    let b = table.register(None, parent(2));
    assert_eq!(table.look_up(Stitching::InFlight, None), Answer::Ambiguous);
    drop(a);
    assert_eq!(
        table.look_up(Stitching::InFlight, None),
        Answer::Stitched(Stitch::InFlight, parent(2))
    );
    drop(b);
    assert_eq!(table.look_up(Stitching::InFlight, None), Answer::Root);
}

#[test]
fn a_request_the_table_does_not_hold_still_makes_in_flight_ambiguous() {
    // Counted while stitching was off (or tracing off).
    let table = Arc::new(Table::default());
    let unheld = table.count();
    assert!(!unheld.is_held());
    let held = table.register(None, parent(1));
    assert!(held.is_held());
    assert_eq!(table.look_up(Stitching::InFlight, None), Answer::Ambiguous);
    drop(unheld);
    assert_eq!(
        table.look_up(Stitching::InFlight, None),
        Answer::Stitched(Stitch::InFlight, parent(1))
    );
    drop(held);

    // Past the capacity: counted, not held.
    let table = Arc::new(Table::with_capacity(1));
    let first = table.register(None, parent(1));
    let second = table.register(Some(&rid("x")), parent(2));
    assert!(!second.is_held());
    assert_eq!(table.held(), 1);
    assert_eq!(table.look_up(Stitching::InFlight, None), Answer::Ambiguous);
    drop(first);
    // The only request in flight is one the table could not hold: no parent to name.
    assert_eq!(table.look_up(Stitching::InFlight, None), Answer::Ambiguous);
    assert_eq!(
        table.look_up(Stitching::InFlight, Some(&rid("x"))),
        Answer::Ambiguous
    );
    drop(second);
    assert_eq!(table.look_up(Stitching::InFlight, None), Answer::Root);
}

#[test]
fn the_pod_override_wins_over_the_mesh_config() {
    let table = Table::default();
    assert_eq!(table.mode(Stitching::RequestId), Stitching::RequestId);
    for mode in Stitching::ALL {
        table.set_override(Some(mode));
        assert_eq!(table.mode(Stitching::RequestId), mode);
    }
    table.set_override(None);
    assert_eq!(table.mode(Stitching::InFlight), Stitching::InFlight);
}

/// The model the table is held against: the inbound requests in flight, by serial, with
/// whether the table holds them and their request id.
struct Model {
    live: HashMap<u64, (bool, Option<u8>, Parent)>,
}

impl Model {
    /// What the table must answer: a request the table does not hold cannot be named by its
    /// id, and makes any in-flight answer ambiguous.
    fn expect(&self, mode: Stitching, id: Option<u8>) -> Answer {
        if mode == Stitching::Off {
            return Answer::Root;
        }
        if let Some(id) = id {
            let same: Vec<_> = self
                .live
                .values()
                .filter(|(held, rid, _)| *held && *rid == Some(id))
                .collect();
            match same.as_slice() {
                [(_, _, p)] => return Answer::Stitched(Stitch::RequestId, *p),
                [] => {}
                _ => return Answer::Ambiguous,
            }
        }
        if mode != Stitching::InFlight {
            return Answer::Root;
        }
        let all: Vec<_> = self.live.values().collect();
        match all.as_slice() {
            [] => Answer::Root,
            [(true, _, p)] => Answer::Stitched(Stitch::InFlight, *p),
            _ => Answer::Ambiguous,
        }
    }
}

/// Random interleavings of inbound starts and ends and outbound look-ups, from fixed seeds: a
/// stitch happens exactly when one inbound request covers the outbound start (by request id,
/// or alone in flight), and always names that request.
#[test]
fn random_interleavings_stitch_only_under_exactly_one_covering_request() {
    let mut answers: HashMap<&'static str, usize> = HashMap::new();
    for seed in 0..200u64 {
        let mut rng = fastrand::Rng::with_seed(seed);
        // Small tables and few ids, so overflow and shared ids both happen.
        let capacity = rng.usize(1..6);
        let table = Arc::new(Table::with_capacity(capacity));
        let mut model = Model {
            live: HashMap::new(),
        };
        let mut guards: Vec<(u64, Registration)> = Vec::new();
        let mut next = 1u64;
        for step in 0..300 {
            match rng.u8(0..10) {
                0..=2 => {
                    let id = rng.bool().then(|| rng.u8(0..4));
                    let p = parent(next);
                    let value = id.map(|i| rid(&format!("req-{i}")));
                    let g = if rng.u8(0..8) == 0 {
                        table.count()
                    } else {
                        table.register(value.as_ref(), p)
                    };
                    model.live.insert(next, (g.is_held(), id, p));
                    guards.push((next, g));
                    next += 1;
                }
                3..=5 if !guards.is_empty() => {
                    let (serial, g) = guards.swap_remove(rng.usize(..guards.len()));
                    drop(g);
                    model.live.remove(&serial);
                }
                _ => {
                    let mode = Stitching::ALL[rng.usize(..3)];
                    let id = rng.bool().then(|| rng.u8(0..5));
                    let value = id.map(|i| rid(&format!("req-{i}")));
                    let got = table.look_up(mode, value.as_ref());
                    let want = model.expect(mode, id);
                    assert_eq!(got, want, "seed {seed} step {step} mode {mode} id {id:?}");
                    let kind = match got {
                        Answer::Stitched(how, _) => how.as_str(),
                        Answer::Ambiguous => "ambiguous",
                        Answer::Root => "root",
                    };
                    *answers.entry(kind).or_default() += 1;
                }
            }
            assert_eq!(table.in_flight(), model.live.len());
            assert!(table.held() <= capacity);
        }
        drop(guards);
        assert_eq!((table.in_flight(), table.held()), (0, 0), "seed {seed}");
    }
    // The interleavings reach every answer, so the comparisons above were not vacuous.
    for kind in ["request-id", "in-flight", "ambiguous", "root"] {
        assert!(answers.get(kind).copied().unwrap_or(0) > 100, "{answers:?}");
    }
}

/// The same property with real threads: requests that overlap in time on several workers.
/// The truth is the set each thread knows it has in flight; a stitch must name a request that
/// was in flight across the look-up, and an in-flight stitch needs it to be the only one.
#[test]
fn concurrent_workers_never_get_a_wrong_parent() {
    let table = Arc::new(Table::with_capacity(4));
    let threads: Vec<_> = (0..4u64)
        .map(|t| {
            let table = table.clone();
            std::thread::spawn(move || {
                let mut rng = fastrand::Rng::with_seed(t);
                let mut wrong = 0;
                for i in 0..2_000u64 {
                    let n = t * 1_000_000 + i + 1;
                    let id = rid(&format!("{n}"));
                    let g = table.register(Some(&id), parent(n));
                    for _ in 0..rng.usize(0..3) {
                        match table.look_up(Stitching::InFlight, Some(&id)) {
                            Answer::Stitched(Stitch::RequestId, p) if p == parent(n) => {}
                            // Held, so its own id always finds it.
                            other => {
                                if g.is_held() {
                                    wrong += 1;
                                    eprintln!("request {n}: {other:?}");
                                }
                            }
                        }
                    }
                    // Without an id: only this request may be named, and only when alone.
                    if let Answer::Stitched(_, p) = table.look_up(Stitching::InFlight, None) {
                        if p != parent(n) {
                            wrong += 1;
                        }
                    }
                    drop(g);
                }
                wrong
            })
        })
        .collect();
    for t in threads {
        assert_eq!(t.join().unwrap(), 0);
    }
    assert_eq!((table.in_flight(), table.held()), (0, 0));
}

/// Through [`crate::trace::Tracer::start`], as the HTTP path drives it.
mod through_the_tracer {
    use super::*;
    use crate::trace::{ActiveSpan, Direction, Tracer};

    fn tracer(stitching: Stitching) -> Tracer {
        let tracer = Tracer::new(Default::default(), Default::default());
        tracer.apply(&mesh_config::Tracing {
            enable: true,
            address: "127.0.0.1".into(),
            // Nothing is exported in these tests.
            port: 9,
            stitching,
            ..Default::default()
        });
        tracer
    }

    fn start(
        tracer: &Tracer,
        direction: Direction,
        headers: &[(&str, &str)],
    ) -> (ActiveSpan, http::HeaderMap) {
        let mut b = http::Request::get("http://c.default:8080/items");
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        let mut parts = b.body(()).unwrap().into_parts().0;
        let addr = "10.0.0.1:80".parse().unwrap();
        let span = tracer.start(direction, &mut parts, addr, addr);
        (span, parts.headers)
    }

    fn record(span: &ActiveSpan) -> &crate::trace::span::SpanRecord {
        &span.pending.as_ref().expect("recording").record
    }

    fn outcomes(tracer: &Tracer) -> [u64; 5] {
        let family = &tracer.metrics().outbound_context;
        let c = Counters::of(family);
        [
            c.propagated.get(),
            c.stitched_request_id.get(),
            c.stitched_in_flight.get(),
            c.ambiguous.get(),
            c.root.get(),
        ]
    }

    #[tokio::test]
    async fn an_outbound_request_with_an_inbound_request_id_becomes_its_child() {
        let tracer = tracer(Stitching::RequestId);
        let (inbound, _) = start(&tracer, Direction::Inbound, &[("x-request-id", "r1")]);
        let server = record(&inbound).ids;

        let (outbound, headers) = start(&tracer, Direction::Outbound, &[("x-request-id", "r1")]);
        let client = record(&outbound);
        assert_eq!(client.ids.trace_id, server.trace_id);
        assert_eq!(client.ids.parent_id, Some(server.span_id));
        assert_eq!(client.stitch, Some(Stitch::RequestId));
        // The upstream receives the full context: this CLIENT span, its parent the SERVER span.
        assert_eq!(
            headers["x-b3-spanid"],
            client.ids.span_id.to_string().as_str()
        );
        assert_eq!(
            headers["x-b3-parentspanid"],
            server.span_id.to_string().as_str()
        );
        assert_eq!(headers["x-b3-sampled"], "1");
        assert!(headers["traceparent"]
            .to_str()
            .unwrap()
            .contains(&server.trace_id.encode_128().as_str().to_owned()));

        // An app that propagates is never touched.
        let (propagated, headers) = start(
            &tracer,
            Direction::Outbound,
            &[
                ("x-request-id", "r1"),
                ("x-b3-traceid", "48485a3953bb6124"),
                ("x-b3-spanid", "a2fb4a1d1a96d312"),
            ],
        );
        let r = record(&propagated);
        assert_eq!(r.ids.parent_id.unwrap().to_string(), "a2fb4a1d1a96d312");
        assert_eq!(r.stitch, None);
        assert_eq!(headers["x-b3-traceid"], "48485a3953bb6124");

        // Another id, and in request-id mode no guess from what is in flight.
        let (other, _) = start(&tracer, Direction::Outbound, &[("x-request-id", "r2")]);
        assert_eq!(record(&other).ids.parent_id, None);
        assert_eq!(record(&other).stitch, None);
        let (bare, _) = start(&tracer, Direction::Outbound, &[]);
        assert_eq!(record(&bare).stitch, None);

        // Once the inbound request ended, its id names nothing.
        drop(inbound);
        let (late, _) = start(&tracer, Direction::Outbound, &[("x-request-id", "r1")]);
        assert_eq!(record(&late).ids.parent_id, None);
        assert_eq!(outcomes(&tracer), [1, 1, 0, 0, 3]);
        assert_eq!(tracer.stitching().in_flight(), 0);
        tracer.flush(std::time::Duration::from_secs(1)).await;
    }

    #[tokio::test]
    async fn in_flight_mode_and_the_pod_override() {
        let tracer = tracer(Stitching::RequestId);
        tracer.stitching().set_override(Some(Stitching::InFlight));
        assert_eq!(tracer.status().stitching, Stitching::InFlight);
        let (one, _) = start(&tracer, Direction::Inbound, &[]);
        let (child, _) = start(&tracer, Direction::Outbound, &[]);
        assert_eq!(record(&child).ids.parent_id, Some(record(&one).ids.span_id));
        assert_eq!(record(&child).stitch, Some(Stitch::InFlight));
        let (two, _) = start(&tracer, Direction::Inbound, &[]);
        let (orphan, _) = start(&tracer, Direction::Outbound, &[]);
        assert_eq!(record(&orphan).ids.parent_id, None);
        // Finishing ends the registration as dropping does.
        two.finish(Default::default());
        let (again, _) = start(&tracer, Direction::Outbound, &[]);
        assert_eq!(record(&again).ids.parent_id, Some(record(&one).ids.span_id));
        assert_eq!(outcomes(&tracer), [0, 0, 2, 1, 0]);

        tracer.stitching().set_override(Some(Stitching::Off));
        let (off, _) = start(&tracer, Direction::Outbound, &[]);
        assert_eq!(record(&off).ids.parent_id, None);
        assert_eq!(outcomes(&tracer), [0, 0, 2, 1, 1]);
        drop(one);
        tracer.flush(std::time::Duration::from_secs(1)).await;
    }

    /// A parent's "do not record" reaches the upstream too: the stitched request is
    /// propagated, unsampled, and records nothing.
    #[tokio::test]
    async fn an_unsampled_parent_stays_unsampled() {
        let tracer = tracer(Stitching::RequestId);
        let (inbound, _) = start(
            &tracer,
            Direction::Inbound,
            &[("x-request-id", "r1"), ("x-b3-sampled", "0")],
        );
        assert!(!inbound.is_recording());
        let (outbound, headers) = start(&tracer, Direction::Outbound, &[("x-request-id", "r1")]);
        assert!(!outbound.is_recording());
        assert_eq!(headers["x-b3-sampled"], "0");
        assert!(headers.contains_key("x-b3-parentspanid"));
        drop(inbound);
        tracer.flush(std::time::Duration::from_secs(1)).await;
    }

    /// With tracing off, nothing is stitched, but inbound requests are still counted, so an
    /// in-flight answer given after tracing comes on is not fooled by them.
    #[tokio::test]
    async fn requests_from_before_tracing_came_on_still_count() {
        let tracer = Tracer::new(Default::default(), Default::default());
        let (before, _) = start(&tracer, Direction::Inbound, &[]);
        assert_eq!(tracer.stitching().in_flight(), 1);
        tracer.apply(&mesh_config::Tracing {
            enable: true,
            address: "127.0.0.1".into(),
            port: 9,
            stitching: Stitching::InFlight,
            ..Default::default()
        });
        let (_after, _) = start(&tracer, Direction::Inbound, &[]);
        let (orphan, _) = start(&tracer, Direction::Outbound, &[]);
        assert_eq!(record(&orphan).ids.parent_id, None);
        assert_eq!(outcomes(&tracer), [0, 0, 0, 1, 0]);
        drop(before);
        tracer.flush(std::time::Duration::from_secs(1)).await;
    }
}
