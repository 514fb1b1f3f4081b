//! `mesh config get|patch|validate`: the MeshConfig, read and changed through the same rules on
//! every backend (a patch is merged and validated before anything is written).

use crate::backend::Backend;
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
    Validate(ValidateArgs),
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum Format {
    Yaml,
    Json,
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
            backend.patch_mesh_config(&patch).await?;
            writeln!(
                out,
                "meshconfig.config.tracemesh.dev/{} patched",
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
    Ok(match format {
        Format::Yaml => serde_yaml::to_string(config)?,
        Format::Json => serde_json::to_string_pretty(config)? + "\n",
    })
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
    match mesh_config::parse_strict(&text) {
        Ok(_) => {
            writeln!(out, "{name}: valid")?;
            Ok(())
        }
        Err(err) => {
            let problems = crate::backend::problem_lines(&err);
            Err(Invalid {
                file: name,
                problems,
            }
            .into())
        }
    }
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
    }

    #[tokio::test]
    async fn kube_config_patch_reports_like_kubectl() {
        let (backend, mut handle) = mock_client();
        let server = tokio::spawn(async move {
            let (_, send) = expect(&mut handle, "GET", MESH_CONFIG_PATH).await;
            reply(send, 200, mesh_config_object("7", json!({})));
            let (body, send) = expect(&mut handle, "PATCH", &format!("{MESH_CONFIG_PATH}?")).await;
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
