//! `mesh`: the tracemesh command line.
//!
//! Enrols namespaces, reads and patches the MeshConfig, prints the installation manifests, and
//! runs the mesh on one machine. The same commands work against a Kubernetes cluster
//! (`--backend kube`, the default, as FSM users expect) or against files under a state dir
//! (`--backend local`), with the same rules on both.
//!
//! Commands implemented in other modules plug in with this shape, which `main` dispatches to:
//!
//! ```text
//! cli/src/local/mod.rs   mesh run        pub struct Args (clap::Args)
//!                                        pub async fn run(args: Args, global: &Global) -> anyhow::Result<()>
//! cli/src/demo.rs        mesh demo       the same two items
//! tracemesh_collector    mesh collector  tracemesh_collector::cli::{Args, run(args)}
//! ```
//!
//! `Global` carries the resolved `--backend`, `--state-dir`, `--kubeconfig` and `--context`.

mod backend;
mod check;
mod config;
mod demo;
mod install;
mod local;
mod manifests;
mod namespace;
mod output;
mod uninstall;
mod version;

use backend::kube::{KubeBackend, KubeOptions};
use backend::state_dir::StateDirBackend;
use clap::{CommandFactory as _, Parser, Subcommand, ValueEnum};
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

/// The tracemesh service mesh: sidecars with tracing built in
#[derive(Debug, Parser)]
#[command(name = "mesh", version, propagate_version = true, max_term_width = 100)]
#[command(after_help = "\
Examples:
  mesh check --pre                           is the cluster ready for the mesh?
  mesh install | kubectl apply -f -          install (or upgrade) the control plane
  mesh check                                 is the installed mesh healthy?
  mesh namespace add shop                    enrol a namespace; new pods get sidecars
  mesh config patch -p '{\"spec\":{\"observability\":{\"tracing\":{\"enable\":true}}}}'
  mesh --backend local demo --requests 5     the whole mesh on this machine")]
struct Cli {
    #[command(flatten)]
    global: GlobalArgs,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, clap::Args)]
struct GlobalArgs {
    /// Where the mesh's objects live: the Kubernetes API (kubeconfig or in-cluster account) or
    /// files under the state dir
    #[arg(
        long,
        global = true,
        env = "MESH_BACKEND",
        value_enum,
        default_value = "kube"
    )]
    backend: BackendKind,
    /// State dir of the local backend [default: $HOME/.tracemesh]
    #[arg(long, global = true, env = "MESH_STATE_DIR", value_name = "DIR")]
    state_dir: Option<PathBuf>,
    /// Kubeconfig file of the kube backend [default: $KUBECONFIG, ~/.kube/config]
    #[arg(long, global = true, value_name = "FILE")]
    kubeconfig: Option<PathBuf>,
    /// Kubeconfig context of the kube backend [default: the current context]
    #[arg(long, global = true, value_name = "NAME")]
    context: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum BackendKind {
    Kube,
    Local,
}

/// The global options, resolved, as every command sees them.
#[derive(Debug, Clone)]
pub struct Global {
    pub backend: BackendKind,
    pub state_dir: PathBuf,
    pub kube: KubeOptions,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Add, remove and list the namespaces of a mesh
    #[command(subcommand, visible_alias = "ns")]
    Namespace(namespace::Command),
    /// Show, change and check the MeshConfig
    #[command(subcommand)]
    Config(config::Command),
    /// Print the manifests that install or upgrade the mesh (pipe to `kubectl apply -f -`)
    Install(install::Args),
    /// Print what removes the mesh (pipe to `kubectl delete -f -`)
    Uninstall(uninstall::Args),
    /// Print the client's version and the control plane's
    Version(version::Args),
    /// Check the cluster before an install (--pre), or the installed mesh
    Check(check::Args),
    /// Run a workload with a sidecar on this machine (local backend)
    Run(local::Args),
    /// Run the whole mesh on this machine: services, sidecars, collector, traces
    Demo(demo::Args),
    /// Development trace receiver that prints each trace as a tree
    Collector(tracemesh_collector::cli::Args),
    /// Print a shell completion script
    #[command(after_help = "\
Examples:
  mesh completions bash > /etc/bash_completion.d/mesh
  mesh completions zsh > \"${fpath[1]}/_mesh\"")]
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
}

impl GlobalArgs {
    fn resolve(self) -> anyhow::Result<Global> {
        let state_dir = match self.state_dir {
            Some(dir) => dir,
            None => std::env::var_os("HOME")
                .map(|home| PathBuf::from(home).join(".tracemesh"))
                .ok_or_else(|| {
                    anyhow::anyhow!(
                        "HOME is not set; give the state dir with --state-dir or MESH_STATE_DIR"
                    )
                })?,
        };
        Ok(Global {
            backend: self.backend,
            state_dir,
            kube: KubeOptions {
                kubeconfig: self.kubeconfig,
                context: self.context,
            },
        })
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            // `{:#}` prints the context chain on one line: "Could not add ...: namespaces "x" not found".
            eprintln!("Error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let global = cli.global.resolve()?;
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    match cli.command {
        Command::Namespace(command) => match global.backend {
            BackendKind::Kube => {
                namespace::run(
                    command,
                    &KubeBackend::connect(&global.kube).await?,
                    &mut out,
                )
                .await
            }
            BackendKind::Local => {
                namespace::run(command, &StateDirBackend::new(&global.state_dir), &mut out).await
            }
        },
        // Checking a file needs no cluster.
        Command::Config(command @ config::Command::Validate(_)) => {
            config::run(command, &StateDirBackend::new(&global.state_dir), &mut out).await
        }
        Command::Config(command) => match global.backend {
            BackendKind::Kube => {
                config::run(
                    command,
                    &KubeBackend::connect(&global.kube).await?,
                    &mut out,
                )
                .await
            }
            BackendKind::Local => {
                config::run(command, &StateDirBackend::new(&global.state_dir), &mut out).await
            }
        },
        Command::Install(args) => install::run(&args, &mut out),
        Command::Uninstall(args) => uninstall::run(&args, &mut out, &mut std::io::stderr()),
        Command::Version(args) => {
            let client = match global.backend {
                BackendKind::Kube => backend::kube::client(&global.kube)
                    .await
                    .map_err(|err| format!("{err:#}")),
                BackendKind::Local => Err("the local backend has no control plane to ask".into()),
            };
            version::run(&args, client, &mut out).await
        }
        Command::Check(args) => {
            if global.backend == BackendKind::Local {
                anyhow::bail!(
                    "mesh check checks a cluster; it has nothing to check with --backend local"
                );
            }
            let client = backend::kube::client(&global.kube).await?;
            check::run(&args, client, &mut out).await
        }
        Command::Run(args) => local::run(args, &global).await,
        Command::Demo(args) => demo::run(args, &global).await,
        Command::Collector(args) => tracemesh_collector::cli::run(args).await,
        Command::Completions { shell } => {
            let mut command = Cli::command();
            clap_complete::generate(shell, &mut command, "mesh", &mut out);
            out.flush()?;
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn command_tree_is_consistent() {
        Cli::command().debug_assert();
    }
}
