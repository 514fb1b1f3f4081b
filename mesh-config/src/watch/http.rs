//! Config-server source: `GET url` once, then long-poll `GET url?wait=N` with `If-None-Match`.
//! The server holds the request until the document changes (200) or the wait ends (304), so a
//! change arrives within a round trip and an idle sidecar costs one request per N seconds.
//! Failures back off from 100 ms to 5 s, jittered, and never end the watch: the last good config
//! stays. The jitter matters when an injector replica goes away: the sidecars it held all fail at
//! the same instant, and without it they would come back to the others in lockstep. A 503 with
//! `Retry-After` (the server is at its long-poll cap, or shutting down) is obeyed, jittered too.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Limited};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tokio::sync::watch;

use super::publish::Publisher;
use super::tls::Connector;
use super::{document_text, Snapshot, WatchError};
use crate::bounded::MAX_DOCUMENT_BYTES;
use crate::{parse, Bound, ConfigError};

const BACKOFF_START: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);
/// Beyond the server's hold time: a request that outlives it is a dead connection.
const GRACE: Duration = Duration::from_secs(15);
const FIRST_FETCH_TIMEOUT: Duration = Duration::from_secs(10);
/// A server without ETags cannot long-poll; fall back to polling at this pace.
const PLAIN_POLL: Duration = Duration::from_secs(5);
/// The body is read up to the document bound and no further: a server (or whatever answers at
/// its address) that streams without end costs the sidecar one bound's worth of memory.
const MAX_BODY: usize = MAX_DOCUMENT_BYTES;

pub(super) struct Options {
    pub(super) wait_secs: u64,
    /// `None`: from `MESH_CONFIG_CA` when the URL is https.
    pub(super) tls: Option<Arc<rustls::ClientConfig>>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            wait_secs: 30,
            tls: None,
        }
    }
}

type HttpClient = Client<Connector, Empty<Bytes>>;

enum Fetched {
    Changed {
        etag: Option<String>,
        body: Bytes,
    },
    /// A document over [`MAX_BODY`]: refused like an invalid one, unread past the bound.
    TooLarge {
        etag: Option<String>,
    },
    NotModified,
    /// 503 with `Retry-After`: the server is full or shutting down and says when to come back.
    /// Not an error of the document: the config in force is still the current one.
    Busy(Duration),
}

/// The longest `Retry-After` obeyed, so a wrong header cannot park a sidecar for long.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(60);

/// `Retry-After` in seconds (the form the injector sends), capped at [`MAX_RETRY_AFTER`].
fn retry_after(headers: &http::HeaderMap) -> Option<Duration> {
    let secs: u64 = headers
        .get(http::header::RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()?;
    Some(Duration::from_secs(secs).min(MAX_RETRY_AFTER))
}

pub(super) async fn start(
    uri: http::Uri,
    options: Options,
) -> Result<watch::Receiver<Arc<Snapshot>>, WatchError> {
    let source_name = uri.to_string();
    let tls = match (uri.scheme_str(), options.tls) {
        (Some("https"), Some(tls)) => Some(tls),
        (Some("https"), None) => Some(super::tls::client_config_from_env()?),
        _ => None,
    };
    let client: HttpClient = Client::builder(TokioExecutor::new()).build(Connector { tls });
    let fetch_error = |message: String| WatchError::Fetch {
        source_name: source_name.clone(),
        message,
    };
    let first = tokio::time::timeout(FIRST_FETCH_TIMEOUT, fetch(&client, &uri, None))
        .await
        .map_err(|_| fetch_error("timed out".into()))?
        .map_err(fetch_error)?;
    let (etag, body) = match first {
        Fetched::Changed { etag, body } => (etag, body),
        Fetched::TooLarge { .. } => {
            return Err(WatchError::Config {
                source_name,
                error: too_large(),
            })
        }
        Fetched::NotModified | Fetched::Busy(_) => {
            return Err(fetch_error(
                "no document (304 or 503) for an unconditional request".into(),
            ))
        }
    };
    let parsed = document_text(&body)
        .and_then(parse)
        .map_err(|error| WatchError::Config {
            source_name: source_name.clone(),
            error,
        })?;
    let (publisher, rx) = Publisher::new(source_name, parsed);
    let long_poll = LongPoll {
        client,
        poll_uri: with_wait(&uri, options.wait_secs),
        uri,
        wait: Duration::from_secs(options.wait_secs),
        publisher,
        etag,
        doc_error: None,
    };
    tokio::spawn(long_poll.run());
    Ok(rx)
}

/// `url?wait=N`, keeping any query the URL already has.
fn with_wait(uri: &http::Uri, secs: u64) -> http::Uri {
    let pq = uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
    let sep = if pq.contains('?') { '&' } else { '?' };
    let mut parts = uri.clone().into_parts();
    parts.path_and_query = format!("{pq}{sep}wait={secs}").parse().ok();
    http::Uri::from_parts(parts).unwrap_or_else(|_| uri.clone())
}

async fn fetch(
    client: &HttpClient,
    uri: &http::Uri,
    etag: Option<&str>,
) -> Result<Fetched, String> {
    let mut req = http::Request::get(uri.clone()).header(http::header::ACCEPT, "application/json");
    if let Some(etag) = etag {
        req = req.header(http::header::IF_NONE_MATCH, etag);
    }
    let req = req.body(Empty::new()).map_err(|e| e.to_string())?;
    let resp = client
        .request(req)
        .await
        .map_err(|e| format!("{e:#}: {}", source_chain(&e)))?;
    let status = resp.status();
    if status == http::StatusCode::NOT_MODIFIED {
        return Ok(Fetched::NotModified);
    }
    if status == http::StatusCode::SERVICE_UNAVAILABLE && etag.is_some() {
        if let Some(after) = retry_after(resp.headers()) {
            return Ok(Fetched::Busy(after));
        }
    }
    if status != http::StatusCode::OK {
        return Err(format!("config server answered {status}"));
    }
    let etag = resp
        .headers()
        .get(http::header::ETAG)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    match Limited::new(resp.into_body(), MAX_BODY).collect().await {
        Ok(body) => Ok(Fetched::Changed {
            etag,
            body: body.to_bytes(),
        }),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => Ok(Fetched::TooLarge { etag }),
        Err(e) => Err(format!("reading the body: {e}")),
    }
}

fn too_large() -> ConfigError {
    ConfigError::Bounds(Bound::Size { limit: MAX_BODY })
}

fn source_chain(e: &dyn std::error::Error) -> String {
    let mut out = Vec::new();
    let mut cur = e.source();
    while let Some(s) = cur {
        out.push(s.to_string());
        cur = s.source();
    }
    out.join(": ")
}

/// A pause drawn uniformly from [d/2, d]: spread out, never longer than the schedule says.
fn jittered(d: Duration) -> Duration {
    d.mul_f64(0.5 + fastrand::f64() / 2.0)
}

struct LongPoll {
    client: HttpClient,
    uri: http::Uri,
    poll_uri: http::Uri,
    wait: Duration,
    publisher: Publisher,
    etag: Option<String>,
    /// The error of the document currently served, if it is invalid (kept across 304s and
    /// restored when a connection error clears).
    doc_error: Option<String>,
}

impl LongPoll {
    async fn run(mut self) {
        let mut backoff = BACKOFF_START;
        loop {
            let (uri, limit) = match &self.etag {
                Some(_) => (&self.poll_uri, self.wait + GRACE),
                None => (&self.uri, FIRST_FETCH_TIMEOUT),
            };
            let result = tokio::select! {
                _ = self.publisher.closed() => return,
                r = tokio::time::timeout(limit, fetch(&self.client, uri, self.etag.as_deref())) => r,
            };
            let outcome = match result {
                Ok(Ok(fetched)) => Ok(fetched),
                Ok(Err(e)) => Err(e),
                Err(_) => Err("request timed out".to_string()),
            };
            match outcome {
                Ok(Fetched::NotModified) => {
                    backoff = BACKOFF_START;
                    self.publisher.set_error(self.doc_error.clone());
                }
                Ok(Fetched::Busy(after)) => {
                    tracing::debug!(?after, "config server busy; polling again later");
                    if self.pause(jittered(after.max(BACKOFF_START))).await {
                        return;
                    }
                }
                Ok(Fetched::Changed { etag, body }) => {
                    backoff = BACKOFF_START;
                    let no_etag = etag.is_none();
                    self.etag = etag;
                    self.apply(&body);
                    if no_etag && self.pause(PLAIN_POLL).await {
                        return;
                    }
                }
                Ok(Fetched::TooLarge { etag }) => {
                    backoff = BACKOFF_START;
                    let no_etag = etag.is_none();
                    self.etag = etag;
                    self.refuse(too_large().to_string());
                    if no_etag && self.pause(PLAIN_POLL).await {
                        return;
                    }
                }
                Err(e) => {
                    self.publisher
                        .set_error(Some(format!("config server {}: {e}", self.uri)));
                    if self.pause(jittered(backoff)).await {
                        return;
                    }
                    backoff = (backoff * 2).min(BACKOFF_MAX);
                }
            }
        }
    }

    fn apply(&mut self, body: &[u8]) {
        match document_text(body).and_then(parse) {
            Ok(parsed) => {
                self.doc_error = None;
                self.publisher.accept(parsed);
            }
            Err(e) => self.refuse(e.to_string()),
        }
    }

    /// The document served now is not applied; the error stays while it is served.
    fn refuse(&mut self, error: String) {
        self.doc_error = Some(error.clone());
        self.publisher.reject(error);
    }

    /// Sleeps; true if every receiver went away meanwhile.
    async fn pause(&self, d: Duration) -> bool {
        tokio::select! {
            _ = self.publisher.closed() => true,
            _ = tokio::time::sleep(d) => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_is_read_in_seconds_and_capped() {
        let h = |v: &str| {
            let mut m = http::HeaderMap::new();
            m.insert(http::header::RETRY_AFTER, v.parse().expect("value"));
            m
        };
        assert_eq!(retry_after(&h("7")), Some(Duration::from_secs(7)));
        assert_eq!(retry_after(&h("86400")), Some(MAX_RETRY_AFTER));
        assert_eq!(retry_after(&h("Fri, 04 Dec 2026 18:00:00 GMT")), None);
        assert_eq!(retry_after(&http::HeaderMap::new()), None);
    }

    #[test]
    fn backoff_is_jittered_within_its_bounds() {
        let d = Duration::from_secs(4);
        let draws: Vec<Duration> = (0..64).map(|_| jittered(d)).collect();
        assert!(draws.iter().all(|p| *p >= d / 2 && *p <= d), "{draws:?}");
        assert!(draws.iter().any(|p| *p != draws[0]), "not all the same");
    }
    use crate::watch::testing::wait_for;
    use std::convert::Infallible;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Mutex;

    use http_body_util::Full;
    use hyper::body::Incoming;
    use hyper::service::service_fn;
    use tokio::net::TcpListener;

    const WAIT: Duration = Duration::from_secs(5);

    /// The config server's wire protocol, in little: a document with a version, held
    /// requests, and counters of what was answered.
    struct Server {
        doc: watch::Sender<(u64, String)>,
        not_modified: AtomicUsize,
        /// Answer this many of the next requests with 503.
        fail_next: AtomicUsize,
        failed: AtomicUsize,
        /// Longest hold, so that a 304 happens within the test.
        max_hold: Duration,
        seen_queries: Mutex<Vec<String>>,
    }

    impl Server {
        fn set(&self, body: &str) {
            self.doc.send_modify(|(v, b)| {
                *v += 1;
                *b = body.to_string();
            });
        }

        async fn handle(
            self: Arc<Self>,
            req: http::Request<Incoming>,
        ) -> http::Response<Full<Bytes>> {
            let query = req.uri().query().unwrap_or("").to_string();
            self.seen_queries.lock().unwrap().push(query.clone());
            if self
                .fail_next
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                .is_ok()
            {
                self.failed.fetch_add(1, Ordering::SeqCst);
                return http::Response::builder()
                    .status(503)
                    .body(Full::default())
                    .unwrap();
            }
            let wait: Option<u64> = query
                .split('&')
                .find_map(|kv| kv.strip_prefix("wait="))
                .and_then(|v| v.parse().ok());
            let inm = req
                .headers()
                .get(http::header::IF_NONE_MATCH)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned);
            let mut rx = self.doc.subscribe();
            let etag = |v: u64| format!("\"v{v}\"");
            let current = rx.borrow_and_update().0;
            if let (Some(wait), Some(inm)) = (wait, inm) {
                if inm == etag(current) {
                    let hold = Duration::from_secs(wait).min(self.max_hold);
                    if tokio::time::timeout(hold, rx.changed()).await.is_err() {
                        self.not_modified.fetch_add(1, Ordering::SeqCst);
                        return http::Response::builder()
                            .status(304)
                            .body(Full::default())
                            .unwrap();
                    }
                }
            }
            let (v, body) = rx.borrow().clone();
            http::Response::builder()
                .header(http::header::ETAG, etag(v))
                .body(Full::new(Bytes::from(body)))
                .unwrap()
        }
    }

    async fn serve(initial: &str) -> (Arc<Server>, std::net::SocketAddr) {
        serve_with(initial, None).await
    }

    async fn serve_with(
        initial: &str,
        tls: Option<tokio_rustls::TlsAcceptor>,
    ) -> (Arc<Server>, std::net::SocketAddr) {
        let server = Arc::new(Server {
            doc: watch::channel((1, initial.to_string())).0,
            not_modified: AtomicUsize::new(0),
            fail_next: AtomicUsize::new(0),
            failed: AtomicUsize::new(0),
            max_hold: Duration::from_millis(300),
            seen_queries: Mutex::new(Vec::new()),
        });
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let s = server.clone();
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let s = s.clone();
                let tls = tls.clone();
                tokio::spawn(async move {
                    let svc = service_fn(move |req| {
                        let s = s.clone();
                        async move { Ok::<_, Infallible>(s.handle(req).await) }
                    });
                    let http = hyper::server::conn::http1::Builder::new();
                    match tls {
                        None => {
                            let _ = http.serve_connection(TokioIo::new(tcp), svc).await;
                        }
                        Some(acceptor) => {
                            if let Ok(stream) = acceptor.accept(tcp).await {
                                let _ = http.serve_connection(TokioIo::new(stream), svc).await;
                            }
                        }
                    }
                });
            }
        });
        (server, addr)
    }

    use hyper_util::rt::TokioIo;

    fn doc(port: u16) -> String {
        format!(r#"{{"spec":{{"observability":{{"tracing":{{"port":{port}}}}}}}}}"#)
    }

    fn port(s: &Snapshot) -> u16 {
        s.config.spec.observability.tracing.port
    }

    async fn wait_until(what: &str, cond: impl Fn() -> bool) {
        let deadline = tokio::time::Instant::now() + WAIT;
        while !cond() {
            assert!(
                tokio::time::Instant::now() < deadline,
                "timed out waiting for {what}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    fn options() -> Options {
        Options {
            wait_secs: 30,
            tls: None,
        }
    }

    #[tokio::test]
    async fn long_poll_sees_304_then_change() {
        let (server, addr) = serve(&doc(9411)).await;
        let uri: http::Uri = format!("http://{addr}/v1/meshconfig").parse().unwrap();
        let mut rx = start(uri, options()).await.unwrap();
        assert_eq!(rx.borrow().generation, 1);
        assert_eq!(port(&rx.borrow()), 9411);
        wait_until("a 304", || server.not_modified.load(Ordering::SeqCst) >= 1).await;
        server.set(&doc(4318));
        let s = wait_for(&mut rx, "port 4318", |s| port(s) == 4318).await;
        assert_eq!(s.generation, 2);
        assert_eq!(s.last_error, None);
        let queries = server.seen_queries.lock().unwrap().clone();
        assert_eq!(queries[0], "");
        assert!(queries[1..].iter().all(|q| q == "wait=30"), "{queries:?}");
    }

    #[tokio::test]
    async fn invalid_document_keeps_last_good() {
        let (server, addr) = serve(&doc(9411)).await;
        let uri: http::Uri = format!("http://{addr}/v1/meshconfig").parse().unwrap();
        let mut rx = start(uri, options()).await.unwrap();
        server.set(&doc(0));
        let s = wait_for(&mut rx, "rejection", |s| s.last_error.is_some()).await;
        assert_eq!(s.generation, 1);
        assert_eq!(port(&s), 9411);
        assert!(s
            .last_error
            .as_deref()
            .unwrap()
            .contains("spec.observability.tracing.port"));
        // The error stays while the server keeps answering 304 for the same bad document.
        let seen = server.not_modified.load(Ordering::SeqCst);
        wait_until("a 304 after the bad document", || {
            server.not_modified.load(Ordering::SeqCst) > seen
        })
        .await;
        assert!(rx.borrow().last_error.is_some());
        server.set(&doc(9412));
        let s = wait_for(&mut rx, "port 9412", |s| port(s) == 9412).await;
        assert_eq!(s.generation, 2);
        assert_eq!(s.last_error, None);
    }

    #[tokio::test]
    async fn errors_back_off_and_recover() {
        let (server, addr) = serve(&doc(9411)).await;
        let uri: http::Uri = format!("http://{addr}/v1/meshconfig").parse().unwrap();
        let mut rx = start(uri, options()).await.unwrap();
        server.fail_next.store(3, Ordering::SeqCst);
        // Nudge the held request so the failures happen now.
        server.set(&doc(9411));
        wait_until("three failures", || {
            server.failed.load(Ordering::SeqCst) == 3
        })
        .await;
        server.set(&doc(9999));
        let s = wait_for(&mut rx, "port 9999", |s| {
            port(s) == 9999 && s.last_error.is_none()
        })
        .await;
        assert_eq!(s.generation, 2);
    }

    #[tokio::test]
    async fn initial_fetch_must_succeed() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        drop(listener);
        let uri: http::Uri = format!("http://{addr}/v1/meshconfig").parse().unwrap();
        assert!(matches!(
            start(uri, options()).await,
            Err(WatchError::Fetch { .. })
        ));

        let (_server, addr) = serve("spec: [").await;
        let uri: http::Uri = format!("http://{addr}/v1/meshconfig").parse().unwrap();
        assert!(matches!(
            start(uri, options()).await,
            Err(WatchError::Config { .. })
        ));
    }

    #[tokio::test]
    async fn a_document_over_the_bound_is_refused_and_the_last_good_kept() {
        let (server, addr) = serve(&doc(9411)).await;
        let uri: http::Uri = format!("http://{addr}/v1/meshconfig").parse().unwrap();
        let mut rx = start(uri, options()).await.unwrap();
        // Valid JSON but for its size: only the bound can refuse it.
        let padded = format!(
            r#"{{"metadata":{{"name":"{}"}},"spec":{{"observability":{{"tracing":{{"port":9999}}}}}}}}"#,
            "x".repeat(MAX_BODY)
        );
        server.set(&padded);
        let s = wait_for(&mut rx, "refusal", |s| s.last_error.is_some()).await;
        assert_eq!((s.generation, port(&s)), (1, 9411));
        let error = s.last_error.clone().unwrap();
        assert!(
            error.contains("larger than the limit of 1048576 bytes"),
            "{error}"
        );
        server.set(&doc(9412));
        let s = wait_for(&mut rx, "port 9412", |s| port(s) == 9412).await;
        assert_eq!((s.generation, s.last_error.clone()), (2, None));
    }

    /// A peer that streams a body without end: the first fetch reads up to the bound, refuses
    /// the document for its size, and closes the connection (the peer's writes then fail).
    #[tokio::test]
    async fn an_endless_body_is_read_only_up_to_the_bound() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let sent = Arc::new(AtomicUsize::new(0));
        let counter = sent.clone();
        let peer = tokio::spawn(async move {
            let (mut tcp, _) = listener.accept().await.unwrap();
            let mut request = [0u8; 1024];
            let _ = tcp.read(&mut request).await.unwrap();
            let head = "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n";
            tcp.write_all(head.as_bytes()).await.unwrap();
            let chunk = format!("4000\r\n{}\r\n", "#".repeat(0x4000));
            while tcp.write_all(chunk.as_bytes()).await.is_ok() {
                counter.fetch_add(0x4000, Ordering::SeqCst);
            }
        });
        let uri: http::Uri = format!("http://{addr}/v1/meshconfig").parse().unwrap();
        let result = tokio::time::timeout(WAIT, start(uri, options()))
            .await
            .expect("the fetch ends at the bound");
        match result {
            Err(WatchError::Config {
                error: ConfigError::Bounds(Bound::Size { limit }),
                ..
            }) => assert_eq!(limit, MAX_DOCUMENT_BYTES),
            other => panic!("expected a size refusal, got {other:?}"),
        }
        tokio::time::timeout(WAIT, peer)
            .await
            .expect("the connection is closed after the refusal")
            .unwrap();
        // What the peer managed to write: the bound, plus what the sockets buffer.
        assert!(sent.load(Ordering::SeqCst) < 64 * MAX_DOCUMENT_BYTES);
    }

    /// A CA, and a server certificate for localhost/127.0.0.1 that it signed.
    fn pki() -> (String, tokio_rustls::TlsAcceptor) {
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let ca_cert = ca_params.self_signed(&ca_key).unwrap();
        let issuer = rcgen::Issuer::new(ca_params, ca_key);
        let key = rcgen::KeyPair::generate().unwrap();
        let params =
            rcgen::CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()])
                .unwrap();
        let cert = params.signed_by(&key, &issuer).unwrap();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(
                vec![cert.der().clone()],
                rustls::pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into()),
            )
            .unwrap();
        (
            ca_cert.pem(),
            tokio_rustls::TlsAcceptor::from(Arc::new(config)),
        )
    }

    #[tokio::test]
    async fn https_with_a_ca_bundle() {
        let (ca_pem, acceptor) = pki();
        let (server, addr) = serve_with(&doc(9411), Some(acceptor)).await;
        let uri: http::Uri = format!("https://127.0.0.1:{}/v1/meshconfig", addr.port())
            .parse()
            .unwrap();
        let tls = super::super::tls::client_config(ca_pem.as_bytes()).unwrap();
        let mut rx = start(
            uri.clone(),
            Options {
                wait_secs: 30,
                tls: Some(tls),
            },
        )
        .await
        .unwrap();
        server.set(&doc(4317));
        let s = wait_for(&mut rx, "port 4317", |s| port(s) == 4317).await;
        assert_eq!(s.generation, 2);

        // A CA that did not sign the server's certificate is refused.
        let (other_ca, _) = pki();
        let tls = super::super::tls::client_config(other_ca.as_bytes()).unwrap();
        assert!(matches!(
            start(
                uri,
                Options {
                    wait_secs: 30,
                    tls: Some(tls)
                }
            )
            .await,
            Err(WatchError::Fetch { .. })
        ));
        assert!(super::super::tls::client_config(b"not pem").is_err());
    }

    #[test]
    fn wait_is_appended_to_the_query() {
        let u: http::Uri = "http://h:1/v1/meshconfig".parse().unwrap();
        assert_eq!(
            with_wait(&u, 30).to_string(),
            "http://h:1/v1/meshconfig?wait=30"
        );
        let u: http::Uri = "http://h:1/v1/meshconfig?mesh=a".parse().unwrap();
        assert_eq!(
            with_wait(&u, 5).to_string(),
            "http://h:1/v1/meshconfig?mesh=a&wait=5"
        );
    }
}
