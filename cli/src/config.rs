//! `mesh config get|patch|validate`: the MeshConfig, read and changed through the same rules on
//! every backend (a patch is merged and validated before anything is written).

use crate::backend::Backend;
use crate::output::{self, Format};
use anyhow::{bail, Context as _};
use mesh_config::MeshConfig;
use std::io::{Read as _, Write};
use std::path::PathBuf;

#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Print the MeshConfig
    Get(GetArgs),
    /// Change the MeshConfig with a JSON merge patch (RFC 7386, as `kubectl patch --type=merge`)
    #[command(after_help = "\
Examples:
  # Send traces to a local Zipkin
  mesh config patch -p '{\"spec\":{\"observability\":{\"tracing\":{\"enable\":true,\"address\":\"127.0.0.1\",\"port\":9411}}}}'

  # Remove a field (back to its default)
  mesh config patch -p '{\"spec\":{\"sidecar\":{\"logLevel\":null}}}'")]
    Patch(PatchArgs),
    /// Check a MeshConfig file; unknown fields are errors (use - for stdin)
    #[command(after_help = "\
Examples:
  mesh config validate mesh-config.yaml
  kubectl get meshconfig -n mesh-system mesh-config -o yaml | mesh config validate -

A whole object as kubectl prints it is accepted: what the API server and the injector add
(status, managedFields, resourceVersion, uid, annotations...) is not part of the settings.
A List (kubectl get meshconfig -o yaml) has each item checked.")]
    Validate(ValidateArgs),
}

#[derive(Debug, clap::Args)]
pub struct GetArgs {
    /// Output format
    #[arg(short, long, value_enum, default_value = "yaml")]
    pub output: Format,
}

#[derive(Debug, clap::Args)]
pub struct PatchArgs {
    /// The patch, a JSON object
    #[arg(short, long, value_name = "JSON")]
    pub patch: String,
    /// Patch type; only `merge` (RFC 7386) is supported
    #[arg(long = "type", value_name = "TYPE", default_value = "merge")]
    pub patch_type: String,
}

#[derive(Debug, clap::Args)]
pub struct ValidateArgs {
    /// The MeshConfig document, YAML or JSON (- reads stdin)
    #[arg(value_name = "FILE")]
    pub file: PathBuf,
}

/// What `validate` found wrong, carried to `main` so it can print every problem and exit 1.
#[derive(Debug, thiserror::Error)]
#[error("{file}: not a valid MeshConfig:\n{problems}")]
pub struct Invalid {
    pub file: String,
    pub problems: String,
}

pub async fn run(
    command: Command,
    backend: &impl Backend,
    out: &mut impl Write,
) -> anyhow::Result<()> {
    match command {
        Command::Get(args) => {
            let config = backend.get_mesh_config().await?;
            out.write_all(render(&config, args.output)?.as_bytes())?;
            Ok(())
        }
        Command::Patch(args) => {
            let patch = parse_patch(&args)?;
            let patched = backend.patch_mesh_config(&patch).await?;
            // kubectl's words, so scripts that read `kubectl patch` read this too.
            let outcome = if patched.changed {
                "patched"
            } else {
                "patched (no change)"
            };
            writeln!(
                out,
                "meshconfig.config.tracemesh.dev/{} {outcome}",
                mesh_config::DEFAULT_NAME
            )?;
            Ok(())
        }
        Command::Validate(args) => validate(&args, out),
    }
}

fn parse_patch(args: &PatchArgs) -> anyhow::Result<serde_json::Value> {
    match args.patch_type.as_str() {
        "merge" => {}
        "json" | "strategic" => bail!(
            "--type {}: only merge patches (RFC 7386) are supported for the MeshConfig; \
             use --type merge",
            args.patch_type
        ),
        other => bail!("--type {other}: unknown patch type; use --type merge"),
    }
    let patch: serde_json::Value =
        serde_json::from_str(&args.patch).context("-p is not valid JSON")?;
    if !patch.is_object() {
        bail!("-p must be a JSON object, for example '{{\"spec\":{{\"sidecar\":{{\"logLevel\":\"debug\"}}}}}}'");
    }
    Ok(patch)
}

pub fn render(config: &MeshConfig, format: Format) -> anyhow::Result<String> {
    if let Some(text) = output::serialized(config, format)? {
        return Ok(text);
    }
    let mut rows = vec![["FIELD".to_string(), "VALUE".to_string()]];
    flatten(&config.to_json_value()["spec"], "spec", &mut rows);
    let mut table = Vec::new();
    output::write_table(&mut table, &rows)?;
    Ok(String::from_utf8(table)?)
}

/// One row per setting, by its field path (the path `mesh config patch` and the errors use);
/// lists on one line, comma-separated.
fn flatten(value: &serde_json::Value, path: &str, rows: &mut Vec<[String; 2]>) {
    use serde_json::Value;
    match value {
        Value::Object(map) => {
            for (key, item) in map {
                flatten(item, &format!("{path}.{key}"), rows);
            }
        }
        Value::Array(items) if items.is_empty() => rows.push([path.into(), "-".into()]),
        Value::Array(items) => {
            let cells: Vec<String> = items.iter().map(cell).collect();
            rows.push([path.into(), cells.join(",")]);
        }
        other => rows.push([path.into(), cell(other)]),
    }
}

fn cell(value: &serde_json::Value) -> String {
    match value {
        serde_json::Value::String(text) if text.is_empty() => "\"\"".into(),
        serde_json::Value::String(text) => text.clone(),
        other => other.to_string(),
    }
}

fn validate(args: &ValidateArgs, out: &mut impl Write) -> anyhow::Result<()> {
    let (name, text) = if args.file.as_os_str() == "-" {
        let mut text = String::new();
        std::io::stdin()
            .read_to_string(&mut text)
            .context("reading stdin")?;
        ("<stdin>".to_string(), text)
    } else {
        let name = args.file.display().to_string();
        let text =
            std::fs::read_to_string(&args.file).with_context(|| format!("reading {name}"))?;
        (name, text)
    };
    let documents = settings_documents(&text);
    if documents.is_empty() {
        bail!("{name}: the List holds no MeshConfig");
    }
    let mut problems = Vec::new();
    // Items of a List are checked as JSON, where the text's YAML 1.1 pitfalls (a bare `off`)
    // no longer show: look for them in the text itself.
    let misread = mesh_config::yaml11::bare_booleans(&text);
    if documents.iter().any(|(prefix, _)| prefix.is_some()) && !misread.is_empty() {
        let err = mesh_config::ConfigError::Invalid(misread);
        problems.push(crate::backend::problem_lines(&err));
    }
    for (prefix, document) in documents {
        if let Err(err) = mesh_config::parse_strict(&document) {
            let lines = crate::backend::problem_lines(&err);
            problems.push(match prefix {
                Some(prefix) => format!("  {prefix}:\n{}", indent(&lines)),
                None => lines,
            });
        }
    }
    if problems.is_empty() {
        writeln!(out, "{name}: valid")?;
        Ok(())
    } else {
        Err(Invalid {
            file: name,
            problems: problems.join("\n"),
        }
        .into())
    }
}

/// The document(s) to check: the text as it is (an object as kubectl prints it, with the
/// server's metadata and the injector's `status`, is a valid document), or each item of a
/// `List` (`kubectl get meshconfig -o yaml`), named `items[N]`. Text that does not parse goes
/// through as it is, for the document parser's own syntax message.
fn settings_documents(text: &str) -> Vec<(Option<String>, String)> {
    let Ok(mut value) = serde_yaml::from_str::<serde_json::Value>(text) else {
        return vec![(None, text.to_string())];
    };
    let is_list = value["kind"] == "List" && value["items"].is_array();
    if !is_list {
        return vec![(None, text.to_string())];
    }
    let items = value["items"]
        .as_array_mut()
        .map(std::mem::take)
        .unwrap_or_default();
    items
        .into_iter()
        .enumerate()
        .map(|(index, item)| (Some(format!("items[{index}]")), item.to_string()))
        .collect()
}

fn indent(lines: &str) -> String {
    lines
        .lines()
        .map(|line| format!("  {line}"))
        .collect::<Vec<_>>()
        .join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::kube::tests::{
        expect, mesh_config_object, mock_client, reply, MESH_CONFIG_PATH,
    };
    use serde_json::json;

    fn patch_args(patch: &str, patch_type: &str) -> PatchArgs {
        PatchArgs {
            patch: patch.into(),
            patch_type: patch_type.into(),
        }
    }

    #[test]
    fn only_merge_patches_are_accepted() {
        let err = parse_patch(&patch_args("{}", "json")).expect_err("json");
        assert!(err.to_string().contains("only merge patches"), "{err}");
        let err = parse_patch(&patch_args("{}", "bogus")).expect_err("bogus");
        assert!(err.to_string().contains("unknown patch type"), "{err}");
        assert!(parse_patch(&patch_args("[1]", "merge")).is_err());
        assert!(parse_patch(&patch_args("{nope", "merge")).is_err());
        assert_eq!(
            parse_patch(&patch_args("{\"a\":1}", "merge")).expect("ok"),
            json!({"a": 1})
        );
    }

    #[test]
    fn validate_lists_every_problem_with_its_path() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("bad.yaml");
        std::fs::write(
            &file,
            "apiVersion: config.tracemesh.dev/v1alpha1\nkind: MeshConfig\nspec:\n  observability:\n    tracing:\n      port: 70000\n  bogus: 1\n",
        )
        .expect("write");
        let mut out = Vec::new();
        let err = validate(&ValidateArgs { file }, &mut out).expect_err("invalid");
        let text = err.to_string();
        assert!(text.contains("spec.observability.tracing.port"), "{text}");
        assert!(text.contains("spec.bogus"), "{text}");
    }

    #[tokio::test]
    async fn kube_config_get_prints_the_resource_as_yaml_and_json() {
        let (backend, mut handle) = mock_client();
        let server = tokio::spawn(async move {
            for _ in 0..2 {
                let (_, send) = expect(&mut handle, "GET", MESH_CONFIG_PATH).await;
                reply(
                    send,
                    200,
                    mesh_config_object("7", json!({"sidecar": {"logLevel": "warn"}})),
                );
            }
        });
        let mut yaml = Vec::new();
        run(
            Command::Get(GetArgs {
                output: Format::Yaml,
            }),
            &backend,
            &mut yaml,
        )
        .await
        .expect("yaml");
        let mut json_out = Vec::new();
        run(
            Command::Get(GetArgs {
                output: Format::Json,
            }),
            &backend,
            &mut json_out,
        )
        .await
        .expect("json");
        server.await.expect("server");
        let yaml: serde_yaml::Value = serde_yaml::from_slice(&yaml).expect("yaml parses");
        assert_eq!(yaml["spec"]["sidecar"]["logLevel"], "warn");
        assert_eq!(yaml["kind"], "MeshConfig");
        let value: serde_json::Value = serde_json::from_slice(&json_out).expect("json parses");
        assert_eq!(
            value["metadata"],
            json!({"name": "mesh-config", "namespace": "mesh-system"})
        );
        let (backend, mut handle) = mock_client();
        let server = tokio::spawn(async move {
            let (_, send) = expect(&mut handle, "GET", MESH_CONFIG_PATH).await;
            reply(
                send,
                200,
                mesh_config_object("7", json!({"sidecar": {"logLevel": "warn"}})),
            );
        });
        let mut table = Vec::new();
        run(
            Command::Get(GetArgs {
                output: Format::Table,
            }),
            &backend,
            &mut table,
        )
        .await
        .expect("table");
        server.await.expect("server");
        let table = String::from_utf8(table).expect("utf-8");
        assert!(
            table
                .lines()
                .any(|l| l.split_whitespace().eq(["spec.sidecar.logLevel", "warn"])),
            "{table}"
        );
    }

    #[test]
    fn validate_accepts_the_object_as_kubectl_prints_it_and_each_item_of_a_list() {
        let object = r#"apiVersion: config.tracemesh.dev/v1alpha1
kind: MeshConfig
metadata:
  annotations:
    kubectl.kubernetes.io/last-applied-configuration: |
      {"apiVersion":"config.tracemesh.dev/v1alpha1","kind":"MeshConfig","metadata":{"name":"mesh-config","namespace":"mesh-system"},"spec":{}}
  creationTimestamp: "2026-12-01T10:00:00Z"
  generation: 2
  managedFields:
  - apiVersion: config.tracemesh.dev/v1alpha1
    fieldsType: FieldsV1
    fieldsV1: {f:spec: {f:observability: {}}}
    manager: mesh
    operation: Update
    time: "2026-12-01T10:05:00Z"
  name: mesh-config
  namespace: mesh-system
  resourceVersion: "81234"
  uid: 0b0c0d0e-1111-2222-3333-444455556666
spec:
  observability:
    tracing:
      enable: true
      address: zipkin.tracing
status:
  valid: true
  observedGeneration: 2
"#;
        let dir = tempfile::tempdir().expect("tempdir");
        let check = |text: &str| {
            let file = dir.path().join("object.yaml");
            std::fs::write(&file, text).expect("write");
            let mut out = Vec::new();
            validate(&ValidateArgs { file }, &mut out).map(|()| String::from_utf8(out).unwrap())
        };
        assert!(check(object).expect("valid").ends_with(": valid\n"));

        let indented: String = object.lines().map(|l| format!("  {l}\n")).collect();
        let list = format!(
            "apiVersion: v1\nkind: List\nmetadata:\n  resourceVersion: \"\"\nitems:\n- {}",
            indented.trim_start()
        );
        check(&list).expect("a List of one valid item");

        // The settings are still checked, inside a List too, and named by item.
        let bad = list.replace(
            "address: zipkin.tracing",
            "address: zipkin.tracing\n        bogus: 1",
        );
        let err = check(&bad).expect_err("unknown field").to_string();
        assert!(err.contains("items[0]"), "{err}");
        assert!(err.contains("spec.observability.tracing.bogus"), "{err}");
        let empty = check("apiVersion: v1\nkind: List\nitems: []\n").expect_err("empty");
        assert!(empty.to_string().contains("no MeshConfig"), "{empty}");

        // A bare `off` is `false` to kubectl: asked to be quoted, in an object and in a List.
        let off = "address: zipkin.tracing\n      stitching: off";
        for text in [
            object.replace("address: zipkin.tracing", off),
            list.replace("address: zipkin.tracing", &off.replace("\n", "\n  ")),
        ] {
            let err = check(&text).expect_err("bare off").to_string();
            assert!(err.contains("write 'off' in quotes"), "{err}");
            let quoted = text.replace("stitching: off", "stitching: 'off'");
            check(&quoted).expect("quoted off");
        }
    }

    /// `mesh config get -o yaml | kubectl apply -f -` keeps `stitching: off` a string: kubectl
    /// reads YAML 1.1, where a bare `off` is `false`.
    #[test]
    fn config_get_as_yaml_quotes_what_kubectl_would_read_as_a_boolean() {
        let config = mesh_config::merge_patch(
            &MeshConfig::default(),
            &json!({"spec": {"observability": {"tracing": {"stitching": "off"}}}}),
        )
        .expect("valid");
        let yaml = render(&config, Format::Yaml).expect("yaml");
        assert!(yaml.contains("stitching: 'off'"), "{yaml}");
        assert_eq!(mesh_config::parse_strict(&yaml).expect("valid"), config);
    }

    #[test]
    fn config_get_as_a_table_lists_every_setting_by_path() {
        let config = mesh_config::merge_patch(
            &MeshConfig::default(),
            &json!({"spec": {"traffic": {"opaquePorts": [25, 3306]}}}),
        )
        .expect("valid");
        let table = render(&config, Format::Table).expect("table");
        let mut lines = table.lines();
        let header: Vec<&str> = lines.next().expect("header").split_whitespace().collect();
        assert_eq!(header, ["FIELD", "VALUE"]);
        let rows: std::collections::BTreeMap<&str, &str> = lines
            .map(|line| {
                let (field, value) = line.split_once(' ').expect("two columns");
                (field, value.trim())
            })
            .collect();
        assert_eq!(rows["spec.observability.tracing.enable"], "false");
        assert_eq!(rows["spec.traffic.opaquePorts"], "25,3306");
        assert_eq!(rows["spec.traffic.inboundPortExclusionList"], "-");
        assert_eq!(rows["spec.sidecar.logLevel"], "info");
    }

    #[tokio::test]
    async fn kube_config_patch_that_changes_nothing_says_so_and_sends_nothing() {
        let (backend, mut handle) = mock_client();
        let server = tokio::spawn(async move {
            let (_, send) = expect(&mut handle, "GET", MESH_CONFIG_PATH).await;
            reply(
                send,
                200,
                mesh_config_object("7", json!({"sidecar": {"logLevel": "warn"}})),
            );
            // The mock ends here: a PATCH would find no server and fail the command.
        });
        let mut out = Vec::new();
        let args = patch_args(r#"{"spec":{"sidecar":{"logLevel":"warn"}}}"#, "merge");
        run(Command::Patch(args), &backend, &mut out)
            .await
            .expect("no error");
        server.await.expect("server");
        assert_eq!(
            String::from_utf8(out).expect("utf-8"),
            "meshconfig.config.tracemesh.dev/mesh-config patched (no change)\n"
        );
    }

    #[tokio::test]
    async fn local_config_patch_that_changes_nothing_leaves_the_file_alone() {
        let dir = tempfile::tempdir().expect("tempdir");
        let backend = crate::backend::state_dir::StateDirBackend::new(dir.path());
        let patch = || patch_args(r#"{"spec":{"sidecar":{"logLevel":"warn"}}}"#, "merge");
        let mut out = Vec::new();
        run(Command::Patch(patch()), &backend, &mut out)
            .await
            .expect("first");
        let file = backend.mesh_config_path();
        let written = std::fs::metadata(&file)
            .expect("written")
            .modified()
            .expect("mtime");
        let inode = std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(&file).unwrap());
        let mut again = Vec::new();
        run(Command::Patch(patch()), &backend, &mut again)
            .await
            .expect("second");
        assert_eq!(
            String::from_utf8(again).expect("utf-8"),
            "meshconfig.config.tracemesh.dev/mesh-config patched (no change)\n"
        );
        // Every write renames a new file into place: the same inode means no write.
        let after = std::fs::metadata(&file).expect("still there");
        assert_eq!(std::os::unix::fs::MetadataExt::ino(&after), inode);
        assert_eq!(after.modified().expect("mtime"), written);
    }

    #[tokio::test]
    async fn kube_config_patch_reports_like_kubectl() {
        let (backend, mut handle) = mock_client();
        let server = tokio::spawn(async move {
            let (_, send) = expect(&mut handle, "GET", MESH_CONFIG_PATH).await;
            reply(send, 200, mesh_config_object("7", json!({})));
            let (body, send) = expect(
                &mut handle,
                "PATCH",
                &format!("{MESH_CONFIG_PATH}?&fieldManager=mesh"),
            )
            .await;
            assert_eq!(
                body["spec"],
                json!({"observability": {"tracing": {"enable": true}}})
            );
            reply(
                send,
                200,
                mesh_config_object("8", json!({"observability": {"tracing": {"enable": true}}})),
            );
        });
        let mut out = Vec::new();
        let args = patch_args(
            r#"{"spec":{"observability":{"tracing":{"enable":true}}}}"#,
            "merge",
        );
        run(Command::Patch(args), &backend, &mut out)
            .await
            .expect("patched");
        server.await.expect("server");
        assert_eq!(
            String::from_utf8(out).expect("utf-8"),
            "meshconfig.config.tracemesh.dev/mesh-config patched\n"
        );
    }
}
