//! The app's rewritten Kubernetes probes, answered by the sidecar.
//!
//! Once `mesh-init` redirects inbound traffic, the kubelet's probes would pass through the
//! proxy like any other request. So the injector points HTTP probes at 15901 (liveness), 15902
//! (readiness), 15903 (startup) and TCP probes at 15904, each under
//! `/app-health/<container>/<kind>`, and records the original target in `MESH_APP_PROBES`. Here
//! each such GET is turned back into the probe the kubelet would have made, and its result is
//! answered: the app's own status code for HTTP probes, 200 or 503 for TCP probes.
//!
//! The probe's own connection is not intercepted: the sidecar runs as UID 1500, which the
//! iptables rules exclude, so connecting directly reaches the app.

use std::collections::HashMap;
use std::ffi::OsString;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::header::{HeaderName, HeaderValue, ACCEPT, CONNECTION, HOST, USER_AGENT};
use http::uri::PathAndQuery;
use http::{HeaderMap, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use serde::Deserialize;
use tokio::net::{TcpListener, TcpStream};

use crate::config::ConfigRx;
use crate::shutdown::Watch;

/// The sidecar env the injector writes the original probes into.
pub const ENV: &str = "MESH_APP_PROBES";

pub const LIVENESS_PORT: u16 = 15901;
pub const READINESS_PORT: u16 = 15902;
pub const STARTUP_PORT: u16 = 15903;
pub const TCP_PORT: u16 = 15904;

/// Bounds one probe of the app, connect to last body byte. The kubelet enforces the probe's own
/// `timeoutSeconds` (1 s by default) on its side; this only keeps a hung app from holding
/// sidecar connections forever, so it is generous enough for any timeout a pod would set.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(10);

/// The kubelet keeps at most 10 KiB of a probe's body for its events; forwarding more would
/// only cost memory.
const MAX_BODY: usize = 10 * 1024;

/// What the kubelet would have probed, as the injector recorded it (`probes::Original` there).
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", tag = "type", deny_unknown_fields)]
pub enum Original {
    Http {
        #[serde(default)]
        scheme: Scheme,
        port: u16,
        #[serde(default = "root_path")]
        path: String,
        #[serde(default)]
        host: Option<String>,
        #[serde(default)]
        headers: Vec<(String, String)>,
    },
    Tcp {
        port: u16,
        #[serde(default)]
        host: Option<String>,
    },
}

fn root_path() -> String {
    "/".into()
}

/// Spelled as in the Pod spec's `httpGet.scheme`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
pub enum Scheme {
    #[default]
    #[serde(rename = "HTTP")]
    Http,
    #[serde(rename = "HTTPS")]
    Https,
}

/// Why the probes cannot be served; the proxy refuses to start rather than fail every probe.
///
/// Each message is whole on its own line (the cause is in it, not chained), as `mesh-proxy`
/// prints one line per failure.
#[derive(Debug, thiserror::Error)]
pub enum ProbesError {
    #[error("{ENV} is not valid JSON of probes: {0}")]
    Json(serde_json::Error),
    #[error("{ENV} is not valid UTF-8")]
    NotUnicode,
    #[error("{ENV}: {path}: {reason}")]
    Invalid { path: String, reason: String },
    #[error("binding probe listener {addr}: {error}")]
    Bind {
        addr: SocketAddr,
        error: std::io::Error,
    },
}

/// The rewritten probes, keyed by the path the kubelet now asks the sidecar for.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Probes {
    by_path: HashMap<String, Original>,
}

impl Probes {
    /// Reads `MESH_APP_PROBES`; absent or empty means the injector rewrote no probe.
    pub fn from_env() -> Result<Self, ProbesError> {
        Self::from_env_value(std::env::var_os(ENV))
    }

    /// [`Probes::from_env`] on a given value, so tests need not touch the process environment.
    pub fn from_env_value(value: Option<OsString>) -> Result<Self, ProbesError> {
        match value {
            None => Ok(Self::default()),
            Some(v) => {
                let text = v.into_string().map_err(|_| ProbesError::NotUnicode)?;
                if text.trim().is_empty() {
                    Ok(Self::default())
                } else {
                    Self::parse(&text)
                }
            }
        }
    }

    /// Parses the JSON object and checks every header and path now, so that a bad entry stops
    /// the sidecar at start instead of failing the pod's probes later.
    pub fn parse(text: &str) -> Result<Self, ProbesError> {
        let by_path: HashMap<String, Original> =
            serde_json::from_str(text).map_err(ProbesError::Json)?;
        for (path, original) in &by_path {
            let invalid = |reason: String| ProbesError::Invalid {
                path: path.clone(),
                reason,
            };
            if !path.starts_with('/') {
                return Err(invalid("the probe path must start with \"/\"".into()));
            }
            if let Original::Http {
                path: target,
                headers,
                ..
            } = original
            {
                if !target.starts_with('/') || target.parse::<PathAndQuery>().is_err() {
                    return Err(invalid(format!("invalid path {target:?}")));
                }
                for (name, value) in headers {
                    HeaderName::from_bytes(name.as_bytes())
                        .map_err(|_| invalid(format!("invalid header name {name:?}")))?;
                    HeaderValue::from_str(value)
                        .map_err(|_| invalid(format!("invalid value of header {name:?}")))?;
                }
            }
        }
        Ok(Self { by_path })
    }

    pub fn is_empty(&self) -> bool {
        self.by_path.is_empty()
    }

    pub fn get(&self, path: &str) -> Option<&Original> {
        self.by_path.get(path)
    }
}

/// Where and how to serve the probe ports.
#[derive(Clone, Debug)]
pub struct Options {
    /// 0.0.0.0 in a pod: the kubelet probes the pod IP.
    pub bind_ip: IpAddr,
    /// Liveness, readiness, startup, TCP; 0 picks a free port (tests).
    pub ports: [u16; 4],
    /// The pod's IP (`POD_IP`), the address probes without a `host` go to.
    pub pod_ip: Option<IpAddr>,
    pub timeout: Duration,
    /// Source of the header read and idle timeouts (`spec.sidecar`).
    pub config: ConfigRx,
}

impl Options {
    pub fn new(pod_ip: Option<IpAddr>) -> Self {
        Self {
            bind_ip: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            ports: [LIVENESS_PORT, READINESS_PORT, STARTUP_PORT, TCP_PORT],
            pod_ip,
            timeout: PROBE_TIMEOUT,
            config: crate::config::fixed(crate::config::Snapshot::default_config()),
        }
    }
}

/// Binds the four probe ports and answers probes on them in background tasks until `watch`
/// signals shutdown. Returns the bound addresses in the order of `options.ports`.
///
/// With no rewritten probes nothing is bound: sidecars run side by side on one host (`mesh
/// run`, `mesh demo`) must not fight over ports nobody will probe.
///
/// Every port answers every probe path: the path alone names the probe, and the injector
/// points each kind at its own port only so that the kubelet's probes stay apart.
pub async fn serve(
    probes: Probes,
    options: Options,
    watch: Watch,
) -> Result<Vec<SocketAddr>, ProbesError> {
    if probes.is_empty() {
        return Ok(Vec::new());
    }
    let mut listeners = Vec::with_capacity(options.ports.len());
    for port in options.ports {
        let addr = SocketAddr::new(options.bind_ip, port);
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|error| ProbesError::Bind { addr, error })?;
        let bound = listener
            .local_addr()
            .map_err(|error| ProbesError::Bind { addr, error })?;
        listeners.push((listener, bound));
    }
    let state = Arc::new(State {
        config: options.config.clone(),
        probes,
        pod_ip: options.pod_ip,
        timeout: options.timeout,
    });
    let mut addrs = Vec::with_capacity(listeners.len());
    for (listener, addr) in listeners {
        tracing::info!(%addr, "probe listener");
        addrs.push(addr);
        tokio::spawn(accept(listener, state.clone(), watch.clone()));
        // On an IPv6 (or dual-stack) pod the kubelet may probe the pod's IPv6 address. IPv6
        // is optional: a pod without it simply answers on IPv4.
        if options.bind_ip == IpAddr::V4(Ipv4Addr::UNSPECIFIED) {
            let v6 = SocketAddr::new(IpAddr::V6(Ipv6Addr::UNSPECIFIED), addr.port());
            match crate::listener::bind(v6) {
                Ok(l) => {
                    tokio::spawn(accept(l, state.clone(), watch.clone()));
                }
                Err(e) => tracing::debug!(error = %e, "no IPv6 probe listener"),
            }
        }
    }
    Ok(addrs)
}

struct State {
    config: ConfigRx,
    probes: Probes,
    pod_ip: Option<IpAddr>,
    timeout: Duration,
}

/// Answers probes through the shared accept loop and HTTP/1 server, so a slow or silent
/// client is cut by the same header read and idle timeouts as on the proxy listeners.
async fn accept(listener: TcpListener, state: Arc<State>, watch: Watch) {
    crate::server::accept_loop(listener, None, watch, move |stream, _peer, watch| {
        let state = state.clone();
        async move {
            let limits = crate::config::sidecar(&state.config);
            let handler = move |req| {
                let state = state.clone();
                async move { answer(&state, req).await }
            };
            if let Err(e) = crate::server::serve_http1(stream, handler, &limits, watch).await {
                tracing::debug!(error = %e, "probe connection ended with an error");
            }
        }
    })
    .await
}

async fn answer(state: &State, req: Request<Incoming>) -> Response<Full<Bytes>> {
    let Some(original) = state.probes.get(req.uri().path()) else {
        return reply(StatusCode::NOT_FOUND, "no such probe\n".into());
    };
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return reply(StatusCode::METHOD_NOT_ALLOWED, "probes take GET\n".into());
    }
    match original {
        Original::Http {
            scheme,
            port,
            path,
            host,
            headers,
        } => {
            let target = Target::choose(host.as_deref(), state.pod_ip, *port);
            let url = format!("{}://{}{}", scheme.as_str(), target, path);
            let probe = HttpProbe {
                scheme: *scheme,
                target: &target,
                path,
                headers,
                incoming: req.headers(),
            };
            match tokio::time::timeout(state.timeout, probe.run()).await {
                Ok(Ok((status, body))) => reply(status, body),
                Ok(Err(e)) => {
                    tracing::debug!(%url, error = %e, "probe failed");
                    reply(
                        StatusCode::SERVICE_UNAVAILABLE,
                        format!("probe of {url} failed: {e}\n").into(),
                    )
                }
                Err(_) => reply(
                    StatusCode::GATEWAY_TIMEOUT,
                    format!("probe of {url} timed out after {:?}\n", state.timeout).into(),
                ),
            }
        }
        Original::Tcp { port, host } => {
            let target = Target::choose(host.as_deref(), state.pod_ip, *port);
            match tokio::time::timeout(state.timeout, target.connect()).await {
                Ok(Ok(_)) => reply(StatusCode::OK, format!("tcp {target} open\n").into()),
                Ok(Err(e)) => reply(
                    StatusCode::SERVICE_UNAVAILABLE,
                    format!("tcp {target}: {e}\n").into(),
                ),
                Err(_) => reply(
                    StatusCode::SERVICE_UNAVAILABLE,
                    format!("tcp {target}: no answer after {:?}\n", state.timeout).into(),
                ),
            }
        }
    }
}

fn reply(status: StatusCode, body: Bytes) -> Response<Full<Bytes>> {
    let mut res = Response::new(Full::new(body));
    *res.status_mut() = status;
    res
}

impl Scheme {
    fn as_str(self) -> &'static str {
        match self {
            Scheme::Http => "http",
            Scheme::Https => "https",
        }
    }
}

/// The host and port a probe goes to.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Target {
    Ip(SocketAddr),
    Name(String, u16),
}

impl Target {
    /// The probe's own `host` when it set one, as the kubelet would use it. Otherwise the pod
    /// IP: the kubelet would have probed it, and an app bound only to the pod IP must still
    /// pass (such an app does not listen on 127.0.0.1). Loopback is the last resort, for
    /// sidecars started without `POD_IP`, where it reaches apps bound to 0.0.0.0 or localhost.
    fn choose(host: Option<&str>, pod_ip: Option<IpAddr>, port: u16) -> Self {
        match host.map(str::trim).filter(|h| !h.is_empty()) {
            Some(h) => match h.trim_matches(['[', ']']).parse::<IpAddr>() {
                Ok(ip) => Target::Ip(SocketAddr::new(ip, port)),
                Err(_) => Target::Name(h.to_owned(), port),
            },
            None => Target::Ip(SocketAddr::new(
                pod_ip.unwrap_or(IpAddr::V4(Ipv4Addr::LOCALHOST)),
                port,
            )),
        }
    }

    async fn connect(&self) -> std::io::Result<TcpStream> {
        let stream = match self {
            Target::Ip(addr) => TcpStream::connect(addr).await?,
            Target::Name(host, port) => TcpStream::connect((host.as_str(), *port)).await?,
        };
        let _ = stream.set_nodelay(true);
        Ok(stream)
    }

    fn host(&self) -> String {
        match self {
            Target::Ip(addr) => addr.ip().to_string(),
            Target::Name(host, _) => host.clone(),
        }
    }
}

impl fmt::Display for Target {
    /// `host:port`, with IPv6 in brackets: the form of a URL authority and a Host header.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Target::Ip(addr) => write!(f, "{addr}"),
            Target::Name(host, port) => write!(f, "{host}:{port}"),
        }
    }
}

/// Why an HTTP probe got no answer from the app.
#[derive(Debug, thiserror::Error)]
enum ProbeFailure {
    #[error("connect: {0}")]
    Connect(#[source] std::io::Error),
    #[error("{0}")]
    Tls(String),
    #[error("http: {0}")]
    Http(#[source] hyper::Error),
    #[error("invalid request: {0}")]
    Request(#[source] http::Error),
}

struct HttpProbe<'a> {
    scheme: Scheme,
    target: &'a Target,
    path: &'a str,
    headers: &'a [(String, String)],
    incoming: &'a HeaderMap,
}

impl HttpProbe<'_> {
    /// One GET, as the kubelet makes it: its `User-Agent` and `Accept` (taken from the probe the
    /// kubelet sent us), then the probe's own headers, which may override them and `Host`.
    ///
    /// Only the status and the start of the body come back: the app's headers stay here, so a
    /// redirect's `Location` cannot send the kubelet after a path the sidecar does not serve;
    /// the kubelet counts any 3xx as success, as it does for a redirect it does not follow.
    async fn run(self) -> Result<(StatusCode, Bytes), ProbeFailure> {
        let mut builder = Request::get(self.path)
            .header(HOST, self.target.to_string())
            .header(CONNECTION, "close");
        for name in [USER_AGENT, ACCEPT] {
            if let Some(v) = self.incoming.get(&name) {
                builder = builder.header(name, v.clone());
            }
        }
        let mut req = builder
            .body(Empty::<Bytes>::new())
            .map_err(ProbeFailure::Request)?;
        let mut overridden: Vec<HeaderName> = Vec::new();
        for (name, value) in self.headers {
            // Checked in `Probes::parse`; skipped here rather than trusted blindly.
            let (Ok(name), Ok(value)) = (
                HeaderName::from_bytes(name.as_bytes()),
                HeaderValue::from_str(value),
            ) else {
                continue;
            };
            // Like the kubelet: a probe header replaces the default of the same name, and
            // repeated probe headers all go out.
            if !overridden.contains(&name) {
                req.headers_mut().remove(&name);
                overridden.push(name.clone());
            }
            req.headers_mut().append(name, value);
        }

        let stream = self.target.connect().await.map_err(ProbeFailure::Connect)?;
        let res = match self.scheme {
            Scheme::Http => send(TokioIo::new(stream), req).await?,
            Scheme::Https => {
                let tls = tls::connect(&self.target.host(), stream)
                    .await
                    .map_err(ProbeFailure::Tls)?;
                send(TokioIo::new(tls), req).await?
            }
        };
        let status = res.status();
        let mut body = res.into_body();
        let mut kept = BytesMut::new();
        while kept.len() < MAX_BODY {
            match body.frame().await {
                Some(Ok(frame)) => {
                    if let Some(data) = frame.data_ref() {
                        let room = MAX_BODY - kept.len();
                        kept.extend_from_slice(&data[..data.len().min(room)]);
                    }
                }
                // The status is the verdict; a body cut short does not change it.
                Some(Err(_)) | None => break,
            }
        }
        Ok((status, kept.freeze()))
    }
}

async fn send<T>(io: T, req: Request<Empty<Bytes>>) -> Result<Response<Incoming>, ProbeFailure>
where
    T: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let (mut sender, conn) = hyper::client::conn::http1::handshake(io)
        .await
        .map_err(ProbeFailure::Http)?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    sender.send_request(req).await.map_err(ProbeFailure::Http)
}

/// HTTPS probes, verified as the kubelet verifies them: not at all. The kubelet skips
/// certificate verification for probes, so apps with self-signed or internal certificates
/// pass; the probe checks health, not identity. Signatures are still checked, so the handshake
/// is a real one.
mod tls {
    use std::sync::{Arc, OnceLock};

    use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
    use rustls::crypto::WebPkiSupportedAlgorithms;
    use rustls::pki_types::{CertificateDer, IpAddr, ServerName, UnixTime};
    use rustls::{DigitallySignedStruct, SignatureScheme};
    use tokio::net::TcpStream;

    pub(super) type Stream = tokio_rustls::client::TlsStream<TcpStream>;

    pub(super) async fn connect(host: &str, stream: TcpStream) -> Result<Stream, String> {
        let config = config()?;
        let name = match host.parse::<std::net::IpAddr>() {
            Ok(ip) => ServerName::IpAddress(IpAddr::from(ip)),
            Err(_) => ServerName::try_from(host.to_owned())
                .map_err(|e| format!("tls: server name {host:?}: {e}"))?,
        };
        tokio_rustls::TlsConnector::from(config)
            .connect(name, stream)
            .await
            .map_err(|e| format!("tls: {e}"))
    }

    /// Built once: every probe of the pod shares it.
    fn config() -> Result<Arc<rustls::ClientConfig>, String> {
        static CONFIG: OnceLock<Result<Arc<rustls::ClientConfig>, String>> = OnceLock::new();
        CONFIG
            .get_or_init(|| {
                // An explicit provider: the process may link more than one, and then the
                // implicit default would panic.
                let provider = Arc::new(rustls::crypto::ring::default_provider());
                let verifier = Arc::new(AnyCertificate {
                    algorithms: provider.signature_verification_algorithms,
                });
                let config = rustls::ClientConfig::builder_with_provider(provider)
                    .with_safe_default_protocol_versions()
                    .map_err(|e| format!("tls: {e}"))?
                    .dangerous()
                    .with_custom_certificate_verifier(verifier)
                    .with_no_client_auth();
                Ok(Arc::new(config))
            })
            .clone()
    }

    /// Accepts any certificate, like the kubelet's probe client (`InsecureSkipVerify`).
    #[derive(Debug)]
    struct AnyCertificate {
        algorithms: WebPkiSupportedAlgorithms,
    }

    impl ServerCertVerifier for AnyCertificate {
        fn verify_server_cert(
            &self,
            _end_entity: &CertificateDer<'_>,
            _intermediates: &[CertificateDer<'_>],
            _server_name: &ServerName<'_>,
            _ocsp_response: &[u8],
            _now: UnixTime,
        ) -> Result<ServerCertVerified, rustls::Error> {
            Ok(ServerCertVerified::assertion())
        }

        fn verify_tls12_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
        }

        fn verify_tls13_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
        }

        fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
            self.algorithms.supported_schemes()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Snapshot;
    use crate::shutdown::Shutdown;
    use std::convert::Infallible;
    use std::sync::Mutex;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A tiny app: `/ok` 200, `/fail` 500, `/moved` 302, `/slow` never answers; every request's
    /// headers are recorded.
    async fn app() -> (SocketAddr, Arc<Mutex<Vec<HeaderMap>>>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind app");
        let addr = listener.local_addr().expect("addr");
        let seen = Arc::new(Mutex::new(Vec::new()));
        let record = seen.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let record = record.clone();
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                        record.lock().expect("lock").push(req.headers().clone());
                        async move {
                            let (status, body) = match req.uri().path() {
                                "/ok" => (StatusCode::OK, "fine"),
                                "/fail" => (StatusCode::INTERNAL_SERVER_ERROR, "broken"),
                                "/moved" => (StatusCode::FOUND, ""),
                                "/slow" => {
                                    std::future::pending::<()>().await;
                                    unreachable!()
                                }
                                _ => (StatusCode::NOT_FOUND, ""),
                            };
                            let mut res = Response::new(Full::new(Bytes::from(body)));
                            *res.status_mut() = status;
                            if status == StatusCode::FOUND {
                                res.headers_mut()
                                    .insert("location", HeaderValue::from_static("/login"));
                            }
                            Ok::<_, Infallible>(res)
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        (addr, seen)
    }

    /// A port nothing listens on: bound, then released.
    async fn closed_port() -> u16 {
        let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        l.local_addr().expect("addr").port()
    }

    fn test_options(timeout: Duration) -> Options {
        Options {
            bind_ip: IpAddr::V4(Ipv4Addr::LOCALHOST),
            ports: [0; 4],
            pod_ip: Some(IpAddr::V4(Ipv4Addr::LOCALHOST)),
            timeout,
            config: crate::config::fixed(Snapshot::default_config()),
        }
    }

    async fn start(json: &str, timeout: Duration) -> (Vec<SocketAddr>, Shutdown) {
        let probes = Probes::parse(json).expect("probes");
        let shutdown = Shutdown::new();
        let addrs = serve(probes, test_options(timeout), shutdown.watch())
            .await
            .expect("serve");
        assert_eq!(addrs.len(), 4);
        (addrs, shutdown)
    }

    /// GET `path` from a probe port, as the kubelet would.
    async fn get(addr: SocketAddr, path: &str) -> (StatusCode, HeaderMap, String) {
        let stream = TcpStream::connect(addr).await.expect("connect probe port");
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .expect("handshake");
        tokio::spawn(conn);
        let req = Request::get(path)
            .header(HOST, addr.to_string())
            .header(USER_AGENT, "kube-probe/1.33")
            .body(Empty::<Bytes>::new())
            .expect("request");
        let res = sender.send_request(req).await.expect("response");
        let status = res.status();
        let headers = res.headers().clone();
        let body = res.into_body().collect().await.expect("body").to_bytes();
        (status, headers, String::from_utf8_lossy(&body).into_owned())
    }

    #[tokio::test]
    async fn http_probe_answers_the_apps_status() {
        let (app, _) = app().await;
        let json = serde_json::json!({
            "/app-health/web/livez": {"type": "http", "scheme": "HTTP", "port": app.port(), "path": "/ok"},
            "/app-health/web/readyz": {"type": "http", "scheme": "HTTP", "port": app.port(), "path": "/fail"},
            "/app-health/web/startupz": {"type": "http", "port": app.port(), "path": "/moved"},
        })
        .to_string();
        let (addrs, _shutdown) = start(&json, PROBE_TIMEOUT).await;
        let (status, _, body) = get(addrs[0], "/app-health/web/livez").await;
        assert_eq!((status, body.as_str()), (StatusCode::OK, "fine"));
        let (status, _, body) = get(addrs[1], "/app-health/web/readyz").await;
        assert_eq!(
            (status, body.as_str()),
            (StatusCode::INTERNAL_SERVER_ERROR, "broken")
        );
        let (status, headers, _) = get(addrs[2], "/app-health/web/startupz").await;
        assert_eq!(status, StatusCode::FOUND);
        assert!(
            headers.get("location").is_none(),
            "the app's redirect stays inside"
        );
    }

    #[tokio::test]
    async fn app_down_is_503_and_hung_app_is_504() {
        let (app, _) = app().await;
        let down = closed_port().await;
        let json = serde_json::json!({
            "/app-health/web/livez": {"type": "http", "port": down, "path": "/ok"},
            "/app-health/web/readyz": {"type": "http", "port": app.port(), "path": "/slow"},
        })
        .to_string();
        let (addrs, _shutdown) = start(&json, Duration::from_millis(300)).await;
        let (status, _, body) = get(addrs[0], "/app-health/web/livez").await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert!(body.contains(&format!("127.0.0.1:{down}/ok")), "{body}");
        let (status, _, body) = get(addrs[1], "/app-health/web/readyz").await;
        assert_eq!(status, StatusCode::GATEWAY_TIMEOUT);
        assert!(body.contains("timed out"), "{body}");
    }

    #[tokio::test]
    async fn probe_headers_are_forwarded_and_override_defaults() {
        let (app, seen) = app().await;
        let json = serde_json::json!({
            "/app-health/web/livez": {
                "type": "http", "scheme": "HTTP", "port": app.port(), "path": "/ok",
                "headers": [["X-Probe", "one"], ["X-Probe", "two"], ["Host", "web.example"]]
            },
        })
        .to_string();
        let (addrs, _shutdown) = start(&json, PROBE_TIMEOUT).await;
        let (status, _, _) = get(addrs[0], "/app-health/web/livez").await;
        assert_eq!(status, StatusCode::OK);
        let seen = seen.lock().expect("lock");
        let headers = seen.last().expect("the app was probed");
        let values: Vec<_> = headers.get_all("x-probe").iter().collect();
        assert_eq!(values, ["one", "two"]);
        assert_eq!(
            headers.get_all(HOST).iter().collect::<Vec<_>>(),
            ["web.example"]
        );
        assert_eq!(
            headers.get(USER_AGENT).expect("user-agent"),
            "kube-probe/1.33"
        );
    }

    #[tokio::test]
    async fn host_header_defaults_to_the_target() {
        let (app, seen) = app().await;
        let json = serde_json::json!({
            "/app-health/web/livez": {"type": "http", "port": app.port(), "path": "/ok"},
        })
        .to_string();
        let (addrs, _shutdown) = start(&json, PROBE_TIMEOUT).await;
        assert_eq!(
            get(addrs[3], "/app-health/web/livez").await.0,
            StatusCode::OK
        );
        let seen = seen.lock().expect("lock");
        let host = seen.last().expect("probed").get(HOST).cloned();
        assert_eq!(host, HeaderValue::from_str(&app.to_string()).ok());
    }

    #[tokio::test]
    async fn tcp_probe_is_200_when_the_port_accepts_else_503() {
        let up = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let down = closed_port().await;
        let json = serde_json::json!({
            "/app-health/db/livez": {"type": "tcp", "port": up.local_addr().expect("addr").port()},
            "/app-health/db/readyz": {"type": "tcp", "port": down, "host": "127.0.0.1"},
        })
        .to_string();
        let (addrs, _shutdown) = start(&json, PROBE_TIMEOUT).await;
        assert_eq!(
            get(addrs[3], "/app-health/db/livez").await.0,
            StatusCode::OK
        );
        let (status, _, body) = get(addrs[3], "/app-health/db/readyz").await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert!(body.contains(&format!("127.0.0.1:{down}")), "{body}");
    }

    #[tokio::test]
    async fn unknown_path_is_404() {
        let json = r#"{"/app-health/db/livez": {"type": "tcp", "port": 1}}"#;
        let (addrs, _shutdown) = start(json, PROBE_TIMEOUT).await;
        assert_eq!(
            get(addrs[0], "/app-health/db/readyz").await.0,
            StatusCode::NOT_FOUND
        );
        assert_eq!(get(addrs[0], "/").await.0, StatusCode::NOT_FOUND);
    }

    /// An HTTPS app with a self-signed certificate for a name the probe does not use.
    async fn tls_app() -> SocketAddr {
        let key = rcgen::KeyPair::generate().expect("key");
        let cert = rcgen::CertificateParams::new(vec!["app.invalid".to_string()])
            .expect("params")
            .self_signed(&key)
            .expect("cert");
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_no_client_auth()
            .with_single_cert(
                vec![cert.der().clone()],
                rustls::pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into()),
            )
            .expect("server config");
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(stream).await else {
                        return;
                    };
                    let svc = hyper::service::service_fn(|req: Request<Incoming>| async move {
                        let status = if req.uri().path() == "/ok" {
                            StatusCode::NO_CONTENT
                        } else {
                            StatusCode::SERVICE_UNAVAILABLE
                        };
                        let mut res = Response::new(Full::new(Bytes::new()));
                        *res.status_mut() = status;
                        Ok::<_, Infallible>(res)
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(tls), svc)
                        .await;
                });
            }
        });
        addr
    }

    #[tokio::test]
    async fn https_probe_skips_certificate_verification() {
        let tls = tls_app().await;
        let (plain, _) = app().await;
        let json = serde_json::json!({
            "/app-health/web/livez": {"type": "http", "scheme": "HTTPS", "port": tls.port(), "path": "/ok"},
            "/app-health/web/readyz": {"type": "http", "scheme": "HTTPS", "port": tls.port(), "path": "/not-ready"},
            "/app-health/web/startupz": {"type": "http", "scheme": "HTTPS", "port": plain.port(), "path": "/ok"},
        })
        .to_string();
        let (addrs, _shutdown) = start(&json, PROBE_TIMEOUT).await;
        assert_eq!(
            get(addrs[0], "/app-health/web/livez").await.0,
            StatusCode::NO_CONTENT
        );
        assert_eq!(
            get(addrs[1], "/app-health/web/readyz").await.0,
            StatusCode::SERVICE_UNAVAILABLE
        );
        let (status, _, body) = get(addrs[2], "/app-health/web/startupz").await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert!(body.contains("tls:"), "{body}");
    }

    #[tokio::test]
    async fn shutdown_stops_the_listeners() {
        let json = r#"{"/app-health/db/livez": {"type": "tcp", "port": 1}}"#;
        let (addrs, shutdown) = start(json, PROBE_TIMEOUT).await;
        assert!(shutdown.drain(Duration::from_secs(30)).await);
        for addr in addrs {
            assert!(TcpStream::connect(addr).await.is_err(), "{addr} still open");
        }
    }

    /// A client that sends a request head one byte at a time and never finishes it is cut
    /// after the header read timeout, while a whole request on the same port is answered.
    #[tokio::test]
    async fn slowloris_is_cut_after_the_header_read_timeout() {
        let mut config = mesh_config::MeshConfig::default();
        config.spec.sidecar.header_read_timeout = mesh_config::Duration::from_millis(300);
        let options = Options {
            config: crate::config::fixed(Snapshot {
                config: Arc::new(config),
                ..Snapshot::default_config()
            }),
            ..test_options(PROBE_TIMEOUT)
        };
        let (app, _) = app().await;
        let json = format!(
            r#"{{"/app-health/web/livez": {{"type": "http", "port": {}, "path": "/ok"}}}}"#,
            app.port()
        );
        let shutdown = Shutdown::new();
        let addrs = serve(Probes::parse(&json).unwrap(), options, shutdown.watch())
            .await
            .unwrap();

        let (mut read, mut write) = TcpStream::connect(addrs[0]).await.unwrap().into_split();
        let trickle = tokio::spawn(async move {
            let head = format!(
                "GET /app-health/web/livez HTTP/1.1\r\nX-Slow: {}",
                "a".repeat(4000)
            );
            for byte in head.as_bytes() {
                if write.write_all(&[*byte]).await.is_err() {
                    return true;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            false
        });
        // The close event: EOF or reset, long before the head could have been finished.
        let mut buf = [0u8; 64];
        let closed = tokio::time::timeout(Duration::from_secs(20), read.read(&mut buf))
            .await
            .expect("slow client never cut");
        assert!(matches!(closed, Ok(0) | Err(_)), "{closed:?}");
        trickle.abort();

        // The port still answers a normal probe.
        let (status, _, _) = get(addrs[0], "/app-health/web/livez").await;
        assert_eq!(status, StatusCode::OK);
    }

    #[tokio::test]
    async fn no_probes_binds_nothing() {
        let shutdown = Shutdown::new();
        let addrs = serve(
            Probes::default(),
            test_options(PROBE_TIMEOUT),
            shutdown.watch(),
        )
        .await
        .expect("serve");
        assert!(addrs.is_empty());
    }

    #[test]
    fn parses_what_the_injector_writes() {
        let probes = Probes::parse(
            r#"{
              "/app-health/web/livez": {"type":"http","scheme":"HTTPS","port":8443,"path":"/healthz",
                                        "host":"10.0.0.7","headers":[["X-A","b"]]},
              "/app-health/web/startupz": {"type":"tcp","port":8080}
            }"#,
        )
        .expect("parse");
        assert_eq!(
            probes.get("/app-health/web/livez"),
            Some(&Original::Http {
                scheme: Scheme::Https,
                port: 8443,
                path: "/healthz".into(),
                host: Some("10.0.0.7".into()),
                headers: vec![("X-A".into(), "b".into())],
            })
        );
        assert_eq!(
            probes.get("/app-health/web/startupz"),
            Some(&Original::Tcp {
                port: 8080,
                host: None
            })
        );
    }

    #[test]
    fn absent_or_empty_env_means_no_probes() {
        assert!(Probes::from_env_value(None).expect("absent").is_empty());
        assert!(Probes::from_env_value(Some("".into()))
            .expect("empty")
            .is_empty());
    }

    #[test]
    fn bad_probes_are_clear_errors_naming_the_env() {
        for bad in [
            "{not json",
            r#"["/a"]"#,
            r#"{"/a": {"type": "grpc", "port": 1}}"#,
            r#"{"/a": {"type": "http", "port": 70000}}"#,
            r#"{"/a": {"type": "http", "scheme": "FTP", "port": 1}}"#,
            r#"{"/a": {"type": "http", "port": 1, "path": "healthz"}}"#,
            r#"{"/a": {"type": "http", "port": 1, "headers": [["bad name", "v"]]}}"#,
            r#"{"a": {"type": "tcp", "port": 1}}"#,
        ] {
            let err = Probes::from_env_value(Some(bad.into()))
                .expect_err(bad)
                .to_string();
            assert!(err.starts_with("MESH_APP_PROBES"), "{bad}: {err}");
        }
    }

    #[test]
    fn targets_prefer_the_probe_host_then_the_pod_ip_then_loopback() {
        let pod: IpAddr = "10.1.2.3".parse().expect("ip");
        assert_eq!(
            Target::choose(Some("db.local"), Some(pod), 80).to_string(),
            "db.local:80"
        );
        assert_eq!(
            Target::choose(Some("::1"), None, 80).to_string(),
            "[::1]:80"
        );
        assert_eq!(
            Target::choose(None, Some(pod), 80).to_string(),
            "10.1.2.3:80"
        );
        assert_eq!(
            Target::choose(Some(""), None, 80).to_string(),
            "127.0.0.1:80"
        );
    }
}
