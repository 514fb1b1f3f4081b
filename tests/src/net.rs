//! The "node": a namespace holding a bridge that every pod of one test plugs into.
//!
//! Each `Net` gets its own namespace names and its own /24, so tests run in parallel without
//! seeing each other; nothing is added to the host's namespace.

use std::net::{Ipv4Addr, Ipv6Addr};
use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

use anyhow::{bail, Context as _};

/// Nets made by this test process, for unique names and subnets.
static NETS: AtomicU32 = AtomicU32::new(0);

/// A test's private network. Clone-free: pods keep what they need alive.
pub struct Net {
    pub(crate) inner: Arc<NetInner>,
}

pub(crate) struct NetInner {
    /// Prefix of every namespace name of this net (`tm<pid>n<k>`).
    pub(crate) prefix: String,
    pub(crate) node_ns: String,
    /// First three octets of the /24.
    pub(crate) subnet: [u8; 3],
    pub(crate) next_host: AtomicU32,
    /// Logs and files of this net's processes (world-readable: sidecars run as UID 1500).
    pub(crate) dir: tempfile::TempDir,
}

impl Net {
    pub fn new() -> anyhow::Result<Net> {
        static SWEEP: std::sync::Once = std::sync::Once::new();
        SWEEP.call_once(sweep_stale);
        let k = NETS.fetch_add(1, Ordering::SeqCst);
        let pid = std::process::id();
        let prefix = format!("tm{pid}n{k}");
        let node_ns = format!("{prefix}-node");
        // 10.<100..199>.<0..255>.0/24: distinct per net of this process, spread by pid across
        // processes (namespaces isolate them anyway).
        let subnet = [
            10,
            100 + ((pid / 256 + k / 256) % 100) as u8,
            ((pid + k) % 256) as u8,
        ];
        let dir = tempfile::Builder::new()
            .prefix("tracemesh-e2e-")
            .tempdir()?;
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755))?;
        run(&["ip", "netns", "add", &node_ns])?;
        let inner = Arc::new(NetInner {
            prefix,
            node_ns,
            subnet,
            next_host: AtomicU32::new(2),
            dir,
        });
        let net = Net { inner };
        let ns = &net.inner.node_ns;
        let gw = format!("{}/24", net.gateway());
        run(&["ip", "-n", ns, "link", "set", "lo", "up"])?;
        run(&["ip", "-n", ns, "link", "add", "br0", "type", "bridge"])?;
        run(&["ip", "-n", ns, "addr", "add", &gw, "dev", "br0"])?;
        let gw6 = format!("{}/64", net.gateway6());
        run(&["ip", "-n", ns, "addr", "add", &gw6, "dev", "br0", "nodad"])?;
        run(&["ip", "-n", ns, "link", "set", "br0", "up"])?;
        Ok(net)
    }

    /// The bridge's address, the pods' default gateway.
    pub fn gateway(&self) -> Ipv4Addr {
        let [a, b, c] = self.inner.subnet;
        Ipv4Addr::new(a, b, c, 1)
    }

    /// The bridge's IPv6 address; pods get `fd00:10:<b>:<c>::<host>` in the same /64.
    pub fn gateway6(&self) -> Ipv6Addr {
        ipv6_of(self.inner.subnet, 1)
    }

    /// The node namespace's name (the bridge side).
    pub fn node_ns(&self) -> &str {
        &self.inner.node_ns
    }

    /// Directory for this net's logs and files.
    pub fn dir(&self) -> &Path {
        self.inner.dir.path()
    }
}

impl Drop for NetInner {
    fn drop(&mut self) {
        kill_all_in(&self.node_ns);
        let _ = Command::new("ip")
            .args(["netns", "del", &self.node_ns])
            .status();
    }
}

/// The IPv6 twin of `10.<b>.<c>.<host>` (the octets written as hex groups).
pub(crate) fn ipv6_of([_, b, c]: [u8; 3], host: u8) -> Ipv6Addr {
    Ipv6Addr::new(0xfd00, 0x10, b.into(), c.into(), 0, 0, 0, host.into())
}

/// Deletes namespaces left by test processes that were killed before their drops ran (names
/// carry the pid: `tm<pid>n<k>-...`), so repeated runs on one machine do not pile them up.
fn sweep_stale() {
    let Ok(out) = Command::new("ip").args(["netns", "list"]).output() else {
        return;
    };
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let Some(name) = line.split_whitespace().next() else {
            continue;
        };
        let Some(pid) = name
            .strip_prefix("tm")
            .and_then(|rest| rest.split_once('n'))
            .and_then(|(pid, _)| pid.parse::<u32>().ok())
        else {
            continue;
        };
        if !Path::new(&format!("/proc/{pid}")).exists() {
            kill_all_in(name);
            let _ = Command::new("ip").args(["netns", "del", name]).status();
        }
    }
}

/// Kills every process still running inside a namespace (best effort, used on teardown).
pub(crate) fn kill_all_in(ns: &str) {
    let Ok(out) = Command::new("ip").args(["netns", "pids", ns]).output() else {
        return;
    };
    for pid in String::from_utf8_lossy(&out.stdout).split_whitespace() {
        let _ = Command::new("kill").args(["-KILL", pid]).status();
    }
}

/// Runs a setup command, failing with its stderr.
pub(crate) fn run(args: &[&str]) -> anyhow::Result<()> {
    let (cmd, rest) = args.split_first().context("empty command")?;
    let out = Command::new(cmd)
        .args(rest)
        .output()
        .with_context(|| format!("run {args:?}"))?;
    if !out.status.success() {
        bail!(
            "{} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}
