//! SIGTERM on the real `mesh-proxy` binary: during the termination drain window the sidecar
//! reports not ready yet still accepts and serves; then it stops accepting, lets the request
//! in flight finish, and exits 0.

use std::convert::Infallible;
use std::net::{SocketAddr, TcpListener as StdListener};
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, Notify};

/// Generous bound on any wait, so a broken proxy fails the test instead of hanging it.
const WAIT: Duration = Duration::from_secs(30);

async fn within<F: std::future::Future>(f: F) -> F::Output {
    tokio::time::timeout(WAIT, f).await.expect("timed out")
}

fn free_port() -> u16 {
    StdListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// An app: `/slow` answers only once `release` is notified (and reports its arrival on
/// `arrived`); anything else answers at once.
async fn app(release: Arc<Notify>, arrived: mpsc::Sender<()>) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((s, _)) = listener.accept().await {
            let (release, arrived) = (release.clone(), arrived.clone());
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                    let (release, arrived) = (release.clone(), arrived.clone());
                    async move {
                        if req.uri().path() == "/slow" {
                            let _ = arrived.send(()).await;
                            release.notified().await;
                        }
                        Ok::<_, Infallible>(Response::new(Full::new(Bytes::from("done"))))
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(s), svc)
                    .await;
            });
        }
    });
    addr
}

/// One GET with `Connection: close`; the whole response text, or the error.
async fn get(addr: SocketAddr, path: &str) -> std::io::Result<String> {
    let mut s = TcpStream::connect(addr).await?;
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n").as_bytes())
        .await?;
    let mut text = String::new();
    s.read_to_string(&mut text).await?;
    Ok(text)
}

/// Polls until `check` holds (the synchronisation point of each step), at most [`WAIT`].
async fn until<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let reached = tokio::time::timeout(WAIT, async {
        while !check().await {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    assert!(reached.is_ok(), "never reached: {what}");
}

async fn sigterm(pid: u32) {
    let status = tokio::process::Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .await
        .expect("kill");
    assert!(status.success());
}

#[tokio::test]
async fn sigterm_keeps_serving_through_the_window_then_drains_and_exits_0() {
    let release = Arc::new(Notify::new());
    let (arrived_tx, mut arrived) = mpsc::channel(4);
    let backend = app(release.clone(), arrived_tx).await;

    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("mesh-config.yaml");
    // A window far longer than the test: a second SIGTERM ends it, so no step races a clock.
    std::fs::write(
        &config,
        "spec:\n  sidecar:\n    terminationDrainDuration: 10m\n",
    )
    .unwrap();
    let (admin_port, route_port) = (free_port(), free_port());
    let route: SocketAddr = format!("127.0.0.1:{route_port}").parse().unwrap();
    let admin: SocketAddr = format!("127.0.0.1:{admin_port}").parse().unwrap();
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_mesh-proxy"))
        .arg("run")
        .arg("--mesh-config")
        .arg(&config)
        .args(["--bind", "127.0.0.1", "--threads", "1"])
        .args(["--inbound-port", "0", "--outbound-port", "0"])
        .args(["--admin-port", &admin_port.to_string()])
        .args(["--inbound", &format!("{route}={backend}")])
        .args(["--drain-timeout", "30"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .expect("mesh-proxy");
    let pid = child.id().unwrap();

    until("ready", || async {
        get(admin, "/ready")
            .await
            .is_ok_and(|t| t.starts_with("HTTP/1.1 200"))
    })
    .await;

    // A request in flight when SIGTERM comes.
    let slow = tokio::spawn(get(route, "/slow"));
    within(arrived.recv()).await.unwrap();

    sigterm(pid).await;
    until("/ready is 503", || async {
        get(admin, "/ready")
            .await
            .is_ok_and(|t| t.starts_with("HTTP/1.1 503"))
    })
    .await;
    // In the window: new connections are accepted and served; /live still answers.
    let fast = within(get(route, "/fast")).await.unwrap();
    assert!(fast.starts_with("HTTP/1.1 200"), "{fast}");
    assert!(within(get(admin, "/live"))
        .await
        .unwrap()
        .starts_with("HTTP/1.1 200"));
    assert!(
        child.try_wait().unwrap().is_none(),
        "exited during the window"
    );

    // The second signal ends the window: the listeners close...
    sigterm(pid).await;
    until("route listener closed", || async {
        TcpStream::connect(route).await.is_err()
    })
    .await;
    // ...while the request in flight is still allowed to finish.
    release.notify_one();
    let slow = within(slow).await.unwrap().unwrap();
    assert!(slow.starts_with("HTTP/1.1 200"), "{slow}");
    assert!(slow.ends_with("done"), "{slow}");

    let status = within(child.wait()).await.unwrap();
    assert!(status.success(), "{status}");
}
