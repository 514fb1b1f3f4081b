//! The kube backend against a mock API server (`tower_test::mock::pair` as the Client's
//! service): the exact requests it makes, answered with real API objects.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::{Request, Response, StatusCode};
use http_body_util::BodyExt;
use kube::client::Body;
use mesh_config::LogLevel;
use mesh_injector::backend::kube::KubeBackend;
use mesh_injector::served::ServedRx;
use serde_json::{json, Value};

const BASE: &str = "/apis/config.tracemesh.dev/v1alpha1/namespaces/mesh-system/meshconfigs";

#[derive(Debug, Clone)]
struct Seen {
    method: String,
    path: String,
    query: String,
    content_type: String,
    body: Value,
}

fn mesh_config(rv: &str, generation: i64, spec: Value) -> Value {
    json!({"apiVersion": "config.tracemesh.dev/v1alpha1", "kind": "MeshConfig",
        "metadata": {"name": "mesh-config", "namespace": "mesh-system", "resourceVersion": rv,
                     "generation": generation, "uid": "0b5e7d7e-4a43-4b6b-9f3c-3e1d0c1a2b3c"},
        "spec": spec})
}

fn json_response(status: StatusCode, v: &Value) -> Response<Body> {
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(Body::from(serde_json::to_vec(v).expect("json")))
        .expect("response")
}

/// Answers like an API server holding namespace `shop` and the MeshConfig; records every request.
/// Watch responses wait for a go from the test, so each step can be observed on its own.
fn api_server(
    mut handle: tower_test::mock::Handle<Request<Body>, Response<Body>>,
    go: tokio::sync::mpsc::Receiver<()>,
) -> Arc<Mutex<Vec<Seen>>> {
    // Shared by the gated watch answers, which run beside the loop so other requests go on.
    let go = Arc::new(tokio::sync::Mutex::new(go));
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = seen.clone();
    tokio::spawn(async move {
        let mut watches = 0;
        let mut held = Vec::new();
        while let Some((req, send)) = handle.next_request().await {
            let (parts, body) = req.into_parts();
            let bytes = body
                .collect()
                .await
                .map(|b| b.to_bytes())
                .unwrap_or_default();
            let s = Seen {
                method: parts.method.to_string(),
                path: parts.uri.path().to_string(),
                query: parts.uri.query().unwrap_or_default().to_string(),
                content_type: parts
                    .headers
                    .get("content-type")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or_default()
                    .into(),
                body: serde_json::from_slice(&bytes).unwrap_or(Value::Null),
            };
            log.lock().expect("log").push(s.clone());
            match (s.method.as_str(), s.path.as_str()) {
                ("GET", "/api/v1/namespaces/shop") => send.send_response(json_response(StatusCode::OK, &json!({
                    "apiVersion": "v1", "kind": "Namespace",
                    "metadata": {"name": "shop", "resourceVersion": "3", "uid": "1d6c7a1e-0000-4000-8000-000000000002",
                        "labels": {"kubernetes.io/metadata.name": "shop", "tracemesh.dev/monitored-by": "tracemesh"},
                        "annotations": {"tracemesh.dev/sidecar-injection": "enabled"}},
                    "spec": {"finalizers": ["kubernetes"]}, "status": {"phase": "Active"}}))),
                ("GET", p) if p.starts_with("/api/v1/namespaces/") => send.send_response(json_response(StatusCode::NOT_FOUND, &json!({
                    "apiVersion": "v1", "kind": "Status", "metadata": {}, "status": "Failure",
                    "message": "namespaces \"missing\" not found", "reason": "NotFound",
                    "details": {"name": "missing", "kind": "namespaces"}, "code": 404}))),
                ("GET", BASE) if !s.query.contains("watch=true") => send.send_response(json_response(StatusCode::OK, &json!({
                    "apiVersion": "config.tracemesh.dev/v1alpha1", "kind": "MeshConfigList",
                    "metadata": {"resourceVersion": "10"},
                    "items": [mesh_config("10", 1, json!({"sidecar": {"logLevel": "debug"}}))]}))),
                ("GET", BASE) => {
                    watches += 1;
                    // First an invalid edit, then (on the re-watch) a valid one; later watches
                    // stay open with nothing to say.
                    let event = match watches {
                        1 => json!({"type": "MODIFIED", "object": mesh_config("11", 2,
                            json!({"observability": {"tracing": {"enable": true, "address": "", "protocol": "carrier-pigeon"}}}))}),
                        2 => json!({"type": "MODIFIED", "object": mesh_config("12", 3, json!({"sidecar": {"logLevel": "trace"}}))}),
                        _ => {
                            held.push(send);
                            continue;
                        }
                    };
                    let go = go.clone();
                    tokio::spawn(async move {
                        if go.lock().await.recv().await.is_none() {
                            return;
                        }
                        let mut body = serde_json::to_vec(&event).expect("json");
                        body.push(b'\n');
                        send.send_response(Response::builder().status(200).body(Body::from(body)).expect("response"));
                    });
                }
                ("PATCH", p) if p == format!("{BASE}/mesh-config/status") => {
                    let mut obj = mesh_config("13", 3, json!({}));
                    obj["status"] = s.body["status"].clone();
                    send.send_response(json_response(StatusCode::OK, &obj));
                }
                _ => send.send_response(json_response(StatusCode::NOT_FOUND, &json!({
                    "apiVersion": "v1", "kind": "Status", "status": "Failure", "code": 404, "reason": "NotFound", "message": "unexpected"}))),
            }
        }
    });
    seen
}

async fn next(rx: &mut ServedRx) -> Arc<mesh_injector::served::Served> {
    tokio::time::timeout(Duration::from_secs(20), rx.changed())
        .await
        .expect("a change within 20s")
        .expect("backend alive");
    rx.borrow_and_update().clone()
}

#[tokio::test]
async fn kube_backend_reads_namespaces_and_follows_the_mesh_config() {
    // A generous bound so a regression fails instead of hanging the suite.
    tokio::time::timeout(Duration::from_secs(60), scenario())
        .await
        .expect("scenario within 60s");
}

async fn scenario() {
    let (service, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let (go, gate) = tokio::sync::mpsc::channel(1);
    let seen = api_server(handle, gate);
    let client = kube::Client::new(service, "default");
    let backend = KubeBackend::start(client, "mesh-system", "mesh-config");

    let shop = backend
        .namespace("shop")
        .await
        .expect("get")
        .expect("exists");
    assert_eq!(
        shop.labels
            .get("tracemesh.dev/monitored-by")
            .map(String::as_str),
        Some("tracemesh")
    );
    assert_eq!(
        shop.annotations
            .get("tracemesh.dev/sidecar-injection")
            .map(String::as_str),
        Some("enabled")
    );
    assert_eq!(backend.namespace("missing").await.expect("get"), None);

    // The listed document.
    let mut rx = backend.config();
    let s = next(&mut rx).await;
    assert_eq!(s.config.spec.sidecar.log_level, LogLevel::Debug);
    assert_eq!(s.last_error, None);

    // An invalid edit is refused and the last good document stays served.
    go.send(()).await.expect("gate");
    let s = next(&mut rx).await;
    assert_eq!(
        s.config.spec.sidecar.log_level,
        LogLevel::Debug,
        "last good kept"
    );
    let refused = s
        .last_error
        .clone()
        .expect("the invalid version was refused");
    assert!(refused.contains("spec.observability.tracing"), "{refused}");

    // A valid edit goes through.
    go.send(()).await.expect("gate");
    let s = next(&mut rx).await;
    assert_eq!(s.config.spec.sidecar.log_level, LogLevel::Trace);
    assert_eq!(s.last_error, None);

    // Wait for the three status writes (accepted, refused, accepted), then check every request.
    let writes = || {
        seen.lock()
            .expect("log")
            .iter()
            .filter(|s| s.method == "PATCH")
            .cloned()
            .collect::<Vec<_>>()
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while writes().len() < 3 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let seen = seen.lock().expect("log").clone();
    let summary: Vec<String> = seen
        .iter()
        .map(|s| format!("{} {}", s.method, s.path))
        .collect();
    let ns: Vec<&String> = summary.iter().filter(|s| s.contains("/api/v1/")).collect();
    assert_eq!(
        ns,
        [
            "GET /api/v1/namespaces/shop",
            "GET /api/v1/namespaces/missing"
        ]
    );

    let config: Vec<&Seen> = seen.iter().filter(|s| s.path.starts_with(BASE)).collect();
    let list = config[0];
    assert_eq!((list.method.as_str(), list.path.as_str()), ("GET", BASE));
    assert!(
        list.query
            .contains("fieldSelector=metadata.name%3Dmesh-config"),
        "{}",
        list.query
    );
    assert!(!list.query.contains("watch=true"));
    let watch = config
        .iter()
        .find(|s| s.query.contains("watch=true"))
        .expect("a watch request");
    assert!(
        watch.query.contains("resourceVersion=10"),
        "{}",
        watch.query
    );
    assert!(watch
        .query
        .contains("fieldSelector=metadata.name%3Dmesh-config"));

    let patches: Vec<&&Seen> = config.iter().filter(|s| s.method == "PATCH").collect();
    assert_eq!(patches.len(), 3, "{summary:?}");
    for p in &patches {
        assert_eq!(p.path, format!("{BASE}/mesh-config/status"));
        assert_eq!(p.content_type, "application/merge-patch+json");
    }
    assert_eq!(patches[0].body["status"]["valid"], true);
    assert_eq!(patches[1].body["status"]["valid"], false);
    assert_eq!(patches[1].body["status"]["observedGeneration"], 2);
    assert!(patches[1].body["status"]["message"]
        .as_str()
        .unwrap_or_default()
        .contains("protocol"));
    assert_eq!(patches[2].body["status"]["valid"], true);
    assert_eq!(patches[2].body["status"]["observedGeneration"], 3);
    // Nothing else was asked of the API server.
    assert!(
        seen.iter()
            .all(|s| s.method == "GET" || s.method == "PATCH"),
        "{summary:?}"
    );
}
