//! `mesh-proxy init`: writes the pod's iptables rules so that the sidecar sees the pod's TCP traffic.
//!
//! The layout follows FSM/Istio: four chains of our own in the `nat` table, reached by one jump from
//! `PREROUTING` (inbound) and one from `OUTPUT` (outbound).
//!
//! ```text
//! PREROUTING -p tcp -> MESH_PROXY_INBOUND  -> (exclusions RETURN) -> MESH_PROXY_IN_REDIRECT -> :15003
//! OUTPUT     -p tcp -> MESH_PROXY_OUTBOUND -> (proxy UID, 127.0.0.1, exclusions RETURN) -> MESH_PROXY_REDIRECT -> :15001
//! ```
//!
//! An app connecting to its own pod IP leaves through `lo` and never reaches `PREROUTING`, so such
//! connections are sent through `MESH_PROXY_INBOUND` from the outbound chain: the call is then seen
//! by the inbound sidecar, as it would be from another pod. The proxy's own connections (UID
//! `--proxy-uid`) are never redirected, which is what keeps the inbound hop to the app (pod IP,
//! original port) from looping back into the proxy.
//!
//! Everything is applied with a single `iptables-restore --noflush`, so a pod never sees half a rule
//! set. Declaring our chains (`:CHAIN - [0:0]`) creates or flushes them, and the two jumps are added
//! only when `iptables-save` shows them absent, so running `init` twice changes nothing.

use std::fmt::{self, Write as _};
use std::io::{self, Write as _};
use std::net::IpAddr;
use std::process::{Command, Stdio};

/// Chains of our own in the `nat` table.
const INBOUND: &str = "MESH_PROXY_INBOUND";
const IN_REDIRECT: &str = "MESH_PROXY_IN_REDIRECT";
const OUTBOUND: &str = "MESH_PROXY_OUTBOUND";
const REDIRECT: &str = "MESH_PROXY_REDIRECT";
const CHAINS: [&str; 4] = [INBOUND, IN_REDIRECT, OUTBOUND, REDIRECT];

/// The two jumps from built-in chains, as `iptables-save` prints them (so presence can be checked
/// by comparing lines).
const JUMPS: [(&str, &str); 2] = [("PREROUTING", INBOUND), ("OUTPUT", OUTBOUND)];

/// Flags of `mesh-proxy init` (see CONTRACT.md).
#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    /// UID the sidecar runs as; its traffic is never redirected.
    #[arg(long, default_value_t = 1500)]
    pub proxy_uid: u32,
    /// Port of the sidecar's inbound listener.
    #[arg(long, default_value = "15003", value_parser = parse_port)]
    pub inbound_port: u16,
    /// Port of the sidecar's outbound listener.
    #[arg(long, default_value = "15001", value_parser = parse_port)]
    pub outbound_port: u16,
    /// Port of the sidecar's admin server (never redirected inbound).
    #[arg(long, default_value = "15000", value_parser = parse_port)]
    pub admin_port: u16,
    /// Rewritten probe ports (never redirected inbound), as FIRST-LAST.
    #[arg(long, default_value = "15901-15904", value_parser = parse_port_range)]
    pub probe_ports: PortRange,
    /// Inbound destination ports that bypass the sidecar.
    #[arg(long, value_delimiter = ',', value_parser = parse_port)]
    pub inbound_port_exclusions: Vec<u16>,
    /// Outbound destination ports that bypass the sidecar.
    #[arg(long, value_delimiter = ',', value_parser = parse_port)]
    pub outbound_port_exclusions: Vec<u16>,
    /// Outbound destination CIDRs (IPv4 or IPv6) that bypass the sidecar.
    #[arg(long, value_delimiter = ',', value_parser = parse_cidr)]
    pub outbound_ip_range_exclusions: Vec<Cidr>,
    /// Print the iptables-restore input instead of applying it.
    #[arg(long, conflicts_with = "cleanup")]
    pub dry_run: bool,
    /// Remove our jumps and chains.
    #[arg(long)]
    pub cleanup: bool,
}

/// An inclusive port range (a single port has `first == last`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PortRange {
    pub first: u16,
    pub last: u16,
}

impl fmt::Display for PortRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.first == self.last {
            write!(f, "{}", self.first)
        } else {
            // iptables spells a range with a colon.
            write!(f, "{}:{}", self.first, self.last)
        }
    }
}

/// An address block; a bare address means a single host.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    pub addr: IpAddr,
    pub prefix: u8,
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

/// Why a flag value was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ValueError {
    #[error("{0:?} is not a port (expected 1..=65535)")]
    Port(String),
    #[error("{0:?} is not a port range (expected FIRST-LAST with FIRST <= LAST)")]
    PortRange(String),
    #[error("{0:?} is not a CIDR (expected e.g. 10.0.0.0/8 or fd00::/8)")]
    Cidr(String),
}

/// Parses a port, refusing 0 (which iptables would read as "any").
pub fn parse_port(s: &str) -> Result<u16, ValueError> {
    match s.trim().parse::<u16>() {
        Ok(p) if p > 0 => Ok(p),
        _ => Err(ValueError::Port(s.to_string())),
    }
}

fn parse_port_range(s: &str) -> Result<PortRange, ValueError> {
    let bad = || ValueError::PortRange(s.to_string());
    let (a, b) = s.split_once(['-', ':']).unwrap_or((s, s));
    let first = parse_port(a).map_err(|_| bad())?;
    let last = parse_port(b).map_err(|_| bad())?;
    if first > last {
        return Err(bad());
    }
    Ok(PortRange { first, last })
}

/// Parses `ADDR/PREFIX` or a bare address.
pub fn parse_cidr(s: &str) -> Result<Cidr, ValueError> {
    let bad = || ValueError::Cidr(s.to_string());
    let t = s.trim();
    let (addr, prefix) = match t.split_once('/') {
        Some((a, p)) => (a, Some(p)),
        None => (t, None),
    };
    let addr: IpAddr = addr.parse().map_err(|_| bad())?;
    let max = if addr.is_ipv4() { 32 } else { 128 };
    let prefix = match prefix {
        None => max,
        Some(p) => match p.parse::<u8>() {
            Ok(p) if p <= max => p,
            _ => return Err(bad()),
        },
    };
    Ok(Cidr { addr, prefix })
}

/// The address family a restore input is written for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    V4,
    V6,
}

impl Family {
    fn restore(self) -> &'static str {
        match self {
            Family::V4 => "iptables-restore",
            Family::V6 => "ip6tables-restore",
        }
    }
    fn save(self) -> &'static str {
        match self {
            Family::V4 => "iptables-save",
            Family::V6 => "ip6tables-save",
        }
    }
    fn localhost(self) -> &'static str {
        match self {
            Family::V4 => "127.0.0.1/32",
            Family::V6 => "::1/128",
        }
    }
    fn loopback_net(self) -> &'static str {
        match self {
            Family::V4 => "127.0.0.0/8",
            Family::V6 => "::1/128",
        }
    }
    fn matches(self, addr: IpAddr) -> bool {
        matches!(
            (self, addr),
            (Family::V4, IpAddr::V4(_)) | (Family::V6, IpAddr::V6(_))
        )
    }
}

/// The jump rule from a built-in chain, exactly as `iptables-save` prints it.
fn jump_rule(from: &str, to: &str) -> String {
    format!("-A {from} -p tcp -j {to}")
}

/// How many times each of our jumps is present in an `iptables-save -t nat` dump.
fn count_jumps(saved: &str) -> [usize; 2] {
    let mut counts = [0; 2];
    for line in saved.lines().map(str::trim) {
        for (i, (from, to)) in JUMPS.iter().enumerate() {
            if line == jump_rule(from, to) {
                counts[i] += 1;
            }
        }
    }
    counts
}

/// Builds the restore input that installs the rules. `saved` is the current `nat` dump (None when
/// unknown, as in `--dry-run`: the jumps are then written as if absent). Extra copies of a jump left
/// by older tools are removed so that exactly one remains.
pub fn install_input(args: &Args, family: Family, saved: Option<&str>) -> String {
    let counts = saved.map(count_jumps).unwrap_or([0, 0]);
    let mut out = String::new();
    // Writing to a String cannot fail.
    let mut w = |line: String| {
        let _ = writeln!(out, "{line}");
    };
    w("*nat".into());
    for chain in CHAINS {
        // Creates the chain, or flushes it when it exists: our chains are rebuilt from scratch.
        w(format!(":{chain} - [0:0]"));
    }

    w(format!(
        "-A {IN_REDIRECT} -p tcp -j REDIRECT --to-ports {}",
        args.inbound_port
    ));
    // The admin and probe ports reach the sidecar itself, never the app. The outbound port is
    // not among them: a peer outside the pod dialling it is redirected like any inbound
    // connection, and the inbound listener refuses a destination that is the proxy itself, so
    // the forward proxy is never open to the cluster.
    let mut inbound_skip: Vec<PortRange> = [args.admin_port, args.inbound_port]
        .into_iter()
        .chain(args.inbound_port_exclusions.iter().copied())
        .map(|p| PortRange { first: p, last: p })
        .collect();
    inbound_skip.push(args.probe_ports);
    dedup_keep_order(&mut inbound_skip);
    for ports in &inbound_skip {
        w(format!("-A {INBOUND} -p tcp --dport {ports} -j RETURN"));
    }
    w(format!("-A {INBOUND} -p tcp -j {IN_REDIRECT}"));

    w(format!(
        "-A {REDIRECT} -p tcp -j REDIRECT --to-ports {}",
        args.outbound_port
    ));
    // The sidecar's own connections (including its hop to the app) must not loop back into it.
    w(format!(
        "-A {OUTBOUND} -m owner --uid-owner {} -j RETURN",
        args.proxy_uid
    ));
    w(format!("-A {OUTBOUND} -d {} -j RETURN", family.localhost()));
    // The app using its own sidecar as a forward proxy at the pod IP (`HTTP_PROXY=POD_IP:15001`)
    // reaches the outbound listener directly, which serves the pod's own addresses.
    w(format!(
        "-A {OUTBOUND} -o lo -p tcp --dport {} -j RETURN",
        args.outbound_port
    ));
    // App -> own pod IP leaves through lo and skips PREROUTING: hand it to the inbound chain so the
    // inbound sidecar (and its exclusions) still apply; anything else on lo stays local.
    w(format!(
        "-A {OUTBOUND} ! -d {} -o lo -j {INBOUND}",
        family.loopback_net()
    ));
    w(format!("-A {OUTBOUND} -o lo -j RETURN"));
    let mut outbound_skip = args.outbound_port_exclusions.clone();
    dedup_keep_order(&mut outbound_skip);
    for port in outbound_skip {
        w(format!("-A {OUTBOUND} -p tcp --dport {port} -j RETURN"));
    }
    let mut cidrs: Vec<Cidr> = args
        .outbound_ip_range_exclusions
        .iter()
        .copied()
        .filter(|c| family.matches(c.addr))
        .collect();
    dedup_keep_order(&mut cidrs);
    for cidr in cidrs {
        w(format!("-A {OUTBOUND} -d {cidr} -j RETURN"));
    }
    w(format!("-A {OUTBOUND} -p tcp -j {REDIRECT}"));

    for (i, (from, to)) in JUMPS.iter().enumerate() {
        match counts[i] {
            0 => w(jump_rule(from, to)),
            n => {
                for _ in 1..n {
                    w(jump_rule(from, to).replacen("-A", "-D", 1));
                }
            }
        }
    }
    w("COMMIT".into());
    out
}

/// Builds the restore input that removes our jumps and chains; `saved` is the current `nat` dump.
/// Returns None when there is nothing of ours to remove.
pub fn cleanup_input(saved: &str) -> Option<String> {
    let counts = count_jumps(saved);
    let present: Vec<&str> = CHAINS
        .into_iter()
        .filter(|c| {
            saved
                .lines()
                .any(|l| l.trim().starts_with(&format!(":{c} ")))
        })
        .collect();
    if counts == [0, 0] && present.is_empty() {
        return None;
    }
    let mut out = String::from("*nat\n");
    for (i, (from, to)) in JUMPS.iter().enumerate() {
        for _ in 0..counts[i] {
            let _ = writeln!(out, "{}", jump_rule(from, to).replacen("-A", "-D", 1));
        }
    }
    // Flush all before deleting any: our chains refer to each other.
    for chain in &present {
        let _ = writeln!(out, ":{chain} - [0:0]");
    }
    for chain in &present {
        let _ = writeln!(out, "-X {chain}");
    }
    out.push_str("COMMIT\n");
    Some(out)
}

fn dedup_keep_order<T: PartialEq + Copy>(v: &mut Vec<T>) {
    let mut seen = Vec::with_capacity(v.len());
    v.retain(|x| {
        if seen.contains(x) {
            false
        } else {
            seen.push(*x);
            true
        }
    });
}

/// What went wrong talking to iptables, in one line a pod's log can show.
#[derive(Debug, thiserror::Error)]
pub enum InitError {
    #[error("{0} not found: install the iptables package")]
    Missing(&'static str),
    #[error("{0}: permission denied (needs root or CAP_NET_ADMIN in the pod's network namespace)")]
    PermissionDenied(&'static str),
    #[error("{tool} failed: {message}")]
    Failed { tool: &'static str, message: String },
}

fn spawn_error(tool: &'static str, e: io::Error) -> InitError {
    match e.kind() {
        io::ErrorKind::NotFound => InitError::Missing(tool),
        io::ErrorKind::PermissionDenied => InitError::PermissionDenied(tool),
        _ => InitError::Failed {
            tool,
            message: e.to_string(),
        },
    }
}

fn status_error(tool: &'static str, stderr: &[u8]) -> InitError {
    let text = String::from_utf8_lossy(stderr);
    if text.contains("Permission denied") || text.contains("Operation not permitted") {
        return InitError::PermissionDenied(tool);
    }
    let message = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join("; ");
    InitError::Failed { tool, message }
}

/// Reads the current `nat` table.
fn save(family: Family) -> Result<String, InitError> {
    let tool = family.save();
    let out = Command::new(tool)
        .args(["-t", "nat"])
        .stdin(Stdio::null())
        .output()
        .map_err(|e| spawn_error(tool, e))?;
    if !out.status.success() {
        return Err(status_error(tool, &out.stderr));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Applies a restore input with one `iptables-restore --noflush`.
fn restore(family: Family, input: &str) -> Result<(), InitError> {
    let tool = family.restore();
    let mut child = Command::new(tool)
        .arg("--noflush")
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| spawn_error(tool, e))?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(input.as_bytes())
            .map_err(|e| spawn_error(tool, e))?;
    }
    let out = child.wait_with_output().map_err(|e| spawn_error(tool, e))?;
    if !out.status.success() {
        return Err(status_error(tool, &out.stderr));
    }
    Ok(())
}

fn tool_present(tool: &str) -> bool {
    Command::new(tool)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok()
}

pub fn run(args: Args) -> anyhow::Result<()> {
    if args.dry_run {
        for family in [Family::V4, Family::V6] {
            println!("# {} --noflush", family.restore());
            print!("{}", install_input(&args, family, None));
        }
        return Ok(());
    }
    apply(&args, Family::V4)?;
    // IPv6 is optional: a node or image without ip6tables still gets a working IPv4 pod.
    if !tool_present(Family::V6.restore()) {
        eprintln!("mesh-proxy init: ip6tables-restore not found, IPv6 rules skipped");
        return Ok(());
    }
    if let Err(e) = apply(&args, Family::V6) {
        match e {
            InitError::Failed { .. } => {
                eprintln!("mesh-proxy init: IPv6 rules skipped ({e})")
            }
            other => return Err(other.into()),
        }
    }
    Ok(())
}

fn apply(args: &Args, family: Family) -> Result<(), InitError> {
    let saved = save(family)?;
    if args.cleanup {
        match cleanup_input(&saved) {
            Some(input) => restore(family, &input),
            None => Ok(()),
        }
    } else {
        restore(family, &install_input(args, family, Some(&saved)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: Args,
    }

    fn args(flags: &[&str]) -> Args {
        let mut argv = vec!["init"];
        argv.extend_from_slice(flags);
        Cli::try_parse_from(argv).expect("valid flags").args
    }

    fn parse_err(flags: &[&str]) -> String {
        let mut argv = vec!["init"];
        argv.extend_from_slice(flags);
        match Cli::try_parse_from(argv) {
            Ok(_) => panic!("flags {flags:?} were accepted"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn defaults_redirect_to_the_contract_ports() {
        let text = install_input(&args(&[]), Family::V4, None);
        assert!(text.starts_with("*nat\n"));
        assert!(text.ends_with("COMMIT\n"));
        assert!(text.contains("-A MESH_PROXY_IN_REDIRECT -p tcp -j REDIRECT --to-ports 15003\n"));
        assert!(text.contains("-A MESH_PROXY_REDIRECT -p tcp -j REDIRECT --to-ports 15001\n"));
        assert!(text.contains("-A MESH_PROXY_OUTBOUND -m owner --uid-owner 1500 -j RETURN\n"));
        assert!(text.contains("-A MESH_PROXY_OUTBOUND -d 127.0.0.1/32 -j RETURN\n"));
        assert!(text.contains("-A MESH_PROXY_INBOUND -p tcp --dport 15000 -j RETURN\n"));
        assert!(text.contains("-A MESH_PROXY_INBOUND -p tcp --dport 15901:15904 -j RETURN\n"));
        assert!(text.contains("-A PREROUTING -p tcp -j MESH_PROXY_INBOUND\n"));
        assert!(text.contains("-A OUTPUT -p tcp -j MESH_PROXY_OUTBOUND\n"));
        for chain in CHAINS {
            assert!(
                text.contains(&format!(":{chain} - [0:0]\n")),
                "{chain} declared"
            );
        }
    }

    #[test]
    fn outbound_port_is_redirected_inbound_but_open_to_the_pod_itself() {
        let text = install_input(&args(&[]), Family::V4, None);
        // A peer outside the pod reaching 15001 goes to the inbound listener, which refuses it.
        assert!(!text.contains("-A MESH_PROXY_INBOUND -p tcp --dport 15001 -j RETURN"));
        assert!(text.contains("-A MESH_PROXY_INBOUND -p tcp --dport 15003 -j RETURN\n"));
        // The app's own `POD_IP:15001` stays on lo, ahead of the hand-over to the inbound chain.
        let outbound: Vec<&str> = text
            .lines()
            .filter(|l| l.starts_with("-A MESH_PROXY_OUTBOUND"))
            .collect();
        let own = outbound
            .iter()
            .position(|l| *l == "-A MESH_PROXY_OUTBOUND -o lo -p tcp --dport 15001 -j RETURN");
        let handover = outbound
            .iter()
            .position(|l| l.ends_with("-o lo -j MESH_PROXY_INBOUND"));
        assert!(
            matches!((own, handover), (Some(a), Some(b)) if a < b),
            "{text}"
        );
    }

    #[test]
    fn proxy_uid_return_comes_before_any_redirect() {
        let text = install_input(&args(&["--proxy-uid", "4242"]), Family::V4, None);
        let outbound: Vec<&str> = text
            .lines()
            .filter(|l| l.starts_with("-A MESH_PROXY_OUTBOUND"))
            .collect();
        assert_eq!(
            outbound.first().copied(),
            Some("-A MESH_PROXY_OUTBOUND -m owner --uid-owner 4242 -j RETURN")
        );
        assert_eq!(
            outbound.last().copied(),
            Some("-A MESH_PROXY_OUTBOUND -p tcp -j MESH_PROXY_REDIRECT")
        );
        // App -> own pod IP over lo goes through the inbound chain, the rest of lo stays local.
        let lo = outbound
            .iter()
            .position(|l| l.contains("! -d 127.0.0.0/8 -o lo -j MESH_PROXY_INBOUND"));
        let lo_return = outbound.iter().position(|l| l.ends_with("-o lo -j RETURN"));
        assert!(matches!((lo, lo_return), (Some(a), Some(b)) if a + 1 == b));
    }

    #[test]
    fn exclusions_and_ports_come_from_flags() {
        let a = args(&[
            "--inbound-port",
            "16003",
            "--outbound-port",
            "16001",
            "--inbound-port-exclusions",
            "8080,9090",
            "--outbound-port-exclusions=3306",
            "--outbound-port-exclusions=5432,3306",
            "--outbound-ip-range-exclusions",
            "10.96.0.0/12,fd00::/8,192.168.1.1",
        ]);
        let v4 = install_input(&a, Family::V4, None);
        assert!(v4.contains("REDIRECT --to-ports 16003\n"));
        assert!(v4.contains("REDIRECT --to-ports 16001\n"));
        assert!(v4.contains("-A MESH_PROXY_INBOUND -p tcp --dport 8080 -j RETURN\n"));
        assert!(v4.contains("-A MESH_PROXY_INBOUND -p tcp --dport 9090 -j RETURN\n"));
        assert!(v4.contains("-A MESH_PROXY_OUTBOUND -p tcp --dport 5432 -j RETURN\n"));
        assert_eq!(
            v4.matches("--dport 3306 -j RETURN").count(),
            1,
            "deduplicated"
        );
        assert!(v4.contains("-A MESH_PROXY_OUTBOUND -d 10.96.0.0/12 -j RETURN\n"));
        assert!(v4.contains("-A MESH_PROXY_OUTBOUND -d 192.168.1.1/32 -j RETURN\n"));
        assert!(!v4.contains("fd00::/8"), "IPv6 CIDRs stay out of iptables");
        let v6 = install_input(&a, Family::V6, None);
        assert!(v6.contains("-A MESH_PROXY_OUTBOUND -d fd00::/8 -j RETURN\n"));
        assert!(v6.contains("-A MESH_PROXY_OUTBOUND -d ::1/128 -j RETURN\n"));
        assert!(!v6.contains("10.96.0.0/12"));
        // Exclusions are checked before the catch-all redirect.
        let excl = v4.find("--dport 5432").unwrap_or(usize::MAX);
        let redirect = v4.find("-j MESH_PROXY_REDIRECT").unwrap_or(0);
        assert!(excl < redirect);
    }

    #[test]
    fn jumps_are_added_only_when_absent() {
        let a = args(&[]);
        let first = install_input(
            &a,
            Family::V4,
            Some("*nat\n:PREROUTING ACCEPT [0:0]\nCOMMIT\n"),
        );
        assert_eq!(first.matches("-A PREROUTING").count(), 1);
        assert_eq!(first.matches("-A OUTPUT").count(), 1);

        // A dump as iptables-save prints it once our rules are in.
        let saved = format!(
            "*nat\n:PREROUTING ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n{}COMMIT\n",
            first
                .lines()
                .filter(|l| l.starts_with("-A"))
                .map(|l| format!("{l}\n"))
                .collect::<String>()
        );
        let second = install_input(&a, Family::V4, Some(&saved));
        assert!(
            !second.contains("-A PREROUTING"),
            "no second jump:\n{second}"
        );
        assert!(!second.contains("-A OUTPUT"));
        // Same rules in our (flushed) chains: the text is stable.
        let ours = |t: &str| {
            t.lines()
                .filter(|l| {
                    l.contains(" MESH_PROXY_")
                        && !l.contains("PREROUTING")
                        && !l.contains("OUTPUT -p")
                })
                .map(str::to_string)
                .collect::<Vec<_>>()
        };
        assert_eq!(ours(&first), ours(&second));
        assert_eq!(second, install_input(&a, Family::V4, Some(&saved)));

        let doubled = format!("{saved}-A OUTPUT -p tcp -j MESH_PROXY_OUTBOUND\n");
        let third = install_input(&a, Family::V4, Some(&doubled));
        assert_eq!(
            third
                .matches("-D OUTPUT -p tcp -j MESH_PROXY_OUTBOUND")
                .count(),
            1,
            "extra copies are removed"
        );
    }

    #[test]
    fn cleanup_removes_jumps_then_chains() {
        let saved = "*nat\n:PREROUTING ACCEPT [0:0]\n:MESH_PROXY_INBOUND - [0:0]\n\
                     :MESH_PROXY_REDIRECT - [0:0]\n-A PREROUTING -p tcp -j MESH_PROXY_INBOUND\n\
                     -A OUTPUT -p tcp -j MESH_PROXY_OUTBOUND\nCOMMIT\n";
        let text = cleanup_input(saved).expect("something to remove");
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            lines,
            [
                "*nat",
                "-D PREROUTING -p tcp -j MESH_PROXY_INBOUND",
                "-D OUTPUT -p tcp -j MESH_PROXY_OUTBOUND",
                ":MESH_PROXY_INBOUND - [0:0]",
                ":MESH_PROXY_REDIRECT - [0:0]",
                "-X MESH_PROXY_INBOUND",
                "-X MESH_PROXY_REDIRECT",
                "COMMIT",
            ]
        );
        assert_eq!(
            cleanup_input("*nat\n:PREROUTING ACCEPT [0:0]\nCOMMIT\n"),
            None
        );
    }

    #[test]
    fn bad_values_are_refused_with_the_value_named() {
        assert_eq!(parse_port("0"), Err(ValueError::Port("0".into())));
        assert_eq!(parse_port("70000"), Err(ValueError::Port("70000".into())));
        assert_eq!(parse_port("http"), Err(ValueError::Port("http".into())));
        assert_eq!(parse_port(" 80"), Ok(80));
        assert_eq!(
            parse_cidr("10.0.0.0/33"),
            Err(ValueError::Cidr("10.0.0.0/33".into()))
        );
        assert_eq!(
            parse_cidr("10.0.0/8"),
            Err(ValueError::Cidr("10.0.0/8".into()))
        );
        assert_eq!(
            parse_cidr("fd00::/64").map(|c| c.to_string()),
            Ok("fd00::/64".to_string())
        );
        assert!(parse_cidr("fd00::/129").is_err());
        assert!(parse_port_range("15904-15901").is_err());

        let msg = parse_err(&["--outbound-port-exclusions", "80,99999"]);
        assert!(msg.contains("\"99999\" is not a port"), "{msg}");
        let msg = parse_err(&["--outbound-ip-range-exclusions", "10.0.0.0/40"]);
        assert!(msg.contains("\"10.0.0.0/40\" is not a CIDR"), "{msg}");
        let msg = parse_err(&["--inbound-port", "0"]);
        assert!(msg.contains("is not a port"), "{msg}");
        parse_err(&["--dry-run", "--cleanup"]);
    }

    #[test]
    fn permission_errors_are_one_line() {
        let e = status_error(
            "iptables-restore",
            b"iptables-restore v1.8.9 (nf_tables): Could not fetch rule set generation id: \
              Permission denied (you must be root)\n",
        );
        assert!(matches!(e, InitError::PermissionDenied("iptables-restore")));
        let e = spawn_error("iptables-restore", io::Error::from(io::ErrorKind::NotFound));
        assert_eq!(
            e.to_string(),
            "iptables-restore not found: install the iptables package"
        );
        let e = status_error("iptables-restore", b"line 3 failed\n\nsomething\n");
        assert_eq!(
            e.to_string(),
            "iptables-restore failed: line 3 failed; something"
        );
    }
}
