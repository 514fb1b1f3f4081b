//! `mesh-injector`: the sidecar injection webhook and the MeshConfig server, over HTTPS.

use std::io::IsTerminal;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, ValueEnum};
use mesh_injector::backend::{kube::KubeBackend, local::LocalBackend, Backend};
use mesh_injector::cabundle::CaBundle;
use mesh_injector::certs;
use mesh_injector::configserver::DEFAULT_MAX_LONG_POLLS;
use mesh_injector::identity;
use mesh_injector::inject::{default_proxy_image, Settings, SidecarMode};
use mesh_injector::secret::{CertStore, Issuer};
use mesh_injector::server::{self, App, Routes};
use mesh_injector::tls::{self, LiveCert};
use rustls::server::ResolvesServerCert;
use tokio::sync::watch;

#[derive(Clone, Copy, Debug, ValueEnum)]
enum BackendKind {
    Kube,
    Local,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

/// Sidecar injection webhook and MeshConfig server for tracemesh.
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    /// Address to serve HTTPS on.
    #[arg(long, default_value = "0.0.0.0:9090")]
    listen: SocketAddr,
    /// Address to serve Prometheus metrics on (plain HTTP: `/metrics`, `/readyz`, `/healthz`).
    #[arg(long, default_value = "0.0.0.0:9091")]
    metrics_listen: SocketAddr,
    /// PEM certificate chain (re-read when the file changes). Without it (kube backend) the
    /// injector makes and keeps its certificate in the Secret --tls-secret.
    #[arg(long, value_name = "FILE", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// PEM private key (re-read when the file changes).
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// The Secret (type kubernetes.io/tls) holding the webhook CA and serving certificate.
    #[arg(long, default_value = "mesh-injector-tls")]
    tls_secret: String,
    /// Read the Secret as cert-manager keeps it instead of creating and renewing it.
    #[arg(long)]
    cert_manager: bool,
    /// The MutatingWebhookConfiguration whose caBundle the injector keeps current.
    #[arg(long, default_value = "mesh-injector")]
    webhook_name: String,
    /// The injector's Service: the name its certificate is for.
    #[arg(long, default_value = "mesh-injector")]
    service: String,
    /// The injector's own namespace (of its Service and Secret).
    #[arg(long, env = "POD_NAMESPACE", default_value = mesh_config::DEFAULT_NAMESPACE)]
    namespace: String,
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
    /// With the Secret, its ca.crt is handed out instead.
    #[arg(long, value_name = "FILE")]
    config_ca: Option<PathBuf>,
    /// Rewrite HTTP/TCP app probes to the sidecar's probe ports 15901-15904.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    rewrite_probes: bool,
    /// Namespace of the MeshConfig resource (kube backend).
    #[arg(long, default_value = mesh_config::DEFAULT_NAMESPACE)]
    config_namespace: String,
    /// Most MeshConfig long-polls held at once; beyond it, 503 with Retry-After.
    #[arg(long, default_value_t = DEFAULT_MAX_LONG_POLLS)]
    max_long_polls: usize,
    /// Seconds between SIGTERM (readiness off, long-polls ended) and closing the listener:
    /// the time the Service's endpoints take to drop this pod.
    #[arg(long, default_value_t = 5)]
    shutdown_delay: u64,
    /// Seconds open connections get to finish after the listener closes.
    #[arg(long, default_value_t = 10)]
    drain_timeout: u64,
    /// Log lines as text (colour only on a terminal) or JSON objects.
    #[arg(long, env = "MESH_LOG_FORMAT", value_enum, default_value = "text")]
    log_format: LogFormat,
}

#[tokio::main]
async fn main() {
    let args = Args::parse();
    init_logging(args.log_format);
    // One line, whatever RUST_BACKTRACE says: the reason is what an operator needs.
    if let Err(e) = run(args).await {
        eprintln!("mesh-injector: {e:#}");
        std::process::exit(1);
    }
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(filter)
        // Escape codes only where a terminal renders them, never into a log collector.
        .with_ansi(std::io::stderr().is_terminal());
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().with_ansi(false).init(),
    }
}

/// Resolves on SIGTERM (the kubelet stopping the pod) or Ctrl-C.
async fn terminated() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for SIGTERM");
                std::future::pending::<()>().await
            }
        }
    };
    tokio::select! {
        _ = term => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}

async fn run(args: Args) -> anyhow::Result<()> {
    // One process-wide TLS provider, so kube's client and the server agree whatever features
    // other crates turn on in rustls.
    let _ = rustls::crypto::ring::default_provider().install_default();

    let client = match args.backend {
        BackendKind::Kube => Some(
            kube::Client::try_default()
                .await
                .context("connecting to the Kubernetes API (kubeconfig or in-cluster account)")?,
        ),
        BackendKind::Local => None,
    };
    let backend = match &client {
        Some(client) => Backend::Kube(KubeBackend::start(
            client.clone(),
            &args.config_namespace,
            mesh_config::DEFAULT_NAME,
        )),
        None => {
            let dir = match &args.state_dir {
                Some(d) => d.clone(),
                None => std::env::var_os("HOME")
                    .map(|h| PathBuf::from(h).join(".tracemesh"))
                    .context("no --state-dir and no $HOME")?,
            };
            Backend::Local(LocalBackend::start(dir).await?)
        }
    };

    let mut live = None;
    let resolver: Arc<dyn ResolvesServerCert> = match (&args.tls_cert, &args.tls_key, &client) {
        (Some(cert), Some(key), _) => Arc::new(tls::ReloadingResolver::new(cert, key)?),
        (_, _, Some(client)) => {
            let names = certs::service_dns_names(&args.service, &args.namespace);
            let issuer = if args.cert_manager {
                Issuer::CertManager
            } else {
                Issuer::Injector
            };
            // cert-manager's Certificate need only name the Service as the API server and
            // sidecars dial it; our own certificate covers every form.
            let checked = match issuer {
                Issuer::CertManager => names[..1].to_vec(),
                Issuer::Injector => names.clone(),
            };
            let store = CertStore::new(
                client.clone(),
                &args.namespace,
                &args.tls_secret,
                names,
                issuer,
            );
            let material = tokio::select! {
                m = identity::obtain(&store) => m,
                _ = terminated() => return Ok(()),
            };
            let cert = Arc::new(LiveCert::new(material, checked)?);
            let bundle = CaBundle::new(
                client.clone(),
                &args.webhook_name,
                &args.service,
                &args.namespace,
            );
            tokio::spawn(identity::keep(store, bundle, cert.clone()));
            live = Some(cert.clone());
            cert
        }
        _ => anyhow::bail!("--tls-cert and --tls-key are needed with --backend local"),
    };
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls::server_config(resolver)?));

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
    let metrics_listener = tokio::net::TcpListener::bind(args.metrics_listen)
        .await
        .with_context(|| format!("binding {}", args.metrics_listen))?;
    let bound =
        |l: &tokio::net::TcpListener| l.local_addr().map(|a| a.to_string()).unwrap_or_default();
    tracing::info!(listen = %bound(&listener), metrics = %bound(&metrics_listener), mesh = %settings.mesh_name, "mesh-injector serving");
    let mut app = App::new(backend, settings, args.max_long_polls);
    if let Some(cert) = live {
        app = app.with_live_cert(cert);
    }
    let app = Arc::new(app);

    let (stop, stopped) = watch::channel(false);
    tokio::spawn({
        let app = app.clone();
        let delay = Duration::from_secs(args.shutdown_delay);
        async move {
            terminated().await;
            tracing::info!(
                ?delay,
                "shutting down: not ready, long-polls ended; closing the listener after the delay"
            );
            app.begin_shutdown();
            tokio::time::sleep(delay).await;
            stop.send_replace(true);
        }
    });
    let stop_signal = |mut rx: watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };
    let drain = Duration::from_secs(args.drain_timeout);
    tokio::join!(
        server::serve(
            listener,
            Some(acceptor),
            Routes::Main,
            app.clone(),
            stop_signal(stopped.clone()),
            drain
        ),
        server::serve(
            metrics_listener,
            None,
            Routes::Metrics,
            app.clone(),
            stop_signal(stopped),
            drain
        ),
    );
    tracing::info!("stopped");
    Ok(())
}
