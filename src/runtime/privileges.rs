//! Entering the chroot and dropping root, in a fixed order.

use std::fmt;
use std::io;
use std::path::PathBuf;

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

fn failed(
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
    // Resolve names before chroot: /etc/passwd is usually outside the jail.
    let uid = match &global.setuid {
        Some(name) => Some(resolve_user(name)?),
        None => None,
    };
    let gid = match &global.setgid {
        Some(name) => Some(resolve_group(name)?),
        None => uid.map(|(_, primary)| primary),
    };

    if let Some(root) = &global.chroot {
        sys::chroot(root).map_err(failed("chroot", format!("chroot = {}", root.display())))?;
    }
    sys::chdir_root().map_err(failed("chdir", "chdir to /"))?;

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

    if let Some(gid) = gid {
        if sys::geteuid() == 0 {
            sys::setgroups(&[gid]).map_err(failed("setgroups", format!("setgroups to [{gid}]")))?;
        }
        sys::setgid(gid).map_err(failed("setgid", format!("setgid = {gid}")))?;
    }
    if let Some((uid, _)) = uid {
        sys::setuid(uid).map_err(failed("setuid", format!("setuid = {uid}")))?;
    }
    if global.chroot.is_some() || uid.is_some() {
        sys::set_no_new_privs().map_err(failed("no_new_privs", "prctl(PR_SET_NO_NEW_PRIVS)"))?;
    }
    Ok(pid_file)
}

fn resolve_user(name: &str) -> Result<(libc::uid_t, libc::gid_t), PrivilegeError> {
    match sys::lookup_user(name) {
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
    match sys::lookup_group(name) {
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
