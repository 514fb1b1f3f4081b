//! The bounded queue between the data path and one collector's exporter, and the export task
//! behind it.
//!
//! The data path only ever appends to the queue under a lock held for one push: requests never
//! wait on tracing. When the collector is slower than the traffic, or failing, the queue keeps
//! the newest spans and evicts the oldest (counted as `queue_full`): a trace is read soonest
//! after it happened, so when a collector comes back the spans of the last seconds matter more
//! than those of the outage. For the same reason each batch is taken from the newest end.
//!
//! The export thread holds at most one batch (bounded by count and by encoded bytes) out of the
//! queue at a time. A batch that fails is dropped and counted by why (`unreachable`, `timeout`,
//! `closed`, `rejected`), and the next attempt waits a jittered, exponentially growing backoff:
//! a hung collector costs one batch per attempt, not the whole queue, and a failing one is not
//! hammered. New spans keep being accepted meanwhile.
//!
//! A pipeline is retired when the tracing block moves to another collector (or is turned off,
//! or at shutdown): it exports what it holds and its thread ends at once, and a span that
//! finishes later on a long-lived stream goes to its successor instead of keeping it alive.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::Duration;

use prometheus_client::metrics::counter::Counter;
use tokio::sync::{watch, Notify};

use super::backoff::Backoff;
use super::collector::Collector;
use super::export::{BuildError, Exporter};
use super::health::Health;
use super::metrics::TraceMetrics;
use super::span::SpanRecord;
use super::Identity;

/// Spans waiting for export, counting those being exported. With URLs bounded this is a few
/// MiB; [`QUEUE_BYTES`] bounds it whatever the spans carry.
pub const QUEUE_CAPACITY: usize = 4096;
/// Bound on the text the queued spans carry (their URLs) beyond their fixed size, so
/// a burst of long URLs cannot grow the queue past a few MiB either.
pub const QUEUE_BYTES: usize = 8 * 1024 * 1024;
/// Spans per export request: enough to amortise the request and the export thread's wake-up,
/// small enough to keep one export body near 160 KiB. Batches are also bounded by encoded bytes
/// (`batch::MAX_BATCH_BYTES`).
pub const MAX_BATCH: usize = 256;
/// How long a partial batch waits for company; short, so traces show up promptly.
pub const BATCH_DELAY: Duration = Duration::from_millis(100);
/// The export thread's name, as `ps`, `top` and `/proc/PID/task/*/comm` show it.
pub const EXPORT_THREAD: &str = "trace-export";

/// Owns the queue of one exporter. Shared (`Arc`) by every tracing config that points at the
/// same collector; retiring or dropping it flushes the queue and ends the export thread.
#[derive(Debug)]
pub struct Pipeline {
    collector: Collector,
    /// Which exporter this is, counting every one this sidecar built (see `/config`).
    generation: u64,
    queue: Arc<SpanQueue>,
    health: Arc<Health>,
    started: Counter,
    queue_full: Counter,
    /// Spans that ended after this pipeline was retired with no successor (tracing turned off).
    disabled: Counter,
    /// Where spans go once this pipeline is retired.
    successor: OnceLock<Arc<Pipeline>>,
    /// Becomes true when the export task has exported everything and ended.
    done: watch::Receiver<bool>,
}

/// Spans on their way from the data path to the export thread.
#[derive(Debug)]
struct SpanQueue {
    state: Mutex<Queued>,
    /// Wakes the export thread when the queue stops being empty, fills a batch, or closes.
    ready: Notify,
    /// Ends a backoff wait early when the pipeline is retired.
    closed: watch::Sender<bool>,
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
    spans: VecDeque<SpanRecord>,
    /// Text bytes the queued spans carry (see [`footprint`]).
    bytes: usize,
    /// Taken by the export thread and not yet done with: they count against the capacity.
    exporting: usize,
    waiting: Waiting,
    /// Retired: pushes are refused (and go to the successor), the thread ends once empty.
    closed: bool,
}

/// What became of a pushed span. The span comes back by value as it went in; boxing it would
/// allocate once per request.
#[derive(Debug)]
#[allow(clippy::large_enum_variant)]
enum Pushed {
    /// Queued; `evicted` older spans made room for it.
    Queued { evicted: u64 },
    /// The queue is closed: the span is handed back.
    Closed(SpanRecord),
}

impl Pushed {
    #[cfg(test)]
    fn evicted(self) -> u64 {
        match self {
            Pushed::Queued { evicted } => evicted,
            Pushed::Closed(_) => panic!("closed"),
        }
    }
}

/// What the export thread should do next.
#[derive(Debug, PartialEq, Eq)]
enum Next {
    Work,
    /// Parked: wait for a span.
    Idle,
    /// Closed and empty: end.
    Finished,
}

/// The text a span carries beyond its fixed size, for [`QUEUE_BYTES`].
fn footprint(span: &SpanRecord) -> usize {
    span.url_host_path_bytes().0.len()
}

impl Default for SpanQueue {
    fn default() -> Self {
        Self {
            state: Mutex::default(),
            ready: Notify::new(),
            closed: watch::channel(false).0,
        }
    }
}

impl SpanQueue {
    fn lock(&self) -> MutexGuard<'_, Queued> {
        // A panic while holding the lock cannot leave the deque half-pushed; keep going.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Queues a span, evicting the oldest queued ones to stay within the bounds.
    fn push(&self, span: SpanRecord) -> Pushed {
        let size = footprint(&span);
        let mut queued = self.lock();
        if queued.closed {
            return Pushed::Closed(span);
        }
        let mut evicted = 0;
        while (queued.spans.len() + queued.exporting >= QUEUE_CAPACITY
            || queued.bytes + size > QUEUE_BYTES)
            && !queued.spans.is_empty()
        {
            if let Some(old) = queued.spans.pop_front() {
                queued.bytes -= footprint(&old);
                evicted += 1;
            }
        }
        queued.spans.push_back(span);
        queued.bytes += size;
        let wake = match queued.waiting {
            Waiting::Idle => true,
            Waiting::ForBatch => queued.spans.len() == MAX_BATCH,
        };
        queued.waiting = Waiting::ForBatch;
        drop(queued);
        if wake {
            self.ready.notify_one();
        }
        Pushed::Queued { evicted }
    }

    fn len(&self) -> usize {
        self.lock().spans.len()
    }

    /// Parks the export thread if nothing is queued.
    fn next(&self) -> Next {
        let mut queued = self.lock();
        match (queued.spans.is_empty(), queued.closed) {
            (false, _) => Next::Work,
            (true, true) => Next::Finished,
            (true, false) => {
                queued.waiting = Waiting::Idle;
                Next::Idle
            }
        }
    }

    /// Moves up to `max` of the newest spans into `out`.
    fn take_newest(&self, out: &mut Vec<SpanRecord>, max: usize) {
        let mut queued = self.lock();
        let n = queued.spans.len().min(max);
        let from = queued.spans.len() - n;
        let mut bytes = 0;
        for span in queued.spans.drain(from..) {
            bytes += footprint(&span);
            out.push(span);
        }
        queued.bytes -= bytes;
        queued.exporting += n;
    }

    /// Everything still queued, for dropping at the end.
    fn take_all(&self) -> usize {
        let mut queued = self.lock();
        let n = queued.spans.len();
        queued.spans.clear();
        queued.bytes = 0;
        n
    }

    /// `n` taken spans are done with (exported or dropped): room for as many new ones.
    fn done(&self, n: usize) {
        let mut queued = self.lock();
        queued.exporting = queued.exporting.saturating_sub(n);
    }

    fn close(&self) {
        self.lock().closed = true;
        self.closed.send_replace(true);
        self.ready.notify_one();
    }

    fn is_closed(&self) -> bool {
        *self.closed.borrow()
    }
}

impl Pipeline {
    /// Builds the exporter for `collector` and starts its export task on a thread of its own
    /// (with a single-threaded runtime), so encoding and sending never hold up a request
    /// worker. The thread ends once the pipeline is retired or dropped and its queue flushed.
    pub fn start(
        collector: &Collector,
        identity: &Identity,
        metrics: TraceMetrics,
        generation: u64,
    ) -> Result<Self, BuildError> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| BuildError::Runtime(e.to_string()))?;
        let runtime = ExportRuntime(Some(runtime));
        // Built inside the export runtime: its HTTP client and gRPC channel run there.
        let exporter = {
            let _enter = runtime.handle().enter();
            Exporter::build(collector, identity)?
        };
        let queue = Arc::new(SpanQueue::default());
        let health = Arc::new(Health::new(collector));
        let (done_tx, done) = watch::channel(false);
        let protocol = collector.protocol;
        let task = Task {
            exporter,
            queue: queue.clone(),
            metrics: metrics.clone(),
            health: health.clone(),
        };
        std::thread::Builder::new()
            .name(EXPORT_THREAD.into())
            .spawn(move || {
                runtime.block_on(task.run());
                drop(runtime);
                let _ = done_tx.send(true);
            })
            .map_err(|e| BuildError::Thread(e.to_string()))?;
        metrics.exporter_started();
        Ok(Self {
            collector: collector.clone(),
            generation,
            queue,
            health,
            started: metrics.started_counter(protocol),
            queue_full: metrics.dropped_counter(protocol, "queue_full"),
            disabled: metrics.dropped_counter(protocol, "disabled"),
            successor: OnceLock::new(),
            done,
        })
    }

    pub fn collector(&self) -> &Collector {
        &self.collector
    }

    pub fn generation(&self) -> u64 {
        self.generation
    }

    pub fn health(&self) -> &Health {
        &self.health
    }

    /// Counts a sampled request's span as started.
    pub fn span_started(&self) {
        self.started.inc();
    }

    /// Queues a finished span. Never blocks on the exporter: a full queue evicts its oldest
    /// span and counts it. On a retired pipeline the span goes to its successor.
    pub fn send(&self, span: SpanRecord) {
        match self.queue.push(span) {
            Pushed::Queued { evicted: 0 } => {}
            Pushed::Queued { evicted } => {
                self.queue_full.inc_by(evicted);
            }
            Pushed::Closed(span) => match self.successor.get() {
                Some(next) => next.send(span),
                None => {
                    self.disabled.inc();
                }
            },
        }
    }

    /// Stops taking spans: the export task flushes what is queued and ends. Spans sent later
    /// go to `successor` (the pipeline of the new collector), or are dropped and counted.
    pub fn retire(&self, successor: Option<Arc<Pipeline>>) {
        if let Some(next) = successor {
            let _ = self.successor.set(next);
        }
        self.queue.close();
    }

    /// Resolves when the export task has flushed and ended (after the pipeline is retired).
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

/// The export loop of one pipeline.
struct Task {
    exporter: Exporter,
    queue: Arc<SpanQueue>,
    metrics: TraceMetrics,
    health: Arc<Health>,
}

impl Task {
    async fn run(mut self) {
        let protocol = self.exporter.protocol();
        // Spans taken out of the queue and not yet sent: at most one batch's worth.
        let mut pending: Vec<SpanRecord> = Vec::with_capacity(MAX_BATCH);
        let mut backoff = Backoff::default();
        let mut closed_rx = self.queue.closed.subscribe();
        loop {
            if pending.is_empty() {
                match self.queue.next() {
                    Next::Finished => break,
                    Next::Idle => {
                        // A notification sent before this wait is kept as a permit.
                        self.queue.ready.notified().await;
                        continue;
                    }
                    Next::Work => {}
                }
                // Let a partial batch fill up: the span that fills it, or closing, wakes this.
                if !self.queue.is_closed() && self.queue.len() < MAX_BATCH {
                    let _ = tokio::time::timeout(BATCH_DELAY, self.queue.ready.notified()).await;
                }
                self.queue.take_newest(&mut pending, MAX_BATCH);
            }
            let batch = self.exporter.encode(&mut pending, MAX_BATCH);
            if batch.too_large > 0 {
                self.metrics
                    .dropped(protocol, "too_large", batch.too_large as u64);
                self.queue.done(batch.too_large);
            }
            if batch.spans == 0 {
                self.exporter.recycle(batch);
                continue;
            }
            let n = batch.spans as u64;
            let result = self.exporter.send(&batch).await;
            self.exporter.recycle(batch);
            self.queue.done(n as usize);
            match result {
                Ok(sent) => {
                    let rejected = sent.rejected.min(n);
                    self.metrics.exported(protocol, n - rejected);
                    if rejected > 0 {
                        self.metrics.dropped(protocol, "rejected", rejected);
                        self.health.partly_rejected(rejected, &sent.message);
                    }
                    backoff.reset();
                    self.health.succeeded();
                }
                Err(e) => {
                    self.metrics.export_error(protocol, e.kind());
                    self.metrics.dropped(protocol, e.kind(), n);
                    self.health.failed(&e, n as usize);
                    if self.queue.is_closed() {
                        // Retired with a failing collector: nobody waits for a backoff.
                        let rest = pending.len() + self.queue.take_all();
                        self.queue.done(pending.len());
                        pending.clear();
                        self.metrics.dropped(protocol, e.kind(), rest as u64);
                        continue;
                    }
                    let wait = backoff.next(e.retry_after());
                    tokio::select! {
                        _ = tokio::time::sleep(wait) => {}
                        _ = closed_rx.wait_for(|closed| *closed) => {}
                    }
                }
            }
        }
        tracing::debug!(collector = %self.exporter.collector, "span pipeline flushed and closed");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::trace::Direction;

    fn span() -> SpanRecord {
        span_to("http://b/")
    }

    fn span_to(uri: &str) -> SpanRecord {
        let (parts, _) = http::Request::get(uri).body(()).unwrap().into_parts();
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
    fn a_full_queue_evicts_its_oldest_spans_and_batches_take_the_newest() {
        let queue = SpanQueue::default();
        for i in 0..QUEUE_CAPACITY {
            assert_eq!(queue.push(span_to(&format!("http://b/{i}"))).evicted(), 0);
        }
        assert_eq!(
            queue.push(span_to("http://b/fresh")).evicted(),
            1,
            "evicts one"
        );
        assert_eq!(queue.len(), QUEUE_CAPACITY);
        let mut taken = Vec::new();
        queue.take_newest(&mut taken, MAX_BATCH);
        assert_eq!(taken.len(), MAX_BATCH);
        assert_eq!(taken.last().unwrap().path(), "/fresh", "newest first");
        assert!(
            taken.iter().all(|s| s.path() != "/0"),
            "{:?}",
            taken[0].path()
        );
        // Spans held by the export thread count against the capacity.
        assert_eq!(queue.push(span()).evicted(), 1);
        queue.done(MAX_BATCH);
        for _ in 0..MAX_BATCH {
            assert_eq!(queue.push(span()).evicted(), 0);
        }
        assert_eq!(queue.push(span()).evicted(), 1);
    }

    #[test]
    fn queued_text_is_bounded_by_bytes() {
        let queue = SpanQueue::default();
        // URLs at the largest `maxUrlTagLength`: 3 000 of them would hold ~24 MiB.
        let long = format!("http://b/{}", "x".repeat(60 * 1024));
        let (parts, _) = http::Request::get(&long).body(()).unwrap().into_parts();
        let addr = "10.0.0.1:80".parse().unwrap();
        let max_url = *mesh_config::MAX_URL_TAG_LENGTH_RANGE.end() as usize;
        let mut evicted = 0;
        for _ in 0..3000 {
            let span = SpanRecord::begin_limited(
                Direction::Inbound,
                &parts,
                trace_context::SpanIds::new_root(),
                false,
                addr,
                addr,
                max_url,
            );
            evicted += queue.push(span).evicted();
        }
        let held = queue.lock().bytes;
        assert!(held <= QUEUE_BYTES, "{held}");
        assert!(evicted > 1500, "{evicted}");
        assert_eq!(queue.len() as u64, 3000 - evicted);
    }

    #[test]
    fn a_closed_queue_hands_the_span_back() {
        let queue = SpanQueue::default();
        queue.push(span()).evicted();
        queue.close();
        assert!(matches!(queue.push(span()), Pushed::Closed(_)));
        assert_eq!(queue.next(), Next::Work, "flushes what it holds first");
        assert_eq!(queue.take_all(), 1);
        assert_eq!(queue.next(), Next::Finished);
    }

    async fn woken(queue: &SpanQueue) -> bool {
        tokio::time::timeout(Duration::from_millis(50), queue.ready.notified())
            .await
            .is_ok()
    }

    #[tokio::test]
    async fn an_idle_export_thread_wakes_for_the_first_span_a_busy_one_for_a_full_batch() {
        let queue = SpanQueue::default();
        assert_eq!(queue.next(), Next::Idle);
        queue.push(span()).evicted();
        assert!(woken(&queue).await, "the first span wakes an idle thread");
        assert_eq!(queue.next(), Next::Work, "not idle while spans wait");
        for _ in 1..MAX_BATCH - 1 {
            queue.push(span()).evicted();
        }
        assert!(
            !woken(&queue).await,
            "a partial batch waits for its deadline"
        );
        queue.push(span()).evicted();
        assert!(woken(&queue).await, "the span that fills a batch wakes");
        queue.take_newest(&mut Vec::new(), usize::MAX);
        queue.push(span()).evicted();
        assert!(!woken(&queue).await, "a busy thread is not woken per span");
        queue.take_newest(&mut Vec::new(), usize::MAX);
        assert_eq!(queue.next(), Next::Idle);
        queue.close();
        assert!(queue.is_closed());
        tokio::time::timeout(Duration::from_secs(5), queue.ready.notified())
            .await
            .expect("woken by close");
    }
}
