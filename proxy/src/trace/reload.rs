//! Live reload: how a new MeshConfig tracing block takes effect. `mesh-proxy run` applies every
//! config snapshot it receives through [`Tracer::apply`] (`app::follow_config`).
//!
//! - The switch is one pointer swap, so it takes effect on the next request.
//! - One exporter per collector: a block that still points at the same collector (only
//!   `sampledFraction`, say, changed) keeps the running exporter, its thread and connection.
//! - A new collector gets a new exporter; the old one is retired: it sends what it queued to
//!   the old collector and its thread ends, and spans still in flight go to the new one.
//! - An exporter that cannot be built is never recorded as applied: the previous one (or none)
//!   stays in use, the failure shows in the log, `/config` and `/metrics`, and the build is
//!   retried with jittered backoff until it works or the config moves on.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use mesh_config::Tracing;
use serde::Serialize;

use super::backoff::Backoff;
use super::collector::Collector;
use super::export::BuildError;
use super::pipeline::Pipeline;
use super::{Active, Tracer};

/// A tracing block whose exporter could not be built yet.
#[derive(Debug, Clone)]
pub(crate) struct PendingBuild {
    /// Tells a retry task whether it is still the one in charge.
    id: u64,
    config: Tracing,
    error: BuildError,
    attempts: u32,
}

/// The failed build, as `/config` shows it.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct BuildStatus {
    pub collector: String,
    pub error: String,
    pub attempts: u32,
}

impl Tracer {
    /// Applies a MeshConfig tracing block (see the module doc). When the block is unchanged,
    /// or its build is already being retried, this does nothing.
    pub fn apply(&self, config: &Tracing) {
        let _serial = self
            .inner
            .applying
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        {
            let mut pending = self.pending();
            match &*pending {
                Some(p) if p.config == *config => return,
                Some(_) => {
                    // The config moved on: the retry task of the old one stops.
                    *pending = None;
                    self.inner.metrics.exporter_build_failing.set(0);
                }
                None if self.current().config == *config => return,
                None => {}
            }
        }
        if let Err(error) = self.install(config) {
            let id = self.inner.build_ids.fetch_add(1, Ordering::Relaxed);
            *self.pending() = Some(PendingBuild {
                id,
                config: config.clone(),
                error,
                attempts: 1,
            });
            self.inner.metrics.exporter_build_failing.set(1);
            self.retry_in_background(id);
        }
    }

    /// The failed build being retried, if any.
    pub fn build_status(&self) -> Option<BuildStatus> {
        self.pending().as_ref().map(|p| BuildStatus {
            collector: Collector::of(&p.config).to_string(),
            error: p.error.to_string(),
            attempts: p.attempts,
        })
    }

    fn pending(&self) -> std::sync::MutexGuard<'_, Option<PendingBuild>> {
        self.inner.pending.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Builds what `config` needs (unless its collector's exporter is running) and swaps it in.
    fn install(&self, config: &Tracing) -> Result<(), BuildError> {
        let current = self.current();
        let pipeline = if config.enable {
            let collector = Collector::of(config);
            match &current.pipeline {
                Some(running) if *running.collector() == collector => Some(running.clone()),
                _ => {
                    let generation = self.inner.generations.fetch_add(1, Ordering::Relaxed) + 1;
                    match Pipeline::start(
                        &collector,
                        &self.inner.identity,
                        self.inner.metrics.clone(),
                        generation,
                    ) {
                        Ok(p) => Some(Arc::new(p)),
                        Err(e) => {
                            self.inner.metrics.exporter_build_error(config.protocol);
                            tracing::warn!(%collector, error = %e, "span exporter not built; retrying with backoff, the previous tracing config stays in use");
                            return Err(e);
                        }
                    }
                }
            }
        } else {
            None
        };
        tracing::info!(
            enable = config.enable,
            protocol = %config.protocol,
            address = %config.address,
            port = config.port,
            sampled_fraction = config.sampled_fraction,
            exporter_generation = pipeline.as_ref().map(|p| p.generation()),
            "tracing config applied"
        );
        let next = Arc::new(Active {
            config: config.clone(),
            pipeline: pipeline.clone(),
        });
        let old = std::mem::replace(&mut *self.write(), next);
        if let Some(old) = &old.pipeline {
            let kept = pipeline.as_ref().is_some_and(|p| Arc::ptr_eq(p, old));
            if !kept {
                old.retire(pipeline);
            }
        }
        Ok(())
    }

    /// Retries the pending build `id` with jittered backoff until it works or is superseded.
    fn retry_in_background(&self, id: u64) {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            tracing::warn!(
                "no runtime to retry the span exporter build on; the next config change retries it"
            );
            return;
        };
        let weak = Arc::downgrade(&self.inner);
        runtime.spawn(async move {
            let mut backoff = Backoff::default();
            loop {
                tokio::time::sleep(backoff.next(None)).await;
                let Some(inner) = weak.upgrade() else { return };
                if !(Tracer { inner }).retry(id) {
                    return;
                }
            }
        });
    }

    /// One retry of the pending build `id`; false when there is nothing more to retry.
    fn retry(&self, id: u64) -> bool {
        let _serial = self
            .inner
            .applying
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        let config = match &*self.pending() {
            Some(p) if p.id == id => p.config.clone(),
            _ => return false,
        };
        match self.install(&config) {
            Ok(()) => {
                *self.pending() = None;
                self.inner.metrics.exporter_build_failing.set(0);
                false
            }
            Err(error) => {
                if let Some(p) = self.pending().as_mut() {
                    p.attempts += 1;
                    p.error = error;
                }
                true
            }
        }
    }
}
