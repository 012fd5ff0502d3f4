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

use std::path::Path;

use crate::config::Global;
use crate::runtime::privileges::{self, Ids};
use crate::sys::process;
use crate::{debug, warning};

/// Tells whether privilege separation is on: as configured, or on when started
/// as root.
pub fn enabled(global: &Global) -> bool {
    global.privsep.unwrap_or_else(|| crate::sys::geteuid() == 0)
}

/// Sets `signal` as the parent-death signal of this forked child, and exits at
/// once when the parent `parent` is already gone or the call fails.
fn die_with_parent_or_exit(signal: i32, parent: libc::pid_t) {
    match process::die_with_parent(signal, parent) {
        Ok(true) => {}
        _ => crate::sys::exit_now(1),
    }
}

/// Jails a forked child with [`privileges::jail`], keeping the capabilities in
/// `keep`, sets its parent-death signal again, because changing the uid clears
/// it, and denies it every file with Landlock. `who` names the child in log
/// lines and in the returned error.
fn jail_child(
    who: &str,
    root: Option<&Path>,
    ids: Ids,
    keep: &[u32],
    signal: i32,
    parent: libc::pid_t,
) -> Result<(), String> {
    privileges::jail(root, ids, keep).map_err(|err| format!("{who}: {err}"))?;
    die_with_parent_or_exit(signal, parent);
    restrict_files(who);
    Ok(())
}

/// Applies Landlock with no file allowed to this thread and the threads it starts
/// later. `who` names the process in log lines.
fn restrict_files(who: &str) {
    match crate::sys::landlock::deny_all_files() {
        Ok(crate::sys::landlock::Enforced::Fully) => debug!("{who}: Landlock enforced"),
        Ok(status) => debug!("{who}: Landlock {status:?} enforced by this kernel"),
        Err(err) => warning!("{who}: cannot apply Landlock: {err}"),
    }
}
