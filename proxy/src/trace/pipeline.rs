//! The bounded queue between the data path and the exporter, and the batch task behind it.
//!
//! The data path only ever appends to the queue under a lock held for one push: when the
//! collector is slow or down the queue fills and spans are dropped and counted, so requests
//! never wait on tracing. The export thread takes the whole queue at once by swapping buffers,
//! and hands the emptied buffer back, so queueing a span never allocates. The batch task and
//! its exporter run on that thread, so encoding and sending a batch never delays a request;
//! when the pipeline is dropped (the config moved on and its last in-flight span ended) it
//! exports what is left to its collector and the thread ends.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use mesh_config::Tracing;
use prometheus_client::metrics::counter::Counter;
use tokio::sync::{watch, Notify};

use super::export::{ExportError, Exporter};
use super::metrics::TraceMetrics;
use super::span::SpanRecord;
use super::Identity;

/// Spans waiting for export; at a few hundred bytes each this bounds memory to about 1 MiB.
pub const QUEUE_CAPACITY: usize = 4096;
/// Spans per export request: enough to amortise the request and the export thread's wake-up,
/// small enough to keep one export body near 160 KiB.
pub const MAX_BATCH: usize = 256;
/// How long a partial batch waits for company; short, so traces show up promptly.
pub const BATCH_DELAY: Duration = Duration::from_millis(100);
/// The export thread's name, as `ps`, `top` and `/proc/PID/task/*/comm` show it.
pub const EXPORT_THREAD: &str = "trace-export";

/// Owns the queue of one exporter; dropping it flushes the queue and ends the export thread.
#[derive(Debug)]
pub struct Pipeline {
    queue: Arc<SpanQueue>,
    started: Counter,
    queue_full: Counter,
    /// Becomes true when the batch task has exported everything and ended.
    done: watch::Receiver<bool>,
}

/// Spans on their way from the data path to the export thread.
#[derive(Debug, Default)]
struct SpanQueue {
    state: Mutex<Queued>,
    /// Wakes the export thread when the queue stops being empty, or closes.
    ready: Notify,
    /// Set when the pipeline is dropped: nothing more will come.
    closed: AtomicBool,
}

/// When a queued span wakes the export thread. A wake-up (a context switch, on a machine
/// whose cores the requests need) costs about as much as encoding a dozen spans, so under
/// load the thread is woken once per full batch and sleeps through the rest.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
enum Waiting {
    /// Exporting, or waiting with a deadline for a batch to fill: only a full batch wakes it.
    #[default]
    ForBatch,
    /// Parked with an empty queue and no deadline: the first span wakes it.
    Idle,
}

#[derive(Debug, Default)]
struct Queued {
    spans: Vec<SpanRecord>,
    /// Taken by the export thread and not yet exported: they count against the capacity, so
    /// at most [`QUEUE_CAPACITY`] spans are held in all.
    exporting: usize,
    waiting: Waiting,
}

impl SpanQueue {
    fn lock(&self) -> MutexGuard<'_, Queued> {
        // A panic while holding the lock cannot leave a Vec half-pushed; keep going.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Queues a span; false when the queue is full.
    fn push(&self, span: SpanRecord) -> bool {
        let mut queued = self.lock();
        if queued.spans.len() + queued.exporting >= QUEUE_CAPACITY {
            return false;
        }
        queued.spans.push(span);
        let wake = match queued.waiting {
            Waiting::Idle => true,
            Waiting::ForBatch => queued.spans.len() == MAX_BATCH,
        };
        queued.waiting = Waiting::ForBatch;
        drop(queued);
        if wake {
            self.ready.notify_one();
        }
        true
    }

    fn len(&self) -> usize {
        self.lock().spans.len()
    }

    /// Marks the export thread idle if nothing is queued; false when spans are waiting.
    fn park_if_empty(&self) -> bool {
        let mut queued = self.lock();
        if queued.spans.is_empty() {
            queued.waiting = Waiting::Idle;
            true
        } else {
            false
        }
    }

    /// Everything queued, swapped for `empty` (a drained buffer that keeps its capacity).
    fn take(&self, empty: Vec<SpanRecord>) -> Vec<SpanRecord> {
        let mut queued = self.lock();
        let spans = std::mem::replace(&mut queued.spans, empty);
        queued.exporting += spans.len();
        spans
    }

    /// `n` taken spans are done with (exported or dropped): room for as many new ones.
    fn done(&self, n: usize) {
        let mut queued = self.lock();
        queued.exporting = queued.exporting.saturating_sub(n);
    }

    fn close(&self) {
        self.closed.store(true, Ordering::Release);
        self.ready.notify_one();
    }

    fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }
}

impl Pipeline {
    /// Builds the exporter for `config` and starts its batch task on a thread of its own (with
    /// a single-threaded runtime), so encoding and sending never hold up a request worker. The
    /// thread ends once the pipeline is dropped and the queue flushed.
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
        let queue = Arc::new(SpanQueue::default());
        let (done_tx, done) = watch::channel(false);
        let protocol = exporter.protocol;
        let task_metrics = metrics.clone();
        let task_queue = queue.clone();
        std::thread::Builder::new()
            .name(EXPORT_THREAD.into())
            .spawn(move || {
                runtime.block_on(run(exporter, task_queue, task_metrics));
                drop(runtime);
                let _ = done_tx.send(true);
            })
            .map_err(|e| ExportError::Build(format!("export thread: {e}")))?;
        Ok(Self {
            queue,
            started: metrics.started_counter(protocol),
            queue_full: metrics.dropped_counter(protocol, "queue_full"),
            done,
        })
    }

    /// Counts a sampled request's span as started.
    pub fn span_started(&self) {
        self.started.inc();
    }

    /// Queues a finished span. Never blocks on the exporter: a full queue drops the span
    /// and counts it.
    pub fn send(&self, span: SpanRecord) {
        if !self.queue.push(span) {
            self.queue_full.inc();
        }
    }

    /// Resolves when the batch task has flushed and ended (after the pipeline is dropped).
    pub fn finished(&self) -> impl std::future::Future<Output = ()> + Send + 'static {
        let mut done = self.done.clone();
        async move {
            let _ = done.wait_for(|d| *d).await;
        }
    }
}

impl Drop for Pipeline {
    fn drop(&mut self) {
        self.queue.close();
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

async fn run(exporter: Exporter, queue: Arc<SpanQueue>, metrics: TraceMetrics) {
    let mut spare = Vec::new();
    loop {
        let closed = queue.is_closed();
        if queue.park_if_empty() {
            if closed {
                break;
            }
            // A notification sent before this wait is kept as a permit, so none is missed.
            queue.ready.notified().await;
            continue;
        }
        // Let a partial batch fill up: the span that fills it, or closing, wakes this early.
        if !closed && queue.len() < MAX_BATCH {
            let _ = tokio::time::timeout(BATCH_DELAY, queue.ready.notified()).await;
        }
        let mut spans = queue.take(spare);
        // Batches of at most MAX_BATCH, evened out: 130 spans go as 65 + 65, not 128 + 2.
        let batches = spans.len().div_ceil(MAX_BATCH);
        for batch in spans.chunks(spans.len().div_ceil(batches.max(1)).max(1)) {
            let n = batch.len() as u64;
            match exporter.export(batch).await {
                Ok(()) => metrics.exported(exporter.protocol, n),
                Err(e) => {
                    tracing::debug!(error = %e, spans = n, protocol = %exporter.protocol, "span export failed");
                    metrics.export_error(exporter.protocol);
                    metrics.dropped(exporter.protocol, "export_failed", n);
                }
            }
            queue.done(batch.len());
        }
        spans.clear();
        spare = spans;
    }
    tracing::debug!(protocol = %exporter.protocol, "span pipeline flushed and closed");
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::trace::Direction;

    fn span() -> SpanRecord {
        let (parts, _) = http::Request::get("http://b/")
            .body(())
            .unwrap()
            .into_parts();
        let addr = "10.0.0.1:80".parse().unwrap();
        SpanRecord::begin(
            Direction::Inbound,
            &parts,
            trace_context::SpanIds::new_root(),
            false,
            addr,
            addr,
        )
    }

    #[test]
    fn spans_being_exported_count_against_the_capacity() {
        let queue = SpanQueue::default();
        for _ in 0..QUEUE_CAPACITY {
            assert!(queue.push(span()));
        }
        assert!(!queue.push(span()), "full");
        let taken = queue.take(Vec::new());
        assert_eq!((taken.len(), queue.len()), (QUEUE_CAPACITY, 0));
        assert!(!queue.push(span()), "still held by the export thread");
        queue.done(MAX_BATCH);
        for _ in 0..MAX_BATCH {
            assert!(queue.push(span()));
        }
        assert!(!queue.push(span()));
    }

    #[test]
    fn the_buffer_handed_back_is_reused() {
        let queue = SpanQueue::default();
        queue.push(span());
        let mut taken = queue.take(Vec::new());
        queue.done(taken.len());
        taken.clear();
        let capacity = taken.capacity();
        queue.push(span());
        let again = queue.take(taken);
        assert_eq!(again.len(), 1);
        assert_eq!(queue.lock().spans.capacity(), capacity);
    }

    async fn woken(queue: &SpanQueue) -> bool {
        tokio::time::timeout(Duration::from_millis(50), queue.ready.notified())
            .await
            .is_ok()
    }

    #[tokio::test]
    async fn an_idle_export_thread_wakes_for_the_first_span_a_busy_one_for_a_full_batch() {
        let queue = SpanQueue::default();
        assert!(queue.park_if_empty());
        queue.push(span());
        assert!(woken(&queue).await, "the first span wakes an idle thread");
        assert!(!queue.park_if_empty(), "not idle while spans wait");
        for _ in 1..MAX_BATCH - 1 {
            queue.push(span());
        }
        assert!(
            !woken(&queue).await,
            "a partial batch waits for its deadline"
        );
        queue.push(span());
        assert!(woken(&queue).await, "the span that fills a batch wakes");
        let _ = queue.take(Vec::new());
        queue.push(span());
        assert!(!woken(&queue).await, "a busy thread is not woken per span");
        let _ = queue.take(Vec::new());
        assert!(queue.park_if_empty());
        queue.close();
        assert!(queue.is_closed());
        tokio::time::timeout(Duration::from_secs(5), queue.ready.notified())
            .await
            .expect("woken by close");
    }
}
