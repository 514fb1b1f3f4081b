//! `mesh namespace add|remove|list`: enrolment of namespaces in a mesh. Messages and exit codes
//! follow `fsm namespace ...`, so scripts and habits carry over; where FSM would silently move a
//! namespace from another mesh, this refuses and says how to move it.

use crate::backend::{Backend, BackendError};
use crate::output::{self, Format};
use anyhow::{anyhow, bail, Context as _};
use k8s_openapi::api::core::v1::Namespace;
use serde_json::{json, Value};
use std::io::Write;

/// Enrolment: the mesh named here watches the namespace.
pub const MONITORED_BY_LABEL: &str = "tracemesh.dev/monitored-by";
/// Whether the injector adds sidecars to new pods of an enrolled namespace.
pub const SIDECAR_INJECTION_ANNOTATION: &str = "tracemesh.dev/sidecar-injection";
/// `tracemesh.dev/ignore=true` keeps a namespace out of every mesh.
pub const IGNORE_LABEL: &str = "tracemesh.dev/ignore";
pub const DEFAULT_MESH_NAME: &str = "tracemesh";

/// Namespaces that never join a mesh: the control plane's own, and Kubernetes' system ones (the
/// injector never injects there either).
const SYSTEM_NAMESPACES: [&str; 2] = ["kube-system", "kube-public"];

#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Add namespaces to the mesh and enable automatic sidecar injection in them
    #[command(after_help = "\
Examples:
  # Add namespace 'test' with automatic sidecar injection enabled
  mesh namespace add test

  # Add it without injection (also turns injection off if it was on)
  mesh namespace add test --disable-sidecar-injection

  # Add several namespaces at once
  mesh namespace add test foo bar baz")]
    Add(AddArgs),
    /// Remove a namespace from the mesh (running pods keep their sidecars until restarted)
    Remove(RemoveArgs),
    /// List the namespaces enrolled in meshes
    List(ListArgs),
}

#[derive(Debug, clap::Args)]
pub struct AddArgs {
    /// Namespaces to add
    #[arg(value_name = "NAMESPACE", required = true)]
    pub namespaces: Vec<String>,
    /// Name of the mesh
    #[arg(long, default_value = DEFAULT_MESH_NAME, value_parser = parse_mesh_name)]
    pub mesh_name: String,
    /// Enrol without automatic sidecar injection
    #[arg(long)]
    pub disable_sidecar_injection: bool,
}

#[derive(Debug, clap::Args)]
pub struct RemoveArgs {
    /// Namespace to remove
    #[arg(value_name = "NAMESPACE")]
    pub namespace: String,
    /// Name of the mesh the namespace belongs to
    #[arg(long, default_value = DEFAULT_MESH_NAME, value_parser = parse_mesh_name)]
    pub mesh_name: String,
}

#[derive(Debug, clap::Args)]
pub struct ListArgs {
    /// Only namespaces of this mesh (default: every mesh)
    #[arg(long, value_parser = parse_mesh_name)]
    pub mesh_name: Option<String>,
    /// Output format
    #[arg(short, long, value_enum, default_value = "table")]
    pub output: Format,
}

/// One enrolled namespace as `-o json|yaml` prints it.
#[derive(Debug, serde::Serialize)]
#[serde(rename_all = "camelCase")]
struct Enrolled {
    name: String,
    mesh: String,
    /// `enabled`, `disabled`, or `-` when the annotation is missing.
    sidecar_injection: String,
    /// Labelled tracemesh.dev/ignore: the injector leaves it alone whatever the annotation says.
    ignored: bool,
}

pub async fn run(
    command: Command,
    backend: &impl Backend,
    out: &mut impl Write,
) -> anyhow::Result<()> {
    match command {
        Command::Add(args) => add(args, backend, out).await,
        Command::Remove(args) => remove(args, backend, out).await,
        Command::List(args) => list(args, backend, out).await,
    }
}

/// Kubernetes' namespace name rule (RFC 1123 label): it also keeps a name safe as a file name.
pub fn is_dns1123_label(name: &str) -> bool {
    let bytes = name.as_bytes();
    !bytes.is_empty()
        && bytes.len() <= 63
        && bytes
            .iter()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-')
        && bytes.first() != Some(&b'-')
        && bytes.last() != Some(&b'-')
}

/// A mesh name is the value of the enrolment label, so it follows Kubernetes' label value rule:
/// at most 63 letters, digits, `-`, `_` and `.`, starting and ending with a letter or digit. An
/// empty value is a valid label but names no mesh. Used as a clap value parser, so a bad name is
/// a usage error (exit 2) before anything is read or written.
pub fn parse_mesh_name(name: &str) -> Result<String, String> {
    let bytes = name.as_bytes();
    let valid = !bytes.is_empty()
        && bytes.len() <= 63
        && bytes
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(b))
        && bytes.first().is_some_and(u8::is_ascii_alphanumeric)
        && bytes.last().is_some_and(u8::is_ascii_alphanumeric);
    if valid {
        Ok(name.to_string())
    } else {
        Err(format!(
            "invalid mesh name {name:?}: a mesh name is a Kubernetes label value, at most 63 \
             letters, digits, '-', '_' and '.', starting and ending with a letter or digit"
        ))
    }
}

fn check_name(name: &str) -> anyhow::Result<()> {
    if is_dns1123_label(name) {
        Ok(())
    } else {
        bail!(
            "invalid namespace name [{name}]: a namespace name is at most 63 lowercase letters, \
             digits and '-', starting and ending with a letter or digit"
        )
    }
}

fn label<'a>(namespace: &'a Namespace, key: &str) -> Option<&'a str> {
    namespace
        .metadata
        .labels
        .as_ref()?
        .get(key)
        .map(String::as_str)
}

fn annotation<'a>(namespace: &'a Namespace, key: &str) -> Option<&'a str> {
    namespace
        .metadata
        .annotations
        .as_ref()?
        .get(key)
        .map(String::as_str)
}

async fn add(args: AddArgs, backend: &impl Backend, out: &mut impl Write) -> anyhow::Result<()> {
    let mesh = &args.mesh_name;
    let injection = if args.disable_sidecar_injection {
        "disabled"
    } else {
        "enabled"
    };
    for name in &args.namespaces {
        check_name(name)?;
        if name == mesh_config::DEFAULT_NAMESPACE {
            writeln!(
                out,
                "Namespace [{name}] already has the mesh control plane installed and cannot be added to mesh [{mesh}]"
            )?;
            continue;
        }
        if SYSTEM_NAMESPACES.contains(&name.as_str()) {
            writeln!(
                out,
                "Namespace [{name}] is a Kubernetes system namespace and cannot be added to mesh [{mesh}]"
            )?;
            continue;
        }
        let could_not = || format!("Could not add namespace [{name}] to mesh [{mesh}]");
        let existing = backend.get_namespace(name).await.with_context(could_not)?;
        let namespace = match existing {
            Some(namespace) => namespace,
            None if backend.creates_namespaces() => Namespace::default(),
            None => {
                return Err(anyhow!(BackendError::NamespaceNotFound(name.clone())))
                    .with_context(could_not)
            }
        };
        match label(&namespace, MONITORED_BY_LABEL) {
            Some(current) if current == mesh => {
                if annotation(&namespace, SIDECAR_INJECTION_ANNOTATION) == Some(injection) {
                    writeln!(out, "Namespace [{name}] has already been added to mesh [{mesh}]")?;
                } else {
                    let patch = json!({"metadata": {"annotations": {SIDECAR_INJECTION_ANNOTATION: injection}}});
                    backend.patch_namespace(name, &patch).await.with_context(could_not)?;
                    writeln!(
                        out,
                        "Namespace [{name}] has already been added to mesh [{mesh}]; sidecar injection is now {injection}"
                    )?;
                }
                continue;
            }
            Some(other) => bail!(
                "Namespace [{name}] already belongs to mesh [{other}] and was not added to mesh [{mesh}]. \
                 To move it, first run: mesh namespace remove {name} --mesh-name {other}"
            ),
            None => {}
        }
        if label(&namespace, IGNORE_LABEL) == Some("true") {
            bail!("Cannot add ignored namespace [{name}]: it has the label {IGNORE_LABEL}=true");
        }
        let patch = json!({"metadata": {
            "labels": {MONITORED_BY_LABEL: mesh},
            "annotations": {SIDECAR_INJECTION_ANNOTATION: injection},
        }});
        backend
            .patch_namespace(name, &patch)
            .await
            .with_context(could_not)?;
        writeln!(
            out,
            "Namespace [{name}] successfully added to mesh [{mesh}]"
        )?;
        if let Some(warning) = pod_security_warning(name, &namespace, injection) {
            writeln!(out, "{warning}")?;
        }
    }
    Ok(())
}

async fn remove(
    args: RemoveArgs,
    backend: &impl Backend,
    out: &mut impl Write,
) -> anyhow::Result<()> {
    let (name, mesh) = (&args.namespace, &args.mesh_name);
    check_name(name)?;
    let could_not_get = || format!("Could not get namespace [{name}]");
    let namespace = backend
        .get_namespace(name)
        .await
        .with_context(could_not_get)?
        .ok_or_else(|| anyhow!(BackendError::NamespaceNotFound(name.clone())))
        .with_context(could_not_get)?;
    match label(&namespace, MONITORED_BY_LABEL) {
        None => {
            writeln!(out, "Namespace [{name}] already does not belong to any mesh")?;
            Ok(())
        }
        Some(other) if other != mesh => bail!(
            "Namespace belongs to mesh [{other}], not mesh [{mesh}]. Please specify the correct mesh"
        ),
        Some(_) => {
            // null removes just that key (RFC 7386), whatever else the namespace carries.
            let patch: Value = json!({"metadata": {
                "labels": {MONITORED_BY_LABEL: null},
                "annotations": {SIDECAR_INJECTION_ANNOTATION: null},
            }});
            backend
                .patch_namespace(name, &patch)
                .await
                .with_context(|| format!("Could not remove namespace [{name}] from mesh [{mesh}]"))?;
            writeln!(out, "Namespace [{name}] successfully removed from mesh [{mesh}]")?;
            Ok(())
        }
    }
}

async fn list(args: ListArgs, backend: &impl Backend, out: &mut impl Write) -> anyhow::Result<()> {
    let mesh = args.mesh_name.as_deref();
    let mut namespaces = backend.list_enrolled(mesh).await.with_context(|| {
        format!(
            "Could not list namespaces related to mesh [{}]",
            mesh.unwrap_or_default()
        )
    })?;
    namespaces.sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));
    let enrolled: Vec<Enrolled> = namespaces
        .iter()
        .map(|namespace| Enrolled {
            name: namespace.metadata.name.clone().unwrap_or_default(),
            mesh: label(namespace, MONITORED_BY_LABEL)
                .unwrap_or_default()
                .to_string(),
            sidecar_injection: annotation(namespace, SIDECAR_INJECTION_ANNOTATION)
                .unwrap_or("-")
                .to_string(),
            ignored: label(namespace, IGNORE_LABEL).is_some(),
        })
        .collect();
    // Scripts get an empty list, people a sentence.
    if let Some(text) = output::serialized(&enrolled, args.output)? {
        out.write_all(text.as_bytes())?;
        return Ok(());
    }
    if enrolled.is_empty() {
        match mesh {
            Some(mesh) => writeln!(out, "No namespaces in mesh [{mesh}]")?,
            None => writeln!(out, "No namespaces in any mesh")?,
        }
        return Ok(());
    }
    let mut rows = vec![[
        "NAMESPACE".to_string(),
        "MESH".to_string(),
        "SIDECAR-INJECTION".to_string(),
    ]];
    for namespace in enrolled {
        let injection = if namespace.ignored {
            "disabled (ignored)".to_string()
        } else {
            namespace.sidecar_injection
        };
        rows.push([namespace.name, namespace.mesh, injection]);
    }
    output::write_table(out, &rows)?;
    Ok(())
}

/// The namespace label through which the Pod Security admission enforces a level.
const POD_SECURITY_ENFORCE: &str = "pod-security.kubernetes.io/enforce";

/// A warning when the namespace enforces a Pod Security level that refuses the injected init
/// container: `baseline` and `restricted` both refuse the NET_ADMIN and NET_RAW capabilities
/// that writing the pod's iptables rules needs, so every injected pod would be rejected there.
/// Enrolment still goes ahead (the label may be about to change); the user is told what to do.
/// Whether a Pod Security level (`pod-security.kubernetes.io/enforce`) refuses the injected
/// `mesh-init` container: `baseline` and `restricted` refuse its NET_ADMIN and NET_RAW.
pub(crate) fn refuses_mesh_init(level: &str) -> bool {
    matches!(level, "baseline" | "restricted")
}

fn pod_security_warning(name: &str, namespace: &Namespace, injection: &str) -> Option<String> {
    let level = label(namespace, POD_SECURITY_ENFORCE)?;
    if injection != "enabled" || !refuses_mesh_init(level) {
        return None;
    }
    Some(format!(
        "Warning: namespace [{name}] enforces Pod Security level [{level}] ({POD_SECURITY_ENFORCE}={level}): \
         the injected init container mesh-init needs the NET_ADMIN and NET_RAW capabilities, which \
         [{level}] refuses, so pods created there will be rejected. Label the namespace \
         {POD_SECURITY_ENFORCE}=privileged, or see \"Pod Security\" in the README"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::kube::tests::{
        expect, mock_client, namespace as ns_object, not_found, reply,
    };
    use crate::backend::state_dir::StateDirBackend;

    const MESH: &str = "tracemesh";

    fn add_args(names: &[&str], disable: bool) -> AddArgs {
        AddArgs {
            namespaces: names.iter().map(|n| n.to_string()).collect(),
            mesh_name: MESH.into(),
            disable_sidecar_injection: disable,
        }
    }

    fn remove_args(name: &str) -> RemoveArgs {
        RemoveArgs {
            namespace: name.into(),
            mesh_name: MESH.into(),
        }
    }

    async fn run_to_string(
        command: Command,
        backend: &impl Backend,
    ) -> (anyhow::Result<()>, String) {
        let mut out = Vec::new();
        let result = run(command, backend, &mut out).await;
        (result, String::from_utf8(out).expect("utf-8"))
    }

    #[tokio::test]
    async fn kube_add_new_namespace_patches_label_and_annotation() {
        let (backend, mut handle) = mock_client();
        let server = tokio::spawn(async move {
            let (_, send) = expect(&mut handle, "GET", "/api/v1/namespaces/shop").await;
            reply(
                send,
                200,
                ns_object("shop", json!({"team": "a"}), json!({})),
            );
            let (body, send) = expect(
                &mut handle,
                "PATCH",
                "/api/v1/namespaces/shop?&fieldManager=mesh",
            )
            .await;
            assert_eq!(
                body,
                json!({"metadata": {
                    "labels": {"tracemesh.dev/monitored-by": "tracemesh"},
                    "annotations": {"tracemesh.dev/sidecar-injection": "enabled"}}})
            );
            reply(
                send,
                200,
                ns_object(
                    "shop",
                    json!({"team": "a", "tracemesh.dev/monitored-by": "tracemesh"}),
                    json!({"tracemesh.dev/sidecar-injection": "enabled"}),
                ),
            );
        });
        let (result, out) = run_to_string(Command::Add(add_args(&["shop"], false)), &backend).await;
        server.await.expect("server");
        result.expect("added");
        assert_eq!(
            out,
            "Namespace [shop] successfully added to mesh [tracemesh]\n"
        );
    }

    #[tokio::test]
    async fn kube_add_with_injection_disabled() {
        let (backend, mut handle) = mock_client();
        let server = tokio::spawn(async move {
            let (_, send) = expect(&mut handle, "GET", "/api/v1/namespaces/batch").await;
            reply(send, 200, ns_object("batch", json!({}), json!({})));
            let (body, send) = expect(
                &mut handle,
                "PATCH",
                "/api/v1/namespaces/batch?&fieldManager=mesh",
            )
            .await;
            assert_eq!(
                body["metadata"]["annotations"]["tracemesh.dev/sidecar-injection"],
                "disabled"
            );
            reply(send, 200, ns_object("batch", json!({}), json!({})));
        });
        let (result, _) = run_to_string(Command::Add(add_args(&["batch"], true)), &backend).await;
        server.await.expect("server");
        result.expect("added");
    }

    #[tokio::test]
    async fn kube_add_already_in_this_mesh_sends_no_patch() {
        let (backend, mut handle) = mock_client();
        let server = tokio::spawn(async move {
            let (_, send) = expect(&mut handle, "GET", "/api/v1/namespaces/shop").await;
            reply(
                send,
                200,
                ns_object(
                    "shop",
                    json!({"tracemesh.dev/monitored-by": "tracemesh"}),
                    json!({"tracemesh.dev/sidecar-injection": "enabled"}),
                ),
            );
        });
        let (result, out) = run_to_string(Command::Add(add_args(&["shop"], false)), &backend).await;
        server.await.expect("server");
        result.expect("no error");
        assert_eq!(
            out,
            "Namespace [shop] has already been added to mesh [tracemesh]\n"
        );
    }

    #[tokio::test]
    async fn kube_add_in_another_mesh_is_an_error_and_not_moved() {
        let (backend, mut handle) = mock_client();
        let server = tokio::spawn(async move {
            let (_, send) = expect(&mut handle, "GET", "/api/v1/namespaces/shop").await;
            reply(
                send,
                200,
                ns_object(
                    "shop",
                    json!({"tracemesh.dev/monitored-by": "other"}),
                    json!({}),
                ),
            );
        });
        let (result, out) = run_to_string(Command::Add(add_args(&["shop"], false)), &backend).await;
        server.await.expect("server");
        let err = result.expect_err("refused").to_string();
        assert!(err.contains("already belongs to mesh [other]"), "{err}");
        assert!(
            err.contains("mesh namespace remove shop --mesh-name other"),
            "{err}"
        );
        assert_eq!(out, "");
    }

    #[tokio::test]
    async fn kube_add_missing_namespace_is_an_error() {
        let (backend, mut handle) = mock_client();
        let server = tokio::spawn(async move {
            let (_, send) = expect(&mut handle, "GET", "/api/v1/namespaces/ghost").await;
            reply(send, 404, not_found("namespaces", "ghost"));
        });
        let (result, _) = run_to_string(Command::Add(add_args(&["ghost"], false)), &backend).await;
        server.await.expect("server");
        let err = format!("{:#}", result.expect_err("missing"));
        assert_eq!(
            err,
            "Could not add namespace [ghost] to mesh [tracemesh]: namespaces \"ghost\" not found"
        );
    }

    #[tokio::test]
    async fn kube_add_ignored_namespace_is_an_error() {
        let (backend, mut handle) = mock_client();
        let server = tokio::spawn(async move {
            let (_, send) = expect(&mut handle, "GET", "/api/v1/namespaces/legacy").await;
            reply(
                send,
                200,
                ns_object("legacy", json!({"tracemesh.dev/ignore": "true"}), json!({})),
            );
        });
        let (result, _) = run_to_string(Command::Add(add_args(&["legacy"], false)), &backend).await;
        server.await.expect("server");
        assert!(result
            .expect_err("ignored")
            .to_string()
            .contains("Cannot add ignored namespace [legacy]"));
    }

    #[tokio::test]
    async fn control_plane_namespace_is_never_enrolled_nor_requested() {
        let (backend, handle) = mock_client();
        let (result, out) = run_to_string(
            Command::Add(add_args(&["mesh-system", "kube-system"], false)),
            &backend,
        )
        .await;
        drop(handle);
        result.expect("skipped, like fsm");
        assert!(
            out.contains("Namespace [mesh-system] already has the mesh control plane installed")
        );
        assert!(out.contains("Namespace [kube-system] is a Kubernetes system namespace"));
    }

    #[tokio::test]
    async fn kube_remove_patches_nulls() {
        let (backend, mut handle) = mock_client();
        let server = tokio::spawn(async move {
            let (_, send) = expect(&mut handle, "GET", "/api/v1/namespaces/shop").await;
            reply(
                send,
                200,
                ns_object(
                    "shop",
                    json!({"tracemesh.dev/monitored-by": "tracemesh"}),
                    json!({}),
                ),
            );
            let (body, send) = expect(
                &mut handle,
                "PATCH",
                "/api/v1/namespaces/shop?&fieldManager=mesh",
            )
            .await;
            assert_eq!(
                body,
                json!({"metadata": {
                    "labels": {"tracemesh.dev/monitored-by": null},
                    "annotations": {"tracemesh.dev/sidecar-injection": null}}})
            );
            reply(send, 200, ns_object("shop", json!({}), json!({})));
        });
        let (result, out) = run_to_string(Command::Remove(remove_args("shop")), &backend).await;
        server.await.expect("server");
        result.expect("removed");
        assert_eq!(
            out,
            "Namespace [shop] successfully removed from mesh [tracemesh]\n"
        );
    }

    #[tokio::test]
    async fn kube_remove_from_the_wrong_mesh_is_an_error() {
        let (backend, mut handle) = mock_client();
        let server = tokio::spawn(async move {
            let (_, send) = expect(&mut handle, "GET", "/api/v1/namespaces/shop").await;
            reply(
                send,
                200,
                ns_object(
                    "shop",
                    json!({"tracemesh.dev/monitored-by": "other"}),
                    json!({}),
                ),
            );
        });
        let (result, _) = run_to_string(Command::Remove(remove_args("shop")), &backend).await;
        server.await.expect("server");
        assert_eq!(
            result.expect_err("wrong mesh").to_string(),
            "Namespace belongs to mesh [other], not mesh [tracemesh]. Please specify the correct mesh"
        );
    }

    #[tokio::test]
    async fn kube_remove_missing_namespace_is_an_error() {
        let (backend, mut handle) = mock_client();
        let server = tokio::spawn(async move {
            let (_, send) = expect(&mut handle, "GET", "/api/v1/namespaces/ghost").await;
            reply(send, 404, not_found("namespaces", "ghost"));
        });
        let (result, _) = run_to_string(Command::Remove(remove_args("ghost")), &backend).await;
        server.await.expect("server");
        assert_eq!(
            format!("{:#}", result.expect_err("missing")),
            "Could not get namespace [ghost]: namespaces \"ghost\" not found"
        );
    }

    #[tokio::test]
    async fn kube_list_selects_by_label() {
        let (backend, mut handle) = mock_client();
        let server = tokio::spawn(async move {
            let (_, send) = expect(
                &mut handle,
                "GET",
                "/api/v1/namespaces?&labelSelector=tracemesh.dev%2Fmonitored-by%3Dtracemesh",
            )
            .await;
            reply(
                send,
                200,
                json!({"apiVersion": "v1", "kind": "NamespaceList", "metadata": {"resourceVersion": "9"},
                "items": [
                    ns_object("shop", json!({"tracemesh.dev/monitored-by": "tracemesh"}),
                        json!({"tracemesh.dev/sidecar-injection": "enabled"})),
                    ns_object("batch", json!({"tracemesh.dev/monitored-by": "tracemesh"}),
                        json!({"tracemesh.dev/sidecar-injection": "disabled"})),
                ]}),
            );
        });
        let args = ListArgs {
            mesh_name: Some(MESH.into()),
            output: Format::Table,
        };
        let (result, out) = run_to_string(Command::List(args), &backend).await;
        server.await.expect("server");
        result.expect("listed");
        assert_eq!(
            out,
            "NAMESPACE   MESH        SIDECAR-INJECTION\n\
             batch       tracemesh   disabled\n\
             shop        tracemesh   enabled\n"
        );
    }

    #[tokio::test]
    async fn list_as_json_and_yaml_parses_and_an_empty_list_is_empty() {
        let dir = tempfile::tempdir().expect("tempdir");
        let backend = StateDirBackend::new(dir.path());
        let list = |output| {
            Command::List(ListArgs {
                mesh_name: None,
                output,
            })
        };
        let (_, out) = run_to_string(list(Format::Json), &backend).await;
        assert_eq!(
            serde_json::from_str::<Value>(&out).expect("json"),
            json!([])
        );
        run_to_string(Command::Add(add_args(&["shop"], false)), &backend)
            .await
            .0
            .expect("added");
        run_to_string(Command::Add(add_args(&["batch"], true)), &backend)
            .await
            .0
            .expect("added");
        let (_, out) = run_to_string(list(Format::Json), &backend).await;
        let expected = json!([
            {"name": "batch", "mesh": "tracemesh", "sidecarInjection": "disabled", "ignored": false},
            {"name": "shop", "mesh": "tracemesh", "sidecarInjection": "enabled", "ignored": false},
        ]);
        assert_eq!(serde_json::from_str::<Value>(&out).expect("json"), expected);
        let (_, out) = run_to_string(list(Format::Yaml), &backend).await;
        assert_eq!(serde_yaml::from_str::<Value>(&out).expect("yaml"), expected);
    }

    #[tokio::test]
    async fn kube_list_of_every_mesh_selects_on_the_label_key() {
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
                200,
                json!({"apiVersion": "v1", "kind": "NamespaceList", "metadata": {}, "items": []}),
            );
        });
        let (result, out) = run_to_string(
            Command::List(ListArgs {
                mesh_name: None,
                output: Format::Table,
            }),
            &backend,
        )
        .await;
        server.await.expect("server");
        result.expect("listed");
        assert_eq!(out, "No namespaces in any mesh\n");
    }

    #[tokio::test]
    async fn local_add_creates_then_reports_already_added_then_removes() {
        let dir = tempfile::tempdir().expect("tempdir");
        let backend = StateDirBackend::new(dir.path());
        let (result, out) =
            run_to_string(Command::Add(add_args(&["shop", "web"], false)), &backend).await;
        result.expect("added");
        assert_eq!(
            out,
            "Namespace [shop] successfully added to mesh [tracemesh]\n\
             Namespace [web] successfully added to mesh [tracemesh]\n"
        );
        let (_, out) = run_to_string(Command::Add(add_args(&["shop"], false)), &backend).await;
        assert_eq!(
            out,
            "Namespace [shop] has already been added to mesh [tracemesh]\n"
        );
        let (_, out) = run_to_string(Command::Add(add_args(&["shop"], true)), &backend).await;
        assert!(out.contains("sidecar injection is now disabled"), "{out}");
        let (_, out) = run_to_string(
            Command::List(ListArgs {
                mesh_name: None,
                output: Format::Table,
            }),
            &backend,
        )
        .await;
        assert!(out.contains("shop        tracemesh   disabled"), "{out}");
        let (result, out) = run_to_string(Command::Remove(remove_args("shop")), &backend).await;
        result.expect("removed");
        assert_eq!(
            out,
            "Namespace [shop] successfully removed from mesh [tracemesh]\n"
        );
        let (result, out) = run_to_string(Command::Remove(remove_args("shop")), &backend).await;
        result.expect("idempotent");
        assert_eq!(
            out,
            "Namespace [shop] already does not belong to any mesh\n"
        );
        let (_, out) = run_to_string(
            Command::List(ListArgs {
                mesh_name: Some("other".into()),
                output: Format::Table,
            }),
            &backend,
        )
        .await;
        assert_eq!(out, "No namespaces in mesh [other]\n");
    }

    #[test]
    fn mesh_names_are_label_values() {
        for good in ["tracemesh", "blue", "mesh_1.prod", "A", &"a".repeat(63)] {
            assert!(parse_mesh_name(good).is_ok(), "{good}");
        }
        for bad in ["", "-a", "a.", "a b", "a/b", "é", &"a".repeat(64)] {
            let err = parse_mesh_name(bad).expect_err(bad);
            assert!(err.contains("label value"), "{err}");
        }
    }

    #[test]
    fn namespace_names_follow_kubernetes() {
        assert!(is_dns1123_label("shop-2"));
        for bad in ["", "Shop", "-a", "a-", "a.b", "../x", &"a".repeat(64)] {
            assert!(!is_dns1123_label(bad), "{bad}");
        }
    }

    #[test]
    fn pod_security_levels_that_refuse_the_init_container_are_warned_about() {
        let ns = |level: Option<&str>| {
            let mut n = Namespace::default();
            if let Some(l) = level {
                n.metadata.labels =
                    Some([(POD_SECURITY_ENFORCE.to_string(), l.to_string())].into());
            }
            n
        };
        let table = [
            (None, "enabled", false),
            (Some("privileged"), "enabled", false),
            (Some("baseline"), "enabled", true),
            (Some("restricted"), "enabled", true),
            // No sidecar, no init container: nothing to refuse.
            (Some("restricted"), "disabled", false),
        ];
        for (level, injection, warned) in table {
            let w = pod_security_warning("shop", &ns(level), injection);
            assert_eq!(w.is_some(), warned, "{level:?} {injection}");
            if let (Some(w), Some(level)) = (w, level) {
                assert!(w.contains(&format!("[{level}]")), "{w}");
                assert!(w.contains("NET_ADMIN") && w.contains("privileged"), "{w}");
            }
        }
    }

    #[tokio::test]
    async fn kube_add_warns_when_the_namespace_enforces_restricted() {
        let (backend, mut handle) = mock_client();
        let server = tokio::spawn(async move {
            let labels = json!({"pod-security.kubernetes.io/enforce": "restricted"});
            let (_, send) = expect(&mut handle, "GET", "/api/v1/namespaces/shop").await;
            reply(send, 200, ns_object("shop", labels.clone(), json!({})));
            let (_, send) = expect(
                &mut handle,
                "PATCH",
                "/api/v1/namespaces/shop?&fieldManager=mesh",
            )
            .await;
            reply(send, 200, ns_object("shop", labels, json!({})));
        });
        let (result, out) = run_to_string(Command::Add(add_args(&["shop"], false)), &backend).await;
        server.await.expect("server");
        result.expect("added all the same");
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(
            lines[0],
            "Namespace [shop] successfully added to mesh [tracemesh]"
        );
        assert!(
            lines[1]
                .starts_with("Warning: namespace [shop] enforces Pod Security level [restricted]"),
            "{out}"
        );
    }
}
