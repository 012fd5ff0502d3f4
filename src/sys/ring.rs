//! A safe front for one io_uring instance.
//!
//! The kernel reads and writes the memory named in a submission until the matching
//! completion arrives, so every buffer, address and timespec an operation refers to is
//! moved into this ring when the operation is submitted and handed back with its
//! completion. Callers never see a raw pointer, and a caller that drops its own state
//! early (a connection closed while a send is in flight) cannot free memory the
//! kernel still writes to.
//!
//! Received data lands in a provided-buffer ring owned here, so an idle connection
//! with a receive posted pins no buffer of its own.
//!
//! File descriptors are the caller's job: an fd named in an operation must stay open
//! until that operation's completion arrives.

use std::collections::VecDeque;
use std::io;
use std::os::fd::{FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicU16, Ordering};
use std::time::Duration;

use io_uring::register::Restriction;
use io_uring::types::{BufRingEntry, CancelBuilder, Fd, Timespec};
use io_uring::{cqueue, opcode, squeue, IoUring};
use socket2::SockAddr;

/// The submission opcodes a restricted ring (see [`Ring::new_restricted`])
/// accepts, with the [`Op`] that uses each. Add an opcode here when adding an
/// `Op`; a jailed worker's ring rejects any other with `EACCES`.
pub const ALLOWED_OPCODES: &[(u8, &str)] = &[
    (
        opcode::AcceptMulti::CODE,
        "IORING_OP_ACCEPT (Op::AcceptMulti)",
    ),
    (opcode::Recv::CODE, "IORING_OP_RECV (Op::Recv)"),
    (opcode::Send::CODE, "IORING_OP_SEND (Op::Send)"),
    (opcode::Connect::CODE, "IORING_OP_CONNECT (Op::Connect)"),
    (
        opcode::LinkTimeout::CODE,
        "IORING_OP_LINK_TIMEOUT (Op::Connect)",
    ),
    (opcode::Timeout::CODE, "IORING_OP_TIMEOUT (Op::Timeout)"),
    (opcode::Read::CODE, "IORING_OP_READ (Op::ReadEventfd)"),
    (
        opcode::PollAdd::CODE,
        "IORING_OP_POLL_ADD (Op::PollIn, Op::PollOut)",
    ),
    (
        opcode::AsyncCancel2::CODE,
        "IORING_OP_ASYNC_CANCEL (Op::CancelFd)",
    ),
    (opcode::Splice::CODE, "IORING_OP_SPLICE (Op::Splice)"),
];

/// The submission flags a restricted ring accepts: provided buffers for receives
/// and links for a connect with its timeout.
pub const ALLOWED_SQE_FLAGS: squeue::Flags =
    squeue::Flags::BUFFER_SELECT.union(squeue::Flags::IO_LINK);

/// Buffer group id of the provided-buffer ring.
const BUFFER_GROUP: u16 = 0;

/// An operation to submit, with the resources it needs while in flight.
#[derive(Debug)]
pub enum Op {
    /// Multishot accept: one completion per accepted connection while `more` is set.
    AcceptMulti { fd: RawFd },
    /// Receive into a buffer picked from the provided-buffer ring at completion time.
    Recv { fd: RawFd },
    /// Send `buf[offset..]`.
    Send {
        fd: RawFd,
        buf: Vec<u8>,
        offset: usize,
    },
    /// Connect, cancelled by the kernel with `ECANCELED` after `timeout`.
    Connect {
        fd: RawFd,
        addr: Box<SockAddr>,
        timeout: Duration,
    },
    /// Wait for `after`; completes with `ETIME`.
    Timeout { after: Duration },
    /// Read the 8-byte counter of an eventfd.
    ReadEventfd { fd: RawFd },
    /// Wait until `fd` is readable (a one-shot poll).
    PollIn { fd: RawFd },
    /// Wait until `fd` is writable (a one-shot poll).
    PollOut { fd: RawFd },
    /// Cancel every operation in flight on `fd`; each completes with `ECANCELED`.
    /// The cancel request itself produces no completion for the caller.
    /// A splice counts as an operation on its `fd_out` only.
    CancelFd { fd: RawFd },
    /// splice(2) of up to `len` bytes from `fd_in` to `fd_out` at the current file
    /// positions (offsets -1), with `flags` such as `SPLICE_F_NONBLOCK`. One side
    /// must be a pipe. The kernel runs every splice request on an io-wq worker
    /// thread, never inline. Completes with the byte count, 0 at end of input.
    Splice {
        fd_in: RawFd,
        fd_out: RawFd,
        len: u32,
        flags: u32,
    },
}

/// Resources an in-flight operation owns until its completion arrives.
enum Held {
    Nothing,
    Send(Vec<u8>, usize),
    Connect(#[allow(dead_code)] Box<SockAddr>),
    Timespec(#[allow(dead_code)] Box<Timespec>),
    Counter(#[allow(dead_code)] Box<[u8; 8]>),
}

struct Slot {
    tag: u64,
    held: Held,
    /// Completions of internal operations (link timeouts, cancels) are not reported.
    internal: bool,
    multishot: bool,
}

/// A received buffer from the provided-buffer ring. Give it back with
/// [`Ring::recycle`] once its bytes have been used.
#[derive(Debug)]
pub struct Provided {
    id: u16,
    len: usize,
}

impl Provided {
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

/// One finished operation, with the resources it held.
#[derive(Debug)]
pub struct Completion {
    pub tag: u64,
    /// The operation's result: a byte count, an fd, or 0; or the errno it failed with.
    pub result: Result<u32, i32>,
    /// A multishot operation stays armed and produces more completions.
    pub more: bool,
    /// The buffer and offset of a send.
    pub sent: Option<(Vec<u8>, usize)>,
    /// The data of a receive.
    pub received: Option<Provided>,
    /// The socket of an accepted connection.
    pub accepted: Option<OwnedFd>,
}

/// Sizes of a ring and of its provided buffers.
#[derive(Debug, Clone, Copy)]
pub struct RingConfig {
    pub entries: u32,
    /// Number of provided receive buffers; a power of two up to 32768.
    pub buffers: u16,
    pub buffer_size: usize,
    /// Maximum io-wq worker threads `[bounded, unbounded]`, set before the ring
    /// is enabled (a restricted ring accepts no later `io_uring_register` call).
    /// `None` keeps the kernel's default, which scales with the CPU count and
    /// `RLIMIT_NPROC`.
    pub io_workers: Option<[u32; 2]>,
}

pub struct Ring {
    // Field order matters: the io_uring is dropped first, so the kernel stops using
    // the provided buffers before their memory is freed.
    uring: IoUring,
    buffers: BufferRing,
    slots: Vec<Option<Slot>>,
    free_slots: Vec<usize>,
    /// Entries that did not fit in a full submission queue, pushed after the next
    /// submit.
    backlog: VecDeque<squeue::Entry>,
}

impl Ring {
    /// Creates a ring. `ENOSYS` or `EPERM` here means io_uring is unavailable:
    /// kernel.io_uring_disabled is set, or a seccomp profile blocks it.
    pub fn new(config: RingConfig) -> io::Result<Ring> {
        let uring = IoUring::builder()
            .setup_single_issuer()
            .setup_coop_taskrun()
            .setup_cqsize(config.entries.saturating_mul(4))
            .build(config.entries)
            .or_else(|_| IoUring::builder().build(config.entries))?;
        let buffers = BufferRing::new(&uring, config.buffers, config.buffer_size)?;
        let ring = Ring::with_parts(uring, buffers);
        if let Some([bounded, unbounded]) = config.io_workers {
            ring.limit_io_workers(bounded, unbounded)?;
        }
        Ok(ring)
    }

    /// Creates a ring that accepts only [`ALLOWED_OPCODES`] and
    /// [`ALLOWED_SQE_FLAGS`], and no `io_uring_register` operation once running.
    /// The ring starts disabled (IORING_SETUP_R_DISABLED), gets its provided
    /// buffers and restrictions, and is then enabled; the kernel keeps the
    /// restrictions for the ring's life. Call it on the thread that submits.
    pub fn new_restricted(config: RingConfig) -> io::Result<Ring> {
        let uring = IoUring::builder()
            .setup_r_disabled()
            .setup_single_issuer()
            .setup_coop_taskrun()
            .setup_cqsize(config.entries.saturating_mul(4))
            .build(config.entries)?;
        let buffers = BufferRing::new(&uring, config.buffers, config.buffer_size)?;
        let mut restrictions: Vec<Restriction> = ALLOWED_OPCODES
            .iter()
            .map(|&(opcode, _)| Restriction::sqe_op(opcode))
            .collect();
        restrictions.push(Restriction::sqe_flags_allowed(ALLOWED_SQE_FLAGS.bits()));
        let submitter = uring.submitter();
        if let Some(mut limits) = config.io_workers {
            submitter.register_iowq_max_workers(&mut limits)?;
        }
        submitter.register_restrictions(&mut restrictions)?;
        submitter.register_enable_rings()?;
        Ok(Ring::with_parts(uring, buffers))
    }

    fn with_parts(uring: IoUring, buffers: BufferRing) -> Ring {
        Ring {
            uring,
            buffers,
            slots: Vec::new(),
            free_slots: Vec::new(),
            backlog: VecDeque::new(),
        }
    }

    /// Size of each provided receive buffer.
    pub fn buffer_size(&self) -> usize {
        self.buffers.size
    }

    /// Number of provided buffers currently lent to the kernel.
    pub fn buffers_available(&self) -> usize {
        self.buffers.available
    }

    /// Sets the maximum number of io-wq worker threads, bounded and unbounded.
    /// io-wq belongs to the submitting thread, not to the ring, so the limits
    /// apply to every ring that thread submits to.
    pub fn limit_io_workers(&self, bounded: u32, unbounded: u32) -> io::Result<()> {
        let mut max = [bounded, unbounded];
        self.uring.submitter().register_iowq_max_workers(&mut max)
    }

    /// Queues `op`; `tag` comes back in its completion.
    pub fn submit(&mut self, tag: u64, op: Op) -> io::Result<()> {
        match op {
            Op::AcceptMulti { fd } => {
                let entry = opcode::AcceptMulti::new(Fd(fd))
                    .flags(libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK)
                    .build();
                let slot = self.insert(tag, Held::Nothing, false, true);
                self.push(entry.user_data(slot))
            }
            Op::Recv { fd } => {
                let entry = opcode::Recv::new(Fd(fd), std::ptr::null_mut(), 0)
                    .buf_group(BUFFER_GROUP)
                    .build()
                    .flags(squeue::Flags::BUFFER_SELECT);
                let slot = self.insert(tag, Held::Nothing, false, false);
                self.push(entry.user_data(slot))
            }
            Op::Send { fd, buf, offset } => {
                assert!(offset < buf.len(), "send of an empty range");
                let remaining = &buf[offset..];
                let len = u32::try_from(remaining.len()).unwrap_or(u32::MAX);
                let entry = opcode::Send::new(Fd(fd), remaining.as_ptr(), len)
                    .flags(libc::MSG_NOSIGNAL)
                    .build();
                // The Vec's heap memory does not move when the Vec itself is moved
                // into the slot, so the pointer taken above stays valid.
                let slot = self.insert(tag, Held::Send(buf, offset), false, false);
                self.push(entry.user_data(slot))
            }
            Op::Connect { fd, addr, timeout } => {
                let connect = opcode::Connect::new(Fd(fd), addr.as_ptr().cast(), addr.len())
                    .build()
                    .flags(squeue::Flags::IO_LINK);
                let timespec = Box::new(timespec(timeout));
                let link = opcode::LinkTimeout::new(&*timespec).build();
                let connect_slot = self.insert(tag, Held::Connect(addr), false, false);
                let timeout_slot = self.insert(0, Held::Timespec(timespec), true, false);
                // Linked entries must sit in the queue together, so make room for both.
                self.reserve(2)?;
                self.push(connect.user_data(connect_slot))?;
                self.push(link.user_data(timeout_slot))
            }
            Op::Timeout { after } => {
                let timespec = Box::new(timespec(after));
                let entry = opcode::Timeout::new(&*timespec).build();
                let slot = self.insert(tag, Held::Timespec(timespec), false, false);
                self.push(entry.user_data(slot))
            }
            Op::ReadEventfd { fd } => {
                let mut counter = Box::new([0u8; 8]);
                let entry = opcode::Read::new(Fd(fd), counter.as_mut_ptr(), 8).build();
                let slot = self.insert(tag, Held::Counter(counter), false, false);
                self.push(entry.user_data(slot))
            }
            Op::PollIn { fd } => {
                let entry = opcode::PollAdd::new(Fd(fd), libc::POLLIN as u32).build();
                let slot = self.insert(tag, Held::Nothing, false, false);
                self.push(entry.user_data(slot))
            }
            Op::PollOut { fd } => {
                let entry = opcode::PollAdd::new(Fd(fd), libc::POLLOUT as u32).build();
                let slot = self.insert(tag, Held::Nothing, false, false);
                self.push(entry.user_data(slot))
            }
            Op::CancelFd { fd } => {
                let entry = opcode::AsyncCancel2::new(CancelBuilder::fd(Fd(fd)).all()).build();
                let slot = self.insert(0, Held::Nothing, true, false);
                self.push(entry.user_data(slot))
            }
            Op::Splice {
                fd_in,
                fd_out,
                len,
                flags,
            } => {
                let entry = opcode::Splice::new(Fd(fd_in), -1, Fd(fd_out), -1, len)
                    .flags(flags)
                    .build();
                let slot = self.insert(tag, Held::Nothing, false, false);
                self.push(entry.user_data(slot))
            }
        }
    }

    /// Submits queued operations and waits for at least `want` completions.
    /// `EBUSY` (the completion queue is over-full) and `EINTR` return early without
    /// an error, so the caller reaps completions and calls again.
    pub fn submit_and_wait(&mut self, want: usize) -> io::Result<()> {
        match self.uring.submit_and_wait(want) {
            Ok(_) => {}
            Err(err) if matches!(err.raw_os_error(), Some(libc::EBUSY | libc::EINTR)) => {}
            Err(err) => return Err(err),
        }
        self.replay_backlog()
    }

    /// Moves every available completion into `out`.
    pub fn reap(&mut self, out: &mut Vec<Completion>) {
        let mut completion = self.uring.completion();
        completion.sync();
        let entries: Vec<cqueue::Entry> = completion.collect();
        for entry in entries {
            if let Some(done) = self.complete(&entry) {
                out.push(done);
            }
        }
    }

    /// Returns the bytes of a received buffer.
    pub fn received(&mut self, buf: &Provided) -> &mut [u8] {
        let start = usize::from(buf.id) * self.buffers.size;
        &mut self.buffers.memory[start..start + buf.len]
    }

    /// Gives a received buffer back to the kernel.
    pub fn recycle(&mut self, buf: Provided) {
        self.buffers.provide(buf.id);
    }

    fn complete(&mut self, entry: &cqueue::Entry) -> Option<Completion> {
        let index = entry.user_data() as usize;
        let more = cqueue::more(entry.flags());
        let result = if entry.result() < 0 {
            Err(-entry.result())
        } else {
            Ok(entry.result() as u32)
        };
        let received = cqueue::buffer_select(entry.flags()).map(|id| {
            self.buffers.available -= 1;
            Provided {
                id,
                len: result.unwrap_or(0) as usize,
            }
        });

        let is_accept = self.slots[index]
            .as_ref()
            .is_some_and(|slot| slot.multishot);
        let accepted = match result {
            // SAFETY: a successful accept completion carries a new descriptor that
            // the kernel just created for this process and nothing else owns.
            Ok(fd) if is_accept => Some(unsafe { OwnedFd::from_raw_fd(fd as RawFd) }),
            _ => None,
        };

        let slot = if more {
            let slot = self.slots[index]
                .as_ref()
                .expect("completion for a free slot");
            return Some(Completion {
                tag: slot.tag,
                result,
                more,
                sent: None,
                received,
                accepted,
            });
        } else {
            self.slots[index]
                .take()
                .expect("completion for a free slot")
        };
        self.free_slots.push(index);

        if slot.internal {
            return None;
        }
        let sent = match slot.held {
            Held::Send(buf, offset) => Some((buf, offset)),
            _ => None,
        };
        Some(Completion {
            tag: slot.tag,
            result,
            more,
            sent,
            received,
            accepted,
        })
    }

    fn insert(&mut self, tag: u64, held: Held, internal: bool, multishot: bool) -> u64 {
        let slot = Slot {
            tag,
            held,
            internal,
            multishot,
        };
        match self.free_slots.pop() {
            Some(index) => {
                self.slots[index] = Some(slot);
                index as u64
            }
            None => {
                self.slots.push(Some(slot));
                (self.slots.len() - 1) as u64
            }
        }
    }

    /// Flushes the submission queue when fewer than `count` entries are free.
    fn reserve(&mut self, count: usize) -> io::Result<()> {
        let free = {
            let submission = self.uring.submission();
            submission.capacity() - submission.len()
        };
        if free < count {
            self.flush()?;
        }
        Ok(())
    }

    fn push(&mut self, entry: squeue::Entry) -> io::Result<()> {
        if !self.backlog.is_empty() {
            self.backlog.push_back(entry);
            return Ok(());
        }
        if self.try_push(&entry) {
            return Ok(());
        }
        self.flush()?;
        if !self.try_push(&entry) {
            self.backlog.push_back(entry);
        }
        Ok(())
    }

    fn try_push(&mut self, entry: &squeue::Entry) -> bool {
        let mut submission = self.uring.submission();
        // SAFETY: every pointer in `entry` refers to memory owned by a slot of this
        // ring (send buffers, addresses, timespecs, counters) or by the provided-buffer
        // ring, and a slot is only freed when the kernel posts the entry's completion.
        unsafe { submission.push(entry).is_ok() }
    }

    /// Submits what is queued without waiting. A busy kernel leaves entries queued.
    fn flush(&mut self) -> io::Result<()> {
        match self.uring.submit() {
            Ok(_) => Ok(()),
            Err(err) if matches!(err.raw_os_error(), Some(libc::EBUSY | libc::EINTR)) => Ok(()),
            Err(err) => Err(err),
        }
    }

    fn replay_backlog(&mut self) -> io::Result<()> {
        while let Some(entry) = self.backlog.pop_front() {
            if !self.try_push(&entry) {
                self.backlog.push_front(entry);
                return self.flush();
            }
        }
        Ok(())
    }
}

fn timespec(duration: Duration) -> Timespec {
    Timespec::new()
        .sec(duration.as_secs())
        .nsec(duration.subsec_nanos())
}

/// The provided-buffer ring (IORING_REGISTER_PBUF_RING) and the memory behind it.
struct BufferRing {
    entries: *mut BufRingEntry,
    entries_len: usize,
    mask: u16,
    tail: u16,
    size: usize,
    memory: Vec<u8>,
    available: usize,
}

impl BufferRing {
    fn new(uring: &IoUring, count: u16, size: usize) -> io::Result<BufferRing> {
        assert!(
            count.is_power_of_two(),
            "buffer count {count} is not a power of two"
        );
        assert!(count <= 32768, "buffer count {count} is above 32768");
        let entries_len = usize::from(count) * std::mem::size_of::<BufRingEntry>();
        // SAFETY: an anonymous private mapping with no address hint has no
        // preconditions; the result is checked against MAP_FAILED.
        let entries = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                entries_len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_ANONYMOUS | libc::MAP_PRIVATE,
                -1,
                0,
            )
        };
        if entries == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let mut ring = BufferRing {
            entries: entries.cast(),
            entries_len,
            mask: count - 1,
            tail: 0,
            size,
            memory: vec![0u8; usize::from(count) * size],
            available: 0,
        };
        // SAFETY: `entries` is a page-aligned mapping of `count` entries that lives
        // until this BufferRing is dropped, which happens after the io_uring is
        // dropped (field order in `Ring`).
        unsafe {
            uring.submitter().register_buf_ring_with_flags(
                ring.entries as u64,
                count,
                BUFFER_GROUP,
                0,
            )?;
        }
        for id in 0..count {
            ring.provide(id);
        }
        Ok(ring)
    }

    /// Hands buffer `id` to the kernel.
    fn provide(&mut self, id: u16) {
        let index = usize::from(self.tail & self.mask);
        let addr = self.memory[usize::from(id) * self.size..].as_mut_ptr() as u64;
        // SAFETY: `index` is below the entry count, so the entry lies inside the
        // mapping. The kernel reads entries only up to the published tail, and this
        // one is written before the tail moves past it.
        let entry = unsafe { &mut *self.entries.add(index) };
        entry.set_addr(addr);
        entry.set_len(self.size as u32);
        entry.set_bid(id);
        self.tail = self.tail.wrapping_add(1);
        // SAFETY: the tail field overlays the reserved u16 of the first entry, inside
        // the live mapping. The kernel reads it concurrently, so it is written through
        // an atomic with release ordering, after the entry itself.
        unsafe {
            let tail = BufRingEntry::tail(self.entries) as *const AtomicU16;
            (*tail).store(self.tail, Ordering::Release);
        }
        self.available += 1;
    }
}

impl Drop for BufferRing {
    fn drop(&mut self) {
        // SAFETY: the mapping was created in `new` with this length and is unmapped
        // once; the io_uring that used it is already closed.
        unsafe {
            libc::munmap(self.entries.cast(), self.entries_len);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::fs::File;
    use std::io::{Read, Write};
    use std::os::fd::AsRawFd;

    use super::*;
    use crate::sys::ktls::pipe_nonblocking;

    /// A restricted ring with io-wq limits accepts a splice, and the bytes
    /// arrive in the other pipe.
    #[test]
    fn restricted_ring_runs_splice() {
        let mut ring = Ring::new_restricted(RingConfig {
            entries: 8,
            buffers: 1,
            buffer_size: 64,
            io_workers: Some([1, 1]),
        })
        .unwrap();
        let (source_read, source_write) = pipe_nonblocking().unwrap();
        let (destination_read, destination_write) = pipe_nonblocking().unwrap();
        File::from(source_write).write_all(b"spliced").unwrap();

        ring.submit(
            42,
            Op::Splice {
                fd_in: source_read.as_raw_fd(),
                fd_out: destination_write.as_raw_fd(),
                len: 64,
                flags: libc::SPLICE_F_NONBLOCK,
            },
        )
        .unwrap();
        let mut completions = Vec::new();
        while completions.is_empty() {
            ring.submit_and_wait(1).unwrap();
            ring.reap(&mut completions);
        }
        assert_eq!(completions[0].tag, 42);
        assert_eq!(completions[0].result, Ok(7));

        let mut received = [0u8; 7];
        File::from(destination_read)
            .read_exact(&mut received)
            .unwrap();
        assert_eq!(&received, b"spliced");
    }
}
