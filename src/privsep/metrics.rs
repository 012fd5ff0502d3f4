//! The metrics process: it merges the workers' metrics deltas and serves them as
//! the `stats` listener, the `histogram_log` file, and the SIGUSR1 and shutdown
//! summaries.
//!
//! | peer | channel | receives | sends |
//! | --- | --- | --- | --- |
//! | parent | readiness pipe; signals; control socket pair; socket pair N | SIGUSR1 to log a summary, SIGTERM to finish, the files reopened on SIGHUP, the pid of each exited worker process of slot N | one byte once jailed |
//! | worker N | socket pair N | metrics deltas | nothing |
//! | stats clients | the stats listener | HTTP requests | `/metrics`, `/stats.json` |
//!
//! The parent binds the stats listener and creates the histogram log before the
//! fork, so the jailed process opens nothing. It parses what workers send, which
//! the parent never does. A delta that fails to decode is dropped; the first is
//! logged as a warning and the rest at debug level. A worker can still report
//! values it never recorded, because a delta cannot be checked against the traffic.
//!
//! Its totals are kept per worker slot, so they survive a worker's restart.

use std::collections::{HashMap, VecDeque};
use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::net::TcpListener;
use std::os::fd::OwnedFd;
use std::path::PathBuf;
use std::sync::atomic::AtomicU64;
use std::sync::{mpsc, Arc, Barrier};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::protocol::{
    decode_metrics, decode_worker_exited, encode_metrics, FilesReopened, MAX_METRICS_PACKET,
};
use crate::log::CloseReason;
use crate::metrics::{IntervalLog, Registry, StatsServerOptions, WorkerMetrics};
use crate::runtime::privileges::Ids;
use crate::sys::process::{self, Packet};
use crate::sys::seccomp;
use crate::{debug, notice, warning};

/// How long the metrics process waits after SIGUSR1 before it logs the summary:
/// a worker publishes within its 250 ms tick and sends 300 ms after SIGUSR1.
const SUMMARY_WAIT: Duration = Duration::from_millis(600);
/// How long the metrics process waits at SIGTERM for the workers' last deltas
/// before it logs the shutdown summary without them.
const FINISH_WAIT: Duration = Duration::from_secs(2);
/// The close reason of the connections a worker process held when it exited.
pub const CLOSED_BY_EXIT: CloseReason = CloseReason::Internal;
/// Maximum number of encoded deltas a worker queues while the metrics process
/// does not read them. Beyond it, the oldest are dropped.
const MAX_QUEUED_PACKETS: usize = 64;
/// How long a worker's last send waits for room in the queue to the metrics
/// process. While no metrics process reads (it died and waits to be restarted),
/// a longer wait would only hold up the worker's exit.
const LAST_SEND_WAIT: Duration = Duration::from_secs(1);

/// The metrics process's start-up state, prepared by the parent before the fork.
pub struct MetricsStart {
    pub service_names: Vec<String>,
    /// The metrics process's end of each worker slot's socket pair.
    pub workers: Vec<OwnedFd>,
    /// The metrics process's end of the control socket pair to the parent,
    /// which carries the files reopened on SIGHUP.
    pub control: Option<OwnedFd>,
    /// The bound `stats` listener.
    pub stats: Option<TcpListener>,
    /// The created `histogram_log` file and its path, for log lines.
    pub histogram_log: Option<(File, PathBuf)>,
    pub histogram_log_interval: Duration,
    /// The directory to chroot into; `None` when not started as root.
    pub root: Option<PathBuf>,
    pub ids: Ids,
}

/// Runs the metrics process in a freshly forked child; never returns. Writes one
/// byte to `ready` once it is jailed and serving.
pub fn run(start: MetricsStart, parent: libc::pid_t, mut ready: io::PipeWriter) -> ! {
    super::die_with_parent_or_exit(libc::SIGKILL, parent);
    let jailed = super::jail_child(
        "metrics process",
        start.root.as_deref(),
        start.ids,
        &[],
        libc::SIGKILL,
        parent,
    );
    if let Err(message) = jailed {
        warning!("{message}");
        crate::sys::exit_now(1);
    }

    let services = start.service_names.len();
    let registry = Arc::new(Registry::new(start.service_names));
    let options = StatsServerOptions::default();
    let stats = start.stats.map(Arc::new);
    let http_threads = if stats.is_some() {
        options.max_connections
    } else {
        0
    };

    // Every thread starts before the seccomp filter, which forbids creating
    // threads. As in the key process, the barrier is passed twice: once each
    // thread has made its start-up syscalls, and once the filter is in place.
    let control_threads = usize::from(start.control.is_some());
    let barrier = Arc::new(Barrier::new(
        start.workers.len() + http_threads + control_threads + 1,
    ));
    let (reopened_tx, reopened) = mpsc::channel::<File>();
    if let Some(control) = start.control {
        spawn_gated(
            "tlsplice-metrics-control".to_string(),
            &barrier,
            move || receive_reopened_files(&control, &reopened_tx),
        );
    }
    let mut receivers = Vec::with_capacity(start.workers.len());
    for (index, socket) in start.workers.into_iter().enumerate() {
        let metrics = registry.register_worker();
        receivers.push(spawn_gated(
            format!("tlsplice-metrics-{index}"),
            &barrier,
            move || receive(index, &socket, metrics, services, parent),
        ));
    }
    if let Some(listener) = &stats {
        for index in 0..http_threads {
            let listener = listener.clone();
            let registry = registry.clone();
            spawn_gated(format!("tlsplice-stats-{index}"), &barrier, move || {
                crate::metrics::serve_shared(&listener, &registry, options)
            });
        }
    }
    barrier.wait();
    if let Err(err) = seccomp::install(seccomp::Role::Metrics) {
        warning!("metrics process: cannot install the seccomp filter: {err}");
        crate::sys::exit_now(1);
    }
    barrier.wait();

    let mut histogram_log = match start.histogram_log {
        Some((file, path)) => match IntervalLog::new(BufWriter::new(file), registry.snapshot()) {
            Ok(log) => Some(HistogramLog {
                log,
                path,
                failures: 0,
            }),
            Err(err) => {
                warning!(
                    "metrics process: cannot write histogram log {}: {err}",
                    path.display()
                );
                crate::sys::exit_now(1);
            }
        },
        None => None,
    };
    let _ = ready.write_all(b"1");
    drop(ready);
    debug!("metrics process: serving {} worker slots", receivers.len());

    wait_for_stop(
        &registry,
        &mut histogram_log,
        start.histogram_log_interval,
        &reopened,
    );
    finish(&receivers);
    if let Some(log) = &mut histogram_log {
        log.write(&registry);
    }
    registry.log_summary();
    crate::sys::exit_now(0)
}

/// Starts thread `name`, which passes `barrier` twice (after its start-up
/// syscalls, then once the seccomp filter is in place) before it runs `body`.
/// Ends the process when the thread cannot start.
fn spawn_gated(
    name: String,
    barrier: &Arc<Barrier>,
    body: impl FnOnce() + Send + 'static,
) -> JoinHandle<()> {
    let barrier = barrier.clone();
    let spawned = std::thread::Builder::new().name(name).spawn(move || {
        barrier.wait();
        barrier.wait();
        body();
    });
    spawned.unwrap_or_else(|err| {
        warning!("metrics process: cannot start a thread: {err}");
        crate::sys::exit_now(1)
    })
}

/// The open `histogram_log` and its write failures, the first 10 of which are logged.
struct HistogramLog {
    log: IntervalLog<BufWriter<File>>,
    path: PathBuf,
    failures: u64,
}

impl HistogramLog {
    /// Writes the interval so far to the old file, then continues in `file`,
    /// starting with a new header.
    fn switch_to(&mut self, file: File, registry: &Registry) {
        self.write(registry);
        match IntervalLog::new(BufWriter::new(file), registry.snapshot()) {
            Ok(log) => {
                self.log = log;
                notice!("metrics process: histogram log {} reopened", self.path.display());
            }
            Err(err) => warning!(
                "metrics process: cannot write the header of the reopened histogram log {}: {err}; still writing to the old file",
                self.path.display()
            ),
        }
    }

    fn write(&mut self, registry: &Registry) {
        if let Err(err) = self.log.write_interval(&registry.snapshot()) {
            self.failures += 1;
            if self.failures <= 10 {
                warning!(
                    "metrics process: writing histogram log {} failed: {err}",
                    self.path.display()
                );
            }
        }
    }
}

/// Receives the files that the parent reopened on SIGHUP: the log file takes
/// effect at once, and the histogram log goes to the main thread through
/// `histogram_logs`. Returns when the parent's end closes.
fn receive_reopened_files(control: &OwnedFd, histogram_logs: &mpsc::Sender<File>) {
    let mut buf = [0u8; 64];
    loop {
        let (packet, fds) = match process::recv_with_fds(control, &mut buf) {
            Ok(received) => received,
            Err(err) => {
                warning!("metrics process: receive from the parent failed: {err}");
                return;
            }
        };
        let len = match packet {
            Packet::Data(len) => len,
            Packet::Truncated(len) => {
                warning!("metrics process: dropped a {len}-byte control packet from the parent");
                continue;
            }
            Packet::Closed => return,
        };
        let files = match FilesReopened::decode(&buf[..len]) {
            Ok(files) if files.count() == fds.len() => files,
            Ok(files) => {
                warning!(
                    "metrics process: the parent passed {} files, expected {}; ignoring them",
                    fds.len(),
                    files.count()
                );
                continue;
            }
            Err(err) => {
                warning!("metrics process: invalid control packet from the parent: {err}");
                continue;
            }
        };
        let mut fds = fds.into_iter().map(File::from);
        if files.output {
            if let Some(file) = fds.next() {
                crate::log::replace_output(file);
                notice!("metrics process: log file reopened");
            }
        }
        if files.histogram_log {
            if let Some(file) = fds.next() {
                let _ = histogram_logs.send(file);
            }
        }
    }
}

/// Writes histogram log intervals and logs summaries on SIGUSR1, until SIGTERM
/// or SIGINT. Switches to each file that arrives on `reopened`.
fn wait_for_stop(
    registry: &Registry,
    histogram_log: &mut Option<HistogramLog>,
    interval: Duration,
    reopened: &mpsc::Receiver<File>,
) {
    let mut next_interval = Instant::now() + interval;
    let mut summary_due: Option<Instant> = None;
    loop {
        let now = Instant::now();
        let mut wake = now + Duration::from_secs(1);
        if histogram_log.is_some() {
            wake = wake.min(next_interval);
        }
        if let Some(due) = summary_due {
            wake = wake.min(due);
        }
        match crate::sys::wait_signal(wake.saturating_duration_since(now)) {
            Some(libc::SIGTERM | libc::SIGINT) => return,
            Some(libc::SIGUSR1) => summary_due = Some(Instant::now() + SUMMARY_WAIT),
            _ => {}
        }
        while let Ok(file) = reopened.try_recv() {
            if let Some(log) = histogram_log {
                log.switch_to(file, registry);
            }
        }
        let now = Instant::now();
        if summary_due.is_some_and(|due| now >= due) {
            summary_due = None;
            registry.log_summary();
        }
        if let Some(log) = histogram_log {
            if now >= next_interval {
                log.write(registry);
                next_interval += interval;
                if next_interval < now {
                    next_interval = now + interval;
                }
            }
        }
    }
}

/// Waits for the receiving threads, which end once every worker has closed its
/// end of its socket pair and they have read what it sent, but no longer than
/// [`FINISH_WAIT`].
fn finish(receivers: &[JoinHandle<()>]) {
    let deadline = Instant::now() + FINISH_WAIT;
    while !receivers.iter().all(JoinHandle::is_finished) {
        if Instant::now() >= deadline {
            warning!(
                "metrics process: a worker's socket is still open; the shutdown summary may miss its last values"
            );
            return;
        }
        process::pause(Duration::from_millis(10));
    }
}

/// Malformed deltas seen, across all workers; the first is logged as a warning,
/// the rest at debug level.
static MALFORMED: AtomicU64 = AtomicU64::new(0);

fn note_malformed(worker: usize, detail: &str) {
    crate::log::warn_first(
        &MALFORMED,
        format_args!(
            "metrics process: dropped a malformed metrics delta from worker {worker}: {detail}"
        ),
    );
}

/// Adds the deltas from worker slot `worker` to its totals until every copy of
/// the slot's other end is closed. A packet whose sender is `parent` is the
/// parent's notice that one of the slot's worker processes exited: the
/// connections that process left open are then counted as closed.
///
/// NOTE: an empty packet read after every copy was closed reads as end of file,
/// so a worker that sends one as its last act loses the deltas it queued after it.
fn receive(
    worker: usize,
    socket: &OwnedFd,
    mut metrics: WorkerMetrics,
    services: usize,
    parent: libc::pid_t,
) {
    let mut buf = vec![0u8; MAX_METRICS_PACKET];
    let mut open = OpenConnections::default();
    loop {
        match process::recv_packet_with_sender(socket, &mut buf) {
            Ok((Packet::Data(len), Some(sender))) if sender == parent => {
                match decode_worker_exited(&buf[..len]) {
                    Ok(pid) => close_left_open(worker, pid, open.remove(pid), &mut metrics),
                    Err(err) => note_malformed(worker, &format!("notice from the parent: {err}")),
                }
            }
            Ok((Packet::Data(len), sender)) => match apply(&buf[..len], services, &mut metrics) {
                Ok((service, opened)) => {
                    if let Some(sender) = sender {
                        open.add(sender, service, opened, services);
                    }
                }
                Err(detail) => note_malformed(worker, &detail),
            },
            Ok((Packet::Truncated(len), _)) => note_malformed(
                worker,
                &format!("{len} bytes, more than the limit of {MAX_METRICS_PACKET}"),
            ),
            Ok((Packet::Closed, _)) => return,
            Err(err) => {
                warning!("metrics process: receive from worker {worker} failed: {err}");
                return;
            }
        }
    }
}

/// Connections each worker process of one slot has reported as accepted and
/// not closed, per service, keyed by the pid the kernel attached to its deltas.
/// An entry is removed when the parent reports that the process exited.
#[derive(Default)]
struct OpenConnections {
    by_pid: HashMap<libc::pid_t, Vec<i64>>,
}

impl OpenConnections {
    fn add(&mut self, pid: libc::pid_t, service: usize, opened: i64, services: usize) {
        let counts = self.by_pid.entry(pid).or_insert_with(|| vec![0; services]);
        counts[service] = counts[service].saturating_add(opened);
    }

    /// Removes process `pid` and returns its open connections per service. A
    /// count below zero means that the process closed connections which an
    /// earlier metrics process counted as accepted.
    fn remove(&mut self, pid: libc::pid_t) -> Vec<i64> {
        self.by_pid.remove(&pid).unwrap_or_default()
    }
}

/// Counts the connections that worker process `pid` left open as closed with
/// [`CLOSED_BY_EXIT`]: the kernel closed their sockets when the process ended.
fn close_left_open(worker: usize, pid: libc::pid_t, open: Vec<i64>, metrics: &mut WorkerMetrics) {
    let mut total = 0u64;
    for (service, count) in open.into_iter().enumerate() {
        let Ok(count) = u64::try_from(count) else {
            continue;
        };
        if count == 0 {
            continue;
        }
        metrics.add_closed(service, CLOSED_BY_EXIT, count);
        total += count;
    }
    if total == 0 {
        return;
    }
    metrics.publish();
    notice!(
        "metrics process: worker {worker} (pid {pid}) exited with {total} connections open; counting them as closed ({})",
        CLOSED_BY_EXIT.as_str()
    );
}

/// Decodes one delta and adds it to `metrics`, or returns why it was dropped.
/// Returns the delta's service and its accepted minus its closed connections.
pub(crate) fn apply(
    packet: &[u8],
    services: usize,
    metrics: &mut WorkerMetrics,
) -> Result<(usize, i64), String> {
    // The decoder checks every length and field itself. The hdrhistogram
    // deserializer runs inside it, so a panic there drops the delta too.
    let decoded = std::panic::catch_unwind(|| decode_metrics(packet, services))
        .map_err(|_| "the histogram decoder panicked".to_string())?;
    let (service, values) = decoded.map_err(|err| err.to_string())?;
    let accepted = i64::try_from(values.accepted).unwrap_or(i64::MAX);
    let closed = i64::try_from(values.closed_total()).unwrap_or(i64::MAX);
    metrics.merge(service, &values);
    metrics.publish();
    Ok((service, accepted.saturating_sub(closed)))
}

/// A worker process's sending side of its socket pair to the metrics process.
pub struct MetricsLink {
    /// The worker's index, for log lines.
    index: usize,
    socket: OwnedFd,
    /// Encoded deltas not sent yet, oldest first.
    queue: VecDeque<Vec<u8>>,
    /// Deltas or histograms dropped so far; the first drop is logged as a warning.
    dropped: u64,
    /// Set once a send failed with an error other than a full queue.
    broken: bool,
}

impl MetricsLink {
    pub fn new(index: usize, socket: OwnedFd) -> MetricsLink {
        MetricsLink {
            index,
            socket,
            queue: VecDeque::new(),
            dropped: 0,
            broken: false,
        }
    }

    /// Takes the values that the worker published since the last call out of
    /// `registry` and sends them. With `wait` false, it stops at a full queue and
    /// keeps the rest for the next call. With `wait` true, for the last send, it
    /// waits up to [`LAST_SEND_WAIT`] for room and drops what is left then.
    pub fn send(&mut self, registry: &Registry, wait: bool) {
        // Drained even when nothing can be sent, so the values do not pile up.
        let drained = registry.drain();
        if self.broken {
            return;
        }
        for (service, values) in drained.iter().enumerate() {
            if values.is_empty() {
                continue;
            }
            let (packets, dropped) = encode_metrics(service as u32, values);
            self.note_dropped(dropped as u64, "histograms larger than a packet");
            self.queue.extend(packets);
        }
        if self.queue.len() > MAX_QUEUED_PACKETS {
            let excess = self.queue.len() - MAX_QUEUED_PACKETS;
            self.queue.drain(..excess);
            self.note_dropped(excess as u64, "the metrics process is not reading");
        }
        let deadline = Instant::now() + LAST_SEND_WAIT;
        while let Some(packet) = self.queue.front() {
            match process::try_send_packet(&self.socket, packet) {
                Ok(true) => {
                    self.queue.pop_front();
                }
                Ok(false) if wait && Instant::now() < deadline => {
                    process::pause(Duration::from_millis(10));
                }
                Ok(false) if wait => {
                    let left = self.queue.len() as u64;
                    self.queue.clear();
                    self.note_dropped(left, "the metrics process did not read them in time");
                    return;
                }
                Ok(false) => return,
                Err(err) => {
                    // The metrics process has exited; the parent logged why.
                    debug!(
                        "worker {}: cannot send metrics to the metrics process: {err}",
                        self.index
                    );
                    self.broken = true;
                    self.queue.clear();
                    return;
                }
            }
        }
    }

    /// Sends `packet` as it is, for the test hook that checks how the metrics
    /// process handles a malformed delta.
    pub(crate) fn send_raw(&self, packet: &[u8]) -> io::Result<()> {
        process::send_packet(&self.socket, packet)
    }

    fn note_dropped(&mut self, count: u64, reason: &str) {
        if count == 0 {
            return;
        }
        let index = self.index;
        if self.dropped == 0 {
            warning!("worker {index}: dropped {count} metrics deltas or histograms: {reason}");
        } else {
            debug!("worker {index}: dropped {count} metrics deltas or histograms: {reason}");
        }
        self.dropped += count;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::DataPath;
    use std::sync::atomic::Ordering;

    /// Records `count` closed connections of service 0 in a registry of a worker
    /// process, and returns the registry.
    fn worker_registry(count: usize) -> (Registry, WorkerMetrics) {
        let registry = Registry::new(vec!["web".into()]);
        let mut worker = registry.register_worker();
        for _ in 0..count {
            worker.accepted(0);
            worker.closed(
                0,
                CloseReason::Done,
                Duration::from_millis(3),
                10,
                20,
                DataPath::Userspace,
            );
        }
        worker.publish();
        (registry, worker)
    }

    /// The last send gives up when nothing reads the queue, so a worker whose
    /// metrics process is gone still exits.
    #[test]
    fn last_send_gives_up_on_full_queue() {
        let (worker_end, _unread) = process::seqpacket_pair().unwrap();
        let filler = worker_end.try_clone().unwrap();
        while process::try_send_packet(&filler, &[0; 4096]).unwrap() {}

        let (done_tx, done_rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut link = MetricsLink::new(0, worker_end);
            let (registry, _worker) = worker_registry(2);
            link.send(&registry, true);
            done_tx.send(link.dropped).unwrap();
        });
        let dropped = done_rx
            .recv_timeout(Duration::from_secs(30))
            .expect("the last send did not return");
        assert!(dropped > 0, "nothing was counted as dropped");
    }

    #[test]
    fn receiving_loop_survives_malformed_deltas() {
        let totals = Registry::new(vec!["web".into()]);
        let (worker_end, metrics_end) = process::seqpacket_pair().unwrap();
        let receiving = {
            let metrics = totals.register_worker();
            std::thread::spawn(move || receive(0, &metrics_end, metrics, 1, 0))
        };

        let mut link = MetricsLink::new(0, worker_end);
        let (registry, _worker) = worker_registry(2);
        link.send(&registry, true);
        for garbage in [&b""[..], b"garbage", &[6; 40], &[0xff; 300]] {
            link.send_raw(garbage).unwrap();
        }
        link.send_raw(&vec![6; MAX_METRICS_PACKET + 1]).unwrap();
        let (registry, _worker) = worker_registry(3);
        link.send(&registry, true);

        // The link stays open until the receiver has read everything: an empty
        // packet read after the writer closed would count as end of file.
        let deadline = Instant::now() + Duration::from_secs(30);
        while totals.snapshot().total.accepted < 5 {
            assert!(Instant::now() < deadline, "the deltas never arrived");
            process::pause(Duration::from_millis(5));
        }
        drop(link);
        receiving.join().unwrap();

        let snapshot = totals.snapshot();
        assert_eq!(snapshot.total.accepted, 5);
        assert_eq!(snapshot.total.closed_by(CloseReason::Done), 5);
        assert_eq!(
            snapshot
                .total
                .histogram(crate::metrics::HistogramKind::BytesDown)
                .sum(),
            100
        );
        assert!(MALFORMED.load(Ordering::Relaxed) >= 5);
    }

    #[test]
    fn link_sends_each_value_once() {
        let (worker_end, metrics_end) = process::seqpacket_pair().unwrap();
        let mut link = MetricsLink::new(0, worker_end);
        let (registry, mut worker) = worker_registry(2);
        link.send(&registry, false);
        link.send(&registry, false);
        worker.accepted(0);
        worker.publish();
        link.send(&registry, false);

        let mut buf = vec![0u8; MAX_METRICS_PACKET];
        let mut accepted = Vec::new();
        while let Ok(Packet::Data(len)) =
            process::recv_packet(&metrics_end, &mut buf, Some(Duration::ZERO))
        {
            accepted.push(decode_metrics(&buf[..len], 1).unwrap().1.accepted);
        }
        assert_eq!(accepted, [2, 1]);
    }
}
