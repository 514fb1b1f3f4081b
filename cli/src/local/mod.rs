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
    match status {
        Some(status) if status.success() => Ok(()),
        Some(status) => {
            // The workload's own exit code is what a caller scripting `mesh run` wants to see.
            eprintln!("{} exited with {status}", args.name);
            std::process::exit(status.code().unwrap_or(1));
        }
        None => Ok(()),
    }
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
