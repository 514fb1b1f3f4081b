//! Shared by the integration tests: the external Kubernetes schema validator.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;

pub const KUBERNETES_VERSION: &str = "1.33.0";

fn validator() -> PathBuf {
    let found = Command::new("kubernetes-validate")
        .arg("--version")
        .output();
    match found {
        Ok(o) if o.status.success() => PathBuf::from("kubernetes-validate"),
        _ => panic!(
            "the external validator `kubernetes-validate` is not installed: run scripts/setup \
             (it pip-installs tests/requirements.txt)"
        ),
    }
}

/// Validates files against the Kubernetes schema, strictly (unknown fields fail).
pub fn kubernetes_validate(files: &[&Path]) {
    let out = Command::new(validator())
        .args(["-k", KUBERNETES_VERSION, "--strict"])
        .args(files)
        .output()
        .expect("running kubernetes-validate");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "kubernetes-validate failed:\n{text}");
    assert!(
        !text.contains("ERROR"),
        "kubernetes-validate reported errors:\n{text}"
    );
}

/// The repository root (tests run with the crate dir as cwd).
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}
