//! The stunnel file format: comment lines, `[section]` headers and
//! `option = value` lines, checked one by one and then assembled into services.

use std::collections::HashMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use rustls::CipherSuite;

use super::conflicts::{self, AcceptOrigin};
use super::options::{self, Opt, Scope};
use super::value::{self, Bound, PortZero, Resolver};
use super::{
    Address, CertSource, Config, ConfigError, Global, KtlsMode, Origin, ProxyVersion, Service,
    SniRoute, Timeouts, TlsVersion,
};

/// Reads and validates a configuration file.
pub fn parse_file(path: &Path) -> Result<Config, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|err| ConfigError {
        file: Some(path.to_path_buf()),
        line: 0,
        option: None,
        value: None,
        message: format!(
            "failed to read configuration file: {err}; check the path and its permissions"
        ),
    })?;
    parse_str(&text, Some(path))
}

/// Parses and validates configuration text; `file` is used in error messages.
pub fn parse_str(text: &str, file: Option<&Path>) -> Result<Config, ConfigError> {
    parse_with(text, file, value::system_resolve)
}

/// Parses with a given host name resolver, so that tests need no DNS.
pub(super) fn parse_with(
    text: &str,
    file: Option<&Path>,
    resolve: Resolver,
) -> Result<Config, ConfigError> {
    let context = Context {
        file: file.map(Path::to_path_buf),
        resolve,
    };
    let mut parser = Parser {
        context,
        global: Global::default(),
        defaults: ServiceScope::default(),
        sections: Vec::new(),
    };

    // A UTF-8 byte order mark, as some Windows editors write, is not part of the first line.
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    for (index, raw) in text.lines().enumerate() {
        parser.line(index + 1, raw.trim())?;
    }
    parser.finish()
}

/// The file name and resolver that every check needs besides the line itself.
struct Context {
    file: Option<PathBuf>,
    resolve: Resolver,
}

impl Context {
    fn error(&self, line: usize, message: String) -> ConfigError {
        ConfigError {
            file: self.file.clone(),
            line,
            option: None,
            value: None,
            message,
        }
    }

    fn error_at(&self, entry: &Entry, message: String) -> ConfigError {
        ConfigError {
            file: self.file.clone(),
            line: entry.line,
            option: Some(entry.option.clone()),
            value: Some(entry.value.clone()),
            message,
        }
    }

    /// Adds the location of `entry` to the message of a failed value check.
    fn check<T>(&self, entry: &Entry, result: Result<T, String>) -> Result<T, ConfigError> {
        result.map_err(|message| self.error_at(entry, message))
    }

    fn origin(&self, entry: &Entry) -> Origin {
        Origin {
            file: self.file.clone(),
            line: entry.line,
            option: entry.option.clone(),
        }
    }
}

/// One `option = value` line, with the option spelled as written.
#[derive(Debug, Clone)]
struct Entry {
    line: usize,
    option: String,
    value: String,
}

/// Service options from one section, or the defaults written before the first
/// section. `None` and empty lists mean "not written here".
#[derive(Default)]
struct ServiceScope {
    name: String,
    /// Line of the `[section]` header; 0 for the part before the first section.
    header_line: usize,
    /// The line that set each single-valued field, to report duplicates.
    seen: HashMap<&'static str, Entry>,
    /// Every service option written in this scope, in order.
    written: Vec<(Opt, Entry)>,
    accept: Option<Address>,
    connect: Vec<Address>,
    local: Option<IpAddr>,
    certs: Vec<CertSource>,
    /// Line of the `key` that belongs to each entry of `certs`.
    key_lines: Vec<Option<usize>>,
    /// A `key` written before any `cert` in this scope; it goes to the first `cert`.
    early_key: Option<(PathBuf, Entry)>,
    sni: Option<(String, String, Entry)>,
    alpn: Option<Vec<String>>,
    tls_min: Option<(TlsVersion, Entry)>,
    tls_max: Option<(TlsVersion, Entry)>,
    tls13_suites: Option<Vec<CipherSuite>>,
    tls12_suites: Option<Vec<CipherSuite>>,
    busy: Option<Duration>,
    idle: Option<Duration>,
    connect_timeout: Option<Duration>,
    close: Option<Duration>,
    handshake: Option<Duration>,
    ktls: Option<KtlsMode>,
    proxy_protocol: Option<ProxyVersion>,
    accept_proxy: Option<bool>,
    transparent: Option<bool>,
}

impl ServiceScope {
    fn is_global_part(&self) -> bool {
        self.header_line == 0
    }

    /// Records that `field` is set by `entry`, or reports the line that set it first.
    fn mark(
        &mut self,
        context: &Context,
        field: &'static str,
        entry: &Entry,
    ) -> Result<(), ConfigError> {
        if let Some(first) = self.seen.get(field) {
            let message = if first.option.eq_ignore_ascii_case(&entry.option) {
                format!(
                    "already set on line {}; remove one of the two lines",
                    first.line
                )
            } else {
                format!(
                    "conflicts with `{}` on line {}; remove one of them",
                    first.option, first.line
                )
            };
            return Err(context.error_at(entry, message));
        }
        self.seen.insert(field, entry.clone());
        Ok(())
    }
}

struct Parser {
    context: Context,
    global: Global,
    defaults: ServiceScope,
    sections: Vec<ServiceScope>,
}

impl Parser {
    fn line(&mut self, number: usize, line: &str) -> Result<(), ConfigError> {
        if line.is_empty() || line.starts_with(';') || line.starts_with('#') {
            return Ok(());
        }
        if let Some(rest) = line.strip_prefix('[') {
            return self.section(number, line, rest);
        }
        let Some((option, value)) = line.split_once('=') else {
            return Err(self.context.error(
                number,
                format!("invalid line `{line}`; write `option = value`, `[section]` or a comment starting with ; or #"),
            ));
        };
        let entry = Entry {
            line: number,
            option: option.trim().to_string(),
            value: value.trim().to_string(),
        };
        // stunnel reads a `;` after a value as part of the value, so an inline
        // comment silently changes a path. Reject the common form instead.
        if let Some(start) = entry.value.find(" ;").or_else(|| entry.value.find(" #")) {
            return Err(self.context.error_at(
                &entry,
                format!(
                    "comments must be on their own line; move `{}` to a line of its own",
                    entry.value[start + 1..].trim()
                ),
            ));
        }
        self.option(&entry)
    }

    fn section(&mut self, number: usize, line: &str, rest: &str) -> Result<(), ConfigError> {
        let Some(name) = rest.strip_suffix(']') else {
            return Err(self.context.error(
                number,
                format!("invalid section header `{line}`; write it as [name]"),
            ));
        };
        let name = name.trim();
        if name.is_empty() {
            return Err(self
                .context
                .error(number, "empty section name; write it as [name]".to_string()));
        }
        if let Some(first) = self.sections.iter().find(|section| section.name == name) {
            return Err(self.context.error(
                number,
                format!(
                    "duplicate section [{name}], first defined on line {}; rename one of them",
                    first.header_line
                ),
            ));
        }
        if name == DEFAULT_SERVICE && self.defaults.accept.is_some() {
            return Err(self.context.error(
                number,
                format!(
                    "section [{name}] has the name of the service defined by `accept` before the first section; rename the section"
                ),
            ));
        }
        self.sections.push(ServiceScope {
            name: name.to_string(),
            header_line: number,
            ..ServiceScope::default()
        });
        Ok(())
    }

    fn option(&mut self, entry: &Entry) -> Result<(), ConfigError> {
        let Some((canonical, opt, scope)) = options::lookup(&entry.option) else {
            return Err(self.unknown(entry));
        };
        if entry.value.is_empty() {
            return Err(ConfigError {
                value: None,
                ..self.context.error_at(
                    entry,
                    format!(
                        "missing value; write `{canonical} = {}`",
                        options::syntax(opt)
                    ),
                )
            });
        }
        match (scope, self.sections.last_mut()) {
            (Scope::Global, Some(_)) => Err(self.context.error_at(
                entry,
                format!("`{canonical}` is a global option; move it above the first [section]"),
            )),
            (Scope::Global, None) => self.global_option(canonical, opt, entry),
            (Scope::Service, Some(section)) => service_option(&self.context, section, opt, entry),
            (Scope::Service, None) => service_option(&self.context, &mut self.defaults, opt, entry),
        }
    }

    fn unknown(&self, entry: &Entry) -> ConfigError {
        if let Some(hint) = options::unimplemented_hint(&entry.option) {
            return self.context.error_at(
                entry,
                format!(
                    "stunnel option `{}` is not implemented by tlsplice; remove it (or {hint})",
                    entry.option
                ),
            );
        }
        let message = match options::suggest(&entry.option) {
            Some(near) => format!("unknown option; did you mean `{near}`?"),
            None => {
                "unknown option; see docs/configuration.md for the supported options".to_string()
            }
        };
        self.context.error_at(entry, message)
    }

    fn global_option(
        &mut self,
        canonical: &'static str,
        opt: Opt,
        entry: &Entry,
    ) -> Result<(), ConfigError> {
        let context = &self.context;
        let global = &mut self.global;
        self.defaults.mark(context, canonical, entry)?;

        let value = entry.value.as_str();
        match opt {
            Opt::Chroot => global.chroot = Some(context.check(entry, value::absolute_path(value))?),
            Opt::Pid => global.pid = Some(PathBuf::from(value)),
            Opt::Setuid => {
                context.check(entry, value::user_name(value))?;
                global.setuid = Some(value.to_string());
            }
            Opt::Setgid => {
                context.check(entry, value::group_name(value))?;
                global.setgid = Some(value.to_string());
            }
            Opt::Output => global.output = Some(PathBuf::from(value)),
            Opt::Syslog => global.syslog = context.check(entry, value::yes_no(value))?,
            Opt::Foreground => {
                (global.foreground, global.log_stderr) =
                    context.check(entry, value::foreground(value))?
            }
            Opt::Debug => {
                let (facility, level) = context.check(entry, value::debug(value))?;
                if let Some(facility) = facility {
                    global.syslog_facility = facility;
                }
                global.debug = level;
            }
            Opt::Threads => {
                global.threads = Some(
                    context.check(entry, value::count(value, "thread count", 1, MAX_THREADS))?,
                )
            }
            Opt::Maxconn => {
                global.maxconn = context.check(
                    entry,
                    value::count(value, "connection limit", 1, MAX_CONNECTIONS),
                )?
            }
            Opt::ShutdownTimeout => {
                global.shutdown_timeout = context.check(entry, value::seconds(value, 30, true))?
            }
            Opt::Stats => global.stats = Some(context.check(entry, value::stats_address(value))?),
            Opt::HistogramLog => global.histogram_log = Some(PathBuf::from(value)),
            Opt::HistogramLogInterval => {
                global.histogram_log_interval =
                    context.check(entry, value::seconds(value, 10, false))?
            }
            Opt::Privsep => global.privsep = Some(context.check(entry, value::yes_no(value))?),
            Opt::Splice => global.splice = context.check(entry, value::splice(value))?,
            _ => unreachable!("{opt:?} is a service option"),
        }
        Ok(())
    }

    fn finish(self) -> Result<Config, ConfigError> {
        let context = &self.context;
        for scope in std::iter::once(&self.defaults).chain(&self.sections) {
            if let Some((_, entry)) = &scope.early_key {
                return Err(context.error_at(
                    entry,
                    "no `cert` for this key; add the `cert` line it belongs to in the same section"
                        .to_string(),
                ));
            }
        }

        let mut services = Vec::new();
        if self.sections.is_empty() && self.defaults.written.is_empty() {
            return Err(context.error(
                0,
                "no service defined; add a [section] with accept, connect and cert options"
                    .to_string(),
            ));
        }
        if self.sections.is_empty() || self.defaults.accept.is_some() {
            let empty = ServiceScope::default();
            services.push(build_service(
                context,
                DEFAULT_SERVICE,
                &self.defaults,
                &empty,
            )?);
        }
        for section in self.sections.iter().filter(|section| section.sni.is_none()) {
            services.push(build_service(
                context,
                &section.name,
                section,
                &self.defaults,
            )?);
        }

        let mut routes: Vec<(usize, String, usize, String)> = Vec::new();
        for section in self.sections.iter().filter(|section| section.sni.is_some()) {
            let (parent, route) =
                build_sni_route(context, section, &self.defaults, &services, &self.sections)?;
            if let Some((_, _, line, name)) = routes.iter().find(|(other_parent, pattern, _, _)| {
                *other_parent == parent && *pattern == route.pattern
            }) {
                let (_, _, entry) = section.sni.as_ref().expect("filtered on sni");
                return Err(context.error_at(
                    entry,
                    format!(
                        "server name `{}` is already routed to [{name}] on line {line}; remove one of them",
                        route.pattern
                    ),
                ));
            }
            routes.push((
                parent,
                route.pattern.clone(),
                section.header_line,
                section.name.clone(),
            ));
            services[parent].sni.push(route);
        }

        self.check_conflicts(&services)?;
        Ok(Config {
            source: context.file.clone(),
            global: self.global,
            services,
        })
    }

    /// Runs the checks between global options and the services' addresses.
    fn check_conflicts(&self, services: &[Service]) -> Result<(), ConfigError> {
        let context = &self.context;
        let origins: HashMap<&'static str, Origin> = self
            .defaults
            .seen
            .iter()
            .map(|(option, entry)| (*option, context.origin(entry)))
            .collect();
        conflicts::check_file_paths(&self.global, &origins)?;

        let accepts: Vec<AcceptOrigin> = services
            .iter()
            .map(|service| {
                let scope = if service.name == DEFAULT_SERVICE && self.defaults.accept.is_some() {
                    &self.defaults
                } else {
                    self.sections
                        .iter()
                        .find(|section| section.name == service.name)
                        .expect("every service comes from a section or the global part")
                };
                AcceptOrigin {
                    service: &service.name,
                    address: &service.accept,
                    origin: scope
                        .seen
                        .get("accept")
                        .map(|entry| context.origin(entry))
                        .unwrap_or_default(),
                }
            })
            .collect();
        conflicts::check_stats_address(&self.global, origins.get("stats"), &accepts)
    }
}

const DEFAULT_SERVICE: &str = "default";
const MAX_THREADS: usize = 1024;
/// Highest `maxconn`.
// NOTE: chosen to fit a u32, not measured; the open-file limit is usually lower.
const MAX_CONNECTIONS: usize = u32::MAX as usize;

/// Checks one service option and stores it in `scope`.
fn service_option(
    context: &Context,
    scope: &mut ServiceScope,
    opt: Opt,
    entry: &Entry,
) -> Result<(), ConfigError> {
    scope.written.push((opt, entry.clone()));
    let value = entry.value.as_str();
    match opt {
        Opt::Accept => {
            scope.mark(context, "accept", entry)?;
            scope.accept = Some(context.check(
                entry,
                value::address(value, PortZero::Allowed, context.resolve),
            )?);
        }
        Opt::Connect => {
            let address = context.check(
                entry,
                value::address(value, PortZero::Rejected, context.resolve),
            )?;
            scope.connect.push(address);
        }
        Opt::Local => {
            scope.mark(context, "local", entry)?;
            scope.local = Some(context.check(entry, value::ip(value))?);
        }
        Opt::Cert => {
            let path = PathBuf::from(value);
            context.check(entry, value::readable_file(&path))?;
            let early_key = scope.early_key.take();
            scope
                .key_lines
                .push(early_key.as_ref().map(|(_, key_entry)| key_entry.line));
            scope.certs.push(CertSource {
                cert: path,
                key_origin: early_key
                    .as_ref()
                    .map(|(_, key_entry)| context.origin(key_entry)),
                key: early_key.map(|(key, _)| key),
                origin: context.origin(entry),
            });
        }
        Opt::Key => key_option(context, scope, entry)?,
        Opt::Sni => {
            if scope.is_global_part() {
                return Err(context.error_at(
                    entry,
                    "`sni` must be in a [section] of its own; add a section header above it"
                        .to_string(),
                ));
            }
            scope.mark(context, "sni", entry)?;
            let (parent, pattern) = context.check(entry, value::sni(value))?;
            scope.sni = Some((parent, pattern, entry.clone()));
        }
        Opt::Alpn => {
            scope.mark(context, "alpn", entry)?;
            scope.alpn = Some(context.check(entry, value::alpn(value))?);
        }
        Opt::SslVersionMin => {
            scope.mark(context, "tls_min", entry)?;
            scope.tls_min = Some((
                context.check(entry, value::tls_version(value, Bound::Min))?,
                entry.clone(),
            ));
        }
        Opt::SslVersionMax => {
            scope.mark(context, "tls_max", entry)?;
            scope.tls_max = Some((
                context.check(entry, value::tls_version(value, Bound::Max))?,
                entry.clone(),
            ));
        }
        Opt::SslVersion => {
            scope.mark(context, "tls_min", entry)?;
            scope.mark(context, "tls_max", entry)?;
            scope.tls_min = Some((
                context.check(entry, value::tls_version(value, Bound::Min))?,
                entry.clone(),
            ));
            scope.tls_max = Some((
                context.check(entry, value::tls_version(value, Bound::Max))?,
                entry.clone(),
            ));
        }
        Opt::Ciphersuites => {
            scope.mark(context, "ciphersuites", entry)?;
            let suites =
                value::cipher_list(value, value::TLS13_SUITES, value::TLS12_SUITES, "ciphers");
            scope.tls13_suites = Some(context.check(entry, suites)?);
        }
        Opt::Ciphers => {
            scope.mark(context, "ciphers", entry)?;
            let suites = value::cipher_list(
                value,
                value::TLS12_SUITES,
                value::TLS13_SUITES,
                "ciphersuites",
            );
            scope.tls12_suites = Some(context.check(entry, suites)?);
        }
        Opt::TimeoutBusy => {
            scope.busy = Some(timeout(context, scope, entry, "busy", defaults().busy)?)
        }
        Opt::TimeoutIdle => {
            scope.idle = Some(timeout(context, scope, entry, "idle", defaults().idle)?)
        }
        Opt::TimeoutConnect => {
            scope.connect_timeout = Some(timeout(
                context,
                scope,
                entry,
                "connect_timeout",
                defaults().connect,
            )?)
        }
        Opt::TimeoutClose => {
            scope.close = Some(timeout(context, scope, entry, "close", defaults().close)?)
        }
        Opt::TimeoutHandshake => {
            scope.handshake = Some(timeout(
                context,
                scope,
                entry,
                "handshake",
                defaults().handshake,
            )?)
        }
        Opt::Ktls => {
            scope.mark(context, "ktls", entry)?;
            scope.ktls = Some(context.check(entry, value::ktls(value))?);
        }
        Opt::Protocol => {
            scope.mark(context, "proxy_protocol", entry)?;
            scope.proxy_protocol = Some(context.check(entry, value::protocol(value))?);
        }
        Opt::ProxyProtocol => {
            scope.mark(context, "proxy_protocol", entry)?;
            scope.proxy_protocol = Some(context.check(entry, value::proxy_version(value))?);
        }
        Opt::AcceptProxy => {
            scope.mark(context, "accept_proxy", entry)?;
            scope.accept_proxy = Some(context.check(entry, value::yes_no(value))?);
        }
        Opt::Transparent => {
            scope.mark(context, "transparent", entry)?;
            scope.transparent = Some(context.check(entry, value::transparent(value))?);
        }
        _ => unreachable!("{opt:?} is a global option"),
    }
    Ok(())
}

fn defaults() -> Timeouts {
    Timeouts::default()
}

fn timeout(
    context: &Context,
    scope: &mut ServiceScope,
    entry: &Entry,
    field: &'static str,
    default: Duration,
) -> Result<Duration, ConfigError> {
    scope.mark(context, field, entry)?;
    value::seconds(&entry.value, default.as_secs(), false)
        .map_err(|message| context.error_at(entry, message))
}

/// Attaches a `key` to the most recent `cert` of the scope, or keeps it for the
/// first `cert` when none has been written yet (stunnel lets `key` come first).
fn key_option(
    context: &Context,
    scope: &mut ServiceScope,
    entry: &Entry,
) -> Result<(), ConfigError> {
    let path = PathBuf::from(&entry.value);
    value::readable_file(&path).map_err(|message| context.error_at(entry, message))?;

    let Some(cert) = scope.certs.last_mut() else {
        if let Some((_, first)) = &scope.early_key {
            return Err(context.error_at(
                entry,
                format!(
                    "already set on line {}; remove one of the two lines",
                    first.line
                ),
            ));
        }
        scope.early_key = Some((path, entry.clone()));
        return Ok(());
    };
    let key_line = scope.key_lines.last_mut().expect("one key line per cert");
    if let Some(line) = key_line {
        return Err(context.error_at(
            entry,
            format!(
                "the cert on line {} already has its key on line {line}; add a `cert` line before this key",
                cert.origin.line
            ),
        ));
    }
    cert.key = Some(path);
    cert.key_origin = Some(context.origin(entry));
    *key_line = Some(entry.line);
    Ok(())
}

/// Builds a listening service from its own options, falling back to `defaults`.
fn build_service(
    context: &Context,
    name: &str,
    own: &ServiceScope,
    defaults: &ServiceScope,
) -> Result<Service, ConfigError> {
    let missing = |option: &str, example: &str| {
        let what = if own.is_global_part() {
            format!("service [{name}]")
        } else {
            format!("section [{name}]")
        };
        context.error(
            own.header_line,
            format!("{what} has no `{option}`; add `{option} = {example}`"),
        )
    };

    let accept = own
        .accept
        .clone()
        .ok_or_else(|| missing("accept", "[host:]port"))?;
    let connect = if own.connect.is_empty() {
        &defaults.connect
    } else {
        &own.connect
    };
    if connect.is_empty() {
        return Err(missing("connect", "host:port"));
    }
    let certs = if own.certs.is_empty() {
        &defaults.certs
    } else {
        &own.certs
    };
    if certs.is_empty() {
        return Err(missing("cert", "/path/to/cert.pem"));
    }

    let tls_min = own.tls_min.as_ref().or(defaults.tls_min.as_ref());
    let tls_max = own.tls_max.as_ref().or(defaults.tls_max.as_ref());
    if let (Some((min, min_entry)), Some((max, max_entry))) = (tls_min, tls_max) {
        if min > max {
            let later = if min_entry.line >= max_entry.line {
                min_entry
            } else {
                max_entry
            };
            return Err(context.error_at(
                later,
                format!(
                    "sslVersionMin {} is above sslVersionMax {}; lower sslVersionMin or raise sslVersionMax",
                    min_entry.value, max_entry.value
                ),
            ));
        }
    }

    let fallback = Timeouts::default();
    let timeouts = Timeouts {
        busy: own.busy.or(defaults.busy).unwrap_or(fallback.busy),
        idle: own.idle.or(defaults.idle).unwrap_or(fallback.idle),
        connect: own
            .connect_timeout
            .or(defaults.connect_timeout)
            .unwrap_or(fallback.connect),
        close: own.close.or(defaults.close).unwrap_or(fallback.close),
        handshake: own
            .handshake
            .or(defaults.handshake)
            .unwrap_or(fallback.handshake),
    };

    Ok(Service {
        name: name.to_string(),
        accept,
        connect: connect.clone(),
        local: own.local.or(defaults.local),
        certs: certs.clone(),
        sni: Vec::new(),
        alpn: own
            .alpn
            .clone()
            .or_else(|| defaults.alpn.clone())
            .unwrap_or_default(),
        tls_min: tls_min.map_or(TlsVersion::Tls12, |(version, _)| *version),
        tls_max: tls_max.map_or(TlsVersion::Tls13, |(version, _)| *version),
        cipher_suites: cipher_suites(own, defaults),
        timeouts,
        ktls: own.ktls.or(defaults.ktls).unwrap_or_default(),
        self_signed: false,
        proxy_protocol: own.proxy_protocol.or(defaults.proxy_protocol),
        accept_proxy: own.accept_proxy.or(defaults.accept_proxy).unwrap_or(false),
        transparent_source: own.transparent.or(defaults.transparent).unwrap_or(false),
    })
}

/// Joins `ciphersuites` (TLS 1.3) and `ciphers` (TLS 1.2). When only one of them
/// is written, the other version keeps all the suites tlsplice supports for it, so
/// that restricting one version's suites does not switch the other version off.
fn cipher_suites(own: &ServiceScope, defaults: &ServiceScope) -> Option<Vec<CipherSuite>> {
    let tls13 = own.tls13_suites.as_ref().or(defaults.tls13_suites.as_ref());
    let tls12 = own.tls12_suites.as_ref().or(defaults.tls12_suites.as_ref());
    if tls13.is_none() && tls12.is_none() {
        return None;
    }
    let all =
        |table: &[(&str, CipherSuite)]| table.iter().map(|(_, suite)| *suite).collect::<Vec<_>>();
    let mut suites = tls13.cloned().unwrap_or_else(|| all(value::TLS13_SUITES));
    suites.extend(tls12.cloned().unwrap_or_else(|| all(value::TLS12_SUITES)));
    Some(suites)
}

/// Options that an sni section may set; the rest belong to the parent's listener.
const SNI_OPTIONS: &[Opt] = &[Opt::Sni, Opt::Cert, Opt::Key, Opt::Connect];

/// Builds the route of an sni section and returns it with the index of its
/// parent in `services`.
fn build_sni_route(
    context: &Context,
    section: &ServiceScope,
    defaults: &ServiceScope,
    services: &[Service],
    sections: &[ServiceScope],
) -> Result<(usize, SniRoute), ConfigError> {
    let (parent, pattern, sni_entry) = section.sni.as_ref().expect("called for sni sections");

    let Some(parent_index) = services.iter().position(|service| service.name == *parent) else {
        let message = if sections.iter().any(|other| other.name == *parent) {
            format!("[{parent}] is an sni section itself; name a section that has `accept`")
        } else {
            format!("parent section [{parent}] not found; define it or correct the name")
        };
        return Err(context.error_at(sni_entry, message));
    };

    for (opt, entry) in &section.written {
        if *opt == Opt::Accept {
            return Err(context.error_at(
                entry,
                format!("an sni section uses the listener of [{parent}]; remove `accept`"),
            ));
        }
        if !SNI_OPTIONS.contains(opt) {
            return Err(context.error_at(
                entry,
                format!(
                    "`{}` has no effect in an sni section, because the listener belongs to [{parent}]; move it to [{parent}]",
                    entry.option
                ),
            ));
        }
    }

    let certs = if section.certs.is_empty() {
        &defaults.certs
    } else {
        &section.certs
    };
    let cert = match certs.as_slice() {
        [] => {
            return Err(context.error(
                section.header_line,
                format!(
                    "section [{}] has no `cert`; add `cert = /path/to/cert.pem`",
                    section.name
                ),
            ))
        }
        [cert] => cert.clone(),
        [_, second, ..] => {
            return Err(ConfigError {
                file: second.origin.file.clone(),
                line: second.origin.line,
                option: Some(second.origin.option.clone()),
                value: Some(second.cert.display().to_string()),
                message: "an sni section takes one cert; give each certificate its own sni section"
                    .to_string(),
            })
        }
    };

    let route = SniRoute {
        name: section.name.clone(),
        pattern: pattern.clone(),
        cert,
        connect: section.connect.clone(),
    };
    Ok((parent_index, route))
}
