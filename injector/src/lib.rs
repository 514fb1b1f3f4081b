//! tracemesh control plane: the sidecar injection webhook and the MeshConfig server.
//!
//! A request reads top to bottom: `tls` (accept, hot-reloaded certificate) → `server` (routing) →
//! `admission` (AdmissionReview decode/encode) → `inject` (pure decision + JSONPatch, with
//! `probes` rewriting app probes) or `configserver` (ETag + long-poll over `served` snapshots that
//! a `backend` keeps current).
#![deny(rust_2018_idioms)]
#![forbid(unsafe_code)]

pub mod admission;
pub mod annotations;
pub mod backend;
pub mod cabundle;
pub mod certs;
pub mod configserver;
pub mod document;
pub mod inject;
pub mod metrics;
pub mod probes;
pub mod secret;
pub mod served;
pub mod server;
pub mod tls;
