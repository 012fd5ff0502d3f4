//! Parsers for option values. Each returns the parsed value or the message part of
//! a `ConfigError`; the caller adds the file, line, option and value.

use std::fs::File;
use std::io::{self, Read};
use std::net::{IpAddr, Ipv6Addr, SocketAddr, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::time::Duration;

use rustls::CipherSuite;

use super::{Address, KtlsMode, LogLevel, ProxyVersion, SpliceMode, TlsVersion};
use crate::sys::user;

/// Resolves a host name and port to socket addresses; tests substitute a fake.
pub type Resolver = fn(&str, u16) -> io::Result<Vec<SocketAddr>>;

/// Resolves through the C library, which consults the sources that nsswitch.conf lists.
pub fn system_resolve(host: &str, port: u16) -> io::Result<Vec<SocketAddr>> {
    Ok((host, port).to_socket_addrs()?.collect())
}

/// Whether an address may use port 0.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PortZero {
    /// A listener: with port 0 the kernel picks an ephemeral port.
    Allowed,
    /// A backend: port 0 cannot be connected to.
    Rejected,
}

const ADDRESS_FORMS: &str = "use host:port, [ipv6]:port, a bare port, or a /path for a UNIX socket";

/// Longest UNIX socket path: `sun_path` is 108 bytes including the NUL.
const MAX_UNIX_PATH: usize = 107;

/// Parses `host:port`, `[v6]:port`, a bare port (all interfaces, `[::]`), or a
/// UNIX socket path starting with `/`. A host name resolves to its first address.
pub fn address(value: &str, zero: PortZero, resolve: Resolver) -> Result<Address, String> {
    if value.starts_with('/') {
        if value.len() > MAX_UNIX_PATH {
            return Err(format!(
                "UNIX socket path is {} bytes long; use a path of at most {MAX_UNIX_PATH} bytes",
                value.len()
            ));
        }
        return Ok(Address::Unix(PathBuf::from(value)));
    }

    if value.bytes().all(|b| b.is_ascii_digit()) {
        let port = port(value, zero)?;
        return Ok(Address::Inet(SocketAddr::new(
            IpAddr::V6(Ipv6Addr::UNSPECIFIED),
            port,
        )));
    }

    if let Some(rest) = value.strip_prefix('[') {
        let Some((host, port_text)) = rest.split_once("]:") else {
            return Err(format!(
                "missing port after the bracketed IPv6 address; {ADDRESS_FORMS}"
            ));
        };
        let ip: Ipv6Addr = host
            .parse()
            .map_err(|_| format!("invalid IPv6 address `{host}`; {ADDRESS_FORMS}"))?;
        let port = port(port_text, zero)?;
        return Ok(Address::Inet(SocketAddr::new(IpAddr::V6(ip), port)));
    }

    let Some((host, port_text)) = value.rsplit_once(':') else {
        return Err(format!("missing port; {ADDRESS_FORMS}"));
    };
    if host.contains(':') {
        return Err(format!(
            "IPv6 address without brackets; write it as [{host}]:{port_text}"
        ));
    }
    if host.is_empty() {
        return Err(format!("missing host before `:`; {ADDRESS_FORMS}"));
    }
    let port = port(port_text, zero)?;
    if let Ok(ip) = host.parse::<IpAddr>() {
        return Ok(Address::Inet(SocketAddr::new(ip, port)));
    }
    match resolve(host, port) {
        Ok(found) => match found.first() {
            Some(first) => Ok(Address::Inet(*first)),
            None => Err(format!(
                "host `{host}` has no addresses; use an IP address or a name that resolves"
            )),
        },
        Err(err) => Err(format!(
            "failed to resolve host `{host}`: {err}; use an IP address or a name that resolves"
        )),
    }
}

fn port(text: &str, zero: PortZero) -> Result<u16, String> {
    let range = match zero {
        PortZero::Allowed => "0 to 65535",
        PortZero::Rejected => "1 to 65535",
    };
    match text.parse::<u16>() {
        Ok(0) if zero == PortZero::Rejected => Err(format!(
            "port 0 cannot be connected to; use a port from {range}"
        )),
        Ok(port) => Ok(port),
        Err(_) => Err(format!("invalid port `{text}`; use a number from {range}")),
    }
}

/// Parses a literal IP address, with or without IPv6 brackets.
pub fn ip(value: &str) -> Result<IpAddr, String> {
    let bare = value
        .strip_prefix('[')
        .and_then(|v| v.strip_suffix(']'))
        .unwrap_or(value);
    bare.parse().map_err(|_| {
        "invalid IP address; use a literal address such as 127.0.0.2 or ::1".to_string()
    })
}

/// Parses the `stats` address: a literal `ip:port`, or a bare port, which binds
/// to loopback only, since the pages show service names and traffic volumes.
pub fn stats_address(value: &str) -> Result<SocketAddr, String> {
    match value.parse::<u16>() {
        Ok(port) => Ok(SocketAddr::from(([127, 0, 0, 1], port))),
        Err(_) => value.parse().map_err(|_| {
            "invalid address; use a port (bound to 127.0.0.1) or a literal IP address and port such as 127.0.0.1:9100"
                .to_string()
        }),
    }
}

/// Parses `yes` or `no`.
pub fn yes_no(value: &str) -> Result<bool, String> {
    if value.eq_ignore_ascii_case("yes") {
        Ok(true)
    } else if value.eq_ignore_ascii_case("no") {
        Ok(false)
    } else {
        Err("invalid value; use yes or no".to_string())
    }
}

/// Largest number of seconds accepted, so that adding a timeout to an `Instant`
/// cannot overflow (about 136 years).
const MAX_SECONDS: u64 = u32::MAX as u64;

/// Parses a whole number of seconds; `example` goes into the error message.
/// With `zero_allowed` false, 0 is rejected.
pub fn seconds(value: &str, example: u64, zero_allowed: bool) -> Result<Duration, String> {
    let invalid = || format!("invalid number of seconds; use a whole number such as {example}");
    let secs: u64 = value.parse().map_err(|_| invalid())?;
    if secs == 0 && !zero_allowed {
        return Err(format!(
            "0 seconds is not allowed; use a whole number such as {example}"
        ));
    }
    if secs > MAX_SECONDS {
        return Err(format!("too many seconds; use at most {MAX_SECONDS}"));
    }
    Ok(Duration::from_secs(secs))
}

/// Parses a whole number from `min` to `max`; `quantity` names it in the error message.
pub fn count(value: &str, quantity: &str, min: usize, max: usize) -> Result<usize, String> {
    match value.parse::<usize>() {
        Ok(n) if (min..=max).contains(&n) => Ok(n),
        _ => Err(format!(
            "invalid {quantity}; use a whole number from {min} to {max}"
        )),
    }
}

/// `foreground` as (run in the foreground, copy log lines to stderr).
pub fn foreground(value: &str) -> Result<(bool, bool), String> {
    match value.to_ascii_lowercase().as_str() {
        "yes" => Ok((true, true)),
        "quiet" => Ok((true, false)),
        "no" => Ok((false, false)),
        _ => Err("invalid value; use yes, no or quiet".to_string()),
    }
}

/// Syslog facility names accepted before the level in `debug = facility.level`.
pub const FACILITIES: &[&str] = &[
    "auth", "authpriv", "cron", "daemon", "ftp", "kern", "lpr", "mail", "news", "syslog", "user",
    "uucp", "local0", "local1", "local2", "local3", "local4", "local5", "local6", "local7",
];

const LEVELS: &[(&str, LogLevel)] = &[
    ("emerg", LogLevel::Emerg),
    ("alert", LogLevel::Alert),
    ("crit", LogLevel::Crit),
    ("err", LogLevel::Err),
    ("warning", LogLevel::Warning),
    ("notice", LogLevel::Notice),
    ("info", LogLevel::Info),
    ("debug", LogLevel::Debug),
];

/// Parses `[facility.]level` into the facility (if given) and the level.
pub fn debug(value: &str) -> Result<(Option<String>, LogLevel), String> {
    let (facility, level) = match value.split_once('.') {
        Some((facility, level)) => (Some(facility.to_ascii_lowercase()), level),
        None => (None, value),
    };
    if let Some(facility) = &facility {
        if !FACILITIES.contains(&facility.as_str()) {
            return Err(format!(
                "unknown syslog facility `{facility}`; use one of {}",
                FACILITIES.join(", ")
            ));
        }
    }
    let by_number = level.parse::<usize>().ok().and_then(|n| LEVELS.get(n));
    let by_name = LEVELS
        .iter()
        .find(|(name, _)| name.eq_ignore_ascii_case(level));
    match by_number.or(by_name) {
        Some((_, level)) => Ok((facility, *level)),
        None => Err(
            "invalid log level; use a number from 0 to 7 or one of emerg, alert, crit, err, warning, notice, info, debug"
                .to_string(),
        ),
    }
}

/// The end of the version range that an `sslVersion*` value sets. `all` means the
/// lowest version for `Min` and the highest for `Max`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bound {
    Min,
    Max,
}

/// Parses `TLSv1.2`, `TLSv1.3` or `all`.
pub fn tls_version(value: &str, bound: Bound) -> Result<TlsVersion, String> {
    let lower = value.to_ascii_lowercase();
    match lower.as_str() {
        "tlsv1.2" => Ok(TlsVersion::Tls12),
        "tlsv1.3" => Ok(TlsVersion::Tls13),
        "all" if bound == Bound::Min => Ok(TlsVersion::Tls12),
        "all" => Ok(TlsVersion::Tls13),
        "sslv2" | "sslv3" | "tlsv1" | "tlsv1.0" | "tlsv1.1" => {
            Err("rustls supports only TLSv1.2 and TLSv1.3; use TLSv1.2 or TLSv1.3".to_string())
        }
        _ => Err("invalid TLS version; use TLSv1.2, TLSv1.3 or all".to_string()),
    }
}

/// TLS 1.3 suites by their RFC 8446 names, as in OpenSSL's `-ciphersuites`.
pub const TLS13_SUITES: &[(&str, CipherSuite)] = &[
    (
        "TLS_AES_128_GCM_SHA256",
        CipherSuite::TLS13_AES_128_GCM_SHA256,
    ),
    (
        "TLS_AES_256_GCM_SHA384",
        CipherSuite::TLS13_AES_256_GCM_SHA384,
    ),
    (
        "TLS_CHACHA20_POLY1305_SHA256",
        CipherSuite::TLS13_CHACHA20_POLY1305_SHA256,
    ),
];

/// TLS 1.2 suites that rustls implements, by their OpenSSL names.
pub const TLS12_SUITES: &[(&str, CipherSuite)] = &[
    (
        "ECDHE-ECDSA-AES128-GCM-SHA256",
        CipherSuite::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
    ),
    (
        "ECDHE-RSA-AES128-GCM-SHA256",
        CipherSuite::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,
    ),
    (
        "ECDHE-ECDSA-AES256-GCM-SHA384",
        CipherSuite::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
    ),
    (
        "ECDHE-RSA-AES256-GCM-SHA384",
        CipherSuite::TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384,
    ),
    (
        "ECDHE-ECDSA-CHACHA20-POLY1305",
        CipherSuite::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256,
    ),
    (
        "ECDHE-RSA-CHACHA20-POLY1305",
        CipherSuite::TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256,
    ),
];

/// Parses a colon-separated list of suite names from `table`, in the order written
/// and without repeats. `other` is the table of the other option, so that a name
/// in the wrong option gets a pointed message; `other_option` names that option.
pub fn cipher_list(
    value: &str,
    table: &[(&str, CipherSuite)],
    other: &[(&str, CipherSuite)],
    other_option: &str,
) -> Result<Vec<CipherSuite>, String> {
    let mut suites = Vec::new();
    for name in value.split(':').map(str::trim) {
        if name.is_empty() {
            return Err("empty cipher suite name; separate names with single colons".to_string());
        }
        let find = |table: &[(&str, CipherSuite)]| {
            table
                .iter()
                .find(|(known, _)| known.eq_ignore_ascii_case(name))
                .map(|(_, suite)| *suite)
        };
        if let Some(suite) = find(table) {
            if !suites.contains(&suite) {
                suites.push(suite);
            }
        } else if find(other).is_some() {
            return Err(format!(
                "`{name}` belongs in `{other_option}`; move it there"
            ));
        } else {
            let supported: Vec<&str> = table.iter().map(|(known, _)| *known).collect();
            return Err(format!(
                "unknown cipher suite `{name}`; supported: {}",
                supported.join(", ")
            ));
        }
    }
    Ok(suites)
}

/// Parses a comma-separated ALPN protocol list such as `h2,http/1.1`.
pub fn alpn(value: &str) -> Result<Vec<String>, String> {
    let mut protocols = Vec::new();
    for id in value.split(',').map(str::trim) {
        let printable = id.bytes().all(|b| b.is_ascii_graphic());
        if id.is_empty() || id.len() > 255 || !printable {
            return Err(format!(
                "invalid ALPN protocol id `{id}`; use comma-separated ids of 1 to 255 printable characters, such as h2,http/1.1"
            ));
        }
        if !protocols.iter().any(|known| known == id) {
            protocols.push(id.to_string());
        }
    }
    Ok(protocols)
}

pub fn ktls(value: &str) -> Result<KtlsMode, String> {
    match value.to_ascii_lowercase().as_str() {
        "auto" => Ok(KtlsMode::Auto),
        "on" => Ok(KtlsMode::On),
        "off" => Ok(KtlsMode::Off),
        _ => Err("invalid value; use auto, on or off".to_string()),
    }
}

/// Parses the global `splice` option.
pub fn splice(value: &str) -> Result<SpliceMode, String> {
    match value.to_ascii_lowercase().as_str() {
        "direct" => Ok(SpliceMode::Direct),
        "ring" => Ok(SpliceMode::Ring),
        _ => Err("invalid value; use direct or ring".to_string()),
    }
}

/// stunnel 5 `protocol` values other than `proxy`.
const STUNNEL_PROTOCOLS: &[&str] = &[
    "capwin",
    "capwinctrl",
    "cifs",
    "connect",
    "imap",
    "ldap",
    "nntp",
    "pgsql",
    "pop3",
    "smtp",
    "socks",
];

/// Parses `protocol`; only `proxy` is implemented.
pub fn protocol(value: &str) -> Result<ProxyVersion, String> {
    let lower = value.to_ascii_lowercase();
    if lower == "proxy" {
        Ok(ProxyVersion::V1)
    } else if STUNNEL_PROTOCOLS.contains(&lower.as_str()) {
        Err(format!(
            "protocol `{lower}` is not implemented by tlsplice; remove it (only `protocol = proxy` is supported)"
        ))
    } else {
        Err("unknown protocol; use proxy".to_string())
    }
}

pub fn proxy_version(value: &str) -> Result<ProxyVersion, String> {
    match value.to_ascii_lowercase().as_str() {
        "v1" => Ok(ProxyVersion::V1),
        "v2" => Ok(ProxyVersion::V2),
        _ => Err("invalid PROXY protocol version; use v1 or v2".to_string()),
    }
}

/// Parses `transparent`: `source` is implemented, `none` and `no` turn it off.
pub fn transparent(value: &str) -> Result<bool, String> {
    match value.to_ascii_lowercase().as_str() {
        "source" => Ok(true),
        "none" | "no" => Ok(false),
        "destination" | "both" => Err(format!(
            "transparent = {} is not implemented by tlsplice; use source or none",
            value.to_ascii_lowercase()
        )),
        _ => Err("invalid value; use source or none".to_string()),
    }
}

/// Parses `sni = parent:pattern` into the parent section name and the lowercased
/// server name pattern. A pattern is a host name whose first label may be `*`.
pub fn sni(value: &str) -> Result<(String, String), String> {
    const USAGE: &str =
        "use parent_service:server_name, such as web:www.example.com or web:*.example.com";
    let Some((parent, pattern)) = value.split_once(':') else {
        return Err(format!(
            "missing `:` between service and server name; {USAGE}"
        ));
    };
    let (parent, pattern) = (parent.trim(), pattern.trim().to_ascii_lowercase());
    if parent.is_empty() {
        return Err(format!("missing parent service name; {USAGE}"));
    }
    let valid_label = |label: &str| {
        !label.is_empty()
            && label.len() <= 63
            && label
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    };
    let mut labels = pattern.split('.');
    let first_ok = match labels.next() {
        Some("*") => pattern.len() > 2,
        Some(label) => valid_label(label),
        None => false,
    };
    if !first_ok || !labels.all(valid_label) || pattern.len() > 253 {
        return Err(format!("invalid server name pattern `{pattern}`; {USAGE}"));
    }
    Ok((parent.to_string(), pattern))
}

/// Checks that a `setuid` value is a numeric uid or an existing user name.
pub fn user_name(value: &str) -> Result<(), String> {
    if value.bytes().all(|b| b.is_ascii_digit()) && value.parse::<u32>().is_ok() {
        return Ok(());
    }
    match user::uid_by_name(value) {
        Ok(Some(_)) => Ok(()),
        Ok(None) => Err("user not found; use an existing user name or a numeric uid".to_string()),
        Err(err) => Err(format!(
            "failed to look up user: {err}; check /etc/nsswitch.conf"
        )),
    }
}

/// Checks that a `setgid` value is a numeric gid or an existing group name.
pub fn group_name(value: &str) -> Result<(), String> {
    if value.bytes().all(|b| b.is_ascii_digit()) && value.parse::<u32>().is_ok() {
        return Ok(());
    }
    match user::gid_by_name(value) {
        Ok(Some(_)) => Ok(()),
        Ok(None) => Err("group not found; use an existing group name or a numeric gid".to_string()),
        Err(err) => Err(format!(
            "failed to look up group: {err}; check /etc/nsswitch.conf"
        )),
    }
}

/// Checks that a certificate or key file can be opened and read. It reads one
/// byte, so a device such as `/dev/zero` given by mistake cannot stall startup.
pub fn readable_file(path: &Path) -> Result<(), String> {
    let mut first_byte = [0u8; 1];
    File::open(path)
        .and_then(|mut file| file.read(&mut first_byte))
        .map(drop)
        .map_err(|err| format!("failed to read file: {err}; check the path and its permissions"))
}

/// Checks that `chroot` is an absolute path.
pub fn absolute_path(value: &str) -> Result<PathBuf, String> {
    if value.starts_with('/') {
        Ok(PathBuf::from(value))
    } else {
        Err("relative path; use an absolute path such as /var/run/tlsplice".to_string())
    }
}
