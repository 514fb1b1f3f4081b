//! tracemesh control plane: the sidecar injection webhook and the MeshConfig server.
//!
//! A request reads top to bottom: `tls` (accept; the certificate from the Secret or from files) → `server` (routing) →
//! `admission` (AdmissionReview decode/encode) → `inject` (pure decision + JSONPatch, with
//! `probes` rewriting app probes) or `configserver` (ETag + long-poll over `served` snapshots that
//! a `backend` keeps current; `metrics` counts what happens).
//!
//! The certificate's life runs beside it: `identity` checks the Secret on every replica
//! (`secret` stores what `certs` decides), serves it through `tls`, and keeps the webhook's
//! caBundle in step (`cabundle`).

pub mod admission;
pub mod annotations;
pub mod backend;
pub mod cabundle;
pub mod certs;
pub mod configserver;
pub mod document;
pub mod identity;
pub mod inject;
pub mod metrics;
pub mod probes;
pub mod secret;
pub mod served;
pub mod server;
pub mod stitching;
pub mod tls;
