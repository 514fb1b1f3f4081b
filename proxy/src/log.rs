//! Logging to stderr, with the level following the MeshConfig's `sidecar.logLevel` live.

use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{reload, EnvFilter, Registry};

/// Changes the log level of the running process.
#[derive(Clone, Debug)]
pub struct LevelHandle {
    handle: reload::Handle<EnvFilter, Registry>,
    /// `RUST_LOG` was set: the operator's explicit filter wins over the config.
    pinned: bool,
}

impl LevelHandle {
    pub fn set(&self, level: &str) {
        if self.pinned {
            return;
        }
        let _ = self.handle.reload(EnvFilter::new(level));
    }
}

/// Installs the global subscriber at `info` (or `RUST_LOG`).
pub fn init() -> LevelHandle {
    let from_env = std::env::var("RUST_LOG").ok().filter(|v| !v.is_empty());
    let pinned = from_env.is_some();
    let filter = EnvFilter::new(from_env.as_deref().unwrap_or("info"));
    let (filter, handle) = reload::Layer::new(filter);
    let _ = tracing_subscriber::registry()
        .with(filter)
        .with(
            tracing_subscriber::fmt::layer()
                .with_writer(std::io::stderr)
                // Colours only for a person at a terminal, not in collected pod logs.
                .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr())),
        )
        .try_init();
    LevelHandle { handle, pinned }
}
