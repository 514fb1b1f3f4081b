//! The webhook and the config server over real HTTPS: realistic AdmissionReviews, each returned
//! patch applied with an RFC 6902 implementation and the patched pod checked by the external
//! Kubernetes validator.

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use mesh_injector::backend::{local::LocalBackend, Backend};
use mesh_injector::inject::Settings;
use mesh_injector::server::{self, App, Routes};
use mesh_injector::tls::{self, ReloadingResolver};
use rustls::pki_types::{CertificateDer, ServerName};
use serde_json::{json, Value};
use tokio::net::{TcpListener, TcpStream};

struct Harness {
    addr: SocketAddr,
    roots: Arc<rustls::RootCertStore>,
    dir: tempfile::TempDir,
    /// The server's state, for its metrics (how many long polls it holds).
    app: Arc<App>,
    _shutdown: tokio::sync::oneshot::Sender<()>,
}

fn write_cert(dir: &Path) -> CertificateDer<'static> {
    let ck = rcgen::generate_simple_self_signed(vec!["localhost".into()]).expect("rcgen");
    // Write to temp names and rename, as a Secret volume update does, so no reader sees half a file.
    std::fs::write(dir.join("tls.key.tmp"), ck.signing_key.serialize_pem()).expect("key");
    std::fs::write(dir.join("tls.crt.tmp"), ck.cert.pem()).expect("cert");
    std::fs::rename(dir.join("tls.key.tmp"), dir.join("tls.key")).expect("rename");
    std::fs::rename(dir.join("tls.crt.tmp"), dir.join("tls.crt")).expect("rename");
    ck.cert.der().clone()
}

async fn start() -> Harness {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let dir = tempfile::tempdir().expect("tempdir");
    let der = write_cert(dir.path());
    let mut roots = rustls::RootCertStore::empty();
    roots.add(der).expect("root");

    let state = dir.path().join("state");
    std::fs::create_dir_all(state.join("namespaces")).expect("mkdir");
    let ns = |name: &str, labels: Value, annotations: Value| {
        let doc = json!({"apiVersion": "v1", "kind": "Namespace",
            "metadata": {"name": name, "labels": labels, "annotations": annotations}});
        std::fs::write(
            state.join(format!("namespaces/{name}.yaml")),
            serde_yaml::to_string(&doc).expect("yaml"),
        )
        .expect("write ns");
    };
    ns(
        "shop",
        json!({"tracemesh.dev/monitored-by": "tracemesh"}),
        json!({"tracemesh.dev/sidecar-injection": "enabled"}),
    );
    ns("plain", json!({}), json!({}));
    ns(
        "kube-system",
        json!({"tracemesh.dev/monitored-by": "tracemesh"}),
        json!({}),
    );
    std::fs::write(
        state.join("mesh-config.yaml"),
        "spec:\n  traffic:\n    outboundPortExclusionList: [3306]\n    outboundIPRangeExclusionList: [10.96.0.0/12]\n",
    )
    .expect("config");

    let backend = Backend::Local(LocalBackend::start(&state).await.expect("backend"));
    let resolver = Arc::new(
        ReloadingResolver::new(dir.path().join("tls.crt"), dir.path().join("tls.key"))
            .expect("tls"),
    );
    let acceptor =
        tokio_rustls::TlsAcceptor::from(Arc::new(tls::server_config(resolver).expect("config")));
    let mut settings = Settings::new("tracemesh");
    settings.config_ca_pem =
        Some("-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n".into());
    let app = Arc::new(App::new(backend, settings, 100));
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(server::serve(
        listener,
        Some(acceptor),
        Routes::Main,
        app.clone(),
        async move {
            let _ = rx.await;
        },
        Duration::from_secs(1),
    ));
    Harness {
        addr,
        roots: Arc::new(roots),
        dir,
        app,
        _shutdown: tx,
    }
}

impl Harness {
    async fn connect(
        &self,
    ) -> (
        hyper::client::conn::http1::SendRequest<Full<Bytes>>,
        CertificateDer<'static>,
    ) {
        let config = rustls::ClientConfig::builder()
            .with_root_certificates(self.roots.clone())
            .with_no_client_auth();
        let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
        let tcp = TcpStream::connect(self.addr).await.expect("connect");
        let tls = connector
            .connect(ServerName::try_from("localhost").expect("name"), tcp)
            .await
            .expect("TLS handshake");
        let peer = tls
            .get_ref()
            .1
            .peer_certificates()
            .and_then(|c| c.first())
            .cloned()
            .expect("peer cert");
        let (send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
            .await
            .expect("http");
        tokio::spawn(conn);
        (send, peer)
    }

    async fn request(&self, req: Request<Full<Bytes>>) -> (StatusCode, http::HeaderMap, Bytes) {
        let (mut send, _) = self.connect().await;
        let resp = tokio::time::timeout(Duration::from_secs(60), send.send_request(req))
            .await
            .expect("answer within 60s")
            .expect("response");
        let (parts, body) = resp.into_parts();
        (
            parts.status,
            parts.headers,
            body.collect().await.expect("body").to_bytes(),
        )
    }

    async fn post(&self, content_type: Option<&str>, body: Vec<u8>) -> (StatusCode, Bytes) {
        let mut b = Request::post("/mutate-pod-creation").header("host", "localhost");
        if let Some(ct) = content_type {
            b = b.header("content-type", ct);
        }
        let (status, _, body) = self
            .request(b.body(Full::new(Bytes::from(body))).expect("request"))
            .await;
        (status, body)
    }
}

fn review(uid: &str, namespace: &str, pod: &Value) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
        "request": {
            "uid": uid,
            "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "resource": {"group": "", "version": "v1", "resource": "pods"},
            "requestKind": {"group": "", "version": "v1", "kind": "Pod"},
            "requestResource": {"group": "", "version": "v1", "resource": "pods"},
            "namespace": namespace, "operation": "CREATE",
            "userInfo": {"username": "system:serviceaccount:kube-system:replicaset-controller",
                         "groups": ["system:serviceaccounts", "system:authenticated"]},
            "object": pod, "oldObject": null, "dryRun": false,
            "options": {"kind": "CreateOptions", "apiVersion": "meta.k8s.io/v1"}
        }
    }))
    .expect("json")
}

/// What a ReplicaSet controller sends: generateName, owner, pod-template-hash, defaulted fields.
fn deployment_pod(namespace: &str) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {
            "generateName": "checkout-7c5d8f9b4-", "namespace": namespace,
            "labels": {"app": "checkout", "pod-template-hash": "7c5d8f9b4"},
            "annotations": {"kubectl.kubernetes.io/restartedAt": "2026-01-01T00:00:00Z"},
            "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "checkout-7c5d8f9b4",
                                 "uid": "6f1b2c3d-0000-4000-8000-000000000001", "controller": true, "blockOwnerDeletion": true}]
        },
        "spec": {
            "volumes": [{"name": "kube-api-access-x1", "projected": {"sources": [{"serviceAccountToken": {"path": "token", "expirationSeconds": 3607}}]}}],
            "containers": [{
                "name": "checkout", "image": "ghcr.io/example/checkout:1.4.2",
                "ports": [{"name": "http", "containerPort": 8080, "protocol": "TCP"}],
                "resources": {"requests": {"cpu": "100m", "memory": "128Mi"}},
                "volumeMounts": [{"name": "kube-api-access-x1", "readOnly": true, "mountPath": "/var/run/secrets/kubernetes.io/serviceaccount"}],
                "terminationMessagePath": "/dev/termination-log", "terminationMessagePolicy": "File", "imagePullPolicy": "IfNotPresent"
            }],
            "restartPolicy": "Always", "terminationGracePeriodSeconds": 30, "dnsPolicy": "ClusterFirst",
            "serviceAccountName": "default", "serviceAccount": "default", "securityContext": {},
            "schedulerName": "default-scheduler", "enableServiceLinks": true, "preemptionPolicy": "PreemptLowerPriority",
            "tolerations": [{"key": "node.kubernetes.io/not-ready", "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 300}]
        }
    })
}

fn bare_pod() -> Value {
    json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "bare", "namespace": "shop"},
           "spec": {"containers": [{"name": "app", "image": "busybox", "command": ["sleep", "3600"]}]}})
}

struct Outcome {
    allowed: bool,
    message: String,
    patched: Option<Value>,
}

async fn admit(h: &Harness, uid: &str, namespace: &str, pod: &Value) -> Outcome {
    let (status, body) = h
        .post(Some("application/json"), review(uid, namespace, pod))
        .await;
    assert_eq!(status, StatusCode::OK, "{}", String::from_utf8_lossy(&body));
    let v: Value = serde_json::from_slice(&body).expect("response JSON");
    assert_eq!(v["apiVersion"], "admission.k8s.io/v1");
    assert_eq!(v["kind"], "AdmissionReview");
    let r = &v["response"];
    assert_eq!(r["uid"], uid, "uid echoed");
    let patched = r["patch"].as_str().map(|b64| {
        assert_eq!(r["patchType"], "JSONPatch");
        let bytes: k8s_openapi::ByteString =
            serde_json::from_value(json!(b64)).expect("base64 patch");
        let patch: json_patch::Patch = serde_json::from_slice(&bytes.0).expect("RFC 6902 patch");
        let mut doc = pod.clone();
        json_patch::patch(&mut doc, &patch).expect("the patch applies to the pod");
        doc
    });
    Outcome {
        allowed: r["allowed"].as_bool().expect("allowed"),
        message: r["status"]["message"]
            .as_str()
            .unwrap_or_default()
            .to_string(),
        patched,
    }
}

fn names(list: &Value) -> Vec<String> {
    list.as_array()
        .into_iter()
        .flatten()
        .filter_map(|c| c["name"].as_str().map(String::from))
        .collect()
}

#[tokio::test]
async fn webhook_patches_realistic_pods_into_valid_pods() {
    let h = start().await;
    let mut to_validate = Vec::new();
    let mut keep = |name: &str, pod: &Value| {
        let path = h.dir.path().join(format!("{name}.json"));
        // The validator needs a name; the API server derives it from generateName on create.
        let mut pod = pod.clone();
        if pod["metadata"].get("name").is_none() {
            pod["metadata"]["name"] = json!(format!("{name}-x7k2p"));
        }
        std::fs::write(&path, serde_json::to_vec_pretty(&pod).expect("json")).expect("write");
        to_validate.push(path);
    };

    // A Deployment's pod in an enrolled namespace.
    let pod = deployment_pod("shop");
    let o = admit(&h, "uid-deployment", "shop", &pod).await;
    assert!(o.allowed);
    let p = o.patched.expect("injected");
    assert_eq!(
        names(&p["spec"]["initContainers"]),
        ["mesh-init", "mesh-proxy"]
    );
    assert_eq!(names(&p["spec"]["containers"]), ["checkout"]);
    let proxy = &p["spec"]["initContainers"][1];
    assert_eq!(proxy["restartPolicy"], "Always");
    assert_eq!(proxy["securityContext"]["runAsUser"], 1500);
    assert_eq!(proxy["securityContext"]["allowPrivilegeEscalation"], false);
    let env: Vec<&Value> = proxy["env"].as_array().expect("env").iter().collect();
    let env_value = |n: &str| env.iter().find(|e| e["name"] == n).map(|e| (*e).clone());
    assert_eq!(env_value("SERVICE_NAME").expect("svc")["value"], "checkout");
    assert_eq!(
        env_value("POD_IP").expect("ip")["valueFrom"]["fieldRef"]["fieldPath"],
        "status.podIP"
    );
    assert_eq!(
        env_value("POD_IPS").expect("ips")["valueFrom"]["fieldRef"]["fieldPath"],
        "status.podIPs"
    );
    assert_eq!(
        env_value("MESH_CONFIG_CA").expect("ca")["value"],
        "/etc/mesh-proxy/config-ca/ca.crt"
    );
    assert!(p["metadata"]["annotations"]["tracemesh.dev/config-ca"]
        .as_str()
        .unwrap_or_default()
        .contains("BEGIN CERTIFICATE"));
    let ca_volume = p["spec"]["volumes"]
        .as_array()
        .expect("volumes")
        .iter()
        .find(|v| v["name"] == "mesh-config-ca")
        .cloned()
        .expect("ca volume");
    assert_eq!(
        ca_volume["downwardAPI"]["items"][0]["fieldRef"]["fieldPath"],
        "metadata.annotations['tracemesh.dev/config-ca']"
    );
    let ports: Vec<i64> = proxy["ports"]
        .as_array()
        .expect("ports")
        .iter()
        .filter_map(|p| p["containerPort"].as_i64())
        .collect();
    assert_eq!(ports, [15001, 15003, 15000]);
    let init_args = p["spec"]["initContainers"][0]["args"].to_string();
    assert!(
        init_args.contains("3306") && init_args.contains("10.96.0.0/12"),
        "{init_args}"
    );
    assert_eq!(
        p["spec"]["initContainers"][0]["securityContext"]["capabilities"]["add"],
        json!(["NET_ADMIN", "NET_RAW"])
    );
    assert_eq!(
        p["metadata"]["annotations"]["kubectl.kubernetes.io/restartedAt"],
        "2026-01-01T00:00:00Z"
    );
    assert!(p["metadata"]["annotations"]["tracemesh.dev/sidecar-status"].is_string());
    keep("deployment", &p);

    // No volumes, annotations, labels or initContainers at all.
    let pod = bare_pod();
    let p = admit(&h, "uid-bare", "shop", &pod)
        .await
        .patched
        .expect("injected");
    assert_eq!(
        names(&p["spec"]["volumes"]),
        ["mesh-proxy-tmp", "mesh-config-ca"]
    );
    assert_eq!(
        p["metadata"]["annotations"].as_object().map(|m| m.len()),
        Some(2)
    );
    keep("bare", &p);

    // Existing init containers and several app containers, with probes.
    let mut pod = deployment_pod("shop");
    pod["spec"]["initContainers"] =
        json!([{"name": "migrate", "image": "ghcr.io/example/migrate:1"}]);
    pod["spec"]["containers"] = json!([
        {"name": "web", "image": "nginx:1.27", "ports": [{"name": "http", "containerPort": 80}],
         "livenessProbe": {"httpGet": {"path": "/healthz", "port": "http"}, "periodSeconds": 10},
         "readinessProbe": {"httpGet": {"path": "/ready", "port": 80}},
         "startupProbe": {"tcpSocket": {"port": 80}, "failureThreshold": 30}},
        {"name": "worker", "image": "ghcr.io/example/worker:2",
         "livenessProbe": {"exec": {"command": ["/bin/true"]}}}
    ]);
    let p = admit(&h, "uid-probes", "shop", &pod)
        .await
        .patched
        .expect("injected");
    assert_eq!(
        names(&p["spec"]["initContainers"]),
        ["mesh-init", "mesh-proxy", "migrate"]
    );
    assert_eq!(names(&p["spec"]["containers"]), ["web", "worker"]);
    let web = &p["spec"]["containers"][0];
    assert_eq!(web["livenessProbe"]["httpGet"]["port"], 15901);
    assert_eq!(
        web["livenessProbe"]["httpGet"]["path"],
        "/app-health/web/livez"
    );
    assert_eq!(web["readinessProbe"]["httpGet"]["port"], 15902);
    assert_eq!(web["startupProbe"]["httpGet"]["port"], 15904);
    assert_eq!(web["startupProbe"]["failureThreshold"], 30);
    assert!(web["startupProbe"].get("tcpSocket").is_none());
    assert_eq!(
        p["spec"]["containers"][1]["livenessProbe"]["exec"]["command"][0],
        "/bin/true"
    );
    let probes = p["spec"]["initContainers"][1]["env"]
        .as_array()
        .and_then(|e| e.iter().find(|e| e["name"] == "MESH_APP_PROBES"))
        .and_then(|e| e["value"].as_str())
        .expect("MESH_APP_PROBES");
    let probes: Value = serde_json::from_str(probes).expect("probes json");
    assert_eq!(probes["/app-health/web/livez"]["port"], 80);
    assert_eq!(probes["/app-health/web/livez"]["path"], "/healthz");
    keep("probes", &p);

    // Container mode for older clusters: the sidecar is the first container.
    let mut pod = bare_pod();
    pod["metadata"]["annotations"] = json!({"tracemesh.dev/sidecar-mode": "container"});
    let p = admit(&h, "uid-legacy", "shop", &pod)
        .await
        .patched
        .expect("injected");
    assert_eq!(names(&p["spec"]["containers"]), ["mesh-proxy", "app"]);
    keep("legacy", &p);

    // Opt-in in a namespace that is in no mesh.
    let mut pod = bare_pod();
    pod["metadata"]["namespace"] = json!("plain");
    pod["metadata"]["annotations"] = json!({"tracemesh.dev/sidecar-injection": "enabled"});
    let p = admit(&h, "uid-optin", "plain", &pod)
        .await
        .patched
        .expect("injected");
    keep("optin", &p);

    common::kubernetes_validate(&to_validate.iter().map(|p| p.as_path()).collect::<Vec<_>>());
}

#[tokio::test]
async fn webhook_leaves_alone_what_it_must_and_denies_bad_values() {
    let h = start().await;
    let skip = |o: Outcome| {
        assert!(o.allowed, "{}", o.message);
        assert!(o.patched.is_none(), "no patch expected");
    };
    let mut host = bare_pod();
    host["spec"]["hostNetwork"] = json!(true);
    skip(admit(&h, "u1", "shop", &host).await);

    let mut out = bare_pod();
    out["metadata"]["annotations"] = json!({"tracemesh.dev/sidecar-injection": "disabled"});
    skip(admit(&h, "u2", "shop", &out).await);

    skip(admit(&h, "u3", "kube-system", &bare_pod()).await);
    skip(admit(&h, "u4", "plain", &bare_pod()).await);
    skip(admit(&h, "u5", "no-such-namespace", &bare_pod()).await);

    // Already injected: the output of a first pass gets no second patch.
    let once = admit(&h, "u6", "shop", &bare_pod())
        .await
        .patched
        .expect("injected");
    skip(admit(&h, "u7", "shop", &once).await);

    let mut maybe = bare_pod();
    maybe["metadata"]["annotations"] = json!({"tracemesh.dev/sidecar-injection": "maybe"});
    let o = admit(&h, "u8", "shop", &maybe).await;
    assert!(!o.allowed);
    assert!(
        o.message.contains("\"maybe\"") && o.message.contains("tracemesh.dev/sidecar-injection"),
        "{}",
        o.message
    );
}

/// Anything but a Pod CREATE is let through untouched, whatever its kind: a webhook that
/// denied or failed an UPDATE, DELETE or CONNECT (`kubectl exec` is a CONNECT of
/// `PodExecOptions`) would block it cluster-wide under `failurePolicy: Fail`. The oracle is the
/// same pod in the same enrolled namespace, which its CREATE does patch.
#[tokio::test]
async fn non_create_admissions_are_allowed_without_a_patch() {
    let h = start().await;
    assert!(
        admit(&h, "create", "shop", &bare_pod())
            .await
            .patched
            .is_some(),
        "a CREATE of this pod in this namespace is injected"
    );
    let exec = json!({"apiVersion": "v1", "kind": "PodExecOptions", "stdin": true,
                      "tty": true, "container": "app", "command": ["sh"]});
    let cases = [
        ("UPDATE", "Pod", None, bare_pod(), bare_pod()),
        ("DELETE", "Pod", None, Value::Null, bare_pod()),
        ("CONNECT", "PodExecOptions", Some("exec"), exec, Value::Null),
    ];
    for (operation, kind, sub_resource, object, old_object) in cases {
        let mut body: Value =
            serde_json::from_slice(&review(operation, "shop", &bare_pod())).expect("json");
        let request = &mut body["request"];
        request["operation"] = json!(operation);
        request["kind"]["kind"] = json!(kind);
        request["requestKind"]["kind"] = json!(kind);
        request["object"] = object;
        request["oldObject"] = old_object;
        request["name"] = json!("bare");
        if let Some(sub) = sub_resource {
            request["subResource"] = json!(sub);
            request["requestSubResource"] = json!(sub);
        }
        let (status, text) = h
            .post(
                Some("application/json"),
                serde_json::to_vec(&body).expect("json"),
            )
            .await;
        let text = String::from_utf8_lossy(&text);
        assert_eq!(status, StatusCode::OK, "{operation}: {text}");
        let v: Value = serde_json::from_str(&text).expect("response JSON");
        let r = &v["response"];
        assert_eq!(r["uid"], operation, "{operation}: uid echoed");
        assert_eq!(r["allowed"], true, "{operation}: {text}");
        assert!(r["patch"].is_null(), "{operation}: no patch: {text}");
    }
}

/// A body over the injector's limit is refused with 413 before it is decoded, and the server
/// keeps serving; one just under it is read (and refused for what it is, not for its size).
#[tokio::test]
async fn oversized_admission_bodies_are_refused_with_413() {
    let h = start().await;
    const LIMIT: usize = 4 * 1024 * 1024;
    let mut big = review("big", "shop", &bare_pod());
    // Valid JSON all the way: only its size is wrong.
    big.resize(LIMIT + 1, b' ');
    let (status, text) = h.post(Some("application/json"), big).await;
    let text = String::from_utf8_lossy(&text);
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{text}");
    assert!(text.contains("body"), "says what was too large: {text}");

    let mut under = review("under", "shop", &bare_pod());
    under.resize(LIMIT, b' ');
    let (status, text) = h.post(Some("application/json"), under).await;
    assert_eq!(status, StatusCode::OK, "{}", String::from_utf8_lossy(&text));

    assert!(
        admit(&h, "after", "shop", &bare_pod())
            .await
            .patched
            .is_some(),
        "still serving after the oversized body"
    );
}

#[tokio::test]
async fn bad_requests_get_400_or_415_and_the_server_keeps_serving() {
    let h = start().await;
    let good = review("u", "shop", &bare_pod());
    let cases: Vec<(Option<&str>, Vec<u8>, StatusCode, &str)> = vec![
        (
            Some("text/plain"),
            good.clone(),
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "Content-Type",
        ),
        (
            None,
            good.clone(),
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "Content-Type",
        ),
        (
            Some("application/json"),
            vec![],
            StatusCode::BAD_REQUEST,
            "empty body",
        ),
        (
            Some("application/json"),
            b"{\"apiVersion\": ".to_vec(),
            StatusCode::BAD_REQUEST,
            "malformed",
        ),
        (
            Some("application/json"),
            vec![0xff, 0xfe, 0x00],
            StatusCode::BAD_REQUEST,
            "malformed",
        ),
        (
            Some("application/json"),
            br#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview"}"#.to_vec(),
            StatusCode::BAD_REQUEST,
            "no request",
        ),
        (
            Some("application/json"),
            br#"[1,2,3]"#.to_vec(),
            StatusCode::BAD_REQUEST,
            "admission.k8s.io/v1",
        ),
    ];
    for (ct, body, want, needle) in cases {
        let (status, text) = h.post(ct, body).await;
        let text = String::from_utf8_lossy(&text);
        assert_eq!(status, want, "{text}");
        assert!(text.contains(needle), "{needle:?} not in {text:?}");
    }
    let mut svc: Value = serde_json::from_slice(&good).expect("json");
    svc["request"]["kind"] = json!({"group": "", "version": "v1", "kind": "Service"});
    svc["request"]["object"] =
        json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "s"}, "spec": {}});
    let (status, text) = h
        .post(
            Some("application/json"),
            serde_json::to_vec(&svc).expect("json"),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(String::from_utf8_lossy(&text).contains("Pods"));

    let (status, _, _) = h
        .request(
            Request::get("/healthz")
                .header("host", "localhost")
                .body(Full::default())
                .expect("req"),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "still serving after bad input");
}

#[tokio::test]
async fn config_server_long_polls_and_certificates_reload() {
    let h = start().await;
    let get = |query: &str, etag: Option<&str>| {
        let mut b = Request::get(format!("/v1/meshconfig{query}")).header("host", "localhost");
        if let Some(e) = etag {
            b = b.header("if-none-match", e);
        }
        b.body(Full::default()).expect("request")
    };
    let (status, headers, body) = h.request(get("", None)).await;
    assert_eq!(status, StatusCode::OK);
    let doc: Value = serde_json::from_slice(&body).expect("json");
    assert_eq!(
        doc["spec"]["traffic"]["outboundPortExclusionList"],
        json!([3306])
    );
    let etag = headers["etag"].to_str().expect("etag").to_string();

    let (status, _, _) = h.request(get("?wait=0.2", Some(&etag))).await;
    assert_eq!(status, StatusCode::NOT_MODIFIED);

    // A held request is answered when the document changes, long before its wait ends.
    let polls_held = |n: i64| {
        let app = h.app.clone();
        async move {
            tokio::time::timeout(Duration::from_secs(20), async {
                while app.metrics.long_polls.get() != n {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            })
            .await
            .unwrap_or_else(|_| panic!("never {n} long polls held"));
        }
    };
    polls_held(0).await;
    let held = {
        let req = get("?wait=120", Some(&etag));
        let (mut send, _) = h.connect().await;
        tokio::spawn(async move { send.send_request(req).await })
    };
    // The synchronisation point: the server holds the poll, so the answer below comes from
    // the change, not from a request that arrived after it.
    polls_held(1).await;
    let state = h.dir.path().join("state/mesh-config.yaml");
    std::fs::write(&state, "spec: {sidecar: {logLevel: debug}}\n").expect("write");
    let resp = tokio::time::timeout(Duration::from_secs(20), held)
        .await
        .expect("answered on change, not at the end of the wait")
        .expect("task")
        .expect("response");
    assert_eq!(resp.status(), StatusCode::OK);
    assert_ne!(resp.headers()["etag"].to_str().expect("etag"), etag);
    let doc: Value =
        serde_json::from_slice(&resp.into_body().collect().await.expect("body").to_bytes())
            .expect("json");
    assert_eq!(doc["spec"]["sidecar"]["logLevel"], "debug");

    // Rotate the certificate: new handshakes get the new one.
    let (_, before) = h.connect().await;
    tokio::time::sleep(Duration::from_millis(20)).await;
    let new = write_cert(h.dir.path());
    let mut roots = (*h.roots).clone();
    roots.add(new.clone()).expect("root");
    let h2 = Harness {
        roots: Arc::new(roots),
        ..h
    };
    let (_, after) = h2.connect().await;
    assert_ne!(before, after);
    assert_eq!(after, new);
}
