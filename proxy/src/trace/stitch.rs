//! Stitching: joining the requests of an app that forwards no trace headers to the inbound
//! request that caused them.
//!
//! A sidecar sees both sides of its pod in one process, so it can tell which inbound requests
//! are in flight when the app opens an outbound one. This module keeps that set, per pod, in a
//! fixed-size [`Table`], and answers one question for an outbound request that carries no trace
//! context: is there exactly one inbound request it can belong to?
//!
//! - `request-id`: the in-flight inbound request whose `x-request-id` equals the outbound
//!   request's. Exact: many frameworks and logging middlewares forward that header.
//! - `in-flight`: also, when exactly one inbound request is in flight, that one. With several in
//!   flight the answer is "ambiguous" and the request starts its own trace: a guessed parent
//!   would be worse than none, because it looks as true as a real one.
//!
//! The answer is only ever "yes" when it is certain by the table's own account: every inbound
//! request is counted while in flight (an atomic counter, whatever the mode), even one that
//! found the table full or arrived while stitching was off, so a request the table does not
//! hold still makes the in-flight answer ambiguous. Registrations end with the request (the
//! [`Registration`] guard is dropped with the span, i.e. when the response body ends or the
//! request is cancelled), so the window is exactly "after the inbound request started and
//! before it ended".
//!
//! Cost: an outbound request whose app propagated context never reaches this module (the
//! decision is made on the context the codec already extracted); with stitching off nothing is
//! registered and nothing is looked up. What remains is one atomic increment and decrement per
//! inbound request. With stitching on, inbound requests take one short lock to register and one
//! to unregister; outbound requests without context take one to look up.

use std::sync::atomic::{AtomicU64, AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use http::HeaderValue;
use mesh_config::Stitching;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use trace_context::{Sampling, SpanIds};

/// In-flight inbound requests the table holds. A sidecar usually serves a few dozen requests at
/// once; 1 024 entries of about 80 bytes (80 KiB, allocated once) cover thousands of requests
/// per second of second-long requests. Past it, new inbound requests are counted but not held:
/// they cannot be stitched to by request id, and they make any in-flight answer ambiguous.
pub const CAPACITY: usize = 1024;

/// How a span was joined to its parent; its `tracemesh.stitch` tag.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stitch {
    /// Same `x-request-id` as an inbound request in flight.
    RequestId,
    /// The only inbound request in flight.
    InFlight,
}

impl Stitch {
    /// The tag's value.
    pub const fn as_str(self) -> &'static str {
        match self {
            Stitch::RequestId => "request-id",
            Stitch::InFlight => "in-flight",
        }
    }
}

/// The tag name stitched spans carry, so a user can filter them.
pub const TAG: &str = "tracemesh.stitch";

/// The SERVER span an outbound request may be stitched to: its ids and sampling decision.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Parent {
    pub ids: SpanIds,
    pub sampling: Sampling,
}

/// What happened to an outbound request's trace context, as `/metrics` counts it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Answer {
    /// A child of this inbound request's SERVER span.
    Stitched(Stitch, Parent),
    /// Several inbound requests could be its parent: a trace of its own.
    Ambiguous,
    /// No inbound request to join (or stitching off): a trace of its own.
    Root,
}

/// Outcome labels of `mesh_proxy_trace_outbound_context_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabels {
    /// `propagated`, `stitched_request_id`, `stitched_in_flight`, `ambiguous` or `root`.
    pub outcome: &'static str,
}

/// The outcome counters, resolved once so the data path only increments them (no family lock).
#[derive(Clone, Debug)]
pub struct Counters {
    pub propagated: Counter,
    pub stitched_request_id: Counter,
    pub stitched_in_flight: Counter,
    pub ambiguous: Counter,
    pub root: Counter,
}

impl Counters {
    pub fn of(family: &Family<OutcomeLabels, Counter>) -> Self {
        let get = |outcome| family.get_or_create(&OutcomeLabels { outcome }).clone();
        Self {
            propagated: get("propagated"),
            stitched_request_id: get("stitched_request_id"),
            stitched_in_flight: get("stitched_in_flight"),
            ambiguous: get("ambiguous"),
            root: get("root"),
        }
    }

    /// Counts an outbound request without context by the table's answer.
    pub fn count(&self, answer: &Answer) {
        match answer {
            Answer::Stitched(Stitch::RequestId, _) => self.stitched_request_id.inc(),
            Answer::Stitched(Stitch::InFlight, _) => self.stitched_in_flight.inc(),
            Answer::Ambiguous => self.ambiguous.inc(),
            Answer::Root => self.root.inc(),
        };
    }
}

#[derive(Debug)]
struct Entry {
    /// Which registration this is, to remove exactly it.
    serial: u64,
    request_id: Option<HeaderValue>,
    parent: Parent,
}

/// The per-pod table of inbound requests in flight.
#[derive(Debug)]
pub struct Table {
    /// Every inbound request in flight, held or not: the in-flight answer trusts the table only
    /// when this says nothing is missing from it.
    in_flight: AtomicUsize,
    entries: Mutex<Vec<Entry>>,
    capacity: usize,
    serials: AtomicU64,
    /// The `MESH_STITCHING` override (see [`Table::set_override`]); 0 when none.
    overridden: AtomicU8,
}

impl Default for Table {
    fn default() -> Self {
        Self::with_capacity(CAPACITY)
    }
}

impl Table {
    /// A table that holds at most `capacity` requests (the vector is allocated once, here).
    pub fn with_capacity(capacity: usize) -> Self {
        Self {
            in_flight: AtomicUsize::new(0),
            entries: Mutex::new(Vec::with_capacity(capacity)),
            capacity,
            serials: AtomicU64::new(0),
            overridden: AtomicU8::new(0),
        }
    }

    /// A pod's own mode (the `tracemesh.dev/stitching` annotation, passed to the sidecar as
    /// `MESH_STITCHING`) wins over the MeshConfig's.
    pub fn set_override(&self, mode: Option<Stitching>) {
        let code = match mode {
            None => 0,
            Some(Stitching::Off) => 1,
            Some(Stitching::RequestId) => 2,
            Some(Stitching::InFlight) => 3,
        };
        self.overridden.store(code, Ordering::Relaxed);
    }

    /// The mode in force: the pod's override, else the MeshConfig's.
    pub fn mode(&self, configured: Stitching) -> Stitching {
        match self.overridden.load(Ordering::Relaxed) {
            1 => Stitching::Off,
            2 => Stitching::RequestId,
            3 => Stitching::InFlight,
            _ => configured,
        }
    }

    fn lock(&self) -> MutexGuard<'_, Vec<Entry>> {
        self.entries.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Counts an inbound request as in flight until the guard is dropped; nothing else. For a
    /// request that cannot be a parent (stitching off, tracing off): it still makes the
    /// in-flight answer ambiguous while it runs.
    pub fn count(self: &Arc<Self>) -> Registration {
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        Registration {
            table: self.clone(),
            serial: None,
        }
    }

    /// Counts an inbound request and holds it as a possible parent until the guard is
    /// dropped. A full table counts it without holding it.
    pub fn register(
        self: &Arc<Self>,
        request_id: Option<&HeaderValue>,
        parent: Parent,
    ) -> Registration {
        // Counted before it is held and forgotten after it is dropped (see `Drop`), so a
        // look-up never sees an entry that the counter does not include.
        let mut registration = self.count();
        let mut entries = self.lock();
        if entries.len() < self.capacity {
            let serial = self.serials.fetch_add(1, Ordering::Relaxed);
            entries.push(Entry {
                serial,
                request_id: request_id.cloned(),
                parent,
            });
            registration.serial = Some(serial);
        }
        registration
    }

    /// The parent of an outbound request that carries no trace context, made now.
    pub fn look_up(&self, mode: Stitching, request_id: Option<&HeaderValue>) -> Answer {
        if mode == Stitching::Off {
            return Answer::Root;
        }
        let entries = self.lock();
        if let Some(id) = request_id {
            let mut matching = entries.iter().filter(|e| e.request_id.as_ref() == Some(id));
            match (matching.next(), matching.next()) {
                (Some(only), None) => return Answer::Stitched(Stitch::RequestId, only.parent),
                // Two requests in flight with one id (a client retrying, or reusing ids): no
                // way to tell them apart.
                (Some(_), Some(_)) => return Answer::Ambiguous,
                (None, _) => {}
            }
        }
        if mode != Stitching::InFlight {
            return Answer::Root;
        }
        // Read under the lock: a request is counted before it is held and unheld before it is
        // uncounted, so a count of one with one entry means that entry is the only request.
        match (self.in_flight.load(Ordering::Acquire), entries.as_slice()) {
            (0, _) => Answer::Root,
            (1, [only]) => Answer::Stitched(Stitch::InFlight, only.parent),
            _ => Answer::Ambiguous,
        }
    }

    /// Inbound requests in flight (held or not).
    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Acquire)
    }

    /// Inbound requests the table holds.
    pub fn held(&self) -> usize {
        self.lock().len()
    }

    fn release(&self, serial: Option<u64>) {
        if let Some(serial) = serial {
            let mut entries = self.lock();
            if let Some(i) = entries.iter().position(|e| e.serial == serial) {
                entries.swap_remove(i);
            }
        }
        self.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

/// An inbound request's place in the [`Table`], released when dropped: it travels with the
/// request's span, so it ends when the response body ends or the request is cancelled.
#[derive(Debug)]
pub struct Registration {
    table: Arc<Table>,
    serial: Option<u64>,
}

impl Registration {
    /// Whether the table holds this request (it was not full and stitching was on).
    pub fn is_held(&self) -> bool {
        self.serial.is_some()
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.table.release(self.serial.take());
    }
}

#[cfg(test)]
mod tests;
