//! Readiness and metrics of the kube-backed injector against a mock API server
//! (`tower_test::mock::pair`): `/readyz` says 503 with the reason (CRD missing, RBAC forbidden)
//! until the MeshConfig list answers, then 200; `/metrics` counts admissions by result and shows
//! the MeshConfig's generation; admissions hand pods the CA bundle of the certificate being served.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use kube::client::Body;
use mesh_injector::backend::{kube::KubeBackend, Backend};
use mesh_injector::inject::Settings;
use mesh_injector::server::{route, App, Routes};
use serde_json::{json, Value};

const BASE: &str = "/apis/config.tracemesh.dev/v1alpha1/namespaces/mesh-system/meshconfigs";

fn json_response(status: u16, v: &Value) -> Response<Body> {
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(Body::from(serde_json::to_vec(v).expect("json")))
        .expect("response")
}

fn failure(code: u16, reason: &str, message: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Status", "metadata": {}, "status": "Failure",
        "message": message, "reason": reason, "code": code})
}

/// The MeshConfig list answers with `list_status` (set by the test); watches stay open with
/// nothing to say; namespace `shop` is enrolled, `plain` is not.
fn api_server(
    mut handle: tower_test::mock::Handle<Request<Body>, Response<Body>>,
    list_status: Arc<Mutex<u16>>,
) {
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Some((req, send)) = handle.next_request().await {
            let path = req.uri().path().to_string();
            let query = req.uri().query().unwrap_or_default().to_string();
            let ns = |name: &str, labels: Value| {
                json!({"apiVersion": "v1", "kind": "Namespace",
                    "metadata": {"name": name, "resourceVersion": "3", "labels": labels}})
            };
            match path.as_str() {
                "/api/v1/namespaces/shop" => send.send_response(json_response(
                    200,
                    &ns("shop", json!({"tracemesh.dev/monitored-by": "tracemesh"})),
                )),
                "/api/v1/namespaces/plain" => {
                    send.send_response(json_response(200, &ns("plain", json!({}))))
                }
                BASE if query.contains("watch=true") => held.push(send),
                BASE => {
                    let code = *list_status.lock().expect("status");
                    let body = match code {
                        404 => failure(404, "NotFound", "the server could not find the requested resource"),
                        403 => failure(403, "Forbidden", "meshconfigs.config.tracemesh.dev is forbidden: User \"system:serviceaccount:mesh-system:mesh-injector\" cannot list resource \"meshconfigs\""),
                        _ => json!({"apiVersion": "config.tracemesh.dev/v1alpha1", "kind": "MeshConfigList",
                            "metadata": {"resourceVersion": "10"},
                            "items": [{"apiVersion": "config.tracemesh.dev/v1alpha1", "kind": "MeshConfig",
                                "metadata": {"name": "mesh-config", "namespace": "mesh-system",
                                    "resourceVersion": "10", "generation": 4},
                                "spec": {}}]}),
                    };
                    send.send_response(json_response(code, &body));
                }
                p if p.starts_with(BASE) => send.send_response(json_response(200, &json!({
                    "apiVersion": "config.tracemesh.dev/v1alpha1", "kind": "MeshConfig",
                    "metadata": {"name": "mesh-config", "namespace": "mesh-system", "resourceVersion": "11"}}))),
                _ => send.send_response(json_response(404, &failure(404, "NotFound", "unexpected"))),
            }
        }
    });
}

async fn get(app: &App, path: &str, routes: Routes) -> (StatusCode, String) {
    let req = Request::get(path)
        .body(Full::new(Bytes::new()))
        .expect("request");
    let resp = route(app, req, routes).await;
    let status = resp.status();
    let body = resp.into_body().collect().await.expect("body").to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
}

/// Polls `/readyz` until its answer satisfies `want` (the synchronisation point is the
/// watcher's next attempt, whose timing is its backoff's).
async fn readyz_until(app: &App, want: impl Fn(StatusCode, &str) -> bool) -> (StatusCode, String) {
    loop {
        let (status, body) = get(app, "/readyz", Routes::Main).await;
        if want(status, &body) {
            return (status, body);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn app(list_status: u16) -> (App, Arc<Mutex<u16>>) {
    let (service, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let status = Arc::new(Mutex::new(list_status));
    api_server(handle, status.clone());
    let client = kube::Client::new(service, "default");
    let backend = Backend::Kube(KubeBackend::start(client, "mesh-system", "mesh-config"));
    (App::new(backend, Settings::new("tracemesh"), 10), status)
}

#[tokio::test]
async fn ready_only_after_the_mesh_config_is_read_and_says_why_not() {
    tokio::time::timeout(Duration::from_secs(60), async {
        let (app, list) = app(404);
        let (status, body) = readyz_until(&app, |_, b| b.contains("not installed")).await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert!(body.contains("meshconfigs.config.tracemesh.dev"), "{body}");

        *list.lock().expect("status") = 403;
        let (status, body) = readyz_until(&app, |_, b| b.contains("forbidden")).await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert!(body.contains("RBAC"), "{body}");

        *list.lock().expect("status") = 200;
        let (status, body) = readyz_until(&app, |s, _| s == StatusCode::OK).await;
        assert_eq!(body.trim(), "ready");
        assert_eq!(status, StatusCode::OK);

        // Shutdown takes the injector out of the Service at once.
        app.begin_shutdown();
        let (status, body) = get(&app, "/readyz", Routes::Main).await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert!(body.contains("shutting down"), "{body}");
    })
    .await
    .expect("within 60s");
}

fn review(uid: &str, namespace: &str) -> Vec<u8> {
    let pod = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "app", "namespace": namespace},
        "spec": {"containers": [{"name": "app", "image": "busybox"}]}});
    serde_json::to_vec(&json!({
        "apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
        "request": {"uid": uid, "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "resource": {"group": "", "version": "v1", "resource": "pods"},
            "namespace": namespace, "operation": "CREATE",
            "userInfo": {"username": "admin"}, "object": pod, "dryRun": false}
    }))
    .expect("json")
}

async fn post(app: &App, body: Vec<u8>) -> StatusCode {
    let req = Request::post("/mutate-pod-creation")
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body)))
        .expect("request");
    route(app, req, Routes::Main).await.status()
}

#[tokio::test]
async fn metrics_count_admissions_by_result() {
    tokio::time::timeout(Duration::from_secs(60), async {
        let (app, _) = app(200);
        readyz_until(&app, |s, _| s == StatusCode::OK).await;
        assert_eq!(post(&app, review("a", "shop")).await, StatusCode::OK);
        assert_eq!(post(&app, review("b", "shop")).await, StatusCode::OK);
        assert_eq!(post(&app, review("c", "plain")).await, StatusCode::OK);
        assert_eq!(
            post(&app, b"{not json".to_vec()).await,
            StatusCode::BAD_REQUEST
        );

        let (status, text) = get(&app, "/metrics", Routes::Metrics).await;
        assert_eq!(status, StatusCode::OK);
        for line in [
            "mesh_injector_admissions_total{result=\"injected\"} 2",
            "mesh_injector_admissions_total{result=\"skipped\"} 1",
            "mesh_injector_admissions_total{result=\"error\"} 1",
            "mesh_injector_admission_duration_seconds_count 4",
            "mesh_injector_config_long_polls 0",
            "mesh_injector_config_generation 4",
            "mesh_injector_config_rejected_total 0",
        ] {
            assert!(text.contains(line), "{line} missing from\n{text}");
        }
        // Metrics are on their own port, not on the webhook's.
        assert_eq!(
            get(&app, "/metrics", Routes::Main).await.0,
            StatusCode::NOT_FOUND
        );
    })
    .await
    .expect("within 60s");
}

/// Injected pods get the CA bundle of the certificate being served at that moment, not one
/// read at start: after the served material changes, the next pod gets the new bundle.
#[tokio::test]
async fn injected_pods_get_the_ca_bundle_being_served() {
    use mesh_injector::certs;
    use mesh_injector::tls::LiveCert;

    async fn injected_ca(app: &App, uid: &str) -> String {
        let req = Request::post("/mutate-pod-creation")
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(review(uid, "shop"))))
            .expect("request");
        let resp = route(app, req, Routes::Main).await;
        let body = resp.into_body().collect().await.expect("body").to_bytes();
        let review: Value = serde_json::from_slice(&body).expect("review");
        let patch: k8s_openapi::ByteString =
            serde_json::from_value(review["response"]["patch"].clone()).expect("base64 patch");
        let ops: Value = serde_json::from_slice(&patch.0).expect("json patch");
        let ops = ops.as_array().expect("ops");
        // The pod has no annotations, so they are added as one map.
        let annotations = ops
            .iter()
            .find(|op| op["path"] == "/metadata/annotations")
            .expect("annotations added");
        annotations["value"]["tracemesh.dev/config-ca"]
            .as_str()
            .expect("config-ca annotation")
            .to_string()
    }

    tokio::time::timeout(Duration::from_secs(60), async {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let names = certs::service_dns_names("mesh-injector", "mesh-system");
        let now = std::time::SystemTime::now();
        let first = certs::fresh(&names, now).expect("material");
        let live = Arc::new(LiveCert::new(first.clone(), names.clone()).expect("live"));
        let (app, _) = app(200);
        let app = app.with_live_cert(live.clone());
        assert_eq!(injected_ca(&app, "a").await, first.ca_bundle_pem);

        let second = certs::fresh(&names, now).expect("material");
        assert!(live.set(&second).expect("verifies"));
        assert_eq!(injected_ca(&app, "b").await, second.ca_bundle_pem);

        // Material whose bundle does not verify its certificate is refused; pods keep getting
        // the bundle of the certificate actually served.
        let mismatched = certs::Material {
            ca_bundle_pem: first.ca_bundle_pem.clone(),
            ..second.clone()
        };
        assert!(live.set(&mismatched).is_err());
        assert_eq!(injected_ca(&app, "c").await, second.ca_bundle_pem);
    })
    .await
    .expect("within 60s");
}
