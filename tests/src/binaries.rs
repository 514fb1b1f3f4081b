//! Where the binaries under test are: beside the test executable's profile directory, since
//! `CARGO_BIN_EXE_*` only names binaries of the crate being tested.

use std::path::PathBuf;

use anyhow::{bail, Context as _};

/// Path of a workspace binary (`mesh-proxy`, `tm-support`, ...) in the profile directory the
/// tests were built into (`target/debug` or `$CARGO_TARGET_DIR/<profile>`).
pub fn path(name: &str) -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe().context("current test executable")?;
    // target/<profile>/deps/<test-binary>
    let profile_dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .context("test executable is not under target/<profile>/deps")?;
    let bin = profile_dir.join(name);
    if !bin.is_file() {
        bail!(
            "{} is not built: run `cargo build --workspace --bins` first (scripts/test does)",
            bin.display()
        );
    }
    Ok(bin)
}

/// The sidecar binary; env `MESH_PROXY_BIN` points the tests at another build (e.g. a release one).
pub fn mesh_proxy() -> anyhow::Result<PathBuf> {
    match std::env::var_os("MESH_PROXY_BIN") {
        Some(p) => Ok(PathBuf::from(p)),
        None => path("mesh-proxy"),
    }
}

pub fn support() -> anyhow::Result<PathBuf> {
    path("tm-support")
}
