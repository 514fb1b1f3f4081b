//! Cost of reading a MeshConfig: paid at startup and on every reload, never per request,
//! so this guards against accidental blow-ups rather than chasing nanoseconds.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion};

const FULL_YAML: &str = r#"
apiVersion: config.tracemesh.dev/v1alpha1
kind: MeshConfig
metadata: {name: mesh-config, namespace: mesh-system}
spec:
  observability:
    tracing:
      enable: true
      address: jaeger.mesh-system.svc.cluster.local
      port: 9411
      endpoint: /api/v2/spans
      protocol: zipkin
      sampledFraction: "0.5"
  traffic:
    inboundPortExclusionList: [22, 8081]
    outboundPortExclusionList: [53]
    outboundIPRangeExclusionList: ["10.0.0.0/8", "169.254.169.254/32", "fd00::/8"]
    opaquePorts: [25, 587, 3306, 4444, 5432, 6379, 9300, 11211]
  sidecar:
    logLevel: info
"#;

fn config(c: &mut Criterion) {
    let json = mesh_config::parse(FULL_YAML)
        .map(|p| p.config.to_json_value().to_string())
        .unwrap_or_default();
    let parsed = mesh_config::parse(FULL_YAML)
        .map(|p| p.config)
        .unwrap_or_default();

    c.bench_function("meshconfig/parse+validate yaml", |b| {
        b.iter(|| mesh_config::parse(black_box(FULL_YAML)))
    });
    c.bench_function("meshconfig/parse+validate json", |b| {
        b.iter(|| mesh_config::parse(black_box(&json)))
    });
    c.bench_function("meshconfig/parse empty spec", |b| {
        b.iter(|| mesh_config::parse(black_box("spec: {}")))
    });
    c.bench_function("meshconfig/validate in memory", |b| {
        b.iter(|| black_box(&parsed).validate())
    });
}

criterion_group!(benches, config);
criterion_main!(benches);
