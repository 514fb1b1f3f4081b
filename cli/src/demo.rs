//! `mesh demo`: the whole mesh on this machine, no Kubernetes and no root. A collector, a state
//! dir in a temporary directory, and three services A → B → C, each behind a `mesh-proxy`
//! sidecar in explicit mode with tracing on; then requests to A and their traces as trees.
//!
//! B is an app that knows nothing of tracing: it forwards only `x-request-id` (as many logging
//! middlewares do). Its sidecar stitches its outbound request to the inbound one by that id
//! (MeshConfig `stitching: request-id`, the default), so every trace is still one tree.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context as _};
use tokio::net::TcpListener;
use tracemesh_collector::{render_tree, Collector, CollectorConfig, RunningCollector};

use crate::backend::state_dir::StateDirBackend;
use crate::local::demo_app::{self, DemoApp, Forwards};
use crate::local::enrolment::{self, Enrolment};
use crate::local::ports::free_port;
use crate::local::sidecar::{find_proxy_bin, Sidecar, SidecarSpec};
use crate::local::{probe, SIDECAR_READY_TIMEOUT};
use crate::namespace::{DEFAULT_MESH_NAME, MONITORED_BY_LABEL, SIDECAR_INJECTION_ANNOTATION};
use crate::Global;

const NAMESPACE: &str = "demo";
/// Callers first: A calls B, B calls C.
const SERVICES: [&str; 3] = ["a", "b", "c"];
/// The service that forwards no trace headers, only `x-request-id`.
const UNINSTRUMENTED: &str = "b";
/// One request makes a SERVER span at each of A, B and C and a CLIENT span at A and B.
const SPANS_PER_REQUEST: usize = 5;
/// Generous: the sidecars batch their exports, usually within a second or two.
const SPAN_WAIT: Duration = Duration::from_secs(30);

/// The wire format the sidecars export in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Protocol {
    Zipkin,
    OtlpHttp,
    OtlpGrpc,
}

/// `mesh demo` flags.
#[derive(Debug, Clone, clap::Args)]
#[command(after_help = "\
The demo keeps its state (namespace, MeshConfig, sidecar logs, spans.jsonl) in a fresh
temporary directory, removed when it succeeds and kept when it fails; --state-dir is not used.
It runs mesh-proxy from $MESH_PROXY_BIN, next to this executable, or from PATH.

Examples:
  mesh demo --requests 10
  mesh demo --protocol otlp-grpc")]
pub struct Args {
    /// Send N requests to A, print their traces and exit (0 when every trace is one tree of
    /// A → B → C); without it, run until Ctrl-C and print traces as they arrive
    #[arg(long, value_name = "N")]
    pub requests: Option<usize>,
    /// Span export protocol of the sidecars
    #[arg(long, value_enum, default_value = "zipkin")]
    pub protocol: Protocol,
}

/// What the demo started, stopped in reverse on the way out.
struct Mesh {
    dir: PathBuf,
    sidecars: Vec<Sidecar>,
    apps: Vec<tokio::task::JoinHandle<()>>,
    /// A's public address: where requests enter the mesh.
    entry: SocketAddr,
}

pub async fn run(args: Args, _global: &Global) -> anyhow::Result<()> {
    run_with(args, find_proxy_bin()?).await
}

async fn run_with(args: Args, proxy_bin: PathBuf) -> anyhow::Result<()> {
    let dir = std::env::temp_dir().join(format!("tracemesh-demo-{}", std::process::id()));
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let loopback = Some(SocketAddr::from((Ipv4Addr::LOCALHOST, 0)));
    let collector = Collector::start(CollectorConfig {
        zipkin: loopback,
        otlp_http: loopback,
        otlp_grpc: loopback,
        out: Some(dir.join("spans.jsonl")),
    })
    .await
    .context("starting the collector")?;

    let mut mesh = match start_mesh(&dir, &collector, args.protocol, proxy_bin).await {
        Ok(mesh) => mesh,
        Err(e) => bail!("{e:#}\n(state dir and logs kept in {})", dir.display()),
    };
    let result = match args.requests {
        Some(n) => send_and_check(&mesh, &collector, n).await,
        None => {
            println!(
                "mesh running: try `curl http://{}/`; traces print below; Ctrl-C stops",
                mesh.entry
            );
            tokio::select! {
                () = tracemesh_collector::cli::print_traces(&collector, tracemesh_collector::cli::QUIET_PERIOD) => {}
                () = tracemesh_collector::cli::shutdown_signal() => {}
            }
            Ok(())
        }
    };
    for sidecar in &mut mesh.sidecars {
        sidecar.stop().await;
    }
    for app in &mesh.apps {
        app.abort();
    }
    match result {
        Ok(()) => {
            let _ = std::fs::remove_dir_all(&mesh.dir);
            Ok(())
        }
        Err(e) => bail!(
            "{e:#}\n(state dir, sidecar logs and spans kept in {})",
            mesh.dir.display()
        ),
    }
}

async fn start_mesh(
    dir: &std::path::Path,
    collector: &RunningCollector,
    protocol: Protocol,
    proxy_bin: PathBuf,
) -> anyhow::Result<Mesh> {
    let backend = StateDirBackend::new(dir);
    backend.patch_namespace_blocking(
        NAMESPACE,
        &serde_json::json!({"metadata": {
            "labels": {MONITORED_BY_LABEL: DEFAULT_MESH_NAME},
            "annotations": {SIDECAR_INJECTION_ANNOTATION: "enabled"},
        }}),
    )?;
    let (addr, endpoint, name) = match protocol {
        Protocol::Zipkin => (collector.zipkin, "/api/v2/spans", "zipkin"),
        Protocol::OtlpHttp => (collector.otlp_http, "/v1/traces", "otlp-http"),
        Protocol::OtlpGrpc => (collector.otlp_grpc, "/", "otlp-grpc"),
    };
    let addr = addr.context("collector receiver not bound")?;
    backend.patch_mesh_config_blocking(
        &serde_json::json!({"spec": {"observability": {"tracing": {
            "enable": true,
            "address": addr.ip().to_string(),
            "port": addr.port(),
            "endpoint": endpoint,
            "protocol": name,
            "sampledFraction": 1.0,
        }}}}),
    )?;
    let namespace = backend.read_namespace(NAMESPACE)?;
    if let Enrolment::Plain(reason) = enrolment::enrolment(NAMESPACE, namespace.as_ref()) {
        bail!("the demo namespace should be enrolled, but {reason}");
    }

    let mut mesh = Mesh {
        dir: dir.to_path_buf(),
        sidecars: Vec::new(),
        apps: Vec::new(),
        entry: SocketAddr::from((Ipv4Addr::LOCALHOST, 0)),
    };
    // Started from the end of the chain, so each service knows the next one's public address.
    let mut next: Option<SocketAddr> = None;
    for service in SERVICES.iter().rev() {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await?;
        let app_port = listener.local_addr()?.port();
        let public = free_port()?;
        let spec = SidecarSpec {
            service: service.to_string(),
            namespace: NAMESPACE.to_string(),
            mesh_config: backend.mesh_config_path(),
            inbound: Some((public, app_port)),
            log: Some(dir.join(format!("{service}.{NAMESPACE}.proxy.log"))),
            proxy_bin: proxy_bin.clone(),
        };
        let mut sidecar = Sidecar::spawn(&spec)?;
        sidecar
            .wait_ready(SIDECAR_READY_TIMEOUT)
            .await
            .with_context(|| format!("sidecar of {service}.{NAMESPACE}"))?;
        let proxy = SocketAddr::from((Ipv4Addr::LOCALHOST, sidecar.outbound_port));
        mesh.apps.push(demo_app::serve(
            listener,
            DemoApp {
                name: service.to_string(),
                next: next.map(|n| (n, proxy)),
                forwards: if *service == UNINSTRUMENTED {
                    Forwards::RequestIdOnly
                } else {
                    Forwards::TraceHeaders
                },
            },
        ));
        eprintln!(
            "{service}.{NAMESPACE}: 127.0.0.1:{public} -> sidecar -> app 127.0.0.1:{app_port} \
             (outbound proxy :{}, inbound :{}, admin :{})",
            sidecar.outbound_port, sidecar.inbound_port, sidecar.admin_port
        );
        mesh.sidecars.push(sidecar);
        next = Some(SocketAddr::from((Ipv4Addr::LOCALHOST, public)));
    }
    mesh.entry = next.context("no services")?;
    eprintln!(
        "{UNINSTRUMENTED}.{NAMESPACE} forwards no trace headers, only x-request-id: its sidecar \
         stitches its hop by request id (its CLIENT span is tagged tracemesh.stitch=request-id)"
    );
    eprintln!("collector: {name} on {addr}{endpoint} (all spans also in spans.jsonl)");
    Ok(mesh)
}

async fn send_and_check(mesh: &Mesh, collector: &RunningCollector, n: usize) -> anyhow::Result<()> {
    for i in 0..n {
        let (status, body) = probe::get(mesh.entry, "/")
            .await
            .with_context(|| format!("request {} to a.{NAMESPACE}", i + 1))?;
        if status != 200 {
            bail!(
                "request {} to a.{NAMESPACE} answered {status}: {}",
                i + 1,
                body.trim()
            );
        }
        if i == 0 {
            eprintln!("a.{NAMESPACE} answered: {}", body.trim());
        }
    }
    let want = n * SPANS_PER_REQUEST;
    let waited = collector.wait_for_spans(want, SPAN_WAIT).await;
    let spans = collector.spans();
    print!("{}", render_tree(&spans));
    if let Err(e) = waited {
        bail!("traces did not arrive: {e} (are the sidecars exporting? see their logs)");
    }
    check_traces(&collector.traces(), n)
}

/// Every request must be one connected tree: one root, five spans, A, B and C all present.
fn check_traces(
    traces: &[(String, Vec<tracemesh_collector::Span>)],
    n: usize,
) -> anyhow::Result<()> {
    if traces.len() != n {
        bail!(
            "expected {n} traces, got {}: requests were not each one trace",
            traces.len()
        );
    }
    for (trace_id, spans) in traces {
        let ids: Vec<&str> = spans.iter().map(|s| s.id.as_str()).collect();
        let roots = spans
            .iter()
            .filter(|s| s.parent_id.as_deref().is_none_or(|p| !ids.contains(&p)))
            .count();
        let mut services: Vec<&str> = spans.iter().map(|s| s.service()).collect();
        services.sort_unstable();
        services.dedup();
        let want: Vec<String> = SERVICES
            .iter()
            .map(|s| format!("{s}.{NAMESPACE}"))
            .collect();
        if spans.len() != SPANS_PER_REQUEST || roots != 1 || services != want {
            bail!(
                "trace {trace_id} is not one tree A -> B -> C: {} spans, {roots} roots, services {services:?}",
                spans.len()
            );
        }
        let stitched = spans
            .iter()
            .filter(|s| s.tag("tracemesh.stitch") == Some("request-id"))
            .count();
        if stitched != 1 {
            bail!("trace {trace_id}: {stitched} spans stitched by request id, expected B's one");
        }
    }
    println!(
        "ok: {n} requests, {n} traces, each one tree a -> b -> c of {SPANS_PER_REQUEST} spans \
         (b's hop stitched by x-request-id)"
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use tracemesh_collector::{Endpoint, Kind, Span};

    fn span(id: &str, parent: Option<&str>, service: &str) -> Span {
        Span {
            trace_id: "0000000000000001".into(),
            id: id.into(),
            parent_id: parent.map(str::to_string),
            kind: Some(Kind::Server),
            local_endpoint: Some(Endpoint {
                service_name: Some(format!("{service}.demo")),
                ..Endpoint::default()
            }),
            ..Span::default()
        }
    }

    /// The whole demo with real sidecars, in each export protocol.
    #[tokio::test]
    #[ignore = "needs mesh-proxy built beside the tests (cargo build --bins; scripts/test does)"]
    async fn the_demo_gives_one_tree_per_request_in_every_protocol() {
        let exe = std::env::current_exe().expect("test executable");
        // target/<profile>/deps/<test> -> target/<profile>/mesh-proxy
        let proxy_bin = exe
            .parent()
            .and_then(|deps| deps.parent())
            .map(|profile| profile.join("mesh-proxy"))
            .filter(|p| p.is_file())
            .expect("mesh-proxy is built in the profile directory");
        for protocol in [Protocol::Zipkin, Protocol::OtlpHttp, Protocol::OtlpGrpc] {
            let args = Args {
                requests: Some(2),
                protocol,
            };
            run_with(args, proxy_bin.clone())
                .await
                .unwrap_or_else(|e| panic!("{protocol:?}: {e:#}"));
        }
    }

    #[test]
    fn accepts_one_tree_and_refuses_a_broken_one() {
        let mut tree = vec![
            span("01", None, "a"),
            span("02", Some("01"), "a"),
            span("03", Some("02"), "b"),
            span("04", Some("03"), "b"),
            span("05", Some("04"), "c"),
        ];
        let traces = vec![("0000000000000001".to_string(), tree.clone())];
        let e = check_traces(&traces, 1).expect_err("B's hop not stitched");
        assert!(e.to_string().contains("0 spans stitched"), "{e}");
        tree[3]
            .tags
            .insert("tracemesh.stitch".into(), "request-id".into());
        let traces = vec![("0000000000000001".to_string(), tree.clone())];
        check_traces(&traces, 1).expect("one tree");
        let mut broken = tree;
        broken[2].parent_id = Some("ff".into());
        let traces = vec![("0000000000000001".to_string(), broken)];
        let e = check_traces(&traces, 1).expect_err("two roots").to_string();
        assert!(e.contains("2 roots"), "{e}");
        assert!(check_traces(&traces, 2).is_err());
    }
}
