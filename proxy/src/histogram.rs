//! A Prometheus histogram that observes with atomic adds.
//!
//! prometheus-client's `Histogram` keeps its buckets behind a `RwLock` and takes the write lock
//! on every observation; with one histogram per direction and protocol, every request of a
//! sidecar's workers contends on the same lock. Here each bucket is an `AtomicU64`, the sum an
//! `f64` kept in an `AtomicU64` (compare-and-swap, as the Go client does), and the count is the
//! sum of the buckets, read at scrape time, so a scrape never shows a count that disagrees with
//! its buckets. It encodes through prometheus-client's own histogram encoder, so the text is
//! the same as before, `+Inf` bucket included.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use prometheus_client::encoding::{EncodeMetric, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::{MetricType, TypedMetric};

/// A histogram with fixed bucket bounds; cheap to clone (clones share the buckets).
#[derive(Clone, Debug)]
pub struct Histogram {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    /// Upper bounds, ascending, the last one `f64::MAX` (rendered `+Inf`).
    bounds: Box<[f64]>,
    /// Observations per bucket (not cumulative: the encoder sums them).
    counts: Box<[AtomicU64]>,
    /// The `f64` sum of every observation, as bits.
    sum: AtomicU64,
}

impl Histogram {
    /// A histogram with the given upper bounds (ascending) plus `+Inf`.
    pub fn new(bounds: impl IntoIterator<Item = f64>) -> Self {
        let bounds: Box<[f64]> = bounds
            .into_iter()
            .chain(std::iter::once(f64::MAX))
            .collect();
        let counts = bounds.iter().map(|_| AtomicU64::new(0)).collect();
        Self {
            inner: Arc::new(Inner {
                bounds,
                counts,
                sum: AtomicU64::new(0f64.to_bits()),
            }),
        }
    }

    /// Records `v` in the first bucket whose bound is at least `v`. A NaN is dropped: it
    /// matches no bound, and summed it would turn the series' sum into NaN for good.
    pub fn observe(&self, v: f64) {
        if v.is_nan() {
            return;
        }
        let inner = &*self.inner;
        let i = inner.bounds.partition_point(|bound| *bound < v);
        let Some(count) = inner.counts.get(i) else {
            return;
        };
        count.fetch_add(1, Ordering::Relaxed);
        // Relaxed is enough: a scrape reads a snapshot that is at most one observation behind.
        let _ = inner
            .sum
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |bits| {
                Some((f64::from_bits(bits) + v).to_bits())
            });
    }

    /// The sum, count and per-bucket counts as prometheus-client's encoder takes them.
    fn snapshot(&self) -> (f64, u64, Vec<(f64, u64)>) {
        let buckets: Vec<(f64, u64)> = self
            .inner
            .bounds
            .iter()
            .zip(self.inner.counts.iter())
            .map(|(bound, count)| (*bound, count.load(Ordering::Relaxed)))
            .collect();
        let count = buckets.iter().map(|(_, n)| n).sum();
        let sum = f64::from_bits(self.inner.sum.load(Ordering::Relaxed));
        (sum, count, buckets)
    }
}

impl TypedMetric for Histogram {
    const TYPE: MetricType = MetricType::Histogram;
}

impl EncodeMetric for Histogram {
    fn encode(&self, mut encoder: MetricEncoder<'_>) -> Result<(), std::fmt::Error> {
        let (sum, count, buckets) = self.snapshot();
        encoder.encode_histogram::<NoLabelSet>(sum, count, &buckets, None)
    }

    fn metric_type(&self) -> MetricType {
        Self::TYPE
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus_client::encoding::EncodeLabelSet;
    use prometheus_client::metrics::family::Family;
    use prometheus_client::metrics::histogram::{exponential_buckets, Histogram as Locked};
    use prometheus_client::registry::Registry;

    #[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
    struct Labels {
        direction: &'static str,
    }

    /// The text of the atomic histogram is the text prometheus-client's locked one gives for
    /// the same observations: same series, bucket bounds, cumulative counts, sum and count.
    #[test]
    fn encodes_like_prometheus_client() {
        let observations = [
            0.0, 0.00001, 0.00005, 0.00007, 0.0001, 0.003, 0.003, 1.5, 26.0, 1e9,
        ];
        let ours = {
            let family = Family::<Labels, Histogram>::new_with_constructor(move || {
                Histogram::new(exponential_buckets(0.00005, 2.0, 20))
            });
            let mut reg = Registry::default();
            reg.sub_registry_with_prefix("mesh_proxy").register(
                "request_duration_seconds",
                "Time from request received to response headers sent",
                family.clone(),
            );
            let h = family
                .get_or_create(&Labels {
                    direction: "inbound",
                })
                .clone();
            for v in observations {
                h.observe(v);
            }
            crate::metrics::encode(&reg)
        };
        let theirs = {
            let family = Family::<Labels, Locked>::new_with_constructor(move || {
                Locked::new(exponential_buckets(0.00005, 2.0, 20))
            });
            let mut reg = Registry::default();
            reg.sub_registry_with_prefix("mesh_proxy").register(
                "request_duration_seconds",
                "Time from request received to response headers sent",
                family.clone(),
            );
            let h = family
                .get_or_create(&Labels {
                    direction: "inbound",
                })
                .clone();
            for v in observations {
                h.observe(v);
            }
            crate::metrics::encode(&reg)
        };
        assert_eq!(ours, theirs);
        assert!(
            ours.contains("# TYPE mesh_proxy_request_duration_seconds histogram"),
            "{ours}"
        );
        assert!(
            ours.contains(
                "mesh_proxy_request_duration_seconds_bucket{le=\"+Inf\",direction=\"inbound\"} 10"
            ),
            "{ours}"
        );
        assert!(
            ours.contains("mesh_proxy_request_duration_seconds_count{direction=\"inbound\"} 10"),
            "{ours}"
        );
    }

    /// Observations from many threads at once all land: nothing is lost without the lock.
    #[test]
    fn concurrent_observations_all_count() {
        let h = Histogram::new([1.0, 2.0]);
        std::thread::scope(|s| {
            for _ in 0..4 {
                s.spawn(|| {
                    for _ in 0..10_000 {
                        h.observe(1.5);
                    }
                });
            }
        });
        let (sum, count, buckets) = h.snapshot();
        assert_eq!(count, 40_000);
        assert_eq!(sum, 60_000.0);
        assert_eq!(buckets, vec![(1.0, 0), (2.0, 40_000), (f64::MAX, 0)]);
    }

    #[test]
    fn nan_is_dropped() {
        let h = Histogram::new([1.0]);
        h.observe(f64::NAN);
        h.observe(0.5);
        let (sum, count, _) = h.snapshot();
        assert_eq!((sum, count), (0.5, 1));
    }
}
