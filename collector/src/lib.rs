//! Development trace receiver.
#![forbid(unsafe_code)]
