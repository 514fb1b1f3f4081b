//! Opening upstream connections: resolution, the self-loop guard, connect timeout, TCP_NODELAY.

use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use http::Uri;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use crate::config::ConfigRx;
use crate::dest_limit::{Counted, DestCounts};
use crate::error::ConnectError;
use crate::peer::PodAddrs;

/// The default of `spec.sidecar.connectTimeout` (its reason is beside the default there).
pub const CONNECT_TIMEOUT: Duration = mesh_config::Sidecar::DEFAULT_CONNECT_TIMEOUT;

/// The proxy's own listening addresses: connecting to one of them would loop forever.
///
/// A stranger's connection to `POD_IP:15001` is redirected to the inbound listener with that
/// address as its original destination; this guard is what refuses it there, so it must know
/// every address a wildcard listener answers on: loopback (also IPv4-mapped), every pod IP of
/// a dual-stack pod, and the unspecified address.
#[derive(Clone, Debug, Default)]
pub struct SelfAddrs {
    listeners: Vec<SocketAddr>,
    pod: PodAddrs,
}

impl SelfAddrs {
    pub fn new(listeners: Vec<SocketAddr>, pod: PodAddrs) -> Self {
        Self { listeners, pod }
    }

    /// The pod's own addresses.
    pub fn pod(&self) -> &PodAddrs {
        &self.pod
    }

    /// A listener on 0.0.0.0/:: answers on loopback, the pod IPs and every other address of
    /// the host or pod too: one the pod IPs do not name (a dual-stack pod whose sidecar was
    /// given only its IPv4 address) is recognised by asking the kernel whether it is local.
    pub fn contains(&self, dst: SocketAddr) -> bool {
        let ip = dst.ip().to_canonical();
        let mut same_port = self.listeners.iter().filter(|l| l.port() == dst.port());
        same_port.any(|l| {
            l.ip().to_canonical() == ip
                || (l.ip().is_unspecified()
                    && (ip.is_loopback()
                        || ip.is_unspecified()
                        || self.pod.contains(ip)
                        || is_local_address(ip)))
        })
    }
}

/// Whether `ip` is an address of this host (or pod): only those can be bound. Asked only for
/// destinations on one of the proxy's own ports, so the syscall stays off the common path.
fn is_local_address(ip: IpAddr) -> bool {
    std::net::UdpSocket::bind(SocketAddr::new(ip, 0)).is_ok()
}

/// Connects to `addr` unless it is the proxy itself.
pub async fn connect(
    addr: SocketAddr,
    self_addrs: &SelfAddrs,
    timeout: Duration,
) -> Result<TcpStream, ConnectError> {
    if self_addrs.contains(addr) {
        return Err(ConnectError::Loop(addr));
    }
    let stream = tokio::time::timeout(timeout, TcpStream::connect(addr))
        .await
        .map_err(|_| ConnectError::Timeout(addr))?
        .map_err(|source| ConnectError::Unreachable { addr, source })?;
    // Small writes (headers, RPCs) must not wait for Nagle: latency is the product here.
    let _ = stream.set_nodelay(true);
    Ok(stream)
}

/// Resolves `host:port` (IP literals without a lookup) to the first address.
pub async fn resolve(host: &str, port: u16) -> Result<SocketAddr, ConnectError> {
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if let Ok(ip) = host.parse::<IpAddr>() {
        return Ok(SocketAddr::new(ip, port));
    }
    let mut addrs =
        tokio::net::lookup_host((host, port))
            .await
            .map_err(|e| ConnectError::Resolve {
                host: host.to_owned(),
                reason: e.to_string(),
            })?;
    addrs.next().ok_or_else(|| ConnectError::Resolve {
        host: host.to_owned(),
        reason: "no addresses".to_owned(),
    })
}

/// The connector of the pooled HTTP clients and of opaque TCP. The request URI's authority is
/// the destination socket address (not the `Host`), so the pool is keyed by destination.
///
/// Its connect timeout and per-destination cap come from the current MeshConfig at each
/// connect, so changes apply to the next connection.
#[derive(Clone, Debug)]
pub struct Connector {
    self_addrs: Arc<SelfAddrs>,
    /// Upper bound on the configured connect timeout (embedders and tests shorten it).
    timeout_cap: Duration,
    config: ConfigRx,
    open: Arc<DestCounts>,
}

impl Connector {
    /// A connector with the default settings and the connect timeout bounded by `timeout`.
    pub fn new(self_addrs: Arc<SelfAddrs>, timeout: Duration) -> Self {
        Self::with_config(
            self_addrs,
            timeout,
            crate::config::fixed(crate::config::Snapshot::default_config()),
        )
    }

    /// A connector following `config`'s `spec.sidecar`, its connect timeout bounded by `cap`.
    pub fn with_config(self_addrs: Arc<SelfAddrs>, cap: Duration, config: ConfigRx) -> Self {
        Self {
            self_addrs,
            timeout_cap: cap,
            config,
            open: Arc::default(),
        }
    }

    /// The current `spec.sidecar` settings.
    pub fn limits(&self) -> mesh_config::Sidecar {
        crate::config::sidecar(&self.config)
    }

    /// Connections open to `dst` through this connector now.
    pub fn open_to(&self, dst: SocketAddr) -> u32 {
        self.open.open(dst)
    }

    /// Connects to `addr` with the self-loop guard, the connect timeout and the
    /// per-destination cap; the connection holds its slot until dropped.
    pub async fn dial(&self, addr: SocketAddr) -> Result<TokioIo<Counted>, ConnectError> {
        let limits = self.limits();
        let slot = self
            .open
            .acquire(addr, limits.max_connections_per_destination)
            .ok_or(ConnectError::Limit(addr))?;
        let timeout = limits.connect_timeout.get().min(self.timeout_cap);
        let stream = connect(addr, &self.self_addrs, timeout).await?;
        Ok(TokioIo::new(Counted::new(stream, slot)))
    }
}

impl tower::Service<Uri> for Connector {
    type Response = TokioIo<Counted>;
    type Error = ConnectError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let this = self.clone();
        Box::pin(async move {
            let authority = uri.authority().map(|a| a.as_str()).unwrap_or_default();
            let addr: SocketAddr = authority
                .parse()
                .map_err(|_| ConnectError::BadAddress(authority.to_owned()))?;
            this.dial(addr).await
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn self_addrs_cover_wildcard_listeners() {
        let pod: IpAddr = "10.0.0.5".parse().unwrap();
        let s = SelfAddrs::new(
            vec![
                "0.0.0.0:15001".parse().unwrap(),
                "127.0.0.1:9080".parse().unwrap(),
            ],
            PodAddrs::new([pod, "fd00::5".parse().unwrap()]),
        );
        assert!(s.contains("127.0.0.1:15001".parse().unwrap()));
        assert!(s.contains("10.0.0.5:15001".parse().unwrap()));
        assert!(s.contains("[::ffff:127.0.0.1]:15001".parse().unwrap()));
        assert!(s.contains("[::ffff:10.0.0.5]:15001".parse().unwrap()));
        assert!(s.contains("[fd00::5]:15001".parse().unwrap()));
        assert!(s.contains("[::1]:15001".parse().unwrap()));
        assert!(s.contains("0.0.0.0:15001".parse().unwrap()));
        assert!(!s.contains("[fd00::6]:15001".parse().unwrap()));
        assert!(s.contains("127.0.0.1:9080".parse().unwrap()));
        assert!(!s.contains("10.0.0.6:15001".parse().unwrap()));
        assert!(!s.contains("127.0.0.1:8080".parse().unwrap()));
    }

    #[test]
    fn unnamed_local_addresses_are_the_proxy_too() {
        let s = SelfAddrs::new(vec!["0.0.0.0:15001".parse().unwrap()], PodAddrs::default());
        // 127.0.0.1 is local whatever the pod IPs say; 192.0.2.1 (TEST-NET-1) is nobody's.
        assert!(is_local_address("127.0.0.1".parse().unwrap()));
        assert!(!is_local_address("192.0.2.1".parse().unwrap()));
        assert!(!s.contains("192.0.2.1:15001".parse().unwrap()));
        assert!(!s.contains("192.0.2.1:8080".parse().unwrap()));
    }

    #[tokio::test]
    async fn refuses_to_connect_to_itself() {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let s = SelfAddrs::new(vec![addr], PodAddrs::default());
        let err = connect(addr, &s, CONNECT_TIMEOUT).await.unwrap_err();
        assert!(matches!(err, ConnectError::Loop(_)));
    }

    #[tokio::test]
    async fn refused_is_unreachable() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        drop(l);
        let err = connect(addr, &SelfAddrs::default(), CONNECT_TIMEOUT)
            .await
            .unwrap_err();
        assert!(matches!(err, ConnectError::Unreachable { .. }));
        assert_eq!(err.status(), http::StatusCode::BAD_GATEWAY);
    }
}
