//! A pod: its own network namespace on the test's bridge, with the processes started in it.

use std::net::{Ipv4Addr, Ipv6Addr};
use std::process::Command;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use anyhow::{bail, Context as _};

use crate::net::{ipv6_of, kill_all_in, run, Net, NetInner};
use crate::process::Proc;
use crate::sidecar::{Sidecar, SidecarOpts};
use crate::{binaries, WAIT};

/// A pod namespace. Dropping it kills whatever still runs inside and deletes the namespace.
pub struct Pod {
    net: Arc<NetInner>,
    name: String,
    ns: String,
    ip: Ipv4Addr,
    ip6: Ipv6Addr,
}

/// What a finished command left behind.
#[derive(Debug, Clone)]
pub struct Output {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl Output {
    pub fn ok(&self) -> bool {
        self.code == Some(0)
    }

    /// The output, or an error naming the command and its stderr.
    pub fn check(self, what: &str) -> anyhow::Result<Output> {
        if !self.ok() {
            bail!(
                "{what} exited with {:?}\nstdout: {}\nstderr: {}",
                self.code,
                self.stdout,
                self.stderr
            );
        }
        Ok(self)
    }
}

impl Pod {
    /// Creates pod `name` (letters, digits, '-') on `net`, with `eth0` on the bridge (IPv4 and
    /// IPv6) and `lo` up.
    pub fn new(net: &Net, name: &str) -> anyhow::Result<Pod> {
        if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-') {
            bail!("pod name {name:?}: use letters, digits and '-'");
        }
        let inner = net.inner.clone();
        let host = inner.next_host.fetch_add(1, Ordering::SeqCst);
        if host > 254 {
            bail!("too many pods on one net");
        }
        let [a, b, c] = inner.subnet;
        let ip = Ipv4Addr::new(a, b, c, host as u8);
        let ns = format!("{}-{name}", inner.prefix);
        let inner_subnet = inner.subnet;
        run(&["ip", "netns", "add", &ns])?;
        // From here on, Drop deletes the namespace if a step fails.
        let pod = Pod {
            net: inner,
            name: name.to_string(),
            ns,
            ip,
            ip6: ipv6_of(inner_subnet, host as u8),
        };
        let node = pod.net.node_ns.as_str();
        let peer = format!("vp{host}");
        let cidr = format!("{ip}/24");
        let gw = Ipv4Addr::new(a, b, c, 1).to_string();
        let ns = pod.ns.as_str();
        run(&[
            "ip", "link", "add", "name", "eth0", "netns", ns, "type", "veth", "peer", "name",
            &peer, "netns", node,
        ])?;
        run(&[
            "ip", "-n", node, "link", "set", &peer, "master", "br0", "up",
        ])?;
        run(&["ip", "-n", ns, "link", "set", "lo", "up"])?;
        run(&["ip", "-n", ns, "addr", "add", &cidr, "dev", "eth0"])?;
        // nodad: the address is usable at once instead of after duplicate detection.
        let cidr6 = format!("{}/64", pod.ip6);
        run(&[
            "ip", "-n", ns, "addr", "add", &cidr6, "dev", "eth0", "nodad",
        ])?;
        run(&["ip", "-n", ns, "link", "set", "eth0", "up"])?;
        run(&["ip", "-n", ns, "route", "add", "default", "via", &gw])?;
        Ok(pod)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The network namespace's name (for `ip netns exec`).
    pub fn ns(&self) -> &str {
        &self.ns
    }

    /// The pod IP (on `eth0`).
    pub fn ip(&self) -> Ipv4Addr {
        self.ip
    }

    /// The pod's IPv6 address (on `eth0`, same /64 as the other pods of the net).
    pub fn ip6(&self) -> Ipv6Addr {
        self.ip6
    }

    /// A command that runs `args` inside the pod (as root), not started yet.
    pub fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.ns]).args(args);
        cmd
    }

    /// Runs `args` inside the pod as root and waits for it (killed after [`WAIT`]).
    pub fn exec(&self, args: &[&str]) -> anyhow::Result<Output> {
        self.exec_bounded(&[], args)
    }

    /// Runs `args` inside the pod as `uid` (and gid), e.g. 1500 to act as the proxy.
    pub fn exec_as(&self, uid: u32, args: &[&str]) -> anyhow::Result<Output> {
        let uid_flag = format!("--reuid={uid}");
        let gid_flag = format!("--regid={uid}");
        self.exec_bounded(&["setpriv", &uid_flag, &gid_flag, "--clear-groups"], args)
    }

    fn exec_bounded(&self, prefix: &[&str], args: &[&str]) -> anyhow::Result<Output> {
        let limit = WAIT.as_secs().to_string();
        let out = Command::new("timeout")
            .args(["-k", "5", &limit, "ip", "netns", "exec", &self.ns])
            .args(prefix)
            .args(args)
            .stdin(std::process::Stdio::null())
            .output()
            .with_context(|| format!("run {args:?} in pod {}", self.name))?;
        Ok(Output {
            code: out.status.code(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        })
    }

    /// Starts `args` in the background inside the pod; logs go to the net's directory.
    pub fn spawn(&self, name: &str, args: &[&str]) -> anyhow::Result<Proc> {
        let log = self.net.dir.path().join(format!("{}-{name}", self.name));
        Proc::start(&format!("{}/{name}", self.name), self.command(args), log)
    }

    /// Starts a `tm-support` server (e.g. `["http-echo", "--listen", "0.0.0.0:8080"]`) and waits
    /// until it listens.
    pub fn spawn_server(&self, args: &[&str]) -> anyhow::Result<Proc> {
        let support = binaries::support()?;
        let support = support.to_string_lossy();
        let mut full = vec![support.as_ref()];
        full.extend_from_slice(args);
        let name = args.first().copied().unwrap_or("server");
        let mut proc = self.spawn(name, &full)?;
        proc.wait_for_stdout("ready", WAIT)?;
        Ok(proc)
    }

    /// Runs a `tm-support` client (e.g. `["tcp-client", "10.0.0.2:6379", "ping"]`) as root.
    pub fn support(&self, args: &[&str]) -> anyhow::Result<Output> {
        let support = binaries::support()?;
        let support = support.to_string_lossy();
        let mut full = vec![support.as_ref()];
        full.extend_from_slice(args);
        self.exec(&full)
    }

    /// Runs `mesh-proxy init` with `extra` flags inside the pod; fails on a non-zero exit.
    pub fn init(&self, extra: &[&str]) -> anyhow::Result<Output> {
        let proxy = binaries::mesh_proxy()?;
        let proxy = proxy.to_string_lossy();
        let mut args = vec![proxy.as_ref(), "init"];
        args.extend_from_slice(extra);
        self.exec(&args)?.check("mesh-proxy init")
    }

    /// The pod's `nat` table as `iptables-save` prints it.
    pub fn nat_rules(&self) -> anyhow::Result<String> {
        Ok(self
            .exec(&["iptables-save", "-t", "nat"])?
            .check("iptables-save")?
            .stdout)
    }

    /// Starts `mesh-proxy run` inside the pod as UID 1500 and waits for its `/ready`.
    pub fn start_sidecar(&self, opts: SidecarOpts) -> anyhow::Result<Sidecar> {
        Sidecar::start(self, &self.net, opts)
    }
}

impl Drop for Pod {
    fn drop(&mut self) {
        kill_all_in(&self.ns);
        let _ = Command::new("ip").args(["netns", "del", &self.ns]).status();
    }
}
