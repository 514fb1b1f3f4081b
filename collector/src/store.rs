//! Where received spans go: kept in memory for tests and the tree printer, and appended to the
//! `--out` file as Zipkin v2 JSON lines whatever protocol they came in by.
//!
//! Memory is bounded so that `mesh collector` can run for days: spans are indexed by trace, and
//! once [`MAX_SPANS_IN_MEMORY`] are held, the traces that were already printed go first (oldest
//! printed first). Only when nothing printed is left to evict are new spans kept out of memory
//! (still written to `--out`, and counted).

use std::collections::{HashMap, VecDeque};
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::Path;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use tokio::sync::watch;

use crate::span::Span;

/// Spans held in memory at most. A span of the mesh's sidecars takes about 1 KiB here, so this
/// bounds a long-running collector at a few hundred MiB at worst.
const MAX_SPANS_IN_MEMORY: usize = 200_000;

/// Eviction frees down to this many held spans, so a full store does not evict on every batch.
const EVICT_TO: usize = MAX_SPANS_IN_MEMORY / 10 * 9;

/// Received spans, shared by every receiver.
#[derive(Debug)]
pub struct Store {
    inner: Mutex<Inner>,
    out: Option<Mutex<BufWriter<File>>>,
    /// Spans received and refused so far: what waiting callers watch.
    counts: watch::Sender<Counts>,
}

/// What a receiver has taken in so far.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    /// Spans received in all: kept, evicted later, or not kept for lack of memory.
    pub received: usize,
    /// Spans refused by validation (the rest of their batch was kept).
    pub rejected: usize,
}

#[derive(Debug)]
struct Inner {
    capacity: usize,
    evict_to: usize,
    traces: HashMap<String, Trace>,
    /// Spans held in `traces`.
    held: usize,
    /// Arrival sequence of the next span, so [`Store::spans`] keeps arrival order.
    next_seq: u64,
    /// Printed traces, oldest first: the eviction order.
    printed: VecDeque<String>,
    /// Spans not kept in memory because nothing printed was left to evict.
    not_kept: u64,
}

#[derive(Debug)]
struct Trace {
    spans: Vec<(u64, Span)>,
    /// When the trace last received a span: it is complete after a quiet period.
    last_seen: Instant,
    /// Whether it is waiting to be reported complete.
    pending: bool,
}

impl Store {
    pub fn new(out: Option<&Path>) -> std::io::Result<Self> {
        Self::with_capacity(out, MAX_SPANS_IN_MEMORY, EVICT_TO)
    }

    fn with_capacity(
        out: Option<&Path>,
        capacity: usize,
        evict_to: usize,
    ) -> std::io::Result<Self> {
        let out = match out {
            Some(path) => Some(Mutex::new(BufWriter::new(
                File::options().create(true).append(true).open(path)?,
            ))),
            None => None,
        };
        Ok(Self {
            inner: Mutex::new(Inner {
                capacity,
                evict_to,
                traces: HashMap::new(),
                held: 0,
                next_seq: 0,
                printed: VecDeque::new(),
                not_kept: 0,
            }),
            out,
            counts: watch::Sender::new(Counts::default()),
        })
    }

    /// Records a batch; an `--out` write failure is logged, never refused to the sender.
    pub fn push(&self, batch: Vec<Span>) {
        if batch.is_empty() {
            return;
        }
        if let Some(out) = &self.out {
            let mut out = out.lock().unwrap_or_else(|p| p.into_inner());
            let result = batch
                .iter()
                .try_for_each(|span| {
                    serde_json::to_writer(&mut *out, span).map_err(std::io::Error::from)?;
                    out.write_all(b"\n")
                })
                .and_then(|()| out.flush());
            if let Err(e) = result {
                tracing::warn!(error = %e, "writing spans to the --out file failed");
            }
        }
        let now = Instant::now();
        let count = batch.len();
        {
            let mut inner = self.lock();
            if inner.held + count > inner.capacity {
                inner.evict_printed();
            }
            for span in batch {
                if inner.held >= inner.capacity {
                    inner.not_kept += 1;
                    if inner.not_kept == 1 {
                        tracing::warn!(
                            capacity = inner.capacity,
                            "span memory full of unprinted traces: later spans go to --out only"
                        );
                    }
                    continue;
                }
                let seq = inner.next_seq;
                inner.next_seq += 1;
                inner.held += 1;
                let trace = inner
                    .traces
                    .entry(span.trace_id.clone())
                    .or_insert_with(|| Trace {
                        spans: Vec::new(),
                        last_seen: now,
                        pending: true,
                    });
                trace.last_seen = now;
                trace.pending = true;
                trace.spans.push((seq, span));
            }
        }
        self.counts.send_modify(|c| c.received += count);
    }

    /// Counts spans a receiver refused.
    pub fn reject(&self, count: usize) {
        self.counts.send_modify(|c| c.rejected += count);
    }

    /// Spans refused by validation so far.
    pub fn rejected(&self) -> usize {
        self.counts.borrow().rejected
    }

    /// Every span held, in arrival order.
    pub fn spans(&self) -> Vec<Span> {
        let inner = self.lock();
        let mut all: Vec<&(u64, Span)> = inner.traces.values().flat_map(|t| &t.spans).collect();
        all.sort_unstable_by_key(|(seq, _)| *seq);
        all.into_iter().map(|(_, span)| span.clone()).collect()
    }

    /// Takes the traces whose last span arrived at least `quiet` ago, each once (until it
    /// receives more), and marks them printed: they are the first to go when memory is full.
    pub fn take_quiet(&self, quiet: Duration) -> Vec<Vec<Span>> {
        let now = Instant::now();
        let mut inner = self.lock();
        let mut done = Vec::new();
        let mut newly_printed = Vec::new();
        for (id, trace) in inner.traces.iter_mut() {
            if trace.pending && now.duration_since(trace.last_seen) >= quiet {
                trace.pending = false;
                newly_printed.push(id.clone());
                done.push(trace.spans.iter().map(|(_, s)| s.clone()).collect());
            }
        }
        inner.printed.extend(newly_printed);
        done
    }

    pub fn subscribe(&self) -> watch::Receiver<Counts> {
        self.counts.subscribe()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A panic elsewhere while holding the lock leaves plain data behind: keep serving it.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Inner {
    /// Drops printed traces, oldest printed first, until at most `evict_to` spans are held.
    /// A printed trace that received more spans since is pending again and stays.
    fn evict_printed(&mut self) {
        while self.held > self.evict_to {
            let Some(id) = self.printed.pop_front() else {
                return;
            };
            if self.traces.get(&id).is_some_and(|t| !t.pending) {
                if let Some(trace) = self.traces.remove(&id) {
                    self.held -= trace.spans.len();
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn span(trace: &str, id: &str) -> Span {
        Span {
            trace_id: trace.into(),
            id: id.into(),
            ..Span::default()
        }
    }

    fn ids(spans: &[Span]) -> Vec<&str> {
        spans.iter().map(|s| s.id.as_str()).collect()
    }

    #[test]
    fn appends_one_json_line_per_span() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("spans.jsonl");
        let store = Store::new(Some(&path)).expect("store");
        store.push(vec![span("00000000000000a1", "00000000000000b1")]);
        store.push(vec![
            span("00000000000000a1", "00000000000000b2"),
            span("00000000000000a2", "00000000000000b3"),
        ]);
        let text = std::fs::read_to_string(&path).expect("read");
        let lines: Vec<Span> = text
            .lines()
            .map(|l| serde_json::from_str(l).expect("json line"))
            .collect();
        assert_eq!(lines.len(), 3);
        assert_eq!(lines[2].id, "00000000000000b3");
        assert_eq!(
            ids(&store.spans()),
            ["00000000000000b1", "00000000000000b2", "00000000000000b3"]
        );
        assert_eq!(store.subscribe().borrow().received, 3);
    }

    #[test]
    fn a_trace_is_taken_once_and_again_after_more_spans() {
        let store = Store::new(None).expect("store");
        store.push(vec![span("00000000000000a1", "00000000000000b1")]);
        assert!(store.take_quiet(Duration::from_secs(3600)).is_empty());
        let taken = store.take_quiet(Duration::ZERO);
        assert_eq!(taken.len(), 1);
        assert_eq!(ids(&taken[0]), ["00000000000000b1"]);
        assert!(store.take_quiet(Duration::ZERO).is_empty());
        store.push(vec![span("00000000000000a1", "00000000000000b2")]);
        let taken = store.take_quiet(Duration::ZERO);
        assert_eq!(ids(&taken[0]), ["00000000000000b1", "00000000000000b2"]);
    }

    #[test]
    fn printed_traces_are_evicted_first_and_memory_stays_bounded() {
        let store = Store::with_capacity(None, 10, 6).expect("store");
        // Four printed traces of two spans each (t0 printed first).
        for t in 0..4 {
            let trace = format!("{t:016x}");
            store.push(vec![
                span(&trace, "0000000000000001"),
                span(&trace, "0000000000000002"),
            ]);
            assert_eq!(store.take_quiet(Duration::ZERO).len(), 1);
        }
        // An unprinted trace of two spans: 10 held, the capacity.
        let open = "00000000000000ff";
        store.push(vec![
            span(open, "0000000000000003"),
            span(open, "0000000000000004"),
        ]);
        assert_eq!(store.spans().len(), 10);
        // One more span evicts the two oldest printed traces (down to 6), then keeps it.
        store.push(vec![span(open, "0000000000000005")]);
        let held = store.spans();
        assert_eq!(held.len(), 7);
        let traces: std::collections::BTreeSet<&str> =
            held.iter().map(|s| s.trace_id.as_str()).collect();
        assert_eq!(
            traces.into_iter().collect::<Vec<_>>(),
            ["0000000000000002", "0000000000000003", open]
        );
        assert_eq!(store.subscribe().borrow().received, 11);
    }

    #[test]
    fn unprinted_traces_are_never_evicted() {
        let store = Store::with_capacity(None, 4, 2).expect("store");
        let trace = "00000000000000a1";
        for i in 1..=6u64 {
            store.push(vec![span(trace, &format!("{i:016x}"))]);
        }
        // Nothing printed to evict: the first four stay, the rest were not kept but counted.
        assert_eq!(
            ids(&store.spans()),
            [
                "0000000000000001",
                "0000000000000002",
                "0000000000000003",
                "0000000000000004"
            ]
        );
        assert_eq!(store.subscribe().borrow().received, 6);
        assert_eq!(store.lock().not_kept, 2);
    }

    #[test]
    fn a_printed_trace_that_grew_again_is_not_evicted() {
        let store = Store::with_capacity(None, 3, 1).expect("store");
        let a = "00000000000000a1";
        store.push(vec![
            span(a, "0000000000000001"),
            span(a, "0000000000000002"),
        ]);
        assert_eq!(store.take_quiet(Duration::ZERO).len(), 1);
        // More spans arrive for the printed trace: it is pending again, so it stays.
        store.push(vec![span(a, "0000000000000003")]);
        store.push(vec![span("00000000000000b2", "0000000000000004")]);
        assert_eq!(
            ids(&store.spans()),
            ["0000000000000001", "0000000000000002", "0000000000000003"]
        );
    }
}
