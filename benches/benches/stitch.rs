//! Stitching's cost on the request path, per `Tracer::start`: what an app that propagates pays
//! (it should be nothing: its request is never looked up), what an inbound request pays to be
//! held in the pod's table, and what an outbound request without context pays to be looked up.
//! Each mode is measured on the same requests, so `off` is the baseline of the others.

use std::hint::black_box;
use std::net::SocketAddr;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion};
use mesh_config::{Stitching, Tracing};
use mesh_proxy::trace::{Direction, Tracer};

fn parts(headers: &[(&str, &str)]) -> http::request::Parts {
    let mut b = http::Request::get("http://reviews.default.svc.cluster.local:9080/reviews/0")
        .header("user-agent", "curl/8.5.0")
        .header("accept", "*/*");
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    b.body(()).expect("a valid request").into_parts().0
}

fn tracer(mode: Stitching) -> Tracer {
    let tracer = Tracer::new(Default::default(), Default::default());
    tracer.apply(&Tracing {
        enable: true,
        address: "127.0.0.1".into(),
        // Nothing is exported: spans are dropped unfinished.
        port: 9,
        stitching: mode,
        ..Tracing::default()
    });
    tracer
}

fn stitch(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let _entered = runtime.enter();
    let addr: SocketAddr = "10.0.0.1:9080".parse().expect("addr");
    let propagated = [
        ("x-request-id", "7f1c3a52-6d0e-4b8e-9a55-0c3c9a1e2f10"),
        ("x-b3-traceid", "463ac35c9f6413ad48485a3953bb6124"),
        ("x-b3-spanid", "a2fb4a1d1a96d312"),
        ("x-b3-sampled", "1"),
    ];
    let request_id_only = [("x-request-id", "7f1c3a52-6d0e-4b8e-9a55-0c3c9a1e2f10")];

    for mode in Stitching::ALL {
        let tracer = tracer(mode);
        // Eight inbound requests in flight, one of them with the outbound request's id.
        let in_flight: Vec<_> = (0..8)
            .map(|i| {
                let id = if i == 3 {
                    request_id_only[0].1.to_owned()
                } else {
                    format!("other-{i}")
                };
                let mut p = parts(&[("x-request-id", &id)]);
                tracer.start(Direction::Inbound, &mut p, addr, addr)
            })
            .collect();
        for (name, direction, headers) in [
            (
                "outbound, app propagated",
                Direction::Outbound,
                &propagated[..],
            ),
            (
                "outbound, x-request-id only",
                Direction::Outbound,
                &request_id_only[..],
            ),
            (
                "inbound (held while in flight)",
                Direction::Inbound,
                &request_id_only[..],
            ),
        ] {
            c.bench_function(&format!("start/{mode}/{name}"), |b| {
                b.iter_batched(
                    || parts(headers),
                    |mut p| black_box(tracer.start(direction, &mut p, addr, addr)),
                    BatchSize::SmallInput,
                )
            });
        }
        drop(in_flight);
    }
}

criterion_group!(benches, stitch);
criterion_main!(benches);
