//! The Kubernetes backend: namespaces through `Api<Namespace>`, the MeshConfig custom resource
//! through `Api<DynamicObject>` (no generated type, so the CLI does not need the CRD's Rust
//! binding). Patches are sent as `application/merge-patch+json`, the same request as
//! `kubectl patch --type=merge`, each naming the field manager `mesh`.

use super::{mesh_config_from_object, Backend, BackendError, Patched};
use anyhow::Context as _;
use k8s_openapi::api::core::v1::Namespace;
use kube::api::{Api, DynamicObject, ListParams, Patch, PatchParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::Client;
use serde_json::Value;
use std::path::PathBuf;
use std::time::Duration;

/// The enrolment label; a namespace carrying it is watched by the mesh named in its value.
use crate::namespace::MONITORED_BY_LABEL;

/// How often a MeshConfig patch is retried when someone else changed the resource between our
/// read and our write. Each round re-validates against the newer document, so a retry is safe.
const PATCH_ATTEMPTS: usize = 5;

/// The name every write to the API is recorded under in `metadata.managedFields`, so that
/// `kubectl get -o yaml --show-managed-fields` and server-side apply conflicts say who set a field.
pub const FIELD_MANAGER: &str = "mesh";

/// How long to wait for the API server to accept a connection. kube's default (30 s) is made for
/// controllers; a user at a terminal should hear about an unreachable cluster sooner.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Parameters of every PATCH the CLI sends.
pub fn patch_params() -> PatchParams {
    PatchParams {
        field_manager: Some(FIELD_MANAGER.into()),
        ..PatchParams::default()
    }
}

/// Parameters of every create the CLI sends.
pub fn post_params() -> PostParams {
    PostParams {
        field_manager: Some(FIELD_MANAGER.into()),
        ..PostParams::default()
    }
}

/// Which cluster the kube backend talks to: `--kubeconfig` and `--context`, as kubectl reads them.
#[derive(Debug, Clone, Default)]
pub struct KubeOptions {
    pub kubeconfig: Option<PathBuf>,
    pub context: Option<String>,
}

/// A client for the cluster the options select: the named kubeconfig file (else `KUBECONFIG`,
/// `~/.kube/config`) with its current or the named context, or the in-cluster account when
/// neither a file nor a context is given.
pub async fn client(options: &KubeOptions) -> anyhow::Result<Client> {
    let context = KubeConfigOptions {
        context: options.context.clone(),
        ..KubeConfigOptions::default()
    };
    let mut config = match &options.kubeconfig {
        Some(path) => {
            let kubeconfig = Kubeconfig::read_from(path)
                .with_context(|| format!("--kubeconfig {}", path.display()))?;
            kube::Config::from_custom_kubeconfig(kubeconfig, &context)
                .await
                .with_context(|| format!("--kubeconfig {}", path.display()))?
        }
        None if options.context.is_some() => kube::Config::from_kubeconfig(&context)
            .await
            .context("--context: reading the kubeconfig (KUBECONFIG or ~/.kube/config)")?,
        None => kube::Config::infer().await.map_err(|err| {
            anyhow::anyhow!(
                "no Kubernetes cluster is configured (--kubeconfig, KUBECONFIG, ~/.kube/config or \
                 an in-cluster service account); to manage a mesh on this machine, use \
                 --backend local (or MESH_BACKEND=local)\n  details: {err}"
            )
        })?,
    };
    config.connect_timeout = Some(CONNECT_TIMEOUT);
    Client::try_from(config).map_err(|err| {
        anyhow::anyhow!("Could not access Kubernetes cluster, check kubeconfig: {err}")
    })
}

pub struct KubeBackend {
    client: Client,
}

impl KubeBackend {
    /// Connects to the cluster the options select.
    pub async fn connect(options: &KubeOptions) -> anyhow::Result<Self> {
        Ok(Self::new(client(options).await?))
    }

    pub fn new(client: Client) -> Self {
        Self { client }
    }

    #[cfg(test)]
    pub fn client(&self) -> Client {
        self.client.clone()
    }

    fn namespaces(&self) -> Api<Namespace> {
        Api::all(self.client.clone())
    }

    fn mesh_configs(&self) -> Api<DynamicObject> {
        Api::namespaced_with(
            self.client.clone(),
            mesh_config::DEFAULT_NAMESPACE,
            &mesh_config::resource::api_resource(),
        )
    }
}

impl Backend for KubeBackend {
    fn creates_namespaces(&self) -> bool {
        false
    }

    async fn get_namespace(&self, name: &str) -> Result<Option<Namespace>, BackendError> {
        Ok(self.namespaces().get_opt(name).await?)
    }

    async fn list_enrolled(&self, mesh: Option<&str>) -> Result<Vec<Namespace>, BackendError> {
        let selector = match mesh {
            Some(mesh) => format!("{MONITORED_BY_LABEL}={mesh}"),
            None => MONITORED_BY_LABEL.to_string(),
        };
        let list = self
            .namespaces()
            .list(&ListParams::default().labels(&selector))
            .await?;
        Ok(list.items)
    }

    async fn patch_namespace(&self, name: &str, patch: &Value) -> Result<(), BackendError> {
        match self
            .namespaces()
            .patch(name, &patch_params(), &Patch::Merge(patch))
            .await
        {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(status)) if status.is_not_found() => {
                Err(BackendError::NamespaceNotFound(name.to_string()))
            }
            Err(err) => Err(err.into()),
        }
    }

    async fn get_mesh_config(&self) -> Result<mesh_config::MeshConfig, BackendError> {
        let object = self
            .mesh_configs()
            .get_opt(mesh_config::DEFAULT_NAME)
            .await?
            .ok_or(BackendError::MeshConfigNotFound)?;
        mesh_config_from_object(to_json(&object)?)
    }

    /// Validates the merged document locally, then sends the user's patch with the
    /// resourceVersion that was validated: the API server refuses it (409) if the resource changed
    /// in between, so what is stored is exactly what was checked. A patch that leaves the
    /// document as it is sends nothing.
    async fn patch_mesh_config(&self, patch: &Value) -> Result<Patched, BackendError> {
        let api = self.mesh_configs();
        for _ in 0..PATCH_ATTEMPTS {
            let object = api
                .get_opt(mesh_config::DEFAULT_NAME)
                .await?
                .ok_or(BackendError::MeshConfigNotFound)?;
            let version = object.metadata.resource_version.clone();
            let current = mesh_config_from_object(to_json(&object)?)?;
            let merged =
                mesh_config::merge_patch(&current, patch).map_err(BackendError::InvalidPatch)?;
            if merged == current {
                return Ok(Patched {
                    config: merged,
                    changed: false,
                });
            }
            let body = with_resource_version(patch, version);
            match api
                .patch(
                    mesh_config::DEFAULT_NAME,
                    &patch_params(),
                    &Patch::Merge(&body),
                )
                .await
            {
                Ok(_) => {
                    return Ok(Patched {
                        config: merged,
                        changed: true,
                    })
                }
                Err(kube::Error::Api(status)) if status.is_conflict() => continue,
                Err(kube::Error::Api(status)) if status.is_not_found() => {
                    return Err(BackendError::MeshConfigNotFound)
                }
                Err(err) => return Err(err.into()),
            }
        }
        Err(BackendError::Conflict)
    }
}

fn to_json(object: &DynamicObject) -> Result<Value, BackendError> {
    serde_json::to_value(object).map_err(|err| BackendError::Corrupt {
        path: "meshconfigs/mesh-config".into(),
        message: err.to_string(),
    })
}

/// The patch plus `metadata.resourceVersion`, the API server's optimistic-concurrency precondition.
fn with_resource_version(patch: &Value, version: Option<String>) -> Value {
    let mut body = patch.clone();
    if let (Some(version), Some(root)) = (version, body.as_object_mut()) {
        let metadata = root
            .entry("metadata")
            .or_insert_with(|| Value::Object(Default::default()));
        if let Some(metadata) = metadata.as_object_mut() {
            metadata.insert("resourceVersion".into(), Value::String(version));
        }
    }
    body
}

#[cfg(test)]
pub(crate) mod tests {
    //! A mock API server (tower-test) that asserts each request exactly and answers with real
    //! API objects, as kube's own tests do.

    use super::*;
    use http::{Request, Response};
    use kube::client::Body;
    use serde_json::json;
    use tower_test::mock;

    pub type Handle = mock::Handle<Request<Body>, Response<Body>>;

    pub fn mock_client() -> (KubeBackend, Handle) {
        let (service, handle) = mock::pair::<Request<Body>, Response<Body>>();
        (KubeBackend::new(Client::new(service, "default")), handle)
    }

    /// Waits for the next request, checks its method and path-and-query, and returns its body.
    pub async fn expect(
        handle: &mut Handle,
        method: &str,
        path_and_query: &str,
    ) -> (Value, mock::SendResponse<Response<Body>>) {
        let (request, send) = handle.next_request().await.expect("a request to the API");
        assert_eq!(request.method().as_str(), method);
        assert_eq!(
            request
                .uri()
                .path_and_query()
                .map(|p| p.as_str())
                .unwrap_or(""),
            path_and_query
        );
        if matches!(method, "PATCH" | "POST" | "PUT") {
            let query = request.uri().query().unwrap_or_default();
            assert!(
                query.split('&').any(|pair| pair == "fieldManager=mesh"),
                "a write without the field manager: {method} {}",
                request.uri()
            );
        }
        if method == "PATCH" {
            assert_eq!(
                request.headers().get("content-type").map(|v| v.as_bytes()),
                Some(&b"application/merge-patch+json"[..])
            );
        }
        let bytes = request.into_body().collect_bytes().await.expect("body");
        let body = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes).expect("a JSON body")
        };
        (body, send)
    }

    pub fn reply(send: mock::SendResponse<Response<Body>>, code: u16, body: Value) {
        let response = Response::builder()
            .status(code)
            .header("content-type", "application/json")
            .body(Body::from(serde_json::to_vec(&body).expect("json")))
            .expect("response");
        send.send_response(response);
    }

    pub fn namespace(name: &str, labels: Value, annotations: Value) -> Value {
        json!({
            "apiVersion": "v1", "kind": "Namespace",
            "metadata": {"name": name, "uid": "0b8e1c7a-1", "resourceVersion": "17",
                         "labels": labels, "annotations": annotations},
            "spec": {"finalizers": ["kubernetes"]}, "status": {"phase": "Active"}
        })
    }

    pub fn not_found(kind: &str, name: &str) -> Value {
        json!({
            "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "message": format!("{kind} \"{name}\" not found"), "reason": "NotFound",
            "details": {"name": name, "kind": kind}, "code": 404
        })
    }

    pub fn conflict() -> Value {
        json!({
            "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "message": "the object has been modified; please apply your changes to the latest version and try again",
            "reason": "Conflict", "code": 409
        })
    }

    pub fn mesh_config_object(resource_version: &str, spec: Value) -> Value {
        json!({
            "apiVersion": "config.tracemesh.dev/v1alpha1", "kind": "MeshConfig",
            "metadata": {"name": "mesh-config", "namespace": "mesh-system",
                         "uid": "5d1e", "resourceVersion": resource_version, "generation": 3,
                         "creationTimestamp": "2026-01-01T00:00:00Z"},
            "spec": spec
        })
    }

    pub const MESH_CONFIG_PATH: &str =
        "/apis/config.tracemesh.dev/v1alpha1/namespaces/mesh-system/meshconfigs/mesh-config";

    #[tokio::test]
    async fn get_mesh_config_reads_the_custom_resource() {
        let (backend, mut handle) = mock_client();
        let server = tokio::spawn(async move {
            let (_, send) = expect(&mut handle, "GET", MESH_CONFIG_PATH).await;
            reply(
                send,
                200,
                mesh_config_object(
                    "41",
                    json!({"observability": {"tracing": {"enable": true, "address": "zipkin", "port": 9411}}}),
                ),
            );
        });
        let config = backend.get_mesh_config().await.expect("config");
        server.await.expect("server");
        assert!(config.spec.observability.tracing.enable);
        assert_eq!(config.spec.observability.tracing.address, "zipkin");
    }

    #[tokio::test]
    async fn missing_mesh_config_says_how_to_install() {
        let (backend, mut handle) = mock_client();
        let server = tokio::spawn(async move {
            let (_, send) = expect(&mut handle, "GET", MESH_CONFIG_PATH).await;
            reply(
                send,
                404,
                not_found("meshconfigs.config.tracemesh.dev", "mesh-config"),
            );
        });
        let err = backend.get_mesh_config().await.expect_err("missing");
        server.await.expect("server");
        assert!(matches!(err, BackendError::MeshConfigNotFound), "{err}");
        assert!(err.to_string().contains("mesh install"));
    }

    #[tokio::test]
    async fn patch_mesh_config_sends_a_merge_patch_with_the_validated_version() {
        let (backend, mut handle) = mock_client();
        let server = tokio::spawn(async move {
            let (_, send) = expect(&mut handle, "GET", MESH_CONFIG_PATH).await;
            reply(send, 200, mesh_config_object("41", json!({})));
            let (body, send) = expect(
                &mut handle,
                "PATCH",
                &format!("{MESH_CONFIG_PATH}?&fieldManager=mesh"),
            )
            .await;
            assert_eq!(
                body,
                json!({"metadata": {"resourceVersion": "41"},
                       "spec": {"sidecar": {"logLevel": "debug"}}})
            );
            reply(
                send,
                200,
                mesh_config_object("42", json!({"sidecar": {"logLevel": "debug"}})),
            );
        });
        let patched = backend
            .patch_mesh_config(&json!({"spec": {"sidecar": {"logLevel": "debug"}}}))
            .await
            .expect("patched");
        server.await.expect("server");
        assert!(patched.changed);
        assert_eq!(
            patched.config.spec.sidecar.log_level,
            mesh_config::LogLevel::Debug
        );
    }

    #[tokio::test]
    async fn patch_mesh_config_retries_on_conflict_against_the_newer_document() {
        let (backend, mut handle) = mock_client();
        let server = tokio::spawn(async move {
            let (_, send) = expect(&mut handle, "GET", MESH_CONFIG_PATH).await;
            reply(send, 200, mesh_config_object("41", json!({})));
            let (_, send) = expect(
                &mut handle,
                "PATCH",
                &format!("{MESH_CONFIG_PATH}?&fieldManager=mesh"),
            )
            .await;
            reply(send, 409, conflict());
            let (_, send) = expect(&mut handle, "GET", MESH_CONFIG_PATH).await;
            reply(send, 200, mesh_config_object("43", json!({})));
            let (body, send) = expect(
                &mut handle,
                "PATCH",
                &format!("{MESH_CONFIG_PATH}?&fieldManager=mesh"),
            )
            .await;
            assert_eq!(body["metadata"]["resourceVersion"], "43");
            reply(send, 200, mesh_config_object("44", json!({})));
        });
        backend
            .patch_mesh_config(&json!({"spec": {"traffic": {"opaquePorts": [25]}}}))
            .await
            .expect("patched");
        server.await.expect("server");
    }

    #[tokio::test]
    async fn a_patch_that_changes_nothing_is_not_sent() {
        let (backend, mut handle) = mock_client();
        let server = tokio::spawn(async move {
            let (_, send) = expect(&mut handle, "GET", MESH_CONFIG_PATH).await;
            reply(
                send,
                200,
                mesh_config_object("41", json!({"sidecar": {"logLevel": "debug"}})),
            );
            // No PATCH may follow: the mock ends here, so a request would find no server.
        });
        let patched = backend
            .patch_mesh_config(&json!({"spec": {"sidecar": {"logLevel": "debug"}}}))
            .await
            .expect("no error");
        server.await.expect("server");
        assert!(!patched.changed);
    }

    #[tokio::test]
    async fn invalid_patch_result_is_never_sent() {
        let (backend, mut handle) = mock_client();
        let server = tokio::spawn(async move {
            let (_, send) = expect(&mut handle, "GET", MESH_CONFIG_PATH).await;
            reply(send, 200, mesh_config_object("41", json!({})));
            // No PATCH may follow: the mock ends here, so a request would find no server.
        });
        let err = backend
            .patch_mesh_config(&json!({"spec": {"observability": {"tracing": {"port": 70000}}}}))
            .await
            .expect_err("invalid");
        server.await.expect("server");
        assert!(matches!(err, BackendError::InvalidPatch(_)), "{err}");
        assert!(
            err.to_string().contains("spec.observability.tracing.port"),
            "{err}"
        );
    }

    /// A `Status` failure as the API server sends it.
    pub fn failure(code: u16, reason: &str, message: &str) -> Value {
        json!({
            "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "message": message, "reason": reason, "code": code
        })
    }

    const FORBIDDEN: &str = "meshconfigs.config.tracemesh.dev \"mesh-config\" is forbidden: User \
        \"alice\" cannot patch resource \"meshconfigs\" in API group \"config.tracemesh.dev\" \
        in the namespace \"mesh-system\"";

    /// The API code of a backend error, if the API server answered one.
    fn api_code(err: &BackendError) -> Option<u16> {
        match err {
            BackendError::Kube(kube::Error::Api(status)) => Some(status.code),
            _ => None,
        }
    }

    #[tokio::test]
    async fn forbidden_reads_say_what_rbac_refused() {
        let (backend, mut handle) = mock_client();
        let server = tokio::spawn(async move {
            let (_, send) = expect(&mut handle, "GET", MESH_CONFIG_PATH).await;
            reply(send, 403, failure(403, "Forbidden", FORBIDDEN));
        });
        let err = backend.get_mesh_config().await.expect_err("forbidden");
        server.await.expect("server");
        // Not mistaken for a missing MeshConfig ("is the mesh installed?").
        assert_eq!(api_code(&err), Some(403), "{err:?}");
        assert!(err.to_string().contains("cannot patch resource"), "{err}");
    }

    /// A 403 or a 500 on the write is reported as it is, and not retried: only a 409 (someone
    /// else's write) is. The mock ends after one PATCH, so a retry would fail differently.
    #[tokio::test]
    async fn forbidden_or_failing_patches_are_reported_not_retried() {
        for (code, reason, message) in [
            (403, "Forbidden", FORBIDDEN),
            (
                500,
                "InternalError",
                "Internal error occurred: etcdserver: request timed out",
            ),
        ] {
            let (backend, mut handle) = mock_client();
            let server = tokio::spawn(async move {
                let (_, send) = expect(&mut handle, "GET", MESH_CONFIG_PATH).await;
                reply(send, 200, mesh_config_object("41", json!({})));
                let (_, send) = expect(
                    &mut handle,
                    "PATCH",
                    &format!("{MESH_CONFIG_PATH}?&fieldManager=mesh"),
                )
                .await;
                reply(send, code, failure(code, reason, message));
            });
            let err = backend
                .patch_mesh_config(&json!({"spec": {"sidecar": {"logLevel": "debug"}}}))
                .await
                .expect_err("refused");
            server.await.expect("server");
            // A retry would have met the closed mock and ended with another error.
            assert_eq!(api_code(&err), Some(code), "{err:?}");
            assert!(err.to_string().contains(message), "{err}");
        }
    }

    #[tokio::test]
    async fn namespace_list_failing_with_500_is_an_error_not_an_empty_mesh() {
        let (backend, mut handle) = mock_client();
        let server = tokio::spawn(async move {
            let (_, send) = expect(
                &mut handle,
                "GET",
                "/api/v1/namespaces?&labelSelector=tracemesh.dev%2Fmonitored-by",
            )
            .await;
            reply(
                send,
                500,
                failure(500, "InternalError", "the server is on fire"),
            );
        });
        let err = backend.list_enrolled(None).await.expect_err("500");
        server.await.expect("server");
        assert_eq!(api_code(&err), Some(500), "{err:?}");
        assert!(err.to_string().contains("the server is on fire"), "{err}");
    }
}
