//! The soak verdict: is a gauge flat after warm-up? A leak under a constant load is a steady
//! climb, so the test is the least-squares slope over the samples after warm-up, projected over
//! that window, against a tolerance. A slope (not last minus first) is what survives the
//! sawtooth of an allocator or a connection pool; the tolerance has a relative part (RSS moves
//! by a few percent with fragmentation) and an absolute part (an fd count of 20 may move by 2).

use std::fmt;

/// One sampled quantity: `(seconds since start, value)` pairs.
#[derive(Clone, Debug, Default)]
pub struct Series {
    pub name: String,
    pub unit: &'static str,
    pub samples: Vec<(f64, f64)>,
}

/// How much a series may grow over the window after warm-up and still count as flat.
#[derive(Clone, Copy, Debug)]
pub struct Tolerance {
    /// Allowed growth as a share of the mean after warm-up.
    pub relative: f64,
    /// Allowed growth in the series' unit, whatever its mean (the larger of the two applies).
    pub absolute: f64,
}

/// The figures a verdict rests on, printed whether it passes or not.
#[derive(Clone, Debug)]
pub struct Verdict {
    pub name: String,
    pub unit: &'static str,
    /// Samples after warm-up that the slope was fitted to.
    pub points: usize,
    pub first: f64,
    pub last: f64,
    pub min: f64,
    pub max: f64,
    pub mean: f64,
    /// Fitted slope, per minute.
    pub slope_per_min: f64,
    /// Fitted growth over the window after warm-up (slope x window).
    pub growth: f64,
    /// The growth allowed.
    pub limit: f64,
    pub pass: bool,
}

/// Least-squares slope of `points` (value per second); `None` for fewer than two distinct times.
pub fn slope(points: &[(f64, f64)]) -> Option<f64> {
    let n = points.len() as f64;
    if points.len() < 2 {
        return None;
    }
    let mean_t = points.iter().map(|p| p.0).sum::<f64>() / n;
    let mean_v = points.iter().map(|p| p.1).sum::<f64>() / n;
    let (mut cov, mut var) = (0.0, 0.0);
    for &(t, v) in points {
        cov += (t - mean_t) * (v - mean_v);
        var += (t - mean_t) * (t - mean_t);
    }
    (var > 0.0).then(|| cov / var)
}

impl Series {
    pub fn new(name: impl Into<String>, unit: &'static str) -> Self {
        Series {
            name: name.into(),
            unit,
            samples: Vec::new(),
        }
    }

    pub fn push(&mut self, t: f64, v: f64) {
        self.samples.push((t, v));
    }

    /// The verdict over the samples taken at or after `warmup` seconds; `None` when fewer than
    /// three remain (too few to call anything flat: the run was too short).
    pub fn verdict(&self, warmup: f64, tolerance: Tolerance) -> Option<Verdict> {
        let after: Vec<(f64, f64)> = self
            .samples
            .iter()
            .copied()
            .filter(|&(t, _)| t >= warmup)
            .collect();
        if after.len() < 3 {
            return None;
        }
        let per_sec = slope(&after)?;
        let window = after.last()?.0 - after.first()?.0;
        let values = after.iter().map(|p| p.1);
        let min = values.clone().fold(f64::INFINITY, f64::min);
        let max = values.clone().fold(f64::NEG_INFINITY, f64::max);
        let mean = values.sum::<f64>() / after.len() as f64;
        let growth = per_sec * window;
        let limit = (tolerance.relative * mean.abs()).max(tolerance.absolute);
        Some(Verdict {
            name: self.name.clone(),
            unit: self.unit,
            points: after.len(),
            first: after.first()?.1,
            last: after.last()?.1,
            min,
            max,
            mean,
            slope_per_min: per_sec * 60.0,
            growth,
            limit,
            pass: growth <= limit,
        })
    }
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} {:<28} first {:>9.0} last {:>9.0} min {:>9.0} max {:>9.0} {:<4} slope {:>+9.2}/min, \
             fitted growth {:>+9.1} (limit {:.1}) over {} samples",
            if self.pass { "PASS" } else { "FAIL" },
            self.name,
            self.first,
            self.last,
            self.min,
            self.max,
            self.unit,
            self.slope_per_min,
            self.growth,
            self.limit,
            self.points,
        )
    }
}

/// Spans of one sidecar at the end of a run: every span started was either exported or
/// dropped (counted by reason), none is lost or still queued.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct SpanBalance {
    pub started: f64,
    pub exported: f64,
    pub dropped: f64,
}

impl SpanBalance {
    pub fn balanced(&self) -> bool {
        self.started == self.exported + self.dropped
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TOL: Tolerance = Tolerance {
        relative: 0.05,
        absolute: 2.0,
    };

    fn series(values: impl IntoIterator<Item = f64>) -> Series {
        let mut s = Series::new("x", "");
        for (i, v) in values.into_iter().enumerate() {
            s.push(i as f64 * 10.0, v);
        }
        s
    }

    #[test]
    fn slope_of_a_line_and_of_too_little() {
        assert_eq!(slope(&[(0.0, 1.0), (2.0, 5.0), (4.0, 9.0)]), Some(2.0));
        assert_eq!(slope(&[(1.0, 1.0)]), None);
        assert_eq!(slope(&[(1.0, 1.0), (1.0, 3.0)]), None);
    }

    #[test]
    fn a_sawtooth_around_a_level_is_flat() {
        let s = series((0..60).map(|i| 1000.0 + f64::from(i % 3) * 20.0));
        let v = s.verdict(0.0, TOL).unwrap();
        assert!(v.pass, "{v}");
        assert!(v.growth.abs() < 5.0, "{v}");
    }

    #[test]
    fn a_steady_climb_fails_even_when_each_step_is_small() {
        // +1 per sample: 59 over the window, beyond 5% of a mean near 1030.
        let s = series((0..60).map(|i| 1000.0 + f64::from(i)));
        let v = s.verdict(0.0, TOL).unwrap();
        assert!(!v.pass, "{v}");
        assert!((v.growth - 59.0).abs() < 1e-6, "{v}");
        assert!((v.slope_per_min - 6.0).abs() < 1e-6, "{v}");
    }

    #[test]
    fn warm_up_is_left_out() {
        // Growth during warm-up (the first 10 samples), flat after.
        let s = series((0..40).map(|i| if i < 10 { f64::from(i) * 100.0 } else { 1000.0 }));
        assert!(!s.verdict(0.0, TOL).unwrap().pass);
        let v = s.verdict(100.0, TOL).unwrap();
        assert!(v.pass, "{v}");
        assert_eq!(v.points, 30);
    }

    #[test]
    fn small_counts_get_the_absolute_slack_and_short_runs_no_verdict() {
        // 10 fds, one more halfway: within 2 although beyond 5%.
        let s = series((0..20).map(|i| if i < 10 { 10.0 } else { 11.0 }));
        assert!(s.verdict(0.0, TOL).unwrap().pass);
        assert!(series([1.0, 2.0]).verdict(0.0, TOL).is_none());
    }

    #[test]
    fn spans_balance_only_when_every_one_is_accounted_for() {
        let b = SpanBalance {
            started: 10.0,
            exported: 7.0,
            dropped: 3.0,
        };
        assert!(b.balanced());
        assert!(!SpanBalance { dropped: 2.0, ..b }.balanced());
    }
}
