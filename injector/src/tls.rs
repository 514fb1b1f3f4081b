//! The serving certificate, re-read when its files change so a rotated Secret takes effect
//! without a restart. The check is a `stat` of two files per handshake: cheap next to the
//! handshake itself, and no watcher thread to keep alive. A half-written or broken pair is
//! refused and the previous certificate kept.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::SystemTime;

use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::ServerConfig;

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("reading {path}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{path}: no PEM certificate found")]
    NoCertificate { path: String },
    #[error("{path}: no PEM private key found")]
    NoKey { path: String },
    #[error("{path}: unsupported private key")]
    BadKey { path: String, source: rustls::Error },
    #[error("TLS configuration: {0}")]
    Config(#[from] rustls::Error),
}

type Stamp = Option<(SystemTime, u64)>;

fn stamp(path: &Path) -> Stamp {
    let m = std::fs::metadata(path).ok()?;
    Some((m.modified().ok()?, m.len()))
}

/// Loads a PEM certificate chain and its private key.
pub fn load(cert: &Path, key: &Path) -> Result<CertifiedKey, TlsError> {
    let read = |p: &Path| {
        std::fs::read(p).map_err(|source| TlsError::Read {
            path: p.display().to_string(),
            source,
        })
    };
    let cert_pem = read(cert)?;
    let certs: Vec<CertificateDer<'static>> = rustls_pemfile::certs(&mut cert_pem.as_slice())
        .filter_map(Result::ok)
        .collect();
    if certs.is_empty() {
        return Err(TlsError::NoCertificate {
            path: cert.display().to_string(),
        });
    }
    let key_pem = read(key)?;
    let der: PrivateKeyDer<'static> = rustls_pemfile::private_key(&mut key_pem.as_slice())
        .ok()
        .flatten()
        .ok_or_else(|| TlsError::NoKey {
            path: key.display().to_string(),
        })?;
    let signing = rustls::crypto::ring::sign::any_supported_type(&der).map_err(|source| {
        TlsError::BadKey {
            path: key.display().to_string(),
            source,
        }
    })?;
    Ok(CertifiedKey::new(certs, signing))
}

struct Current {
    stamps: (Stamp, Stamp),
    key: Arc<CertifiedKey>,
}

#[derive(Debug)]
pub struct ReloadingResolver {
    cert: PathBuf,
    key: PathBuf,
    current: RwLock<Current>,
}

impl std::fmt::Debug for Current {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Current")
            .field("stamps", &self.stamps)
            .finish_non_exhaustive()
    }
}

impl ReloadingResolver {
    /// Fails if the files cannot be loaded now: the injector must not start without a cert.
    pub fn new(cert: impl Into<PathBuf>, key: impl Into<PathBuf>) -> Result<Self, TlsError> {
        let (cert, key) = (cert.into(), key.into());
        let stamps = (stamp(&cert), stamp(&key));
        let loaded = Arc::new(load(&cert, &key)?);
        Ok(Self {
            cert,
            key,
            current: RwLock::new(Current {
                stamps,
                key: loaded,
            }),
        })
    }

    fn refresh(&self) {
        let stamps = (stamp(&self.cert), stamp(&self.key));
        let unchanged = self
            .current
            .read()
            .map(|c| c.stamps == stamps)
            .unwrap_or(true);
        if unchanged {
            return;
        }
        let Ok(mut current) = self.current.write() else {
            return;
        };
        if current.stamps == stamps {
            return;
        }
        match load(&self.cert, &self.key) {
            Ok(k) => {
                tracing::info!(cert = %self.cert.display(), "serving certificate reloaded");
                current.key = Arc::new(k);
                current.stamps = stamps;
            }
            // Not recording the stamps: a pair caught mid-write is retried at the next handshake.
            Err(e) => {
                tracing::warn!(error = %e, "new certificate refused; keeping the previous one")
            }
        }
    }
}

impl ResolvesServerCert for ReloadingResolver {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.refresh();
        self.current.read().ok().map(|c| c.key.clone())
    }
}

/// HTTP/2 and HTTP/1.1 (the API server uses either), TLS 1.2+, the reloading resolver.
pub fn server_config(resolver: Arc<ReloadingResolver>) -> Result<ServerConfig, TlsError> {
    let mut config =
        ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_cert_resolver(resolver);
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(config)
}
