//! Privilege separation: private keys in a key process, network input in jailed
//! worker processes, metrics in a jailed metrics process, and a parent that keeps
//! root only to bind, log and restart.
//!
//! - [`parent`] starts the others, supervises them and handles signals;
//! - [`key`] loads the keys and signs on request;
//! - [`metrics`] merges the workers' metrics and serves `stats` and `histogram_log`;
//! - [`worker`] runs one io_uring worker in a chroot under a seccomp filter;
//! - [`signer`] is the workers' rustls signing key that forwards to the key process;
//! - [`protocol`] encodes and checks the messages between them.
//!
//! `privsep = no` keeps the single-process model of [`crate::runtime`].

pub mod key;
pub mod metrics;
pub mod parent;
pub mod protocol;
pub mod signer;
pub mod worker;

use crate::config::Global;

/// Tells whether privilege separation is on: as configured, or on when started
/// as root.
pub fn enabled(global: &Global) -> bool {
    global.privsep.unwrap_or_else(|| crate::sys::geteuid() == 0)
}
