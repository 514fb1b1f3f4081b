//! The connector for the config server: plain TCP for `http://`, rustls for `https://` with
//! the CA bundle named by `MESH_CONFIG_CA` (the injector's certificate is issued by `mesh
//! install`, not by a public CA, so there is no system-root fallback).

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use hyper_util::client::legacy::connect::{Connected, Connection};
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

use super::WatchError;

pub(super) const CA_ENV: &str = "MESH_CONFIG_CA";

/// Builds the TLS client config from a PEM bundle.
pub(super) fn client_config(ca_pem: &[u8]) -> Result<Arc<rustls::ClientConfig>, WatchError> {
    let mut roots = rustls::RootCertStore::empty();
    let mut reader = ca_pem;
    for cert in rustls_pemfile::certs(&mut reader) {
        let cert = cert.map_err(|e| WatchError::Tls(format!("reading the CA bundle: {e}")))?;
        roots
            .add(cert)
            .map_err(|e| WatchError::Tls(format!("bad CA certificate: {e}")))?;
    }
    if roots.is_empty() {
        return Err(WatchError::Tls("the CA bundle holds no certificate".into()));
    }
    // An explicit provider: the process may link more than one, and then the implicit default
    // would panic.
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| WatchError::Tls(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

/// Reads the bundle named by `MESH_CONFIG_CA`.
pub(super) fn client_config_from_env() -> Result<Arc<rustls::ClientConfig>, WatchError> {
    let path = std::env::var_os(CA_ENV).ok_or_else(|| {
        WatchError::Tls(format!("https needs {CA_ENV} (path of a PEM CA bundle)"))
    })?;
    let pem = std::fs::read(&path)
        .map_err(|e| WatchError::Tls(format!("{}: {e}", path.to_string_lossy())))?;
    client_config(&pem)
}

#[derive(Clone)]
pub(super) struct Connector {
    pub(super) tls: Option<Arc<rustls::ClientConfig>>,
}

impl tower::Service<http::Uri> for Connector {
    type Response = TokioIo<Stream>;
    type Error = io::Error;
    type Future = Pin<Box<dyn Future<Output = io::Result<Self::Response>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: http::Uri) -> Self::Future {
        let tls = self.tls.clone();
        Box::pin(async move {
            let invalid = |m: &str| io::Error::new(io::ErrorKind::InvalidInput, m.to_string());
            let host = uri.host().ok_or_else(|| invalid("no host in URL"))?;
            let host = host
                .trim_start_matches('[')
                .trim_end_matches(']')
                .to_string();
            let https = uri.scheme_str() == Some("https");
            let port = uri.port_u16().unwrap_or(if https { 443 } else { 80 });
            let tcp = TcpStream::connect((host.as_str(), port)).await?;
            let _ = tcp.set_nodelay(true);
            if !https {
                return Ok(TokioIo::new(Stream::Plain(tcp)));
            }
            let config = tls.ok_or_else(|| invalid("https without a TLS config"))?;
            let name = ServerName::try_from(host).map_err(|_| invalid("bad TLS server name"))?;
            let tls = TlsConnector::from(config).connect(name, tcp).await?;
            Ok(TokioIo::new(Stream::Tls(Box::new(tls))))
        })
    }
}

pub(super) enum Stream {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

impl Connection for Stream {
    fn connected(&self) -> Connected {
        Connected::new()
    }
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Tls(s) => Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Tls(s) => Pin::new(s).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_flush(cx),
            Stream::Tls(s) => Pin::new(s).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Tls(s) => Pin::new(s).poll_shutdown(cx),
        }
    }
}
