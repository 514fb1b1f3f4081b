//! The certificate Secret and the webhook's caBundle against a mock API server
//! (`tower_test::mock::pair` as the Client's service) that keeps objects and answers with the
//! API server's conflict semantics: the exact requests, and what two replicas racing end with.

use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use http::{Request, Response, StatusCode};
use http_body_util::BodyExt;
use k8s_openapi::ByteString;
use kube::client::Body;
use mesh_injector::cabundle::CaBundle;
use mesh_injector::certs::{self, Material};
use mesh_injector::secret::{CertStore, Issuer, StoreError};
use serde_json::{json, Value};

const SECRETS: &str = "/api/v1/namespaces/mesh-system/secrets";
const SECRET: &str = "/api/v1/namespaces/mesh-system/secrets/mesh-injector-tls";
const WEBHOOK: &str =
    "/apis/admissionregistration.k8s.io/v1/mutatingwebhookconfigurations/mesh-injector";

#[derive(Debug, Clone)]
struct Seen {
    method: String,
    path: String,
    query: String,
    content_type: String,
    body: Value,
    /// The status the mock answered with.
    status: u16,
}

#[derive(Default)]
struct State {
    secret: Option<Value>,
    rv: u64,
    webhook: Value,
    seen: Vec<Seen>,
    /// Secret GETs held until this many are waiting, so racing replicas both read "missing".
    gather: usize,
    /// Replaced on the next PUT (as another replica's renewal would), which then gets 409.
    replace_before_put: Option<Value>,
}

type Shared = Arc<Mutex<State>>;

fn status(code: u16, reason: &str, message: &str) -> (u16, Value) {
    (
        code,
        json!({"apiVersion": "v1", "kind": "Status", "metadata": {}, "status": "Failure",
            "message": message, "reason": reason, "code": code}),
    )
}

fn secret_value(m: &Material, rv: u64) -> Value {
    let b = |s: &str| serde_json::to_value(ByteString(s.as_bytes().to_vec())).expect("b64");
    let mut data =
        json!({"tls.crt": b(&m.cert_pem), "tls.key": b(&m.key_pem), "ca.crt": b(&m.ca_bundle_pem)});
    if let Some(k) = &m.ca_key_pem {
        data["ca.key"] = b(k);
    }
    json!({"apiVersion": "v1", "kind": "Secret", "type": "kubernetes.io/tls",
        "metadata": {"name": "mesh-injector-tls", "namespace": "mesh-system",
            "resourceVersion": rv.to_string(), "uid": "5f0e7a4c-0000-4000-8000-000000000001"},
        "data": data})
}

fn webhook_value() -> Value {
    let hook = |name: &str, service: &str| {
        json!({"name": name, "admissionReviewVersions": ["v1"], "sideEffects": "None",
            "clientConfig": {"service": {"name": service, "namespace": "mesh-system",
                "path": "/mutate-pod-creation", "port": 443}}})
    };
    json!({"apiVersion": "admissionregistration.k8s.io/v1", "kind": "MutatingWebhookConfiguration",
        "metadata": {"name": "mesh-injector", "resourceVersion": "7"},
        "webhooks": [hook("sidecar-injector.tracemesh.dev", "mesh-injector"),
                     hook("opt-in.sidecar-injector.tracemesh.dev", "mesh-injector"),
                     hook("someone-else.example.com", "other-service")]})
}

fn answer(state: &mut State, method: &str, path: &str, body: &Value) -> (u16, Value) {
    match (method, path) {
        ("GET", SECRET) => match &state.secret {
            Some(s) => (200, s.clone()),
            None => status(404, "NotFound", "secrets \"mesh-injector-tls\" not found"),
        },
        ("POST", SECRETS) => {
            if state.secret.is_some() {
                return status(
                    409,
                    "AlreadyExists",
                    "secrets \"mesh-injector-tls\" already exists",
                );
            }
            state.rv += 1;
            let mut s = body.clone();
            s["metadata"]["resourceVersion"] = json!(state.rv.to_string());
            state.secret = Some(s.clone());
            (201, s)
        }
        ("PUT", SECRET) => {
            if let Some(other) = state.replace_before_put.take() {
                state.rv += 1;
                let mut o = other;
                o["metadata"]["resourceVersion"] = json!(state.rv.to_string());
                state.secret = Some(o);
            }
            let current = state
                .secret
                .as_ref()
                .map(|s| s["metadata"]["resourceVersion"].clone());
            if current.as_ref() != Some(&body["metadata"]["resourceVersion"]) {
                return status(
                    409,
                    "Conflict",
                    "Operation cannot be fulfilled on secrets \"mesh-injector-tls\": the object has been modified",
                );
            }
            state.rv += 1;
            let mut s = body.clone();
            s["metadata"]["resourceVersion"] = json!(state.rv.to_string());
            state.secret = Some(s.clone());
            (200, s)
        }
        ("GET", WEBHOOK) => (200, state.webhook.clone()),
        ("PATCH", WEBHOOK) => {
            let patch: json_patch::Patch = serde_json::from_value(body.clone()).expect("patch");
            let mut doc = state.webhook.clone();
            if json_patch::patch(&mut doc, &patch).is_err() {
                return status(422, "Invalid", "the patch does not apply");
            }
            state.webhook = doc.clone();
            (200, doc)
        }
        _ => status(404, "NotFound", "unexpected request"),
    }
}

fn api_server(mut handle: tower_test::mock::Handle<Request<Body>, Response<Body>>, state: Shared) {
    tokio::spawn(async move {
        let mut waiting = Vec::new();
        while let Some((req, send)) = handle.next_request().await {
            let (parts, body) = req.into_parts();
            let bytes = body
                .collect()
                .await
                .map(|b| b.to_bytes())
                .unwrap_or_default();
            let mut seen = Seen {
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
                status: 0,
            };
            let mut st = state.lock().expect("state");
            if seen.method == "GET" && seen.path == SECRET && st.gather > 0 {
                waiting.push((seen, send));
                if waiting.len() < st.gather {
                    continue;
                }
                st.gather = 0;
                for (mut seen, send) in waiting.drain(..) {
                    let (code, v) = answer(&mut st, &seen.method, &seen.path, &seen.body);
                    seen.status = code;
                    st.seen.push(seen);
                    send.send_response(respond(code, &v));
                }
                continue;
            }
            let (code, v) = answer(&mut st, &seen.method, &seen.path, &seen.body);
            seen.status = code;
            st.seen.push(seen);
            send.send_response(respond(code, &v));
        }
    });
}

fn respond(code: u16, v: &Value) -> Response<Body> {
    Response::builder()
        .status(StatusCode::from_u16(code).expect("status"))
        .header("content-type", "application/json")
        .body(Body::from(serde_json::to_vec(v).expect("json")))
        .expect("response")
}

fn names() -> Vec<String> {
    certs::service_dns_names("mesh-injector", "mesh-system")
}

fn setup(state: State) -> (kube::Client, Shared) {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let (service, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let state = Arc::new(Mutex::new(State {
        webhook: webhook_value(),
        ..state
    }));
    api_server(handle, state.clone());
    (kube::Client::new(service, "default"), state)
}

fn store(client: &kube::Client, issuer: Issuer) -> CertStore {
    CertStore::new(
        client.clone(),
        "mesh-system",
        "mesh-injector-tls",
        names(),
        issuer,
    )
}

fn requests(state: &Shared) -> Vec<String> {
    state
        .lock()
        .expect("state")
        .seen
        .iter()
        .map(|s| format!("{} {} {}", s.method, s.path, s.status))
        .collect()
}

/// A generous bound so a regression fails instead of hanging the suite.
async fn bounded<T>(f: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(60), f)
        .await
        .expect("within 60s")
}

#[tokio::test]
async fn a_missing_secret_is_created_once_then_reused() {
    bounded(async {
        let (client, state) = setup(State::default());
        let s = store(&client, Issuer::Injector);
        let now = SystemTime::now();
        let first = s.sync(now).await.expect("sync");
        certs::verify(&first, &names(), now).expect("verifies");
        let again = s.sync(now).await.expect("sync");
        assert_eq!(first, again, "reused, not regenerated");
        assert_eq!(
            requests(&state),
            [
                format!("GET {SECRET} 404"),
                format!("POST {SECRETS} 201"),
                format!("GET {SECRET} 200"),
            ]
        );
        let st = state.lock().expect("state");
        let post = &st.seen[1];
        assert_eq!(post.content_type, "application/json");
        assert!(
            post.query.contains("fieldManager=mesh-injector"),
            "{}",
            post.query
        );
        assert_eq!(post.body["type"], "kubernetes.io/tls");
        assert_eq!(post.body["metadata"]["name"], "mesh-injector-tls");
        let data = post.body["data"].as_object().expect("data");
        let mut keys: Vec<&str> = data.keys().map(String::as_str).collect();
        keys.sort_unstable();
        assert_eq!(keys, ["ca.crt", "ca.key", "tls.crt", "tls.key"]);
        let ca: ByteString = serde_json::from_value(data["ca.crt"].clone()).expect("b64");
        assert_eq!(String::from_utf8(ca.0).expect("pem"), first.ca_bundle_pem);
    })
    .await
}

#[tokio::test]
async fn a_present_secret_is_reused_as_is() {
    bounded(async {
        let now = SystemTime::now();
        let existing = certs::fresh(&names(), now).expect("material");
        let (client, state) = setup(State {
            secret: Some(secret_value(&existing, 41)),
            rv: 41,
            ..State::default()
        });
        let got = store(&client, Issuer::Injector)
            .sync(now)
            .await
            .expect("sync");
        assert_eq!(got, existing);
        assert_eq!(requests(&state), [format!("GET {SECRET} 200")]);
    })
    .await
}

/// Two replicas start together: both read "missing", both create; the API server accepts
/// one and answers the other 409 AlreadyExists; the loser reads the winner's Secret. Both
/// end up serving the same CA.
#[tokio::test]
async fn two_replicas_racing_agree_on_one_ca() {
    bounded(async {
        let (client, state) = setup(State {
            gather: 2,
            ..State::default()
        });
        let (a, b) = (
            store(&client, Issuer::Injector),
            store(&client, Issuer::Injector),
        );
        let now = SystemTime::now();
        let (ma, mb) = tokio::join!(a.sync(now), b.sync(now));
        let (ma, mb) = (ma.expect("replica a"), mb.expect("replica b"));
        assert_eq!(ma.ca_bundle_pem, mb.ca_bundle_pem, "one CA");
        assert_eq!(ma, mb);
        let mut seen = requests(&state);
        seen.sort();
        assert_eq!(
            seen,
            [
                format!("GET {SECRET} 200"),
                format!("GET {SECRET} 404"),
                format!("GET {SECRET} 404"),
                format!("POST {SECRETS} 201"),
                format!("POST {SECRETS} 409"),
            ]
        );
    })
    .await
}

/// A renewal is a replace carrying the resourceVersion it was planned from. When another
/// replica renewed first, the replace gets 409 Conflict and the winner's material is used.
#[tokio::test]
async fn renewal_is_conditional_and_the_loser_takes_the_winners() {
    bounded(async {
        let now = SystemTime::now();
        let old = certs::fresh(
            &names(),
            now - certs::LEAF_VALIDITY + Duration::from_secs(86_400),
        )
        .expect("material");
        let winner = certs::fresh(&names(), now).expect("material");
        let (client, state) = setup(State {
            secret: Some(secret_value(&old, 5)),
            rv: 5,
            replace_before_put: Some(secret_value(&winner, 0)),
            ..State::default()
        });
        let got = store(&client, Issuer::Injector)
            .sync(now)
            .await
            .expect("sync");
        assert_eq!(got, winner);
        assert_eq!(
            requests(&state),
            [
                format!("GET {SECRET} 200"),
                format!("PUT {SECRET} 409"),
                format!("GET {SECRET} 200"),
            ]
        );
        let st = state.lock().expect("state");
        assert_eq!(st.seen[1].body["metadata"]["resourceVersion"], "5");
    })
    .await
}

#[tokio::test]
async fn with_cert_manager_the_secret_is_only_read() {
    bounded(async {
        let now = SystemTime::now();
        let (client, state) = setup(State::default());
        let s = store(&client, Issuer::CertManager);
        let err = s.sync(now).await.expect_err("nothing issued yet");
        assert!(matches!(err, StoreError::NotIssued { .. }), "{err}");
        assert!(err.to_string().contains("cert-manager"), "{err}");
        let issued = Material {
            ca_key_pem: None,
            ..certs::fresh(&names(), now).expect("material")
        };
        state.lock().expect("state").secret = Some(secret_value(&issued, 3));
        assert_eq!(s.sync(now).await.expect("read"), issued);
        assert!(requests(&state).iter().all(|r| r.starts_with("GET ")));
    })
    .await
}

/// The caBundle goes on this injector's webhooks by name, guarded by a test of each webhook's
/// name, and not on a webhook of another service; an equal bundle is not patched again.
#[tokio::test]
async fn ca_bundle_is_patched_on_the_webhook_by_name() {
    bounded(async {
        let (client, state) = setup(State::default());
        let bundle = CaBundle::new(client, "mesh-injector", "mesh-injector", "mesh-system");
        let ca = certs::fresh(&names(), SystemTime::now())
            .expect("material")
            .ca_bundle_pem;
        assert!(bundle.ensure(&ca).await.expect("patched"));
        assert!(!bundle.ensure(&ca).await.expect("unchanged"));
        assert_eq!(
            requests(&state),
            [
                format!("GET {WEBHOOK} 200"),
                format!("PATCH {WEBHOOK} 200"),
                format!("GET {WEBHOOK} 200"),
            ]
        );
        let st = state.lock().expect("state");
        let patch = &st.seen[1];
        assert_eq!(patch.content_type, "application/json-patch+json");
        let encoded = serde_json::to_value(ByteString(ca.as_bytes().to_vec())).expect("b64");
        assert_eq!(
            patch.body,
            json!([
                {"op": "test", "path": "/webhooks/0/name", "value": "sidecar-injector.tracemesh.dev"},
                {"op": "add", "path": "/webhooks/0/clientConfig/caBundle", "value": encoded},
                {"op": "test", "path": "/webhooks/1/name", "value": "opt-in.sidecar-injector.tracemesh.dev"},
                {"op": "add", "path": "/webhooks/1/clientConfig/caBundle", "value": encoded},
            ])
        );
        assert!(st.webhook["webhooks"][2]["clientConfig"]
            .get("caBundle")
            .is_none());
    })
    .await
}

/// One replica's periodic check: material another replica wrote to the Secret is served here
/// too, pods are handed its CA bundle, and the webhook's caBundle follows.
#[tokio::test]
async fn a_check_serves_what_another_replica_wrote_and_follows_with_the_ca_bundle() {
    use mesh_injector::identity;
    use mesh_injector::tls::LiveCert;

    bounded(async {
        let now = SystemTime::now();
        let first = certs::fresh(&names(), now).expect("material");
        let (client, state) = setup(State {
            secret: Some(secret_value(&first, 1)),
            rv: 1,
            ..State::default()
        });
        let s = store(&client, Issuer::Injector);
        let bundle = CaBundle::new(client, "mesh-injector", "mesh-injector", "mesh-system");
        let live = LiveCert::new(identity::obtain(&s).await, names()).expect("live");
        let webhook_ca = |state: &Shared, i: usize| -> String {
            let v = state.lock().expect("state").webhook["webhooks"][i]["clientConfig"]["caBundle"]
                .clone();
            let b: ByteString = serde_json::from_value(v).expect("caBundle");
            String::from_utf8(b.0).expect("pem")
        };

        identity::refresh(&s, &bundle, &live).await;
        assert_eq!(live.ca_pem().as_deref(), Some(first.ca_bundle_pem.as_str()));
        assert_eq!(webhook_ca(&state, 0), first.ca_bundle_pem);
        assert_eq!(webhook_ca(&state, 1), first.ca_bundle_pem);

        let second = certs::fresh(&names(), now).expect("material");
        {
            let mut st = state.lock().expect("state");
            st.secret = Some(secret_value(&second, 2));
            st.seen.clear();
        }
        identity::refresh(&s, &bundle, &live).await;
        assert_eq!(
            live.ca_pem().as_deref(),
            Some(second.ca_bundle_pem.as_str())
        );
        assert_eq!(webhook_ca(&state, 0), second.ca_bundle_pem);
        // Read, not rewritten: nothing was due.
        assert_eq!(
            requests(&state),
            [
                format!("GET {SECRET} 200"),
                format!("GET {WEBHOOK} 200"),
                format!("PATCH {WEBHOOK} 200"),
            ]
        );
    })
    .await
}
