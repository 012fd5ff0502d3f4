//! The option names tlsplice reads, the stunnel options it rejects, and the
//! "did you mean" suggestion for a misspelled name.

/// The part of the file where an option may be written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// Process-wide; only before the first `[section]`.
    Global,
    /// Per service; before the first `[section]` it sets a default for every service.
    Service,
}

/// An option that tlsplice implements.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Opt {
    Chroot,
    Pid,
    Setuid,
    Setgid,
    Output,
    Syslog,
    Foreground,
    Debug,
    Threads,
    Maxconn,
    ShutdownTimeout,
    Stats,
    HistogramLog,
    HistogramLogInterval,
    Privsep,
    Splice,
    Accept,
    Connect,
    Local,
    Cert,
    Key,
    Sni,
    Alpn,
    SslVersionMin,
    SslVersionMax,
    SslVersion,
    Ciphersuites,
    Ciphers,
    TimeoutBusy,
    TimeoutIdle,
    TimeoutConnect,
    TimeoutClose,
    TimeoutHandshake,
    Ktls,
    Protocol,
    ProxyProtocol,
    AcceptProxy,
    Transparent,
}

/// Every implemented option with its canonical spelling and scope.
pub const OPTIONS: &[(&str, Opt, Scope)] = &[
    ("chroot", Opt::Chroot, Scope::Global),
    ("pid", Opt::Pid, Scope::Global),
    ("setuid", Opt::Setuid, Scope::Global),
    ("setgid", Opt::Setgid, Scope::Global),
    ("output", Opt::Output, Scope::Global),
    ("syslog", Opt::Syslog, Scope::Global),
    ("foreground", Opt::Foreground, Scope::Global),
    ("debug", Opt::Debug, Scope::Global),
    ("threads", Opt::Threads, Scope::Global),
    ("maxconn", Opt::Maxconn, Scope::Global),
    ("shutdown_timeout", Opt::ShutdownTimeout, Scope::Global),
    ("stats", Opt::Stats, Scope::Global),
    ("histogram_log", Opt::HistogramLog, Scope::Global),
    (
        "histogram_log_interval",
        Opt::HistogramLogInterval,
        Scope::Global,
    ),
    ("privsep", Opt::Privsep, Scope::Global),
    ("splice", Opt::Splice, Scope::Global),
    ("accept", Opt::Accept, Scope::Service),
    ("connect", Opt::Connect, Scope::Service),
    ("local", Opt::Local, Scope::Service),
    ("cert", Opt::Cert, Scope::Service),
    ("key", Opt::Key, Scope::Service),
    ("sni", Opt::Sni, Scope::Service),
    ("alpn", Opt::Alpn, Scope::Service),
    ("sslVersionMin", Opt::SslVersionMin, Scope::Service),
    ("sslVersionMax", Opt::SslVersionMax, Scope::Service),
    ("sslVersion", Opt::SslVersion, Scope::Service),
    ("ciphersuites", Opt::Ciphersuites, Scope::Service),
    ("ciphers", Opt::Ciphers, Scope::Service),
    ("TIMEOUTbusy", Opt::TimeoutBusy, Scope::Service),
    ("TIMEOUTidle", Opt::TimeoutIdle, Scope::Service),
    ("TIMEOUTconnect", Opt::TimeoutConnect, Scope::Service),
    ("TIMEOUTclose", Opt::TimeoutClose, Scope::Service),
    ("TIMEOUThandshake", Opt::TimeoutHandshake, Scope::Service),
    ("ktls", Opt::Ktls, Scope::Service),
    ("protocol", Opt::Protocol, Scope::Service),
    ("proxy_protocol", Opt::ProxyProtocol, Scope::Service),
    ("accept_proxy", Opt::AcceptProxy, Scope::Service),
    ("transparent", Opt::Transparent, Scope::Service),
];

/// stunnel 5 options that tlsplice does not implement, each with the advice that
/// follows "remove it" in the error message.
const UNIMPLEMENTED: &[(&str, &str)] = &[
    ("CAengine", VERIFY_HINT),
    ("CAfile", VERIFY_HINT),
    ("CApath", VERIFY_HINT),
    ("CAstore", VERIFY_HINT),
    ("CRLfile", VERIFY_HINT),
    ("CRLpath", VERIFY_HINT),
    ("verify", VERIFY_HINT),
    ("verifyChain", VERIFY_HINT),
    ("verifyPeer", VERIFY_HINT),
    ("checkHost", VERIFY_HINT),
    ("checkEmail", VERIFY_HINT),
    ("checkIP", VERIFY_HINT),
    ("requireCert", VERIFY_HINT),
    ("OCSP", VERIFY_HINT),
    ("OCSPaia", VERIFY_HINT),
    ("OCSPflag", VERIFY_HINT),
    ("OCSPnonce", VERIFY_HINT),
    ("OCSPrequire", VERIFY_HINT),
    ("TIMEOUTocsp", VERIFY_HINT),
    ("client", "tlsplice only accepts TLS and connects to plain-text backends; keep stunnel for client mode"),
    ("compression", "rustls does not compress TLS records"),
    ("curves", "rustls picks key exchange groups itself"),
    ("securityLevel", "rustls offers only modern algorithms"),
    ("options", "use sslVersionMin, sslVersionMax, ciphers and ciphersuites instead"),
    ("renegotiation", "rustls never renegotiates"),
    ("fips", ENGINE_HINT),
    ("engine", ENGINE_HINT),
    ("engineCtrl", ENGINE_HINT),
    ("engineId", ENGINE_HINT),
    ("engineNum", ENGINE_HINT),
    ("engineDefault", ENGINE_HINT),
    ("EGD", ENGINE_HINT),
    ("RNDbytes", ENGINE_HINT),
    ("RNDfile", ENGINE_HINT),
    ("RNDoverwrite", ENGINE_HINT),
    ("encryptedKey", "decrypt the key file first, because tlsplice reads only unencrypted PEM keys"),
    ("PSKidentity", "use certificates instead of pre-shared keys"),
    ("PSKsecrets", "use certificates instead of pre-shared keys"),
    ("sessionCacheSize", SESSION_HINT),
    ("sessionCacheTimeout", SESSION_HINT),
    ("sessionResume", SESSION_HINT),
    ("sessiond", SESSION_HINT),
    ("ticketKeySecret", SESSION_HINT),
    ("ticketMacSecret", SESSION_HINT),
    ("exec", EXEC_HINT),
    ("execArgs", EXEC_HINT),
    ("pty", EXEC_HINT),
    ("include", "merge the included files into this one"),
    ("config", "set the OpenSSL setting through tlsplice's own options where one exists"),
    ("delay", "backend names are resolved once at startup; use an IP address if it changes"),
    ("failover", "tlsplice tries the `connect` backends in the order written"),
    ("retry", "tlsplice tries each `connect` backend once, in order"),
    ("ident", "tlsplice does not query ident servers"),
    ("libwrap", "filter clients with the firewall"),
    ("logId", GENERIC_HINT),
    ("log", GENERIC_HINT),
    ("redirect", "tlsplice does not verify client certificates, so nothing is redirected"),
    ("reset", GENERIC_HINT),
    ("service", "it names the service for libwrap and Windows only"),
    ("socket", GENERIC_HINT),
    ("stack", "tlsplice does not run one thread per connection"),
    ("protocolAuthentication", PROTOCOL_HINT),
    ("protocolDomain", PROTOCOL_HINT),
    ("protocolHeader", PROTOCOL_HINT),
    ("protocolHost", PROTOCOL_HINT),
    ("protocolPassword", PROTOCOL_HINT),
    ("protocolUsername", PROTOCOL_HINT),
    ("iconActive", WINDOWS_HINT),
    ("iconError", WINDOWS_HINT),
    ("iconIdle", WINDOWS_HINT),
    ("taskbar", WINDOWS_HINT),
];

const GENERIC_HINT: &str = "keep running stunnel for this service";
const VERIFY_HINT: &str =
    "check client certificates in the backend, because tlsplice does not verify peers";
const ENGINE_HINT: &str = "rustls uses the aws-lc-rs crypto provider";
const SESSION_HINT: &str = "rustls manages sessions and tickets itself";
const EXEC_HINT: &str =
    "run the program as a service that listens on a port or UNIX socket and `connect` to it";
const PROTOCOL_HINT: &str = "tlsplice implements only `protocol = proxy`";
const WINDOWS_HINT: &str = "it applies to Windows only";

/// Returns the value syntax of an option, for "missing value" messages.
pub fn syntax(opt: Opt) -> &'static str {
    match opt {
        Opt::Chroot => "/absolute/path",
        Opt::Pid | Opt::Output | Opt::HistogramLog | Opt::Cert | Opt::Key => "/path/to/file",
        Opt::Setuid => "user name or uid",
        Opt::Setgid => "group name or gid",
        Opt::Syslog | Opt::Privsep | Opt::AcceptProxy => "yes or no",
        Opt::Foreground => "yes, no or quiet",
        Opt::Splice => "direct or ring",
        Opt::Debug => "[facility.]level",
        Opt::Threads | Opt::Maxconn => "number",
        Opt::ShutdownTimeout
        | Opt::HistogramLogInterval
        | Opt::TimeoutBusy
        | Opt::TimeoutIdle
        | Opt::TimeoutConnect
        | Opt::TimeoutClose
        | Opt::TimeoutHandshake => "seconds",
        Opt::Stats => "ip:port",
        Opt::Accept => "[host:]port or /unix/path",
        Opt::Connect => "host:port or /unix/path",
        Opt::Local => "ip address",
        Opt::Sni => "parent_service:server_name",
        Opt::Alpn => "h2,http/1.1",
        Opt::SslVersionMin | Opt::SslVersionMax | Opt::SslVersion => "TLSv1.2, TLSv1.3 or all",
        Opt::Ciphersuites => "TLS_AES_128_GCM_SHA256:...",
        Opt::Ciphers => "ECDHE-RSA-AES128-GCM-SHA256:...",
        Opt::Ktls => "auto, on or off",
        Opt::Protocol => "proxy",
        Opt::ProxyProtocol => "v1 or v2",
        Opt::Transparent => "source or none",
    }
}

/// Finds an implemented option by name, ignoring case as stunnel does.
pub fn lookup(name: &str) -> Option<(&'static str, Opt, Scope)> {
    OPTIONS
        .iter()
        .copied()
        .find(|(canonical, _, _)| canonical.eq_ignore_ascii_case(name))
}

/// Returns the advice for a stunnel option that tlsplice does not implement.
pub fn unimplemented_hint(name: &str) -> Option<&'static str> {
    UNIMPLEMENTED
        .iter()
        .find(|(canonical, _)| canonical.eq_ignore_ascii_case(name))
        .map(|(_, hint)| *hint)
}

/// Returns the implemented option closest to `name`, if it is within two edits,
/// or within one edit for names of four characters or fewer.
pub fn suggest(name: &str) -> Option<&'static str> {
    let name = name.to_ascii_lowercase();
    let allowed = if name.chars().count() <= 4 { 1 } else { 2 };
    OPTIONS
        .iter()
        .map(|(canonical, _, _)| {
            (
                edit_distance(&name, &canonical.to_ascii_lowercase()),
                *canonical,
            )
        })
        .filter(|(distance, _)| *distance <= allowed)
        .min_by_key(|(distance, _)| *distance)
        .map(|(_, canonical)| canonical)
}

/// Levenshtein distance over characters.
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut previous: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut current = vec![i + 1; b.len() + 1];
        for (j, cb) in b.iter().enumerate() {
            let substitution = previous[j] + usize::from(ca != *cb);
            current[j + 1] = substitution.min(previous[j + 1] + 1).min(current[j] + 1);
        }
        previous = current;
    }
    previous[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lookup_ignores_case() {
        assert_eq!(lookup("timeoutbusy").map(|o| o.1), Some(Opt::TimeoutBusy));
        assert_eq!(lookup("TIMEOUTBUSY").map(|o| o.0), Some("TIMEOUTbusy"));
        assert_eq!(lookup("nosuch"), None);
    }

    #[test]
    fn unimplemented_names_are_not_options() {
        for (name, _) in UNIMPLEMENTED {
            assert!(lookup(name).is_none(), "{name} is both implemented and not");
        }
    }

    #[test]
    fn suggest_close_names() {
        assert_eq!(suggest("TIMEOUTidel"), Some("TIMEOUTidle"));
        assert_eq!(suggest("acept"), Some("accept"));
        assert_eq!(suggest("certs"), Some("cert"));
        assert_eq!(suggest("listen"), None);
    }

    #[test]
    fn edit_distance_counts_edits() {
        assert_eq!(edit_distance("kitten", "sitting"), 3);
        assert_eq!(edit_distance("", "abc"), 3);
        assert_eq!(edit_distance("same", "same"), 0);
    }
}
