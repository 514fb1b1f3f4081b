//! Accounting for the spans of a tracing run: what the requests should have produced, what the
//! sidecars started, exported and dropped (their `/metrics`), and what the trace sink received.
//!
//! A sink count alone cannot tell a span the sidecar dropped and counted (its queue full on a
//! starved machine) from one it exported and the sink never counted, nor either of them from
//! one still queued when the count was read. So the bench first waits until every started span
//! is accounted for by its sidecar (exported or dropped), then reads the sink: a sidecar counts
//! a batch as exported only after the sink's answer, and the sink answers after counting, so
//! from then on `exported - received` is what was lost between the two.

use std::collections::BTreeMap;
use std::fmt;
use std::future::Future;
use std::time::{Duration, Instant};

const STARTED: &str = "mesh_proxy_trace_spans_started_total";
const EXPORTED: &str = "mesh_proxy_trace_spans_exported_total";
const DROPPED: &str = "mesh_proxy_trace_spans_dropped_total";

/// One sidecar's span counters.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SidecarSpans {
    pub started: u64,
    pub exported: u64,
    /// Dropped spans by reason (`queue_full`, `timeout`, ...).
    pub dropped: BTreeMap<String, u64>,
}

impl SidecarSpans {
    /// The counters in a `/metrics` text (absent ones read as zero: a sidecar that never
    /// sampled a request writes no span series).
    pub fn from_metrics(text: &str) -> Self {
        let mut s = SidecarSpans {
            started: crate::scrape::sum(text, STARTED).unwrap_or(0.0) as u64,
            exported: crate::scrape::sum(text, EXPORTED).unwrap_or(0.0) as u64,
            dropped: BTreeMap::new(),
        };
        for line in text.lines() {
            let Some(rest) = line.strip_prefix(DROPPED).and_then(|r| r.strip_prefix('{')) else {
                continue;
            };
            let Some((labels, value)) = rest.rsplit_once('}') else {
                continue;
            };
            let reason = labels
                .split(',')
                .find_map(|l| l.trim().strip_prefix("reason=\""))
                .and_then(|r| r.strip_suffix('"'))
                .unwrap_or("unknown");
            let value = value
                .split_whitespace()
                .next()
                .and_then(|v| v.parse::<f64>().ok())
                .unwrap_or(0.0) as u64;
            if value > 0 {
                *s.dropped.entry(reason.to_owned()).or_default() += value;
            }
        }
        s
    }

    pub fn dropped_total(&self) -> u64 {
        self.dropped.values().sum()
    }

    /// Every started span exported or dropped: nothing left in the sidecar's queue or in
    /// flight.
    pub fn settled(&self) -> bool {
        self.exported + self.dropped_total() >= self.started
    }
}

/// The spans of a run, from the requests sent to the sink's count.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Tally {
    /// Spans the requests should have produced (2 per request through a pair, at
    /// `sampledFraction` 1).
    pub expected: u64,
    pub sidecars: Vec<SidecarSpans>,
    /// Spans the sink counted.
    pub received: u64,
    /// Bodies the sink could not read whole or inflate.
    pub undecodable: u64,
}

impl Tally {
    pub fn started(&self) -> u64 {
        self.sidecars.iter().map(|s| s.started).sum()
    }

    pub fn exported(&self) -> u64 {
        self.sidecars.iter().map(|s| s.exported).sum()
    }

    pub fn dropped(&self) -> BTreeMap<String, u64> {
        let mut all = BTreeMap::new();
        for s in &self.sidecars {
            for (reason, n) in &s.dropped {
                *all.entry(reason.clone()).or_default() += n;
            }
        }
        all
    }

    pub fn settled(&self) -> bool {
        self.sidecars.iter().all(SidecarSpans::settled)
    }

    /// Spans the sidecars exported (the sink acknowledged them) that the sink did not count.
    pub fn lost(&self) -> u64 {
        self.exported().saturating_sub(self.received)
    }

    /// Whether every expected span reached the sink, and none more.
    pub fn complete(&self) -> bool {
        self.received == self.expected && self.undecodable == 0
    }
}

impl fmt::Display for Tally {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let dropped = self.dropped();
        let total: u64 = dropped.values().sum();
        write!(
            f,
            "expected {}, started {}, exported {}, dropped by the sidecars {total}",
            self.expected,
            self.started(),
            self.exported()
        )?;
        if total > 0 {
            let reasons: Vec<String> = dropped.iter().map(|(r, n)| format!("{r} {n}")).collect();
            write!(f, " ({})", reasons.join(", "))?;
        }
        write!(
            f,
            ", received by the sink {} ({} undecodable bodies), lost after export {}",
            self.received,
            self.undecodable,
            self.lost()
        )?;
        if !self.settled() {
            write!(f, " (sidecars still held spans when read)")?;
        }
        Ok(())
    }
}

/// Reads the tally until the sidecars have settled, or `limit` has passed (then the last
/// reading, which says it was not settled).
pub async fn settle<F, Fut>(mut read: F, limit: Duration) -> anyhow::Result<Tally>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = anyhow::Result<Tally>>,
{
    let deadline = Instant::now() + limit;
    loop {
        let tally = read().await?;
        if tally.settled() || Instant::now() >= deadline {
            return Ok(tally);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const METRICS: &str = "# TYPE mesh_proxy_trace_spans_started counter\n\
        mesh_proxy_trace_spans_started_total{protocol=\"zipkin\"} 1000\n\
        mesh_proxy_trace_spans_exported_total{protocol=\"zipkin\"} 990\n\
        mesh_proxy_trace_spans_dropped_total{protocol=\"zipkin\",reason=\"queue_full\"} 7\n\
        mesh_proxy_trace_spans_dropped_total{protocol=\"zipkin\",reason=\"timeout\"} 0\n\
        mesh_proxy_trace_spans_dropped_total{reason=\"closed\",protocol=\"zipkin\"} 3\n\
        # EOF\n";

    #[test]
    fn reads_a_sidecars_counters_and_drops_by_reason() {
        let s = SidecarSpans::from_metrics(METRICS);
        assert_eq!((s.started, s.exported, s.dropped_total()), (1000, 990, 10));
        assert_eq!(s.dropped.get("queue_full"), Some(&7));
        assert_eq!(s.dropped.get("closed"), Some(&3));
        assert!(!s.dropped.contains_key("timeout"));
        assert!(s.settled());
        assert_eq!(SidecarSpans::from_metrics(""), SidecarSpans::default());
    }

    fn sidecar(started: u64, exported: u64, queue_full: u64) -> SidecarSpans {
        let mut dropped = BTreeMap::new();
        if queue_full > 0 {
            dropped.insert("queue_full".to_owned(), queue_full);
        }
        SidecarSpans {
            started,
            exported,
            dropped,
        }
    }

    #[test]
    fn drops_are_told_apart_from_spans_lost_after_export() {
        // 3 spans evicted by a full queue, 2 acknowledged and not counted by the sink.
        let t = Tally {
            expected: 200,
            sidecars: vec![sidecar(100, 97, 3), sidecar(100, 100, 0)],
            received: 195,
            undecodable: 1,
        };
        assert!(t.settled());
        assert_eq!(t.lost(), 2);
        assert!(!t.complete());
        assert_eq!(
            t.to_string(),
            "expected 200, started 200, exported 197, dropped by the sidecars 3 (queue_full 3), \
             received by the sink 195 (1 undecodable bodies), lost after export 2"
        );
        let whole = Tally {
            expected: 200,
            sidecars: vec![sidecar(100, 100, 0), sidecar(100, 100, 0)],
            received: 200,
            undecodable: 0,
        };
        assert!(whole.complete() && whole.lost() == 0);
    }

    #[tokio::test]
    async fn settling_waits_for_queued_spans_and_gives_up_at_its_limit() {
        // The second sidecar still holds 50 spans for two readings.
        let mut readings = 0;
        let t = settle(
            || {
                readings += 1;
                let exported = if readings < 3 { 50 } else { 100 };
                async move {
                    Ok(Tally {
                        expected: 200,
                        sidecars: vec![sidecar(100, 100, 0), sidecar(100, exported, 0)],
                        received: 100 + exported,
                        undecodable: 0,
                    })
                }
            },
            Duration::from_secs(10),
        )
        .await
        .unwrap();
        assert_eq!(readings, 3);
        assert!(t.settled() && t.complete());

        let stuck = settle(
            || async {
                Ok(Tally {
                    expected: 2,
                    sidecars: vec![sidecar(2, 1, 0)],
                    received: 1,
                    undecodable: 0,
                })
            },
            Duration::from_millis(120),
        )
        .await
        .unwrap();
        assert!(!stuck.settled());
        assert!(stuck
            .to_string()
            .ends_with("(sidecars still held spans when read)"));
    }
}
