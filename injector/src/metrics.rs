//! The injector's Prometheus metrics (`prometheus-client`), served as text on `/metrics`.
//!
//! The counters are shared handles: the server counts admissions and held long-polls, the
//! backend counts MeshConfig versions, and a scrape reads them all from one registry.

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

/// What became of one AdmissionReview.
#[derive(Clone, Debug, Hash, PartialEq, Eq)]
pub enum AdmissionResult {
    /// Patched with the sidecar.
    Injected,
    /// Allowed unchanged (not enrolled, opted out, not a CREATE, ...).
    Skipped,
    /// Refused with a message to the user.
    Denied,
    /// Not answered with a review (bad request, namespace unreadable): the API server applies
    /// the webhook's failurePolicy.
    Error,
}

impl AdmissionResult {
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Injected => "injected",
            Self::Skipped => "skipped",
            Self::Denied => "denied",
            Self::Error => "error",
        }
    }
}

/// Lower-case label values, as Prometheus conventions have them (the derive would keep the
/// variant's capital).
impl EncodeLabelValue for AdmissionResult {
    fn encode(&self, encoder: &mut LabelValueEncoder<'_>) -> Result<(), std::fmt::Error> {
        std::fmt::Write::write_str(encoder, self.as_str())
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AdmissionLabels {
    pub result: AdmissionResult,
}

/// The MeshConfig source's share, handed to the backend that updates it.
#[derive(Clone, Debug, Default)]
pub struct ConfigMetrics {
    /// `metadata.generation` of the MeshConfig served (kube), or versions read (local).
    pub generation: Gauge,
    /// Versions refused as invalid (the last good one stayed served).
    pub rejected: Counter,
}

pub struct Metrics {
    registry: Registry,
    pub admissions: Family<AdmissionLabels, Counter>,
    pub admission_seconds: Histogram,
    /// Sidecars holding a long-poll now: the connected sidecars.
    pub long_polls: Gauge,
}

impl Metrics {
    pub fn new(config: &ConfigMetrics) -> Self {
        let mut registry = Registry::with_prefix("mesh_injector");
        let admissions = Family::<AdmissionLabels, Counter>::default();
        registry.register(
            "admissions",
            "AdmissionReviews answered, by result",
            admissions.clone(),
        );
        // 1 ms to ~4 s: a decision is sub-millisecond; the namespace read from the API
        // dominates, and the webhook's timeout (5 s) bounds the top.
        let admission_seconds = Histogram::new(exponential_buckets(0.001, 2.0, 13));
        registry.register(
            "admission_duration_seconds",
            "Time from a review's arrival to its answer",
            admission_seconds.clone(),
        );
        let long_polls = Gauge::default();
        registry.register(
            "config_long_polls",
            "MeshConfig long-polls held now (connected sidecars)",
            long_polls.clone(),
        );
        registry.register(
            "config_generation",
            "Generation of the MeshConfig being served",
            config.generation.clone(),
        );
        registry.register(
            "config_rejected",
            "MeshConfig versions refused as invalid",
            config.rejected.clone(),
        );
        Self {
            registry,
            admissions,
            admission_seconds,
            long_polls,
        }
    }

    pub fn admitted(&self, result: AdmissionResult, seconds: f64) {
        self.admissions
            .get_or_create(&AdmissionLabels { result })
            .inc();
        self.admission_seconds.observe(seconds);
    }

    /// The OpenMetrics text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_show_in_the_text() {
        let config = ConfigMetrics::default();
        let m = Metrics::new(&config);
        m.admitted(AdmissionResult::Injected, 0.002);
        m.admitted(AdmissionResult::Injected, 0.002);
        m.admitted(AdmissionResult::Denied, 0.001);
        config.generation.set(7);
        config.rejected.inc();
        m.long_polls.inc();
        let text = m.encode();
        for line in [
            "mesh_injector_admissions_total{result=\"injected\"} 2",
            "mesh_injector_admissions_total{result=\"denied\"} 1",
            "mesh_injector_admission_duration_seconds_count 3",
            "mesh_injector_config_long_polls 1",
            "mesh_injector_config_generation 7",
            "mesh_injector_config_rejected_total 1",
        ] {
            assert!(text.contains(line), "{line} missing from\n{text}");
        }
    }
}
