//! `mesh run`: a workload on this machine, with a sidecar when its namespace is enrolled, reading
//! the namespace and the MeshConfig from the local backend's state dir (so `mesh config patch`
//! reaches the sidecar live, through its file watcher).

pub mod demo_app;
pub mod enrolment;
pub mod ports;
pub mod probe;
pub mod sidecar;

use std::path::PathBuf;
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use anyhow::{bail, Context as _};
use tokio::process::Command;

use crate::backend::state_dir::StateDirBackend;
use crate::Global;
use enrolment::Enrolment;
use sidecar::{find_proxy_bin, Sidecar, SidecarSpec};

/// Generous: a sidecar on a loaded machine still starts well within it.
pub const SIDECAR_READY_TIMEOUT: Duration = Duration::from_secs(30);

/// `mesh run` flags.
#[derive(Debug, Clone, clap::Args)]
#[command(after_help = "\
Ports: with a sidecar, the service is published on --port P by the sidecar, which forwards to
the app on 127.0.0.1:$PORT (--app-port, or a free port); the app's outbound HTTP goes through
the sidecar via HTTP_PROXY. Without a sidecar, the app gets PORT=P.

Examples:
  mesh --backend local namespace add shop
  mesh --backend local run --namespace shop --name web --port 8080 -- \\
      sh -c 'python3 -m http.server \"$PORT\" --bind 127.0.0.1'")]
pub struct Args {
    /// Namespace of the workload (enrolled namespaces get a sidecar)
    #[arg(long, short = 'n')]
    pub namespace: String,
    /// Service name; spans say <name>.<namespace>
    #[arg(long)]
    pub name: String,
    /// Port the service is reached on
    #[arg(long, value_name = "P")]
    pub port: Option<u16>,
    /// Port the app listens on behind its sidecar [default: a free port]
    #[arg(long, value_name = "Q")]
    pub app_port: Option<u16>,
    /// Intercept with iptables instead of explicit routes (needs a network namespace and root)
    #[arg(long)]
    pub transparent: bool,
    /// The workload's command
    #[arg(last = true, required = true, value_name = "CMD")]
    pub command: Vec<String>,
}

/// Runs the workload until it exits or Ctrl-C; exits with the workload's status.
pub async fn run(args: Args, global: &Global) -> anyhow::Result<()> {
    let name = args.name.clone();
    match run_workload(args, global).await? {
        Some(status) if !status.success() => {
            // The workload's own exit code is what a caller scripting `mesh run` wants to see.
            eprintln!("{name} exited with {status}");
            std::process::exit(status.code().unwrap_or(1));
        }
        _ => Ok(()),
    }
}

/// The workload's exit status, or `None` when a signal stopped it.
async fn run_workload(args: Args, global: &Global) -> anyhow::Result<Option<ExitStatus>> {
    if args.transparent {
        bail!(
            "--transparent needs the workload in its own network namespace with the rules of \
             `mesh-proxy init` (root); on one shared machine run it without --transparent \
             (explicit routes and HTTP_PROXY), or on Kubernetes where the injector sets it up"
        );
    }
    let backend = StateDirBackend::new(&global.state_dir);
    let namespace = backend
        .read_namespace(&args.namespace)
        .context("reading the namespace")?;
    let status = match enrolment::enrolment(&args.namespace, namespace.as_ref()) {
        Enrolment::Plain(reason) => {
            eprintln!("{reason}: running {} without a sidecar", args.name);
            let mut app = app_command(&args.command)?;
            if let Some(port) = args.port {
                app.env("PORT", port.to_string());
            }
            wait_app(app).await?
        }
        Enrolment::Sidecar { mesh } => {
            let mesh_config = ensure_mesh_config(&backend)?;
            let app_port = match (args.port, args.app_port) {
                (_, Some(q)) => Some(q),
                (Some(_), None) => Some(ports::free_port()?),
                (None, None) => None,
            };
            let spec = SidecarSpec {
                service: args.name.clone(),
                namespace: args.namespace.clone(),
                mesh_config,
                inbound: args.port.zip(app_port),
                log: None,
                proxy_bin: find_proxy_bin()?,
            };
            let mut sidecar = Sidecar::spawn(&spec)?;
            sidecar.wait_ready(SIDECAR_READY_TIMEOUT).await?;
            eprintln!(
                "{}.{} in mesh {mesh}: sidecar ready (outbound proxy {}, admin http://{}){}",
                args.name,
                args.namespace,
                sidecar.proxy_url(),
                sidecar.admin(),
                match (args.port, app_port) {
                    (Some(p), Some(q)) => format!(", serving :{p} -> app 127.0.0.1:{q}"),
                    _ => String::new(),
                }
            );
            let mut app = app_command(&args.command)?;
            for var in ["HTTP_PROXY", "http_proxy"] {
                app.env(var, sidecar.proxy_url());
            }
            if let Some(q) = app_port {
                app.env("PORT", q.to_string());
            }
            let status = wait_app(app).await;
            sidecar.stop().await;
            status?
        }
    };
    Ok(status)
}

fn app_command(command: &[String]) -> anyhow::Result<Command> {
    let Some((program, args)) = command.split_first() else {
        bail!("no command to run: give it after `--`");
    };
    let mut app = Command::new(program);
    app.args(args).stdin(Stdio::inherit()).kill_on_drop(true);
    Ok(app)
}

/// Waits for the app; `None` when Ctrl-C or SIGTERM stopped it first.
async fn wait_app(mut app: Command) -> anyhow::Result<Option<ExitStatus>> {
    let mut child = app.spawn().context("starting the workload")?;
    tokio::select! {
        status = child.wait() => Ok(Some(status?)),
        () = tracemesh_collector::cli::shutdown_signal() => {
            let _ = child.kill().await;
            Ok(None)
        }
    }
}

/// Sidecars watch `<state-dir>/mesh-config.yaml`; it must exist for the watcher to start, so a
/// state dir that never saw `mesh config patch` gets the default document.
fn ensure_mesh_config(backend: &StateDirBackend) -> anyhow::Result<PathBuf> {
    let path = backend.mesh_config_path();
    if !path.exists() {
        backend
            .patch_mesh_config_blocking(&serde_json::json!({}))
            .context("writing the default MeshConfig")?;
    }
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::namespace::{MONITORED_BY_LABEL, SIDECAR_INJECTION_ANNOTATION};
    use crate::BackendKind;

    fn args(namespace: &str, command: &[&str]) -> Args {
        Args {
            namespace: namespace.into(),
            name: "web".into(),
            port: Some(18080),
            app_port: None,
            transparent: false,
            command: command.iter().map(|s| s.to_string()).collect(),
        }
    }

    fn global(dir: &std::path::Path) -> Global {
        Global {
            backend: BackendKind::Local,
            state_dir: dir.to_path_buf(),
            kube: Default::default(),
        }
    }

    #[tokio::test]
    async fn a_workload_outside_the_mesh_runs_plain_on_its_port() {
        let dir = tempfile::tempdir().expect("tempdir");
        let check = r#"test "$PORT" = 18080"#;
        let status = run_workload(args("shop", &["sh", "-c", check]), &global(dir.path()))
            .await
            .expect("runs");
        assert!(status.expect("exited").success());
        let status = run_workload(args("shop", &["sh", "-c", "exit 3"]), &global(dir.path()))
            .await
            .expect("runs");
        assert_eq!(status.and_then(|s| s.code()), Some(3));
    }

    #[tokio::test]
    async fn an_enrolled_workload_starts_its_sidecar_first() {
        let dir = tempfile::tempdir().expect("tempdir");
        let backend = StateDirBackend::new(dir.path());
        backend
            .patch_namespace_blocking(
                "shop",
                &serde_json::json!({"metadata": {
                    "labels": {MONITORED_BY_LABEL: "tracemesh"},
                    "annotations": {SIDECAR_INJECTION_ANNOTATION: "enabled"},
                }}),
            )
            .expect("enrol");
        // A stand-in sidecar that records its arguments and fails, as a broken proxy would.
        let fake = dir.path().join("mesh-proxy");
        let recorded = dir.path().join("args");
        std::fs::write(
            &fake,
            format!(
                "#!/bin/sh\necho \"$@\" > {}\necho bad flag >&2\nexit 2\n",
                recorded.display()
            ),
        )
        .expect("fake proxy");
        std::process::Command::new("chmod")
            .args(["+x"])
            .arg(&fake)
            .status()
            .expect("chmod");
        let spec = SidecarSpec {
            service: "web".into(),
            namespace: "shop".into(),
            mesh_config: ensure_mesh_config(&backend).expect("default MeshConfig"),
            inbound: Some((18080, 18081)),
            log: Some(dir.path().join("proxy.log")),
            proxy_bin: fake,
        };
        assert!(spec.mesh_config.exists());
        let mut sidecar = Sidecar::spawn(&spec).expect("spawned");
        let err = sidecar
            .wait_ready(SIDECAR_READY_TIMEOUT)
            .await
            .expect_err("the stand-in never gets ready")
            .to_string();
        assert!(
            err.contains("exited during startup") && err.contains("bad flag"),
            "{err}"
        );
        let recorded = std::fs::read_to_string(&recorded).expect("recorded args");
        assert!(recorded.starts_with("run --mesh-config "), "{recorded}");
        assert!(
            recorded.contains("--service web --namespace shop"),
            "{recorded}"
        );
        assert!(
            recorded.contains("--inbound 0.0.0.0:18080=127.0.0.1:18081"),
            "{recorded}"
        );
    }

    #[tokio::test]
    async fn transparent_mode_is_refused_with_the_reason() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut a = args("shop", &["true"]);
        a.transparent = true;
        let err = run_workload(a, &global(dir.path()))
            .await
            .expect_err("refused");
        assert!(err.to_string().contains("network namespace"), "{err}");
    }
}
