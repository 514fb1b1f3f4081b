//! Pieces of the load bench: an echo server, a bounded load generator, latency statistics,
//! sidecar processes (ours and Envoy), a trace sink, `/metrics` scraping and the soak verdict.
//! The binaries in `src/bin/` compose them.

pub mod compare;
pub mod cpu;
pub mod echo;
pub mod envoy;
pub mod grpc;
pub mod load;
pub mod scrape;
pub mod server;
pub mod sidecar;
pub mod sink;
pub mod soak;
pub mod stats;
pub mod tcp;
pub mod workloads;
