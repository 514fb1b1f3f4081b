//! mesh-proxy: the tracemesh sidecar.
#![deny(rust_2018_idioms)]
#![forbid(unsafe_code)]

pub mod init;
pub mod trace;
