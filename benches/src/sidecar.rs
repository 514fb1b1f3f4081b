//! Running `mesh-proxy run` in explicit mode as a child process: distinct free ports for each
//! listener so several sidecars (and a developer's own) never clash, readiness from the admin
//! `/ready` endpoint, RSS from /proc, and a stop that always reaps the child.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::process::{Child, Command};

const READY_TIMEOUT: Duration = Duration::from_secs(15);
const STOP_TIMEOUT: Duration = Duration::from_secs(5);

/// A free loopback port (bound then released; the tiny race is acceptable for a bench).
pub fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

pub struct Spec<'a> {
    pub name: &'a str,
    pub proxy: &'a Path,
    pub mesh_config: &'a Path,
    /// `--inbound LISTEN=TARGET` routes.
    pub inbound: Vec<(SocketAddr, SocketAddr)>,
    /// `--outbound LISTEN=TARGET` static routes (a listener per destination, as Envoy's
    /// per-port outbound listeners).
    pub outbound: Vec<(SocketAddr, SocketAddr)>,
    pub threads: usize,
    pub log_dir: &'a Path,
}

pub struct Sidecar {
    pub name: String,
    child: Child,
    pub admin_port: u16,
    pub inbound_port: u16,
    pub outbound_port: u16,
    pub log: PathBuf,
}

impl Sidecar {
    pub async fn start(spec: Spec<'_>) -> anyhow::Result<Sidecar> {
        let admin_port = free_port()?;
        let inbound_port = free_port()?;
        let outbound_port = free_port()?;
        let log = spec.log_dir.join(format!("{}.log", spec.name));
        let log_file = std::fs::File::create(&log).with_context(|| log.display().to_string())?;
        let mut cmd = Command::new(spec.proxy);
        cmd.arg("run")
            .arg("--mesh-config")
            .arg(spec.mesh_config)
            .args([
                "--service",
                spec.name,
                "--namespace",
                "bench",
                "--pod-ip",
                "127.0.0.1",
            ])
            .args(["--admin-port", &admin_port.to_string()])
            .args(["--inbound-port", &inbound_port.to_string()])
            .args(["--outbound-port", &outbound_port.to_string()])
            .args(["--threads", &spec.threads.to_string()]);
        for (listen, target) in &spec.inbound {
            cmd.arg("--inbound").arg(format!("{listen}={target}"));
        }
        for (listen, target) in &spec.outbound {
            cmd.arg("--outbound").arg(format!("{listen}={target}"));
        }
        for var in [
            "MESH_CONFIG",
            "POD_NAME",
            "POD_NAMESPACE",
            "POD_IP",
            "SERVICE_NAME",
            "MESH_PROXY_THREADS",
        ] {
            cmd.env_remove(var);
        }
        // No endpoints to converge in a bench: stop (and flush spans) at once. Set through the
        // environment, which a baseline build without the setting ignores (a flag would be refused).
        cmd.env("TERMINATION_DRAIN_DURATION", "0s")
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(log_file))
            .kill_on_drop(true);
        let child = cmd
            .spawn()
            .with_context(|| format!("starting {}", spec.proxy.display()))?;
        let mut sidecar = Sidecar {
            name: spec.name.to_string(),
            child,
            admin_port,
            inbound_port,
            outbound_port,
            log,
        };
        sidecar.wait_ready().await?;
        Ok(sidecar)
    }

    async fn wait_ready(&mut self) -> anyhow::Result<()> {
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if let Some(status) = self.child.try_wait()? {
                bail!(
                    "{} exited with {status} before it was ready; see {}",
                    self.name,
                    self.log.display()
                );
            }
            if admin_get(self.admin_port, "/ready")
                .await
                .is_ok_and(|s| s == 200)
            {
                return Ok(());
            }
            if Instant::now() >= deadline {
                bail!(
                    "{} not ready after {READY_TIMEOUT:?}; see {}",
                    self.name,
                    self.log.display()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    /// Resident set size in KiB, from /proc/PID/status.
    pub fn rss_kib(&self) -> Option<u64> {
        rss_kib(self.pid()?)
    }

    /// Open file descriptors (entries of /proc/PID/fd): sockets, the log, epoll, pipes.
    pub fn fd_count(&self) -> Option<u64> {
        let fds = std::fs::read_dir(format!("/proc/{}/fd", self.pid()?)).ok()?;
        Some(fds.count() as u64)
    }

    pub fn outbound(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.outbound_port))
    }

    /// SIGTERM (graceful drain), then SIGKILL if it lingers; always reaps.
    pub async fn stop(mut self) {
        if let Some(pid) = self.child.id() {
            let _ = Command::new("kill")
                .args(["-TERM", &pid.to_string()])
                .status()
                .await;
            if tokio::time::timeout(STOP_TIMEOUT, self.child.wait())
                .await
                .is_ok()
            {
                return;
            }
        }
        let _ = self.child.kill().await;
    }
}

/// Status code of a GET on the admin port.
pub async fn admin_get(port: u16, path: &str) -> anyhow::Result<u16> {
    let mut tcp = tokio::time::timeout(
        Duration::from_secs(1),
        TcpStream::connect(("127.0.0.1", port)),
    )
    .await??;
    tcp.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await?;
    let mut buf = vec![0u8; 64];
    let n = tokio::time::timeout(Duration::from_secs(1), tcp.read(&mut buf)).await??;
    let line = String::from_utf8_lossy(&buf[..n]);
    let code = line
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .context("no status line")?;
    Ok(code)
}

/// Resident set size of process `pid` in KiB, from /proc/PID/status.
pub fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

/// The proxy binary named by a `--proxy` flag: as given when it exists (or is absolute), else
/// relative to the workspace root (`cargo run` may start a bench outside it).
pub fn locate_proxy(flag: &Path) -> PathBuf {
    if flag.is_absolute() || flag.exists() {
        return flag.to_path_buf();
    }
    let from_manifest = Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(flag);
    if from_manifest.exists() {
        from_manifest
    } else {
        flag.to_path_buf()
    }
}
