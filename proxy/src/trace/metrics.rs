//! Tracing counters for `/metrics`, by protocol. Registered into the proxy's registry.

use mesh_config::Protocol;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use trace_context::Malformed;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ProtocolLabels {
    pub protocol: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DropLabels {
    pub protocol: &'static str,
    /// One of [`DROP_REASONS`].
    pub reason: &'static str,
}

/// Why spans were dropped: `queue_full` (evicted, oldest first, while the collector was slower
/// than the traffic or backing off), then why a batch did not reach the collector:
/// `unreachable` (refused, no route, connect timeout), `timeout` (no answer in time), `closed`
/// (the connection failed mid-request), `rejected` (an error answer, or spans refused in an OTLP
/// partial success); `too_large` (one span over the batch byte bound), `disabled` (ended after
/// tracing was turned off).
pub const DROP_REASONS: [&str; 7] = [
    "queue_full",
    "unreachable",
    "timeout",
    "closed",
    "rejected",
    "too_large",
    "disabled",
];

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ErrorLabels {
    pub protocol: &'static str,
    /// `unreachable`, `timeout`, `closed` or `rejected` (see [`DROP_REASONS`]).
    pub kind: &'static str,
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
    pub export_errors: Family<ErrorLabels, Counter>,
    pub malformed: Family<MalformedLabels, Counter>,
    /// Exporters started (one per collector the config pointed at, plus rebuilds).
    pub exporters_started: Counter,
    pub exporter_build_errors: Family<ProtocolLabels, Counter>,
    /// 1 while the configured collector's exporter could not be built (retried with backoff).
    pub exporter_build_failing: Gauge,
    /// Outbound requests by what became of their trace context (see [`super::stitch`]).
    pub outbound_context: Family<super::stitch::OutcomeLabels, Counter>,
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
            "Spans dropped, by reason: queue_full, unreachable, timeout, closed, rejected, too_large, disabled",
            self.dropped.clone(),
        );
        sub.register(
            "export_errors",
            "Failed export attempts, by kind: unreachable, timeout, closed, rejected",
            self.export_errors.clone(),
        );
        sub.register(
            "exporters_started",
            "Span exporters started (one per collector; not per sampling change)",
            self.exporters_started.clone(),
        );
        sub.register(
            "exporter_build_errors",
            "Span exporters that could not be built (retried with backoff)",
            self.exporter_build_errors.clone(),
        );
        sub.register(
            "exporter_build_failing",
            "1 while the configured collector's exporter could not be built; the previous one, if any, stays in use",
            self.exporter_build_failing.clone(),
        );
        sub.register(
            "outbound_context",
            "Outbound requests of traced hops by trace context: propagated (the app sent it), stitched_request_id, stitched_in_flight, ambiguous (several inbound requests in flight), root",
            self.outbound_context.clone(),
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

    pub fn export_error(&self, p: Protocol, kind: &'static str) {
        self.export_errors
            .get_or_create(&ErrorLabels {
                protocol: p.as_str(),
                kind,
            })
            .inc();
    }

    pub fn exporter_started(&self) {
        self.exporters_started.inc();
    }

    pub fn exporter_build_error(&self, p: Protocol) {
        self.exporter_build_errors
            .get_or_create(&ProtocolLabels {
                protocol: p.as_str(),
            })
            .inc();
    }

    /// Spans dropped for `reason`, over protocols.
    pub fn dropped_for(&self, reason: &'static str) -> u64 {
        Protocol::ALL
            .iter()
            .map(|p| {
                self.dropped
                    .get_or_create(&DropLabels {
                        protocol: p.as_str(),
                        reason,
                    })
                    .get()
            })
            .sum()
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
        let dropped = DROP_REASONS.iter().map(|r| self.dropped_for(r)).sum();
        let export_errors = Protocol::ALL
            .iter()
            .flat_map(|p| ["unreachable", "timeout", "closed", "rejected"].map(|k| (p.as_str(), k)))
            .map(|(protocol, kind)| {
                self.export_errors
                    .get_or_create(&ErrorLabels { protocol, kind })
                    .get()
            })
            .sum();
        Totals {
            started: sum(&self.started),
            exported: sum(&self.exported),
            dropped,
            export_errors,
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
