//! Development trace receiver: takes Zipkin v2 JSON, OTLP/HTTP protobuf and OTLP/gRPC, normalises
//! every span to the Zipkin v2 model, keeps them for inspection and renders traces as trees.
//!
//! Used by `mesh collector`, by `mesh demo` and, in-process, by the end-to-end tests, which is why
//! it validates what it receives as strictly as a real Zipkin would.

pub mod cli;
mod collector;
mod grpc;
mod http;
pub mod otlp;
pub mod span;
mod store;
pub mod tree;
pub mod zipkin;

pub use collector::{Collector, CollectorConfig, RunningCollector, StartError, WaitError};
pub use http::{OTLP_PATH, ZIPKIN_PATH};
pub use span::{Annotation, Endpoint, Kind, Span};
pub use tree::render_tree;
