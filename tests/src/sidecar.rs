//! `mesh-proxy run` inside a pod, as the proxy UID, the way the injector would start it.

use std::os::unix::fs::PermissionsExt as _;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};

use crate::net::NetInner;
use crate::pod::Pod;
use crate::process::Proc;
use crate::{binaries, WAIT};

/// The contract's proxy UID.
pub const PROXY_UID: u32 = 1500;
/// The contract's admin port.
pub const ADMIN_PORT: u16 = 15000;

/// How to start a sidecar. `Default` is a transparent sidecar with the default MeshConfig.
#[derive(Debug, Clone, Default)]
pub struct SidecarOpts {
    /// MeshConfig document (YAML or JSON) written to a file passed as `--mesh-config`.
    pub mesh_config: Option<String>,
    /// `--service`; the pod's name when None.
    pub service: Option<String>,
    /// `--namespace`; `default` when None.
    pub namespace: Option<String>,
    /// `--pod-ip` value instead of the pod's IPv4 address (an IPv6-only pod, or
    /// `ipv4,ipv6` for dual stack).
    pub pod_ip: Option<String>,
    /// Extra flags for `mesh-proxy run`.
    pub args: Vec<String>,
    /// Extra environment, e.g. `("RUST_LOG", "debug")`.
    pub env: Vec<(String, String)>,
}

/// A running sidecar; killed on drop (its logs are printed if the test is failing).
pub struct Sidecar {
    pub proc: Proc,
    ns: String,
    /// The MeshConfig file given to it, if any: rewrite it to reload.
    pub mesh_config: Option<PathBuf>,
}

impl Sidecar {
    pub(crate) fn start(pod: &Pod, net: &NetInner, opts: SidecarOpts) -> anyhow::Result<Sidecar> {
        let proxy = binaries::mesh_proxy()?;
        let mut args: Vec<String> = vec![
            "setpriv".into(),
            format!("--reuid={PROXY_UID}"),
            format!("--regid={PROXY_UID}"),
            "--clear-groups".into(),
            proxy.to_string_lossy().into_owned(),
            "run".into(),
            "--pod-ip".into(),
            opts.pod_ip.clone().unwrap_or_else(|| pod.ip().to_string()),
            "--service".into(),
            opts.service
                .clone()
                .unwrap_or_else(|| pod.name().to_string()),
            "--namespace".into(),
            opts.namespace.clone().unwrap_or_else(|| "default".into()),
        ];
        let mesh_config = match &opts.mesh_config {
            Some(text) => {
                let path = net
                    .dir
                    .path()
                    .join(format!("{}-mesh-config.yaml", pod.name()));
                std::fs::write(&path, text)?;
                std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644))?;
                args.push("--mesh-config".into());
                args.push(path.to_string_lossy().into_owned());
                Some(path)
            }
            None => None,
        };
        args.extend(opts.args.iter().cloned());
        let mut cmd = pod.command(&args.iter().map(String::as_str).collect::<Vec<_>>());
        for (k, v) in &opts.env {
            cmd.env(k, v);
        }
        let log = net.dir.path().join(format!("{}-sidecar", pod.name()));
        let proc = Proc::start(&format!("{}/sidecar", pod.name()), cmd, log)?;
        let mut sidecar = Sidecar {
            proc,
            ns: pod.ns().to_string(),
            mesh_config,
        };
        sidecar.wait_ready()?;
        Ok(sidecar)
    }

    /// GET on the admin server from inside the pod (127.0.0.1 is never redirected).
    pub fn admin(&self, path: &str) -> anyhow::Result<String> {
        let url = format!("http://127.0.0.1:{ADMIN_PORT}{path}");
        let out = std::process::Command::new("timeout")
            .args(["10", "ip", "netns", "exec", &self.ns, "curl", "-sf", &url])
            .output()
            .with_context(|| format!("GET {url}"))?;
        if !out.status.success() {
            bail!("GET {url} failed ({})", out.status);
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// The Prometheus text of `/metrics`.
    pub fn metrics(&self) -> anyhow::Result<String> {
        self.admin("/metrics")
    }

    /// Sum of every sample of `metric` whose label set contains all of `labels` (`key="value"`
    /// fragments). `metric` also matches names that end with `_<metric>`, so a registry prefix
    /// does not matter: `metric_sum(&text, "requests_total", &["direction=\"inbound\""])`.
    pub fn metric_sum(text: &str, metric: &str, labels: &[&str]) -> f64 {
        text.lines()
            .filter(|l| !l.starts_with('#'))
            .filter_map(|l| {
                let (series, value) = l.rsplit_once(' ')?;
                let name = series.split('{').next()?;
                if !(name == metric || name.ends_with(&format!("_{metric}")))
                    || !labels.iter().all(|f| series.contains(f))
                {
                    return None;
                }
                value.parse::<f64>().ok()
            })
            .sum()
    }

    fn wait_ready(&mut self) -> anyhow::Result<()> {
        let start = Instant::now();
        loop {
            if self.admin("/ready").is_ok() {
                return Ok(());
            }
            if !self.proc.is_running() {
                bail!("sidecar exited before ready\n{}", self.proc.describe());
            }
            if start.elapsed() > WAIT {
                bail!("sidecar not ready after {WAIT:?}\n{}", self.proc.describe());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Sidecar;

    #[test]
    fn metric_sum_matches_name_suffix_and_labels() {
        let text = "# HELP x\n\
                    mesh_requests_total{direction=\"inbound\",protocol=\"http1\"} 2\n\
                    mesh_requests_total{direction=\"outbound\",protocol=\"http1\"} 5\n\
                    requests_total{direction=\"inbound\",protocol=\"h2\"} 1\n\
                    other_requests_totals{direction=\"inbound\"} 100\n";
        let inbound = ["direction=\"inbound\""];
        assert_eq!(Sidecar::metric_sum(text, "requests_total", &inbound), 3.0);
        assert_eq!(Sidecar::metric_sum(text, "requests_total", &[]), 8.0);
        assert_eq!(Sidecar::metric_sum(text, "missing", &[]), 0.0);
    }
}
