//! The syscall layer: every `unsafe` block in tlsplice is in this module, and each
//! states the invariant it relies on in a `// SAFETY:` comment.

pub mod fd;
pub mod ktls;
pub mod landlock;
pub mod process;
pub mod ring;
pub mod seccomp;
pub mod suspend;
pub mod user;

use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::Path;

pub(crate) fn check(result: libc::c_int) -> io::Result<libc::c_int> {
    if result < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(result)
    }
}

/// Pins the calling thread to one CPU.
pub fn pin_to_cpu(cpu: usize) -> io::Result<()> {
    // SAFETY: cpu_set_t is plain data; zeroed is its empty set, and CPU_SET
    // ignores indexes past the set's size.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        check(libc::sched_setaffinity(
            0,
            std::mem::size_of::<libc::cpu_set_t>(),
            &set,
        ))?;
    }
    Ok(())
}

/// CPUs this process may run on, in ascending order.
pub fn allowed_cpus() -> Vec<usize> {
    // SAFETY: sched_getaffinity writes at most size_of::<cpu_set_t>() bytes into
    // the zeroed set; CPU_ISSET reads inside it.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        if libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) != 0 {
            return Vec::new();
        }
        (0..libc::CPU_SETSIZE as usize)
            .filter(|&cpu| libc::CPU_ISSET(cpu, &set))
            .collect()
    }
}

/// Creates a non-blocking, close-on-exec eventfd.
pub fn eventfd() -> io::Result<OwnedFd> {
    // SAFETY: eventfd takes no pointers; a non-negative result is a new fd that
    // nothing else owns.
    unsafe {
        let fd = check(libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK))?;
        Ok(OwnedFd::from_raw_fd(fd))
    }
}

/// Adds one to an eventfd's counter, waking a reader.
pub fn eventfd_signal(fd: &OwnedFd) -> io::Result<()> {
    let one: u64 = 1;
    // SAFETY: the buffer is a live u64 and the length is its size.
    let written = unsafe { libc::write(fd.as_raw_fd(), (&one as *const u64).cast(), 8) };
    if written < 0 {
        let err = io::Error::last_os_error();
        // A full counter already wakes the reader.
        if err.raw_os_error() != Some(libc::EAGAIN) {
            return Err(err);
        }
    }
    Ok(())
}

/// Raises the soft RLIMIT_NOFILE to the hard limit; returns the new soft limit.
pub fn raise_fd_limit() -> io::Result<u64> {
    // SAFETY: getrlimit and setrlimit read and write a local rlimit struct.
    unsafe {
        let mut limit: libc::rlimit = std::mem::zeroed();
        check(libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit))?;
        if limit.rlim_cur < limit.rlim_max {
            limit.rlim_cur = limit.rlim_max;
            check(libc::setrlimit(libc::RLIMIT_NOFILE, &limit))?;
        }
        Ok(limit.rlim_cur)
    }
}

/// Lets a socket bind to `local` without reserving the port until connect, so many
/// backend connections from one `local` address do not exhaust ephemeral ports.
pub fn set_bind_address_no_port(fd: RawFd) -> io::Result<()> {
    setsockopt_int(fd, libc::IPPROTO_IP, libc::IP_BIND_ADDRESS_NO_PORT, 1)
}

/// Sets an integer socket option.
pub fn setsockopt_int(fd: RawFd, level: i32, name: i32, value: i32) -> io::Result<()> {
    // SAFETY: the option value is a live c_int and the length is its size; the
    // kernel validates `fd`, `level` and `name`.
    unsafe {
        check(libc::setsockopt(
            fd,
            level,
            name,
            (&value as *const i32).cast(),
            std::mem::size_of::<i32>() as libc::socklen_t,
        ))?;
    }
    Ok(())
}

fn path_cstring(path: &Path) -> io::Result<CString> {
    use std::os::unix::ffi::OsStrExt;
    CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path contains a NUL byte"))
}

/// chroot(2) into `dir`, then chdir("/") so no directory outside stays reachable.
pub fn chroot(dir: &Path) -> io::Result<()> {
    let dir = path_cstring(dir)?;
    // SAFETY: `dir` is a NUL-terminated string that outlives the call.
    check(unsafe { libc::chroot(dir.as_ptr()) })?;
    Ok(())
}

pub fn chdir_root() -> io::Result<()> {
    // SAFETY: the argument is a NUL-terminated static string.
    check(unsafe { libc::chdir(c"/".as_ptr()) })?;
    Ok(())
}

/// Replaces the supplementary groups with `groups`.
pub fn setgroups(groups: &[libc::gid_t]) -> io::Result<()> {
    // SAFETY: the pointer and length describe a live slice.
    check(unsafe { libc::setgroups(groups.len(), groups.as_ptr()) })?;
    Ok(())
}

/// Sets the real, effective and saved group ids.
pub fn setgid(gid: libc::gid_t) -> io::Result<()> {
    // SAFETY: plain integer arguments. glibc applies the change to every thread.
    check(unsafe { libc::setresgid(gid, gid, gid) })?;
    Ok(())
}

/// Sets the real, effective and saved user ids.
pub fn setuid(uid: libc::uid_t) -> io::Result<()> {
    // SAFETY: plain integer arguments. glibc applies the change to every thread.
    check(unsafe { libc::setresuid(uid, uid, uid) })?;
    Ok(())
}

/// Sets PR_SET_NO_NEW_PRIVS: no exec from here on can gain privileges.
pub fn set_no_new_privs() -> io::Result<()> {
    // SAFETY: prctl with PR_SET_NO_NEW_PRIVS takes only integer arguments.
    check(unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) })?;
    Ok(())
}

/// Capabilities a jailed process may keep, as their Linux bit numbers.
pub mod capability {
    /// Needed for IP_TRANSPARENT (`transparent = source`).
    pub const NET_ADMIN: u32 = 12;
    /// Needed to connect to a Unix socket whose permissions do not admit root
    /// without it, as a socket owned by another user with mode 0660 does not.
    pub const DAC_OVERRIDE: u32 = 1;
}

/// Header of the capset(2) call, version 3 (64-bit capability sets).
#[repr(C)]
struct CapHeader {
    version: u32,
    pid: libc::c_int,
}

/// One 32-bit half of the capability sets of capset(2).
#[repr(C)]
#[derive(Clone, Copy, Default)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

const CAPABILITY_VERSION_3: u32 = 0x2008_0522;

/// Drops every capability of the calling thread except those in `keep` (see
/// [`capability`]), from the effective, permitted and inheritable sets.
pub fn drop_capabilities(keep: &[u32]) -> io::Result<()> {
    let mut data = [CapData::default(); 2];
    for &cap in keep {
        let half = &mut data[(cap / 32) as usize];
        let bit = 1u32 << (cap % 32);
        half.effective |= bit;
        half.permitted |= bit;
    }
    let header = CapHeader {
        version: CAPABILITY_VERSION_3,
        pid: 0,
    };
    // SAFETY: `header` is a valid version 3 header and `data` the two elements
    // that version reads; both outlive the call, which only reads them.
    check(unsafe {
        libc::syscall(libc::SYS_capset, &header as *const CapHeader, data.as_ptr()) as libc::c_int
    })?;
    Ok(())
}

pub fn geteuid() -> libc::uid_t {
    // SAFETY: geteuid cannot fail and takes no arguments.
    unsafe { libc::geteuid() }
}

/// The result of [`fork`] in each process.
pub enum Forked {
    Parent(libc::pid_t),
    Child,
}

/// fork(2). Call it only while the process has a single thread: the child gets a
/// copy of the calling thread alone, and locks held by other threads stay locked.
pub fn fork() -> io::Result<Forked> {
    // SAFETY: the caller guarantees the process is single-threaded, so the child
    // inherits no lock held by another thread.
    let pid = check(unsafe { libc::fork() })?;
    Ok(if pid == 0 {
        Forked::Child
    } else {
        Forked::Parent(pid)
    })
}

/// Starts a new session, detaching from the controlling terminal.
pub fn setsid() -> io::Result<()> {
    // SAFETY: setsid takes no arguments.
    check(unsafe { libc::setsid() })?;
    Ok(())
}

/// Points fd 0, 1 and 2 at /dev/null.
pub fn redirect_stdio_to_null() -> io::Result<()> {
    let null = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/null")?;
    for target in 0..3 {
        // SAFETY: dup2 onto the standard descriptors; `null` stays open for the call.
        check(unsafe { libc::dup2(null.as_raw_fd(), target) })?;
    }
    Ok(())
}

/// Terminates the process at once with `code`, skipping destructors and atexit
/// handlers; used by the parent half of a daemonizing fork.
pub fn exit_now(code: i32) -> ! {
    // SAFETY: _exit takes an integer and never returns.
    unsafe { libc::_exit(code) }
}

/// Signals handled by the main thread.
pub const HANDLED_SIGNALS: [i32; 5] = [
    libc::SIGTERM,
    libc::SIGINT,
    libc::SIGHUP,
    libc::SIGUSR1,
    libc::SIGCHLD,
];

fn handled_set() -> libc::sigset_t {
    // SAFETY: sigemptyset initialises the local set; sigaddset only touches it.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for signal in HANDLED_SIGNALS {
            libc::sigaddset(&mut set, signal);
        }
        set
    }
}

/// Blocks the handled signals in the calling thread and in threads it starts
/// later, so only [`wait_signal`] receives them. SIGPIPE is ignored: a send to a
/// closed socket returns EPIPE instead.
pub fn block_signals() -> io::Result<()> {
    let set = handled_set();
    // SAFETY: `set` is an initialised sigset; the old mask is not requested.
    unsafe {
        let rc = libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        if rc != 0 {
            return Err(io::Error::from_raw_os_error(rc));
        }
        libc::signal(libc::SIGPIPE, libc::SIG_IGN);
    }
    Ok(())
}

/// Waits for one of the blocked signals, or for `timeout`; returns the signal.
pub fn wait_signal(timeout: std::time::Duration) -> Option<i32> {
    let set = handled_set();
    let timespec = libc::timespec {
        tv_sec: timeout.as_secs() as libc::time_t,
        tv_nsec: timeout.subsec_nanos() as libc::c_long,
    };
    // SAFETY: `set` and `timespec` are initialised locals; no siginfo is requested.
    let signal = unsafe { libc::sigtimedwait(&set, std::ptr::null_mut(), &timespec) };
    (signal > 0).then_some(signal)
}

/// Sets IP_TRANSPARENT (or IPV6_TRANSPARENT), so the socket may bind to an
/// address that is not local. Needs CAP_NET_ADMIN.
pub fn set_transparent(fd: RawFd, ipv6: bool) -> io::Result<()> {
    if ipv6 {
        setsockopt_int(fd, libc::IPPROTO_IPV6, libc::IPV6_TRANSPARENT, 1)
    } else {
        setsockopt_int(fd, libc::IPPROTO_IP, libc::IP_TRANSPARENT, 1)
    }
}
