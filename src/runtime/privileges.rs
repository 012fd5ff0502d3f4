//! Entering the chroot and dropping root, in a fixed order.

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};

use crate::config::Global;
use crate::sys;

/// A privilege step that failed, named so the operator knows which.
#[derive(Debug)]
pub struct PrivilegeError {
    pub step: &'static str,
    pub detail: String,
    pub error: Option<io::Error>,
}

impl fmt::Display for PrivilegeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "dropping privileges failed at {}: {}",
            self.step, self.detail
        )?;
        if let Some(error) = &self.error {
            write!(f, ": {error}")?;
        }
        Ok(())
    }
}

impl std::error::Error for PrivilegeError {}

pub(crate) fn failed(
    step: &'static str,
    detail: impl Into<String>,
) -> impl FnOnce(io::Error) -> PrivilegeError {
    let detail = detail.into();
    move |error| PrivilegeError {
        step,
        detail,
        error: Some(error),
    }
}

/// Enters the chroot, writes the pid file, and drops to the configured user and
/// group: chroot, chdir, pid file, setgroups, setgid, setuid, no_new_privs. Returns
/// the pid file's path as seen from inside the jail, for removal at exit.
pub fn drop_privileges(global: &Global) -> Result<Option<PathBuf>, PrivilegeError> {
    let ids = resolve_ids(global.setuid.as_deref(), global.setgid.as_deref())?;
    enter_root(global.chroot.as_deref())?;

    let pid_file = match &global.pid {
        Some(path) => {
            std::fs::write(path, format!("{}\n", std::process::id())).map_err(failed(
                "pid",
                format!("cannot write pid file {}", path.display()),
            ))?;
            Some(path.clone())
        }
        None => None,
    };

    switch_ids(ids)?;
    if global.chroot.is_some() || ids.uid.is_some() {
        sys::set_no_new_privs().map_err(failed("no_new_privs", "prctl(PR_SET_NO_NEW_PRIVS)"))?;
    }
    Ok(pid_file)
}

/// Jails a privilege-separated process: chroot to `root` (if any), chdir,
/// setgroups, setgid, setuid to `user` and `group` (if any), then no_new_privs,
/// which is set even when nothing else changes because a seccomp filter needs it.
/// A process that is still root after that drops every capability except
/// `keep` (see [`sys::capability`]). Resolve the names with [`resolve_ids`]
/// before the chroot hides /etc.
pub fn jail(root: Option<&Path>, ids: Ids, keep: &[u32]) -> Result<(), PrivilegeError> {
    enter_root(root)?;
    switch_ids(ids)?;
    if sys::geteuid() == 0 {
        sys::drop_capabilities(keep).map_err(failed("capabilities", "capset"))?;
    }
    sys::set_no_new_privs().map_err(failed("no_new_privs", "prctl(PR_SET_NO_NEW_PRIVS)"))
}

/// A user and group to switch to, resolved from names.
#[derive(Debug, Clone, Copy, Default)]
pub struct Ids {
    /// The uid, with the user's primary gid.
    pub uid: Option<(libc::uid_t, libc::gid_t)>,
    pub gid: Option<libc::gid_t>,
}

/// Looks up `user` and `group`; without `group`, the user's primary group is used.
pub fn resolve_ids(user: Option<&str>, group: Option<&str>) -> Result<Ids, PrivilegeError> {
    let uid = match user {
        Some(name) => Some(resolve_user(name)?),
        None => None,
    };
    let gid = match group {
        Some(name) => Some(resolve_group(name)?),
        None => uid.map(|(_, primary)| primary),
    };
    Ok(Ids { uid, gid })
}

fn enter_root(root: Option<&Path>) -> Result<(), PrivilegeError> {
    if let Some(root) = root {
        sys::chroot(root).map_err(failed("chroot", format!("chroot = {}", root.display())))?;
    }
    sys::chdir_root().map_err(failed("chdir", "chdir to /"))
}

fn switch_ids(ids: Ids) -> Result<(), PrivilegeError> {
    if let Some(gid) = ids.gid {
        if sys::geteuid() == 0 {
            sys::setgroups(&[gid]).map_err(failed("setgroups", format!("setgroups to [{gid}]")))?;
        }
        sys::setgid(gid).map_err(failed("setgid", format!("setgid = {gid}")))?;
    }
    if let Some((uid, _)) = ids.uid {
        sys::setuid(uid).map_err(failed("setuid", format!("setuid = {uid}")))?;
    }
    Ok(())
}

fn resolve_user(name: &str) -> Result<(libc::uid_t, libc::gid_t), PrivilegeError> {
    match sys::user::user_by_name(name).map(|found| {
        // A numeric id with no passwd entry has no primary group of its own.
        found.or_else(|| name.parse().ok().map(|uid| (uid, uid)))
    }) {
        Ok(Some(ids)) => Ok(ids),
        Ok(None) => Err(PrivilegeError {
            step: "setuid",
            detail: format!("user `{name}` not found; create it or name an existing user"),
            error: None,
        }),
        Err(error) => Err(failed("setuid", format!("cannot look up user `{name}`"))(
            error,
        )),
    }
}

fn resolve_group(name: &str) -> Result<libc::gid_t, PrivilegeError> {
    match sys::user::gid_by_name(name).map(|found| found.or_else(|| name.parse().ok())) {
        Ok(Some(gid)) => Ok(gid),
        Ok(None) => Err(PrivilegeError {
            step: "setgid",
            detail: format!("group `{name}` not found; create it or name an existing group"),
            error: None,
        }),
        Err(error) => Err(failed("setgid", format!("cannot look up group `{name}`"))(
            error,
        )),
    }
}
