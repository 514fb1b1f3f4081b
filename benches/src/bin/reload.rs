//! Reload bench: how long a MeshConfig change takes to reach a running sidecar, from the write
//! to the sidecar's admin `/config` showing the new generation (polled every 5 ms).
//!
//! Three sources, each flipped `--flips` times between two log levels:
//! - **file**: `mesh-proxy run --mesh-config FILE`, the file rewritten atomically;
//! - **server (file write)**: `mesh-injector --backend local` over https, its state dir's
//!   `mesh-config.yaml` rewritten atomically, the sidecar long-polling the injector;
//! - **server (mesh config patch)**: the same, changed by the real `mesh` CLI (its process start
//!   included, as an operator would see it).

use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Parser;
use tracemesh_benches::sidecar::free_port;

#[derive(Parser, Debug)]
#[command(about = "MeshConfig propagation time to a sidecar: file source vs config server")]
struct Args {
    /// Directory holding mesh-proxy, mesh-injector and mesh.
    #[arg(long, default_value = "target/release")]
    bin_dir: PathBuf,
    /// Changes per source.
    #[arg(long, default_value_t = 20)]
    flips: usize,
    /// Upper bound on one change reaching the sidecar, seconds.
    #[arg(long, default_value_t = 10)]
    timeout: u64,
}

const POLL: Duration = Duration::from_millis(5);

/// A child process, killed on drop so a failing run leaves nothing behind.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn spawn(mut cmd: Command, log: &Path) -> anyhow::Result<Proc> {
    let file = std::fs::File::create(log)?;
    cmd.stdin(Stdio::null())
        .stdout(file.try_clone()?)
        .stderr(file);
    let child = cmd
        .spawn()
        .with_context(|| format!("starting {:?}", cmd.get_program()))?;
    Ok(Proc(child))
}

fn wait_listening(proc: &mut Proc, port: u16, limit: Duration) -> anyhow::Result<()> {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let start = Instant::now();
    while TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err() {
        if let Some(status) = proc.0.try_wait()? {
            bail!("process exited before listening on {port}: {status}");
        }
        if start.elapsed() > limit {
            bail!("nothing listening on {port} after {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}

/// GET on loopback; the body of a 200.
fn http_get(port: u16, path: &str) -> anyhow::Result<String> {
    let mut stream = TcpStream::connect(SocketAddr::from(([127, 0, 0, 1], port)))?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    )?;
    let mut raw = String::new();
    stream.read_to_string(&mut raw)?;
    match raw.split_once("\r\n\r\n") {
        Some((head, body)) if head.starts_with("HTTP/1.1 200") => Ok(body.to_string()),
        _ => bail!("GET {path}: unexpected response"),
    }
}

/// The `generation` field of the sidecar's `/config` JSON.
fn generation(admin_port: u16) -> anyhow::Result<u64> {
    let body = http_get(admin_port, "/config")?;
    let rest = body
        .split_once("\"generation\":")
        .map(|(_, r)| r)
        .context("no generation in /config")?;
    let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
    Ok(digits.parse()?)
}

fn document(level: &str) -> String {
    format!(
        "apiVersion: config.tracemesh.dev/v1alpha1\nkind: MeshConfig\n\
         metadata: {{name: mesh-config, namespace: mesh-system}}\n\
         spec:\n  sidecar:\n    logLevel: {level}\n"
    )
}

/// Replaces `path` atomically (write beside it, then rename), as `mesh config patch` does.
fn write_atomic(path: &Path, text: &str) -> anyhow::Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text)?;
    std::fs::rename(&tmp, path)?;
    Ok(())
}

/// Starts a sidecar watching `source` (a file or URL); returns it and its admin port.
fn sidecar(
    bin_dir: &Path,
    source: &str,
    ca: Option<&Path>,
    dir: &Path,
    name: &str,
) -> anyhow::Result<(Proc, u16)> {
    let (inbound, outbound, admin) = (free_port()?, free_port()?, free_port()?);
    let mut cmd = Command::new(bin_dir.join("mesh-proxy"));
    cmd.args(["run", "--mesh-config", source])
        .args(["--bind", "127.0.0.1", "--pod-ip", "127.0.0.1"])
        .args(["--inbound-port", &inbound.to_string()])
        .args(["--outbound-port", &outbound.to_string()])
        .args(["--admin-port", &admin.to_string()])
        .env("RUST_LOG", "warn");
    if let Some(ca) = ca {
        cmd.env("MESH_CONFIG_CA", ca);
    }
    let mut proc = spawn(cmd, &dir.join(format!("{name}.log")))?;
    wait_listening(&mut proc, admin, Duration::from_secs(15))?;
    Ok((proc, admin))
}

/// Runs `flips` changes through `change` and times each until the sidecar's generation moves.
fn measure(
    admin: u16,
    flips: usize,
    limit: Duration,
    mut change: impl FnMut(&str) -> anyhow::Result<()>,
) -> anyhow::Result<Vec<Duration>> {
    let mut samples = Vec::with_capacity(flips);
    for i in 0..flips {
        let level = if i % 2 == 0 { "debug" } else { "info" };
        let before = generation(admin)?;
        let start = Instant::now();
        change(level)?;
        while generation(admin)? <= before {
            if start.elapsed() > limit {
                bail!("change {i} did not reach the sidecar within {limit:?}");
            }
            std::thread::sleep(POLL);
        }
        samples.push(start.elapsed());
    }
    Ok(samples)
}

fn print_summary(name: &str, mut samples: Vec<Duration>) {
    samples.sort();
    let at = |q: f64| samples[((samples.len() - 1) as f64 * q).round() as usize];
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    println!(
        "{name:<28} n={:<3} min {:>8.1} ms  median {:>8.1} ms  p90 {:>8.1} ms  max {:>8.1} ms",
        samples.len(),
        ms(at(0.0)),
        ms(at(0.5)),
        ms(at(0.9)),
        ms(at(1.0)),
    );
}

/// A CA, and a serving certificate for 127.0.0.1/localhost it signed, written to `dir`.
fn certificates(dir: &Path) -> anyhow::Result<PathBuf> {
    let ca_key = rcgen::KeyPair::generate()?;
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new())?;
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca_cert = ca_params.self_signed(&ca_key)?;
    let issuer = rcgen::Issuer::new(ca_params, ca_key);
    let key = rcgen::KeyPair::generate()?;
    let params = rcgen::CertificateParams::new(vec!["localhost".into(), "127.0.0.1".into()])?;
    let cert = params.signed_by(&key, &issuer)?;
    let ca = dir.join("ca.pem");
    std::fs::write(&ca, ca_cert.pem())?;
    std::fs::write(dir.join("tls.crt"), cert.pem())?;
    std::fs::write(dir.join("tls.key"), key.serialize_pem())?;
    Ok(ca)
}

fn run(args: &Args, dir: &Path) -> anyhow::Result<()> {
    let limit = Duration::from_secs(args.timeout);
    for bin in ["mesh-proxy", "mesh-injector", "mesh"] {
        if !args.bin_dir.join(bin).is_file() {
            bail!("{} is not built", args.bin_dir.join(bin).display());
        }
    }

    let file = dir.join("mesh-config.yaml");
    write_atomic(&file, &document("info"))?;
    let file_source = file.to_string_lossy().into_owned();
    let (file_sidecar, admin) = sidecar(&args.bin_dir, &file_source, None, dir, "file-sidecar")?;
    let file_samples = measure(admin, args.flips, limit, |level| {
        write_atomic(&file, &document(level))
    })?;
    drop(file_sidecar);

    let ca = certificates(dir)?;
    let state = dir.join("state");
    std::fs::create_dir_all(&state)?;
    let state_file = state.join("mesh-config.yaml");
    write_atomic(&state_file, &document("info"))?;
    let port = free_port()?;
    let mut injector = Command::new(args.bin_dir.join("mesh-injector"));
    injector
        .args(["--backend", "local", "--state-dir"])
        .arg(&state)
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .arg("--tls-cert")
        .arg(dir.join("tls.crt"))
        .arg("--tls-key")
        .arg(dir.join("tls.key"))
        .env("RUST_LOG", "warn");
    let mut injector = spawn(injector, &dir.join("injector.log"))?;
    wait_listening(&mut injector, port, Duration::from_secs(15))?;
    let url = format!("https://127.0.0.1:{port}/v1/meshconfig");
    let (_server_sidecar, admin) = sidecar(&args.bin_dir, &url, Some(&ca), dir, "server-sidecar")?;

    let write_samples = measure(admin, args.flips, limit, |level| {
        write_atomic(&state_file, &document(level))
    })?;
    let mesh = args.bin_dir.join("mesh");
    let patch_samples = measure(admin, args.flips, limit, |level| {
        let patch = format!(r#"{{"spec":{{"sidecar":{{"logLevel":"{level}"}}}}}}"#);
        let out = Command::new(&mesh)
            .args(["--backend", "local", "--state-dir"])
            .arg(&state)
            .args(["config", "patch", "-p", &patch])
            .output()?;
        if !out.status.success() {
            bail!(
                "mesh config patch failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(())
    })?;

    println!("binaries: {}", args.bin_dir.display());
    print_summary("file", file_samples);
    print_summary("server (file write)", write_samples);
    print_summary("server (mesh config patch)", patch_samples);
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if args.flips == 0 {
        bail!("--flips must be at least 1");
    }
    let dir = std::env::temp_dir().join(format!("tracemesh-reload-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let result = run(&args, &dir);
    if result.is_err() {
        eprintln!("logs kept in {}", dir.display());
    } else {
        let _ = std::fs::remove_dir_all(&dir);
    }
    result
}
