//! The container images as a cluster would run them: `scripts/image` assembles both `FROM
//! scratch` from this build's binaries, `skopeo` reads their configuration back, and each image's
//! root filesystem (unpacked with `umoci`) runs its binary in fresh namespaces with nothing from
//! the host: the sidecar image's `mesh-proxy init` writes the pod's rules with the iptables the
//! image carries, which is what its `mesh-init` init container does.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context as _};
use tracemesh_tests::binaries;

const REGISTRY: &str = "registry.example.test/mesh";
const TAG: &str = "t1";

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_path_buf()
}

fn run(cmd: &mut Command) -> anyhow::Result<String> {
    let output = cmd.output().with_context(|| format!("running {cmd:?}"))?;
    if !output.status.success() {
        bail!(
            "{cmd:?} failed ({}): {}{}",
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// The image tools, or a clear failure under CI (where scripts/setup installs them).
fn tools_or_skip() -> bool {
    let missing: Vec<&str> = ["buildah", "skopeo", "umoci", "unshare", "chroot"]
        .into_iter()
        .filter(|t| {
            !Command::new("sh")
                .args(["-c", &format!("command -v {t}")])
                .stdout(std::process::Stdio::null())
                .status()
                .is_ok_and(|s| s.success())
        })
        .collect();
    if missing.is_empty() {
        return true;
    }
    assert!(
        !tracemesh_tests::tools::in_ci(),
        "image tools missing in CI: {missing:?} (scripts/setup installs them)"
    );
    eprintln!("skipped: image tools missing: {missing:?}");
    false
}

/// Unpacks an OCI archive's root filesystem into `dir/<name>/rootfs`.
fn unpack(archive: &Path, dir: &Path, name: &str) -> anyhow::Result<PathBuf> {
    let layout = dir.join(format!("{name}-layout"));
    run(Command::new("skopeo").args([
        "copy",
        "-q",
        &format!("oci-archive:{}", archive.display()),
        &format!("oci:{}:{TAG}", layout.display()),
    ]))?;
    let bundle = dir.join(name);
    run(Command::new("umoci").args([
        "unpack",
        "--image",
        &format!("{}:{TAG}", layout.display()),
        &bundle.display().to_string(),
    ]))?;
    Ok(bundle.join("rootfs"))
}

/// Runs a shell script in new mount, PID and network namespaces with `$R` = the rootfs, whose
/// /dev and /proc are mounted as a container runtime would.
fn in_container(rootfs: &Path, script: &str) -> anyhow::Result<String> {
    let r = rootfs.display().to_string();
    let setup = format!("mount --rbind /dev {r}/dev && mount -t proc proc {r}/proc && ");
    run(Command::new("unshare")
        .args(["--fork", "--pid", "--mount", "--net", "sh", "-c"])
        .arg(setup + script)
        .env("R", &r))
}

#[test]
#[ignore = "needs root: builds images and runs them in namespaces"]
fn images_build_and_run_from_scratch() {
    if !tracemesh_tests::root_or_skip() || !tools_or_skip() {
        return;
    }
    let proxy = binaries::mesh_proxy().expect("mesh-proxy built");
    let bin_dir = proxy.parent().expect("profile dir");
    binaries::path("mesh-injector").expect("mesh-injector built");
    let dir = tempfile::tempdir().expect("tempdir");
    let out = dir.path().join("images");
    let printed = run(Command::new("bash")
        .arg(workspace().join("scripts/image"))
        .args(["--registry", REGISTRY, "--tag", TAG, "--bin-dir"])
        .arg(bin_dir)
        .arg("--out")
        .arg(&out))
    .expect("scripts/image");
    assert!(
        printed.contains(&format!("{REGISTRY}/mesh-proxy:{TAG}")),
        "{printed}"
    );

    for (name, user) in [("mesh-proxy", "1500"), ("mesh-injector", "65532")] {
        let archive = out.join(format!("{name}.tar"));
        let config = run(Command::new("skopeo").args([
            "inspect",
            "--config",
            &format!("oci-archive:{}", archive.display()),
        ]))
        .expect("skopeo inspect");
        let config: serde_json::Value = serde_json::from_str(&config).expect("image config json");
        let c = &config["config"];
        assert_eq!(
            c["Entrypoint"],
            serde_json::json!([format!("/usr/local/bin/{name}")]),
            "{name}: {c}"
        );
        assert_eq!(c["User"], user, "{name}: {c}");
        assert_eq!(c["Labels"]["org.opencontainers.image.version"], TAG);
        assert_eq!(config["os"], "linux");

        let rootfs = unpack(&archive, dir.path(), name).expect("unpack");
        // Nothing but the image: the binary loads and runs as the image's user.
        let version = in_container(
            &rootfs,
            &format!("chroot --userspec={user}:{user} \"$R\" /usr/local/bin/{name} --version"),
        )
        .expect("binary runs from the image alone");
        assert!(version.starts_with(name), "{version}");
    }

    // The sidecar image's init container: iptables from the image, in a fresh network namespace.
    let rootfs = dir.path().join("mesh-proxy/rootfs");
    let rules = in_container(
        &rootfs,
        "chroot \"$R\" /usr/local/bin/mesh-proxy init && chroot \"$R\" /usr/sbin/iptables-save -t nat",
    )
    .expect("mesh-proxy init with the image's iptables");
    for chain in [
        "MESH_PROXY_INBOUND",
        "MESH_PROXY_OUTBOUND",
        "REDIRECT --to-ports 15001",
    ] {
        assert!(rules.contains(chain), "{chain} missing from:\n{rules}");
    }
}
