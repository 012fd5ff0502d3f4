//! The seccomp filter of the jailed processes, built with the `seccompiler` crate.
//!
//! The lists below are the only place that names the syscalls a worker, the key
//! process or the metrics process may make once jailed. Any other syscall kills the whole process with
//! SIGSYS. io_uring operations bypass seccomp, so the worker's ring is restricted
//! separately (see [`super::ring::ALLOWED_OPCODES`]).

use std::collections::BTreeMap;
use std::io;

use seccompiler::{BpfProgram, SeccompAction, SeccompFilter, TargetArch};

/// Syscalls every jailed role makes: memory, threads already started, signals,
/// time, randomness for TLS, logging, and exit.
const COMMON: &[libc::c_long] = &[
    libc::SYS_read,
    libc::SYS_write,
    libc::SYS_writev,
    libc::SYS_close,
    libc::SYS_mmap,
    libc::SYS_munmap,
    libc::SYS_mremap,
    libc::SYS_mprotect,
    libc::SYS_madvise,
    libc::SYS_brk,
    libc::SYS_futex,
    libc::SYS_sched_yield,
    // glibc sizes its malloc arenas by the CPUs a thread may run on.
    libc::SYS_sched_getaffinity,
    libc::SYS_clock_gettime,
    libc::SYS_gettimeofday,
    libc::SYS_getrandom,
    // Printing a panic's backtrace reads the working directory. Without it a
    // panic would end the process with SIGSYS and hide the panic message.
    libc::SYS_getcwd,
    libc::SYS_rt_sigprocmask,
    libc::SYS_rt_sigtimedwait,
    libc::SYS_rt_sigreturn,
    // The kernel resumes an interrupted poll or futex wait with this.
    libc::SYS_restart_syscall,
    libc::SYS_fcntl,
    libc::SYS_sigaltstack,
    libc::SYS_getpid,
    libc::SYS_gettid,
    libc::SYS_tgkill,
    libc::SYS_sendto,
    libc::SYS_recvfrom,
    libc::SYS_sendmsg,
    libc::SYS_recvmsg,
    libc::SYS_ppoll,
    libc::SYS_exit,
    libc::SYS_exit_group,
];

/// poll(2) exists on x86_64 only; other architectures use ppoll.
#[cfg(target_arch = "x86_64")]
const LEGACY: &[libc::c_long] = &[libc::SYS_poll];
#[cfg(not(target_arch = "x86_64"))]
const LEGACY: &[libc::c_long] = &[];

/// Extra syscalls of a worker: its io_uring, backend sockets (created, bound to
/// `local`, and tuned), the addresses it logs, half-closes, and the kernel TLS
/// relay. Connect, accept, send and receive go through the ring.
const WORKER: &[libc::c_long] = &[
    libc::SYS_io_uring_enter,
    libc::SYS_socket,
    libc::SYS_bind,
    libc::SYS_setsockopt,
    libc::SYS_getsockopt,
    libc::SYS_getsockname,
    libc::SYS_getpeername,
    // Half-close: a FIN toward the client or the backend.
    libc::SYS_shutdown,
    // The kernel TLS relay: pipes, and splice between a socket and a pipe.
    libc::SYS_pipe2,
    libc::SYS_splice,
];

/// Extra syscalls of the metrics process: the stats listener's accept, the
/// request timeouts, the peer address it logs, and the half-close after each
/// response.
const METRICS: &[libc::c_long] = &[
    libc::SYS_accept4,
    libc::SYS_setsockopt,
    libc::SYS_getpeername,
    libc::SYS_shutdown,
];

/// Syscalls that open or look up files fail with EACCES instead of killing the
/// process, so library code that probes for a file gets an error it can handle.
/// aws-lc, for one, looks for /dev/sysgenid before its first random bytes.
const OPEN: &[libc::c_long] = &[
    libc::SYS_openat,
    libc::SYS_openat2,
    libc::SYS_newfstatat,
    libc::SYS_statx,
];

/// The process a filter is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Worker,
    Key,
    Metrics,
}

/// Lists the syscalls `role` may make (opens among them, though they fail), for
/// documentation and tests.
pub fn allowed_syscalls(role: Role) -> Vec<libc::c_long> {
    let mut list = COMMON.to_vec();
    list.extend_from_slice(LEGACY);
    list.extend_from_slice(OPEN);
    match role {
        Role::Worker => list.extend_from_slice(WORKER),
        Role::Metrics => list.extend_from_slice(METRICS),
        Role::Key => {}
    }
    list
}

/// Installs the filter for `role` on every thread of the calling process. The
/// caller must have set no_new_privs first.
pub fn install(role: Role) -> io::Result<()> {
    let rules: BTreeMap<i64, Vec<seccompiler::SeccompRule>> = allowed_syscalls(role)
        .into_iter()
        .map(|syscall| (syscall, Vec::new()))
        .collect();
    let arch = if cfg!(target_arch = "x86_64") {
        TargetArch::x86_64
    } else if cfg!(target_arch = "aarch64") {
        TargetArch::aarch64
    } else {
        return Err(io::Error::new(
            io::ErrorKind::Unsupported,
            "no seccomp filter for this CPU architecture",
        ));
    };
    let filter = SeccompFilter::new(
        rules,
        SeccompAction::KillProcess,
        SeccompAction::Allow,
        arch,
    )
    .map_err(io::Error::other)?;
    let program: BpfProgram = filter.try_into().map_err(io::Error::other)?;

    // A second filter turns opens into EACCES. The kernel runs every installed
    // filter and applies the most restrictive result, so the two combine.
    let open_rules = OPEN.iter().map(|&syscall| (syscall, Vec::new())).collect();
    let open_filter = SeccompFilter::new(
        open_rules,
        SeccompAction::Allow,
        SeccompAction::Errno(libc::EACCES as u32),
        arch,
    )
    .map_err(io::Error::other)?;
    let open_program: BpfProgram = open_filter.try_into().map_err(io::Error::other)?;

    // The open filter goes first: installing a filter calls prctl, which the
    // allowlist forbids.
    seccompiler::apply_filter_all_threads(&open_program).map_err(io::Error::other)?;
    seccompiler::apply_filter_all_threads(&program).map_err(io::Error::other)
}
