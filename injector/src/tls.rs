//! The serving certificate, from one of two places:
//!
//! - files (`--tls-cert`/`--tls-key`), re-read when they change so a rotated Secret volume
//!   takes effect without a restart. The check is a `stat` of two files per handshake: cheap
//!   next to the handshake itself, and no watcher thread to keep alive. A half-written or broken
//!   pair is refused and the previous certificate kept.
//! - memory ([`LiveCert`]), set from the Secret read through the API (no volume lag). The
//!   certificate and the CA bundle handed to injected pods are swapped together, and only after
//!   the certificate verifies against that bundle: a pod is never given a CA that does not
//!   verify the server it will talk to.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::SystemTime;

use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::ServerConfig;

use crate::certs::{self, CertError, Material};

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
    #[error(transparent)]
    Material(#[from] CertError),
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
    let (cert_pem, key_pem) = (read(cert)?, read(key)?);
    load_pem(
        &cert_pem,
        &key_pem,
        &cert.display().to_string(),
        &key.display().to_string(),
    )
}

/// Loads a PEM certificate chain and key held in memory; `cert_name`/`key_name` for errors.
fn load_pem(
    cert_pem: &[u8],
    key_pem: &[u8],
    cert_name: &str,
    key_name: &str,
) -> Result<CertifiedKey, TlsError> {
    let certs: Vec<CertificateDer<'static>> = rustls_pemfile::certs(&mut &cert_pem[..])
        .filter_map(Result::ok)
        .collect();
    if certs.is_empty() {
        return Err(TlsError::NoCertificate {
            path: cert_name.into(),
        });
    }
    let der: PrivateKeyDer<'static> = rustls_pemfile::private_key(&mut &key_pem[..])
        .ok()
        .flatten()
        .ok_or_else(|| TlsError::NoKey {
            path: key_name.into(),
        })?;
    let signing = rustls::crypto::ring::sign::any_supported_type(&der).map_err(|source| {
        TlsError::BadKey {
            path: key_name.into(),
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

/// The certificate and CA bundle in force, replaced as one.
struct Live {
    key: Arc<CertifiedKey>,
    material: Material,
}

/// The serving certificate kept in memory, from the Secret read through the API.
pub struct LiveCert {
    /// The names the certificate must verify for before it is served.
    names: Vec<String>,
    current: RwLock<Arc<Live>>,
}

impl std::fmt::Debug for LiveCert {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LiveCert")
            .field("names", &self.names)
            .finish_non_exhaustive()
    }
}

impl LiveCert {
    pub fn new(material: Material, names: Vec<String>) -> Result<Self, TlsError> {
        let live = Self::check(&material, &names)?;
        Ok(Self {
            names,
            current: RwLock::new(Arc::new(live)),
        })
    }

    fn check(material: &Material, names: &[String]) -> Result<Live, TlsError> {
        certs::verify(material, names, SystemTime::now())?;
        let key = load_pem(
            material.cert_pem.as_bytes(),
            material.key_pem.as_bytes(),
            "tls.crt",
            "tls.key",
        )?;
        Ok(Live {
            key: Arc::new(key),
            material: material.clone(),
        })
    }

    /// Serves `material` from the next handshake on; `Ok(false)` when it is what is served.
    /// Material that does not verify is refused and the current one kept.
    pub fn set(&self, material: &Material) -> Result<bool, TlsError> {
        let same = self
            .current
            .read()
            .map(|c| c.material == *material)
            .unwrap_or(false);
        if same {
            return Ok(false);
        }
        let live = Arc::new(Self::check(material, &self.names)?);
        if let Ok(mut c) = self.current.write() {
            *c = live;
        }
        Ok(true)
    }

    /// The CA bundle that verifies the certificate being served.
    pub fn ca_pem(&self) -> Option<String> {
        self.current
            .read()
            .ok()
            .map(|c| c.material.ca_bundle_pem.clone())
    }
}

impl ResolvesServerCert for LiveCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.current.read().ok().map(|c| c.key.clone())
    }
}

/// HTTP/2 and HTTP/1.1 (the API server uses either), TLS 1.2+, the given certificate source.
pub fn server_config(resolver: Arc<dyn ResolvesServerCert>) -> Result<ServerConfig, TlsError> {
    let mut config =
        ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_cert_resolver(resolver);
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(config)
}
