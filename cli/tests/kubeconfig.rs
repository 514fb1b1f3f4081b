//! `--kubeconfig` and `--context` pick the cluster: a kubeconfig with two contexts, each pointing
//! at its own local API server that says a different control-plane version, and the built `mesh`
//! binary asked for its version. Each server counts its requests, so the test sees which one was
//! dialled, and that the other was not.

use http_body_util::Full;
use hyper::body::Bytes;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use tokio::net::TcpListener;

/// A fake API server whose injector Deployment runs `mesh-injector:<tag>`.
struct ApiServer {
    url: String,
    hits: Arc<AtomicUsize>,
}

async fn api_server(tag: &'static str) -> ApiServer {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("addr"));
    let hits = Arc::new(AtomicUsize::new(0));
    let counter = hits.clone();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let counter = counter.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |request: Request<_>| {
                    counter.fetch_add(1, Ordering::SeqCst);
                    let found = request.uri().path()
                        == "/apis/apps/v1/namespaces/mesh-system/deployments/mesh-injector";
                    let (status, body) = if found {
                        (200, deployment(tag))
                    } else {
                        (
                            404,
                            json!({"kind": "Status", "apiVersion": "v1", "status": "Failure",
                                     "reason": "NotFound", "code": 404, "message": "not found"}),
                        )
                    };
                    async move {
                        Response::builder()
                            .status(status)
                            .header("content-type", "application/json")
                            .body(Full::new(Bytes::from(body.to_string())))
                    }
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    ApiServer { url, hits }
}

fn deployment(tag: &str) -> Value {
    json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "mesh-injector", "namespace": "mesh-system"},
        "spec": {"replicas": 1, "selector": {},
                 "template": {"spec": {"containers": [
                     {"name": "mesh-injector", "image": format!("ghcr.io/tracemesh/mesh-injector:{tag}")}]}}},
        "status": {"readyReplicas": 1}
    })
}

/// Three contexts: `alpha` (current), `beta`, and `gone`, whose server refuses connections.
fn kubeconfig(dir: &Path, alpha: &str, beta: &str) -> PathBuf {
    let closed = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let gone = format!("http://{}", closed.local_addr().expect("addr"));
    drop(closed);
    let text = format!(
        "apiVersion: v1
kind: Config
clusters:
- name: alpha
  cluster: {{server: '{alpha}'}}
- name: beta
  cluster: {{server: '{beta}'}}
- name: gone
  cluster: {{server: '{gone}'}}
users:
- name: dev
  user: {{token: not-a-secret}}
contexts:
- name: alpha
  context: {{cluster: alpha, user: dev}}
- name: beta
  context: {{cluster: beta, user: dev}}
- name: gone
  context: {{cluster: gone, user: dev}}
current-context: alpha
"
    );
    let path = dir.join("kubeconfig");
    std::fs::write(&path, text).expect("write kubeconfig");
    path
}

/// Runs `mesh ARGS version -o json` off the runtime (the servers stay on it).
async fn version(args: Vec<String>, env_kubeconfig: Option<PathBuf>) -> (i32, Value, String) {
    tokio::task::spawn_blocking(move || {
        let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_mesh"));
        command
            .args(&args)
            .args(["version", "-o", "json"])
            .env_remove("MESH_BACKEND")
            .env_remove("KUBECONFIG");
        if let Some(path) = env_kubeconfig {
            command.env("KUBECONFIG", path);
        }
        let output = command.output().expect("run mesh");
        let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
        let value = serde_json::from_slice(&output.stdout).unwrap_or(Value::Null);
        (output.status.code().expect("exited"), value, stderr)
    })
    .await
    .expect("join")
}

fn flags(kubeconfig: &Path, context: Option<&str>) -> Vec<String> {
    let mut flags = vec!["--kubeconfig".to_string(), kubeconfig.display().to_string()];
    if let Some(context) = context {
        flags.extend(["--context".to_string(), context.to_string()]);
    }
    flags
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubeconfig_and_context_select_the_cluster_that_is_dialled() {
    let (alpha, beta) = (
        api_server("v1.0.0-alpha").await,
        api_server("v2.0.0-beta").await,
    );
    let dir = tempfile::tempdir().expect("tempdir");
    let file = kubeconfig(dir.path(), &alpha.url, &beta.url);

    let (code, value, stderr) = version(flags(&file, None), None).await;
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(value["controlPlane"]["version"], "v1.0.0-alpha", "{value}");
    assert!(alpha.hits.load(Ordering::SeqCst) > 0);
    assert_eq!(
        beta.hits.load(Ordering::SeqCst),
        0,
        "the current context is alpha"
    );

    let (code, value, stderr) = version(flags(&file, Some("beta")), None).await;
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(value["controlPlane"]["version"], "v2.0.0-beta", "{value}");
    let beta_hits = beta.hits.load(Ordering::SeqCst);
    assert!(beta_hits > 0);

    // --context alone reads KUBECONFIG, as kubectl does.
    let alpha_hits = alpha.hits.load(Ordering::SeqCst);
    let context_only = vec!["--context".to_string(), "beta".to_string()];
    let (code, value, stderr) = version(context_only, Some(file.clone())).await;
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(value["controlPlane"]["version"], "v2.0.0-beta", "{value}");
    assert!(beta.hits.load(Ordering::SeqCst) > beta_hits);
    assert_eq!(
        alpha.hits.load(Ordering::SeqCst),
        alpha_hits,
        "alpha not dialled"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_cluster_and_an_unknown_context_are_reported() {
    let (alpha, beta) = (api_server("v1").await, api_server("v2").await);
    let dir = tempfile::tempdir().expect("tempdir");
    let file = kubeconfig(dir.path(), &alpha.url, &beta.url);

    // version still prints the client's and says why the control plane's is missing.
    let (code, value, _) = version(flags(&file, Some("gone")), None).await;
    assert_eq!(code, 0);
    assert!(value["client"]["version"].is_string());
    assert!(value["controlPlane"].is_null());
    assert!(value["controlPlaneError"].is_string(), "{value}");

    let (code, value, _) = version(flags(&file, Some("nope")), None).await;
    assert_eq!(code, 0, "version reports, it does not fail");
    assert!(
        value["controlPlaneError"]
            .as_str()
            .unwrap_or_default()
            .contains("nope"),
        "{value}"
    );
    let output = tokio::task::spawn_blocking(move || {
        std::process::Command::new(env!("CARGO_BIN_EXE_mesh"))
            .args(flags(&file, Some("nope")))
            .args(["namespace", "list"])
            .env_remove("MESH_BACKEND")
            .output()
            .expect("run mesh")
    })
    .await
    .expect("join");
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("nope"),
        "the error names the context: {stderr}"
    );
    assert_eq!(alpha.hits.load(Ordering::SeqCst), 0);
    assert_eq!(beta.hits.load(Ordering::SeqCst), 0);

    // mesh check on an unreachable cluster: one failed line, exit 1.
    let dir_path = dir.path().to_path_buf();
    let output = tokio::task::spawn_blocking(move || {
        std::process::Command::new(env!("CARGO_BIN_EXE_mesh"))
            .args(flags(&dir_path.join("kubeconfig"), Some("gone")))
            .arg("check")
            .env_remove("MESH_BACKEND")
            .output()
            .expect("run mesh")
    })
    .await
    .expect("join");
    assert_eq!(output.status.code(), Some(1));
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        stdout.starts_with("✘ Kubernetes API not reachable"),
        "{stdout}"
    );
}
