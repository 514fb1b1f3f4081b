//! Where received spans go: kept in memory for tests and the tree printer, and appended to the
//! `--out` file as Zipkin v2 JSON lines whatever protocol they came in by.

use std::collections::HashMap;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::Path;
use std::sync::Mutex;
use std::time::Instant;

use tokio::sync::watch;

use crate::span::Span;

/// A development collector should not grow without bound under a long `mesh demo`; past this
/// many spans new ones are still written to `--out` but no longer kept in memory.
const MAX_SPANS_IN_MEMORY: usize = 200_000;

/// Received spans, shared by every receiver.
#[derive(Debug)]
pub struct Store {
    inner: Mutex<Inner>,
    out: Option<Mutex<BufWriter<File>>>,
    count: watch::Sender<usize>,
}

#[derive(Debug, Default)]
struct Inner {
    spans: Vec<Span>,
    /// When each trace last received a span: a trace is complete after a quiet period.
    last_seen: HashMap<String, Instant>,
    dropped: u64,
}

impl Store {
    pub fn new(out: Option<&Path>) -> std::io::Result<Self> {
        let out = match out {
            Some(path) => Some(Mutex::new(BufWriter::new(
                File::options().create(true).append(true).open(path)?,
            ))),
            None => None,
        };
        Ok(Self {
            inner: Mutex::default(),
            out,
            count: watch::Sender::new(0),
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
        let total = {
            let mut inner = self.lock();
            for span in batch {
                if inner.spans.len() < MAX_SPANS_IN_MEMORY {
                    inner.last_seen.insert(span.trace_id.clone(), now);
                    inner.spans.push(span);
                } else {
                    inner.dropped += 1;
                    if inner.dropped == 1 {
                        tracing::warn!(
                            "{MAX_SPANS_IN_MEMORY} spans held in memory: later ones go to --out only"
                        );
                    }
                }
            }
            inner.spans.len()
        };
        self.count.send_replace(total);
    }

    pub fn spans(&self) -> Vec<Span> {
        self.lock().spans.clone()
    }

    /// Traces whose last span arrived at least `quiet` ago, with that time.
    pub fn quiet_traces(&self, quiet: std::time::Duration) -> Vec<String> {
        let now = Instant::now();
        self.lock()
            .last_seen
            .iter()
            .filter(|(_, seen)| now.duration_since(**seen) >= quiet)
            .map(|(id, _)| id.clone())
            .collect()
    }

    pub fn trace(&self, trace_id: &str) -> Vec<Span> {
        self.lock()
            .spans
            .iter()
            .filter(|s| s.trace_id == trace_id)
            .cloned()
            .collect()
    }

    /// Forgets a trace's arrival time so it is not reported complete again.
    pub fn forget_trace(&self, trace_id: &str) {
        self.lock().last_seen.remove(trace_id);
    }

    pub fn subscribe(&self) -> watch::Receiver<usize> {
        self.count.subscribe()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A panic elsewhere while holding the lock leaves plain data behind: keep serving it.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
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
        assert_eq!(store.spans().len(), 3);
        assert_eq!(store.trace("00000000000000a1").len(), 2);
        assert_eq!(*store.subscribe().borrow(), 3);
    }

    #[test]
    fn a_trace_is_quiet_only_after_the_period() {
        let store = Store::new(None).expect("store");
        store.push(vec![span("00000000000000a1", "00000000000000b1")]);
        assert!(store
            .quiet_traces(std::time::Duration::from_secs(3600))
            .is_empty());
        assert_eq!(
            store.quiet_traces(std::time::Duration::ZERO),
            vec!["00000000000000a1".to_string()]
        );
        store.forget_trace("00000000000000a1");
        assert!(store.quiet_traces(std::time::Duration::ZERO).is_empty());
    }
}
