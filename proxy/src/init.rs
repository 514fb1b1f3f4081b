//! `mesh-proxy init`: writes the pod's iptables rules. (Stub: implementation lands here.)

/// Flags of `mesh-proxy init` (see CONTRACT.md).
#[derive(Debug, Clone, clap::Args)]
pub struct Args {}

pub fn run(_args: Args) -> anyhow::Result<()> {
    anyhow::bail!("mesh-proxy init is not implemented yet")
}
