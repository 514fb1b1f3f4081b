//! `mesh check [--pre]`: is this cluster ready for the mesh (`--pre`), and is the installed mesh
//! healthy? One line per check, `✔` or `✘` with a hint on the line after a failure, and exit 1
//! when any check failed, as `linkerd check` and `istioctl x precheck` do.
//!
//! Every check reads the API (nothing is written but SelfSubjectAccessReviews, which store
//! nothing), so it is safe to run at any time.

use crate::backend::kube::post_params;
use crate::backend::mesh_config_from_object;
use crate::namespace::MONITORED_BY_LABEL;
use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::authorization::v1::{
    ResourceAttributes, SelfSubjectAccessReview, SelfSubjectAccessReviewSpec,
};
use k8s_openapi::api::core::v1::{Namespace, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, DynamicObject, ListParams};
use kube::Client;
use std::io::Write;

const NAMESPACE: &str = mesh_config::DEFAULT_NAMESPACE;
const CRD: &str = "meshconfigs.config.tracemesh.dev";
/// The injector's Deployment, Service and MutatingWebhookConfiguration share this name
/// (manifests/injector.yaml, manifests/webhook.yaml).
const INJECTOR: &str = "mesh-injector";
/// The injector's config endpoint port (the contract's 9090), reached through the API server's
/// service proxy so the check sees what a sidecar would.
const CONFIG_PORT: u16 = 9090;
/// Oldest supported Kubernetes minor: Pod Security admission (read by the pre-check, and what
/// injected pods are held to) is GA from 1.25.
const MIN_MINOR: u32 = 25;
/// Native sidecars (init containers with restartPolicy: Always), the default sidecar mode, are on
/// by default from 1.29.
const NATIVE_SIDECAR_MINOR: u32 = 29;
/// The Pod Security label the API server enforces.
const POD_SECURITY_ENFORCE: &str = "pod-security.kubernetes.io/enforce";

/// What `mesh install | kubectl apply -f -` creates, and `mesh namespace add` patches:
/// (API group, resource, verb, in mesh-system).
const INSTALL_PERMISSIONS: &[(&str, &str, &str, bool)] = &[
    (
        "apiextensions.k8s.io",
        "customresourcedefinitions",
        "create",
        false,
    ),
    ("", "namespaces", "create", false),
    ("", "serviceaccounts", "create", true),
    ("rbac.authorization.k8s.io", "clusterroles", "create", false),
    (
        "rbac.authorization.k8s.io",
        "clusterrolebindings",
        "create",
        false,
    ),
    ("rbac.authorization.k8s.io", "roles", "create", true),
    ("rbac.authorization.k8s.io", "rolebindings", "create", true),
    ("apps", "deployments", "create", true),
    ("policy", "poddisruptionbudgets", "create", true),
    ("", "services", "create", true),
    (
        "admissionregistration.k8s.io",
        "mutatingwebhookconfigurations",
        "create",
        false,
    ),
    ("config.tracemesh.dev", "meshconfigs", "create", true),
    ("", "namespaces", "patch", false),
];

#[derive(Debug, clap::Args)]
#[command(after_help = "\
Examples:
  mesh check --pre     before installing: API, version, permissions, Pod Security, CRD
  mesh check           after installing: injector ready, webhook wired, MeshConfig valid and served")]
pub struct Args {
    /// Check that the cluster is ready for an install, instead of the installed mesh
    #[arg(long)]
    pub pre: bool,
}

/// Some check failed; each has said why on its own line.
#[derive(Debug, thiserror::Error)]
#[error("{failed} of {total} checks failed")]
pub struct Failed {
    pub failed: usize,
    pub total: usize,
}

/// The lines printed so far, and how many failed.
struct Report<'a, W: Write> {
    out: &'a mut W,
    total: usize,
    failed: usize,
}

impl<W: Write> Report<'_, W> {
    fn ok(&mut self, text: impl AsRef<str>) -> std::io::Result<()> {
        self.total += 1;
        writeln!(self.out, "✔ {}", text.as_ref())
    }

    fn fail(&mut self, text: impl AsRef<str>, hint: impl AsRef<str>) -> std::io::Result<()> {
        self.total += 1;
        self.failed += 1;
        writeln!(self.out, "✘ {}", text.as_ref())?;
        writeln!(self.out, "    {}", hint.as_ref())
    }

    fn outcome(&mut self, result: Result<String, (String, String)>) -> std::io::Result<()> {
        match result {
            Ok(text) => self.ok(text),
            Err((text, hint)) => self.fail(text, hint),
        }
    }
}

pub async fn run(args: &Args, client: Client, out: &mut impl Write) -> anyhow::Result<()> {
    let mut report = Report {
        out,
        total: 0,
        failed: 0,
    };
    // Nothing else can be checked without the API.
    let minor = match client.apiserver_version().await {
        Ok(info) => {
            report.ok(format!("Kubernetes API reachable ({})", info.git_version))?;
            minor_version(&info.major, &info.minor)
        }
        Err(err) => {
            report.fail(
                format!("Kubernetes API not reachable: {err}"),
                "check the kubeconfig, --kubeconfig and --context (kubectl cluster-info)",
            )?;
            return Err(Failed {
                failed: 1,
                total: 1,
            }
            .into());
        }
    };
    if args.pre {
        report.outcome(version_supported(minor))?;
        pre(&client, &mut report).await?;
    } else {
        post(&client, &mut report).await?;
    }
    if report.failed > 0 {
        return Err(Failed {
            failed: report.failed,
            total: report.total,
        }
        .into());
    }
    Ok(())
}

/// `1` and `29+` (as managed clusters write it) is minor 29; None when it is not a 1.x.
fn minor_version(major: &str, minor: &str) -> Option<u32> {
    if major != "1" {
        return None;
    }
    minor
        .trim_end_matches(|c: char| !c.is_ascii_digit())
        .parse()
        .ok()
}

fn version_supported(minor: Option<u32>) -> Result<String, (String, String)> {
    match minor {
        Some(minor) if minor >= NATIVE_SIDECAR_MINOR => {
            Ok(format!("Kubernetes 1.{minor} is supported"))
        }
        Some(minor) if minor >= MIN_MINOR => Ok(format!(
            "Kubernetes 1.{minor} is supported with mesh install --sidecar-mode container \
             (native sidecars need 1.{NATIVE_SIDECAR_MINOR})"
        )),
        Some(minor) => Err((
            format!("Kubernetes 1.{minor} is older than the oldest supported, 1.{MIN_MINOR}"),
            "upgrade the cluster".into(),
        )),
        None => Err((
            "the API server's version could not be read".into(),
            "kubectl version".into(),
        )),
    }
}

async fn pre<W: Write>(client: &Client, report: &mut Report<'_, W>) -> anyhow::Result<()> {
    let reviews: Api<SelfSubjectAccessReview> = Api::all(client.clone());
    let mut missing = Vec::new();
    let mut can_create_crds = false;
    for (group, resource, verb, namespaced) in INSTALL_PERMISSIONS {
        let review = SelfSubjectAccessReview {
            spec: SelfSubjectAccessReviewSpec {
                resource_attributes: Some(ResourceAttributes {
                    group: Some(group.to_string()),
                    resource: Some(resource.to_string()),
                    verb: Some(verb.to_string()),
                    namespace: namespaced.then(|| NAMESPACE.to_string()),
                    ..ResourceAttributes::default()
                }),
                ..SelfSubjectAccessReviewSpec::default()
            },
            ..SelfSubjectAccessReview::default()
        };
        let allowed = match reviews.create(&post_params(), &review).await {
            Ok(answer) => answer.status.is_some_and(|status| status.allowed),
            Err(err) => {
                report.fail(
                    format!("could not ask the API what this user may do: {err}"),
                    "kubectl auth can-i --list",
                )?;
                return Ok(());
            }
        };
        if *resource == "customresourcedefinitions" {
            can_create_crds = allowed;
        }
        if !allowed {
            let qualified = if group.is_empty() {
                resource.to_string()
            } else {
                format!("{resource}.{group}")
            };
            missing.push(format!("{verb} {qualified}"));
        }
    }
    if missing.is_empty() {
        report.ok(format!(
            "can create the control plane's objects ({} permissions)",
            INSTALL_PERMISSIONS.len()
        ))?;
    } else {
        report.fail(
            format!("missing permissions: {}", missing.join(", ")),
            "install as a cluster admin (kubectl auth can-i --list)",
        )?;
    }

    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    match crds.get_opt(CRD).await {
        Ok(Some(_)) => report.ok(format!("CRD {CRD} present (mesh install upgrades it)"))?,
        Ok(None) if can_create_crds => report.ok(format!(
            "CRD {CRD} not installed yet; mesh install creates it"
        ))?,
        Ok(None) => report.fail(
            format!("CRD {CRD} not installed, and this user cannot create it"),
            "mesh install --crds | kubectl apply -f - (as a cluster admin)",
        )?,
        Err(err) => report.fail(
            format!("could not read CRD {CRD}: {err}"),
            "kubectl get crd",
        )?,
    }

    report.outcome(pod_security(client).await)?;
    Ok(())
}

/// Enrolled namespaces whose Pod Security level refuses the injected `mesh-init` container (it
/// needs NET_ADMIN and NET_RAW to write iptables rules; only `privileged` allows them).
async fn pod_security(client: &Client) -> Result<String, (String, String)> {
    let namespaces: Api<Namespace> = Api::all(client.clone());
    let enrolled = namespaces
        .list(&ListParams::default().labels(MONITORED_BY_LABEL))
        .await
        .map_err(|err| {
            (
                format!("could not list enrolled namespaces: {err}"),
                "kubectl get namespaces --show-labels".to_string(),
            )
        })?;
    let refusing: Vec<String> = enrolled
        .items
        .iter()
        .filter_map(|namespace| {
            let level = namespace
                .metadata
                .labels
                .as_ref()?
                .get(POD_SECURITY_ENFORCE)?;
            crate::namespace::refuses_mesh_init(level).then(|| {
                format!(
                    "{} ({level})",
                    namespace.metadata.name.as_deref().unwrap_or_default()
                )
            })
        })
        .collect();
    if refusing.is_empty() {
        Ok(format!(
            "Pod Security: no enrolled namespace refuses the mesh-init container ({} enrolled)",
            enrolled.items.len()
        ))
    } else {
        Err((
            format!(
                "Pod Security: enrolled namespaces enforce a level that refuses the mesh-init \
                 container (NET_ADMIN, NET_RAW): {}",
                refusing.join(", ")
            ),
            format!("kubectl label namespace NAME {POD_SECURITY_ENFORCE}=privileged --overwrite"),
        ))
    }
}

async fn post<W: Write>(client: &Client, report: &mut Report<'_, W>) -> anyhow::Result<()> {
    report.outcome(crd_established(client).await)?;
    report.outcome(injector_ready(client).await)?;
    report.outcome(webhook_has_ca_bundle(client).await)?;
    report.outcome(service_has_endpoints(client).await)?;
    report.outcome(mesh_config_valid(client).await)?;
    report.outcome(mesh_config_served(client).await)?;
    Ok(())
}

/// The failure of a read, with the command that shows more.
fn read_failed(what: &str, err: kube::Error, hint: &str) -> (String, String) {
    (format!("could not read {what}: {err}"), hint.to_string())
}

async fn crd_established(client: &Client) -> Result<String, (String, String)> {
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    let hint = "mesh install | kubectl apply -f -";
    let crd = crds
        .get_opt(CRD)
        .await
        .map_err(|err| read_failed(CRD, err, "kubectl get crd"))?
        .ok_or_else(|| (format!("CRD {CRD} not installed"), hint.to_string()))?;
    let established = crd
        .status
        .and_then(|status| status.conditions)
        .unwrap_or_default()
        .iter()
        .any(|c| c.type_ == "Established" && c.status == "True");
    if established {
        Ok(format!("CRD {CRD} established"))
    } else {
        Err((
            format!("CRD {CRD} not established yet"),
            format!("kubectl wait --for condition=established crd/{CRD}"),
        ))
    }
}

async fn injector_ready(client: &Client) -> Result<String, (String, String)> {
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), NAMESPACE);
    let hint = format!("kubectl -n {NAMESPACE} describe deployment {INJECTOR}");
    let deployment = deployments
        .get_opt(INJECTOR)
        .await
        .map_err(|err| read_failed("the injector's Deployment", err, &hint))?
        .ok_or_else(|| {
            (
                format!("Deployment {NAMESPACE}/{INJECTOR} not found"),
                "mesh install | kubectl apply -f -".to_string(),
            )
        })?;
    let wanted = deployment.spec.and_then(|s| s.replicas).unwrap_or(1);
    let ready = deployment
        .status
        .and_then(|s| s.ready_replicas)
        .unwrap_or(0);
    if ready > 0 {
        Ok(format!("{INJECTOR} ready ({ready}/{wanted} replicas)"))
    } else {
        Err((
            format!("{INJECTOR} not ready (0/{wanted} replicas)"),
            format!("{hint}; kubectl -n {NAMESPACE} logs deployment/{INJECTOR}"),
        ))
    }
}

async fn webhook_has_ca_bundle(client: &Client) -> Result<String, (String, String)> {
    let webhooks: Api<MutatingWebhookConfiguration> = Api::all(client.clone());
    let configuration = webhooks
        .get_opt(INJECTOR)
        .await
        .map_err(|err| {
            read_failed(
                "the webhook",
                err,
                "kubectl get mutatingwebhookconfigurations",
            )
        })?
        .ok_or_else(|| {
            (
                format!("MutatingWebhookConfiguration {INJECTOR} not found"),
                "mesh install | kubectl apply -f -".to_string(),
            )
        })?;
    let hooks = configuration.webhooks.unwrap_or_default();
    let without: Vec<&str> = hooks
        .iter()
        .filter(|hook| {
            hook.client_config
                .ca_bundle
                .as_ref()
                .is_none_or(|bundle| bundle.0.is_empty())
        })
        .map(|hook| hook.name.as_str())
        .collect();
    if hooks.is_empty() {
        Err((
            format!("MutatingWebhookConfiguration {INJECTOR} has no webhooks"),
            "mesh install | kubectl apply -f -".into(),
        ))
    } else if without.is_empty() {
        Ok(format!(
            "webhook {INJECTOR} configured with a caBundle ({} webhooks)",
            hooks.len()
        ))
    } else {
        Err((
            format!("webhook without a caBundle: {}", without.join(", ")),
            format!(
                "the injector writes it once it has made its certificate: \
                 kubectl -n {NAMESPACE} logs deployment/{INJECTOR}"
            ),
        ))
    }
}

async fn service_has_endpoints(client: &Client) -> Result<String, (String, String)> {
    let services: Api<Service> = Api::namespaced(client.clone(), NAMESPACE);
    services
        .get_opt(INJECTOR)
        .await
        .map_err(|err| read_failed("the injector's Service", err, "kubectl get services"))?
        .ok_or_else(|| {
            (
                format!("Service {NAMESPACE}/{INJECTOR} not found"),
                "mesh install | kubectl apply -f -".to_string(),
            )
        })?;
    let slices: Api<EndpointSlice> = Api::namespaced(client.clone(), NAMESPACE);
    let list = slices
        .list(&ListParams::default().labels(&format!("kubernetes.io/service-name={INJECTOR}")))
        .await
        .map_err(|err| read_failed("the Service's endpoints", err, "kubectl get endpointslices"))?;
    // An endpoint with no ready condition counts as ready, as kube-proxy reads it.
    let ready = list
        .items
        .iter()
        .flat_map(|slice| &slice.endpoints)
        .filter(|endpoint| {
            endpoint
                .conditions
                .as_ref()
                .and_then(|c| c.ready)
                .unwrap_or(true)
        })
        .count();
    if ready > 0 {
        Ok(format!("Service {INJECTOR} has {ready} ready endpoints"))
    } else {
        Err((
            format!("Service {INJECTOR} has no ready endpoints: the webhook cannot be called"),
            format!("kubectl -n {NAMESPACE} get pods -l app.kubernetes.io/name={INJECTOR}"),
        ))
    }
}

async fn mesh_config_valid(client: &Client) -> Result<String, (String, String)> {
    let api: Api<DynamicObject> = Api::namespaced_with(
        client.clone(),
        NAMESPACE,
        &mesh_config::resource::api_resource(),
    );
    let name = mesh_config::DEFAULT_NAME;
    let object = api
        .get_opt(name)
        .await
        .map_err(|err| read_failed("the MeshConfig", err, "kubectl get meshconfig -A"))?
        .ok_or_else(|| {
            (
                format!("MeshConfig {NAMESPACE}/{name} not found"),
                "mesh install | kubectl apply -f -".to_string(),
            )
        })?;
    let generation = object.metadata.generation;
    let status = object.data.get("status").cloned().unwrap_or_default();
    let value = serde_json::to_value(&object).unwrap_or_default();
    if let Err(err) = mesh_config_from_object(value) {
        return Err((
            format!("MeshConfig {NAMESPACE}/{name} is not valid: {err}"),
            "mesh config get; fix it with mesh config patch".into(),
        ));
    }
    if status["valid"] == false {
        return Err((
            format!(
                "the injector refused MeshConfig {NAMESPACE}/{name}: {}",
                status["message"].as_str().unwrap_or("no reason given")
            ),
            "it keeps serving the last good one; fix it with mesh config patch".into(),
        ));
    }
    let observed = status["observedGeneration"].as_i64();
    match (generation, observed) {
        (Some(generation), Some(observed)) if observed >= generation => Ok(format!(
            "MeshConfig {NAMESPACE}/{name} valid (generation {generation} accepted by the injector)"
        )),
        _ => Err((
            format!(
                "MeshConfig {NAMESPACE}/{name} valid, but the injector has not accepted it yet"
            ),
            format!("kubectl -n {NAMESPACE} logs deployment/{INJECTOR}"),
        )),
    }
}

/// The document sidecars get, fetched through the API server's service proxy.
async fn mesh_config_served(client: &Client) -> Result<String, (String, String)> {
    let path = format!(
        "/api/v1/namespaces/{NAMESPACE}/services/https:{INJECTOR}:{CONFIG_PORT}/proxy/v1/meshconfig"
    );
    let hint = format!("kubectl get --raw {path}");
    let request = http::Request::get(&path)
        .body(Vec::new())
        .map_err(|err| (format!("bad request: {err}"), hint.clone()))?;
    let text = client.request_text(request).await.map_err(|err| {
        (
            format!("the injector does not serve the MeshConfig: {err}"),
            hint.clone(),
        )
    })?;
    match mesh_config::parse(&text) {
        Ok(_) => Ok("the injector serves the MeshConfig to sidecars".into()),
        Err(err) => Err((
            format!("the injector serves a MeshConfig that does not parse: {err}"),
            hint,
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::kube::tests::{mesh_config_object, not_found, Handle};
    use http::{Request, Response};
    use kube::client::Body;
    use serde_json::{json, Value};

    /// An API server that answers by path until the client goes away; each request it saw is
    /// returned as "METHOD path?query". Writes must name the field manager.
    async fn fake_api(
        mut handle: Handle,
        answer: impl Fn(&str, &str, &Value) -> (u16, Value),
    ) -> Vec<String> {
        let mut seen = Vec::new();
        while let Some((request, send)) = handle.next_request().await {
            let request: Request<Body> = request;
            let method = request.method().to_string();
            let uri = request.uri().clone();
            if method == "POST" {
                assert!(
                    uri.query()
                        .unwrap_or_default()
                        .contains("fieldManager=mesh"),
                    "{uri}"
                );
            }
            let bytes = request.into_body().collect_bytes().await.expect("body");
            let body: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
            let (code, reply) = answer(&method, uri.path(), &body);
            seen.push(format!("{method} {uri}"));
            send.send_response(
                Response::builder()
                    .status(code)
                    .header("content-type", "application/json")
                    .body(Body::from(serde_json::to_vec(&reply).expect("json")))
                    .expect("response"),
            );
        }
        seen
    }

    fn version(minor: &str) -> Value {
        json!({"major": "1", "minor": minor, "gitVersion": format!("v1.{minor}.2"),
               "gitCommit": "", "gitTreeState": "clean", "buildDate": "2026-01-01T00:00:00Z",
               "goVersion": "go1.24", "compiler": "gc", "platform": "linux/amd64"})
    }

    fn review(body: &Value, allowed: bool) -> Value {
        let mut review = body.clone();
        review["status"] = json!({"allowed": allowed});
        review
    }

    fn namespace_list(items: Value) -> Value {
        json!({"apiVersion": "v1", "kind": "NamespaceList", "metadata": {}, "items": items})
    }

    fn crd(established: bool) -> Value {
        json!({"apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
               "metadata": {"name": CRD},
               "spec": {"group": "config.tracemesh.dev", "scope": "Namespaced",
                        "names": {"kind": "MeshConfig", "plural": "meshconfigs"}, "versions": []},
               "status": {"conditions": [{"type": "Established",
                                          "status": if established {"True"} else {"False"}}]}})
    }

    async fn check(
        pre: bool,
        answer: impl Fn(&str, &str, &Value) -> (u16, Value) + Send + 'static,
    ) -> (anyhow::Result<()>, String, Vec<String>) {
        let (backend, handle) = crate::backend::kube::tests::mock_client();
        let server = tokio::spawn(fake_api(handle, answer));
        let mut out = Vec::new();
        let result = run(&Args { pre }, backend.client(), &mut out).await;
        drop(backend);
        let seen = server.await.expect("server");
        (result, String::from_utf8(out).expect("utf-8"), seen)
    }

    fn failed(result: &anyhow::Result<()>) -> Option<usize> {
        result
            .as_ref()
            .err()
            .and_then(|err| err.downcast_ref::<Failed>())
            .map(|failed| failed.failed)
    }

    #[tokio::test]
    async fn pre_check_passes_on_a_ready_cluster() {
        let (result, out, seen) = check(true, |method, path, body| match (method, path) {
            ("GET", "/version") => (200, version("31")),
            ("POST", "/apis/authorization.k8s.io/v1/selfsubjectaccessreviews") => {
                (200, review(body, true))
            }
            ("GET", p) if p.ends_with(CRD) => (404, not_found("customresourcedefinitions", CRD)),
            ("GET", "/api/v1/namespaces") => (
                200,
                namespace_list(json!([{"metadata": {"name": "shop",
                    "labels": {MONITORED_BY_LABEL: "tracemesh", POD_SECURITY_ENFORCE: "privileged"}}}])),
            ),
            other => panic!("unexpected {other:?}"),
        })
        .await;
        result.expect("every check passes");
        assert_eq!(
            out.lines().filter(|l| l.starts_with('✔')).count(),
            5,
            "{out}"
        );
        assert!(out.contains("mesh install creates it"), "{out}");
        let reviews = seen.iter().filter(|r| r.starts_with("POST")).count();
        assert_eq!(reviews, INSTALL_PERMISSIONS.len());
    }

    #[tokio::test]
    async fn pre_check_fails_on_missing_rights_old_clusters_and_strict_pod_security() {
        let (result, out, _) = check(true, |method, path, body| match (method, path) {
            ("GET", "/version") => (200, version("24")),
            ("POST", _) => {
                let resource = body["spec"]["resourceAttributes"]["resource"].as_str();
                (200, review(body, resource != Some("clusterroles")))
            }
            ("GET", p) if p.ends_with(CRD) => (200, crd(true)),
            ("GET", "/api/v1/namespaces") => (
                200,
                namespace_list(json!([{"metadata": {"name": "shop",
                    "labels": {MONITORED_BY_LABEL: "tracemesh", POD_SECURITY_ENFORCE: "restricted"}}}])),
            ),
            other => panic!("unexpected {other:?}"),
        })
        .await;
        assert_eq!(failed(&result), Some(3), "{out}");
        assert!(out.contains("✘ Kubernetes 1.24 is older"), "{out}");
        assert!(
            out.contains("✘ missing permissions: create clusterroles.rbac.authorization.k8s.io"),
            "{out}"
        );
        assert!(out.contains("shop (restricted)"), "{out}");
        assert!(
            out.contains("✔ CRD meshconfigs.config.tracemesh.dev present"),
            "{out}"
        );
    }

    #[tokio::test]
    async fn an_unreachable_api_is_one_failure_and_nothing_else() {
        let (result, out, seen) = check(false, |_, _, _| {
            (
                503,
                json!({"kind": "Status", "apiVersion": "v1", "status": "Failure",
                         "message": "unavailable", "reason": "ServiceUnavailable", "code": 503}),
            )
        })
        .await;
        assert_eq!(failed(&result), Some(1));
        assert!(out.starts_with("✘ Kubernetes API not reachable"), "{out}");
        assert_eq!(seen.len(), 1);
    }

    fn healthy(method: &str, path: &str, ca_bundle: &str, ready: i32) -> (u16, Value) {
        assert_eq!(method, "GET", "post-install checks only read");
        let deployment_path =
            format!("/apis/apps/v1/namespaces/{NAMESPACE}/deployments/{INJECTOR}");
        let webhook_path = format!(
            "/apis/admissionregistration.k8s.io/v1/mutatingwebhookconfigurations/{INJECTOR}"
        );
        match path {
            "/version" => (200, version("33")),
            p if p.ends_with(CRD) => (200, crd(true)),
            p if p == deployment_path => (
                200,
                json!({"apiVersion": "apps/v1", "kind": "Deployment",
                       "metadata": {"name": INJECTOR, "namespace": NAMESPACE},
                       "spec": {"replicas": 2, "selector": {}, "template": {}},
                       "status": {"readyReplicas": ready}}),
            ),
            p if p == webhook_path => (
                200,
                json!({"apiVersion": "admissionregistration.k8s.io/v1",
                       "kind": "MutatingWebhookConfiguration", "metadata": {"name": INJECTOR},
                       "webhooks": [{"name": "sidecar-injector.tracemesh.dev",
                                     "admissionReviewVersions": ["v1"], "sideEffects": "None",
                                     "clientConfig": {"caBundle": ca_bundle,
                                                      "service": {"name": INJECTOR, "namespace": NAMESPACE}}}]}),
            ),
            "/api/v1/namespaces/mesh-system/services/mesh-injector" => (
                200,
                json!({"apiVersion": "v1", "kind": "Service",
                       "metadata": {"name": INJECTOR, "namespace": NAMESPACE}}),
            ),
            "/apis/discovery.k8s.io/v1/namespaces/mesh-system/endpointslices" => (
                200,
                json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSliceList", "metadata": {},
                       "items": [{"metadata": {"name": "mesh-injector-x"}, "addressType": "IPv4",
                                  "endpoints": (0..ready).map(|i| json!({"addresses": [format!("10.0.0.{i}")],
                                                "conditions": {"ready": true}})).collect::<Vec<_>>()}]}),
            ),
            p if p.ends_with("/meshconfigs/mesh-config") => {
                let mut object = mesh_config_object("9", json!({}));
                object["status"] = json!({"valid": true, "observedGeneration": 3});
                (200, object)
            }
            p if p.ends_with("/proxy/v1/meshconfig") => (
                200,
                json!({"apiVersion": "config.tracemesh.dev/v1alpha1", "kind": "MeshConfig", "spec": {}}),
            ),
            other => panic!("unexpected GET {other}"),
        }
    }

    #[tokio::test]
    async fn post_install_check_passes_on_a_healthy_mesh() {
        let (result, out, seen) = check(false, |method, path, _| {
            healthy(method, path, "LS0tLS1CRUdJTg==", 2)
        })
        .await;
        result.expect("healthy");
        assert_eq!(
            out.lines().filter(|l| l.starts_with('✔')).count(),
            7,
            "{out}"
        );
        assert!(out.contains("mesh-injector ready (2/2 replicas)"), "{out}");
        assert!(seen.iter().any(|r| r.contains(
            "/api/v1/namespaces/mesh-system/services/https:mesh-injector:9090/proxy/v1/meshconfig"
        )));
    }

    #[tokio::test]
    async fn post_install_check_fails_without_ca_bundle_or_ready_injector() {
        let (result, out, _) = check(false, |method, path, _| healthy(method, path, "", 0)).await;
        assert_eq!(failed(&result), Some(3), "{out}");
        assert!(
            out.contains("✘ mesh-injector not ready (0/2 replicas)"),
            "{out}"
        );
        assert!(
            out.contains("✘ webhook without a caBundle: sidecar-injector.tracemesh.dev"),
            "{out}"
        );
        assert!(
            out.contains("✘ Service mesh-injector has no ready endpoints"),
            "{out}"
        );
    }

    #[test]
    fn managed_cluster_versions_parse() {
        assert_eq!(minor_version("1", "29+"), Some(29));
        assert_eq!(minor_version("1", "33"), Some(33));
        assert_eq!(minor_version("2", "0"), None);
        assert!(version_supported(Some(27))
            .expect("ok")
            .contains("--sidecar-mode container"));
    }
}
