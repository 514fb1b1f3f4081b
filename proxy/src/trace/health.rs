//! What a collector has been answering, for the log and for `/config`.
//!
//! Export failures are logged at warn so a wrong endpoint or a dead collector shows at the
//! default log level, but at most one line per collector per [`LOG_INTERVAL`]: a sidecar in
//! every pod of a cluster must not turn one collector outage into a log flood. Each line says
//! how many failures it stands for, and the collector's own answer (status and the start of its
//! body), which is usually what tells a wrong path from an overloaded receiver.

use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::Serialize;

use super::collector::Collector;
use super::export::ExportError;

/// At most one warn line per collector this often; the first failure is logged at once.
pub const LOG_INTERVAL: Duration = Duration::from_secs(30);

/// Allows one event per interval and counts the ones it held back.
#[derive(Debug)]
pub struct RateLimit {
    interval: Duration,
    last: Option<Instant>,
    suppressed: u64,
}

impl RateLimit {
    pub fn new(interval: Duration) -> Self {
        Self {
            interval,
            last: None,
            suppressed: 0,
        }
    }

    /// `Some(suppressed since the last allowed one)` when this event may be logged.
    pub fn allow(&mut self, now: Instant) -> Option<u64> {
        match self.last {
            Some(last) if now.saturating_duration_since(last) < self.interval => {
                self.suppressed += 1;
                None
            }
            _ => {
                self.last = Some(now);
                Some(std::mem::take(&mut self.suppressed))
            }
        }
    }
}

/// The last failure, as `/config` shows it.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct LastError {
    /// `unreachable`, `timeout`, `closed`, `rejected`: the `reason` of the drops it caused.
    pub kind: &'static str,
    /// The error with the collector's answer, e.g. `collector answered 404 Not Found: ...`.
    pub message: String,
    pub at_unix_ms: u64,
}

/// A collector's export health, as `/config` shows it.
#[derive(Clone, Debug, Serialize, PartialEq, Eq, Default)]
pub struct HealthReport {
    /// Failed export attempts since the last success (0: healthy).
    pub consecutive_failures: u64,
    pub last_error: Option<LastError>,
    /// Failures not logged because of the rate limit, since the last logged line.
    pub suppressed_warnings: u64,
}

/// Shared by one exporter's thread (which reports) and the admin server (which reads).
#[derive(Debug)]
pub struct Health {
    collector: String,
    state: Mutex<State>,
}

#[derive(Debug)]
struct State {
    report: HealthReport,
    limit: RateLimit,
}

impl Health {
    pub fn new(collector: &Collector) -> Self {
        Self {
            collector: collector.to_string(),
            state: Mutex::new(State {
                report: HealthReport::default(),
                limit: RateLimit::new(LOG_INTERVAL),
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A batch of `spans` did not reach the collector.
    pub fn failed(&self, error: &ExportError, spans: usize) {
        let mut state = self.lock();
        state.report.consecutive_failures += 1;
        state.report.last_error = Some(LastError {
            kind: error.kind(),
            message: error.to_string(),
            at_unix_ms: now_ms(),
        });
        let failures = state.report.consecutive_failures;
        match state.limit.allow(Instant::now()) {
            Some(suppressed) => {
                state.report.suppressed_warnings = 0;
                drop(state);
                tracing::warn!(
                    collector = %self.collector,
                    %error,
                    spans,
                    consecutive_failures = failures,
                    suppressed,
                    "span export failed; spans dropped, retrying with backoff"
                );
            }
            None => state.report.suppressed_warnings += 1,
        }
    }

    /// The collector took a batch but refused `rejected` of its spans (OTLP partial success).
    pub fn partly_rejected(&self, rejected: u64, message: &str) {
        let mut state = self.lock();
        if state.limit.allow(Instant::now()).is_some() {
            drop(state);
            tracing::warn!(collector = %self.collector, rejected, message, "collector rejected spans");
        } else {
            state.report.suppressed_warnings += 1;
        }
    }

    /// A batch reached the collector.
    pub fn succeeded(&self) {
        let mut state = self.lock();
        let failures = std::mem::take(&mut state.report.consecutive_failures);
        if failures > 0 {
            drop(state);
            tracing::info!(collector = %self.collector, after_failures = failures, "span export works again");
        }
    }

    pub fn report(&self) -> HealthReport {
        self.lock().report.clone()
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_per_interval_with_the_count_held_back() {
        let mut limit = RateLimit::new(Duration::from_secs(30));
        let t0 = Instant::now();
        assert_eq!(
            limit.allow(t0),
            Some(0),
            "the first failure is logged at once"
        );
        for s in 1..10 {
            assert_eq!(limit.allow(t0 + Duration::from_secs(s)), None);
        }
        assert_eq!(limit.allow(t0 + Duration::from_secs(30)), Some(9));
        assert_eq!(limit.allow(t0 + Duration::from_secs(31)), None);
        assert_eq!(limit.allow(t0 + Duration::from_secs(61)), Some(1));
    }
}
