//! Jittered exponential backoff, for a failing collector and for an exporter that could not be
//! built. Jitter keeps the sidecars of a whole cluster from retrying in step after a shared
//! collector comes back.

use std::time::Duration;

/// First wait after a failure: long enough that a refusing collector is not hit in a tight
/// loop, short enough that a blip costs about a second of spans.
pub const INITIAL: Duration = Duration::from_secs(1);
/// Longest wait: the OpenTelemetry Collector's exporters stop growing their retry interval at
/// 30 s too, so a recovered collector sees spans again within half a minute.
pub const MAX: Duration = Duration::from_secs(30);

/// Doubles per consecutive failure, from [`INITIAL`] up to [`MAX`]; each wait is drawn from
/// its upper half ("equal jitter"), so it never collapses to zero and never exceeds the cap.
#[derive(Debug, Clone)]
pub struct Backoff {
    failures: u32,
    initial: Duration,
    max: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Self::new(INITIAL, MAX)
    }
}

impl Backoff {
    pub fn new(initial: Duration, max: Duration) -> Self {
        Self {
            failures: 0,
            initial,
            max,
        }
    }

    /// The wait after one more failure. A `floor` (a collector's `Retry-After`) is honoured up
    /// to the cap.
    pub fn next(&mut self, floor: Option<Duration>) -> Duration {
        let ceiling = self
            .initial
            .saturating_mul(1u32 << self.failures.min(16))
            .min(self.max);
        self.failures = self.failures.saturating_add(1);
        let half = ceiling / 2;
        let jitter = Duration::from_nanos(fastrand::u64(0..=half.as_nanos() as u64));
        let wait = half + jitter;
        match floor {
            Some(f) => wait.max(f.min(self.max)),
            None => wait,
        }
    }

    /// Consecutive failures so far.
    pub fn failures(&self) -> u32 {
        self.failures
    }

    pub fn reset(&mut self) {
        self.failures = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_within_jittered_bounds_up_to_the_cap_and_resets() {
        let mut b = Backoff::default();
        for n in 0..12u32 {
            let ceiling = INITIAL.saturating_mul(1 << n).min(MAX);
            let wait = b.next(None);
            assert!(wait >= ceiling / 2 && wait <= ceiling, "{n}: {wait:?}");
        }
        assert_eq!(b.failures(), 12);
        b.reset();
        assert!(b.next(None) <= INITIAL);
    }

    #[test]
    fn retry_after_is_a_floor_bounded_by_the_cap() {
        let mut b = Backoff::default();
        assert!(b.next(Some(Duration::from_secs(7))) >= Duration::from_secs(7));
        assert!(b.next(Some(Duration::from_secs(3600))) <= MAX);
    }

    #[test]
    fn draws_differ() {
        let draws: std::collections::HashSet<_> = (0..20)
            .map(|_| Backoff::default().next(None).as_nanos())
            .collect();
        assert!(draws.len() > 1, "no jitter");
    }
}
