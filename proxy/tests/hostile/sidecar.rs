//! The sidecar under test (the real binary, its descriptors, tasks and log) and the clients
//! that talk to it.

use std::net::{SocketAddr, TcpListener as StdListener};
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Generous bound on any wait, so a broken proxy fails the test instead of hanging it.
pub const WAIT: Duration = Duration::from_secs(20);

pub async fn within<F: std::future::Future>(f: F) -> F::Output {
    tokio::time::timeout(WAIT, f).await.expect("timed out")
}

/// Polls until `check` holds (the synchronisation point of a step), at most [`WAIT`].
pub async fn until<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let reached = tokio::time::timeout(WAIT, async {
        while !check().await {
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    })
    .await;
    assert!(reached.is_ok(), "never reached: {what}");
}

pub fn free_port() -> u16 {
    StdListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A running `mesh-proxy run` in explicit mode: one inbound route per target.
pub struct Sidecar {
    child: tokio::process::Child,
    pid: u32,
    pub admin: SocketAddr,
    /// The outbound listener: a forward proxy for loopback clients in explicit mode.
    pub outbound: SocketAddr,
    /// The transparent inbound listener, reached directly (not redirected).
    pub inbound: SocketAddr,
    routes: Vec<SocketAddr>,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

/// What the sidecar holds: compared before and after each attack.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Usage {
    pub fds: usize,
    pub tasks: i64,
    pub open: i64,
}

/// The addresses the sidecar logged as it bound them.
struct Listening {
    admin: SocketAddr,
    outbound: SocketAddr,
    inbound: SocketAddr,
    /// Static routes, in flag order (the order they are bound and logged in).
    routes: Vec<SocketAddr>,
}

impl Listening {
    fn read(log: &str) -> Self {
        let value = |line: &str, key: &str| -> Option<SocketAddr> {
            let rest = &line[line.find(key)? + key.len()..];
            rest.split_whitespace().next()?.parse().ok()
        };
        let mut found = (None, None, None, Vec::new());
        for line in log.lines() {
            if let Some(addr) = value(line, "admin_addr=") {
                found.0 = Some(addr);
            } else if let Some(addr) = value(line, " listening addr=") {
                if line.contains("route=Static") {
                    found.3.push(addr);
                } else if line.contains("direction=Outbound") {
                    found.1 = Some(addr);
                } else {
                    found.2 = Some(addr);
                }
            }
        }
        let missing = |what: &str| format!("no {what} address in the log:\n{log}");
        Listening {
            admin: found.0.unwrap_or_else(|| panic!("{}", missing("admin"))),
            outbound: found.1.unwrap_or_else(|| panic!("{}", missing("outbound"))),
            inbound: found.2.unwrap_or_else(|| panic!("{}", missing("inbound"))),
            routes: found.3,
        }
    }
}

impl Sidecar {
    /// Starts the sidecar with `spec` (YAML lines under `spec:`, indented by two) and waits
    /// until it reports ready.
    pub async fn start(spec: &str, targets: &[SocketAddr]) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("mesh-config.yaml");
        std::fs::write(&config, format!("spec:\n{spec}\n")).unwrap();
        let log = dir.path().join("stderr.log");
        // Every listener on port 0, read back from the log: ports picked beforehand could be
        // taken meanwhile by one of the many client sockets the tests open.
        let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_mesh-proxy"));
        cmd.arg("run")
            .arg("--mesh-config")
            .arg(&config)
            .args(["--bind", "127.0.0.1", "--threads", "1"])
            .args([
                "--inbound-port",
                "0",
                "--outbound-port",
                "0",
                "--admin-port",
                "0",
            ]);
        for target in targets {
            cmd.args(["--inbound", &format!("127.0.0.1:0={target}")]);
        }
        let level = std::env::var("SIDECAR_LOG").unwrap_or_else(|_| "info".into());
        let mut child = cmd
            .env("RUST_LOG", level)
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .kill_on_drop(true)
            .spawn()
            .expect("mesh-proxy");
        let pid = child.id().unwrap();
        let mut text = String::new();
        let started = tokio::time::timeout(WAIT, async {
            loop {
                text = std::fs::read_to_string(&log).unwrap_or_default();
                if text.contains("admin listening") {
                    return;
                }
                if let Ok(Some(status)) = child.try_wait() {
                    panic!("mesh-proxy exited: {status}\n{text}");
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await;
        assert!(started.is_ok(), "mesh-proxy never listened:\n{text}");
        let listening = Listening::read(&text);
        assert_eq!(listening.routes.len(), targets.len(), "{text}");
        let sidecar = Sidecar {
            child,
            pid,
            admin: listening.admin,
            outbound: listening.outbound,
            inbound: listening.inbound,
            routes: listening.routes,
            log,
            _dir: dir,
        };
        let admin = sidecar.admin;
        until("sidecar ready", || async {
            get(admin, "/ready")
                .await
                .is_ok_and(|t| t.starts_with("HTTP/1.1 200"))
        })
        .await;
        sidecar
    }

    pub fn route(&self, i: usize) -> SocketAddr {
        self.routes[i]
    }

    /// Open descriptors of the sidecar process.
    pub fn fds(&self) -> usize {
        std::fs::read_dir(format!("/proc/{}/fd", self.pid))
            .expect("sidecar process gone")
            .count()
    }

    pub fn fd_list(&self) -> Vec<String> {
        let mut out: Vec<String> = std::fs::read_dir(format!("/proc/{}/fd", self.pid))
            .map(|d| {
                d.filter_map(|e| e.ok())
                    .map(|e| {
                        let target = std::fs::read_link(e.path()).unwrap_or_default();
                        format!(
                            "{} -> {}",
                            e.file_name().to_string_lossy(),
                            target.display()
                        )
                    })
                    .collect()
            })
            .unwrap_or_default();
        out.sort();
        out
    }

    pub async fn metrics(&self) -> String {
        within(get(self.admin, "/metrics")).await.expect("/metrics")
    }

    /// The value of the series `name` (exactly, labels included), 0 when absent.
    pub async fn metric(&self, name: &str) -> i64 {
        metric_in(&self.metrics().await, name)
    }

    /// Descriptors first: the scrape's own connection is then in every task count alike.
    pub async fn usage(&self) -> Usage {
        let fds = self.fds();
        let text = self.metrics().await;
        Usage {
            fds,
            tasks: metric_in(&text, "mesh_proxy_tasks"),
            open: metric_in(&text, "mesh_proxy_connections_open"),
        }
    }

    /// Waits until descriptors, tasks and held connections are back to `baseline` (the proxy
    /// closes its side asynchronously); fails with both figures and the descriptors if not.
    pub async fn settles_to(&self, baseline: Usage) {
        let settled = tokio::time::timeout(WAIT, async {
            loop {
                let now = self.usage().await;
                if now.fds <= baseline.fds && now.tasks <= baseline.tasks && now.open == 0 {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
        .await;
        if settled.is_err() {
            let now = self.usage().await;
            panic!(
                "leaked: now {now:?}, baseline {baseline:?}\n{:#?}",
                self.fd_list()
            );
        }
    }

    /// The process is still running and nothing in it panicked.
    pub fn assert_alive(&mut self) {
        let status = self.child.try_wait().unwrap();
        let log = std::fs::read_to_string(&self.log).unwrap_or_default();
        assert!(status.is_none(), "sidecar exited: {status:?}\n{log}");
        assert!(!log.contains("panicked"), "sidecar panicked:\n{log}");
    }

    /// A well-behaved HTTP/1 client still gets its answer on route `i`.
    pub async fn assert_serves(&mut self, i: usize) {
        let text = within(get(self.route(i), "/fast")).await.expect("request");
        assert!(text.starts_with("HTTP/1.1 200"), "{text}");
        self.assert_alive();
    }
}

impl Drop for Sidecar {
    /// A failed test shows what the sidecar logged.
    fn drop(&mut self) {
        if std::thread::panicking() {
            let log = std::fs::read_to_string(&self.log).unwrap_or_default();
            eprintln!("--- sidecar log ---\n{log}--- end of sidecar log ---");
        }
    }
}

pub fn metric_in(text: &str, name: &str) -> i64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
        .map(|v| v.trim().parse::<f64>().expect("numeric sample") as i64)
        .unwrap_or(0)
}

/// One GET with `Connection: close`; the whole response text, or the error.
pub async fn get(addr: SocketAddr, path: &str) -> std::io::Result<String> {
    let mut s = TcpStream::connect(addr).await?;
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n").as_bytes())
        .await?;
    let mut text = String::new();
    s.read_to_string(&mut text).await?;
    Ok(text)
}

/// Writes `bytes` on a new connection and reads until the sidecar closes it (EOF or reset);
/// returns what was read.
pub async fn exchange(addr: SocketAddr, bytes: &[u8]) -> Vec<u8> {
    // A reset that overtakes the handshake's completion fails the connect itself.
    let Ok(mut s) = within(TcpStream::connect(addr)).await else {
        return Vec::new();
    };
    // The sidecar may refuse before it has read everything: a failed write is an answer too.
    let _ = s.write_all(bytes).await;
    read_to_close(&mut s).await
}

/// Reads until EOF or a reset, failing after [`WAIT`] if the sidecar keeps the connection.
pub async fn read_to_close(s: &mut TcpStream) -> Vec<u8> {
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match within(s.read(&mut buf)).await {
            Ok(0) | Err(_) => return out,
            Ok(n) => out.extend_from_slice(&buf[..n]),
        }
    }
}

/// The status codes of the HTTP/1 responses in `bytes`, in order (bodies framed by
/// `Content-Length`, as the sidecar's own answers are).
pub fn statuses(mut bytes: &[u8]) -> Vec<u16> {
    let mut out = Vec::new();
    loop {
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut resp = httparse::Response::new(&mut headers);
        let Ok(httparse::Status::Complete(n)) = resp.parse(bytes) else {
            return out;
        };
        out.push(resp.code.unwrap());
        let len = resp
            .headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case("content-length"))
            .and_then(|h| std::str::from_utf8(h.value).ok()?.parse::<usize>().ok())
            .unwrap_or(0);
        bytes = &bytes[(n + len).min(bytes.len())..];
    }
}

/// An HTTP/1 request through hyper's client; its status and whether its body ended cleanly.
pub async fn h1_request(addr: SocketAddr, path: &str) -> (StatusCode, Result<Bytes, String>) {
    let stream = within(TcpStream::connect(addr)).await.unwrap();
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    let req = Request::get(path)
        .header("host", "app.test")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let resp = within(send.send_request(req)).await.expect("response head");
    let status = resp.status();
    let body = within(resp.into_body().collect())
        .await
        .map(|c| c.to_bytes())
        .map_err(|e| e.to_string());
    (status, body)
}

/// An HTTP/2 (prior knowledge) request through hyper's client, like [`h1_request`].
pub async fn h2_request(addr: SocketAddr, path: &str) -> (StatusCode, Result<Bytes, String>) {
    let stream = within(TcpStream::connect(addr)).await.unwrap();
    let (mut send, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .unwrap();
    tokio::spawn(conn);
    let req = Request::get(format!("http://app.test{path}"))
        .body(Full::new(Bytes::new()))
        .unwrap();
    let resp = within(send.send_request(req)).await.expect("response head");
    let status = resp.status();
    let body = within(resp.into_body().collect())
        .await
        .map(|c| c.to_bytes())
        .map_err(|e| e.to_string());
    (status, body)
}
