//! Configuration: the stunnel-style file format and the command-line form.
//!
//! [`parse`] turns text into a validated [`Config`]. Everything after this module
//! trusts a `Config`: addresses are resolved, numbers are in range, and each service
//! has at least one certificate and a backend.

mod conflicts;
mod error;
mod flags;
mod options;
mod parse;
#[cfg(test)]
mod tests;
mod value;

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

pub use error::ConfigError;
pub use parse::{parse_file, parse_str};

/// A whole validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// The file the configuration came from, if any.
    pub source: Option<PathBuf>,
    pub global: Global,
    pub services: Vec<Service>,
}

/// Options that apply to the whole process.
#[derive(Debug, Clone)]
pub struct Global {
    pub chroot: Option<PathBuf>,
    /// Pid file path; with `chroot`, the path is inside the jail.
    pub pid: Option<PathBuf>,
    pub setuid: Option<String>,
    pub setgid: Option<String>,
    /// Log file, opened before chroot. `None` writes to stderr.
    pub output: Option<PathBuf>,
    pub syslog: bool,
    /// Syslog facility from `debug = facility.level`; `daemon` unless given.
    pub syslog_facility: String,
    pub foreground: bool,
    /// `true` copies log lines to stderr: set by `foreground = yes`, not by `quiet`.
    pub log_stderr: bool,
    pub debug: LogLevel,
    /// Worker threads; `None` means one per online CPU.
    pub threads: Option<usize>,
    /// Maximum open connections per worker.
    pub maxconn: usize,
    /// How long SIGTERM waits for open connections before closing them.
    pub shutdown_timeout: Duration,
    /// `stats`: address of the metrics HTTP listener.
    pub stats: Option<SocketAddr>,
    /// `histogram_log`: HdrHistogram interval log file.
    pub histogram_log: Option<PathBuf>,
    pub histogram_log_interval: Duration,
    /// `privsep`; `None` means yes when started as root.
    pub privsep: Option<bool>,
    /// Splice mode of the kernel TLS relay (the `splice` option).
    pub splice: SpliceMode,
}

impl Global {
    /// Returns the pid file's path as seen from outside the jail: inside
    /// `chroot` when one is set, because the pid file is written after the
    /// process enters it.
    pub fn pid_outside_jail(&self) -> Option<PathBuf> {
        let pid = self.pid.as_ref()?;
        Some(match &self.chroot {
            Some(root) => root.join(pid.strip_prefix("/").unwrap_or(pid)),
            None => pid.clone(),
        })
    }
}

impl Default for Global {
    /// stunnel's defaults where stunnel has the option, and tlsplice's otherwise.
    fn default() -> Self {
        Global {
            chroot: None,
            pid: None,
            setuid: None,
            setgid: None,
            output: None,
            syslog: true,
            syslog_facility: "daemon".to_string(),
            foreground: false,
            log_stderr: false,
            debug: LogLevel::Notice,
            threads: None,
            maxconn: 32768,
            shutdown_timeout: Duration::from_secs(30),
            stats: None,
            histogram_log: None,
            histogram_log_interval: Duration::from_secs(10),
            privsep: None,
            splice: SpliceMode::default(),
        }
    }
}

/// Log severity, with syslog's numbering as stunnel's `debug` option uses it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum LogLevel {
    Emerg = 0,
    Alert = 1,
    Crit = 2,
    Err = 3,
    Warning = 4,
    Notice = 5,
    Info = 6,
    Debug = 7,
}

/// One `[section]`: a listening address and what to do with its connections.
#[derive(Debug, Clone)]
pub struct Service {
    /// Section name; `default` for a service written among the global options.
    pub name: String,
    pub accept: Address,
    /// Backends, tried in order until one accepts the connection.
    pub connect: Vec<Address>,
    /// Source address of the backend connection.
    pub local: Option<IpAddr>,
    /// Certificates offered by this listener. The first is the default when no
    /// other matches the client's server name.
    pub certs: Vec<CertSource>,
    /// Certificates picked by server name (stunnel's `sni = service:pattern`
    /// sections), each with its own backend list.
    pub sni: Vec<SniRoute>,
    pub alpn: Vec<String>,
    pub tls_min: TlsVersion,
    pub tls_max: TlsVersion,
    /// TLS 1.3 suite names (`ciphersuites`) and TLS 1.2 names (`ciphers`) mapped to
    /// rustls suites. `None` keeps rustls's defaults.
    pub cipher_suites: Option<Vec<rustls::CipherSuite>>,
    pub timeouts: Timeouts,
    pub ktls: KtlsMode,
    /// No certificate was configured: generate a self-signed one for localhost.
    /// Only the command-line form sets this.
    pub self_signed: bool,
    /// PROXY protocol header sent to the backend.
    pub proxy_protocol: Option<ProxyVersion>,
    /// `accept_proxy`: read a PROXY header before the ClientHello.
    pub accept_proxy: bool,
    /// `transparent = source`: connect to the backend from the client's address.
    pub transparent_source: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProxyVersion {
    V1,
    V2,
}

/// A certificate chain and the file holding its private key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertSource {
    pub cert: PathBuf,
    /// `None` when the key sits in the certificate file, as stunnel allows.
    pub key: Option<PathBuf>,
    /// Location of the `cert` option, for error messages.
    pub origin: Origin,
    /// Location of the `key` option, when there is one.
    pub key_origin: Option<Origin>,
}

/// A server-name route on a listener.
#[derive(Debug, Clone)]
pub struct SniRoute {
    /// The section that declared the route.
    pub name: String,
    /// Server name pattern; `*.example.com` matches one label.
    pub pattern: String,
    pub cert: CertSource,
    /// Backends for this name; empty means the parent service's.
    pub connect: Vec<Address>,
}

/// A file name and line, for error messages about values checked after parsing.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Origin {
    pub file: Option<PathBuf>,
    pub line: usize,
    pub option: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Address {
    Inet(SocketAddr),
    Unix(PathBuf),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum TlsVersion {
    Tls12,
    Tls13,
}

/// Timeouts with stunnel's names and defaults.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    /// `TIMEOUTbusy`: waiting for a peer to take data that is ready to send.
    pub busy: Duration,
    /// `TIMEOUTidle`: no data in either direction.
    pub idle: Duration,
    /// `TIMEOUTconnect`: connecting to the backend.
    pub connect: Duration,
    /// `TIMEOUTclose`: after one side has closed, waiting for the other.
    pub close: Duration,
    /// `TIMEOUThandshake`: from accept to the end of the TLS handshake.
    pub handshake: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            busy: Duration::from_secs(300),
            idle: Duration::from_secs(43200),
            connect: Duration::from_secs(10),
            close: Duration::from_secs(60),
            handshake: Duration::from_secs(10),
        }
    }
}

/// The `ktls` option.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum KtlsMode {
    #[default]
    Auto,
    On,
    Off,
}

/// The `splice` option: how the kernel TLS relay runs splice(2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SpliceMode {
    /// Non-blocking splice(2) calls from the worker thread, with readiness
    /// polls through the worker's io_uring. The default, because it used less
    /// CPU per relayed byte than `Ring` in `examples/splice_bench.rs` (figures
    /// and machine in perf/ktls.md).
    #[default]
    Direct,
    /// `IORING_OP_SPLICE` requests on the worker's io_uring, which the kernel
    /// runs on io-wq worker threads.
    Ring,
}

/// One service given on the command line instead of a file.
#[derive(Debug, Clone, Default)]
pub struct Flags {
    pub accept: String,
    pub connect: String,
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
    pub threads: Option<usize>,
    pub foreground: bool,
}

impl Config {
    /// Builds a one-service configuration named `default` from command-line flags.
    /// It runs in the foreground, logs to stderr and not to syslog, and uses a
    /// self-signed certificate when no `cert` is given. Errors name the flag
    /// (`--accept`) and carry no file or line.
    pub fn from_flags(flags: &Flags) -> Result<Config, ConfigError> {
        flags::config_from_flags(flags, value::system_resolve)
    }
}
