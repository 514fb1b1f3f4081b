//! Deterministic sampling from the trace id, so every sidecar on a trace decides alike.

use crate::id::TraceId;

/// Whether a trace is sampled at `fraction` (0..=1): its low 64 bits (random in both 64- and
/// 128-bit ids) compared with `fraction * 2^64`.
pub fn sampled_at(trace_id: &TraceId, fraction: f64) -> bool {
    threshold(fraction).is_some_and(|t| trace_id.low() <= t)
}

/// The largest low-64 value that is sampled; `None` when nothing is.
fn threshold(fraction: f64) -> Option<u64> {
    if fraction.is_nan() || fraction <= 0.0 {
        return None;
    }
    if fraction >= 1.0 {
        return Some(u64::MAX);
    }
    // `as` saturates, and `fraction * 2^64` is below 2^64 here.
    Some((fraction * 18_446_744_073_709_551_616.0) as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn extremes() {
        let id = TraceId::new_64(u64::MAX).unwrap();
        assert!(sampled_at(&id, 1.0));
        assert!(!sampled_at(&TraceId::new_64(1).unwrap(), 0.0));
        assert!(!sampled_at(&id, f64::NAN));
    }

    #[test]
    fn same_id_same_decision_and_fraction_is_respected() {
        let mut hits = 0;
        for _ in 0..10_000 {
            let id = TraceId::generate();
            let d = sampled_at(&id, 0.25);
            assert_eq!(d, sampled_at(&id, 0.25));
            hits += usize::from(d);
        }
        assert!((2000..3000).contains(&hits), "{hits}");
    }

    #[test]
    fn uses_low_64_bits() {
        let low = TraceId::new_64(0x1000).unwrap();
        let wide = TraceId::new_128(u64::MAX, 0x1000).unwrap();
        assert!(sampled_at(&low, 0.001));
        assert!(sampled_at(&wide, 0.001));
        assert!(!sampled_at(&TraceId::new_64(u64::MAX - 1).unwrap(), 0.999));
    }
}
