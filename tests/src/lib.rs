//! End-to-end harness: real pods made of network namespaces, real sidecars, real servers and clients.
//!
//! ```no_run
//! use tracemesh_tests::{Net, Pod, SidecarOpts};
//! let net = Net::new()?;                        // a node namespace with a bridge and its own /24
//! let server = Pod::new(&net, "server")?;       // a pod namespace on that bridge, loopback up
//! server.init(&[])?;                            // `mesh-proxy init` inside the pod
//! let _sidecar = server.start_sidecar(SidecarOpts::default())?; // UID 1500, waits for /ready
//! let _app = server.spawn_server(&["http-echo", "--listen", "0.0.0.0:8080"])?; // tm-support
//! let client = Pod::new(&net, "client")?;
//! let out = client.exec(&["curl", "-sf", &format!("http://{}:8080/", server.ip())])?;
//! assert!(out.ok());
//! # Ok::<(), anyhow::Error>(())
//! ```
//!
//! Building blocks, for tests of their own:
//! - [`Net::new`] / [`Pod::new`]: a private /24 and /64 (`pod.ip()`, `pod.ip6()`); pods reach each
//!   other over the node's bridge; the node namespace (`net.node_ns()`) can host shared services.
//! - [`Pod::exec`] / [`Pod::exec_as`] run and wait (bounded by [`WAIT`]); [`Pod::spawn`] starts a
//!   background [`Proc`] (killed on drop); [`Pod::spawn_server`] / [`Pod::support`] run the
//!   `tm-support` servers and clients (`http-echo`, `tcp-echo`, `ws-echo`, `tcp-client`,
//!   `ws-client`, `stream-client`; see `tm-support --help`).
//! - [`Mesh::new`]: the usual client pod + server pod, both initialised, both with sidecars.
//! - [`Sidecar::admin`] / [`Sidecar::metrics`] / [`Sidecar::metric_sum`] read the admin server;
//!   `sidecar.mesh_config` is the watched MeshConfig file (rewrite it to reload).
//! - [`envoy::start`] runs an Envoy sidecar configured as Istio configures it (Zipkin tracer).
//! - [`binaries::path`] finds any workspace binary (`mesh`, `mesh-proxy`, ...) of the same build.
//!
//! Everything cleans up on drop, also while a test panics: processes are killed, namespaces
//! deleted, and the logs of every process of a pod are printed when the test is failing.
//! Tests using this need root; mark them `#[ignore = "needs root: network namespaces and iptables"]`
//! and open them with `if !root_or_skip() { return; }` (a skip as a normal user, a failure under
//! `CI=true`).

pub mod binaries;
pub mod envoy;
pub mod loopback;
pub mod mesh;
pub mod net;
pub mod pod;
pub mod process;
pub mod sidecar;
pub mod tools;

pub use mesh::Mesh;
pub use net::Net;
pub use pod::{Output, Pod};
pub use process::Proc;
pub use sidecar::{Sidecar, SidecarOpts};

use std::time::Duration;

/// Upper bound for anything a test waits on (a server getting ready, a client finishing).
pub const WAIT: Duration = Duration::from_secs(30);

/// True when running as root; e2e tests skip themselves otherwise (with a note).
pub fn is_root() -> bool {
    std::process::Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

/// For the first line of a root-only test. As root: true. As a normal user: false, after saying
/// so on stderr, so a developer's `--include-ignored` skips instead of failing on `ip netns add`.
/// Under `CI=true` a skip would turn the end-to-end suite green without running it, so there it
/// panics with the reason instead.
pub fn root_or_skip() -> bool {
    if is_root() {
        return true;
    }
    assert!(!tools::in_ci(), "{}", NOT_ROOT_IN_CI);
    eprintln!("SKIPPED (not run): needs root (network namespaces and iptables)");
    false
}

/// Why a root-only test fails under `CI=true` when not root.
pub const NOT_ROOT_IN_CI: &str = "CI=true but not root: this end-to-end test needs root \
     (network namespaces and iptables) and would otherwise pass without running; run the suite \
     as root (sudo scripts/test), or unset CI to skip it on a developer's machine";
