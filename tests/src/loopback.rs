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
    ///
    /// An answer on `addr` is not enough: a parallel test may have bound the port in the
    /// meantime, and then the connection reached its server while ours is failing to bind. So
    /// the listening socket must belong to this process or one of its children.
    pub fn wait_listening(&mut self, addr: SocketAddr) -> bool {
        let start = Instant::now();
        while TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err() {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                return false;
            }
            assert!(start.elapsed() < WAIT, "{addr} never listened");
            std::thread::sleep(Duration::from_millis(20));
        }
        ports::listener_owned_by(self.child.id(), addr.port()).unwrap_or(true)
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

/// Who holds a listening port, from `/proc` (Linux): the sockets in `/proc/net/tcp{,6}` of
/// this network namespace and the descriptors of a process tree.
mod ports {
    use std::collections::HashSet;

    /// Whether the socket listening on `port` belongs to `pid` or a descendant; `None` when
    /// `/proc` could not tell (then the caller trusts the answer it got).
    pub fn listener_owned_by(pid: u32, port: u16) -> Option<bool> {
        let listening = listening_inodes(port)?;
        if listening.is_empty() {
            return None;
        }
        let tree = process_tree(pid);
        Some(tree.iter().any(|p| {
            std::fs::read_dir(format!("/proc/{p}/fd"))
                .into_iter()
                .flatten()
                .flatten()
                .filter_map(|fd| std::fs::read_link(fd.path()).ok())
                .filter_map(|target| socket_inode(&target.to_string_lossy()))
                .any(|inode| listening.contains(&inode))
        }))
    }

    /// Inodes of the sockets in state LISTEN (0A) on `port`, IPv4 and IPv6.
    fn listening_inodes(port: u16) -> Option<HashSet<u64>> {
        let mut inodes = HashSet::new();
        let mut read_any = false;
        for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
            let Ok(text) = std::fs::read_to_string(table) else {
                continue;
            };
            read_any = true;
            for line in text.lines().skip(1) {
                let cols: Vec<&str> = line.split_whitespace().collect();
                let (Some(local), Some(state), Some(inode)) =
                    (cols.get(1), cols.get(3), cols.get(9))
                else {
                    continue;
                };
                let local_port = local
                    .rsplit(':')
                    .next()
                    .and_then(|p| u16::from_str_radix(p, 16).ok());
                if *state == "0A" && local_port == Some(port) {
                    if let Ok(inode) = inode.parse() {
                        inodes.insert(inode);
                    }
                }
            }
        }
        read_any.then_some(inodes)
    }

    /// `pid` and every process whose parent chain leads to it.
    fn process_tree(pid: u32) -> Vec<u32> {
        let parents: Vec<(u32, u32)> = std::fs::read_dir("/proc")
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
            .filter_map(|p| Some((p, parent_of(p)?)))
            .collect();
        let mut tree = vec![pid];
        let mut i = 0;
        while i < tree.len() {
            let current = tree[i];
            tree.extend(
                parents
                    .iter()
                    .filter(|(_, pp)| *pp == current)
                    .map(|(p, _)| *p),
            );
            i += 1;
        }
        tree
    }

    /// The parent pid from `/proc/PID/stat` (the field after the parenthesised name).
    fn parent_of(pid: u32) -> Option<u32> {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        let after_name = &stat[stat.rfind(')')? + 1..];
        after_name.split_whitespace().nth(1)?.parse().ok()
    }

    /// `socket:[12345]` → 12345.
    fn socket_inode(link: &str) -> Option<u64> {
        link.strip_prefix("socket:[")?
            .strip_suffix(']')?
            .parse()
            .ok()
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn a_listener_belongs_to_its_process_and_not_to_another() {
            let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            let port = listener.local_addr().unwrap().port();
            assert_eq!(listener_owned_by(std::process::id(), port), Some(true));
            let mut other = std::process::Command::new("sleep")
                .arg("30")
                .spawn()
                .unwrap();
            assert_eq!(listener_owned_by(other.id(), port), Some(false));
            let _ = other.kill();
            let _ = other.wait();
        }
    }
}
