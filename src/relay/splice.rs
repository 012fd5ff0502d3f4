//! The kernel TLS record path: after the hand-off the kernel decrypts what the
//! client sends and encrypts what goes back, and payload moves socket -> pipe ->
//! socket with splice(2) without being copied into this process.
//!
//! Each direction owns a pipe from the worker's [`PipePool`] only while bytes sit
//! in it or a splice on it is in flight. Two modes run the splices (the global
//! `splice` option):
//!
//! - Direct: [`SpliceRelay::pump`] calls splice(2) with `SPLICE_F_NONBLOCK` on the
//!   worker thread. When a splice returns `EAGAIN`, it reports which socket must
//!   become readable or writable, and the worker waits for that with a one-shot
//!   poll on its io_uring.
//! - Ring: [`SpliceRelay::pump_ring`] returns `IORING_OP_SPLICE` requests for the
//!   worker to submit, and [`SpliceRelay::splice_done`] takes their results. The
//!   kernel runs each request on an io-wq worker thread. The requests are
//!   non-blocking too, so an io-wq thread never waits for a peer: `EAGAIN` leads
//!   to the same one-shot polls as in the direct mode. A direction may have one
//!   splice into its pipe and one out of it in flight at once.
//!
//! A splice from a pipe cannot tell "pipe full" from "socket empty": both are
//! `EAGAIN`. So a direction waits for its source only while its pipe is empty,
//! and otherwise waits for its destination to take bytes out of the pipe.
//!
//! NOTE: on a kernel whose tls ULP does not override poll(2), POLLIN on the client
//! socket reports any TCP bytes, not only a complete record. A record that arrives
//! slowly then costs repeated poll completions and `EAGAIN` splices until its last
//! byte arrives. Whether Linux 6.1 overrides poll for kTLS sockets is unverified.

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};

use rustls::kernel::KernelConnection;
use rustls::server::ServerConnectionData;
use rustls::ProtocolVersion;

use crate::log::CloseReason;
use crate::sys::ktls as sys;
use crate::sys::ring::Op;
use crate::tls::kernel::{
    self, ControlRecord, KernelTlsSupport, KeyLimitAction, RecordBudget, CONTROL_RECORD_BUFFER_LEN,
};

/// Rounds of splicing per direction in one [`SpliceRelay::pump`] call, so one busy
/// connection cannot hold the worker. A direction that still has work requests a
/// poll on a ready socket, which completes at once and puts it back in the queue.
const ROUNDS_PER_PUMP: usize = 16;

/// splice(2) flags of a ring-mode request. `SPLICE_F_NONBLOCK` keeps an io-wq
/// thread from waiting for a peer, so a bounded io-wq cannot be held by idle
/// connections.
pub const RING_SPLICE_FLAGS: u32 = libc::SPLICE_F_NONBLOCK | libc::SPLICE_F_MOVE;

/// io-wq thread limits `[bounded, unbounded]` for a worker ring in ring mode.
/// Splices on sockets and pipes run as unbounded io-wq work. Each ring-mode
/// splice is non-blocking, so an io-wq thread is busy only while the splice runs
/// (with kernel TLS, that includes encrypting or decrypting the records). More
/// threads than this per worker would mostly add context switches on CPUs that
/// the workers already use. Without a limit the kernel may start a thread per
/// request in flight, up to `RLIMIT_NPROC`.
pub const RING_IO_WORKERS: [u32; 2] = [2, 4];

/// A non-blocking pipe with its capacity in bytes.
#[derive(Debug)]
pub struct Pipe {
    read: OwnedFd,
    write: OwnedFd,
    capacity: usize,
}

impl Pipe {
    fn new() -> io::Result<Pipe> {
        let (read, write) = sys::pipe_nonblocking()?;
        // The capacity is what the kernel gave this pipe: normally 64 KiB, one
        // page once the user's pipe-user-pages-soft budget is used up.
        let capacity = sys::pipe_size(read.as_fd())?;
        Ok(Pipe {
            read,
            write,
            capacity,
        })
    }
}

/// Empty pipes kept by one worker for reuse.
#[derive(Debug)]
pub struct PipePool {
    free: Vec<Pipe>,
    max_free: usize,
    created: u64,
}

impl PipePool {
    /// Creates a pool that keeps at most `max_free` idle pipes.
    pub fn new(max_free: usize) -> PipePool {
        PipePool {
            free: Vec::new(),
            max_free,
            created: 0,
        }
    }

    fn take(&mut self) -> io::Result<Pipe> {
        if let Some(pipe) = self.free.pop() {
            return Ok(pipe);
        }
        self.created += 1;
        Pipe::new()
    }

    /// Takes back an empty pipe; a pipe beyond the pool's size is closed.
    fn give(&mut self, pipe: Pipe) {
        if self.free.len() < self.max_free {
            self.free.push(pipe);
        }
    }

    /// Number of idle pipes in the pool.
    pub fn idle(&self) -> usize {
        self.free.len()
    }

    /// Number of pipes created since the pool started.
    pub fn created(&self) -> u64 {
        self.created
    }
}

/// The four ring-mode splices of a connection; the number indexes
/// [`Pumped::splices`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    ClientToPipe = 0,
    PipeToBackend = 1,
    BackendToPipe = 2,
    PipeToClient = 3,
}

impl Stage {
    pub const ALL: [Stage; 4] = [
        Stage::ClientToPipe,
        Stage::PipeToBackend,
        Stage::BackendToPipe,
        Stage::PipeToClient,
    ];
}

/// One `IORING_OP_SPLICE` for the caller to submit. The descriptors stay open
/// until its completion is passed to [`SpliceRelay::splice_done`], as long as the
/// relay and the two sockets are kept until then.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SpliceRequest {
    pub fd_in: RawFd,
    pub fd_out: RawFd,
    pub len: u32,
    pub flags: u32,
}

impl SpliceRequest {
    /// Returns the ring operation that carries out this request.
    pub fn op(self) -> Op {
        Op::Splice {
            fd_in: self.fd_in,
            fd_out: self.fd_out,
            len: self.len,
            flags: self.flags,
        }
    }
}

/// The condition the next ring-mode splice into a pipe waits for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum FillWait {
    Ready,
    /// The source is probably empty: a new direction, a splice that moved less
    /// than it asked for, or `EAGAIN` with the pipe empty. `posted` is set once a
    /// readable poll was requested. Waiting for the poll first keeps an idle
    /// connection from costing an io-wq request that only returns `EAGAIN`.
    Readable {
        posted: bool,
    },
    /// `EAGAIN` with bytes in the pipe: the pipe may be full, so wait until a
    /// splice out of it moves bytes.
    Drain,
    /// The next record from the client is not application data; read it once
    /// the pipe is empty.
    Record,
}

impl Default for FillWait {
    fn default() -> FillWait {
        FillWait::Readable { posted: false }
    }
}

/// The condition the next ring-mode splice out of a pipe waits for.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
enum DrainWait {
    #[default]
    Ready,
    /// The destination returned `EAGAIN` or took less than it was offered, so
    /// its send buffer is probably full. `posted` is set once a writable poll
    /// was requested.
    Writable { posted: bool },
}

/// One direction of the relay.
#[derive(Debug, Default)]
struct Direction {
    pipe: Option<Pipe>,
    /// Bytes spliced into the pipe.
    moved_in: u64,
    /// Bytes spliced out of the pipe. Short splices are normal, so the two
    /// counts differ while bytes are in flight.
    moved_out: u64,
    /// The source sent its last byte (FIN or close_notify).
    source_eof: bool,
    /// The source is done and the pipe is empty; for the backend-to-client
    /// direction, close_notify was sent as well.
    finished: bool,
    /// Ring mode: a splice into the pipe is in flight.
    filling: bool,
    /// Ring mode: a splice out of the pipe is in flight.
    draining: bool,
    /// Ring mode: the lengths of the splices in flight, to tell short ones.
    fill_len: u32,
    drain_len: u32,
    fill_wait: FillWait,
    drain_wait: DrainWait,
}

impl Direction {
    fn in_pipe(&self) -> usize {
        (self.moved_in - self.moved_out) as usize
    }

    fn room(&self) -> usize {
        let capacity = self.pipe.as_ref().map_or(usize::MAX, |pipe| pipe.capacity);
        capacity.saturating_sub(self.in_pipe())
    }

    /// Returns the pipe to the pool once nothing is in it and no ring-mode
    /// splice uses it.
    fn release_if_empty(&mut self, pool: &mut PipePool) {
        if self.in_pipe() == 0 && !self.filling && !self.draining {
            if let Some(pipe) = self.pipe.take() {
                pool.give(pipe);
            }
        }
    }
}

/// The result of one splice call.
enum Step {
    Moved(usize),
    /// `EAGAIN`: the socket or the pipe is not ready.
    Blocked,
    EndOfInput,
    Failed(io::Error),
}

fn step(result: io::Result<usize>) -> Step {
    match result {
        Ok(0) => Step::EndOfInput,
        Ok(moved) => Step::Moved(moved),
        Err(err) if err.kind() == io::ErrorKind::WouldBlock => Step::Blocked,
        Err(err) => Step::Failed(err),
    }
}

/// Sockets that must become ready before the relay can move on.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Wants {
    pub client_readable: bool,
    pub client_writable: bool,
    pub backend_readable: bool,
    pub backend_writable: bool,
}

/// The reason the relay ends the connection, with a message for the log.
#[derive(Debug)]
pub struct End {
    pub reason: CloseReason,
    pub message: String,
    /// The connection ends for a local reason, and the client gets a close_notify
    /// before the connection closes.
    pub notify_client: bool,
}

impl End {
    fn new(reason: CloseReason, message: impl Into<String>) -> End {
        End {
            reason,
            message: message.into(),
            notify_client: false,
        }
    }
}

/// The outcome of one [`SpliceRelay::pump`] call.
#[derive(Debug, Default)]
pub struct Pumped {
    /// Bytes delivered to the backend.
    pub up: u64,
    /// Bytes delivered to the client.
    pub down: u64,
    /// Something moved or a record was handled, so the connection is not idle.
    /// A control record or an end of stream moves no payload bytes.
    pub active: bool,
    pub wants: Wants,
    /// The client finished sending and everything reached the backend: time for
    /// shutdown(SHUT_WR) toward the backend.
    pub up_finished: bool,
    /// The backend finished sending, everything reached the client and
    /// close_notify was sent: time for shutdown(SHUT_WR) toward the client.
    pub down_finished: bool,
    /// Application data that arrived through recvmsg(2) instead of splice, to
    /// send to the backend before anything else from the client.
    pub plaintext: Option<Vec<u8>>,
    /// The connection must close.
    pub end: Option<End>,
    /// Ring mode: splices to submit, indexed by [`Stage`].
    pub splices: [Option<SpliceRequest>; 4],
}

/// The two descriptors a relay moves bytes between.
#[derive(Clone, Copy)]
pub struct Sockets<'a> {
    pub client: BorrowedFd<'a>,
    pub backend: BorrowedFd<'a>,
}

/// The kernel TLS session of a relay.
struct KernelSession {
    kernel: KernelConnection<ServerConnectionData>,
    budget: RecordBudget,
}

/// The state of one connection on the kernel TLS path.
pub struct SpliceRelay {
    /// `None` for a relay between plain sockets (see [`SpliceRelay::plain`]).
    session: Option<KernelSession>,
    up: Direction,
    down: Direction,
    /// Our KeyUpdate hit `EAGAIN`; it must go out before any other byte to the client.
    key_update_owed: bool,
}

impl SpliceRelay {
    /// Starts relaying on a socket whose keys `kernel::offload` installed. `budget`
    /// starts at the transmit sequence number of the hand-off.
    pub fn new(
        kernel: KernelConnection<ServerConnectionData>,
        budget: RecordBudget,
    ) -> SpliceRelay {
        SpliceRelay {
            session: Some(KernelSession { kernel, budget }),
            up: Direction::default(),
            down: Direction::default(),
            key_update_owed: false,
        }
    }

    /// Starts a relay between two plain TCP sockets, with no kernel TLS session.
    /// It moves bytes exactly as on the kernel TLS path, but a splice failure
    /// that would mean a control record ends the relay, and the end of the
    /// backend's data sends no close_notify. Tests and benchmarks use it on
    /// kernels without the tls ULP.
    pub fn plain() -> SpliceRelay {
        SpliceRelay {
            session: None,
            up: Direction::default(),
            down: Direction::default(),
            key_update_owed: false,
        }
    }

    /// Bytes sit in a pipe, waiting for a peer to take them.
    pub fn has_pending(&self) -> bool {
        self.up.in_pipe() > 0 || self.down.in_pipe() > 0
    }

    /// Moves what can move now in both directions without blocking.
    ///
    /// `up_paused` stops the client-to-backend direction while plaintext that
    /// rustls or recvmsg(2) produced is still on its way to the backend, so bytes
    /// reach the backend in order.
    pub fn pump(
        &mut self,
        sockets: Sockets<'_>,
        pool: &mut PipePool,
        support: &KernelTlsSupport,
        up_paused: bool,
    ) -> Pumped {
        let mut out = Pumped::default();
        if !up_paused {
            self.pump_up(sockets, pool, support, &mut out);
        }
        if out.end.is_none() {
            self.pump_down(sockets, pool, support, &mut out);
        }
        out
    }

    /// Ring mode: decides which splices to submit now, and which sockets to poll.
    ///
    /// `polling` names the relay's polls that are still in flight. A poll this
    /// relay requested that is no longer in flight has completed, so the splice
    /// that waited for it is requested again. `up_paused` works as in
    /// [`SpliceRelay::pump`].
    pub fn pump_ring(
        &mut self,
        sockets: Sockets<'_>,
        pool: &mut PipePool,
        support: &KernelTlsSupport,
        up_paused: bool,
        polling: Wants,
    ) -> Pumped {
        let mut out = Pumped::default();
        settle_polls(
            &mut self.up,
            polling.client_readable,
            polling.backend_writable,
        );
        settle_polls(
            &mut self.down,
            polling.backend_readable,
            polling.client_writable,
        );
        if !up_paused {
            self.pump_up_ring(sockets, pool, support, &mut out);
        }
        if out.end.is_none() {
            self.pump_down_ring(sockets, pool, support, &mut out);
        }
        out
    }

    /// Ring mode: records the result of a request from [`SpliceRelay::pump_ring`].
    /// `result` is the completion's byte count or errno. Call `pump_ring` next
    /// unless the result ends the connection.
    pub fn splice_done(
        &mut self,
        stage: Stage,
        result: Result<u32, i32>,
        pool: &mut PipePool,
    ) -> Pumped {
        let mut out = Pumped::default();
        match stage {
            Stage::ClientToPipe => {
                let control_records = self.session.is_some();
                if let Err(err) = fill_done(&mut self.up, result, control_records, &mut out) {
                    out.end = Some(client_failure("splice from the client", &err));
                }
            }
            Stage::BackendToPipe => {
                if let Err(err) = fill_done(&mut self.down, result, false, &mut out) {
                    out.end = Some(backend_failure("splice from the backend", &err));
                }
            }
            Stage::PipeToBackend => match drain_done(&mut self.up, result) {
                Ok(moved) => out.up += moved as u64,
                Err(err) => out.end = Some(backend_failure("splice to the backend", &err)),
            },
            Stage::PipeToClient => match drain_done(&mut self.down, result) {
                Ok(moved) => {
                    if let Some(session) = self.session.as_mut() {
                        session.budget.count_send(moved);
                    }
                    out.down += moved as u64;
                }
                Err(err) => out.end = Some(client_failure("splice to the client", &err)),
            },
        }
        out.active |= out.up > 0 || out.down > 0;
        self.up.release_if_empty(pool);
        self.down.release_if_empty(pool);
        out
    }

    fn pump_up_ring(
        &mut self,
        sockets: Sockets<'_>,
        pool: &mut PipePool,
        support: &KernelTlsSupport,
        out: &mut Pumped,
    ) {
        if self.up.finished {
            return;
        }
        // The record is read on this thread, so no splice on the client socket
        // may run meanwhile: a KeyUpdate changes the keys of both directions.
        if self.up.fill_wait == FillWait::Record
            && self.up.in_pipe() == 0
            && !self.up.draining
            && !self.down.draining
        {
            self.up.fill_wait = FillWait::Ready;
            out.active |= self.control_record(sockets.client, support, out);
            if out.wants.client_readable {
                self.up.fill_wait = FillWait::Readable { posted: true };
            }
            if out.end.is_some() || out.plaintext.is_some() {
                return;
            }
        }

        out.splices[Stage::PipeToBackend as usize] =
            drain_request(&mut self.up, sockets.backend.as_raw_fd());
        match fill_request(&mut self.up, sockets.client.as_raw_fd(), pool) {
            Ok(request) => out.splices[Stage::ClientToPipe as usize] = request,
            Err(err) => {
                out.end = Some(client_failure("taking a pipe", &err));
                return;
            }
        }
        request_polls(
            &mut self.up,
            &mut out.wants.client_readable,
            &mut out.wants.backend_writable,
        );

        self.up.release_if_empty(pool);
        if self.up.source_eof && self.up.in_pipe() == 0 && !self.up.filling {
            self.up.finished = true;
            out.up_finished = true;
        }
    }

    fn pump_down_ring(
        &mut self,
        sockets: Sockets<'_>,
        pool: &mut PipePool,
        support: &KernelTlsSupport,
        out: &mut Pumped,
    ) {
        if self.down.finished {
            return;
        }
        // A KeyUpdate and the new transmit key must not race a splice to the
        // client, so they wait until none is in flight, and none starts while a
        // control record from the client waits to be read.
        let record_waiting = self.up.fill_wait == FillWait::Record;
        if self.key_update_owed
            && (self.down.draining || !self.send_key_update(sockets.client, support, out))
        {
            return;
        }
        if self.down.in_pipe() > 0
            && !self.down.draining
            && self.down.drain_wait == DrainWait::Ready
            && !record_waiting
        {
            if !self.check_key_limit(sockets.client, support, out) {
                return;
            }
            out.splices[Stage::PipeToClient as usize] =
                drain_request(&mut self.down, sockets.client.as_raw_fd());
        }
        match fill_request(&mut self.down, sockets.backend.as_raw_fd(), pool) {
            Ok(request) => out.splices[Stage::BackendToPipe as usize] = request,
            Err(err) => {
                out.end = Some(backend_failure("taking a pipe", &err));
                return;
            }
        }
        request_polls(
            &mut self.down,
            &mut out.wants.backend_readable,
            &mut out.wants.client_writable,
        );

        self.down.release_if_empty(pool);
        if self.down.source_eof
            && self.down.in_pipe() == 0
            && !self.down.filling
            && !self.down.draining
        {
            self.finish_down(sockets.client, out);
        }
    }

    fn pump_up(
        &mut self,
        sockets: Sockets<'_>,
        pool: &mut PipePool,
        support: &KernelTlsSupport,
        out: &mut Pumped,
    ) {
        for round in 0..ROUNDS_PER_PUMP {
            if self.up.finished || out.plaintext.is_some() {
                return;
            }
            let mut progressed = false;

            if self.up.in_pipe() > 0 {
                match drain(&mut self.up, sockets.backend) {
                    Step::Moved(moved) => {
                        out.up += moved as u64;
                        progressed = true;
                    }
                    Step::Blocked => out.wants.backend_writable = true,
                    Step::EndOfInput => {}
                    Step::Failed(err) => {
                        out.end = Some(backend_failure("splice to the backend", &err));
                        return;
                    }
                }
            }

            if !self.up.source_eof && self.up.room() > 0 {
                match fill(&mut self.up, sockets.client, pool) {
                    Step::Moved(_) => progressed = true,
                    Step::Blocked if self.up.in_pipe() == 0 => out.wants.client_readable = true,
                    // With bytes in the pipe, `EAGAIN` may mean a full pipe, and
                    // the backend's readiness decides when to try again.
                    Step::Blocked => {}
                    Step::EndOfInput => {
                        self.up.source_eof = true;
                        progressed = true;
                    }
                    // The next record is not application data. Read it once the
                    // pipe is empty, so nothing overtakes the bytes in the pipe.
                    Step::Failed(err)
                        if self.session.is_some()
                            && matches!(err.raw_os_error(), Some(libc::EINVAL | libc::EIO)) =>
                    {
                        if self.up.in_pipe() == 0 {
                            progressed = self.control_record(sockets.client, support, out);
                            if out.end.is_some() {
                                return;
                            }
                        }
                    }
                    Step::Failed(err) => {
                        out.end = Some(client_failure("splice from the client", &err));
                        return;
                    }
                }
            }

            out.active |= progressed;
            self.up.release_if_empty(pool);
            if self.up.source_eof && self.up.in_pipe() == 0 {
                self.up.finished = true;
                out.up_finished = true;
                return;
            }
            if !progressed {
                return;
            }
            if round + 1 == ROUNDS_PER_PUMP {
                yield_direction(
                    &self.up,
                    &mut out.wants.backend_writable,
                    &mut out.wants.client_readable,
                );
            }
        }
    }

    fn pump_down(
        &mut self,
        sockets: Sockets<'_>,
        pool: &mut PipePool,
        support: &KernelTlsSupport,
        out: &mut Pumped,
    ) {
        for round in 0..ROUNDS_PER_PUMP {
            if self.down.finished {
                return;
            }
            if self.key_update_owed && !self.send_key_update(sockets.client, support, out) {
                return;
            }
            let mut progressed = false;

            if self.down.in_pipe() > 0 {
                if !self.check_key_limit(sockets.client, support, out) {
                    return;
                }
                match drain(&mut self.down, sockets.client) {
                    Step::Moved(moved) => {
                        if let Some(session) = self.session.as_mut() {
                            session.budget.count_send(moved);
                        }
                        out.down += moved as u64;
                        progressed = true;
                    }
                    Step::Blocked => out.wants.client_writable = true,
                    Step::EndOfInput => {}
                    Step::Failed(err) => {
                        out.end = Some(client_failure("splice to the client", &err));
                        return;
                    }
                }
            }

            if !self.down.source_eof && self.down.room() > 0 {
                match fill(&mut self.down, sockets.backend, pool) {
                    Step::Moved(_) => progressed = true,
                    Step::Blocked if self.down.in_pipe() == 0 => out.wants.backend_readable = true,
                    Step::Blocked => {}
                    Step::EndOfInput => {
                        self.down.source_eof = true;
                        progressed = true;
                    }
                    Step::Failed(err) => {
                        out.end = Some(backend_failure("splice from the backend", &err));
                        return;
                    }
                }
            }

            out.active |= progressed;
            self.down.release_if_empty(pool);
            if self.down.source_eof && self.down.in_pipe() == 0 {
                self.finish_down(sockets.client, out);
                return;
            }
            if !progressed {
                return;
            }
            if round + 1 == ROUNDS_PER_PUMP {
                yield_direction(
                    &self.down,
                    &mut out.wants.client_writable,
                    &mut out.wants.backend_readable,
                );
            }
        }
    }

    /// Sends close_notify after the backend's last byte reached the client, and
    /// marks the direction finished.
    fn finish_down(&mut self, client: BorrowedFd<'_>, out: &mut Pumped) {
        let sent = if self.session.is_some() {
            kernel::send_close_notify(client)
        } else {
            Ok(())
        };
        match sent {
            Ok(()) => {
                self.down.finished = true;
                out.down_finished = true;
            }
            Err(err) if err.kind() == io::ErrorKind::WouldBlock => {
                out.wants.client_writable = true;
            }
            Err(err) => out.end = Some(client_failure("sending close_notify", &err)),
        }
    }

    /// Reads and acts on the record that stopped a splice from the client.
    /// Returns whether the relay made progress.
    fn control_record(
        &mut self,
        client: BorrowedFd<'_>,
        support: &KernelTlsSupport,
        out: &mut Pumped,
    ) -> bool {
        let mut buf = vec![0u8; CONTROL_RECORD_BUFFER_LEN];
        let record = match kernel::read_control_record(client, &mut buf) {
            Ok(record) => record,
            Err(err) if err.kind() == io::ErrorKind::WouldBlock => {
                out.wants.client_readable = true;
                return false;
            }
            Err(err) if err.raw_os_error() == Some(libc::EBADMSG) => {
                out.end = Some(End::new(
                    CloseReason::TlsError,
                    format!("a record from the client failed to decrypt: {err}"),
                ));
                return false;
            }
            Err(err) => {
                out.end = Some(client_failure("reading a record from the client", &err));
                return false;
            }
        };

        match record {
            ControlRecord::ApplicationData { len } => {
                buf.truncate(len);
                if !buf.is_empty() {
                    out.plaintext = Some(buf);
                }
                true
            }
            ControlRecord::CloseNotify | ControlRecord::EndOfStream => {
                self.up.source_eof = true;
                true
            }
            ControlRecord::Alert { level, description } => {
                out.end = Some(End::new(
                    CloseReason::TlsError,
                    format!("the client sent alert {description} at level {level}"),
                ));
                false
            }
            ControlRecord::KeyUpdate { update_requested } => {
                self.key_update(client, update_requested, support, out)
            }
            ControlRecord::Other { record_type, len } => {
                out.end = Some(End::new(
                    CloseReason::TlsError,
                    format!("unexpected record from the client: type {record_type}, {len} bytes"),
                ));
                false
            }
        }
    }

    fn key_update(
        &mut self,
        client: BorrowedFd<'_>,
        update_requested: bool,
        support: &KernelTlsSupport,
        out: &mut Pumped,
    ) -> bool {
        let session = self
            .session
            .as_mut()
            .expect("control records are read only with a kernel TLS session");
        match kernel::handle_key_update(client, &mut session.kernel, update_requested, support) {
            Ok(()) => {
                if update_requested {
                    session.budget.reset();
                }
                true
            }
            Err(err) if err.is_would_block() => {
                // The receive key is installed; our KeyUpdate goes out when the
                // client socket is writable, before any more data.
                self.key_update_owed = true;
                out.wants.client_writable = true;
                true
            }
            Err(err) => {
                out.end = Some(End {
                    reason: CloseReason::TlsError,
                    message: format!("client key update: {err}"),
                    notify_client: true,
                });
                false
            }
        }
    }

    /// Sends a KeyUpdate that an earlier attempt could not send. Returns whether
    /// the down direction may go on.
    fn send_key_update(
        &mut self,
        client: BorrowedFd<'_>,
        support: &KernelTlsSupport,
        out: &mut Pumped,
    ) -> bool {
        let Some(session) = self.session.as_mut() else {
            self.key_update_owed = false;
            return true;
        };
        match kernel::send_key_update(client, &mut session.kernel, false, support) {
            Ok(()) => {
                self.key_update_owed = false;
                session.budget.reset();
                true
            }
            Err(err) if err.is_would_block() => {
                out.wants.client_writable = true;
                false
            }
            Err(err) => {
                out.end = Some(End {
                    reason: CloseReason::TlsError,
                    message: format!("key update toward the client: {err}"),
                    notify_client: true,
                });
                false
            }
        }
    }

    /// Re-keys or ends the connection before the transmit key reaches the cipher
    /// suite's confidentiality limit. Returns whether sending may go on.
    fn check_key_limit(
        &mut self,
        client: BorrowedFd<'_>,
        support: &KernelTlsSupport,
        out: &mut Pumped,
    ) -> bool {
        let Some(session) = self.session.as_ref() else {
            return true;
        };
        let can_rekey =
            support.rekey && session.kernel.protocol_version() == ProtocolVersion::TLSv1_3;
        match session.budget.action(can_rekey) {
            KeyLimitAction::Continue => true,
            KeyLimitAction::Rekey => {
                self.key_update_owed = true;
                self.send_key_update(client, support, out)
            }
            KeyLimitAction::Close => {
                out.end = Some(End {
                    reason: CloseReason::TlsError,
                    message: format!(
                        "{} records sent under one key, near the confidentiality limit of {}, and this connection cannot re-key",
                        session.budget.records_sent(),
                        session.budget.limit()
                    ),
                    notify_client: true,
                });
                false
            }
        }
    }
}

/// Splices from `source` into the direction's pipe, taking one from the pool
/// when the direction has none.
fn fill(direction: &mut Direction, source: BorrowedFd<'_>, pool: &mut PipePool) -> Step {
    if direction.pipe.is_none() {
        match pool.take() {
            Ok(pipe) => direction.pipe = Some(pipe),
            Err(err) => return Step::Failed(err),
        }
    }
    let room = direction.room();
    let pipe = direction.pipe.as_ref().expect("a pipe was just taken");
    let result = step(sys::splice(source, pipe.write.as_fd(), room, false));
    if let Step::Moved(moved) = result {
        direction.moved_in += moved as u64;
    }
    result
}

/// Splices the bytes in the direction's pipe to `destination`.
fn drain(direction: &mut Direction, destination: BorrowedFd<'_>) -> Step {
    let Some(pipe) = direction.pipe.as_ref() else {
        return Step::Blocked;
    };
    let result = step(sys::splice(
        pipe.read.as_fd(),
        destination,
        direction.in_pipe(),
        false,
    ));
    if let Step::Moved(moved) = result {
        direction.moved_out += moved as u64;
    }
    result
}

/// Ring mode: returns a splice into the direction's pipe when one may start,
/// taking a pipe from the pool when the direction has none.
fn fill_request(
    direction: &mut Direction,
    source: RawFd,
    pool: &mut PipePool,
) -> io::Result<Option<SpliceRequest>> {
    if direction.filling
        || direction.source_eof
        || direction.fill_wait != FillWait::Ready
        || direction.room() == 0
    {
        return Ok(None);
    }
    if direction.pipe.is_none() {
        direction.pipe = Some(pool.take()?);
    }
    let len = u32::try_from(direction.room()).unwrap_or(u32::MAX);
    let pipe = direction.pipe.as_ref().expect("a pipe was just taken");
    direction.filling = true;
    direction.fill_len = len;
    Ok(Some(SpliceRequest {
        fd_in: source,
        fd_out: pipe.write.as_raw_fd(),
        len,
        flags: RING_SPLICE_FLAGS,
    }))
}

/// Ring mode: returns a splice of the bytes in the direction's pipe to
/// `destination` when one may start.
fn drain_request(direction: &mut Direction, destination: RawFd) -> Option<SpliceRequest> {
    if direction.draining || direction.in_pipe() == 0 || direction.drain_wait != DrainWait::Ready {
        return None;
    }
    let pipe = direction.pipe.as_ref()?;
    let len = u32::try_from(direction.in_pipe()).unwrap_or(u32::MAX);
    direction.draining = true;
    direction.drain_len = len;
    Some(SpliceRequest {
        fd_in: pipe.read.as_raw_fd(),
        fd_out: destination,
        len,
        flags: RING_SPLICE_FLAGS,
    })
}

/// Ring mode: applies the result of a splice into the direction's pipe.
/// `control_records` makes `EINVAL` and `EIO` mean a control record from a kernel
/// TLS socket instead of a failure.
fn fill_done(
    direction: &mut Direction,
    result: Result<u32, i32>,
    control_records: bool,
    out: &mut Pumped,
) -> io::Result<()> {
    direction.filling = false;
    match result {
        Ok(0) => {
            direction.source_eof = true;
            out.active = true;
        }
        Ok(moved) => {
            direction.moved_in += u64::from(moved);
            out.active = true;
            if moved < direction.fill_len {
                direction.fill_wait = FillWait::Readable { posted: false };
            }
        }
        Err(libc::EAGAIN) if direction.in_pipe() == 0 => {
            direction.fill_wait = FillWait::Readable { posted: false };
        }
        Err(libc::EAGAIN) => direction.fill_wait = FillWait::Drain,
        Err(libc::EINVAL | libc::EIO) if control_records => {
            direction.fill_wait = FillWait::Record;
        }
        Err(errno) => return Err(io::Error::from_raw_os_error(errno)),
    }
    Ok(())
}

/// Ring mode: applies the result of a splice out of the direction's pipe and
/// returns the bytes it moved.
fn drain_done(direction: &mut Direction, result: Result<u32, i32>) -> io::Result<usize> {
    direction.draining = false;
    match result {
        Ok(moved) if moved > 0 => {
            direction.moved_out += u64::from(moved);
            if direction.fill_wait == FillWait::Drain {
                direction.fill_wait = FillWait::Ready;
            }
            if moved < direction.drain_len {
                direction.drain_wait = DrainWait::Writable { posted: false };
            }
            Ok(moved as usize)
        }
        // Zero bytes from a pipe that contains bytes is treated as `EAGAIN`.
        Ok(_) | Err(libc::EAGAIN) => {
            direction.drain_wait = DrainWait::Writable { posted: false };
            Ok(0)
        }
        Err(errno) => Err(io::Error::from_raw_os_error(errno)),
    }
}

/// Ring mode: requests the polls a direction waits for that are not posted yet.
fn request_polls(
    direction: &mut Direction,
    source_readable: &mut bool,
    destination_writable: &mut bool,
) {
    if direction.fill_wait == (FillWait::Readable { posted: false }) {
        direction.fill_wait = FillWait::Readable { posted: true };
        *source_readable = true;
    }
    if direction.drain_wait == (DrainWait::Writable { posted: false }) {
        direction.drain_wait = DrainWait::Writable { posted: true };
        *destination_writable = true;
    }
}

/// Ring mode: a posted poll that is no longer in flight has completed, so the
/// splice that waited for it may run again.
fn settle_polls(direction: &mut Direction, source_polling: bool, destination_polling: bool) {
    if direction.fill_wait == (FillWait::Readable { posted: true }) && !source_polling {
        direction.fill_wait = FillWait::Ready;
    }
    if direction.drain_wait == (DrainWait::Writable { posted: true }) && !destination_polling {
        direction.drain_wait = DrainWait::Ready;
    }
}

/// After a full set of rounds, requests the poll that lets the direction go on.
/// The polled socket is ready, so the poll completes at once.
fn yield_direction(
    direction: &Direction,
    destination_writable: &mut bool,
    source_readable: &mut bool,
) {
    if direction.in_pipe() > 0 {
        *destination_writable = true;
    } else {
        *source_readable = true;
    }
}

fn is_reset(err: &io::Error) -> bool {
    matches!(
        err.raw_os_error(),
        Some(libc::ECONNRESET | libc::EPIPE | libc::ETIMEDOUT | libc::ENOTCONN)
    )
}

fn client_failure(action: &str, err: &io::Error) -> End {
    let reason = if is_reset(err) {
        CloseReason::ClientReset
    } else if err.raw_os_error() == Some(libc::EBADMSG) {
        CloseReason::TlsError
    } else {
        CloseReason::Internal
    };
    End::new(reason, format!("{action} failed: {err}"))
}

fn backend_failure(action: &str, err: &io::Error) -> End {
    let reason = if is_reset(err) {
        CloseReason::BackendReset
    } else {
        CloseReason::Internal
    };
    End::new(reason, format!("{action} failed: {err}"))
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};
    use std::net::{Shutdown, TcpListener, TcpStream};

    use super::*;

    fn pair() -> (TcpStream, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let near = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (far, _) = listener.accept().unwrap();
        near.set_nonblocking(true).unwrap();
        (near, far)
    }

    #[test]
    fn direction_counts_short_splices() {
        let (source_near, mut source_far) = pair();
        let (destination_near, mut destination_far) = pair();
        let mut pool = PipePool::new(4);
        let mut direction = Direction::default();

        source_far.write_all(&[7u8; 5000]).unwrap();
        source_far.shutdown(Shutdown::Write).unwrap();
        let mut moved_in = 0;
        while moved_in < 5000 {
            match fill(&mut direction, source_near.as_fd(), &mut pool) {
                Step::Moved(moved) => moved_in += moved,
                Step::Blocked => std::thread::yield_now(),
                _ => panic!("unexpected end of the source"),
            }
        }
        assert_eq!(direction.in_pipe(), 5000);
        assert!(matches!(
            fill(&mut direction, source_near.as_fd(), &mut pool),
            Step::EndOfInput
        ));

        let mut moved_out = 0;
        while direction.in_pipe() > 0 {
            if let Step::Moved(moved) = drain(&mut direction, destination_near.as_fd()) {
                moved_out += moved;
            }
        }
        assert_eq!(moved_out, 5000);
        direction.release_if_empty(&mut pool);
        assert!(direction.pipe.is_none());
        assert_eq!(pool.idle(), 1);

        let mut received = vec![0u8; 5000];
        destination_far.read_exact(&mut received).unwrap();
        assert!(received.iter().all(|byte| *byte == 7));
    }

    #[test]
    fn pool_reuses_and_caps_pipes() {
        let mut pool = PipePool::new(1);
        let first = pool.take().unwrap();
        let second = pool.take().unwrap();
        assert!(first.capacity > 0);
        pool.give(first);
        pool.give(second);
        assert_eq!(pool.idle(), 1);
        let _again = pool.take().unwrap();
        assert_eq!(pool.created(), 2);
    }
}
