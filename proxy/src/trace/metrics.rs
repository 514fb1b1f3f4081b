//! Tracing counters for `/metrics`, by protocol. Registered into the proxy's registry.

use mesh_config::Protocol;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;
use trace_context::Malformed;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ProtocolLabels {
    pub protocol: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DropLabels {
    pub protocol: &'static str,
    /// `queue_full` (the collector is slower than the traffic) or `export_failed`.
    pub reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct MalformedLabels {
    pub header: &'static str,
}

/// Cheap to clone (shared counters).
#[derive(Clone, Debug, Default)]
pub struct TraceMetrics {
    pub started: Family<ProtocolLabels, Counter>,
    pub exported: Family<ProtocolLabels, Counter>,
    pub dropped: Family<DropLabels, Counter>,
    pub export_errors: Family<ProtocolLabels, Counter>,
    pub malformed: Family<MalformedLabels, Counter>,
}

impl TraceMetrics {
    /// Registers under the `mesh_proxy_trace_` prefix (the registry adds `_total`).
    pub fn register(&self, registry: &mut Registry) {
        let sub = registry
            .sub_registry_with_prefix("mesh_proxy")
            .sub_registry_with_prefix("trace");
        sub.register(
            "spans_started",
            "Spans started (sampled requests)",
            self.started.clone(),
        );
        sub.register(
            "spans_exported",
            "Spans accepted by the collector",
            self.exported.clone(),
        );
        sub.register(
            "spans_dropped",
            "Spans dropped: queue full or export failed",
            self.dropped.clone(),
        );
        sub.register(
            "export_errors",
            "Failed export attempts",
            self.export_errors.clone(),
        );
        sub.register(
            "malformed_contexts",
            "Requests whose incoming trace context was malformed (not forwarded)",
            self.malformed.clone(),
        );
    }

    /// The started-spans counter for `p`, resolved once so the data path only increments it.
    pub fn started_counter(&self, p: Protocol) -> Counter {
        self.started
            .get_or_create(&ProtocolLabels {
                protocol: p.as_str(),
            })
            .clone()
    }

    /// The dropped-spans counter for `p` and `reason`, resolved once.
    pub fn dropped_counter(&self, p: Protocol, reason: &'static str) -> Counter {
        self.dropped
            .get_or_create(&DropLabels {
                protocol: p.as_str(),
                reason,
            })
            .clone()
    }

    pub fn started(&self, p: Protocol) {
        self.started
            .get_or_create(&ProtocolLabels {
                protocol: p.as_str(),
            })
            .inc();
    }

    pub fn exported(&self, p: Protocol, n: u64) {
        self.exported
            .get_or_create(&ProtocolLabels {
                protocol: p.as_str(),
            })
            .inc_by(n);
    }

    pub fn dropped(&self, p: Protocol, reason: &'static str, n: u64) {
        self.dropped
            .get_or_create(&DropLabels {
                protocol: p.as_str(),
                reason,
            })
            .inc_by(n);
    }

    pub fn export_error(&self, p: Protocol) {
        self.export_errors
            .get_or_create(&ProtocolLabels {
                protocol: p.as_str(),
            })
            .inc();
    }

    pub fn malformed(&self, why: Malformed) {
        self.malformed
            .get_or_create(&MalformedLabels {
                header: why.as_str(),
            })
            .inc();
    }

    /// Totals over labels, for tests and `/config`.
    pub fn totals(&self) -> Totals {
        let sum = |f: &Family<ProtocolLabels, Counter>| {
            Protocol::ALL
                .iter()
                .map(|p| {
                    f.get_or_create(&ProtocolLabels {
                        protocol: p.as_str(),
                    })
                    .get()
                })
                .sum()
        };
        let dropped = Protocol::ALL
            .iter()
            .flat_map(|p| ["queue_full", "export_failed"].map(|reason| (p.as_str(), reason)))
            .map(|(protocol, reason)| {
                self.dropped
                    .get_or_create(&DropLabels { protocol, reason })
                    .get()
            })
            .sum();
        Totals {
            started: sum(&self.started),
            exported: sum(&self.exported),
            dropped,
            export_errors: sum(&self.export_errors),
        }
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Totals {
    pub started: u64,
    pub exported: u64,
    pub dropped: u64,
    pub export_errors: u64,
}
