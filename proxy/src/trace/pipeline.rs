//! The bounded queue between the data path and the exporter, and the batch task behind it.
//!
//! The data path only ever `try_send`s: when the collector is slow or down the queue fills and
//! spans are dropped and counted, so requests never wait on tracing. The batch task runs on the
//! proxy's runtime (no exporter thread, no blocking flush); when the last sender is dropped
//! (the config moved on) it exports what is left to its collector and ends.

use std::time::Duration;

use mesh_config::Protocol;
use tokio::sync::{mpsc, watch};

use super::export::Exporter;
use super::metrics::TraceMetrics;
use super::span::SpanRecord;

/// Spans waiting for export; at a few hundred bytes each this bounds memory to about 1 MiB.
pub const QUEUE_CAPACITY: usize = 4096;
/// Spans per export request: enough to amortise a request, few enough that encoding one batch
/// on a request worker stays well under a millisecond.
pub const MAX_BATCH: usize = 128;
/// How long a partial batch waits for company; short, so traces show up promptly.
pub const BATCH_DELAY: Duration = Duration::from_millis(100);

/// Owns the queue of one exporter; dropping it (and every [`SpanSender`]) flushes and ends it.
#[derive(Debug)]
pub struct Pipeline {
    sender: SpanSender,
    /// Becomes true when the batch task has exported everything and ended.
    done: watch::Receiver<bool>,
}

/// The data path's handle: a non-blocking send that counts drops.
#[derive(Clone, Debug)]
pub struct SpanSender {
    tx: mpsc::Sender<SpanRecord>,
    protocol: Protocol,
    metrics: TraceMetrics,
}

impl SpanSender {
    pub fn send(&self, span: SpanRecord) {
        if self.tx.try_send(span).is_err() {
            self.metrics.dropped(self.protocol, "queue_full", 1);
        }
    }
}

impl Pipeline {
    /// Starts the batch task on the current runtime.
    pub fn spawn(exporter: Exporter, metrics: TraceMetrics) -> Self {
        let (tx, rx) = mpsc::channel(QUEUE_CAPACITY);
        let (done_tx, done) = watch::channel(false);
        let protocol = exporter.protocol;
        let task_metrics = metrics.clone();
        tokio::spawn(async move {
            run(exporter, rx, task_metrics).await;
            let _ = done_tx.send(true);
        });
        let sender = SpanSender {
            tx,
            protocol,
            metrics,
        };
        Self { sender, done }
    }

    pub fn sender(&self) -> SpanSender {
        self.sender.clone()
    }

    /// Resolves when the batch task has flushed and ended (after every sender is dropped).
    pub fn finished(&self) -> impl std::future::Future<Output = ()> + Send + 'static {
        let mut done = self.done.clone();
        async move {
            let _ = done.wait_for(|d| *d).await;
        }
    }
}

async fn run(exporter: Exporter, mut rx: mpsc::Receiver<SpanRecord>, metrics: TraceMetrics) {
    let mut batch = Vec::with_capacity(MAX_BATCH);
    loop {
        // `recv` returns `None` only once every queued span has been received: the flush.
        let Some(first) = rx.recv().await else { break };
        batch.push(first);
        let deadline = tokio::time::sleep(BATCH_DELAY);
        tokio::pin!(deadline);
        let mut closed = false;
        while batch.len() < MAX_BATCH {
            tokio::select! {
                next = rx.recv() => match next {
                    Some(span) => batch.push(span),
                    None => { closed = true; break; }
                },
                _ = &mut deadline => break,
            }
        }
        let n = batch.len() as u64;
        match exporter.export(&batch).await {
            Ok(()) => metrics.exported(exporter.protocol, n),
            Err(e) => {
                tracing::debug!(error = %e, spans = n, protocol = %exporter.protocol, "span export failed");
                metrics.export_error(exporter.protocol);
                metrics.dropped(exporter.protocol, "export_failed", n);
            }
        }
        batch.clear();
        if closed {
            break;
        }
    }
    tracing::debug!(protocol = %exporter.protocol, "span pipeline flushed and closed");
}
