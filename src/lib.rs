//! tlsplice: a TLS terminator for Linux.
//!
//! A connection's life, by module:
//! - [`config`] reads the stunnel-style configuration file or command-line flags;
//! - [`runtime`] runs one io_uring worker per CPU, each with its own listeners and
//!   connection slab;
//! - [`tls`] loads certificates and drives the rustls handshake;
//! - [`relay`] moves bytes between the client and the backend after the handshake;
//! - [`log`] writes diagnostics and the one line per finished connection;
//! - [`proxy`] encodes and decodes PROXY protocol headers;
//! - [`correlate`] joins a backend's access log with the connection log;
//! - [`metrics`] records latency histograms and counters per worker and exports them.
//!
//! All `unsafe` code lives in [`sys`]; every other module is checked by
//! `#![deny(unsafe_code)]` at this root.

#![deny(unsafe_code)]

pub mod cli;
pub mod config;
pub mod correlate;
pub mod log;
pub mod metrics;
pub mod proxy;
pub mod relay;
pub mod runtime;
#[allow(unsafe_code)]
pub mod sys;
pub mod tls;
