//! Processes on loopback for the tests that need no root (explicit-mode sidecars, the config
//! server): free ports, a child killed on drop, and waiting for a port that may have been taken.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::WAIT;

/// Distinct ports that are free now. They stay free only until someone else (a test running in
/// parallel) binds them, so whoever starts a server on them must retry on a clash: see
/// [`Spawned::wait_listening`].
pub fn free_ports(n: usize) -> Vec<u16> {
    let held: Vec<TcpListener> = (0..n)
        .map(|_| TcpListener::bind("127.0.0.1:0").expect("free port"))
        .collect();
    held.iter()
        .map(|l| l.local_addr().expect("bound").port())
        .collect()
}

pub fn free_port() -> u16 {
    free_ports(1)[0]
}

/// A child process killed on drop; its output is printed when the test fails.
pub struct Spawned {
    name: String,
    child: Child,
    log: PathBuf,
}

impl Spawned {
    /// Starts `cmd` with stdout and stderr in `<dir>/<name>.log`.
    pub fn start(name: &str, mut cmd: Command, dir: &Path) -> Spawned {
        let log = dir.join(format!("{name}.log"));
        let file = std::fs::File::create(&log).expect("log file");
        cmd.stdin(Stdio::null())
            .stdout(file.try_clone().expect("log"))
            .stderr(file);
        let child = cmd.spawn().unwrap_or_else(|e| panic!("spawn {name}: {e}"));
        Spawned {
            name: name.into(),
            child,
            log,
        }
    }

    /// Waits (up to [`WAIT`]) until `addr` accepts; false if the process exited first, e.g.
    /// because a parallel test took its port.
    pub fn wait_listening(&mut self, addr: SocketAddr) -> bool {
        let start = Instant::now();
        while TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err() {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                return false;
            }
            assert!(start.elapsed() < WAIT, "{addr} never listened");
            std::thread::sleep(Duration::from_millis(20));
        }
        true
    }
}

impl Drop for Spawned {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!(
                "--- {} ---\n{}",
                self.name,
                std::fs::read_to_string(&self.log).unwrap_or_default()
            );
        }
    }
}
