//! Span export cost: at full sampling every request's span is encoded on the sidecar's export
//! thread, so encoding a batch is part of the tracing CPU per request.

use std::hint::black_box;
use std::time::{Duration, SystemTime};

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use mesh_proxy::trace::gzip::Gzip;
use mesh_proxy::trace::span::SpanRecord;
use mesh_proxy::trace::zipkin::ZipkinEncoder;
use mesh_proxy::trace::{Direction, Outcome};
use trace_context::{SpanId, SpanIds, TraceId};

/// A batch as the bench's sidecars produce it: a POST through A (CLIENT) and B (SERVER) per
/// request, 128-bit trace ids, a parent on every span, 200 answers.
fn batch(n: usize) -> Vec<SpanRecord> {
    (0..n)
        .map(|i| {
            let (parts, _) = http::Request::post("http://echo.bench:8080/echo?round=1")
                .body(())
                .expect("a valid request")
                .into_parts();
            let ids = SpanIds {
                trace_id: TraceId::generate(),
                span_id: SpanId::generate(),
                parent_id: Some(SpanId::generate()),
            };
            let direction = if i % 2 == 0 {
                Direction::Outbound
            } else {
                Direction::Inbound
            };
            let peer = "127.0.0.1:43210".parse().expect("an address");
            let upstream = "127.0.0.1:8080".parse().expect("an address");
            let mut span = SpanRecord::begin(direction, &parts, ids, false, peer, upstream);
            span.end(
                SystemTime::now(),
                Duration::from_micros(250 + i as u64),
                Outcome {
                    status: Some(http::StatusCode::OK),
                    request_size: 128,
                    response_size: 128,
                    ..Outcome::default()
                },
            );
            span
        })
        .collect()
}

fn export(c: &mut Criterion) {
    let spans = batch(128);
    let encoder = ZipkinEncoder::new("b.bench", Some("127.0.0.1".parse().expect("an address")));
    let mut group = c.benchmark_group("export");
    group.throughput(Throughput::Elements(spans.len() as u64));
    group.bench_function("zipkin json/128 spans", |b| {
        b.iter(|| encoder.encode(black_box(&spans)))
    });
    group.finish();

    // Gzip of an encoded batch: a fresh encoder per batch (allocating and clearing its tables
    // each time) against the exporter's state reused between batches.
    let mut group = c.benchmark_group("gzip");
    for n in [8, 128] {
        let body = encoder.encode(&batch(n));
        group.throughput(Throughput::Elements(n as u64));
        group.bench_function(format!("fresh encoder/{n} spans"), |b| {
            b.iter(|| {
                use std::io::Write as _;
                let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
                gz.write_all(black_box(&body)).expect("into memory");
                gz.finish().expect("into memory")
            })
        });
        let mut packer = Gzip::default();
        group.bench_function(format!("reused state/{n} spans"), |b| {
            b.iter(|| packer.pack(black_box(&body)))
        });
    }
    group.finish();
}

criterion_group!(benches, export);
criterion_main!(benches);
