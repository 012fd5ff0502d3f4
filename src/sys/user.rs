//! User and group lookups through the C library (`getpwnam_r`, `getgrnam_r`), so
//! names come from the same sources (files, LDAP, systemd) as the rest of the system.

use std::ffi::CString;
use std::io;
use std::mem::MaybeUninit;

/// Initial buffer for the string fields of a passwd or group entry; it doubles on
/// `ERANGE` up to `MAX_BUFFER`.
const START_BUFFER: usize = 1024;
const MAX_BUFFER: usize = 1 << 20;

/// Looks up a user by name and returns its uid, or `None` when no such user exists.
pub fn uid_by_name(name: &str) -> io::Result<Option<u32>> {
    Ok(user_by_name(name)?.map(|(uid, _)| uid))
}

/// Looks up a user by name and returns its uid and primary gid, or `None` when no
/// such user exists.
pub fn user_by_name(name: &str) -> io::Result<Option<(u32, u32)>> {
    let name = c_name(name)?;
    let mut buffer = vec![0 as libc::c_char; START_BUFFER];
    loop {
        let mut entry = MaybeUninit::<libc::passwd>::uninit();
        let mut result: *mut libc::passwd = std::ptr::null_mut();
        // SAFETY: `name` is NUL-terminated, `entry` and `result` point to writable
        // storage of the right types, and `buffer` is writable for `buffer.len()` bytes.
        let code = unsafe {
            libc::getpwnam_r(
                name.as_ptr(),
                entry.as_mut_ptr(),
                buffer.as_mut_ptr(),
                buffer.len(),
                &mut result,
            )
        };
        match lookup_outcome(code, result.is_null(), &mut buffer)? {
            Outcome::Retry => continue,
            Outcome::Missing => return Ok(None),
            Outcome::Found => {
                // SAFETY: getpwnam_r returned 0 with a non-null `result`, so it
                // initialized `entry` (`result` points to it).
                let entry = unsafe { entry.assume_init() };
                return Ok(Some((entry.pw_uid, entry.pw_gid)));
            }
        }
    }
}

/// Looks up a group by name and returns its gid, or `None` when no such group exists.
pub fn gid_by_name(name: &str) -> io::Result<Option<u32>> {
    let name = c_name(name)?;
    let mut buffer = vec![0 as libc::c_char; START_BUFFER];
    loop {
        let mut entry = MaybeUninit::<libc::group>::uninit();
        let mut result: *mut libc::group = std::ptr::null_mut();
        // SAFETY: `name` is NUL-terminated, `entry` and `result` point to writable
        // storage of the right types, and `buffer` is writable for `buffer.len()` bytes.
        let code = unsafe {
            libc::getgrnam_r(
                name.as_ptr(),
                entry.as_mut_ptr(),
                buffer.as_mut_ptr(),
                buffer.len(),
                &mut result,
            )
        };
        match lookup_outcome(code, result.is_null(), &mut buffer)? {
            Outcome::Retry => continue,
            Outcome::Missing => return Ok(None),
            Outcome::Found => {
                // SAFETY: getgrnam_r returned 0 with a non-null `result`, so it
                // initialized `entry` (`result` points to it).
                let entry = unsafe { entry.assume_init() };
                return Ok(Some(entry.gr_gid));
            }
        }
    }
}

enum Outcome {
    Found,
    Missing,
    Retry,
}

fn c_name(name: &str) -> io::Result<CString> {
    CString::new(name)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "name contains a NUL byte"))
}

/// Interprets the return code of `get*nam_r`, growing `buffer` when it was too small.
fn lookup_outcome(
    code: libc::c_int,
    missing: bool,
    buffer: &mut Vec<libc::c_char>,
) -> io::Result<Outcome> {
    match code {
        0 if missing => Ok(Outcome::Missing),
        0 => Ok(Outcome::Found),
        libc::ERANGE if buffer.len() < MAX_BUFFER => {
            let larger = buffer.len() * 2;
            buffer.resize(larger, 0);
            Ok(Outcome::Retry)
        }
        // POSIX lets these mean "not found" as well.
        libc::ENOENT | libc::ESRCH | libc::EBADF | libc::EPERM => Ok(Outcome::Missing),
        code => Err(io::Error::from_raw_os_error(code)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn root_user_and_group_found() {
        assert_eq!(uid_by_name("root").unwrap(), Some(0));
        assert_eq!(gid_by_name("root").unwrap(), Some(0));
    }

    #[test]
    fn missing_names_return_none() {
        assert_eq!(uid_by_name("tlsplice-no-such-user").unwrap(), None);
        assert_eq!(gid_by_name("tlsplice-no-such-group").unwrap(), None);
    }
}
