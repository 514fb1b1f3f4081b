//! Pieces of the load bench: an echo server, a bounded load generator, latency statistics,
//! sidecar processes and a trace sink. The binary in `src/bin/load.rs` composes them.

pub mod cpu;
pub mod echo;
pub mod load;
pub mod server;
pub mod sidecar;
pub mod sink;
pub mod stats;
