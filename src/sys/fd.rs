//! File descriptors inherited from the process that started tlsplice.

use std::io;

/// Lowest descriptor that is not stdin, stdout or stderr.
const FIRST_INHERITED: libc::c_uint = 3;

/// Closes every descriptor above stderr that the process inherited, so that a
/// pipe or file of the launching shell does not reach the jailed children.
///
/// Call it first thing in `main`, before anything in the process opens a
/// file, because it closes descriptors without regard to who owns them.
pub fn close_inherited() -> io::Result<()> {
    let no_flags: libc::c_uint = 0;
    // SAFETY: close_range takes no pointers. The caller runs this before the
    // process opens any descriptor, so no Rust value owns one of those closed.
    let result = unsafe {
        libc::syscall(
            libc::SYS_close_range,
            FIRST_INHERITED,
            libc::c_uint::MAX,
            no_flags,
        )
    };
    if result == 0 {
        return Ok(());
    }
    let error = io::Error::last_os_error();
    if error.raw_os_error() != Some(libc::ENOSYS) {
        return Err(error);
    }
    // Kernels before 5.9 lack close_range(2): close what /proc lists instead.
    close_listed()
}

/// Closes each descriptor above stderr that /proc/self/fd lists.
// NOTE: no test reaches this path, because it runs only on kernels before 5.9.
fn close_listed() -> io::Result<()> {
    // The directory's own descriptor is in the listing and closed after the
    // read, so closing it again fails with EBADF, which is ignored.
    let descriptors: Vec<libc::c_int> = std::fs::read_dir("/proc/self/fd")?
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse().ok())
        .filter(|&fd: &libc::c_int| fd >= FIRST_INHERITED as libc::c_int)
        .collect();
    for fd in descriptors {
        // SAFETY: as in close_inherited, no Rust value owns a descriptor yet
        // besides the directory above, which is dropped by now.
        unsafe {
            libc::close(fd);
        }
    }
    Ok(())
}
