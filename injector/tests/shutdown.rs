//! The real `mesh-injector` binary stopped with SIGTERM, as the kubelet stops it: a long-poll
//! held at that moment ends at once (503 with Retry-After, so the sidecar goes to another
//! replica) instead of at the end of its wait, `/readyz` turns 503, and the process exits 0.
//! Its log, asked for as JSON on a pipe, is one JSON object per line with no colour codes.

use std::net::{SocketAddr, TcpListener as StdListener};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use tokio::net::TcpStream;

fn free_port() -> u16 {
    StdListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

struct Client {
    addr: SocketAddr,
    tls: Option<tokio_rustls::TlsConnector>,
}

/// One request on `io`; `None` when the exchange fails.
async fn exchange<T>(
    io: T,
    req: Request<Full<Bytes>>,
) -> Option<(StatusCode, http::HeaderMap, Bytes)>
where
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io))
        .await
        .ok()?;
    tokio::spawn(conn);
    let resp = send.send_request(req).await.ok()?;
    let (parts, body) = resp.into_parts();
    let body = body.collect().await.ok()?.to_bytes();
    Some((parts.status, parts.headers, body))
}

impl Client {
    /// One request on a new connection; `None` when the server does not accept it.
    async fn request(
        &self,
        req: Request<Full<Bytes>>,
    ) -> Option<(StatusCode, http::HeaderMap, Bytes)> {
        let tcp = TcpStream::connect(self.addr).await.ok()?;
        match &self.tls {
            Some(c) => {
                let name = ServerName::try_from("localhost").expect("name");
                exchange(c.connect(name, tcp).await.ok()?, req).await
            }
            None => exchange(tcp, req).await,
        }
    }

    async fn get(
        &self,
        path: &str,
        etag: Option<&str>,
    ) -> Option<(StatusCode, http::HeaderMap, Bytes)> {
        let mut b = Request::get(path).header("host", "localhost");
        if let Some(e) = etag {
            b = b.header("if-none-match", e);
        }
        self.request(b.body(Full::default()).expect("request"))
            .await
    }
}

/// Kills the injector if the test fails before it exits by itself.
struct Reaped(Option<std::process::Child>);

impl Drop for Reaped {
    fn drop(&mut self) {
        if let Some(mut c) = self.0.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

#[tokio::test]
async fn sigterm_ends_long_polls_and_exits_zero() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let dir = tempfile::tempdir().expect("tempdir");
    let ck = rcgen::generate_simple_self_signed(vec!["localhost".into()]).expect("rcgen");
    std::fs::write(dir.path().join("tls.crt"), ck.cert.pem()).expect("cert");
    std::fs::write(dir.path().join("tls.key"), ck.signing_key.serialize_pem()).expect("key");
    std::fs::create_dir_all(dir.path().join("state")).expect("state");
    let (port, metrics_port) = (free_port(), free_port());
    let child = Command::new(env!("CARGO_BIN_EXE_mesh-injector"))
        .args(["--backend", "local", "--state-dir"])
        .arg(dir.path().join("state"))
        .arg("--tls-cert")
        .arg(dir.path().join("tls.crt"))
        .arg("--tls-key")
        .arg(dir.path().join("tls.key"))
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .args(["--metrics-listen", &format!("127.0.0.1:{metrics_port}")])
        .args(["--shutdown-delay", "1", "--drain-timeout", "5"])
        .args(["--log-format", "json"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start mesh-injector");
    let pid = child.id();
    let mut child = child;
    let stderr = child.stderr.take().expect("stderr");
    // Read beside the test so the pipe never fills; shown if an assertion fails.
    let log = std::thread::spawn(move || std::io::read_to_string(stderr).unwrap_or_default());
    let mut child = Reaped(Some(child));

    let mut roots = rustls::RootCertStore::empty();
    roots.add(ck.cert.der().clone()).expect("root");
    let config = rustls::ClientConfig::builder()
        .with_root_certificates(Arc::new(roots))
        .with_no_client_auth();
    let https = Client {
        addr: ([127, 0, 0, 1], port).into(),
        tls: Some(tokio_rustls::TlsConnector::from(Arc::new(config))),
    };
    let metrics = Client {
        addr: ([127, 0, 0, 1], metrics_port).into(),
        tls: None,
    };

    let scenario = async {
        // Ready (the local MeshConfig is read before serving).
        loop {
            if let Some((StatusCode::OK, _, _)) = https.get("/readyz", None).await {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let (_, headers, _) = https.get("/v1/meshconfig", None).await.expect("config");
        let etag = headers["etag"].to_str().expect("etag").to_string();
        let held = {
            let https = Client {
                addr: https.addr,
                tls: https.tls.clone(),
            };
            tokio::spawn(async move { https.get("/v1/meshconfig?wait=300", Some(&etag)).await })
        };
        // The synchronisation point: the injector counts the long-poll as held.
        loop {
            if let Some((_, _, text)) = metrics.get("/metrics", None).await {
                if String::from_utf8_lossy(&text).contains("mesh_injector_config_long_polls 1") {
                    break;
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }

        let killed = Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status()
            .expect("kill");
        assert!(killed.success());
        let (status, headers, body) = held.await.expect("task").expect("an answer, not a reset");
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body:?}");
        assert!(headers.contains_key("retry-after"));
        // Within the shutdown delay the listener still answers, and says it is not ready.
        if let Some((status, _, body)) = https.get("/readyz", None).await {
            assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body:?}");
        }
    };
    // Generous: a 300 s long-poll ending within a minute can only be the shutdown's doing.
    tokio::time::timeout(Duration::from_secs(60), scenario)
        .await
        .expect("the held long-poll ended well before its 300 s wait");

    let mut process = child.0.take().expect("child");
    let status = tokio::task::spawn_blocking(move || process.wait())
        .await
        .expect("join")
        .expect("wait");
    let log = log.join().expect("log reader");
    assert!(status.success(), "exit status {status:?}\n{log}");
    assert!(!log.contains('\u{1b}'), "colour codes on a pipe:\n{log}");
    let lines: Vec<serde_json::Value> = log
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    assert!(
        lines.iter().any(|l| l["fields"]["message"]
            .as_str()
            .is_some_and(|m| m.starts_with("shutting down"))),
        "{log}"
    );
}
