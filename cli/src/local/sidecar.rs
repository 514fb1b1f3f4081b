//! A `mesh-proxy run` sidecar in explicit mode for a workload on this machine.
//!
//! Port scheme (every workload shares the host's network, so nothing can use the per-pod
//! defaults 15000/15001/15003):
//! - the service's public port `P` (`mesh run --port P`) is the sidecar's inbound route
//!   `0.0.0.0:P=127.0.0.1:Q`, where `Q` is the app's own port (`--app-port`, or a free one) that
//!   the app learns from `$PORT`;
//! - the sidecar's outbound (forward proxy), transparent inbound and admin listeners take free
//!   ports on 127.0.0.1; the app gets `HTTP_PROXY=http://127.0.0.1:<outbound>`.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{bail, Context as _};
use tokio::process::{Child, Command};

use super::{ports::free_port, probe};

/// Env var naming the `mesh-proxy` binary to use, ahead of the usual places.
pub const PROXY_BIN_ENV: &str = "MESH_PROXY_BIN";

/// What a sidecar is started with.
#[derive(Debug, Clone)]
pub struct SidecarSpec {
    pub service: String,
    pub namespace: String,
    pub mesh_config: PathBuf,
    /// `(public port, app port)`: published through the sidecar.
    pub inbound: Option<(u16, u16)>,
    /// Where its stderr goes; `None` inherits the terminal.
    pub log: Option<PathBuf>,
    pub proxy_bin: PathBuf,
}

/// A running sidecar; dropping it kills the process.
#[derive(Debug)]
pub struct Sidecar {
    child: Child,
    pub outbound_port: u16,
    pub inbound_port: u16,
    pub admin_port: u16,
    pub log: Option<PathBuf>,
}

impl Sidecar {
    pub fn spawn(spec: &SidecarSpec) -> anyhow::Result<Self> {
        let outbound_port = free_port()?;
        let inbound_port = free_port()?;
        let admin_port = free_port()?;
        let mut command = Command::new(&spec.proxy_bin);
        command
            .arg("run")
            .arg("--mesh-config")
            .arg(&spec.mesh_config)
            .args(["--service", &spec.service, "--namespace", &spec.namespace])
            // Loopback only: a forward proxy and an admin port open to the network would let
            // anyone on it use this machine as a relay.
            .args([
                "--bind",
                "127.0.0.1",
                "--pod-ip",
                "127.0.0.1",
                "--threads",
                "1",
            ])
            .args(["--outbound-port", &outbound_port.to_string()])
            .args(["--inbound-port", &inbound_port.to_string()])
            .args(["--admin-port", &admin_port.to_string()])
            // No endpoints to converge on one machine: stop (and flush spans) at once.
            .args(["--termination-drain-duration", "0s"])
            .stdin(Stdio::null())
            .kill_on_drop(true);
        if let Some((public, app)) = spec.inbound {
            command
                .arg("--inbound")
                .arg(format!("0.0.0.0:{public}=127.0.0.1:{app}"));
        }
        // The sidecar's own settings come from flags; a proxy variable inherited from the user's
        // shell must not redirect its export traffic.
        for var in [
            "HTTP_PROXY",
            "http_proxy",
            "HTTPS_PROXY",
            "https_proxy",
            "ALL_PROXY",
            "all_proxy",
        ] {
            command.env_remove(var);
        }
        if let Some(log) = &spec.log {
            let file = std::fs::File::create(log)
                .with_context(|| format!("creating the sidecar log {}", log.display()))?;
            command.stdout(file.try_clone()?).stderr(file);
        }
        let child = command
            .spawn()
            .with_context(|| format!("starting the sidecar {}", spec.proxy_bin.display()))?;
        Ok(Self {
            child,
            outbound_port,
            inbound_port,
            admin_port,
            log: spec.log.clone(),
        })
    }

    /// The forward proxy the app's `HTTP_PROXY` points to.
    pub fn proxy_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.outbound_port)
    }

    pub fn admin(&self) -> SocketAddr {
        SocketAddr::from((Ipv4Addr::LOCALHOST, self.admin_port))
    }

    /// Polls `/ready` on the admin port; fails early if the sidecar exits.
    pub async fn wait_ready(&mut self, timeout: Duration) -> anyhow::Result<()> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait()? {
                bail!(
                    "the sidecar exited during startup ({status}){}",
                    self.log_tail()
                );
            }
            if let Ok((200, _)) = probe::get(self.admin(), "/ready").await {
                return Ok(());
            }
            if tokio::time::Instant::now() >= deadline {
                bail!(
                    "the sidecar was not ready on http://{}/ready within {timeout:?}{}",
                    self.admin(),
                    self.log_tail()
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Asks the sidecar to stop (SIGTERM, so it flushes queued spans), then kills it.
    pub async fn stop(&mut self) {
        if let Some(pid) = self.child.id() {
            let _ = Command::new("kill")
                .args(["-TERM", &pid.to_string()])
                .status()
                .await;
            if tokio::time::timeout(Duration::from_secs(5), self.child.wait())
                .await
                .is_ok()
            {
                return;
            }
        }
        let _ = self.child.kill().await;
    }

    /// The last lines of the sidecar's log, for error messages.
    pub fn log_tail(&self) -> String {
        let Some(log) = &self.log else {
            return String::new();
        };
        let text = std::fs::read_to_string(log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        let tail = lines[lines.len().saturating_sub(15)..].join("\n");
        format!("\n--- {} (last lines) ---\n{tail}", log.display())
    }
}

/// Finds `mesh-proxy`: `$MESH_PROXY_BIN`, next to this executable (a cargo target dir or an
/// install prefix), then `$PATH`.
pub fn find_proxy_bin() -> anyhow::Result<PathBuf> {
    if let Some(path) = std::env::var_os(PROXY_BIN_ENV) {
        return Ok(PathBuf::from(path));
    }
    let beside = std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent().map(|dir| dir.join("mesh-proxy")));
    if let Some(path) = beside.filter(|p| is_file(p)) {
        return Ok(path);
    }
    if let Some(path) = std::env::var_os("PATH")
        .iter()
        .flat_map(std::env::split_paths)
        .map(|dir| dir.join("mesh-proxy"))
        .find(|p| is_file(p))
    {
        return Ok(path);
    }
    bail!(
        "mesh-proxy not found next to this executable nor on PATH; build it \
         (cargo build --release -p mesh-proxy) or set {PROXY_BIN_ENV}"
    )
}

fn is_file(path: &Path) -> bool {
    path.metadata().map(|m| m.is_file()).unwrap_or(false)
}
