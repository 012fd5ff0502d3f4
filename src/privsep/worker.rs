//! A worker process: one io_uring worker thread, jailed and filtered, serving the
//! listening sockets it inherited.
//!
//! | peer | channel | receives | sends |
//! | --- | --- | --- | --- |
//! | parent | readiness pipe; signals | SIGTERM or SIGINT to drain and exit, SIGUSR1 to send metrics soon | one byte once serving |
//! | key process | socket pair N | sign replies | sign requests |
//! | metrics process | socket pair N | nothing | metrics deltas every 250 ms and at exit |
//! | clients, backends | sockets | network input | network output |
//!
//! Once started it cannot open files, because of the chroot, Landlock with no file
//! allowed, and a seccomp filter that fails opens with EACCES. It cannot exec or
//! start processes or threads, because the filter kills it. Its ring accepts only
//! the opcodes in [`crate::sys::ring::ALLOWED_OPCODES`].

use std::io::{self, Write};
use std::os::fd::OwnedFd;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use super::metrics::MetricsLink;
use crate::runtime::privileges::Ids;
use crate::runtime::worker::{Worker, WorkerConfig};
use crate::runtime::{Service, Shared};
use crate::sys::seccomp;
use crate::{debug, warning};

/// Environment variable of the jail self-test, compiled into debug builds only.
/// When it names a file, worker 0's first start tries to open that file and to
/// exec it, and logs each outcome. The exec is a syscall outside the filter, so
/// it ends the worker with SIGSYS. Release builds ignore the variable.
pub const JAIL_PROBE_ENV: &str = "TLSPLICE_DEBUG_JAIL_PROBE";

/// Environment variable of a test hook, compiled into debug builds only. When it
/// is set, worker 0's first start sends its value to the metrics process as one
/// metrics delta, which does not decode, once it serves. Release builds ignore
/// the variable.
pub const MALFORMED_METRICS_ENV: &str = "TLSPLICE_DEBUG_MALFORMED_METRICS";

/// The start-up state of one worker process, prepared by the parent before the fork.
pub struct WorkerStart {
    pub index: usize,
    pub cpu: Option<usize>,
    pub listeners: Vec<OwnedFd>,
    pub key_link: OwnedFd,
    /// The worker's end of its socket pair to the metrics process.
    pub metrics_link: Option<OwnedFd>,
    pub root: Option<PathBuf>,
    pub ids: Ids,
    pub maxconn: usize,
    pub shutdown_timeout: Duration,
    pub splice: crate::config::SpliceMode,
    /// False for a restarted worker.
    pub first_start: bool,
}

/// Runs a worker process in a freshly forked child and never returns. Writes one
/// byte to `ready` once the worker serves.
pub fn run(
    start: WorkerStart,
    services: Arc<[Service]>,
    parent: libc::pid_t,
    mut ready: io::PipeWriter,
) -> ! {
    super::die_with_parent_or_exit(libc::SIGTERM, parent);
    let index = start.index;
    if let Err(message) = super::jail_child(
        &format!("worker {index}"),
        start.root.as_deref(),
        start.ids,
        &worker_capabilities(&services),
        libc::SIGTERM,
        parent,
    ) {
        warning!("{message}");
        crate::sys::exit_now(1);
    }
    crate::privsep::signer::install_link(start.key_link);

    let shared = Arc::new(Shared {
        stopping: AtomicBool::new(false),
    });
    let wake = match crate::sys::eventfd().and_then(|wake| Ok((wake.try_clone()?, wake))) {
        Ok(pair) => pair,
        Err(err) => {
            warning!("worker {index}: cannot create an eventfd: {err}");
            crate::sys::exit_now(1);
        }
    };
    let (wake_worker, wake_main) = wake;
    let registry = crate::metrics::Registry::new(
        services
            .iter()
            .map(|service| service.name.clone())
            .collect(),
    );
    let config = WorkerConfig {
        index,
        cpu: start.cpu,
        listeners: start.listeners,
        wake: wake_worker,
        maxconn: start.maxconn,
        shutdown_timeout: start.shutdown_timeout,
        metrics: registry.register_worker(),
        restricted_ring: true,
        suspend_signing: true,
        splice: start.splice,
    };
    let probe = start.first_start && index == 0;
    let mut metrics_link = start
        .metrics_link
        .map(|socket| MetricsLink::new(index, socket));

    let (started_tx, started_rx) = mpsc::channel::<io::Result<()>>();
    let thread_shared = shared.clone();
    let handle = std::thread::Builder::new()
        .name(format!("tlsplice-worker-{index}"))
        .spawn(move || {
            let worker = Worker::new(config, services, thread_shared).and_then(|worker| {
                seccomp::install(seccomp::Role::Worker)?;
                Ok(worker)
            });
            let worker = match worker {
                Ok(worker) => {
                    let _ = started_tx.send(Ok(()));
                    worker
                }
                Err(err) => {
                    let _ = started_tx.send(Err(err));
                    return Ok(());
                }
            };
            worker.run()
        });
    let handle = match handle {
        Ok(handle) => handle,
        Err(err) => {
            warning!("worker {index}: cannot start the worker thread: {err}");
            crate::sys::exit_now(1);
        }
    };
    match started_rx.recv() {
        Ok(Ok(())) => {}
        Ok(Err(err)) => {
            warning!("worker {index}: cannot start: {err}");
            crate::sys::exit_now(1);
        }
        Err(_) => crate::sys::exit_now(1),
    }
    let _ = ready.write_all(b"1");
    drop(ready);
    if probe {
        jail_probe();
        if let Some(link) = &metrics_link {
            malformed_metrics_probe(link);
        }
    }

    wait_for_stop(index, &shared, &wake_main, &registry, &mut metrics_link);
    let code = match handle.join() {
        Ok(Ok(())) => 0,
        Ok(Err(err)) => {
            warning!("worker {index}: failed: {err}");
            1
        }
        Err(_) => 1,
    };
    // The worker thread published its last values when it exited.
    if let Some(link) = &mut metrics_link {
        link.send(&registry, true);
    }
    debug!("worker {index}: exiting with status {code}");
    crate::sys::exit_now(code)
}

/// Sends the worker's metrics deltas every [`SEND_INTERVAL`] until SIGTERM or
/// SIGINT, then sets the stop flag and wakes the worker thread to drain.
fn wait_for_stop(
    index: usize,
    shared: &Shared,
    wake: &OwnedFd,
    registry: &crate::metrics::Registry,
    metrics_link: &mut Option<MetricsLink>,
) {
    let mut next_send = Instant::now() + SEND_INTERVAL;
    loop {
        let timeout = next_send.saturating_duration_since(Instant::now());
        match crate::sys::wait_signal(timeout) {
            Some(libc::SIGTERM | libc::SIGINT) => {
                debug!("worker {index}: received a stop signal; draining");
                shared.stopping.store(true, Ordering::Release);
                let _ = crate::sys::eventfd_signal(wake);
                return;
            }
            Some(libc::SIGUSR1) => {
                // The worker thread publishes on its next tick; the send after
                // that carries the values to the metrics process's summary.
                registry.request_publish();
                next_send = Instant::now() + PUBLISH_WAIT;
            }
            _ => {}
        }
        if Instant::now() >= next_send {
            next_send = Instant::now() + SEND_INTERVAL;
            if let Some(link) = metrics_link {
                link.send(registry, false);
            }
        }
    }
}

/// How often a worker process sends its metrics deltas: the worker thread's
/// publish tick.
const SEND_INTERVAL: Duration = Duration::from_millis(250);
/// How long a worker waits after SIGUSR1 before it sends: a little more than
/// the worker thread's 250 ms tick, on which it publishes.
const PUBLISH_WAIT: Duration = Duration::from_millis(300);

/// Returns the capabilities a worker that stays root keeps: CAP_NET_ADMIN for
/// `transparent = source`, and CAP_DAC_OVERRIDE to reach Unix socket backends
/// that only their owner's group may use. Every other capability is dropped.
fn worker_capabilities(services: &[Service]) -> Vec<u32> {
    use crate::sys::capability;
    let mut keep = Vec::new();
    if services
        .iter()
        .any(|service| service.config.transparent_source)
    {
        keep.push(capability::NET_ADMIN);
    }
    let unix_backend = services.iter().any(|service| {
        let routes = service.config.sni.iter().map(|route| &route.connect);
        std::iter::once(&service.config.connect)
            .chain(routes)
            .flatten()
            .any(|address| matches!(address, crate::config::Address::Unix(_)))
    });
    if unix_backend {
        keep.push(capability::DAC_OVERRIDE);
    }
    keep
}

/// Runs the test hook behind [`MALFORMED_METRICS_ENV`]. Does nothing in release
/// builds.
fn malformed_metrics_probe(link: &MetricsLink) {
    if !cfg!(debug_assertions) {
        return;
    }
    let Some(value) = std::env::var_os(MALFORMED_METRICS_ENV) else {
        return;
    };
    warning!("metrics probe: sending a malformed metrics delta (test hook)");
    if let Err(err) = link.send_raw(value.as_encoded_bytes()) {
        warning!("metrics probe: send failed: {err}");
    }
}

/// Runs the jail self-test behind [`JAIL_PROBE_ENV`]. Does nothing in release builds.
fn jail_probe() {
    if !cfg!(debug_assertions) {
        return;
    }
    let Some(path) = std::env::var_os(JAIL_PROBE_ENV) else {
        return;
    };
    let path = PathBuf::from(path);
    match std::fs::File::open(&path) {
        Ok(_) => warning!("jail probe: opened {}", path.display()),
        Err(err) => warning!("jail probe: cannot open {}: {err}", path.display()),
    }
    warning!("jail probe: trying to exec {}", path.display());
    let result = std::process::Command::new(&path).status();
    warning!("jail probe: exec of {} returned {result:?}", path.display());
}
