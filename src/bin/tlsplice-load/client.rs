//! The client engine behind the `handshake`, `keepalive`, `bulk`, `latency` and
//! `hold` modes.
//!
//! Each worker thread owns a mio `Poll` and a slab of connections, and runs HTTP/1.1
//! exchanges (one at a time per connection) over TLS. The modes differ only in when
//! connections open and when requests start; see [`Workload`].

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use mio::net::TcpStream;
use mio::{Events, Interest, Poll, Token};
use rustls::pki_types::ServerName;
use rustls::ClientConfig;

use crate::http::{self, MessageParser, Progress};
use crate::report::{self, Stats};
use crate::stream::Stream;

/// When connections open and when requests start.
#[derive(Clone, Debug)]
pub enum Workload {
    /// Keep `concurrency` connections in flight. Each sends one request with
    /// `Connection: close`, reads the response and closes.
    Handshake { concurrency: usize },
    /// Closed loop: `connections` keep-alive connections, each sending its next
    /// request as soon as the previous response is complete.
    KeepAlive { connections: usize },
    /// Open loop: requests start at a fixed `rate` per second over a pool of
    /// `connections`, and latency counts from each request's intended start.
    Latency { connections: usize, rate: f64 },
    /// Open `connections` at `ramp_rate` per second and keep them open, sending
    /// one request on each every `interval`.
    Hold {
        connections: usize,
        interval: Duration,
        ramp_rate: f64,
        /// Stop this long after every connection was established, if that comes
        /// before the run's duration.
        hold: Option<Duration>,
    },
}

/// The request every exchange sends.
#[derive(Clone, Debug)]
pub struct RequestTemplate {
    pub method: String,
    pub path: String,
    pub host: String,
    /// Request body size in bytes; the body is zeros.
    pub body_len: u64,
}

/// A whole run, shared by the worker threads.
pub struct Plan {
    pub workload: Workload,
    pub addr: SocketAddr,
    /// `None` runs plain HTTP over TCP.
    pub tls: Option<Arc<ClientConfig>>,
    pub server_name: ServerName<'static>,
    pub request: RequestTemplate,
    /// Limit for connecting plus the handshake, and for each exchange.
    pub timeout: Duration,
    pub duration: Duration,
    /// Maximum requests across all threads (connections in the handshake mode).
    pub budget: Budget,
    pub threads: usize,
    /// Stop in-flight exchanges when `duration` has passed instead of letting them
    /// finish (bulk mode, whose transfers can outlast the run).
    pub cut_at_deadline: bool,
}

/// A count of requests that threads claim one by one.
pub struct Budget {
    limit: Option<u64>,
    claimed: AtomicU64,
}

impl Budget {
    pub fn new(limit: Option<u64>) -> Budget {
        Budget {
            limit,
            claimed: AtomicU64::new(0),
        }
    }

    fn claim(&self) -> bool {
        match self.limit {
            None => true,
            Some(limit) => self.claimed.fetch_add(1, Ordering::Relaxed) < limit,
        }
    }

    fn exhausted(&self) -> bool {
        self.limit
            .is_some_and(|limit| self.claimed.load(Ordering::Relaxed) >= limit)
    }
}

/// Stops a run whose first this-many connections all failed, so that a proxy that
/// is down does not turn the run into a connect loop.
const ABORT_AFTER_ERRORS: u64 = 100;

/// Maximum handshakes in progress per thread while the hold mode opens connections.
/// It keeps the ramp from filling the server's accept queue when the server is
/// slower than `ramp_rate`, which would turn into handshake timeouts.
const MAX_HOLD_HANDSHAKING: usize = 128;

/// How often timeouts and the hold mode's request times are checked.
const SCAN_INTERVAL: Duration = Duration::from_millis(50);
/// Bytes one connection may read per turn of the event loop.
const READ_BUDGET: usize = 1024 * 1024;

/// Maximum wait for in-flight exchanges after the run's duration has passed.
const MAX_DRAIN: Duration = Duration::from_secs(5);

/// Runs the plan on `plan.threads` threads and returns the merged statistics and the
/// wall time of the run.
pub fn run(plan: Arc<Plan>) -> io::Result<(Stats, Duration)> {
    let start = Instant::now();
    let handles: Vec<_> = (0..plan.threads)
        .map(|index| {
            let plan = Arc::clone(&plan);
            std::thread::Builder::new()
                .name(format!("load-{index}"))
                .spawn(move || Worker::new(&plan, index, start)?.run())
        })
        .collect::<io::Result<_>>()?;

    let mut total = Stats::new();
    let mut elapsed = Duration::ZERO;
    for handle in handles {
        let (stats, thread_elapsed) = handle.join().expect("a load worker thread panicked")?;
        total.merge(&stats);
        elapsed = elapsed.max(thread_elapsed);
    }
    Ok((total, elapsed))
}

/// This thread's part of the workload.
struct Share {
    connections: usize,
    /// Requests per second (latency mode) or connections per second (hold mode).
    rate: f64,
}

fn share_of(total: usize, threads: usize, index: usize) -> usize {
    total / threads + usize::from(index < total % threads)
}

struct Exchange {
    intended: Instant,
    sent_at: Instant,
    head: Vec<u8>,
    head_written: usize,
    body_left: u64,
    parser: MessageParser,
    /// The response head, once the whole response arrived.
    response: Option<http::Head>,
}

impl Exchange {
    /// Returns whether the whole request was handed to the stream.
    fn request_queued(&self) -> bool {
        self.head_written == self.head.len() && self.body_left == 0
    }
}

struct Conn {
    /// Index in `Worker::conns`, which is also the mio token.
    slot: usize,
    stream: Stream,
    connected: bool,
    opened_at: Instant,
    established: bool,
    exchange: Option<Exchange>,
    /// When the current connect, handshake or exchange times out.
    deadline: Option<Instant>,
    /// Hold mode: when the next light request starts.
    next_request_at: Option<Instant>,
    /// The last read stopped at its budget; drive again without waiting for an
    /// event, since mio reports readiness only on edges.
    more_input: bool,
}

/// The next step for a connection after it was driven.
enum Next {
    Keep,
    /// Close cleanly. `replace` opens another connection in its place.
    Close {
        replace: bool,
    },
}

struct Worker<'a> {
    plan: &'a Plan,
    share: Share,
    poll: Poll,
    conns: Vec<Option<Conn>>,
    /// Connections to drive again on the next turn (see `Conn::more_input`).
    again: Vec<usize>,
    free_slots: Vec<usize>,
    open: usize,
    /// Connections the keep-alive and latency modes keep open. It drops by one for
    /// every connection lost to an error, because such a connection is not replaced.
    pool_target: usize,
    /// Latency mode: established connections without an exchange. Entries can be
    /// stale and are checked when taken.
    idle: Vec<usize>,
    stats: Stats,
    start: Instant,
    deadline: Instant,
    /// Latency mode: index of the next request to send. Request k is intended to
    /// start at `schedule_start + k / rate`.
    next_request: u64,
    /// Latency mode: when the pool finished its handshakes, so that no request
    /// waits for a handshake. `None` until then.
    schedule_start: Option<Instant>,
    /// Hold mode: connections opened so far, and whether the "established" line
    /// was printed.
    hold_opened: usize,
    hold_reported: bool,
    handshaking: usize,
    rng: u64,
    read_buffer: Vec<u8>,
}

impl<'a> Worker<'a> {
    fn new(plan: &'a Plan, index: usize, start: Instant) -> io::Result<Worker<'a>> {
        let threads = plan.threads;
        let share = match &plan.workload {
            Workload::Handshake { concurrency } => Share {
                connections: share_of(*concurrency, threads, index),
                rate: 0.0,
            },
            Workload::KeepAlive { connections } => Share {
                connections: share_of(*connections, threads, index),
                rate: 0.0,
            },
            Workload::Latency { connections, rate } => Share {
                connections: share_of(*connections, threads, index),
                rate: rate / threads as f64,
            },
            Workload::Hold {
                connections,
                ramp_rate,
                ..
            } => Share {
                connections: share_of(*connections, threads, index),
                rate: ramp_rate / threads as f64,
            },
        };
        Ok(Worker {
            plan,
            pool_target: share.connections,
            share,
            poll: Poll::new()?,
            conns: Vec::new(),
            again: Vec::new(),
            free_slots: Vec::new(),
            open: 0,
            idle: Vec::new(),
            stats: Stats::new(),
            start,
            deadline: start + plan.duration,
            next_request: 0,
            schedule_start: None,
            hold_opened: 0,
            hold_reported: false,
            handshaking: 0,
            rng: 0x9e37_79b9_7f4a_7c15 ^ (index as u64 + 1),
            read_buffer: Vec::with_capacity(64 * 1024),
        })
    }

    fn run(mut self) -> io::Result<(Stats, Duration)> {
        let mut events = Events::with_capacity(1024);
        let mut next_scan = self.start;
        let mut drain_until: Option<Instant> = None;

        loop {
            let now = Instant::now();
            if self.aborted() {
                eprintln!(
                    "tlsplice-load: stopping early because the first {ABORT_AFTER_ERRORS} connections failed"
                );
                break;
            }

            let running = now < self.deadline && !self.plan.budget.exhausted();
            if running {
                self.open_connections(now);
                self.start_due_requests(now);
            } else if drain_until.is_none() {
                drain_until = Some(now + self.plan.timeout.min(MAX_DRAIN));
                self.finish_schedule(now);
                if self.plan.cut_at_deadline && now >= self.deadline {
                    self.cut_in_flight();
                }
            }
            if !running {
                self.close_idle();
                if self.open == 0 || drain_until.is_some_and(|t| now >= t) {
                    break;
                }
            }

            if now >= next_scan {
                self.expire(now);
                if running {
                    self.start_hold_requests(now);
                }
                self.report_hold_established(false);
                next_scan = now + SCAN_INTERVAL;
            }

            let wait = if self.again.is_empty() {
                self.poll_timeout(now, next_scan)
            } else {
                Duration::ZERO
            };
            match self.poll.poll(&mut events, Some(wait)) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
            for event in events.iter() {
                self.on_ready(event.token().0);
            }
            for slot in std::mem::take(&mut self.again) {
                self.on_ready(slot);
            }
        }

        let elapsed = self.start.elapsed();
        self.close_all();
        Ok((self.stats, elapsed))
    }

    fn aborted(&self) -> bool {
        let successes =
            self.stats.handshakes_full + self.stats.handshakes_resumed + self.stats.requests;
        successes == 0 && self.stats.error_total() >= ABORT_AFTER_ERRORS
    }

    // NOTE: mio rounds poll timeouts up to whole milliseconds, so a latency-mode
    // request starts up to 1 ms after its intended time. `send_lateness_us` in the
    // report measures that share.
    fn poll_timeout(&self, now: Instant, next_scan: Instant) -> Duration {
        let mut until = next_scan;
        if let Some(schedule_start) = self.schedule_start {
            if !self.idle.is_empty() {
                until = until.min(self.intended(schedule_start, self.next_request));
            }
        }
        until.saturating_duration_since(now)
    }

    fn intended(&self, schedule_start: Instant, index: u64) -> Instant {
        schedule_start + Duration::from_secs_f64(index as f64 / self.share.rate)
    }

    fn open_connections(&mut self, now: Instant) {
        match self.plan.workload {
            Workload::Handshake { .. } => {
                while self.open < self.share.connections && self.plan.budget.claim() {
                    self.open_one(now);
                }
            }
            Workload::KeepAlive { .. } | Workload::Latency { .. } => {
                while self.open < self.pool_target {
                    if !self.open_one(now) {
                        self.pool_target -= 1;
                    }
                }
            }
            Workload::Hold { .. } => {
                let ramped = (now - self.start).as_secs_f64() * self.share.rate;
                let target = (ramped as usize + 1).min(self.share.connections);
                while self.hold_opened < target && self.handshaking < MAX_HOLD_HANDSHAKING {
                    self.hold_opened += 1;
                    self.open_one(now);
                }
            }
        }
    }

    fn open_one(&mut self, now: Instant) -> bool {
        self.stats.connections_opened += 1;
        let mut sock = match TcpStream::connect(self.plan.addr) {
            Ok(sock) => sock,
            Err(e) => {
                self.stats.error_with_detail("connect", e.to_string());
                return false;
            }
        };
        if let Err(e) = sock.set_nodelay(true) {
            self.stats.error_with_detail("connect", e.to_string());
            return false;
        }

        let tls = match &self.plan.tls {
            None => None,
            Some(config) => {
                match rustls::ClientConnection::new(
                    Arc::clone(config),
                    self.plan.server_name.clone(),
                ) {
                    Ok(conn) => Some(rustls::Connection::Client(conn)),
                    Err(e) => {
                        self.stats.error_with_detail("tls", e.to_string());
                        return false;
                    }
                }
            }
        };

        let slot = self.free_slots.pop().unwrap_or_else(|| {
            self.conns.push(None);
            self.conns.len() - 1
        });
        let registered = self.poll.registry().register(
            &mut sock,
            Token(slot),
            Interest::READABLE | Interest::WRITABLE,
        );
        if let Err(e) = registered {
            self.free_slots.push(slot);
            self.stats.error_with_detail("io", e.to_string());
            return false;
        }

        self.conns[slot] = Some(Conn {
            slot,
            stream: Stream::new(sock, tls),
            connected: false,
            opened_at: now,
            established: false,
            exchange: None,
            deadline: Some(now + self.plan.timeout),
            next_request_at: None,
            more_input: false,
        });
        self.open += 1;
        self.handshaking += 1;
        self.stats.max_open = self.stats.max_open.max(self.open as u64);
        true
    }

    /// Latency mode: starts every request whose intended time has come, while idle
    /// connections last. Late requests keep their intended time.
    fn start_due_requests(&mut self, now: Instant) {
        if !matches!(self.plan.workload, Workload::Latency { .. }) {
            return;
        }
        if self.schedule_start.is_none() && self.handshaking == 0 && self.open >= self.pool_target {
            self.schedule_start = Some(now);
        }
        let Some(schedule_start) = self.schedule_start else {
            return;
        };
        while self.intended(schedule_start, self.next_request) <= now {
            let Some(slot) = self.take_idle() else { break };
            if !self.plan.budget.claim() {
                self.idle.push(slot);
                break;
            }
            let intended = self.intended(schedule_start, self.next_request);
            self.next_request += 1;
            report::record(&mut self.stats.send_lateness, now - intended);
            let mut conn = self.conns[slot]
                .take()
                .expect("idle slots hold a connection");
            let next = self.begin_exchange(&mut conn, intended, now);
            self.settle(slot, conn, next);
        }
    }

    fn take_idle(&mut self) -> Option<usize> {
        while let Some(slot) = self.idle.pop() {
            if let Some(conn) = &self.conns[slot] {
                if conn.established && conn.exchange.is_none() {
                    return Some(slot);
                }
            }
        }
        None
    }

    /// Latency mode: counts the requests whose intended time passed before the end
    /// of the run without a connection to send them on.
    fn finish_schedule(&mut self, now: Instant) {
        // A run stopped by --requests sent every request it claimed.
        let by_budget = self.plan.budget.exhausted();
        if let (Workload::Latency { .. }, Some(schedule_start), false) =
            (&self.plan.workload, self.schedule_start, by_budget)
        {
            let window = now
                .min(self.deadline)
                .saturating_duration_since(schedule_start);
            let due = (window.as_secs_f64() * self.share.rate).floor() as u64 + 1;
            self.stats.unsent += due.saturating_sub(self.next_request);
        }
        self.report_hold_established(true);
    }

    /// Hold mode: starts the light requests that are due. They start only after the
    /// "established" line, so that memory sampled at that line is idle memory.
    fn start_hold_requests(&mut self, now: Instant) {
        let Workload::Hold { interval, .. } = self.plan.workload else {
            return;
        };
        if !self.hold_reported {
            return;
        }
        for slot in 0..self.conns.len() {
            let due = match &self.conns[slot] {
                Some(conn) => {
                    conn.exchange.is_none() && conn.next_request_at.is_some_and(|t| t <= now)
                }
                None => false,
            };
            if !due {
                continue;
            }
            if !self.plan.budget.claim() {
                return;
            }
            let mut conn = self.conns[slot].take().expect("checked above");
            conn.next_request_at = Some(now + interval);
            let next = self.begin_exchange(&mut conn, now, now);
            self.settle(slot, conn, next);
        }
    }

    /// Hold mode: prints one line per thread on stderr once every connection of the
    /// thread finished its handshake or failed, so that a script can sample memory at
    /// that point. With `at_end` it prints the line even if the ramp is unfinished.
    fn report_hold_established(&mut self, at_end: bool) {
        let Workload::Hold { .. } = self.plan.workload else {
            return;
        };
        let ramp_done = self.hold_opened >= self.share.connections && self.handshaking == 0;
        if self.hold_reported || !(ramp_done || at_end) {
            return;
        }
        self.hold_reported = true;
        if let (
            Workload::Hold {
                hold: Some(hold), ..
            },
            false,
        ) = (&self.plan.workload, at_end)
        {
            self.deadline = self.deadline.min(Instant::now() + *hold);
        }
        eprintln!(
            "tlsplice-load: hold: established {} of {} connections, {} errors",
            self.open,
            self.share.connections,
            self.stats.error_total()
        );
    }

    fn expire(&mut self, now: Instant) {
        for slot in 0..self.conns.len() {
            let expired = self.conns[slot]
                .as_ref()
                .is_some_and(|conn| conn.deadline.is_some_and(|t| t <= now));
            if expired {
                let conn = self.conns[slot].take().expect("checked above");
                let phase = if conn.established {
                    "response"
                } else {
                    "connect and handshake"
                };
                self.stats
                    .error_with_detail("timeout", format!("{phase} not complete within --timeout"));
                self.release(slot, conn, false);
            }
        }
    }

    fn close_idle(&mut self) {
        for slot in 0..self.conns.len() {
            let idle = self.conns[slot]
                .as_ref()
                .is_some_and(|conn| conn.established && conn.exchange.is_none());
            if idle {
                let mut conn = self.conns[slot].take().expect("checked above");
                conn.stream.close();
                self.release(slot, conn, true);
            }
        }
    }

    fn close_all(&mut self) {
        for slot in 0..self.conns.len() {
            if let Some(mut conn) = self.conns[slot].take() {
                if conn.exchange.is_some() {
                    self.stats.error_with_detail(
                        "timeout",
                        "request still in flight when the run ended".to_string(),
                    );
                }
                conn.stream.close();
                self.release(slot, conn, true);
            }
        }
    }

    fn on_ready(&mut self, slot: usize) {
        let Some(mut conn) = self.conns.get_mut(slot).and_then(Option::take) else {
            return;
        };
        let next = self.drive(&mut conn, Instant::now());
        let more = conn.more_input;
        self.settle(slot, conn, next);
        if more && self.conns.get(slot).is_some_and(Option::is_some) {
            self.again.push(slot);
        }
    }

    /// Puts a driven connection back, or closes it.
    fn settle(&mut self, slot: usize, mut conn: Conn, next: Result<Next, Failure>) {
        match next {
            Ok(Next::Keep) => self.conns[slot] = Some(conn),
            Ok(Next::Close { replace }) => {
                conn.stream.close();
                self.release(slot, conn, replace);
            }
            Err(failure) => {
                self.stats.error_with_detail(failure.kind, failure.detail);
                self.release(slot, conn, false);
            }
        }
    }

    fn release(&mut self, slot: usize, conn: Conn, replace: bool) {
        if !conn.established {
            self.handshaking -= 1;
        }
        if !replace
            && matches!(
                self.plan.workload,
                Workload::KeepAlive { .. } | Workload::Latency { .. }
            )
        {
            self.pool_target = self.pool_target.saturating_sub(1);
        }
        drop(conn);
        self.free_slots.push(slot);
        self.open -= 1;
    }

    /// Handles readiness: finishes the TCP connect, moves TLS and HTTP forward and
    /// decides what comes next.
    fn drive(&mut self, conn: &mut Conn, now: Instant) -> Result<Next, Failure> {
        if !conn.connected {
            match conn.stream.sock.take_error() {
                Ok(None) => {}
                Ok(Some(e)) | Err(e) => return Err(Failure::new("connect", e.to_string())),
            }
            match conn.stream.sock.peer_addr() {
                Ok(_) => conn.connected = true,
                Err(e) if e.kind() == io::ErrorKind::NotConnected => return Ok(Next::Keep),
                Err(e) => return Err(Failure::new("connect", e.to_string())),
            }
        }

        conn.stream.flush().map_err(Failure::from)?;
        let mut input = std::mem::take(&mut self.read_buffer);
        input.clear();
        let outcome = conn.stream.read_bounded(&mut input, READ_BUDGET);
        let next = match outcome {
            Ok(outcome) => {
                conn.more_input = outcome.more;
                self.handle_input(conn, &input, outcome.eof, now)
            }
            Err(e) => Err(Failure::from(e)),
        };
        self.read_buffer = input;
        let next = next?;

        if !matches!(next, Next::Keep) {
            return Ok(next);
        }
        self.pump(conn).map_err(Failure::from)?;
        let body_finished_after_response = conn
            .exchange
            .as_ref()
            .is_some_and(|e| e.response.is_some() && e.request_queued());
        if body_finished_after_response {
            return self.finish_exchange(conn, false, now);
        }
        Ok(Next::Keep)
    }

    fn handle_input(
        &mut self,
        conn: &mut Conn,
        input: &[u8],
        eof: bool,
        now: Instant,
    ) -> Result<Next, Failure> {
        if !conn.established && !conn.stream.is_handshaking() && conn.connected {
            return self.on_established(conn, now).and_then(|next| match next {
                Next::Keep => self.handle_input(conn, input, eof, now),
                close => Ok(close),
            });
        }

        let Some(exchange) = conn.exchange.as_mut() else {
            if !input.is_empty() {
                return Err(Failure::new(
                    "http",
                    "data received while no request was outstanding",
                ));
            }
            return if eof {
                Err(Failure::new("closed", "peer closed an idle connection"))
            } else {
                Ok(Next::Keep)
            };
        };

        let before = exchange.parser.body_received;
        let progress = exchange
            .parser
            .feed(input)
            .map_err(|e| Failure::new("http", e.to_string()))?;
        self.stats.bytes_received += exchange.parser.body_received - before;
        let Progress::Done { head, consumed } = progress else {
            return if eof {
                Err(Failure::new(
                    "closed",
                    "peer closed the connection before the response was complete",
                ))
            } else {
                Ok(Next::Keep)
            };
        };
        if consumed != input.len() {
            return Err(Failure::new("http", "data received after the response"));
        }

        // A server may respond before the request body is complete (nginx does for
        // `return`). The exchange then ends once the body has been sent.
        let request_queued = exchange.request_queued();
        exchange.response = Some(head);
        if request_queued {
            self.finish_exchange(conn, eof, now)
        } else if eof {
            Err(Failure::new(
                "closed",
                "peer closed the connection before the request body was sent",
            ))
        } else {
            Ok(Next::Keep)
        }
    }

    /// Records a completed exchange and decides what comes next.
    fn finish_exchange(
        &mut self,
        conn: &mut Conn,
        eof: bool,
        now: Instant,
    ) -> Result<Next, Failure> {
        let exchange = conn.exchange.take().expect("only called with an exchange");
        let head = exchange.response.expect("only called after the response");
        conn.deadline = None;
        self.stats.requests += 1;
        report::record(&mut self.stats.latency, now - exchange.intended);
        report::record(&mut self.stats.service_latency, now - exchange.sent_at);
        if !(200..300).contains(&head.status) {
            self.stats
                .error_with_detail("status", format!("HTTP status {}", head.status));
        }
        self.after_exchange(conn, head.close || eof, now)
    }

    /// Stops in-flight transfers at the end of a bulk run. Their bytes so far are
    /// already counted, and they are reported as cut off, not as errors.
    fn cut_in_flight(&mut self) {
        for slot in 0..self.conns.len() {
            let in_flight = self.conns[slot]
                .as_ref()
                .is_some_and(|conn| conn.exchange.is_some());
            if in_flight {
                let mut conn = self.conns[slot].take().expect("checked above");
                self.stats.cut_off += 1;
                conn.stream.close();
                self.release(slot, conn, true);
            }
        }
    }

    fn on_established(&mut self, conn: &mut Conn, now: Instant) -> Result<Next, Failure> {
        conn.established = true;
        conn.deadline = None;
        self.handshaking -= 1;
        report::record(&mut self.stats.handshake_latency, now - conn.opened_at);
        if conn.stream.resumed() {
            self.stats.handshakes_resumed += 1;
        } else {
            self.stats.handshakes_full += 1;
        }

        match self.plan.workload {
            Workload::Handshake { .. } => self.begin_exchange(conn, now, now),
            Workload::KeepAlive { .. } => {
                if self.plan.budget.claim() {
                    self.begin_exchange(conn, now, now)
                } else {
                    Ok(Next::Close { replace: true })
                }
            }
            Workload::Latency { .. } => {
                self.idle.push(conn.slot);
                Ok(Next::Keep)
            }
            Workload::Hold { interval, .. } => {
                let jitter = self.next_random_fraction();
                conn.next_request_at = Some(now + interval.mul_f64(jitter));
                Ok(Next::Keep)
            }
        }
    }

    fn after_exchange(
        &mut self,
        conn: &mut Conn,
        peer_closes: bool,
        now: Instant,
    ) -> Result<Next, Failure> {
        let running = now < self.deadline;
        match self.plan.workload {
            Workload::Handshake { .. } => Ok(Next::Close { replace: true }),
            Workload::KeepAlive { .. } => {
                if peer_closes || !running || !self.plan.budget.claim() {
                    Ok(Next::Close { replace: true })
                } else {
                    self.begin_exchange(conn, now, now)
                }
            }
            Workload::Latency { .. } => {
                if peer_closes {
                    return Ok(Next::Close { replace: true });
                }
                self.idle.push(conn.slot);
                Ok(Next::Keep)
            }
            Workload::Hold { .. } => {
                if peer_closes {
                    Err(Failure::new("closed", "peer closed a held connection"))
                } else {
                    Ok(Next::Keep)
                }
            }
        }
    }

    fn begin_exchange(
        &mut self,
        conn: &mut Conn,
        intended: Instant,
        now: Instant,
    ) -> Result<Next, Failure> {
        let request = &self.plan.request;
        let close = matches!(self.plan.workload, Workload::Handshake { .. });
        conn.exchange = Some(Exchange {
            intended,
            sent_at: now,
            head: http::request_head(
                &request.method,
                &request.path,
                &request.host,
                request.body_len,
                close,
            ),
            head_written: 0,
            body_left: request.body_len,
            parser: MessageParser::response(),
            response: None,
        });
        conn.deadline = Some(now + self.plan.timeout);
        self.pump(conn).map_err(Failure::from)?;
        Ok(Next::Keep)
    }

    /// Writes as much of the current request as the socket takes.
    fn pump(&mut self, conn: &mut Conn) -> io::Result<()> {
        static ZEROS: [u8; 16 * 1024] = [0; 16 * 1024];
        let Some(exchange) = conn.exchange.as_mut() else {
            return conn.stream.flush();
        };
        if !conn.connected || conn.stream.is_handshaking() {
            return conn.stream.flush();
        }
        loop {
            let mut progressed = false;
            while exchange.head_written < exchange.head.len() {
                let n = conn
                    .stream
                    .write_plain(&exchange.head[exchange.head_written..])?;
                if n == 0 {
                    break;
                }
                exchange.head_written += n;
                progressed = true;
            }
            while exchange.head_written == exchange.head.len() && exchange.body_left > 0 {
                let chunk = exchange.body_left.min(ZEROS.len() as u64) as usize;
                let n = conn.stream.write_plain(&ZEROS[..chunk])?;
                if n == 0 {
                    break;
                }
                exchange.body_left -= n as u64;
                self.stats.bytes_sent += n as u64;
                progressed = true;
            }
            conn.stream.flush()?;
            let all_queued =
                exchange.head_written == exchange.head.len() && exchange.body_left == 0;
            if !progressed || all_queued || conn.stream.has_pending_output() {
                return Ok(());
            }
        }
    }

    /// Returns a pseudo-random number in [0, 1) from a xorshift generator. It only
    /// spreads the hold mode's request times, so its quality does not matter.
    fn next_random_fraction(&mut self) -> f64 {
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        (self.rng >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// Why a connection failed: a kind for counting and a message for the first report.
struct Failure {
    kind: &'static str,
    detail: String,
}

impl Failure {
    fn new(kind: &'static str, detail: impl Into<String>) -> Failure {
        Failure {
            kind,
            detail: detail.into(),
        }
    }
}

impl From<io::Error> for Failure {
    fn from(e: io::Error) -> Failure {
        let kind = match e.kind() {
            io::ErrorKind::InvalidData => "tls",
            io::ErrorKind::ConnectionReset
            | io::ErrorKind::BrokenPipe
            | io::ErrorKind::UnexpectedEof => "closed",
            _ => "io",
        };
        let mut detail = e.to_string();
        if is_ca_as_server_certificate(&e) {
            detail.push_str(
                " (the server's certificate is a CA certificate, basicConstraints CA:TRUE, which rustls rejects as a server certificate: issue the server a certificate signed by that CA and pass the CA with --cafile, or use --insecure)",
            );
        }
        Failure::new(kind, detail)
    }
}

/// Tells whether `e` is rustls rejecting a CA certificate that a server
/// presented as its own, as `openssl req -x509` makes by default.
fn is_ca_as_server_certificate(e: &io::Error) -> bool {
    let Some(rustls::Error::InvalidCertificate(rustls::CertificateError::Other(other))) = e
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
    else {
        return false;
    };
    matches!(
        other.0.downcast_ref::<webpki::Error>(),
        Some(webpki::Error::CaUsedAsEndEntity)
    )
}
