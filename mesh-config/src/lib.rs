//! The MeshConfig document shared by every tracemesh binary: the one config type that flows into
//! the proxy, the injector and the CLI. Nothing else parses the document.
#![deny(rust_2018_idioms)]
#![forbid(unsafe_code)]

mod document;
pub use document::*;
