//! mesh-proxy: the tracemesh sidecar.
//!
//! A request reads top to bottom through the modules: [`listener`] accepts → [`inbound`] /
//! [`outbound`] find the destination ([`orig_dst`], static [`route`]s, or the [`forward`] proxy)
//! → [`connection`] runs [`detect`] → [`http`] (trace hook, pooled upstream, [`body`] finishing
//! the span) or [`tcp`] (copy with half-close). [`app`] wires it, [`admin`] and [`metrics`]
//! report it, [`shutdown`] drains it.

pub mod admin;
pub mod app;
pub mod body;
pub mod cli;
pub mod config;
pub mod connect;
pub mod connection;
pub mod context;
pub mod dest_limit;
pub mod detect;
pub mod error;
pub mod forward;
pub mod h2_pool;
pub mod half_close;
pub mod headers;
pub mod histogram;
pub mod http;
pub mod idle;
pub mod inbound;
pub mod init;
pub mod listener;
pub mod log;
pub mod metrics;
pub mod orig_dst;
pub mod outbound;
pub mod park;
pub mod peer;
pub mod prefixed;
pub mod probes;
pub mod route;
pub mod run;
pub mod runtime;
pub mod server;
pub mod shutdown;
pub mod tcp;
pub mod trace;
pub mod tunnel;
