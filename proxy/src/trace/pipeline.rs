//! The bounded queue between the data path and the exporter, and the batch task behind it.
//!
//! The data path only ever `try_send`s: when the collector is slow or down the queue fills and
//! spans are dropped and counted, so requests never wait on tracing. The batch task and its
//! exporter run on a thread of their own, so encoding and sending a batch never delays a
//! request; when the last sender is dropped (the config moved on) it exports what is left to
//! its collector and the thread ends.

use std::time::Duration;

use mesh_config::Tracing;
use prometheus_client::metrics::counter::Counter;
use tokio::sync::mpsc::error::TryRecvError;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

use super::export::{ExportError, Exporter};
use super::metrics::TraceMetrics;
use super::span::SpanRecord;
use super::Identity;

/// Spans waiting for export; at a few hundred bytes each this bounds memory to about 1 MiB.
pub const QUEUE_CAPACITY: usize = 4096;
/// Spans per export request: enough to amortise a request, few enough that encoding one batch
/// on a request worker stays well under a millisecond.
pub const MAX_BATCH: usize = 128;
/// How long a partial batch waits for company; short, so traces show up promptly.
pub const BATCH_DELAY: Duration = Duration::from_millis(100);
/// How often a partial batch looks at the queue: one wake-up per interval instead of per span,
/// while the queue holds far more than an interval's worth of spans at any realistic rate.
pub const COLLECT_INTERVAL: Duration = Duration::from_millis(10);

/// Owns the queue of one exporter; dropping it (and every [`SpanSender`]) flushes and ends it.
#[derive(Debug)]
pub struct Pipeline {
    sender: SpanSender,
    started: Counter,
    /// Becomes true when the batch task has exported everything and ended.
    done: watch::Receiver<bool>,
}

/// The data path's handle: a non-blocking send that counts drops.
#[derive(Clone, Debug)]
pub struct SpanSender {
    tx: mpsc::Sender<SpanRecord>,
    queue_full: Counter,
}

impl SpanSender {
    pub fn send(&self, span: SpanRecord) {
        if self.tx.try_send(span).is_err() {
            self.queue_full.inc();
        }
    }
}

impl Pipeline {
    /// Builds the exporter for `config` and starts its batch task on a thread of its own (with
    /// a single-threaded runtime), so encoding and sending never hold up a request worker. The
    /// thread ends once the queue is closed and flushed.
    pub fn start(
        config: &Tracing,
        identity: &Identity,
        metrics: TraceMetrics,
    ) -> Result<Self, ExportError> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| ExportError::Build(format!("export runtime: {e}")))?;
        let runtime = ExportRuntime(Some(runtime));
        // Built inside the export runtime: its HTTP client and gRPC channel run there.
        let exporter = {
            let _enter = runtime.handle().enter();
            Exporter::build(config, identity)?
        };
        let (tx, rx) = mpsc::channel(QUEUE_CAPACITY);
        let (done_tx, done) = watch::channel(false);
        let protocol = exporter.protocol;
        let task_metrics = metrics.clone();
        std::thread::Builder::new()
            .name("trace-export".into())
            .spawn(move || {
                runtime.block_on(run(exporter, rx, task_metrics));
                drop(runtime);
                let _ = done_tx.send(true);
            })
            .map_err(|e| ExportError::Build(format!("export thread: {e}")))?;
        let sender = SpanSender {
            tx,
            queue_full: metrics.dropped_counter(protocol, "queue_full"),
        };
        Ok(Self {
            sender,
            started: metrics.started_counter(protocol),
            done,
        })
    }

    /// Counts a sampled request's span as started.
    pub fn span_started(&self) {
        self.started.inc();
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

/// The export thread's runtime. Dropping a runtime blocks, which is refused inside another
/// runtime; this one is shut down without waiting wherever it is dropped.
struct ExportRuntime(Option<tokio::runtime::Runtime>);

impl ExportRuntime {
    fn handle(&self) -> tokio::runtime::Handle {
        match &self.0 {
            Some(rt) => rt.handle().clone(),
            None => unreachable!("the runtime is only taken on drop"),
        }
    }

    /// `Runtime::block_on`: on a current-thread runtime only it drives IO and timers.
    fn block_on<F: std::future::Future>(&self, future: F) -> F::Output {
        match &self.0 {
            Some(rt) => rt.block_on(future),
            None => unreachable!("the runtime is only taken on drop"),
        }
    }
}

impl Drop for ExportRuntime {
    fn drop(&mut self) {
        if let Some(rt) = self.0.take() {
            rt.shutdown_background();
        }
    }
}

async fn run(exporter: Exporter, mut rx: mpsc::Receiver<SpanRecord>, metrics: TraceMetrics) {
    let mut batch = Vec::with_capacity(MAX_BATCH);
    // `recv` returns `None` only once every queued span has been received: the flush.
    while let Some(first) = rx.recv().await {
        batch.push(first);
        let deadline = Instant::now() + BATCH_DELAY;
        // Collect by draining the queue at intervals rather than waking for every span.
        loop {
            let mut closed = false;
            while batch.len() < MAX_BATCH {
                match rx.try_recv() {
                    Ok(span) => batch.push(span),
                    Err(TryRecvError::Empty) => break,
                    Err(TryRecvError::Disconnected) => {
                        closed = true;
                        break;
                    }
                }
            }
            let now = Instant::now();
            if closed || batch.len() >= MAX_BATCH || now >= deadline {
                break;
            }
            tokio::time::sleep(COLLECT_INTERVAL.min(deadline - now)).await;
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
    }
    tracing::debug!(protocol = %exporter.protocol, "span pipeline flushed and closed");
}
