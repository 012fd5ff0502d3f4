//! A worker thread: one io_uring, its own listeners, and a slab of connections.
//! Workers share only read-only service data and a stop flag.
//!
//! The kernel TLS hand-off and the splice relay's hooks live in [`kernel_tls`];
//! handshake steps that wait for the key process run as [`handshake_step`]s.

mod handshake_step;
mod kernel_tls;

use std::io;
use std::net::{Shutdown, SocketAddr};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use socket2::{Domain, SockAddr, SockRef, Socket, Type};

use super::conn::{Conn, Phase};
use super::token::{next_generation, Kind, Token};
use super::{Service, Shared};
use crate::config::{Address, SpliceMode};
use crate::log::{CloseReason, ConnectionRecord};
use crate::metrics::{HandshakeFailure, WorkerMetrics};
use crate::privsep::signer::SIGN_TIMEOUT;
use crate::relay::splice::RING_IO_WORKERS;
use crate::relay::{DataPath, PipePool, UserspaceRelay};
use crate::sys::ring::{Completion, Op, Ring, RingConfig};
use crate::tls::TlsSession;
use crate::{debug, info, warning};
use handshake_step::{Output, State, Steps, Suspended};

/// Interval of the timer that checks connection deadlines.
const TICK: Duration = Duration::from_millis(250);
/// How long accepting pauses after running out of file descriptors.
const ACCEPT_PAUSE: Duration = Duration::from_millis(100);

pub struct WorkerConfig {
    pub index: usize,
    pub cpu: Option<usize>,
    pub listeners: Vec<OwnedFd>,
    pub wake: OwnedFd,
    pub maxconn: usize,
    pub shutdown_timeout: Duration,
    pub metrics: WorkerMetrics,
    /// Create the ring with only the opcodes a jailed worker uses.
    pub restricted_ring: bool,
    /// Run the handshake steps that may sign as coroutines that suspend while
    /// the key process signs.
    pub suspend_signing: bool,
    /// Splice mode of the kernel TLS relay (the `splice` option).
    pub splice: SpliceMode,
}

enum Slot {
    Free { generation: u32 },
    Used(Box<Conn>),
}

pub struct Worker {
    index: usize,
    ring: Ring,
    services: Arc<[Service]>,
    shared: Arc<Shared>,
    /// Listening sockets by service index; `None` once closed for shutdown.
    listeners: Vec<Option<OwnedFd>>,
    accept_armed: Vec<bool>,
    accept_paused_until: Option<Instant>,
    accept_error_logged: bool,
    maxconn_logged: bool,
    wake: OwnedFd,
    slots: Vec<Slot>,
    free: Vec<u32>,
    live: usize,
    maxconn: usize,
    /// Closed connections to free once their operations have completed.
    finishing: Vec<u32>,
    /// Connections whose receive found no provided buffer; retried when one returns.
    starved: Vec<(u32, u32, Kind)>,
    /// Spare send buffers, reused to avoid an allocation per send.
    pool: Vec<Vec<u8>>,
    /// Empty pipes for the kernel TLS relay.
    pipes: PipePool,
    splice_mode: SpliceMode,
    shutdown_timeout: Duration,
    stop_deadline: Option<Instant>,
    metrics: WorkerMetrics,
    /// The stacks of suspendable handshake steps, used only with `key_link`.
    steps: Steps,
    /// The socket that replies from the key process arrive on, when the keys
    /// live there.
    key_link: Option<RawFd>,
    key_recv_armed: bool,
    /// Steps waiting for a signature, with their connection's slot and generation.
    suspended: Vec<(u32, u32, Suspended)>,
    /// When a failed signature was last logged as a warning.
    key_warned_at: Option<Instant>,
}

/// Minimum time between two warnings about handshakes the key process did not
/// sign.
const KEY_WARNING_INTERVAL: Duration = Duration::from_secs(10);
/// Send buffers kept for reuse, at most.
const POOL_MAX: usize = 256;
/// Send buffers larger than this are freed rather than pooled.
const POOL_BUFFER_MAX: usize = 64 * 1024;
/// Idle pipes kept for reuse, at most.
const PIPE_POOL_MAX: usize = 64;

impl Worker {
    pub fn new(
        config: WorkerConfig,
        services: Arc<[Service]>,
        shared: Arc<Shared>,
    ) -> io::Result<Worker> {
        if let Some(cpu) = config.cpu {
            if let Err(err) = crate::sys::pin_to_cpu(cpu) {
                warning!("worker {}: cannot pin to CPU {cpu}: {err}", config.index);
            }
        }
        // Set up this thread's random generator before the first handshake.
        crate::tls::prepare_random();
        // Receive buffers go back to the ring as soon as their completion is
        // handled, so a few hundred serve many thousands of connections. A
        // receive that finds none waits in `starved` until one returns.
        let ring_config = RingConfig {
            entries: 1024,
            buffers: 256,
            buffer_size: 16 * 1024,
            io_workers: (config.splice == SpliceMode::Ring).then_some(RING_IO_WORKERS),
        };
        let ring = if config.restricted_ring {
            Ring::new_restricted(ring_config)?
        } else {
            Ring::new(ring_config)?
        };
        let key_link = if config.suspend_signing {
            crate::privsep::signer::link_socket()
        } else {
            None
        };
        let count = config.listeners.len();
        Ok(Worker {
            index: config.index,
            ring,
            services,
            shared,
            listeners: config.listeners.into_iter().map(Some).collect(),
            accept_armed: vec![false; count],
            accept_paused_until: None,
            accept_error_logged: false,
            maxconn_logged: false,
            wake: config.wake,
            slots: Vec::new(),
            free: Vec::new(),
            live: 0,
            maxconn: config.maxconn,
            finishing: Vec::new(),
            starved: Vec::new(),
            pool: Vec::new(),
            pipes: PipePool::new(PIPE_POOL_MAX),
            splice_mode: config.splice,
            shutdown_timeout: config.shutdown_timeout,
            stop_deadline: None,
            metrics: config.metrics,
            steps: Steps::default(),
            key_link,
            key_recv_armed: false,
            suspended: Vec::new(),
            key_warned_at: None,
        })
    }

    /// Runs until shutdown: stop accepting, drain, then return.
    pub fn run(mut self) -> io::Result<()> {
        for service in 0..self.listeners.len() {
            self.arm_accept(service)?;
        }
        let wake = self.wake.as_raw_fd();
        self.ring.submit(
            Token::new(Kind::Wake, 0, 0).encode(),
            Op::ReadEventfd { fd: wake },
        )?;
        self.ring.submit(
            Token::new(Kind::Tick, 0, 0).encode(),
            Op::Timeout { after: TICK },
        )?;

        let mut completions = Vec::with_capacity(256);
        loop {
            self.send_sign_requests()?;
            self.ring.submit_and_wait(1)?;
            self.ring.reap(&mut completions);
            for completion in completions.drain(..) {
                self.handle(completion)?;
                self.finish_closed();
            }
            self.feed_starved()?;
            self.finish_closed();
            if self.metrics.publish_requested() {
                self.metrics.publish();
            }
            if self.stop_deadline.is_some()
                && self.live == 0
                && self.accept_armed.iter().all(|armed| !armed)
            {
                debug!("worker {}: drained, exiting", self.index);
                return Ok(());
            }
        }
    }

    fn handle(&mut self, completion: Completion) -> io::Result<()> {
        let Some(token) = Token::decode(completion.tag) else {
            self.release(completion);
            return Ok(());
        };
        match token.kind {
            Kind::Accept => self.on_accept(token.slot as usize, completion),
            Kind::Tick => self.on_tick(),
            Kind::Wake => self.on_wake(),
            Kind::KeyReply => self.on_key_reply(completion),
            _ => {
                let current = matches!(
                    self.slots.get(token.slot as usize),
                    Some(Slot::Used(conn)) if conn.generation == token.generation
                );
                if !current {
                    // Cannot happen while slots outlive their operations; the
                    // buffer still goes back to the pool.
                    self.release(completion);
                    return Ok(());
                }
                self.on_conn(token, completion)
            }
        }
    }

    /// Returns a completion's buffers to their pools when no connection takes them.
    fn release(&mut self, completion: Completion) {
        if let Some(buf) = completion.received {
            self.ring.recycle(buf);
        }
        if let Some((buf, _)) = completion.sent {
            self.give_buffer(buf);
        }
    }

    fn take_buffer(&mut self) -> Vec<u8> {
        self.pool.pop().unwrap_or_default()
    }

    fn give_buffer(&mut self, mut buf: Vec<u8>) {
        if self.pool.len() < POOL_MAX && buf.capacity() <= POOL_BUFFER_MAX && buf.capacity() > 0 {
            buf.clear();
            self.pool.push(buf);
        }
    }

    // ---- accepting ----

    fn arm_accept(&mut self, service: usize) -> io::Result<()> {
        let Some(listener) = &self.listeners[service] else {
            return Ok(());
        };
        let fd = listener.as_raw_fd();
        self.ring.submit(
            Token::new(Kind::Accept, service as u32, 0).encode(),
            Op::AcceptMulti { fd },
        )?;
        self.accept_armed[service] = true;
        Ok(())
    }

    fn on_accept(&mut self, service: usize, completion: Completion) -> io::Result<()> {
        if !completion.more {
            self.accept_armed[service] = false;
        }
        match completion.result {
            Ok(_) => {
                self.accept_error_logged = false;
                if let Some(client) = completion.accepted {
                    self.start_conn(service, client)?;
                }
            }
            Err(libc::EMFILE | libc::ENFILE | libc::ENOMEM | libc::ENOBUFS) => {
                if !self.accept_error_logged {
                    warning!(
                        "worker {}: out of file descriptors or memory while accepting; pausing accepts for {} ms (raise `ulimit -n` or lower maxconn)",
                        self.index,
                        ACCEPT_PAUSE.as_millis()
                    );
                    self.accept_error_logged = true;
                }
                self.accept_paused_until = Some(Instant::now() + ACCEPT_PAUSE);
                return Ok(());
            }
            Err(libc::ECANCELED) => {
                // Cancelled for shutdown: close the listener now.
                self.listeners[service] = None;
                return Ok(());
            }
            Err(errno) => {
                debug!(
                    "worker {}: accept failed: {}",
                    self.index,
                    io::Error::from_raw_os_error(errno)
                );
            }
        }
        if !self.accept_armed[service] && self.accept_paused_until.is_none() {
            self.arm_accept(service)?;
        }
        Ok(())
    }

    fn start_conn(&mut self, service: usize, client: OwnedFd) -> io::Result<()> {
        if self.live >= self.maxconn || self.stop_deadline.is_some() {
            if !self.maxconn_logged && self.stop_deadline.is_none() {
                warning!(
                    "worker {}: maxconn {} reached; closing new connections until some finish",
                    self.index,
                    self.maxconn
                );
                self.maxconn_logged = true;
            }
            return Ok(());
        }
        self.maxconn_logged = false;
        let socket = SockRef::from(&client);
        let _ = socket.set_tcp_nodelay(true);
        // A dual-stack listener reports IPv4 peers as ::ffff:a.b.c.d; logs and
        // PROXY headers use the plain IPv4 form.
        let client_addr = socket
            .peer_addr()
            .ok()
            .and_then(|addr| addr.as_socket())
            .map(unmap_ipv4);
        let accepted_on = socket
            .local_addr()
            .ok()
            .and_then(|addr| addr.as_socket())
            .map(unmap_ipv4);
        self.metrics.accepted(service);

        let service_data = &self.services[service];
        let tls = match TlsSession::new(&service_data.tls.config, &service_data.tls.resolver) {
            Ok(tls) => tls,
            Err(err) => {
                warning!(
                    "service {}: cannot start a TLS session: {err}",
                    service_data.name
                );
                return Ok(());
            }
        };

        let now = Instant::now();
        let phase = if service_data.config.accept_proxy {
            Phase::ProxyHeader
        } else {
            Phase::Handshake
        };
        let (slot, generation) = match self.free.pop() {
            Some(slot) => {
                let Slot::Free { generation } = self.slots[slot as usize] else {
                    unreachable!("free list names a used slot");
                };
                (slot, next_generation(generation))
            }
            None => {
                self.slots.push(Slot::Free { generation: 0 });
                ((self.slots.len() - 1) as u32, 0)
            }
        };
        self.slots[slot as usize] = Slot::Used(Box::new(Conn {
            generation,
            service,
            phase,
            client,
            client_addr,
            accepted_on,
            backend: None,
            backend_attempt: 0,
            backend_addr: None,
            local_addr: None,
            route: None,
            tls: Box::new(tls),
            relay: UserspaceRelay::default(),
            path: DataPath::Userspace,
            handoff_pending: false,
            splice: None,
            inflight: 0,
            client_eof: false,
            backend_eof: false,
            backend_write_closed: false,
            client_write_closed: false,
            close_notify_queued: false,
            close_notify_bytes: 0,
            close_after_flush: None,
            reason: None,
            accepted_at: now,
            accepted_wall: SystemTime::now(),
            first_byte_at: None,
            connect_started: None,
            first_request_at: None,
            backend_replied: false,
            last_activity: now,
            last_progress: now,
            half_closed_at: None,
            bytes_up: 0,
            bytes_down: 0,
        }));
        self.live += 1;
        self.drive(slot)
    }

    // ---- timers and wake-ups ----

    fn on_tick(&mut self) -> io::Result<()> {
        let now = Instant::now();
        self.ring.submit(
            Token::new(Kind::Tick, 0, 0).encode(),
            Op::Timeout { after: TICK },
        )?;

        self.metrics.publish();
        self.expire_steps(now)?;

        if self.accept_paused_until.is_some_and(|until| now >= until) {
            self.accept_paused_until = None;
            for service in 0..self.listeners.len() {
                if !self.accept_armed[service] && self.stop_deadline.is_none() {
                    self.arm_accept(service)?;
                }
            }
        }

        let shutdown_expired = self.stop_deadline.is_some_and(|deadline| now >= deadline);
        for slot in 0..self.slots.len() {
            let Slot::Used(conn) = &self.slots[slot] else {
                continue;
            };
            if conn.phase == Phase::Closing {
                continue;
            }
            let timeouts = &self.services[conn.service].config.timeouts;
            // While one side has closed, or an alert is being flushed before
            // closing, TIMEOUTclose replaces TIMEOUTidle as the limit on silence.
            let closing = conn.half_closed_at.is_some() || conn.close_after_flush.is_some();
            let expired = if shutdown_expired {
                Some(CloseReason::Shutdown)
            } else if matches!(conn.phase, Phase::ProxyHeader | Phase::Handshake) {
                // The PROXY header and the handshake share one deadline.
                (now >= conn.accepted_at + timeouts.handshake)
                    .then_some(CloseReason::HandshakeTimeout)
            } else if conn.phase == Phase::Connecting {
                // The connect operation carries its own linked timeout.
                None
            } else if closing && now >= conn.last_activity + timeouts.close {
                Some(CloseReason::CloseTimeout)
            } else if conn.has_pending_output() {
                (now >= conn.last_progress + timeouts.busy).then_some(CloseReason::BusyTimeout)
            } else {
                (now >= conn.last_activity + timeouts.idle).then_some(CloseReason::IdleTimeout)
            };
            if let Some(reason) = expired {
                self.close(slot as u32, reason)?;
            }
        }
        Ok(())
    }

    fn on_wake(&mut self) -> io::Result<()> {
        if self.shared.stopping.load(Ordering::Acquire) && self.stop_deadline.is_none() {
            self.stop_deadline = Some(Instant::now() + self.shutdown_timeout);
            debug!(
                "worker {}: stopping; {} connections open",
                self.index, self.live
            );
            for service in 0..self.listeners.len() {
                if let Some(listener) = &self.listeners[service] {
                    if self.accept_armed[service] {
                        let fd = listener.as_raw_fd();
                        self.ring.submit(0, Op::CancelFd { fd })?;
                    } else {
                        self.listeners[service] = None;
                    }
                }
            }
            return Ok(());
        }
        let wake = self.wake.as_raw_fd();
        self.ring.submit(
            Token::new(Kind::Wake, 0, 0).encode(),
            Op::ReadEventfd { fd: wake },
        )
    }

    // ---- connections ----

    fn conn(&mut self, slot: u32) -> &mut Conn {
        match &mut self.slots[slot as usize] {
            Slot::Used(conn) => conn,
            Slot::Free { .. } => unreachable!("slot {slot} is free"),
        }
    }

    fn on_conn(&mut self, token: Token, completion: Completion) -> io::Result<()> {
        let slot = token.slot;
        self.conn(slot).clear_inflight(token.kind);
        if self.conn(slot).phase == Phase::Closing {
            self.release(completion);
            self.finishing.push(slot);
            return Ok(());
        }
        match token.kind {
            Kind::ClientRecv => self.on_client_recv(slot, completion),
            Kind::BackendRecv => self.on_backend_recv(slot, completion),
            Kind::ClientSend => self.on_send(slot, completion, true),
            Kind::BackendSend => self.on_send(slot, completion, false),
            Kind::Connect => self.on_connect(slot, completion),
            Kind::ClientReadable
            | Kind::ClientWritable
            | Kind::BackendReadable
            | Kind::BackendWritable => self.drive(slot),
            Kind::ClientToPipe | Kind::PipeToBackend | Kind::BackendToPipe | Kind::PipeToClient => {
                self.on_splice_done(slot, token.kind, completion.result)
            }
            Kind::Accept | Kind::Tick | Kind::Wake | Kind::KeyReply | Kind::HandshakeStep => {
                unreachable!("not a connection operation")
            }
        }
    }

    fn on_client_recv(&mut self, slot: u32, completion: Completion) -> io::Result<()> {
        let received = match (completion.result, completion.received) {
            (Ok(0), buf) | (Err(_), buf @ Some(_)) => {
                if let Some(buf) = buf {
                    self.ring.recycle(buf);
                }
                return self.on_client_eof(slot);
            }
            (Ok(_), Some(buf)) => buf,
            (Ok(_), None) => return self.close(slot, CloseReason::Internal),
            (Err(libc::ENOBUFS), None) => {
                let generation = self.conn(slot).generation;
                self.starved.push((slot, generation, Kind::ClientRecv));
                return Ok(());
            }
            (Err(libc::ECONNRESET | libc::EPIPE | libc::ETIMEDOUT), None) => {
                let reason = self.client_reset_reason(slot);
                return self.close(slot, reason);
            }
            (Err(errno), None) => {
                debug!(
                    "client receive failed: {}",
                    io::Error::from_raw_os_error(errno)
                );
                let reason = self.client_reset_reason(slot);
                return self.close(slot, reason);
            }
        };

        if self.conn(slot).phase == Phase::ProxyHeader {
            return self.on_proxy_header_bytes(slot, received);
        }
        let now = Instant::now();
        let conn = self.conn(slot);
        conn.last_activity = now;
        conn.first_byte_at.get_or_insert(now);
        if self.key_link.is_some() && self.conn(slot).tls.may_sign() {
            let Slot::Used(conn) = &mut self.slots[slot as usize] else {
                unreachable!()
            };
            let input = conn.relay.take_pending(self.ring.received(&received));
            self.ring.recycle(received);
            return self.start_handshake_step(slot, input);
        }
        let result = {
            let Slot::Used(conn) = &mut self.slots[slot as usize] else {
                unreachable!()
            };
            let data = self.ring.received(&received);
            let before = conn.relay.to_backend.len();
            let result = conn.relay.client_bytes(&mut conn.tls, data);
            count_plaintext(conn, before, now);
            result
        };
        self.ring.recycle(received);
        self.after_tls_read(slot, result)
    }

    /// Runs one suspendable handshake step over `input`, which starts with the
    /// connection's partial record if it had one, with its TLS session lent to
    /// the step.
    fn start_handshake_step(&mut self, slot: u32, input: Vec<u8>) -> io::Result<()> {
        let conn = self.conn(slot);
        let tls = conn.tls.lend();
        conn.set_inflight(Kind::HandshakeStep);
        let generation = conn.generation;
        let state = self.steps.start(tls, input)?;
        self.on_step_state(slot, generation, state)
    }

    fn on_step_state(&mut self, slot: u32, generation: u32, state: State) -> io::Result<()> {
        match state {
            State::Suspended(step) => {
                self.suspended.push((slot, generation, step));
                // A lone request leaves at once, so the key process can sign it
                // while this turn goes on. Later ones wait for the end of the
                // turn and leave together.
                if self.suspended.len() == 1 {
                    self.send_sign_requests()?;
                }
                self.arm_key_recv()
            }
            State::Done(output) => self.on_step_done(slot, output),
        }
    }

    /// Posts a receive on the link to the key process while steps wait for a
    /// reply, unless one is in flight.
    fn arm_key_recv(&mut self) -> io::Result<()> {
        let Some(fd) = self.key_link else {
            return Ok(());
        };
        if self.key_recv_armed || self.suspended.is_empty() {
            return Ok(());
        }
        self.key_recv_armed = true;
        self.ring
            .submit(Token::new(Kind::KeyReply, 0, 0).encode(), Op::Recv { fd })
    }

    /// Sends the sign requests that steps queued since the last call, and fails
    /// the handshakes whose request could not be sent.
    fn send_sign_requests(&mut self) -> io::Result<()> {
        if self.key_link.is_none() {
            return Ok(());
        }
        let Err(unsent) = crate::privsep::signer::send_queued() else {
            return Ok(());
        };
        warning!(
            "worker {}: cannot send {} sign requests to the key process: {}",
            self.index,
            unsent.seqs.len(),
            unsent.error
        );
        for seq in unsent.seqs {
            if let Some(index) = self
                .suspended
                .iter()
                .position(|(_, _, step)| step.seq == seq)
            {
                let (slot, generation, step) = self.suspended.swap_remove(index);
                self.give_up_step(slot, generation, step)?;
            }
        }
        Ok(())
    }

    /// Resumes the steps that wait for the replies just received.
    fn on_key_reply(&mut self, completion: Completion) -> io::Result<()> {
        self.key_recv_armed = false;
        match (completion.result, completion.received) {
            (Ok(len), Some(buf)) if len > 0 => {
                let packet = self.ring.received(&buf).to_vec();
                self.ring.recycle(buf);
                self.on_key_packet(packet)?;
                return self.arm_key_recv();
            }
            (result, buf) => {
                if let Some(buf) = buf {
                    self.ring.recycle(buf);
                }
                match result {
                    // No receive buffer was free: the next tick tries again.
                    Err(libc::ENOBUFS) => return Ok(()),
                    Err(errno) => warning!(
                        "worker {}: receive from the key process failed: {}",
                        self.index,
                        io::Error::from_raw_os_error(errno)
                    ),
                    Ok(_) => warning!("worker {}: the key process closed the link", self.index),
                }
            }
        }
        // Without replies, every waiting handshake fails now rather than at its
        // deadline.
        for (slot, generation, step) in std::mem::take(&mut self.suspended) {
            self.give_up_step(slot, generation, step)?;
        }
        Ok(())
    }

    fn on_key_packet(&mut self, packet: Vec<u8>) -> io::Result<()> {
        let messages = match crate::privsep::protocol::split_batch(&packet) {
            Ok(messages) => messages,
            Err(err) => {
                warning!(
                    "worker {}: invalid packet of {} bytes from the key process ({err}); dropped",
                    self.index,
                    packet.len()
                );
                return Ok(());
            }
        };
        if let [_] = messages[..] {
            return self.on_key_message(packet);
        }
        debug!(
            "worker {}: {} sign replies in one packet",
            self.index,
            messages.len()
        );
        for message in messages {
            self.on_key_message(message.to_vec())?;
        }
        Ok(())
    }

    fn on_key_message(&mut self, packet: Vec<u8>) -> io::Result<()> {
        let Some(seq) = crate::privsep::signer::reply_seq(&packet) else {
            warning!(
                "worker {}: invalid reply of {} bytes from the key process; dropped",
                self.index,
                packet.len()
            );
            return Ok(());
        };
        let Some(index) = self
            .suspended
            .iter()
            .position(|(_, _, step)| step.seq == seq)
        else {
            // A reply to a request whose step gave up waiting.
            debug!(
                "worker {}: dropping a late key process reply {seq}",
                self.index
            );
            return Ok(());
        };
        let (slot, generation, step) = self.suspended.swap_remove(index);
        let state = self.steps.resume(step, Some(packet));
        self.on_step_state(slot, generation, state)
    }

    /// Logs a handshake that failed for want of a signature as a warning, at most
    /// once per [`KEY_WARNING_INTERVAL`]. The caller logs every failed handshake
    /// at `info` and counts it as a `key-process` failure.
    fn warn_key_process(&mut self, err: &rustls::Error) {
        let now = Instant::now();
        if self
            .key_warned_at
            .is_some_and(|at| now.duration_since(at) < KEY_WARNING_INTERVAL)
        {
            return;
        }
        self.key_warned_at = Some(now);
        warning!(
            "worker {}: a handshake failed because the key process did not sign ({err}); check that the key process runs and gets CPU time. Handshake failures with cause key-process count every case; this warning repeats at most every {} s",
            self.index,
            KEY_WARNING_INTERVAL.as_secs()
        );
    }

    /// Resumes `step` without a reply, so its signature and handshake fail.
    fn give_up_step(&mut self, slot: u32, generation: u32, step: Suspended) -> io::Result<()> {
        crate::privsep::signer::unqueue(step.seq);
        let state = self.steps.resume(step, None);
        self.on_step_state(slot, generation, state)
    }

    /// Gives up the signature waits that passed their deadline.
    fn expire_steps(&mut self, now: Instant) -> io::Result<()> {
        let mut index = 0;
        while index < self.suspended.len() {
            if now.duration_since(self.suspended[index].2.since) < SIGN_TIMEOUT {
                index += 1;
                continue;
            }
            let (slot, generation, step) = self.suspended.swap_remove(index);
            self.give_up_step(slot, generation, step)?;
        }
        self.arm_key_recv()
    }

    /// Ends the suspended step of a closing connection and puts its TLS session
    /// back.
    fn abandon_step(&mut self, slot: u32) {
        while let Some(index) = self
            .suspended
            .iter()
            .position(|(owner, _, _)| *owner == slot)
        {
            let (_, generation, step) = self.suspended.swap_remove(index);
            crate::privsep::signer::unqueue(step.seq);
            match self.steps.resume(step, None) {
                // The step failed its signature and asked for another one,
                // which fails the same way on the next turn of this loop.
                State::Suspended(step) => self.suspended.push((slot, generation, step)),
                State::Done(output) => {
                    let conn = self.conn(slot);
                    conn.clear_inflight(Kind::HandshakeStep);
                    conn.tls.restore(output.tls);
                }
            }
        }
    }

    fn on_step_done(&mut self, slot: u32, output: Box<Output>) -> io::Result<()> {
        let Output {
            tls,
            input,
            to_client,
            plaintext,
            result,
        } = *output;
        let conn = self.conn(slot);
        conn.clear_inflight(Kind::HandshakeStep);
        conn.tls.restore(tls);
        // The same bookkeeping as `UserspaceRelay::client_bytes`, whose
        // `TlsSession::read` ran in the step.
        conn.relay.to_client.extend_from_slice(&to_client);
        let before = conn.relay.to_backend.len();
        conn.relay.to_backend.extend_from_slice(&plaintext);
        count_plaintext(conn, before, Instant::now());
        conn.relay.keep_partial(input, &result);
        self.after_tls_read(slot, result)
    }

    fn after_tls_read(
        &mut self,
        slot: u32,
        result: Result<crate::tls::Progress, rustls::Error>,
    ) -> io::Result<()> {
        match result {
            Ok(progress) => {
                if progress.handshake_completed {
                    self.on_handshake_done(slot)?;
                }
                if progress.peer_closed {
                    self.conn(slot).client_eof = true;
                    self.mark_half_closed(slot);
                }
                self.drive(slot)
            }
            Err(err) => {
                let conn = self.conn(slot);
                let service = conn.service;
                let reason = if conn.phase == Phase::Handshake {
                    CloseReason::HandshakeFailed
                } else {
                    CloseReason::TlsError
                };
                let cause = if reason == CloseReason::HandshakeFailed {
                    let failure = HandshakeFailure::from_rustls(&err);
                    self.metrics.handshake_failed(service, failure);
                    if failure == HandshakeFailure::KeyProcess {
                        self.warn_key_process(&err);
                    }
                    failure.as_str()
                } else {
                    "after the handshake"
                };
                let client = display_addr(self.conn(slot).client_addr);
                info!(
                    "service {}: client {client}: TLS error ({cause}): {err}",
                    self.services[service].name
                );
                let conn = self.conn(slot);
                conn.close_after_flush = Some(reason);
                self.drive(slot)
            }
        }
    }

    /// Collects the PROXY header an upstream load balancer sends first. Bytes past
    /// the header are the start of the TLS handshake.
    fn on_proxy_header_bytes(
        &mut self,
        slot: u32,
        received: crate::sys::ring::Provided,
    ) -> io::Result<()> {
        let data = self.ring.received(&received).to_vec();
        self.ring.recycle(received);
        let Slot::Used(conn) = &mut self.slots[slot as usize] else {
            unreachable!()
        };
        conn.last_activity = Instant::now();
        conn.relay.partial_record.extend_from_slice(&data);
        match crate::proxy::decode(&conn.relay.partial_record) {
            Ok(crate::proxy::Progress::NeedMore) => self.drive(slot),
            Ok(crate::proxy::Progress::Done { header, consumed }) => {
                if let crate::proxy::Addresses::Tcp { source, .. } = header.addresses {
                    debug!(
                        "client {}: PROXY header gives client {source}",
                        display_addr(conn.client_addr)
                    );
                    conn.client_addr = Some(source);
                }
                conn.phase = Phase::Handshake;
                let mut rest = std::mem::take(&mut conn.relay.partial_record);
                rest.drain(..consumed);
                if rest.is_empty() {
                    return self.drive(slot);
                }
                conn.first_byte_at.get_or_insert_with(Instant::now);
                if self.key_link.is_some() && conn.tls.may_sign() {
                    // The bytes after the PROXY header were the whole partial record.
                    return self.start_handshake_step(slot, rest);
                }
                let Conn { relay, tls, .. } = &mut **conn;
                let result = relay.client_bytes(tls, &mut rest);
                self.after_tls_read(slot, result)
            }
            Err(err) => {
                warning!(
                    "service {}: client {}: invalid PROXY header: {err}; closing",
                    self.services[conn.service].name,
                    display_addr(conn.client_addr)
                );
                self.close(slot, CloseReason::ProxyHeaderInvalid)
            }
        }
    }

    fn client_reset_reason(&mut self, slot: u32) -> CloseReason {
        if matches!(self.conn(slot).phase, Phase::ProxyHeader | Phase::Handshake) {
            CloseReason::HandshakeEof
        } else {
            CloseReason::ClientReset
        }
    }

    fn on_client_eof(&mut self, slot: u32) -> io::Result<()> {
        let conn = self.conn(slot);
        if matches!(conn.phase, Phase::ProxyHeader | Phase::Handshake) {
            return self.close(slot, CloseReason::HandshakeEof);
        }
        // A FIN without close_notify ends the client's data just the same.
        conn.client_eof = true;
        self.mark_half_closed(slot);
        self.drive(slot)
    }

    fn mark_half_closed(&mut self, slot: u32) {
        let conn = self.conn(slot);
        conn.half_closed_at.get_or_insert_with(Instant::now);
    }

    fn on_handshake_done(&mut self, slot: u32) -> io::Result<()> {
        let conn = self.conn(slot);
        conn.phase = Phase::Connecting;
        conn.route = conn.tls.chosen().and_then(|chosen| chosen.route);
        let service = conn.service;
        let started = conn.first_byte_at.unwrap_or(conn.accepted_at);
        let client = conn.client_addr;
        if let (Some(version), Some(suite)) = (conn.tls.protocol_version(), conn.tls.cipher_suite())
        {
            self.metrics
                .handshake_done(service, started.elapsed(), version, suite.suite());
            debug!(
                "client {}: handshake done: {} {:?}",
                display_addr(client),
                crate::tls::version_name(version),
                suite.suite()
            );
        }
        if self.choose_data_path(slot)? == kernel_tls::Flow::Stopped {
            return Ok(());
        }
        self.connect_next(slot)
    }

    /// Starts a connection to the next backend in the service's (or the SNI
    /// route's) list, or closes the client when none is left.
    fn connect_next(&mut self, slot: u32) -> io::Result<()> {
        let (service, route, attempt) = {
            let conn = self.conn(slot);
            (conn.service, conn.route, conn.backend_attempt)
        };
        let service_data = &self.services[service];
        let backends = match route {
            Some(route) if !service_data.config.sni[route].connect.is_empty() => {
                &service_data.config.sni[route].connect
            }
            _ => &service_data.config.connect,
        };
        let Some(address) = backends.get(attempt).cloned() else {
            return self.close(slot, CloseReason::ConnectFailed);
        };
        let source = if service_data.config.transparent_source {
            self.conn(slot).client_addr.map(Source::Transparent)
        } else {
            service_data.config.local.map(Source::Local)
        };
        let timeout = self.services[service].config.timeouts.connect;
        let service_data = &self.services[service];

        let socket = match backend_socket(&address, source) {
            Ok(socket) => socket,
            Err(err) => {
                warning!(
                    "service {}: cannot create a socket for backend {}: {err}",
                    service_data.name,
                    display_address(&address)
                );
                self.conn(slot).backend_attempt += 1;
                return self.connect_next(slot);
            }
        };
        let sockaddr = match &address {
            Address::Inet(addr) => SockAddr::from(*addr),
            Address::Unix(path) => SockAddr::unix(path)?,
        };
        let fd = socket.as_raw_fd();
        let conn = self.conn(slot);
        conn.backend = Some(OwnedFd::from(socket));
        conn.backend_addr = Some(address);
        conn.connect_started = Some(Instant::now());
        conn.set_inflight(Kind::Connect);
        let generation = conn.generation;
        self.ring.submit(
            Token::new(Kind::Connect, slot, generation).encode(),
            Op::Connect {
                fd,
                addr: Box::new(sockaddr),
                timeout,
            },
        )
    }

    fn on_connect(&mut self, slot: u32, completion: Completion) -> io::Result<()> {
        match completion.result {
            Ok(_) => {
                let conn = self.conn(slot);
                conn.phase = Phase::Relaying;
                conn.last_progress = Instant::now();
                conn.local_addr = conn
                    .backend
                    .as_ref()
                    .and_then(|fd| SockRef::from(fd).local_addr().ok())
                    .and_then(|addr| addr.as_socket());
                let service = conn.service;
                if let Some(started) = conn.connect_started {
                    self.metrics.backend_connected(service, started.elapsed());
                }
                if let Some(version) = self.services[service].config.proxy_protocol {
                    self.prepend_proxy_header(slot, version);
                }
                self.drive(slot)
            }
            Err(errno) => {
                let service = self.conn(slot).service;
                let conn = self.conn(slot);
                let address = conn.backend_addr.clone();
                conn.backend = None;
                conn.backend_attempt += 1;
                let reason = if errno == libc::ECANCELED {
                    "timed out".to_string()
                } else {
                    io::Error::from_raw_os_error(errno).to_string()
                };
                let (route, attempt) = {
                    let conn = self.conn(slot);
                    (conn.route, conn.backend_attempt)
                };
                let backends_left = {
                    let service_data = &self.services[service];
                    let list = match route {
                        Some(route) if !service_data.config.sni[route].connect.is_empty() => {
                            &service_data.config.sni[route].connect
                        }
                        _ => &service_data.config.connect,
                    };
                    list.len() > attempt
                };
                warning!(
                    "service {}: connect to backend {} failed: {reason}{}",
                    self.services[service].name,
                    address.as_ref().map(display_address).unwrap_or_default(),
                    if backends_left {
                        "; trying the next backend"
                    } else {
                        ""
                    }
                );
                if backends_left {
                    return self.connect_next(slot);
                }
                self.metrics.backend_connect_failed(service);
                let reason = if errno == libc::ECANCELED {
                    CloseReason::ConnectTimeout
                } else {
                    CloseReason::ConnectFailed
                };
                self.close(slot, reason)
            }
        }
    }

    fn on_backend_recv(&mut self, slot: u32, completion: Completion) -> io::Result<()> {
        let received = match (completion.result, completion.received) {
            (Ok(0), buf) => {
                if let Some(buf) = buf {
                    self.ring.recycle(buf);
                }
                let conn = self.conn(slot);
                conn.backend_eof = true;
                self.mark_half_closed(slot);
                return self.drive(slot);
            }
            (Ok(_), Some(buf)) => buf,
            (Ok(_), None) => return self.close(slot, CloseReason::Internal),
            (Err(libc::ENOBUFS), None) => {
                let generation = self.conn(slot).generation;
                self.starved.push((slot, generation, Kind::BackendRecv));
                return Ok(());
            }
            (Err(errno), buf) => {
                if let Some(buf) = buf {
                    self.ring.recycle(buf);
                }
                debug!(
                    "backend receive failed: {}",
                    io::Error::from_raw_os_error(errno)
                );
                return self.close(slot, CloseReason::BackendReset);
            }
        };

        let now = Instant::now();
        let result = {
            let Slot::Used(conn) = &mut self.slots[slot as usize] else {
                unreachable!()
            };
            conn.last_activity = now;
            if !conn.backend_replied {
                conn.backend_replied = true;
                if let Some(request) = conn.first_request_at {
                    self.metrics.first_byte(conn.service, now - request);
                }
            }
            let data = self.ring.received(&received);
            conn.bytes_down += data.len() as u64;
            conn.relay.backend_bytes(&mut conn.tls, data)
        };
        self.ring.recycle(received);
        if let Err(err) = result {
            debug!("encrypting for the client failed: {err}");
            return self.close(slot, CloseReason::TlsError);
        }
        self.drive(slot)
    }

    fn on_send(&mut self, slot: u32, completion: Completion, to_client: bool) -> io::Result<()> {
        let Some((buf, offset)) = completion.sent else {
            return self.close(slot, CloseReason::Internal);
        };
        match completion.result {
            Ok(sent) => {
                let now = Instant::now();
                let offset = offset + sent as usize;
                let conn = self.conn(slot);
                conn.last_progress = now;
                conn.last_activity = now;
                if offset < buf.len() {
                    // A short send: send the rest of the same buffer.
                    return self.submit_send(slot, to_client, buf, offset);
                }
                self.give_buffer(buf);
                self.drive(slot)
            }
            Err(errno) => {
                let unsent = buf.len() - offset;
                self.give_buffer(buf);
                debug!(
                    "send to {} failed: {}",
                    if to_client { "client" } else { "backend" },
                    io::Error::from_raw_os_error(errno)
                );
                let conn = self.conn(slot);
                // A client that closes as soon as it has the whole response makes
                // only the trailing close_notify fail (EPIPE at once on a UNIX
                // socket). Every byte of data reached it, so the close is orderly.
                let only_close_notify_lost = conn.close_notify_queued
                    && conn.relay.to_client.is_empty()
                    && unsent <= conn.close_notify_bytes;
                let reason = if to_client && only_close_notify_lost {
                    CloseReason::Done
                } else if to_client {
                    self.client_reset_reason(slot)
                } else {
                    CloseReason::BackendReset
                };
                self.close(slot, reason)
            }
        }
    }

    fn submit_send(
        &mut self,
        slot: u32,
        to_client: bool,
        buf: Vec<u8>,
        offset: usize,
    ) -> io::Result<()> {
        let conn = self.conn(slot);
        let (kind, fd) = if to_client {
            (Kind::ClientSend, conn.client.as_raw_fd())
        } else {
            (
                Kind::BackendSend,
                conn.backend
                    .as_ref()
                    .map(AsRawFd::as_raw_fd)
                    .expect("backend socket"),
            )
        };
        conn.set_inflight(kind);
        let generation = conn.generation;
        self.ring.submit(
            Token::new(kind, slot, generation).encode(),
            Op::Send { fd, buf, offset },
        )
    }

    /// Puts a PROXY protocol header in front of everything queued for the backend.
    fn prepend_proxy_header(&mut self, slot: u32, version: crate::config::ProxyVersion) {
        let conn = self.conn(slot);
        let addresses = match (conn.client_addr, conn.accepted_on) {
            (Some(source), Some(destination)) => crate::proxy::Addresses::Tcp {
                source,
                destination,
            },
            _ => crate::proxy::Addresses::Unknown,
        };
        let mut header = Vec::with_capacity(128 + conn.relay.to_backend.len());
        match version {
            crate::config::ProxyVersion::V1 => crate::proxy::encode_v1(&mut header, &addresses),
            crate::config::ProxyVersion::V2 => {
                let tls_version = conn.tls.protocol_version().map(crate::tls::version_name);
                let cipher = conn.tls.cipher_suite().map(crate::tls::openssl_cipher_name);
                let tlvs = crate::proxy::Tlvs {
                    alpn: conn.tls.alpn_protocol(),
                    authority: conn
                        .tls
                        .chosen()
                        .and_then(|chosen| chosen.server_name.as_deref()),
                    ssl: Some(crate::proxy::Ssl {
                        version: tls_version.unwrap_or(""),
                        cipher: cipher.unwrap_or(""),
                        client_cert_verified: false,
                    }),
                };
                if let Err(err) = crate::proxy::encode_v2(&mut header, &addresses, &tlvs) {
                    warning!("cannot encode a PROXY v2 header: {err}; sending it without TLVs");
                    header.clear();
                    let _ = crate::proxy::encode_v2(&mut header, &addresses, &Default::default());
                }
            }
        }
        header.extend_from_slice(&conn.relay.to_backend);
        conn.relay.to_backend = header;
    }

    /// Posts whatever operations the connection's state calls for. Every event
    /// handler ends here.
    fn drive(&mut self, slot: u32) -> io::Result<()> {
        if self.conn(slot).phase == Phase::Closing {
            return Ok(());
        }
        if self.conn(slot).is_kernel_tls()
            && self.drive_kernel_tls(slot)? == kernel_tls::Flow::Stopped
        {
            return Ok(());
        }

        // Start sends of queued bytes.
        let client_ready = {
            let conn = self.conn(slot);
            !conn.relay.to_client.is_empty() && !conn.is_inflight(Kind::ClientSend)
        };
        if client_ready {
            let fresh = self.take_buffer();
            let buf = std::mem::replace(&mut self.conn(slot).relay.to_client, fresh);
            self.submit_send(slot, true, buf, 0)?;
        }
        let backend_ready = {
            let conn = self.conn(slot);
            conn.phase == Phase::Relaying
                && !conn.relay.to_backend.is_empty()
                && !conn.is_inflight(Kind::BackendSend)
        };
        if backend_ready {
            let fresh = self.take_buffer();
            let buf = std::mem::replace(&mut self.conn(slot).relay.to_backend, fresh);
            self.submit_send(slot, false, buf, 0)?;
        }

        let conn = self.conn(slot);
        let client_drained = conn.relay.to_client.is_empty() && !conn.is_inflight(Kind::ClientSend);
        let backend_drained =
            conn.relay.to_backend.is_empty() && !conn.is_inflight(Kind::BackendSend);

        if let Some(reason) = conn.close_after_flush {
            if client_drained {
                return self.close(slot, reason);
            }
            return Ok(());
        }

        // Half-close: client EOF becomes SHUT_WR toward the backend once its data
        // is delivered.
        if conn.phase == Phase::Relaying
            && conn.client_eof
            && backend_drained
            && !conn.backend_write_closed
        {
            let backend = conn.backend.as_ref().expect("backend socket");
            shut_write(SockRef::from(backend), "backend");
            conn.backend_write_closed = true;
        }

        // Backend EOF becomes close_notify, then FIN, toward the client.
        let conn = self.conn(slot);
        if conn.phase == Phase::Relaying && conn.backend_eof && !conn.close_notify_queued {
            conn.close_notify_queued = true;
            let Conn { relay, tls, .. } = conn;
            let before = relay.to_client.len();
            if let Err(err) = relay.close_notify(tls) {
                debug!("cannot queue close_notify: {err}");
            }
            conn.close_notify_bytes = conn.relay.to_client.len() - before;
            return self.drive(slot);
        }
        let conn = self.conn(slot);
        if conn.close_notify_queued && client_drained && !conn.client_write_closed {
            shut_write(SockRef::from(&conn.client), "client");
            conn.client_write_closed = true;
        }

        let conn = self.conn(slot);
        if conn.is_done() {
            return self.close(slot, CloseReason::Done);
        }
        // The client closed and the backend is gone too: nothing more can flow.
        if conn.client_eof && conn.backend_eof && conn.phase != Phase::Relaying {
            return self.close(slot, CloseReason::Done);
        }

        if conn.wants_client_recv() {
            self.post_recv(slot, Kind::ClientRecv)?;
        }
        if self.conn(slot).wants_backend_recv() {
            self.post_recv(slot, Kind::BackendRecv)?;
        }
        let conn = self.conn(slot);
        if !conn.has_pending_output() {
            conn.relay.shrink_idle();
        }
        Ok(())
    }

    fn post_recv(&mut self, slot: u32, kind: Kind) -> io::Result<()> {
        let conn = self.conn(slot);
        let fd = match kind {
            Kind::ClientRecv => conn.client.as_raw_fd(),
            _ => conn
                .backend
                .as_ref()
                .map(AsRawFd::as_raw_fd)
                .expect("backend socket"),
        };
        conn.set_inflight(kind);
        let generation = conn.generation;
        self.ring
            .submit(Token::new(kind, slot, generation).encode(), Op::Recv { fd })
    }

    /// Re-posts receives that found the provided-buffer ring empty.
    fn feed_starved(&mut self) -> io::Result<()> {
        while self.ring.buffers_available() > 0 {
            let Some((slot, generation, _)) = self.starved.pop() else {
                break;
            };
            let current = matches!(
                self.slots.get(slot as usize),
                Some(Slot::Used(conn)) if conn.generation == generation && conn.phase != Phase::Closing
            );
            if current {
                self.drive(slot)?;
            }
        }
        Ok(())
    }

    /// Starts closing: cancels what is in flight, and frees the slot once every
    /// operation has completed.
    fn close(&mut self, slot: u32, reason: CloseReason) -> io::Result<()> {
        let conn = self.conn(slot);
        if conn.phase == Phase::Closing {
            return Ok(());
        }
        conn.phase = Phase::Closing;
        // A connection that was flushing before a decided close keeps the reason
        // decided then: a client that hangs up after a failed handshake does
        // not turn it into a second failure with another cause.
        let decided = conn.close_after_flush.unwrap_or(reason);
        conn.reason.get_or_insert(decided);
        if conn.is_inflight(Kind::HandshakeStep) {
            self.abandon_step(slot);
        }
        let conn = self.conn(slot);
        // Pass an abortive close on as one: a reset toward the other side.
        let abort = match reason {
            CloseReason::ClientReset => conn.backend.as_ref(),
            CloseReason::BackendReset => Some(&conn.client),
            _ => None,
        };
        if let Some(fd) = abort {
            let _ = SockRef::from(fd).set_linger(Some(Duration::ZERO));
        }
        if conn.inflight != 0 {
            let client = conn.client.as_raw_fd();
            let backend = conn.backend.as_ref().map(AsRawFd::as_raw_fd);
            self.ring.submit(0, Op::CancelFd { fd: client })?;
            if let Some(fd) = backend {
                self.ring.submit(0, Op::CancelFd { fd })?;
            }
        }
        // The slot is freed only after the current event is handled, because the
        // handler that called close may still look at the connection.
        self.finishing.push(slot);
        Ok(())
    }

    /// Frees the slots of closed connections whose operations have all completed.
    fn finish_closed(&mut self) {
        while let Some(slot) = self.finishing.pop() {
            self.finish_if_idle(slot);
        }
    }

    fn finish_if_idle(&mut self, slot: u32) {
        let Some(Slot::Used(conn)) = self.slots.get(slot as usize) else {
            return;
        };
        if conn.phase != Phase::Closing || conn.inflight != 0 {
            return;
        }
        let generation = conn.generation;
        let Slot::Used(conn) =
            std::mem::replace(&mut self.slots[slot as usize], Slot::Free { generation })
        else {
            unreachable!()
        };
        self.free.push(slot);
        self.live -= 1;
        let reason = conn.reason.unwrap_or(CloseReason::Internal);
        match reason {
            CloseReason::HandshakeTimeout => self
                .metrics
                .handshake_failed(conn.service, HandshakeFailure::Timeout),
            CloseReason::HandshakeEof => self
                .metrics
                .handshake_failed(conn.service, HandshakeFailure::Eof),
            _ => {}
        }
        self.metrics.closed(
            conn.service,
            reason,
            conn.accepted_at.elapsed(),
            conn.bytes_up,
            conn.bytes_down,
            conn.path,
        );
        self.log_finished(&conn);
        // Dropping the connection closes both sockets.
        drop(conn);
    }

    fn log_finished(&self, conn: &Conn) {
        let service = &self.services[conn.service];
        let version = conn.tls.protocol_version().map(crate::tls::version_name);
        let cipher = conn
            .tls
            .cipher_suite()
            .and_then(|suite| suite.suite().as_str());
        let chosen = conn.tls.chosen();
        let record = ConnectionRecord {
            service: &service.name,
            client: conn.client_addr,
            local: conn.local_addr,
            backend: conn.backend_addr.as_ref(),
            start: conn.accepted_wall,
            duration: conn.accepted_at.elapsed(),
            tls_version: if conn.tls.is_handshaking() {
                None
            } else {
                version
            },
            cipher: if conn.tls.is_handshaking() {
                None
            } else {
                cipher
            },
            sni: chosen.and_then(|chosen| chosen.server_name.as_deref()),
            alpn: conn.tls.alpn_protocol(),
            path: conn.path.as_str(),
            up: conn.bytes_up,
            down: conn.bytes_down,
            reason: conn.reason.unwrap_or(CloseReason::Internal),
        };
        record.log();
    }
}

/// Counts the plaintext a TLS read added to the bytes for the backend, which
/// held `before` bytes until then.
fn count_plaintext(conn: &mut Conn, before: usize, now: Instant) {
    let plaintext = conn.relay.to_backend.len() - before;
    conn.bytes_up += plaintext as u64;
    if plaintext > 0 {
        conn.first_request_at.get_or_insert(now);
    }
}

/// The source address of a backend connection.
#[derive(Debug, Clone, Copy)]
enum Source {
    /// `local = IP`: bind to this address with a kernel-chosen port.
    Local(std::net::IpAddr),
    /// `transparent = source`: bind to the client's own address, which needs
    /// IP_TRANSPARENT (CAP_NET_ADMIN) and policy routing for the replies.
    Transparent(SocketAddr),
}

fn backend_socket(address: &Address, source: Option<Source>) -> io::Result<Socket> {
    let domain = match address {
        Address::Inet(addr) => Domain::for_address(*addr),
        Address::Unix(_) => Domain::UNIX,
    };
    let socket = Socket::new(domain, Type::STREAM.nonblocking().cloexec(), None)?;
    if let Address::Inet(backend) = address {
        socket.set_tcp_nodelay(true)?;
        match source {
            Some(Source::Local(local)) => {
                if local.is_ipv4() {
                    crate::sys::set_bind_address_no_port(socket.as_raw_fd())?;
                }
                socket.bind(&SocketAddr::new(local, 0).into())?;
            }
            Some(Source::Transparent(client)) => {
                crate::sys::set_transparent(socket.as_raw_fd(), backend.is_ipv6())?;
                // Port 0: the client's own port may already be in use here for a
                // connection from the same client to another backend.
                let ip = match (client.ip(), backend.is_ipv6()) {
                    (std::net::IpAddr::V6(v6), false) => v6
                        .to_ipv4_mapped()
                        .map(std::net::IpAddr::V4)
                        .unwrap_or(std::net::IpAddr::V6(v6)),
                    (ip, _) => ip,
                };
                socket.bind(&SocketAddr::new(ip, 0).into())?;
            }
            None => {}
        }
    }
    Ok(socket)
}

/// Turns an IPv4-mapped IPv6 socket address into the IPv4 one it stands for.
fn unmap_ipv4(addr: SocketAddr) -> SocketAddr {
    match addr {
        SocketAddr::V6(v6) => match v6.ip().to_ipv4_mapped() {
            Some(ip) => SocketAddr::new(ip.into(), v6.port()),
            None => addr,
        },
        SocketAddr::V4(_) => addr,
    }
}

pub fn display_addr(addr: Option<SocketAddr>) -> String {
    addr.map(|addr| addr.to_string())
        .unwrap_or_else(|| "-".into())
}

pub fn display_address(address: &Address) -> String {
    match address {
        Address::Inet(addr) => addr.to_string(),
        Address::Unix(path) => path.display().to_string(),
    }
}

/// Sends a FIN on `socket` with the shutdown syscall, which returns at once. The
/// kernel runs IORING_OP_SHUTDOWN on an io-wq thread and never inline, so as a
/// ring operation each half-close would wake that thread. A failure means the
/// peer already reset the connection, and the next receive reports that.
fn shut_write(socket: SockRef<'_>, peer: &str) {
    if let Err(err) = socket.shutdown(Shutdown::Write) {
        debug!("cannot shut down the {peer} socket for writing: {err}");
    }
}
