//! Graceful shutdown: a signal every connection watches, and a count of connections in flight.
//!
//! On SIGTERM the listeners stop accepting, HTTP connections finish their requests in flight and
//! close, TCP copies run on; the process waits for all of them, at most the drain timeout.

use std::time::Duration;

use tokio::sync::{mpsc, watch};

/// Long enough for ordinary requests in flight to complete, shorter than Kubernetes' default
/// 30 s termination grace period so the tracer still has time to flush before SIGKILL.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

/// Held by the process: triggers shutdown and waits for the drain.
#[derive(Debug)]
pub struct Shutdown {
    signal: watch::Sender<bool>,
    guard: mpsc::Sender<()>,
    drained: mpsc::Receiver<()>,
}

/// Held by each listener and connection: learns about shutdown; its drop marks the end.
#[derive(Clone, Debug)]
pub struct Watch {
    signal: watch::Receiver<bool>,
    _guard: mpsc::Sender<()>,
}

impl Default for Shutdown {
    fn default() -> Self {
        Self::new()
    }
}

impl Shutdown {
    pub fn new() -> Self {
        let (signal, _) = watch::channel(false);
        let (guard, drained) = mpsc::channel(1);
        Self {
            signal,
            guard,
            drained,
        }
    }

    pub fn watch(&self) -> Watch {
        Watch {
            signal: self.signal.subscribe(),
            _guard: self.guard.clone(),
        }
    }

    /// Signals shutdown and waits until every `Watch` is dropped or `timeout` passes.
    /// Returns whether everything drained in time.
    pub async fn drain(self, timeout: Duration) -> bool {
        let Shutdown {
            signal,
            guard,
            mut drained,
        } = self;
        let _ = signal.send(true);
        drop(guard);
        tokio::time::timeout(timeout, drained.recv()).await.is_ok()
    }
}

impl Watch {
    /// Completes once shutdown has been signalled.
    pub async fn signaled(&mut self) {
        let _ = self.signal.wait_for(|stop| *stop).await;
    }

    pub fn is_signaled(&self) -> bool {
        *self.signal.borrow()
    }
}

/// Completes on SIGTERM or SIGINT (Ctrl-C).
pub async fn signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        if let Ok(mut term) = signal(SignalKind::terminate()) {
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
            return;
        }
    }
    let _ = tokio::signal::ctrl_c().await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn drain_waits_for_watches() {
        let shutdown = Shutdown::new();
        let mut w = shutdown.watch();
        let task = tokio::spawn(async move {
            w.signaled().await;
            drop(w);
        });
        assert!(shutdown.drain(Duration::from_secs(30)).await);
        task.await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn drain_gives_up_after_timeout() {
        let shutdown = Shutdown::new();
        let w = shutdown.watch();
        assert!(!shutdown.drain(Duration::from_secs(1)).await);
        drop(w);
    }
}
