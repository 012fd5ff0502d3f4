//! The process: start-up in a fixed order, one worker thread per CPU, signals, and
//! shutdown.
//!
//! Start-up order matters for the jail. Everything that needs the real filesystem
//! or root (certificates and keys, the log file, the syslog socket, listening
//! sockets on low ports) happens first. Then the process daemonizes, enters the
//! chroot, writes the pid file inside it, and drops privileges in the order chroot,
//! chdir, setgroups, setgid, setuid, no_new_privs. Worker threads start last.

mod conn;
mod listener;
pub(crate) mod privileges;
pub mod token;
pub(crate) mod worker;

use std::fmt;
use std::io::{self, Read, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::time::Duration;

use crate::config::{Config, ConfigError};
use crate::metrics::{Collector, HistogramLogger, Registry, StatsServer, StatsServerOptions};
use crate::sys::ring::{Ring, RingConfig};
use crate::tls::ServiceTls;
use crate::{notice, warning};

pub use privileges::PrivilegeError;
use worker::{Worker, WorkerConfig};

/// A service as the workers see it: configuration and loaded TLS state.
pub struct Service {
    pub name: String,
    pub config: crate::config::Service,
    pub tls: ServiceTls,
}

/// State shared by all workers: only the stop flag.
pub struct Shared {
    pub stopping: AtomicBool,
}

/// A start-up or run-time failure, by cause.
#[derive(Debug)]
#[non_exhaustive]
pub enum RunError {
    /// The configuration, or a file it names, is wrong.
    Config(ConfigError),
    /// The kernel refused io_uring.
    IoUringUnavailable(io::Error),
    /// A listening address could not be bound.
    Bind {
        service: String,
        address: String,
        error: io::Error,
    },
    Privileges(PrivilegeError),
    /// A service sets `ktls = on`, but the kernel has no usable tls ULP.
    KtlsUnavailable {
        service: String,
        reason: String,
    },
    /// A worker thread, a worker process or a helper process of privilege
    /// separation failed while running. The message names which.
    Worker(io::Error),
    /// Any other operating-system failure, with what was being done.
    Io {
        action: String,
        error: io::Error,
    },
}

impl fmt::Display for RunError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RunError::Config(err) => write!(f, "{err}"),
            RunError::IoUringUnavailable(err) => write!(
                f,
                "io_uring is unavailable ({err}); tlsplice needs it. Check that the kernel is 5.19 or newer, \
                 that sysctl kernel.io_uring_disabled is 0, and, in a container, that the seccomp profile allows \
                 io_uring_setup, io_uring_enter and io_uring_register"
            ),
            RunError::Bind {
                service,
                address,
                error,
            } => {
                write!(f, "service [{service}]: accept = {address}: cannot listen: {error}")?;
                if error.kind() == io::ErrorKind::AddrInUse && address.starts_with('/') {
                    write!(f, "; another process listens on this socket: stop it or choose another path")?;
                } else if error.kind() == io::ErrorKind::AddrInUse {
                    write!(f, "; stop the process using that address or choose another port")?;
                } else if error.kind() == io::ErrorKind::PermissionDenied {
                    write!(f, "; ports below 1024 need root or CAP_NET_BIND_SERVICE")?;
                }
                Ok(())
            }
            RunError::Privileges(err) => write!(f, "{err}"),
            RunError::KtlsUnavailable { service, reason } => write!(
                f,
                "service [{service}]: ktls = on, but {reason}; load the tls module (modprobe tls) or set ktls = auto"
            ),
            RunError::Worker(err) => write!(f, "{err}"),
            RunError::Io { action, error } => write!(f, "{action}: {error}"),
        }
    }
}

impl std::error::Error for RunError {}

impl From<ConfigError> for RunError {
    fn from(err: ConfigError) -> Self {
        RunError::Config(err)
    }
}

fn io_error(action: impl Into<String>) -> impl FnOnce(io::Error) -> RunError {
    let action = action.into();
    move |error| RunError::Io { action, error }
}

/// Checks that io_uring works here, with the features the workers use.
pub fn probe_io_uring() -> Result<(), RunError> {
    Ring::new(RingConfig {
        entries: 8,
        buffers: 8,
        buffer_size: 64,
        io_workers: None,
    })
    .map(drop)
    .map_err(RunError::IoUringUnavailable)
}

/// Probes kernel TLS once, before the chroot and the worker threads, when a
/// service may use it, and rejects a service with `ktls = on` when the kernel
/// cannot offload.
pub(crate) fn check_kernel_tls(services: &[Service]) -> Result<(), RunError> {
    use crate::config::KtlsMode;

    if services
        .iter()
        .all(|service| service.config.ktls == KtlsMode::Off)
    {
        return Ok(());
    }
    let support = crate::tls::kernel::probe();
    if support.is_available() {
        notice!("{support}");
        return Ok(());
    }
    match services
        .iter()
        .find(|service| service.config.ktls == KtlsMode::On)
    {
        Some(service) => Err(RunError::KtlsUnavailable {
            service: service.name.clone(),
            reason: support.to_string(),
        }),
        None => {
            notice!(
                "{support}; TLS records are encrypted in user space (`modprobe tls`, or a kernel built with CONFIG_TLS, enables the kernel path)"
            );
            Ok(())
        }
    }
}

/// Loads every service's certificates and TLS settings, without starting anything.
pub fn load_services(config: &Config) -> Result<Vec<Service>, RunError> {
    check_environment(config)?;
    config
        .services
        .iter()
        .map(|service| {
            Ok(Service {
                name: service.name.clone(),
                tls: crate::tls::build(service)?,
                config: service.clone(),
            })
        })
        .collect()
}

/// Rejects settings that parse but cannot work on this machine, so `--check`
/// catches them before a start fails: option combinations, `local` addresses,
/// duplicate listening addresses, and missing directories.
fn check_environment(config: &Config) -> Result<(), ConfigError> {
    let error = |option: &str, value: String, message: String| ConfigError {
        file: config.source.clone(),
        line: 0,
        option: Some(option.into()),
        value: Some(value),
        message,
    };
    let global = &config.global;

    if let Some(user) = &global.setuid {
        if let Some(service) = config
            .services
            .iter()
            .find(|service| service.transparent_source)
        {
            return Err(error(
                "transparent",
                "source".into(),
                format!(
                    "service [{}] needs CAP_NET_ADMIN for transparent mode, which `setuid = {user}` drops; remove setuid or the transparent option",
                    service.name
                ),
            ));
        }
    }

    for (index, service) in config.services.iter().enumerate() {
        let duplicate = config.services[..index].iter().find(|other| {
            other.accept == service.accept
                && !matches!(service.accept, crate::config::Address::Inet(addr) if addr.port() == 0)
        });
        if let Some(other) = duplicate {
            return Err(error(
                "accept",
                worker::display_address(&service.accept),
                format!(
                    "services [{}] and [{}] both accept on this address; give each service its own address",
                    other.name, service.name
                ),
            ));
        }

        let Some(local) = service.local else {
            continue;
        };
        for backend in &service.connect {
            if let crate::config::Address::Inet(addr) = backend {
                if addr.is_ipv4() != local.is_ipv4() {
                    return Err(error(
                        "local",
                        local.to_string(),
                        format!(
                            "service [{}]: local address and backend {addr} are of different IP versions; use a local address of the backend's version",
                            service.name
                        ),
                    ));
                }
            }
        }
        let probe = socket2::Socket::new(
            socket2::Domain::for_address(std::net::SocketAddr::new(local, 0)),
            socket2::Type::STREAM,
            None,
        );
        if let Err(err) =
            probe.and_then(|socket| socket.bind(&std::net::SocketAddr::new(local, 0).into()))
        {
            return Err(error(
                "local",
                local.to_string(),
                format!(
                    "service [{}]: cannot bind to this address ({err}); use an address of this host",
                    service.name
                ),
            ));
        }
    }

    let directory_of = |path: &std::path::Path| {
        path.parent()
            .filter(|parent| !parent.as_os_str().is_empty())
            .map(std::path::Path::to_path_buf)
    };
    // Both files are opened before chroot, so their paths are outside the jail.
    let log_files = [
        ("output", &global.output),
        ("histogram_log", &global.histogram_log),
    ];
    for (option, path) in log_files {
        let Some(path) = path else { continue };
        if let Some(parent) = directory_of(path).filter(|parent| !parent.is_dir()) {
            return Err(error(
                option,
                path.display().to_string(),
                format!(
                    "directory {} does not exist; create it or choose another path",
                    parent.display()
                ),
            ));
        }
    }
    if let Some(root) = &global.chroot {
        if !root.is_dir() {
            return Err(error(
                "chroot",
                root.display().to_string(),
                "directory does not exist; create it or remove the chroot option".into(),
            ));
        }
    }
    if let (Some(pid), Some(outside)) = (&global.pid, global.pid_outside_jail()) {
        if let Some(parent) = directory_of(&outside).filter(|parent| !parent.is_dir()) {
            return Err(error(
                "pid",
                pid.display().to_string(),
                format!(
                    "directory {} does not exist; create it or choose another path",
                    parent.display()
                ),
            ));
        }
    }
    Ok(())
}

/// Runs the terminator until SIGTERM or SIGINT.
pub fn run(config: Config) -> Result<(), RunError> {
    check_environment(&config)?;
    probe_io_uring()?;
    crate::tls::prepare_random();
    if crate::privsep::enabled(&config.global) {
        return run_separated(&config);
    }
    let services = load_services(&config)?;
    let global = &config.global;

    start_logging(global)?;
    let result = start_logged(global, services);
    if let Err(err) = &result {
        log_start_error(global, err);
    }
    result
}

/// Writes a start-up error to the log too: stderr already gets it from main, and
/// in daemon mode the log file is where operators look.
fn log_start_error(global: &crate::config::Global, err: &RunError) {
    if logs_beyond_stderr(global) {
        crate::error!("{err}");
    }
}

/// Tells whether log lines go somewhere other than stderr (a file or syslog).
/// Errors are logged only then, because main prints them on stderr anyway.
pub(crate) fn logs_beyond_stderr(global: &crate::config::Global) -> bool {
    (global.output.is_some() && !global.log_stderr) || global.syslog
}

/// Everything of `run` after logging has started.
fn start_logged(
    global: &crate::config::Global,
    mut services: Vec<Service>,
) -> Result<(), RunError> {
    check_kernel_tls(&services)?;

    let cpus = crate::sys::allowed_cpus();
    let workers = global.threads.unwrap_or_else(|| cpus.len().max(1)).max(1);

    let mut listeners = Vec::with_capacity(services.len());
    for service in &mut services {
        listeners.push(bind_listeners(service, workers)?);
    }

    let mut ready = if global.foreground {
        None
    } else {
        Some(daemonize()?)
    };
    let result = start_jailed(global, services, listeners, workers, &cpus, &mut ready);
    if let (Some(mut ready), Err(err)) = (ready, &result) {
        // Start-up failed in the background process: the waiting parent prints it.
        let _ = write!(ready, "{err}");
    }
    result
}

/// Runs with privilege separation: see [`crate::privsep`].
fn run_separated(config: &Config) -> Result<(), RunError> {
    start_logging(&config.global)?;
    let mut ready = if config.global.foreground {
        None
    } else {
        Some(daemonize()?)
    };
    let result = crate::privsep::parent::run(config, &mut ready);
    if let Err(err) = &result {
        log_start_error(&config.global, err);
    }
    if let (Some(mut ready), Err(err)) = (ready, &result) {
        let _ = write!(ready, "{err}");
    }
    result
}

fn start_logging(global: &crate::config::Global) -> Result<(), RunError> {
    crate::log::init(
        global.debug,
        global.output.as_deref(),
        global.log_stderr && global.output.is_some(),
        global.syslog.then_some(global.syslog_facility.as_str()),
    )
    .map_err(io_error("cannot start logging"))?;
    match crate::sys::raise_fd_limit() {
        Ok(limit) => crate::debug!("file descriptor limit: {limit}"),
        Err(err) => warning!("cannot raise the file descriptor limit: {err}"),
    }
    Ok(())
}

/// Binds `workers` listening sockets for `service` and records the bound address
/// (with the port the kernel chose for port 0) in its configuration.
pub(crate) fn bind_listeners(
    service: &mut Service,
    workers: usize,
) -> Result<Vec<std::os::fd::OwnedFd>, RunError> {
    let bound =
        listener::bind(&service.config.accept, workers).map_err(|error| RunError::Bind {
            service: service.name.clone(),
            address: worker::display_address(&service.config.accept),
            error,
        })?;
    service.config.accept = bound.bound.clone();
    Ok(bound.sockets)
}

fn start_jailed(
    global: &crate::config::Global,
    services: Vec<Service>,
    listeners: Vec<Vec<std::os::fd::OwnedFd>>,
    workers: usize,
    cpus: &[usize],
    ready: &mut Option<io::PipeWriter>,
) -> Result<(), RunError> {
    // Signals are blocked before any thread starts, so every thread inherits the
    // mask and only the main thread's sigtimedwait receives them.
    crate::sys::block_signals().map_err(io_error("cannot block signals"))?;
    // Metrics threads start after the fork, which keeps only the calling thread,
    // and before the chroot, so the stats port and histogram log can be opened.
    let metrics = start_metrics(global, &services)?;
    let pid_file = privileges::drop_privileges(global).map_err(RunError::Privileges)?;

    for service in &services {
        notice!(
            "service {} listening on {} with {workers} worker{}",
            service.name,
            worker::display_address(&service.config.accept),
            if workers == 1 { "" } else { "s" }
        );
        if service.tls.self_signed {
            warning!(
                "service {}: no certificate configured; using a self-signed certificate for localhost generated at start. Clients will not trust it; pass --cert and --key for real use",
                service.name
            );
        }
    }

    let result = run_workers(global, services, listeners, workers, cpus, ready, &metrics);
    metrics.stop();
    if let Some(path) = pid_file {
        if let Err(err) = std::fs::remove_file(&path) {
            warning!("cannot remove pid file {}: {err}", path.display());
        }
    }
    result
}

fn run_workers(
    global: &crate::config::Global,
    services: Vec<Service>,
    listeners: Vec<Vec<std::os::fd::OwnedFd>>,
    workers: usize,
    cpus: &[usize],
    ready: &mut Option<io::PipeWriter>,
    metrics: &Metrics,
) -> Result<(), RunError> {
    let services: Arc<[Service]> = services.into();
    let shared = Arc::new(Shared {
        stopping: AtomicBool::new(false),
    });

    // listeners[service][worker] becomes per_worker[worker][service].
    let mut per_worker: Vec<Vec<std::os::fd::OwnedFd>> = (0..workers).map(|_| Vec::new()).collect();
    for sockets in listeners {
        for (index, socket) in sockets.into_iter().enumerate() {
            per_worker[index].push(socket);
        }
    }

    let (started_tx, started_rx) = mpsc::channel::<Result<(), io::Error>>();
    let mut wakers = Vec::with_capacity(workers);
    let mut handles = Vec::with_capacity(workers);
    for (index, listeners) in per_worker.into_iter().enumerate() {
        let wake = crate::sys::eventfd().map_err(io_error("cannot create an eventfd"))?;
        wakers.push(
            wake.try_clone()
                .map_err(io_error("cannot duplicate an eventfd"))?,
        );
        let config = WorkerConfig {
            index,
            cpu: (workers <= cpus.len()).then(|| cpus[index]),
            listeners,
            wake,
            maxconn: global.maxconn,
            shutdown_timeout: global.shutdown_timeout,
            metrics: metrics.registry.register_worker(),
            restricted_ring: false,
            // Keys are local without privilege separation: signing needs no wait.
            suspend_signing: false,
            splice: global.splice,
        };
        let services = services.clone();
        let shared = shared.clone();
        let started = started_tx.clone();
        let handle = std::thread::Builder::new()
            .name(format!("tlsplice-worker-{index}"))
            .spawn(move || {
                let worker = match Worker::new(config, services, shared) {
                    Ok(worker) => {
                        let _ = started.send(Ok(()));
                        worker
                    }
                    Err(err) => {
                        let _ = started.send(Err(err));
                        return Ok(());
                    }
                };
                worker.run()
            })
            .map_err(io_error("cannot start a worker thread"))?;
        handles.push(handle);
    }
    drop(started_tx);
    for _ in 0..workers {
        match started_rx.recv() {
            Ok(Ok(())) => {}
            Ok(Err(err)) => return Err(RunError::IoUringUnavailable(err)),
            Err(_) => break,
        }
    }
    if let Some(mut ready) = ready.take() {
        let _ = ready.write_all(b"ok");
    }

    wait_for_stop(&shared, &wakers, &metrics.registry, &handles);

    let mut failure = None;
    for handle in handles {
        match handle.join() {
            Ok(Ok(())) => {}
            Ok(Err(err)) => {
                let message = format!("a worker failed: {err}");
                failure = Some(RunError::Worker(io::Error::new(err.kind(), message)));
            }
            Err(_) => failure = Some(RunError::Worker(io::Error::other("a worker panicked"))),
        }
    }
    notice!("stopped");
    failure.map_or(Ok(()), Err)
}

/// Handles signals until SIGTERM or SIGINT, or until a worker exits on its own,
/// then sets the stop flag and wakes the workers.
///
/// A worker that dies takes its listeners with it, so the process stops as a
/// whole and exits non-zero, for a supervisor such as systemd to restart it.
fn wait_for_stop(
    shared: &Shared,
    wakers: &[std::os::fd::OwnedFd],
    registry: &Registry,
    handles: &[std::thread::JoinHandle<io::Result<()>>],
) {
    let stop = || {
        shared.stopping.store(true, Ordering::Release);
        for wake in wakers {
            let _ = crate::sys::eventfd_signal(wake);
        }
    };
    loop {
        if let Some(index) = handles.iter().position(|handle| handle.is_finished()) {
            crate::error!("worker {index} exited unexpectedly; stopping the other workers");
            stop();
            return;
        }
        let Some(signal) = crate::sys::wait_signal(Duration::from_millis(500)) else {
            continue;
        };
        match signal {
            libc::SIGTERM | libc::SIGINT => {
                notice!("received signal {signal}; closing listeners and draining connections");
                stop();
                return;
            }
            libc::SIGUSR1 => {
                // Workers publish on their next tick; wait for it so the summary
                // includes connections that just finished.
                registry.request_publish();
                std::thread::sleep(Duration::from_millis(300));
                registry.log_summary();
            }
            libc::SIGHUP => match crate::log::reopen() {
                Ok(()) => notice!("log file reopened"),
                Err(err) => warning!(
                    "cannot reopen the log file ({err}); still writing to the open file. Inside a chroot the path may be unreachable: use logrotate's copytruncate"
                ),
            },
            _ => {}
        }
    }
}

/// The metrics registry and the threads that read it.
struct Metrics {
    registry: Arc<Registry>,
    collector: Collector,
    stats: Option<StatsServer>,
    histogram_log: Option<HistogramLogger>,
}

impl Metrics {
    /// Stops the readers and logs a final summary. Runs after the workers have
    /// exited, so their last values are published.
    fn stop(self) {
        if let Some(stats) = self.stats {
            stats.stop();
        }
        if let Some(log) = self.histogram_log {
            log.stop();
        }
        drop(self.collector);
        self.registry.log_summary();
    }
}

fn start_metrics(
    global: &crate::config::Global,
    services: &[Service],
) -> Result<Metrics, RunError> {
    let names = services
        .iter()
        .map(|service| service.name.clone())
        .collect();
    let registry = Arc::new(Registry::new(names));
    let collector = Collector::start(registry.clone(), Duration::from_millis(250))
        .map_err(io_error("cannot start the metrics collector"))?;
    let stats = match global.stats {
        Some(addr) => {
            let server = StatsServer::start(addr, registry.clone(), StatsServerOptions::default())
                .map_err(io_error(format!(
                    "stats = {addr}: cannot listen; choose a free port"
                )))?;
            notice!("stats listening on {}", server.local_addr());
            Some(server)
        }
        None => None,
    };
    let histogram_log = match &global.histogram_log {
        Some(path) => Some(
            HistogramLogger::start(path, global.histogram_log_interval, registry.clone())
                .map_err(io_error("histogram_log"))?,
        ),
        None => None,
    };
    Ok(Metrics {
        registry,
        collector,
        stats,
        histogram_log,
    })
}

/// Forks into the background. The parent waits until the child reports that its
/// workers run, so start-up errors still reach the terminal and the exit code.
/// Returns the child's end of the readiness pipe.
fn daemonize() -> Result<io::PipeWriter, RunError> {
    let (mut reader, writer) = io::pipe().map_err(io_error("cannot create a pipe"))?;
    match crate::sys::fork().map_err(io_error("cannot fork"))? {
        crate::sys::Forked::Parent(_) => {
            drop(writer);
            let mut status = Vec::new();
            let _ = reader.read_to_end(&mut status);
            if status == b"ok" {
                crate::sys::exit_now(0);
            }
            let message = String::from_utf8_lossy(&status);
            if message.is_empty() {
                eprintln!("tlsplice: the background process exited during start-up; see the log");
            } else {
                eprintln!("tlsplice: {message}");
            }
            crate::sys::exit_now(crate::cli::EXIT_STARTUP);
        }
        crate::sys::Forked::Child => {
            drop(reader);
            crate::sys::setsid().map_err(io_error("setsid failed"))?;
            crate::sys::redirect_stdio_to_null().map_err(io_error("cannot redirect stdio"))?;
            Ok(writer)
        }
    }
}
