//! Pieces of the load bench: an echo server (HTTP/1.1, h2c, gRPC unary), a bounded load
//! generator, gRPC framing, an opaque TCP sink, latency statistics, sidecar processes (ours and
//! Envoy) and their comparison, a trace sink, `/metrics` scraping and the soak verdict. The
//! binaries in `src/bin/` compose them.

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
pub mod spans;
pub mod stats;
pub mod tcp;
pub mod workloads;
