//! Diagnostics and the connection log.
//!
//! Every line is `TIMESTAMP LEVEL MESSAGE`, with the timestamp in UTC RFC 3339 and
//! microseconds. Lines go to the `output` file (or stderr) and, with `syslog = yes`,
//! to the local syslog socket. Each line is written with one `write(2)` call on a
//! descriptor opened with O_APPEND, so lines from different workers never
//! interleave and writers share no lock.
//!
//! rustls's own `log` crate messages are passed through at `debug`. Key material is
//! never logged: rustls does not log it, and tlsplice never formats secrets.

mod connection;
mod reason;
mod time;

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::{Mutex, OnceLock};

pub use connection::ConnectionRecord;
pub use reason::CloseReason;
pub use time::format_rfc3339;

use crate::config::LogLevel;

/// Destinations of log lines, set at start; the file is reopened on SIGHUP.
struct Sink {
    output_path: Option<PathBuf>,
    /// The output file, or None for stderr.
    output: Option<File>,
    /// Also copy lines to stderr (foreground mode with an output file).
    stderr_copy: bool,
    syslog: Option<UnixDatagram>,
}

static LEVEL: AtomicU8 = AtomicU8::new(LogLevel::Notice as u8);
/// Syslog facility number; 3 is `daemon`.
static FACILITY: AtomicU8 = AtomicU8::new(3);
static SINK: OnceLock<Mutex<Sink>> = OnceLock::new();
/// Bumped when the output file is reopened, so each thread refreshes its copy.
static GENERATION: AtomicU64 = AtomicU64::new(0);

/// Starts logging. `output` is opened now, before any chroot, with O_APPEND.
/// `syslog` connects to /dev/log now for the same reason; a missing syslog socket
/// is reported once on stderr and otherwise ignored.
pub fn init(
    level: LogLevel,
    output: Option<&Path>,
    stderr_copy: bool,
    syslog: Option<&str>,
) -> io::Result<()> {
    LEVEL.store(level as u8, Ordering::Relaxed);
    if let Some(facility) = syslog {
        FACILITY.store(facility_code(facility), Ordering::Relaxed);
    }
    let file = match output {
        Some(path) => Some(open_output(path)?),
        None => None,
    };
    let syslog = if syslog.is_some() {
        match UnixDatagram::unbound().and_then(|socket| {
            socket.connect("/dev/log")?;
            Ok(socket)
        }) {
            Ok(socket) => Some(socket),
            Err(err) => {
                eprintln!("tlsplice: syslog = yes, but /dev/log is unusable ({err}); logging without syslog");
                None
            }
        }
    } else {
        None
    };
    let sink = Sink {
        output_path: output.map(Path::to_path_buf),
        output: file,
        stderr_copy,
        syslog,
    };
    if SINK.set(Mutex::new(sink)).is_err() {
        return Err(io::Error::other("logging is already initialised"));
    }
    let _ = ::log::set_logger(&RUSTLS_BRIDGE);
    ::log::set_max_level(if level >= LogLevel::Debug {
        ::log::LevelFilter::Debug
    } else {
        ::log::LevelFilter::Warn
    });
    Ok(())
}

fn open_output(path: &Path) -> io::Result<File> {
    OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(|err| {
            io::Error::new(
                err.kind(),
                format!("cannot open log file {}: {err}", path.display()),
            )
        })
}

/// Reopens the output file for log rotation. Inside a chroot the path may no
/// longer be reachable; then the open file is kept and the error returned.
pub fn reopen() -> io::Result<()> {
    let Some(sink) = SINK.get() else {
        return Ok(());
    };
    let mut sink = sink.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    let Some(path) = sink.output_path.clone() else {
        return Ok(());
    };
    let file = open_output(&path)?;
    sink.output = Some(file);
    GENERATION.fetch_add(1, Ordering::Release);
    Ok(())
}

/// Returns a duplicate of the open output file's descriptor, or `None` when
/// lines go to stderr.
pub fn output_file() -> Option<File> {
    let sink = SINK
        .get()?
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    sink.output.as_ref()?.try_clone().ok()
}

/// Writes further lines to `file` in place of the output file, for a jailed
/// process that cannot open the path itself and gets the file from the parent.
pub fn replace_output(file: File) {
    let Some(sink) = SINK.get() else {
        return;
    };
    let mut sink = sink.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    sink.output = Some(file);
    GENERATION.fetch_add(1, Ordering::Release);
}

pub fn enabled(level: LogLevel) -> bool {
    level as u8 <= LEVEL.load(Ordering::Relaxed)
}

/// Per-thread copies of the sink's descriptors, refreshed after a reopen.
struct LocalSink {
    generation: u64,
    output: Option<File>,
    stderr_copy: bool,
    syslog: Option<UnixDatagram>,
}

thread_local! {
    static LOCAL: std::cell::RefCell<Option<LocalSink>> = const { std::cell::RefCell::new(None) };
}

fn local_sink() -> Option<LocalSink> {
    let sink = SINK
        .get()?
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    Some(LocalSink {
        generation: GENERATION.load(Ordering::Acquire),
        output: sink.output.as_ref().and_then(|file| file.try_clone().ok()),
        stderr_copy: sink.stderr_copy,
        syslog: sink
            .syslog
            .as_ref()
            .and_then(|socket| socket.try_clone().ok()),
    })
}

/// Writes `message` as a warning for the first event that `seen` counts, and at
/// debug level for the later ones, so a fault that repeats does not flood the
/// log.
pub fn warn_first(seen: &AtomicU64, message: std::fmt::Arguments<'_>) {
    let level = if seen.fetch_add(1, Ordering::Relaxed) == 0 {
        LogLevel::Warning
    } else {
        LogLevel::Debug
    };
    write(level, message);
}

/// Writes one line at `level`.
pub fn write(level: LogLevel, message: std::fmt::Arguments<'_>) {
    if !enabled(level) {
        return;
    }
    let mut line = String::with_capacity(256);
    use std::fmt::Write as _;
    let _ = writeln!(
        line,
        "{} {} {}",
        format_rfc3339(std::time::SystemTime::now()),
        level_name(level),
        message
    );
    LOCAL.with(|local| {
        let mut local = local.borrow_mut();
        let stale = local
            .as_ref()
            .is_none_or(|sink| sink.generation != GENERATION.load(Ordering::Acquire));
        if stale {
            *local = local_sink();
        }
        match local.as_mut() {
            Some(sink) => {
                match sink.output.as_mut() {
                    Some(file) => {
                        let _ = file.write_all(line.as_bytes());
                        if sink.stderr_copy {
                            let _ = io::stderr().write_all(line.as_bytes());
                        }
                    }
                    None => {
                        let _ = io::stderr().write_all(line.as_bytes());
                    }
                }
                if let Some(syslog) = &sink.syslog {
                    let _ = syslog.send(syslog_datagram(level, &line).as_bytes());
                }
            }
            None => {
                let _ = io::stderr().write_all(line.as_bytes());
            }
        }
    });
}

fn syslog_datagram(level: LogLevel, line: &str) -> String {
    // The message without our timestamp, which syslog adds.
    let message = line.splitn(3, ' ').nth(2).unwrap_or(line).trim_end();
    let priority = FACILITY.load(Ordering::Relaxed) * 8 + level as u8;
    format!("<{priority}>tlsplice[{}]: {message}", std::process::id())
}

/// Maps a facility name that the configuration accepted to its number, as
/// RFC 5424 assigns them.
fn facility_code(name: &str) -> u8 {
    match name {
        "kern" => 0,
        "user" => 1,
        "mail" => 2,
        "auth" => 4,
        "syslog" => 5,
        "lpr" => 6,
        "news" => 7,
        "uucp" => 8,
        "cron" => 9,
        "authpriv" => 10,
        "ftp" => 11,
        local if local.starts_with("local") => 16 + local[5..].parse::<u8>().unwrap_or(0).min(7),
        _ => 3,
    }
}

pub fn level_name(level: LogLevel) -> &'static str {
    match level {
        LogLevel::Emerg => "emerg",
        LogLevel::Alert => "alert",
        LogLevel::Crit => "crit",
        LogLevel::Err => "err",
        LogLevel::Warning => "warning",
        LogLevel::Notice => "notice",
        LogLevel::Info => "info",
        LogLevel::Debug => "debug",
    }
}

/// Passes messages from libraries using the `log` crate (rustls) through at
/// `debug`, and their warnings and errors at `info`. rustls warns about what
/// clients do, such as sending a close_notify alert, so these are no fault of
/// the server. Each failed handshake is logged at `info` with its cause anyway.
struct RustlsBridge;

static RUSTLS_BRIDGE: RustlsBridge = RustlsBridge;

impl ::log::Log for RustlsBridge {
    fn enabled(&self, metadata: &::log::Metadata<'_>) -> bool {
        metadata.level() <= ::log::max_level()
    }

    fn log(&self, record: &::log::Record<'_>) {
        let level = match record.level() {
            ::log::Level::Error | ::log::Level::Warn => LogLevel::Info,
            _ => LogLevel::Debug,
        };
        write(
            level,
            format_args!("{}: {}", record.target(), record.args()),
        );
    }

    fn flush(&self) {}
}

#[macro_export]
macro_rules! log_at {
    ($level:expr, $($arg:tt)*) => {
        $crate::log::write($level, format_args!($($arg)*))
    };
}

#[macro_export]
macro_rules! error {
    ($($arg:tt)*) => { $crate::log_at!($crate::config::LogLevel::Err, $($arg)*) };
}

#[macro_export]
macro_rules! warning {
    ($($arg:tt)*) => { $crate::log_at!($crate::config::LogLevel::Warning, $($arg)*) };
}

#[macro_export]
macro_rules! notice {
    ($($arg:tt)*) => { $crate::log_at!($crate::config::LogLevel::Notice, $($arg)*) };
}

#[macro_export]
macro_rules! info {
    ($($arg:tt)*) => { $crate::log_at!($crate::config::LogLevel::Info, $($arg)*) };
}

#[macro_export]
macro_rules! debug {
    ($($arg:tt)*) => {
        if $crate::log::enabled($crate::config::LogLevel::Debug) {
            $crate::log_at!($crate::config::LogLevel::Debug, $($arg)*)
        }
    };
}
