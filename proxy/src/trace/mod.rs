//! Tracing built into the data path: the one interface the HTTP proxy calls.
//!
//! The HTTP path calls [`Tracer::start`] once per request, before forwarding; it rewrites the
//! request's trace-context headers in place (so the next hop sees this hop's span) and returns
//! an [`ActiveSpan`] that is finished when the response is known. An unsampled or disabled
//! request gets an inert `ActiveSpan` and builds no span.
//!
//! A span ends exactly once, however its request ended: [`layer::TraceLayer`] finishes it when
//! the response body ends, fails or is dropped, and an [`ActiveSpan`] dropped without
//! `finish` (hyper dropped the request's future: the client left) finishes itself as
//! [`ErrorReason::DownstreamCancelled`]. So `spans_started` = exported + dropped + queued.
//!
//! Path of a span: `start` (extract, decide, inject: [`propagate`]) → `finish` (a
//! [`span::SpanRecord`] into the bounded queue of [`pipeline`]) → batch → [`export`] (Zipkin v2
//! JSON by [`zipkin`], or OTLP mapped by [`otlp`] as protobuf; [`batch`] bounds each body,
//! [`transport`] sends it). [`reload`] applies a new MeshConfig tracing block: one exporter per
//! [`collector`].

pub mod backoff;
pub mod batch;
pub mod collector;
mod deflate;
pub mod export;
pub mod grpc;
pub mod gzip;
pub mod health;
pub mod layer;
pub mod metrics;
pub mod otlp;
pub mod pipeline;
pub mod propagate;
pub mod reason;
pub mod reload;
pub mod span;
pub mod stitch;
pub mod transport;
pub mod zipkin;

use std::net::SocketAddr;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Instant, SystemTime};

use mesh_config::Tracing;
use serde::Serialize;

pub use layer::TraceLayer;
pub use metrics::TraceMetrics;
use pipeline::Pipeline;
pub use reason::ErrorReason;
use span::SpanRecord;

/// Which side of the sidecar the request crossed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    /// Arrived from the network for the local app: a SERVER span.
    Inbound,
    /// Left the local app for the network: a CLIENT span.
    Outbound,
}

/// Who this sidecar is, for `localEndpoint.serviceName` (`<service>.<namespace>`) and the
/// OTLP resource.
#[derive(Clone, Debug, Default)]
pub struct Identity {
    pub service: String,
    pub namespace: String,
    /// `POD_NAME`; empty when unknown (a local run).
    pub pod_name: String,
    pub pod_ip: Option<std::net::IpAddr>,
}

impl Identity {
    /// `<service>.<namespace>`, or just the service when no namespace is known.
    pub fn service_name(&self) -> String {
        match (self.service.is_empty(), self.namespace.is_empty()) {
            (true, _) => "unknown".to_owned(),
            (false, true) => self.service.clone(),
            (false, false) => format!("{}.{}", self.service, self.namespace),
        }
    }
}

/// The tracing settings in force: what the hot path reads on every request.
#[derive(Debug)]
pub(crate) struct Active {
    /// The MeshConfig block this was built from, to tell whether a new one changes anything.
    pub(crate) config: Tracing,
    /// `None` when tracing is disabled. Shared by every block that points at its collector.
    pub(crate) pipeline: Option<Arc<Pipeline>>,
}

#[derive(Debug)]
struct Inner {
    identity: Arc<Identity>,
    metrics: TraceMetrics,
    /// Swapped by reload; read (one uncontended read lock and an `Arc` clone) per request.
    active: RwLock<Arc<Active>>,
    /// Serialises `apply`, so two callers never both build an exporter for one change.
    applying: Mutex<()>,
    /// A block whose exporter could not be built, retried in the background.
    pending: Mutex<Option<reload::PendingBuild>>,
    /// Ids of build retries, so a superseded retry task stops.
    build_ids: AtomicU64,
    /// Exporters built so far: each one's generation, shown in `/config`.
    generations: AtomicU64,
    /// The pod's inbound requests in flight, for stitching outbound requests without context.
    stitch: Arc<stitch::Table>,
    stitch_counters: stitch::Counters,
}

/// Tracing as `/config` shows it: which exporter runs and how its collector is doing.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct TracingStatus {
    pub enabled: bool,
    /// `<protocol> <url>` of the exporter in use.
    pub collector: Option<String>,
    /// Which exporter this is (1 for the first one this sidecar built); a `sampledFraction`
    /// change keeps it, a new collector increments it.
    pub exporter_generation: Option<u64>,
    pub export: Option<health::HealthReport>,
    /// The configured collector's exporter could not be built (being retried).
    pub build_error: Option<reload::BuildStatus>,
    /// The stitching mode in force: the pod's `MESH_STITCHING` when set, else the MeshConfig's.
    pub stitching: mesh_config::Stitching,
}

/// Cheap to clone; shared by every connection.
#[derive(Clone, Debug)]
pub struct Tracer {
    inner: Arc<Inner>,
}

impl Default for Tracer {
    fn default() -> Self {
        Self::disabled()
    }
}

impl Tracer {
    /// A tracer that never records (tracing disabled).
    pub fn disabled() -> Self {
        Self::new(Identity::default(), TraceMetrics::default())
    }

    /// A tracer for this sidecar, disabled until [`Tracer::apply`] (or [`reload`]) enables it.
    /// `metrics` is the set registered in the proxy's `/metrics` registry.
    pub fn new(identity: Identity, metrics: TraceMetrics) -> Self {
        let active = Active {
            config: Tracing::default(),
            pipeline: None,
        };
        Self {
            inner: Arc::new(Inner {
                identity: Arc::new(identity),
                active: RwLock::new(Arc::new(active)),
                applying: Mutex::new(()),
                pending: Mutex::new(None),
                build_ids: AtomicU64::new(0),
                generations: AtomicU64::new(0),
                stitch: Arc::default(),
                stitch_counters: stitch::Counters::of(&metrics.outbound_context),
                metrics,
            }),
        }
    }

    pub fn metrics(&self) -> &TraceMetrics {
        &self.inner.metrics
    }

    pub fn identity(&self) -> &Identity {
        &self.inner.identity
    }

    /// What `/config` shows about tracing.
    pub fn status(&self) -> TracingStatus {
        let active = self.current();
        let pipeline = active.pipeline.as_ref();
        TracingStatus {
            enabled: active.config.enable,
            collector: pipeline.map(|p| p.collector().to_string()),
            exporter_generation: pipeline.map(|p| p.generation()),
            export: pipeline.map(|p| p.health().report()),
            build_error: self.build_status(),
            stitching: self.inner.stitch.mode(active.config.stitching),
        }
    }

    /// At shutdown, after connections drained: stops recording and waits (at most `limit`) for
    /// the queued spans to reach the collector. Async, so it never blocks a runtime worker.
    pub async fn flush(&self, limit: std::time::Duration) {
        let serial = self
            .inner
            .applying
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        *self.inner.pending.lock().unwrap_or_else(|p| p.into_inner()) = None;
        self.inner.metrics.exporter_build_failing.set(0);
        let config = Tracing {
            enable: false,
            ..self.current().config.clone()
        };
        let old = std::mem::replace(
            &mut *self.write(),
            Arc::new(Active {
                config,
                pipeline: None,
            }),
        );
        drop(serial);
        let Some(pipeline) = old.pipeline.as_ref() else {
            return;
        };
        pipeline.retire(None);
        let finished = pipeline.finished();
        drop(old);
        if tokio::time::timeout(limit, finished).await.is_err() {
            tracing::warn!("spans still queued at shutdown were not all exported");
        }
    }

    fn current(&self) -> Arc<Active> {
        match self.inner.active.read() {
            Ok(guard) => guard.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Arc<Active>> {
        match self.inner.active.write() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        }
    }

    /// The pod's stitching table (its mode override, its counts).
    pub fn stitching(&self) -> &stitch::Table {
        &self.inner.stitch
    }

    /// Called once per HTTP request before it is forwarded. `peer` is the downstream client,
    /// `upstream` the address the request is forwarded to.
    pub fn start(
        &self,
        direction: Direction,
        request: &mut http::request::Parts,
        peer: SocketAddr,
        upstream: SocketAddr,
    ) -> ActiveSpan {
        propagate::ensure_request_id(&mut request.headers);
        let active = self.current();
        let Some(pipeline) = &active.pipeline else {
            // Disabled: the sidecar is not a tracing hop; headers pass through untouched.
            return ActiveSpan {
                pending: None,
                _registration: self.count_inbound(direction),
            };
        };
        let formats = propagate::formats(&active.config.propagation);
        let mut decided = propagate::propagate(
            &mut request.headers,
            active.config.sampled_fraction,
            formats,
        );
        if let Some(why) = decided.malformed {
            self.inner.metrics.malformed(why);
        }
        let mode = self.inner.stitch.mode(active.config.stitching);
        let mut stitched = None;
        let registration = match direction {
            Direction::Inbound => Some(self.register_inbound(mode, request, &decided)),
            Direction::Outbound if !decided.orphan => {
                // The app propagated: never touched, never looked up.
                self.inner.stitch_counters.propagated.inc();
                None
            }
            Direction::Outbound => {
                stitched = self.stitch_outbound(mode, request, formats, &mut decided);
                None
            }
        };
        if !decided.sampled {
            return ActiveSpan {
                pending: None,
                _registration: registration,
            };
        }
        pipeline.span_started();
        let mut record = SpanRecord::begin_limited(
            direction,
            request,
            decided.ids,
            decided.debug,
            peer,
            upstream,
            active.config.max_url_tag_length as usize,
        );
        record.stitch = stitched;
        ActiveSpan {
            pending: Some(Box::new(Pending {
                record,
                started: Instant::now(),
                wall: SystemTime::now(),
                active,
            })),
            _registration: registration,
        }
    }

    /// An inbound request while tracing is off: counted as in flight (so an in-flight answer
    /// stays honest if tracing comes on meanwhile), never a parent.
    fn count_inbound(&self, direction: Direction) -> Option<stitch::Registration> {
        (direction == Direction::Inbound).then(|| self.inner.stitch.count())
    }

    /// Holds an inbound request's SERVER span as a possible parent while it is in flight.
    fn register_inbound(
        &self,
        mode: mesh_config::Stitching,
        request: &http::request::Parts,
        decided: &propagate::Decided,
    ) -> stitch::Registration {
        if mode == mesh_config::Stitching::Off {
            return self.inner.stitch.count();
        }
        let parent = stitch::Parent {
            ids: decided.ids,
            sampling: propagate::sampling_of(decided),
        };
        let request_id = request.headers.get(&propagate::REQUEST_ID);
        self.inner.stitch.register(request_id, parent)
    }

    /// An outbound request that carried no trace context: a child of the inbound request the
    /// table names, if it names exactly one; counted by outcome either way.
    fn stitch_outbound(
        &self,
        mode: mesh_config::Stitching,
        request: &mut http::request::Parts,
        formats: trace_context::Propagation,
        decided: &mut propagate::Decided,
    ) -> Option<stitch::Stitch> {
        let request_id = request.headers.get(&propagate::REQUEST_ID);
        let answer = self.inner.stitch.look_up(mode, request_id);
        self.inner.stitch_counters.count(&answer);
        let stitch::Answer::Stitched(how, parent) = answer else {
            return None;
        };
        *decided = propagate::adopt(&mut request.headers, &parent, formats);
        Some(how)
    }
}

/// What the proxy learned about a request, reported when its span ends.
#[derive(Clone, Debug, Default)]
pub struct Outcome {
    pub status: Option<http::StatusCode>,
    /// Set when the request did not complete normally (upstream refused, timeout, client
    /// gone...): a name from a closed set.
    pub error: Option<ErrorReason>,
    /// The `grpc-status` of a gRPC response (from its trailers, or its headers when the
    /// response is trailers-only); `None` when the response is not gRPC or carried none.
    pub grpc_status: Option<u32>,
    pub request_size: u64,
    pub response_size: u64,
}

#[derive(Debug)]
struct Pending {
    record: SpanRecord,
    started: Instant,
    wall: SystemTime,
    /// Keeps the pipeline this span was started on alive until the span is queued there, so a
    /// reload never loses an in-flight span.
    active: Arc<Active>,
}

/// A span in flight. Dropping it without `finish` ends it as [`ErrorReason::DownstreamCancelled`]:
/// the only way a request's span is dropped unfinished is hyper dropping the request's future
/// or response body because the client went away.
#[derive(Debug, Default)]
pub struct ActiveSpan {
    pending: Option<Box<Pending>>,
    /// An inbound request's place in the stitching table: released with the span, so it lasts
    /// exactly as long as the request (cancelled or not).
    _registration: Option<stitch::Registration>,
}

impl ActiveSpan {
    /// Whether this request is recorded; the proxy may skip byte counting when it is not.
    pub fn is_recording(&self) -> bool {
        self.pending.is_some()
    }

    /// Ends the span (and queues it for export when recording). Never blocks: a full queue
    /// drops the span and counts it.
    pub fn finish(mut self, outcome: Outcome) {
        self.end(outcome);
    }

    fn end(&mut self, outcome: Outcome) {
        let Some(p) = self.pending.take() else {
            return;
        };
        let Pending {
            mut record,
            started,
            wall,
            active,
        } = *p;
        record.end(wall, started.elapsed(), outcome);
        if let Some(pipeline) = &active.pipeline {
            pipeline.send(record);
        }
    }
}

impl Drop for ActiveSpan {
    fn drop(&mut self) {
        if self.pending.is_some() {
            self.end(Outcome {
                error: Some(ErrorReason::DownstreamCancelled),
                ..Outcome::default()
            });
        }
    }
}

#[cfg(test)]
mod export_tests;
#[cfg(test)]
mod tests;
