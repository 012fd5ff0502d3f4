//! Syscalls for privilege separation: packet socketpairs between processes, child
//! reaping, signals to children, the parent-death signal, the key threads'
//! scheduling policy, and the monotonic clock shared by all processes of the
//! machine.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::time::Duration;

use super::check;

/// Creates a connected pair of close-on-exec `SOCK_SEQPACKET` UNIX sockets. Each
/// send is delivered as one whole message, so a process that dies mid-request
/// leaves no partial frame behind for the next reader.
pub fn seqpacket_pair() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0 as libc::c_int; 2];
    // SAFETY: `fds` is a live array of two c_ints, which socketpair fills with two
    // new descriptors that nothing else owns.
    unsafe {
        check(libc::socketpair(
            libc::AF_UNIX,
            libc::SOCK_SEQPACKET | libc::SOCK_CLOEXEC,
            0,
            fds.as_mut_ptr(),
        ))?;
        Ok((OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])))
    }
}

/// Sends `message` as one packet.
pub fn send_packet(fd: &OwnedFd, message: &[u8]) -> io::Result<()> {
    send_with_flags(fd, message, libc::MSG_NOSIGNAL)
}

/// Sends `message` as one packet without waiting. Returns false, having sent
/// nothing, when the peer's queue is full.
pub fn try_send_packet(fd: &OwnedFd, message: &[u8]) -> io::Result<bool> {
    match send_with_flags(fd, message, libc::MSG_NOSIGNAL | libc::MSG_DONTWAIT) {
        Ok(()) => Ok(true),
        Err(err) if err.kind() == io::ErrorKind::WouldBlock => Ok(false),
        Err(err) => Err(err),
    }
}

fn send_with_flags(fd: &OwnedFd, message: &[u8], flags: libc::c_int) -> io::Result<()> {
    loop {
        // SAFETY: the pointer and length describe the live `message` slice.
        let sent = unsafe {
            libc::send(
                fd.as_raw_fd(),
                message.as_ptr().cast(),
                message.len(),
                flags,
            )
        };
        if sent >= 0 {
            return Ok(());
        }
        let err = io::Error::last_os_error();
        if err.kind() != io::ErrorKind::Interrupted {
            return Err(err);
        }
    }
}

/// One received packet.
#[derive(Debug, PartialEq, Eq)]
pub enum Packet {
    /// The packet's length; its bytes are at the start of the buffer.
    Data(usize),
    /// The packet was longer than the buffer; its tail was discarded.
    Truncated(usize),
    /// The peer closed its end.
    Closed,
}

/// Receives one packet into `buf`, waiting at most `timeout` (`None` waits
/// forever). Returns `ErrorKind::TimedOut` when nothing arrived in time.
pub fn recv_packet(fd: &OwnedFd, buf: &mut [u8], timeout: Option<Duration>) -> io::Result<Packet> {
    if let Some(timeout) = timeout {
        if !poll_readable(fd, timeout)? {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "no packet before the deadline",
            ));
        }
    }
    recv_with_flags(fd, buf, 0)
}

/// Receives one packet into `buf` like [`recv_packet`] if one is queued, and
/// returns `None` at once if none is.
pub fn try_recv_packet(fd: &OwnedFd, buf: &mut [u8]) -> io::Result<Option<Packet>> {
    match recv_with_flags(fd, buf, libc::MSG_DONTWAIT) {
        Ok(packet) => Ok(Some(packet)),
        Err(err) if err.kind() == io::ErrorKind::WouldBlock => Ok(None),
        Err(err) => Err(err),
    }
}

fn recv_with_flags(fd: &OwnedFd, buf: &mut [u8], flags: libc::c_int) -> io::Result<Packet> {
    loop {
        // SAFETY: the pointer and length describe the live, writable `buf`. With
        // MSG_TRUNC the kernel still writes at most `buf.len()` bytes, and it
        // returns the packet's full length.
        let received = unsafe {
            libc::recv(
                fd.as_raw_fd(),
                buf.as_mut_ptr().cast(),
                buf.len(),
                libc::MSG_TRUNC | flags,
            )
        };
        if received >= 0 {
            return classify(fd, received as usize, buf.len());
        }
        let err = io::Error::last_os_error();
        if err.kind() != io::ErrorKind::Interrupted {
            return Err(err);
        }
    }
}

/// Classifies a received packet of full length `len` read into a buffer of
/// `capacity` bytes.
fn classify(fd: &OwnedFd, len: usize, capacity: usize) -> io::Result<Packet> {
    if len > capacity {
        Ok(Packet::Truncated(len))
    } else if len > 0 {
        Ok(Packet::Data(len))
    } else if peer_closed(fd)? {
        // An empty packet also reads as 0 bytes, so only a hang-up means closed.
        Ok(Packet::Closed)
    } else {
        Ok(Packet::Data(0))
    }
}

/// Receives one packet into `buf` like [`recv_packet`] with no timeout, and
/// returns the pid of the process that sent it. The kernel attaches the sender's
/// pid only when `fd` has SO_PASSCRED set, so the pid is `None` on other sockets.
pub fn recv_packet_with_sender(
    fd: &OwnedFd,
    buf: &mut [u8],
) -> io::Result<(Packet, Option<libc::pid_t>)> {
    recv_with_control(fd, buf, 0, sender_pid)
}

/// Receives one packet into `buf` with recvmsg, waiting as long as it takes, and
/// returns what `read_control` takes from the control messages that came with it.
fn recv_with_control<T>(
    fd: &OwnedFd,
    buf: &mut [u8],
    flags: libc::c_int,
    read_control: impl Fn(&libc::msghdr) -> T,
) -> io::Result<(Packet, T)> {
    // Room for one SCM_CREDENTIALS message, or one SCM_RIGHTS message of
    // MAX_PASSED_FDS descriptors, aligned as cmsghdr requires.
    let mut control = [0u64; 8];
    loop {
        let mut iov = libc::iovec {
            iov_base: buf.as_mut_ptr().cast(),
            iov_len: buf.len(),
        };
        // SAFETY: msghdr is plain data, and zeroed is a valid empty header.
        let mut header: libc::msghdr = unsafe { std::mem::zeroed() };
        header.msg_iov = &mut iov;
        header.msg_iovlen = 1;
        header.msg_control = control.as_mut_ptr().cast();
        header.msg_controllen = std::mem::size_of_val(&control) as _;
        // SAFETY: `header` points at `iov`, which describes the live, writable
        // `buf`, and at the live `control` array with its true size. With
        // MSG_TRUNC the kernel writes at most `buf.len()` bytes and returns the
        // packet's full length.
        let received =
            unsafe { libc::recvmsg(fd.as_raw_fd(), &mut header, libc::MSG_TRUNC | flags) };
        if received < 0 {
            let err = io::Error::last_os_error();
            if err.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(err);
        }
        let attached = read_control(&header);
        return Ok((classify(fd, received as usize, buf.len())?, attached));
    }
}

/// Largest number of descriptors [`send_with_fds`] and [`recv_with_fds`] pass in one packet.
pub const MAX_PASSED_FDS: usize = 4;

/// Sends `message` as one packet with copies of `fds` attached (SCM_RIGHTS),
/// without waiting. Returns `ErrorKind::WouldBlock` when the peer's queue is full.
pub fn send_with_fds(fd: &OwnedFd, message: &[u8], fds: &[BorrowedFd<'_>]) -> io::Result<()> {
    if fds.len() > MAX_PASSED_FDS {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "too many descriptors for one packet",
        ));
    }

    let raw: Vec<libc::c_int> = fds.iter().map(AsRawFd::as_raw_fd).collect();
    let data_len = std::mem::size_of_val(raw.as_slice());
    // Room for one SCM_RIGHTS message of MAX_PASSED_FDS descriptors, aligned as
    // cmsghdr requires.
    let mut control = [0u64; 8];
    let mut iov = libc::iovec {
        iov_base: message.as_ptr().cast_mut().cast(),
        iov_len: message.len(),
    };
    // SAFETY: msghdr is plain data, and zeroed is a valid empty header.
    let mut header: libc::msghdr = unsafe { std::mem::zeroed() };
    header.msg_iov = &mut iov;
    header.msg_iovlen = 1;

    if !raw.is_empty() {
        header.msg_control = control.as_mut_ptr().cast();
        // SAFETY: CMSG_SPACE only computes a size from its argument.
        header.msg_controllen = unsafe { libc::CMSG_SPACE(data_len as u32) } as _;
        // SAFETY: `control` is live, aligned for cmsghdr and larger than
        // CMSG_SPACE of MAX_PASSED_FDS descriptors (checked above), so the header
        // and the copied descriptors stay inside it.
        unsafe {
            let entry = libc::CMSG_FIRSTHDR(&header);
            (*entry).cmsg_level = libc::SOL_SOCKET;
            (*entry).cmsg_type = libc::SCM_RIGHTS;
            (*entry).cmsg_len = libc::CMSG_LEN(data_len as u32) as _;
            std::ptr::copy_nonoverlapping(
                raw.as_ptr().cast::<u8>(),
                libc::CMSG_DATA(entry),
                data_len,
            );
        }
    }

    loop {
        // SAFETY: `header` points at `iov`, which describes the live `message`
        // slice that sendmsg only reads, and at the live `control` array.
        let sent = unsafe {
            libc::sendmsg(
                fd.as_raw_fd(),
                &header,
                libc::MSG_NOSIGNAL | libc::MSG_DONTWAIT,
            )
        };
        if sent >= 0 {
            return Ok(());
        }
        let err = io::Error::last_os_error();
        if err.kind() != io::ErrorKind::Interrupted {
            return Err(err);
        }
    }
}

/// Receives one packet into `buf`, waiting as long as it takes, with the
/// descriptors attached to it (SCM_RIGHTS), at most [`MAX_PASSED_FDS`]. The
/// received descriptors are close-on-exec.
pub fn recv_with_fds(fd: &OwnedFd, buf: &mut [u8]) -> io::Result<(Packet, Vec<OwnedFd>)> {
    recv_with_control(fd, buf, libc::MSG_CMSG_CLOEXEC, passed_fds)
}

/// Takes ownership of the descriptors in the SCM_RIGHTS messages of a header
/// that recvmsg filled.
fn passed_fds(header: &libc::msghdr) -> Vec<OwnedFd> {
    let mut fds = Vec::new();
    // SAFETY: recvmsg set `msg_control` and `msg_controllen` to the control
    // messages it wrote into the caller's live buffer, and the CMSG macros stay
    // within that length. Each descriptor in an SCM_RIGHTS message is new in
    // this process and owned by nothing else.
    unsafe {
        let mut message = libc::CMSG_FIRSTHDR(header);
        while !message.is_null() {
            let entry = &*message;
            if entry.cmsg_level == libc::SOL_SOCKET && entry.cmsg_type == libc::SCM_RIGHTS {
                let data_len = entry.cmsg_len as usize - libc::CMSG_LEN(0) as usize;
                let count = data_len / std::mem::size_of::<libc::c_int>();
                let data = libc::CMSG_DATA(message);
                for index in 0..count {
                    let raw: libc::c_int = std::ptr::read_unaligned(
                        data.add(index * std::mem::size_of::<libc::c_int>()).cast(),
                    );
                    fds.push(OwnedFd::from_raw_fd(raw));
                }
            }
            message = libc::CMSG_NXTHDR(header, message);
        }
    }
    fds
}

/// Returns the pid of the SCM_CREDENTIALS message in a header that recvmsg filled.
fn sender_pid(header: &libc::msghdr) -> Option<libc::pid_t> {
    // SAFETY: recvmsg set `msg_control` and `msg_controllen` to the control
    // messages it wrote into the caller's live buffer, and the CMSG macros
    // stay within that length.
    unsafe {
        let mut message = libc::CMSG_FIRSTHDR(header);
        while !message.is_null() {
            let entry = &*message;
            let expected_len = libc::CMSG_LEN(std::mem::size_of::<libc::ucred>() as u32) as usize;
            if entry.cmsg_level == libc::SOL_SOCKET
                && entry.cmsg_type == libc::SCM_CREDENTIALS
                && entry.cmsg_len as usize >= expected_len
            {
                let credentials: libc::ucred =
                    std::ptr::read_unaligned(libc::CMSG_DATA(message).cast());
                return Some(credentials.pid);
            }
            message = libc::CMSG_NXTHDR(header, message);
        }
    }
    None
}

/// Whether the peer of a connected socket has closed its end.
fn peer_closed(fd: &OwnedFd) -> io::Result<bool> {
    let mut entry = libc::pollfd {
        fd: fd.as_raw_fd(),
        events: 0,
        revents: 0,
    };
    // SAFETY: `entry` is one live pollfd, and the count passed is 1.
    check(unsafe { libc::poll(&mut entry, 1, 0) })?;
    Ok(entry.revents & libc::POLLHUP != 0)
}

/// Waits until `fd` is readable or closed; false when `timeout` passed first.
fn poll_readable(fd: &OwnedFd, timeout: Duration) -> io::Result<bool> {
    let mut entry = libc::pollfd {
        fd: fd.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    let millis = i32::try_from(timeout.as_millis()).unwrap_or(i32::MAX);
    loop {
        // SAFETY: `entry` is one live pollfd, and the count passed is 1.
        let ready = unsafe { libc::poll(&mut entry, 1, millis) };
        if ready >= 0 {
            return Ok(ready > 0);
        }
        let err = io::Error::last_os_error();
        if err.kind() != io::ErrorKind::Interrupted {
            return Err(err);
        }
    }
}

/// Blocks the calling thread for `duration`, with poll(2) on no descriptors,
/// which the seccomp filters allow where they forbid nanosleep.
pub fn pause(duration: Duration) {
    let millis = i32::try_from(duration.as_millis()).unwrap_or(i32::MAX);
    // SAFETY: a count of zero means poll reads no pollfd, so the null pointer is
    // never dereferenced.
    let _ = unsafe { libc::poll(std::ptr::null_mut(), 0, millis) };
}

/// CLOCK_MONOTONIC in nanoseconds. Every process on the machine reads the same
/// clock, so a deadline computed in one process can be checked in another.
pub fn monotonic_nanos() -> u64 {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `now` is a live timespec that clock_gettime fills in; the clock id is
    // a constant that every Linux kernel supports.
    unsafe {
        libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut now);
    }
    (now.tv_sec as u64) * 1_000_000_000 + now.tv_nsec as u64
}

/// CPU time (user plus system) of this whole process: every thread, including
/// io-wq worker threads and threads that have exited, from
/// CLOCK_PROCESS_CPUTIME_ID.
pub fn process_cpu_time() -> std::time::Duration {
    let mut used = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `used` is a live timespec that clock_gettime fills in; the clock id is
    // a constant that every Linux kernel supports.
    unsafe {
        libc::clock_gettime(libc::CLOCK_PROCESS_CPUTIME_ID, &mut used);
    }
    std::time::Duration::new(used.tv_sec as u64, used.tv_nsec as u32)
}

/// How a child process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExitReason {
    Exited(i32),
    Signaled(i32),
}

/// Reaps one child that has ended, without waiting. Returns `None` when no child
/// has ended (or there are no children).
pub fn reap_child() -> Option<(libc::pid_t, ExitReason)> {
    let mut status: libc::c_int = 0;
    // SAFETY: `status` is a live c_int that waitpid fills in.
    let pid = unsafe { libc::waitpid(-1, &mut status, libc::WNOHANG) };
    if pid <= 0 {
        return None;
    }
    let reason = if libc::WIFSIGNALED(status) {
        ExitReason::Signaled(libc::WTERMSIG(status))
    } else {
        ExitReason::Exited(libc::WEXITSTATUS(status))
    };
    Some((pid, reason))
}

/// Waits for child `pid` to end and reaps it, leaving other children to
/// [`reap_child`]. Returns `None` when `pid` is not a child of this process.
pub fn wait_child(pid: libc::pid_t) -> Option<ExitReason> {
    let mut status: libc::c_int = 0;
    loop {
        // SAFETY: `status` is a live c_int that waitpid fills in.
        let reaped = unsafe { libc::waitpid(pid, &mut status, 0) };
        if reaped == pid {
            break;
        }
        if reaped < 0 && io::Error::last_os_error().kind() == io::ErrorKind::Interrupted {
            continue;
        }
        return None;
    }
    Some(if libc::WIFSIGNALED(status) {
        ExitReason::Signaled(libc::WTERMSIG(status))
    } else {
        ExitReason::Exited(libc::WEXITSTATUS(status))
    })
}

/// Sends `signal` to process `pid`.
pub fn kill(pid: libc::pid_t, signal: i32) -> io::Result<()> {
    // SAFETY: kill takes plain integers; a positive `pid` names one process.
    check(unsafe { libc::kill(pid, signal) })?;
    Ok(())
}

/// Asks the kernel to send `signal` to this process when its parent exits, and
/// reports whether the parent is still `expected_parent` (it may have exited
/// before the request took effect).
pub fn die_with_parent(signal: i32, expected_parent: libc::pid_t) -> io::Result<bool> {
    // SAFETY: prctl with PR_SET_PDEATHSIG takes only integer arguments.
    check(unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, signal as libc::c_ulong, 0, 0, 0) })?;
    // SAFETY: getppid takes no arguments and cannot fail.
    Ok(unsafe { libc::getppid() } == expected_parent)
}

/// The calling process's id.
pub fn getpid() -> libc::pid_t {
    // SAFETY: getpid takes no arguments and cannot fail.
    unsafe { libc::getpid() }
}

/// The name of a signal number, such as `SIGKILL`, for log lines.
pub fn signal_name(signal: i32) -> &'static str {
    match signal {
        libc::SIGHUP => "SIGHUP",
        libc::SIGINT => "SIGINT",
        libc::SIGQUIT => "SIGQUIT",
        libc::SIGILL => "SIGILL",
        libc::SIGTRAP => "SIGTRAP",
        libc::SIGABRT => "SIGABRT",
        libc::SIGBUS => "SIGBUS",
        libc::SIGFPE => "SIGFPE",
        libc::SIGKILL => "SIGKILL",
        libc::SIGUSR1 => "SIGUSR1",
        libc::SIGSEGV => "SIGSEGV",
        libc::SIGUSR2 => "SIGUSR2",
        libc::SIGPIPE => "SIGPIPE",
        libc::SIGALRM => "SIGALRM",
        libc::SIGTERM => "SIGTERM",
        libc::SIGSYS => "SIGSYS",
        _ => "unknown signal",
    }
}

/// Moves the calling thread to SCHED_BATCH: its wake-ups no longer preempt the
/// thread running on that CPU, so it runs when that thread waits or its time
/// slice ends.
pub fn set_batch_scheduling() -> io::Result<()> {
    let param = libc::sched_param { sched_priority: 0 };
    // SAFETY: `param` is a live sched_param; pid 0 is the calling thread.
    check(unsafe { libc::sched_setscheduler(0, libc::SCHED_BATCH, &param) }).map(drop)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::os::fd::AsFd;

    #[test]
    fn descriptors_pass_with_packet() {
        let (sender, receiver) = seqpacket_pair().unwrap();
        let (mut reader, writer) = io::pipe().unwrap();
        let writer = OwnedFd::from(writer);
        send_with_fds(&sender, b"fds", &[writer.as_fd(), writer.as_fd()]).unwrap();
        drop(writer);

        let mut buf = [0u8; 16];
        let (packet, fds) = recv_with_fds(&receiver, &mut buf).unwrap();
        assert_eq!(packet, Packet::Data(3));
        assert_eq!(&buf[..3], b"fds");
        assert_eq!(fds.len(), 2);

        let mut passed = io::PipeWriter::from(fds.into_iter().next().unwrap());
        passed.write_all(b"x").unwrap();
        let mut byte = [0u8; 1];
        reader.read_exact(&mut byte).unwrap();
        assert_eq!(&byte, b"x");
    }

    #[test]
    fn too_many_descriptors_rejected() {
        let (sender, _receiver) = seqpacket_pair().unwrap();
        let fds = vec![sender.as_fd(); MAX_PASSED_FDS + 1];
        let err = send_with_fds(&sender, b"", &fds).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
    }
}
