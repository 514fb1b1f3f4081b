//! Turns a config source (a file, or the injector's config endpoint) into a stream of validated
//! configs. A receiver always holds a good config: a bad new version is reported in
//! `last_error` and the previous config stays in force, so a typo never takes a mesh down.

mod file;
mod http;
mod publish;
mod tls;

#[cfg(test)]
pub(crate) mod testing;

use std::path::PathBuf;
use std::sync::Arc;

use tokio::sync::watch;

use crate::{ConfigError, MeshConfig};

/// Where the config comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Source {
    /// A file, watched for changes (any write pattern).
    File(PathBuf),
    /// The config endpoint of `mesh-injector`, watched by long-poll.
    Http(::http::Uri),
}

impl Source {
    /// `http://...` / `https://...` is a config server; anything else is a file path.
    pub fn parse(text: &str) -> Result<Source, WatchError> {
        let text = text.trim();
        if text.is_empty() {
            return Err(WatchError::InvalidSource("empty config source".into()));
        }
        let lower = text.to_ascii_lowercase();
        if lower.starts_with("http://") || lower.starts_with("https://") {
            let uri: ::http::Uri = text
                .parse()
                .map_err(|e| WatchError::InvalidSource(format!("{text}: {e}")))?;
            if uri.host().is_none() {
                return Err(WatchError::InvalidSource(format!("{text}: no host")));
            }
            Ok(Source::Http(uri))
        } else {
            Ok(Source::File(PathBuf::from(text)))
        }
    }
}

impl std::fmt::Display for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Source::File(path) => write!(f, "{}", path.display()),
            Source::Http(uri) => write!(f, "{uri}"),
        }
    }
}

/// The config in force, and what happened to the latest attempt to change it.
#[derive(Clone, Debug, PartialEq)]
pub struct Snapshot {
    pub config: Arc<MeshConfig>,
    /// 1 for the initial config, +1 for each accepted change.
    pub generation: u64,
    /// The file path or URL, or "default".
    pub source: String,
    /// Why the latest version was not applied (the config above is the last good one).
    pub last_error: Option<String>,
    /// Unknown fields of the config in force.
    pub warnings: Vec<String>,
}

impl Snapshot {
    /// The defaults, for a proxy started without `--mesh-config`.
    pub fn default_config() -> Self {
        Snapshot {
            config: Arc::new(MeshConfig::default()),
            generation: 1,
            source: "default".into(),
            last_error: None,
            warnings: Vec::new(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum WatchError {
    #[error("invalid config source: {0}")]
    InvalidSource(String),
    #[error("{source_name}: {error}")]
    Config {
        source_name: String,
        error: ConfigError,
    },
    #[error("{source_name}: {error}")]
    Read {
        source_name: String,
        error: std::io::Error,
    },
    #[error("{source_name}: {message}")]
    Fetch {
        source_name: String,
        message: String,
    },
    #[error("TLS setup for the config server: {0}")]
    Tls(String),
}

/// The text of a document a watcher has read: within the size bound (checked on the bytes, so
/// a read cut at the bound in the middle of a character is refused for its size) and UTF-8.
fn document_text(bytes: &[u8]) -> Result<&str, ConfigError> {
    if bytes.len() > crate::bounded::MAX_DOCUMENT_BYTES {
        return Err(ConfigError::Bounds(crate::Bound::Size {
            limit: crate::bounded::MAX_DOCUMENT_BYTES,
        }));
    }
    std::str::from_utf8(bytes).map_err(|_| ConfigError::Syntax("the document is not UTF-8".into()))
}

/// Loads the initial config (which must be valid) and keeps watching in a background task
/// until every receiver is dropped.
pub async fn watch(source: Source) -> Result<watch::Receiver<Arc<Snapshot>>, WatchError> {
    match source {
        Source::File(path) => file::start(path, file::Options::default()).await,
        Source::Http(uri) => http::start(uri, http::Options::default()).await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sources() {
        assert_eq!(
            Source::parse("/etc/mesh/config.yaml").unwrap(),
            Source::File("/etc/mesh/config.yaml".into())
        );
        assert!(matches!(
            Source::parse("https://mesh-injector.mesh-system.svc:9090/v1/meshconfig").unwrap(),
            Source::Http(_)
        ));
        assert!(matches!(
            Source::parse("HTTP://127.0.0.1:9090/v1/meshconfig").unwrap(),
            Source::Http(_)
        ));
        assert!(Source::parse("").is_err());
        assert!(Source::parse("http://").is_err());
    }

    #[test]
    fn default_snapshot() {
        let s = Snapshot::default_config();
        assert_eq!(s.generation, 1);
        assert_eq!(s.source, "default");
        assert_eq!(*s.config, MeshConfig::default());
    }
}
