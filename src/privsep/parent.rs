//! The parent process with privilege separation on: it keeps root and the real
//! filesystem, and never reads a private key or parses network input.
//!
//! | peer | channel | receives | sends |
//! | --- | --- | --- | --- |
//! | key process | control socket pair; SIGCHLD | key descriptions at start-up | nothing; closing the pair stops it |
//! | metrics process | readiness pipe; SIGCHLD; socket pair N | one byte once jailed | SIGUSR1, SIGTERM to finish; on pair N, the pid of each exited worker of slot N |
//! | worker N | readiness pipe; SIGCHLD | one byte once serving | SIGUSR1, SIGTERM to drain |
//! | operator | signals | SIGTERM, SIGINT, SIGHUP, SIGUSR1 | log lines |
//!
//! It binds the listeners and the stats listener, opens the log and the
//! histogram log, writes and removes the pid file, starts the metrics process,
//! the key process and one process per worker, reopens the log on SIGHUP, and
//! restarts a worker or the metrics process that died. It reads nothing from a
//! worker but its readiness byte.

use std::fs::{File, OpenOptions};
use std::io::{self, Read};
use std::net::TcpListener;
use std::os::fd::{AsFd, OwnedFd};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls::pki_types::CertificateDer;
use rustls::sign::CertifiedKey;

use super::key::{self, KeyStart};
use super::metrics::{self as metrics_process, MetricsStart};
use super::protocol::{
    encode_worker_exited, FilesReopened, KeyDescription, StartupMessage, MAX_KEY_DESCRIPTION,
    MAX_METRICS_PACKET,
};
use super::signer::RemoteKey;
use super::worker::{self, WorkerStart};
use crate::config::{Config, ConfigError, Global};
use crate::runtime::privileges::{self, Ids};
use crate::runtime::{RunError, Service};
use crate::sys::process::{self, ExitReason, Packet};
use crate::tls::certs::LoadedCert;
use crate::{error, notice, warning};

/// A worker that lived shorter than this before dying is restarted after a delay
/// that doubles up to [`MAX_RESTART_DELAY`], so a worker that dies at start-up
/// does not spin.
const QUICK_DEATH: Duration = Duration::from_secs(1);
const MAX_RESTART_DELAY: Duration = Duration::from_secs(32);
/// Time a stopping worker gets beyond `TIMEOUTshutdown` before SIGKILL.
const STOP_GRACE: Duration = Duration::from_secs(5);
/// Attempts, 10 ms apart, to queue a worker's exit notice for the metrics process.
const EXIT_NOTICE_TRIES: usize = 50;
/// Time the metrics process gets at shutdown to log its summary before SIGKILL.
const METRICS_STOP: Duration = Duration::from_secs(5);

fn io_error(action: &str) -> impl FnOnce(io::Error) -> RunError + '_ {
    move |error| RunError::Io {
        action: action.to_string(),
        error,
    }
}

/// One worker slot and the process currently filling it.
struct WorkerSlot {
    listeners: Vec<OwnedFd>,
    key_link: OwnedFd,
    /// The worker's end of its socket pair to the metrics process; each process
    /// that fills the slot inherits it.
    metrics_link: Option<OwnedFd>,
    cpu: Option<usize>,
    pid: Option<libc::pid_t>,
    restart: Restart,
}

/// When a child process (a worker or the metrics process) started, and when to
/// start it again after it died.
struct Restart {
    started_at: Instant,
    /// The delay before the next restart after a death within [`QUICK_DEATH`].
    delay: Duration,
    /// `None` while the process runs, or while nothing should restart it.
    at: Option<Instant>,
}

impl Restart {
    fn new() -> Restart {
        Restart {
            started_at: Instant::now(),
            delay: QUICK_DEATH,
            at: None,
        }
    }

    fn started(&mut self) {
        self.started_at = Instant::now();
        self.at = None;
    }

    /// Schedules the restart of a process that just died. Returns the delay when
    /// it died within [`QUICK_DEATH`] of starting, and doubles the next delay.
    fn schedule_after_death(&mut self) -> Option<Duration> {
        let now = Instant::now();
        if now.duration_since(self.started_at) < QUICK_DEATH {
            let delay = self.delay;
            self.at = Some(now + delay);
            self.delay = (delay * 2).min(MAX_RESTART_DELAY);
            Some(delay)
        } else {
            self.at = Some(now);
            self.delay = QUICK_DEATH;
            None
        }
    }

    /// Schedules another attempt after a start that failed, and doubles the delay.
    fn schedule_after_failed_start(&mut self) {
        self.at = Some(Instant::now() + self.delay);
        self.delay = (self.delay * 2).min(MAX_RESTART_DELAY);
    }

    fn is_due(&self) -> bool {
        self.at.is_some_and(|at| at <= Instant::now())
    }
}

struct Parent<'a> {
    global: &'a Global,
    services: Arc<[Service]>,
    workers: Vec<WorkerSlot>,
    worker_ids: Ids,
    /// `None` once the key process has been reaped.
    key_pid: Option<libc::pid_t>,
    /// `None` once the metrics process has exited, until it restarts.
    metrics_pid: Option<libc::pid_t>,
    /// The descriptors a restarted metrics process gets.
    metrics: MetricsResources,
    metrics_restart: Restart,
    control: Option<OwnedFd>,
    /// Workers replaced on SIGHUP that are still draining, with their slot index.
    draining: Vec<(libc::pid_t, usize)>,
}

/// Runs the parent: starts the key process and the workers, then supervises them
/// until SIGTERM or SIGINT. `ready` gets "ok" once every worker serves.
pub fn run(config: &Config, ready: &mut Option<io::PipeWriter>) -> Result<(), RunError> {
    let global = &config.global;
    crate::sys::block_signals().map_err(io_error("cannot block signals"))?;
    let cpus = crate::sys::allowed_cpus();
    let count = global.threads.unwrap_or_else(|| cpus.len().max(1)).max(1);

    let (mut metrics, mut metrics_links) = create_metrics_resources(config, count)?;
    let metrics_pid = start_metrics_process(global, &mut metrics, ready, || metrics_links.clear())?;
    let result = run_with_metrics(
        config,
        count,
        &cpus,
        (metrics_pid, metrics),
        &mut metrics_links,
        ready,
    );
    if let Err((err, Some(metrics_pid))) = result {
        if process::kill(metrics_pid, libc::SIGKILL).is_ok() {
            wait_for(metrics_pid);
        }
        return Err(err);
    }
    result.map_err(|(err, _)| err)
}

/// Everything of [`run`] after the metrics process started: the key process,
/// the listeners, the pid file and the workers. On error, returns the pid of
/// the metrics process as well if it still runs.
fn run_with_metrics(
    config: &Config,
    count: usize,
    cpus: &[usize],
    (metrics_pid, mut metrics): (libc::pid_t, MetricsResources),
    metrics_links: &mut Vec<OwnedFd>,
    ready: &mut Option<io::PipeWriter>,
) -> Result<(), (RunError, Option<libc::pid_t>)> {
    let running = |err| (err, Some(metrics_pid));
    let global = &config.global;
    let (control, key_pid, descriptions) = start_key_process(config, count, ready, || {
        metrics_links.clear();
        metrics.close();
    })
    .map_err(running)?;
    let (control, key_links) = control;
    let services = build_services(config, &descriptions).map_err(running)?;
    crate::runtime::check_kernel_tls(&services).map_err(running)?;

    let mut listeners = Vec::with_capacity(services.len());
    let mut services = services;
    for service in &mut services {
        let bound = crate::runtime::bind_listeners(service, count).map_err(running)?;
        listeners.push(bound);
    }
    let mut per_worker: Vec<Vec<OwnedFd>> = (0..count).map(|_| Vec::new()).collect();
    for sockets in listeners {
        for (index, socket) in sockets.into_iter().enumerate() {
            per_worker[index].push(socket);
        }
    }

    let pid_file = global.pid_outside_jail();
    if let Some(path) = &pid_file {
        std::fs::write(path, format!("{}\n", std::process::id())).map_err(|error| {
            running(RunError::Io {
                action: format!("cannot write pid file {}", path.display()),
                error,
            })
        })?;
    }

    let worker_ids = privileges::resolve_ids(global.setuid.as_deref(), global.setgid.as_deref())
        .map_err(|err| running(RunError::Privileges(err)))?;
    let workers = per_worker
        .into_iter()
        .zip(key_links)
        .zip(std::mem::take(metrics_links))
        .enumerate()
        .map(
            |(index, ((listeners, key_link), metrics_link))| WorkerSlot {
                listeners,
                key_link,
                metrics_link: Some(metrics_link),
                cpu: (count <= cpus.len()).then(|| cpus[index]),
                pid: None,
                restart: Restart::new(),
            },
        )
        .collect();
    let mut parent = Parent {
        global,
        services: services.into(),
        workers,
        worker_ids,
        key_pid: Some(key_pid),
        metrics_pid: Some(metrics_pid),
        metrics,
        metrics_restart: Restart::new(),
        control: Some(control),
        draining: Vec::new(),
    };

    let result = parent
        .start_and_supervise(count, ready)
        .map_err(|err| (err, parent.metrics_pid));
    if let Some(path) = &pid_file {
        if let Err(err) = std::fs::remove_file(path) {
            warning!("cannot remove pid file {}: {err}", path.display());
        }
    }
    result
}

type KeyChannels = (OwnedFd, Vec<OwnedFd>);

/// Forks the key process and reads the public parts of its keys. The key process
/// calls `close_in_child` first, to close what it must not inherit.
fn start_key_process(
    config: &Config,
    workers: usize,
    ready: &mut Option<io::PipeWriter>,
    close_in_child: impl FnOnce(),
) -> Result<(KeyChannels, libc::pid_t, Vec<KeyDescription>), RunError> {
    let global = &config.global;
    let (control, key_control) =
        process::seqpacket_pair().map_err(io_error("cannot create a socket pair"))?;
    let mut worker_ends = Vec::with_capacity(workers);
    let mut key_ends = Vec::with_capacity(workers);
    for _ in 0..workers {
        let (worker_end, key_end) =
            process::seqpacket_pair().map_err(io_error("cannot create a socket pair"))?;
        worker_ends.push(worker_end);
        key_ends.push(key_end);
    }

    let (root, empty_root) = helper_root(global, "key")?;
    let ids = key_ids(global)?;

    let parent = process::getpid();
    let pid = match crate::sys::fork().map_err(io_error("cannot fork the key process"))? {
        crate::sys::Forked::Child => {
            // The daemonizing parent waits for end of file on `ready`.
            drop(ready.take());
            drop(control);
            drop(worker_ends);
            close_in_child();
            key::run(
                KeyStart {
                    config,
                    control: key_control,
                    workers: key_ends,
                    root: root.as_deref(),
                    ids,
                },
                parent,
            )
        }
        crate::sys::Forked::Parent(pid) => pid,
    };
    drop(key_control);
    drop(key_ends);

    let descriptions = read_descriptions(&control);
    drop(empty_root);
    let descriptions = match descriptions {
        Ok(descriptions) => descriptions,
        Err(err) => {
            let _ = process::kill(pid, libc::SIGKILL);
            return Err(err);
        }
    };
    notice!(
        "key process started as pid {pid}; keys loaded: {}; workers sign through it",
        descriptions.len()
    );
    Ok(((control, worker_ends), pid, descriptions))
}

/// Returns the root directory of a jailed helper process (the key or the metrics
/// process) and the empty directory made for it, if any. Root may chroot a helper
/// into the configured chroot, or else into an empty directory made for it, which
/// the caller drops once the helper is inside. `role` names the directory.
fn helper_root(
    global: &Global,
    role: &str,
) -> Result<(Option<PathBuf>, Option<EmptyRoot>), RunError> {
    let is_root = crate::sys::geteuid() == 0;
    let empty_root = (is_root && global.chroot.is_none())
        .then(|| std::env::temp_dir().join(format!("tlsplice-{role}-{}", std::process::id())));
    if let Some(dir) = &empty_root {
        let _ = std::fs::remove_dir(dir);
        std::fs::create_dir(dir).map_err(|error| RunError::Io {
            action: format!(
                "cannot create the {role} process's empty root {}",
                dir.display()
            ),
            error,
        })?;
    }
    let root = if is_root {
        global.chroot.clone().or(empty_root.clone())
    } else {
        None
    };
    Ok((root, empty_root.map(EmptyRoot)))
}

/// An empty directory made for a helper process to chroot into, removed when
/// dropped: once the helper is inside, or when starting it failed. A forked
/// child never drops it, because it leaves through `exit_now`.
struct EmptyRoot(PathBuf);

impl Drop for EmptyRoot {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir(&self.0);
    }
}

/// Descriptors and names that the parent keeps to start the metrics process,
/// and to start it again after it died.
struct MetricsResources {
    service_names: Vec<String>,
    /// The metrics process's end of each worker slot's socket pair.
    metrics_ends: Vec<OwnedFd>,
    /// The bound `stats` listener.
    stats: Option<TcpListener>,
    /// The created `histogram_log` file and its path.
    histogram_log: Option<(File, PathBuf)>,
    /// The parent's end of the control socket pair, which carries the files
    /// reopened on SIGHUP.
    control: Option<OwnedFd>,
    /// The metrics process's end of the control socket pair.
    control_peer: Option<OwnedFd>,
}

impl MetricsResources {
    /// Closes this process's copies of every descriptor, in a child that must
    /// not inherit them.
    fn close(&mut self) {
        self.metrics_ends.clear();
        self.stats = None;
        self.histogram_log = None;
        self.control = None;
        self.control_peer = None;
    }

    /// Duplicates the descriptors into the start-up state of a metrics process.
    fn start_state(
        &self,
        global: &Global,
        root: Option<PathBuf>,
    ) -> Result<MetricsStart, RunError> {
        let metrics_ends = self
            .metrics_ends
            .iter()
            .map(OwnedFd::try_clone)
            .collect::<io::Result<Vec<_>>>()
            .map_err(io_error("cannot duplicate a metrics socket"))?;
        let stats = match &self.stats {
            Some(listener) => Some(
                listener
                    .try_clone()
                    .map_err(io_error("cannot duplicate the stats listener"))?,
            ),
            None => None,
        };
        let histogram_log = match &self.histogram_log {
            Some((file, path)) => Some((
                file.try_clone()
                    .map_err(io_error("cannot duplicate the histogram log"))?,
                path.clone(),
            )),
            None => None,
        };
        let control = match &self.control_peer {
            Some(peer) => Some(
                peer.try_clone()
                    .map_err(io_error("cannot duplicate the metrics control socket"))?,
            ),
            None => None,
        };
        Ok(MetricsStart {
            service_names: self.service_names.clone(),
            workers: metrics_ends,
            control,
            stats,
            histogram_log,
            histogram_log_interval: global.histogram_log_interval,
            root,
            ids: key_ids(global)?,
        })
    }
}

/// Binds the stats listener, creates the histogram log and one socket pair per
/// worker slot. Returns them and the workers' ends of the socket pairs.
fn create_metrics_resources(
    config: &Config,
    workers: usize,
) -> Result<(MetricsResources, Vec<OwnedFd>), RunError> {
    let global = &config.global;
    let mut worker_ends = Vec::with_capacity(workers);
    let mut metrics_ends = Vec::with_capacity(workers);
    for _ in 0..workers {
        let (worker_end, metrics_end) =
            process::seqpacket_pair().map_err(io_error("cannot create a socket pair"))?;
        // The kernel rejects a packet larger than the sender's buffer, which is
        // usually 208 KiB; the requested size is capped by net.core.wmem_max.
        socket2::SockRef::from(&worker_end)
            .set_send_buffer_size(2 * MAX_METRICS_PACKET)
            .map_err(io_error("cannot size a metrics socket's send buffer"))?;
        // The kernel then attaches the sender's pid to each packet, so the
        // metrics process can tell the workers' deltas from the parent's notices.
        socket2::SockRef::from(&metrics_end)
            .set_passcred(true)
            .map_err(io_error("cannot set SO_PASSCRED on a metrics socket"))?;
        worker_ends.push(worker_end);
        metrics_ends.push(metrics_end);
    }

    let stats = match global.stats {
        Some(addr) => {
            let listener = TcpListener::bind(addr).map_err(io_error(&format!(
                "stats = {addr}: cannot listen; choose a free port"
            )))?;
            let bound = listener
                .local_addr()
                .map_err(io_error("cannot read the stats listener's address"))?;
            notice!("stats listening on {bound}");
            Some(listener)
        }
        None => None,
    };
    let histogram_log = match &global.histogram_log {
        Some(path) => {
            let file = crate::metrics::create_log_file(path).map_err(|error| RunError::Io {
                action: format!("histogram_log: cannot create {}", path.display()),
                error,
            })?;
            Some((file, path.clone()))
        }
        None => None,
    };

    let (control, control_peer) =
        process::seqpacket_pair().map_err(io_error("cannot create a socket pair"))?;
    let resources = MetricsResources {
        control: Some(control),
        control_peer: Some(control_peer),
        service_names: config
            .services
            .iter()
            .map(|service| service.name.clone())
            .collect(),
        metrics_ends,
        stats,
        histogram_log,
    };
    Ok((resources, worker_ends))
}

/// Forks a metrics process with duplicates of `resources` and waits until it is
/// jailed. The child calls `close_in_child` first, to close what it must not
/// inherit. Returns its pid.
fn start_metrics_process(
    global: &Global,
    resources: &mut MetricsResources,
    ready: &mut Option<io::PipeWriter>,
    close_in_child: impl FnOnce(),
) -> Result<libc::pid_t, RunError> {
    let (root, empty_root) = helper_root(global, "metrics")?;
    let start = resources.start_state(global, root)?;
    let (mut reader, writer) = io::pipe().map_err(io_error("cannot create a pipe"))?;
    let parent = process::getpid();
    let pid = match crate::sys::fork().map_err(io_error("cannot fork the metrics process"))? {
        crate::sys::Forked::Child => {
            // The daemonizing parent waits for end of file on `ready`.
            drop(ready.take());
            drop(reader);
            close_in_child();
            resources.close();
            metrics_process::run(start, parent, writer)
        }
        crate::sys::Forked::Parent(pid) => pid,
    };
    drop(writer);
    drop(start);

    let mut byte = [0u8; 1];
    let started = reader.read_exact(&mut byte);
    drop(empty_root);
    if started.is_err() {
        let _ = process::kill(pid, libc::SIGKILL);
        // Only this pid is reaped, so no other child's exit is missed.
        let _ = process::wait_child(pid);
        return Err(RunError::Worker(io::Error::other(format!(
            "the metrics process (pid {pid}) exited during start-up; see the log"
        ))));
    }
    notice!("metrics process started as pid {pid}");
    Ok(pid)
}

/// Resolves the user of the key and metrics processes: the configured one, or
/// `nobody` when tlsplice starts as root and none is configured.
fn key_ids(global: &Global) -> Result<Ids, RunError> {
    if global.setuid.is_some() || crate::sys::geteuid() != 0 {
        return privileges::resolve_ids(global.setuid.as_deref(), global.setgid.as_deref())
            .map_err(RunError::Privileges);
    }
    Ok(privileges::resolve_ids(Some("nobody"), global.setgid.as_deref()).unwrap_or_default())
}

fn read_descriptions(control: &OwnedFd) -> Result<Vec<KeyDescription>, RunError> {
    let failed = |message: String| {
        RunError::Config(ConfigError {
            file: None,
            line: 0,
            option: None,
            value: None,
            message,
        })
    };
    let mut buf = vec![0u8; MAX_KEY_DESCRIPTION + 4096];
    let mut descriptions = Vec::new();
    loop {
        let len = match process::recv_packet(control, &mut buf, None) {
            Ok(Packet::Data(len)) => len,
            Ok(Packet::Truncated(len)) => {
                return Err(failed(format!(
                    "the key process sent a key description of {len} bytes, more than the limit of {MAX_KEY_DESCRIPTION}"
                )))
            }
            Ok(Packet::Closed) => {
                return Err(failed(
                    "the key process exited while loading keys; see the log".into(),
                ))
            }
            Err(error) => {
                return Err(RunError::Io {
                    action: "cannot read from the key process".into(),
                    error,
                })
            }
        };
        match StartupMessage::decode(&buf[..len]) {
            Ok(StartupMessage::Key(description)) => descriptions.push(description),
            Ok(StartupMessage::Done { count }) if count as usize == descriptions.len() => {
                return Ok(descriptions)
            }
            Ok(StartupMessage::Done { count }) => {
                return Err(failed(format!(
                    "the key process reported {count} keys but described {}",
                    descriptions.len()
                )))
            }
            Ok(StartupMessage::Failed(message)) => return Err(failed(message)),
            Err(err) => {
                return Err(failed(format!(
                    "invalid start-up message from the key process: {err}"
                )))
            }
        }
    }
}

/// Builds each service's TLS state around remote keys, in the order
/// [`crate::tls::load_certs`] loaded them in the key process.
fn build_services(
    config: &Config,
    descriptions: &[KeyDescription],
) -> Result<Vec<Service>, RunError> {
    let mut services = Vec::with_capacity(config.services.len());
    let mut next = 0usize;
    for (service_index, service) in config.services.iter().enumerate() {
        let mut slots: Vec<(Option<usize>, Option<String>)> = Vec::new();
        if service.self_signed {
            slots.push((None, None));
        }
        slots.extend(service.certs.iter().map(|_| (None, None)));
        slots.extend(
            service
                .sni
                .iter()
                .enumerate()
                .map(|(route, sni)| (Some(route), Some(sni.pattern.clone()))),
        );

        let mut certs = Vec::with_capacity(slots.len());
        for (route, pattern) in slots {
            let Some(description) = descriptions
                .get(next)
                .filter(|description| description.service as usize == service_index)
            else {
                return Err(RunError::Io {
                    action: format!(
                        "service [{}]: the key process loaded other certificates than configured",
                        service.name
                    ),
                    error: io::Error::from(io::ErrorKind::InvalidData),
                });
            };
            let chain = description
                .chain
                .iter()
                .map(|der| CertificateDer::from(der.clone()))
                .collect();
            let key = RemoteKey {
                index: next as u32,
                algorithm: description.algorithm,
                schemes: description.schemes.clone(),
            };
            certs.push(LoadedCert {
                key: Arc::new(CertifiedKey::new(chain, Arc::new(key))),
                route,
                pattern,
            });
            next += 1;
        }
        services.push(Service {
            name: service.name.clone(),
            tls: crate::tls::build_with_certs(service, certs)?,
            config: service.clone(),
        });
    }
    Ok(services)
}

impl Parent<'_> {
    fn start_and_supervise(
        &mut self,
        count: usize,
        ready: &mut Option<io::PipeWriter>,
    ) -> Result<(), RunError> {
        for index in 0..count {
            if let Err(err) = self.start_worker(index, true, ready) {
                self.stop_all();
                return Err(err);
            }
        }
        for service in self.services.iter() {
            notice!(
                "service {} listening on {} with {count} worker{}",
                service.name,
                crate::runtime::worker::display_address(&service.config.accept),
                if count == 1 { "" } else { "s" }
            );
            if service.tls.self_signed {
                warning!(
                    "service {}: no certificate configured; using a self-signed certificate for localhost generated at start. Clients will not trust it; pass --cert and --key for real use",
                    service.name
                );
            }
        }
        if let Some(mut ready) = ready.take() {
            let _ = io::Write::write_all(&mut ready, b"ok");
        }
        let result = self.supervise();
        self.stop_all();
        if let Err(err) = &result {
            // main prints the error on stderr after this function returns.
            if crate::runtime::logs_beyond_stderr(self.global) {
                error!("{err}");
            }
        }
        notice!("stopped");
        result
    }

    /// Forks worker `index` and waits until it serves.
    fn start_worker(
        &mut self,
        index: usize,
        first_start: bool,
        ready: &mut Option<io::PipeWriter>,
    ) -> Result<(), RunError> {
        let (mut reader, writer) = io::pipe().map_err(io_error("cannot create a pipe"))?;
        let parent = process::getpid();
        match crate::sys::fork().map_err(io_error("cannot fork a worker"))? {
            crate::sys::Forked::Child => {
                // The daemonizing parent waits for end of file on `ready`.
                drop(ready.take());
                drop(reader);
                self.control = None;
                self.metrics.close();
                let slot = self.workers.swap_remove(index);
                self.workers.clear();
                let start = WorkerStart {
                    index,
                    cpu: slot.cpu,
                    listeners: slot.listeners,
                    key_link: slot.key_link,
                    metrics_link: slot.metrics_link,
                    root: self.global.chroot.clone(),
                    ids: self.worker_ids,
                    maxconn: self.global.maxconn,
                    shutdown_timeout: self.global.shutdown_timeout,
                    splice: self.global.splice,
                    first_start,
                };
                worker::run(start, self.services.clone(), parent, writer)
            }
            crate::sys::Forked::Parent(pid) => {
                drop(writer);
                let slot = &mut self.workers[index];
                slot.pid = Some(pid);
                slot.restart.started();
                let mut byte = [0u8; 1];
                if reader.read_exact(&mut byte).is_err() {
                    return Err(RunError::Worker(io::Error::other(format!(
                        "worker {index} (pid {pid}) exited during start-up; see the log"
                    ))));
                }
                notice!("worker {index} started as pid {pid}");
                Ok(())
            }
        }
    }

    /// Handles signals and dead children until SIGTERM or SIGINT.
    fn supervise(&mut self) -> Result<(), RunError> {
        loop {
            let signal = crate::sys::wait_signal(Duration::from_millis(250));
            match signal {
                Some(libc::SIGTERM | libc::SIGINT) => {
                    notice!(
                        "received signal {}; closing listeners and draining connections",
                        signal.unwrap_or_default()
                    );
                    return Ok(());
                }
                Some(libc::SIGHUP) => self.reopen_log(),
                Some(libc::SIGUSR1) => {
                    let workers = self.workers.iter().filter_map(|slot| slot.pid);
                    for pid in workers.chain(self.metrics_pid) {
                        let _ = process::kill(pid, libc::SIGUSR1);
                    }
                }
                _ => {}
            }
            while let Some((pid, reason)) = process::reap_child() {
                if Some(pid) == self.key_pid {
                    self.key_pid = None;
                    crate::error!(
                        "the key process (pid {pid}) {}; without it no handshake can be signed, so tlsplice stops (start tlsplice again, or run it under a supervisor that restarts it)",
                        describe(reason)
                    );
                    return Err(RunError::Worker(io::Error::other(format!(
                        "the key process {}",
                        describe(reason)
                    ))));
                }
                if Some(pid) == self.metrics_pid {
                    self.on_metrics_exit(pid, reason);
                    continue;
                }
                self.on_worker_exit(pid, reason);
            }
            self.restart_due()?;
        }
    }

    /// Reopens the log, then replaces every worker: each old one drains under
    /// SIGTERM and writes to the old file until it exits, and its successor
    /// inherits the reopened file and the same listening sockets.
    fn reopen_log(&mut self) {
        let reopened = crate::log::reopen();
        self.reopen_metrics_files(reopened.is_ok());
        if let Err(err) = reopened {
            warning!("cannot reopen the log file ({err}); still writing to the open file");
            return;
        }
        self.pass_log_to_key_process();
        for index in 0..self.workers.len() {
            let Some(old) = self.workers[index].pid.take() else {
                continue;
            };
            let _ = process::kill(old, libc::SIGTERM);
            self.draining.push((old, index));
            if let Err(err) = self.start_worker(index, false, &mut None) {
                warning!("{err}");
                self.workers[index].restart.at = Some(Instant::now() + QUICK_DEATH);
            }
        }
        notice!("log file reopened");
    }

    fn on_worker_exit(&mut self, pid: libc::pid_t, reason: ExitReason) {
        let Some(index) = self.workers.iter().position(|slot| slot.pid == Some(pid)) else {
            self.on_draining_exit(pid);
            return;
        };
        self.report_worker_exit(index, pid);
        let slot = &mut self.workers[index];
        slot.pid = None;
        match slot.restart.schedule_after_death() {
            Some(delay) => warning!(
                "worker {index} (pid {pid}) {} shortly after starting; restarting it in {} ms",
                describe(reason),
                delay.as_millis()
            ),
            None => warning!(
                "worker {index} (pid {pid}) {}; restarting it",
                describe(reason)
            ),
        }
    }

    fn on_metrics_exit(&mut self, pid: libc::pid_t, reason: ExitReason) {
        self.metrics_pid = None;
        match self.metrics_restart.schedule_after_death() {
            Some(delay) => warning!(
                "the metrics process (pid {pid}) {} shortly after starting; restarting it in {} ms with totals from zero",
                describe(reason),
                delay.as_millis()
            ),
            None => warning!(
                "the metrics process (pid {pid}) {}; restarting it with totals from zero",
                describe(reason)
            ),
        }
    }

    fn restart_due(&mut self) -> Result<(), RunError> {
        for index in 0..self.workers.len() {
            if self.workers[index].restart.is_due() {
                if let Err(err) = self.start_worker(index, false, &mut None) {
                    warning!("{err}");
                    let slot = &mut self.workers[index];
                    slot.pid = None;
                    slot.restart.schedule_after_failed_start();
                }
            }
        }
        if self.metrics_restart.is_due() {
            self.restart_metrics();
        }
        Ok(())
    }

    /// Starts a new metrics process with the parent's copies of the stats
    /// listener, the histogram log and the metrics ends of the socket pairs.
    fn restart_metrics(&mut self) {
        let global = self.global;
        let workers = &mut self.workers;
        let control = &mut self.control;
        let started = start_metrics_process(global, &mut self.metrics, &mut None, || {
            // The metrics process must not reach the key process or accept
            // on the services' listeners.
            workers.clear();
            *control = None;
        });
        match started {
            Ok(pid) => {
                self.metrics_pid = Some(pid);
                self.metrics_restart.started();
                notice!("metrics process restarted as pid {pid}");
            }
            Err(err) => {
                warning!("cannot restart the metrics process: {err}");
                self.metrics_restart.schedule_after_failed_start();
            }
        }
    }

    /// Sends SIGTERM to every worker, waits for them to drain (SIGKILL after the
    /// shutdown timeout and a grace period), then stops the metrics process, which
    /// logs the summary, and the key process.
    fn stop_all(&mut self) {
        self.metrics_restart.at = None;
        for slot in &mut self.workers {
            slot.restart.at = None;
            // The listeners close with the workers' copies, so new connections
            // are refused while open ones drain.
            slot.listeners.clear();
            if let Some(pid) = slot.pid {
                let _ = process::kill(pid, libc::SIGTERM);
            }
        }
        let deadline = Instant::now() + self.global.shutdown_timeout + STOP_GRACE;
        let mut killed = false;
        while self.workers.iter().any(|slot| slot.pid.is_some()) || !self.draining.is_empty() {
            if !killed && Instant::now() >= deadline {
                let pids = self.workers.iter().filter_map(|slot| slot.pid);
                let draining = self.draining.iter().map(|(pid, _)| *pid);
                for pid in pids.chain(draining) {
                    warning!("worker pid {pid} did not stop in time; sending SIGKILL");
                    let _ = process::kill(pid, libc::SIGKILL);
                }
                killed = true;
            }
            let _ = crate::sys::wait_signal(Duration::from_millis(100));
            while let Some((pid, reason)) = process::reap_child() {
                if Some(pid) == self.key_pid {
                    warning!(
                        "the key process (pid {pid}) {} while the workers stopped",
                        describe(reason)
                    );
                    self.key_pid = None;
                }
                if Some(pid) == self.metrics_pid {
                    warning!("the metrics process (pid {pid}) exited before the workers");
                    self.metrics_pid = None;
                }
                self.on_draining_exit(pid);
                if let Some(index) = self.workers.iter().position(|slot| slot.pid == Some(pid)) {
                    self.workers[index].pid = None;
                    self.report_worker_exit(index, pid);
                }
            }
        }
        self.stop_metrics();
        // Closing the control socket ends the key process. A key process that
        // already died was reaped, and waiting for it again would only time out.
        self.control = None;
        if let Some(pid) = self.key_pid.take() {
            let _ = process::kill(pid, libc::SIGKILL);
            let _ = process::wait_child(pid);
        }
    }
}

impl Parent<'_> {
    /// Reopens `histogram_log` at its path and passes it, with the reopened log
    /// file when `output_reopened`, to the metrics process, which cannot open
    /// files in its jail. A restarted metrics process gets the reopened files too.
    /// Passes the reopened log file to the key process, which cannot open it
    /// in its jail.
    fn pass_log_to_key_process(&self) {
        let (Some(control), Some(pid)) = (&self.control, self.key_pid) else {
            return;
        };
        let Some(output) = crate::log::output_file() else {
            return;
        };
        let message = FilesReopened {
            output: true,
            histogram_log: false,
        };
        if let Err(err) = process::send_with_fds(control, &message.encode(), &[output.as_fd()]) {
            warning!(
                "cannot pass the reopened log file to the key process (pid {pid}): {err}; it keeps writing to the old one"
            );
        }
    }

    fn reopen_metrics_files(&mut self, output_reopened: bool) {
        if let Some((file, path)) = &mut self.metrics.histogram_log {
            match OpenOptions::new().create(true).append(true).open(&*path) {
                Ok(reopened) => *file = reopened,
                Err(err) => warning!(
                    "cannot reopen histogram log {} ({err}); still writing to the open file",
                    path.display()
                ),
            }
        }
        let output = output_reopened.then(crate::log::output_file).flatten();
        let (Some(control), Some(pid)) = (&self.metrics.control, self.metrics_pid) else {
            return;
        };
        let message = FilesReopened {
            output: output.is_some(),
            histogram_log: self.metrics.histogram_log.is_some(),
        };
        let fds: Vec<_> = output
            .iter()
            .map(AsFd::as_fd)
            .chain(
                self.metrics
                    .histogram_log
                    .iter()
                    .map(|(file, _)| file.as_fd()),
            )
            .collect();
        if fds.is_empty() {
            return;
        }
        if let Err(err) = process::send_with_fds(control, &message.encode(), &fds) {
            warning!(
                "cannot pass the reopened files to the metrics process (pid {pid}): {err}; it keeps writing to the old ones"
            );
        }
    }

    /// Forgets draining worker `pid`, if it is one, and reports its exit.
    fn on_draining_exit(&mut self, pid: libc::pid_t) {
        let Some(at) = self
            .draining
            .iter()
            .position(|(draining, _)| *draining == pid)
        else {
            return;
        };
        let (_, index) = self.draining.swap_remove(at);
        self.report_worker_exit(index, pid);
    }

    /// Tells the metrics process that worker process `pid` of slot `index` has
    /// exited, on the slot's socket pair, so the notice arrives after everything
    /// the process sent. The metrics process then counts the connections that the
    /// process left open as closed, because the kernel closed them when it ended.
    fn report_worker_exit(&self, index: usize, pid: libc::pid_t) {
        let Some(link) = &self.workers[index].metrics_link else {
            return;
        };
        let notice = encode_worker_exited(pid);
        // A full queue means the metrics process is behind. It reads quickly, so
        // short retries (500 ms at most) suffice and keep the parent responsive.
        // While no metrics process runs, its successor reads the queued notice,
        // and one attempt is enough.
        let tries = if self.metrics_pid.is_some() {
            EXIT_NOTICE_TRIES
        } else {
            1
        };
        for _ in 0..tries {
            match process::try_send_packet(link, &notice) {
                Ok(true) => return,
                Ok(false) => process::pause(Duration::from_millis(10)),
                Err(err) => {
                    warning!("cannot tell the metrics process that worker {index} (pid {pid}) exited: {err}");
                    return;
                }
            }
        }
        warning!(
            "cannot tell the metrics process that worker {index} (pid {pid}) exited: its queue stayed full; tlsplice_connections_active keeps counting that process's connections"
        );
    }

    /// Closes the parent's ends of the metrics socket pairs, so the metrics
    /// process reads end of file once it has the workers' last deltas, then sends
    /// it SIGTERM and waits for it to log the summary and exit.
    fn stop_metrics(&mut self) {
        for slot in &mut self.workers {
            slot.metrics_link = None;
        }
        let Some(pid) = self.metrics_pid.take() else {
            return;
        };
        let _ = process::kill(pid, libc::SIGTERM);
        if !wait_for_within(pid, METRICS_STOP) {
            warning!("the metrics process (pid {pid}) did not stop in time; sending SIGKILL");
            let _ = process::kill(pid, libc::SIGKILL);
            wait_for(pid);
        }
    }
}

fn wait_for(pid: libc::pid_t) {
    wait_for_within(pid, Duration::from_secs(5));
}

/// Reaps children until `pid` is reaped or `timeout` passes; returns whether it was.
fn wait_for_within(pid: libc::pid_t, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        match process::reap_child() {
            Some((reaped, _)) if reaped == pid => return true,
            Some(_) => continue,
            None => {
                let _ = crate::sys::wait_signal(Duration::from_millis(50));
            }
        }
    }
    false
}

/// "was killed by signal 9 (SIGKILL)" or "exited with status 1", for log lines.
fn describe(reason: ExitReason) -> String {
    match reason {
        ExitReason::Signaled(signal) => format!(
            "was killed by signal {signal} ({})",
            process::signal_name(signal)
        ),
        ExitReason::Exited(code) => format!("exited with status {code}"),
    }
}
