//! Latency percentiles over every sample (the counts are bounded, so no histogram sketch is
//! needed and the figures are exact).

use std::fmt;
use std::time::Duration;

#[derive(Clone, Debug, Default)]
pub struct Summary {
    pub requests: usize,
    pub errors: usize,
    pub elapsed: Duration,
    pub p50: Duration,
    pub p90: Duration,
    pub p99: Duration,
    pub max: Duration,
    /// True when the time limit ended the run before the request count was reached.
    pub truncated: bool,
}

impl Summary {
    pub fn from_samples(
        mut samples: Vec<Duration>,
        errors: usize,
        elapsed: Duration,
        truncated: bool,
    ) -> Self {
        samples.sort_unstable();
        let pick = |q: f64| -> Duration {
            if samples.is_empty() {
                return Duration::ZERO;
            }
            let rank = ((samples.len() as f64) * q).ceil() as usize;
            samples[rank.clamp(1, samples.len()) - 1]
        };
        Summary {
            requests: samples.len(),
            errors,
            elapsed,
            p50: pick(0.50),
            p90: pick(0.90),
            p99: pick(0.99),
            max: samples.last().copied().unwrap_or_default(),
            truncated,
        }
    }

    pub fn throughput(&self) -> f64 {
        let secs = self.elapsed.as_secs_f64();
        if secs > 0.0 {
            self.requests as f64 / secs
        } else {
            0.0
        }
    }
}

/// Microseconds with one decimal, the unit sidecar overhead is discussed in.
pub fn micros(d: Duration) -> String {
    format!("{:.1}", d.as_secs_f64() * 1e6)
}

impl fmt::Display for Summary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:>7} req {:>5} err {:>9.0} req/s  p50 {:>8} µs  p90 {:>8} µs  p99 {:>8} µs  max {:>9} µs{}",
            self.requests,
            self.errors,
            self.throughput(),
            micros(self.p50),
            micros(self.p90),
            micros(self.p99),
            micros(self.max),
            if self.truncated { "  (time limit hit)" } else { "" }
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_are_nearest_rank() {
        let samples = (1..=100).map(Duration::from_micros).collect();
        let s = Summary::from_samples(samples, 0, Duration::from_secs(2), false);
        assert_eq!(s.p50, Duration::from_micros(50));
        assert_eq!(s.p90, Duration::from_micros(90));
        assert_eq!(s.p99, Duration::from_micros(99));
        assert_eq!(s.max, Duration::from_micros(100));
        assert_eq!(s.throughput(), 50.0);
        let empty = Summary::from_samples(Vec::new(), 3, Duration::ZERO, true);
        assert_eq!(empty.p99, Duration::ZERO);
        assert_eq!(empty.throughput(), 0.0);
    }
}
