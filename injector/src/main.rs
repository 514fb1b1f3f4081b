//! `mesh-injector`: the sidecar injection webhook and the MeshConfig server, over HTTPS.
#![deny(rust_2018_idioms)]
#![forbid(unsafe_code)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use clap::{Parser, ValueEnum};
use mesh_injector::backend::{kube::KubeBackend, local::LocalBackend, Backend};
use mesh_injector::inject::{default_proxy_image, Settings, SidecarMode};
use mesh_injector::server::{self, App};
use mesh_injector::tls;

#[derive(Clone, Copy, Debug, ValueEnum)]
enum BackendKind {
    Kube,
    Local,
}

/// Sidecar injection webhook and MeshConfig server for tracemesh.
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    /// Address to serve HTTPS on.
    #[arg(long, default_value = "0.0.0.0:9090")]
    listen: SocketAddr,
    /// PEM certificate chain (re-read when the file changes).
    #[arg(long, value_name = "FILE")]
    tls_cert: PathBuf,
    /// PEM private key (re-read when the file changes).
    #[arg(long, value_name = "FILE")]
    tls_key: PathBuf,
    /// Namespaces labelled tracemesh.dev/monitored-by=<this> are enrolled.
    #[arg(long, default_value = "tracemesh")]
    mesh_name: String,
    /// Where namespaces and the MeshConfig come from.
    #[arg(long, env = "MESH_BACKEND", value_enum, default_value = "kube")]
    backend: BackendKind,
    /// State directory of the local backend [default: $HOME/.tracemesh].
    #[arg(long, env = "MESH_STATE_DIR", value_name = "DIR")]
    state_dir: Option<PathBuf>,
    /// Image of the injected mesh-init and mesh-proxy containers.
    #[arg(long, default_value_t = default_proxy_image())]
    proxy_image: String,
    /// `native` (init container with restartPolicy: Always, Kubernetes >= 1.29) or `container`
    /// (a regular container placed first, for older clusters). Pods can override it with the
    /// annotation tracemesh.dev/sidecar-mode.
    #[arg(long, value_enum, default_value = "native")]
    sidecar_mode: SidecarMode,
    /// The URL sidecars long-poll for their MeshConfig.
    #[arg(
        long,
        default_value = "https://mesh-injector.mesh-system.svc:9090/v1/meshconfig"
    )]
    config_url: String,
    /// CA certificate (PEM) that signed --tls-cert, handed to sidecars to verify --config-url.
    #[arg(long, value_name = "FILE")]
    config_ca: Option<PathBuf>,
    /// Rewrite HTTP/TCP app probes to the sidecar's probe ports 15901-15904.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    rewrite_probes: bool,
    /// Namespace of the MeshConfig resource (kube backend).
    #[arg(long, default_value = mesh_config::DEFAULT_NAMESPACE)]
    config_namespace: String,
}

#[tokio::main]
async fn main() {
    // One line, whatever RUST_BACKTRACE says: the reason is what an operator needs.
    if let Err(e) = run().await {
        eprintln!("mesh-injector: {e:#}");
        std::process::exit(1);
    }
}

async fn run() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let args = Args::parse();
    // One process-wide TLS provider, so kube's client and the server agree whatever features
    // other crates turn on in rustls.
    let _ = rustls::crypto::ring::default_provider().install_default();

    let resolver = Arc::new(tls::ReloadingResolver::new(&args.tls_cert, &args.tls_key)?);
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls::server_config(resolver)?));

    let backend = match args.backend {
        BackendKind::Kube => {
            let client = kube::Client::try_default()
                .await
                .context("connecting to the Kubernetes API (kubeconfig or in-cluster account)")?;
            Backend::Kube(KubeBackend::start(
                client,
                &args.config_namespace,
                mesh_config::DEFAULT_NAME,
            ))
        }
        BackendKind::Local => {
            let dir = match args.state_dir {
                Some(d) => d,
                None => std::env::var_os("HOME")
                    .map(|h| PathBuf::from(h).join(".tracemesh"))
                    .context("no --state-dir and no $HOME")?,
            };
            Backend::Local(LocalBackend::start(dir).await?)
        }
    };
    let config_ca_pem = match &args.config_ca {
        Some(p) => {
            Some(std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?)
        }
        None => None,
    };
    let settings = Settings {
        mesh_name: args.mesh_name,
        proxy_image: args.proxy_image,
        sidecar_mode: args.sidecar_mode,
        config_url: args.config_url,
        config_ca_pem,
        rewrite_probes: args.rewrite_probes,
    };
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("binding {}", args.listen))?;
    tracing::info!(listen = %args.listen, mesh = %settings.mesh_name, "mesh-injector serving");
    let app = Arc::new(App { backend, settings });
    server::serve(listener, acceptor, app, async {
        let _ = tokio::signal::ctrl_c().await;
    })
    .await;
    Ok(())
}
