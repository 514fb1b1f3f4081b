//! B3 / W3C codec cost: paid on every proxied HTTP request, twice per sidecar (extract on the
//! way in, inject on the way out), so it sits directly on the latency budget.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion};
use http::{HeaderMap, HeaderName, HeaderValue};

fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
    let mut map = HeaderMap::new();
    for (k, v) in pairs {
        map.append(HeaderName::from_static(k), HeaderValue::from_static(v));
    }
    map.insert(
        "host",
        HeaderValue::from_static("reviews.default.svc.cluster.local:9080"),
    );
    map.insert("user-agent", HeaderValue::from_static("curl/8.5.0"));
    map.insert("accept", HeaderValue::from_static("*/*"));
    map
}

fn codec(c: &mut Criterion) {
    let multi = headers(&[
        ("x-b3-traceid", "463ac35c9f6413ad48485a3953bb6124"),
        ("x-b3-spanid", "a2fb4a1d1a96d312"),
        ("x-b3-parentspanid", "0020000000000001"),
        ("x-b3-sampled", "1"),
    ]);
    let single = headers(&[(
        "b3",
        "463ac35c9f6413ad48485a3953bb6124-a2fb4a1d1a96d312-1-0020000000000001",
    )]);
    let traceparent = headers(&[(
        "traceparent",
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
    )]);
    let none = headers(&[]);
    let malformed = headers(&[
        ("x-b3-traceid", "not-hex"),
        ("x-b3-spanid", "a2fb4a1d1a96d312"),
    ]);

    for (name, map) in [
        ("b3 multi", &multi),
        ("b3 single", &single),
        ("traceparent", &traceparent),
        ("no context", &none),
        ("malformed", &malformed),
    ] {
        c.bench_function(&format!("extract/{name}"), |b| {
            b.iter(|| trace_context::extract(black_box(map)))
        });
    }

    let ctx = trace_context::extract(&multi).context.child();
    c.bench_function("inject/b3 multi", |b| {
        b.iter_batched_ref(
            || multi.clone(),
            |map| trace_context::inject(black_box(&ctx), map),
            criterion::BatchSize::SmallInput,
        )
    });
    let ctx_single = trace_context::extract(&single).context.child();
    c.bench_function("inject/b3 single", |b| {
        b.iter_batched_ref(
            || single.clone(),
            |map| trace_context::inject(black_box(&ctx_single), map),
            criterion::BatchSize::SmallInput,
        )
    });
    // A sidecar starting a trace: nothing to read, the whole x-b3 set to write.
    let root = trace_context::extract(&none).context.child();
    c.bench_function("inject/new root", |b| {
        b.iter_batched_ref(
            || none.clone(),
            |map| trace_context::inject(black_box(&root), map),
            criterion::BatchSize::SmallInput,
        )
    });
    c.bench_function("extract+child+inject/b3 multi", |b| {
        b.iter_batched_ref(
            || multi.clone(),
            |map| {
                let next = trace_context::extract(map).context.child();
                trace_context::inject(&next, map);
            },
            criterion::BatchSize::SmallInput,
        )
    });
    // The same hop as the proxy runs it: the trace headers found once for both halves.
    c.bench_function("propagate/b3 multi", |b| {
        b.iter_batched_ref(
            || multi.clone(),
            |map| trace_context::propagate(map, |seen| seen.context.child()),
            criterion::BatchSize::SmallInput,
        )
    });
}

criterion_group!(benches, codec);
criterion_main!(benches);
