//! The MeshConfig document shared by every tracemesh binary: the one config type that flows into
//! the proxy, the injector and the CLI. Nothing else parses the document.

pub mod bounded;
pub mod crd;
mod document;
mod duration;
mod error;
pub mod images;
pub mod openapi;
mod parse;
pub mod resource;
mod schema;
mod validate;
pub mod yaml11;

pub use document::*;
pub use duration::{parse as parse_duration, Duration};
pub use error::{Bound, ConfigError, FieldError};
pub use parse::{merge_patch, parse, parse_strict, Parsed};
pub use validate::{parse_cidr, parse_prefixed_cidr};
pub mod watch;
