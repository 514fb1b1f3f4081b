//! Graceful shutdown: a signal every connection watches, and a count of connections in flight.
//!
//! On SIGTERM the sidecar first keeps serving for the termination drain window with `/ready`
//! at 503 (endpoints converge meanwhile); then the listeners stop accepting, HTTP connections
//! finish their requests in flight and close, TCP copies run on; the process waits for all of
//! them, at most the drain timeout.

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

/// SIGTERM and SIGINT, listened to from creation on: a signal that arrives between two
/// [`Signals::recv`] calls is not lost.
#[derive(Debug)]
pub struct Signals {
    #[cfg(unix)]
    term: Option<tokio::signal::unix::Signal>,
}

impl Signals {
    pub fn new() -> Self {
        Self {
            #[cfg(unix)]
            term: tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok(),
        }
    }

    /// Completes on the next SIGTERM or SIGINT (Ctrl-C).
    pub async fn recv(&mut self) {
        #[cfg(unix)]
        if let Some(term) = &mut self.term {
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
            return;
        }
        let _ = tokio::signal::ctrl_c().await;
    }
}

impl Default for Signals {
    fn default() -> Self {
        Self::new()
    }
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
