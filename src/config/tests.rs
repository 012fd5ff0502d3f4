//! Tests of the configuration parser: every option, inheritance, the section-less
//! form, the command-line form and the exact text of every error.

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use rustls::CipherSuite;

use super::parse::parse_with;
use super::*;

const FILE: &str = "/etc/tlsplice.conf";

/// Resolves `backend.test` and `localhost` without DNS; every other name fails.
fn fake_resolve(host: &str, port: u16) -> io::Result<Vec<SocketAddr>> {
    match host {
        "backend.test" => Ok(vec![SocketAddr::new(
            IpAddr::V4(Ipv4Addr::new(127, 0, 0, 5)),
            port,
        )]),
        "localhost" => Ok(vec![SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), port)]),
        "empty.test" => Ok(Vec::new()),
        _ => Err(io::Error::new(io::ErrorKind::NotFound, "name not known")),
    }
}

fn parse(text: &str) -> Result<Config, ConfigError> {
    parse_with(text, Some(Path::new(FILE)), fake_resolve)
}

fn error_text(text: &str) -> String {
    match parse(text) {
        Ok(config) => panic!("expected an error, got {config:?}"),
        Err(err) => err.to_string(),
    }
}

fn inet(text: &str) -> Address {
    Address::Inet(text.parse().unwrap())
}

/// A directory under the system temp dir, removed on drop, holding readable
/// files `server.crt`, `server.key`, `other.crt`, `other.key` and `both.pem`.
struct TempDir {
    path: PathBuf,
}

impl TempDir {
    fn new() -> TempDir {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let unique = NEXT.fetch_add(1, Ordering::Relaxed);
        let path =
            std::env::temp_dir().join(format!("tlsplice-config-{}-{unique}", std::process::id()));
        std::fs::create_dir_all(&path).unwrap();
        for name in [
            "server.crt",
            "server.key",
            "other.crt",
            "other.key",
            "both.pem",
        ] {
            std::fs::write(path.join(name), "-----BEGIN PLACEHOLDER-----\n").unwrap();
        }
        TempDir { path }
    }

    /// Path of a file in the directory, as a string for configuration text.
    fn file(&self, name: &str) -> String {
        self.path.join(name).display().to_string()
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

/// Builds a minimal valid section-less configuration with `extra` lines appended.
fn minimal(dir: &TempDir, extra: &str) -> String {
    format!(
        "accept = 8443\nconnect = 127.0.0.1:8080\ncert = {}\nkey = {}\n{extra}",
        dir.file("server.crt"),
        dir.file("server.key")
    )
}

fn only_service(config: &Config) -> &Service {
    assert_eq!(config.services.len(), 1, "services: {:?}", config.services);
    &config.services[0]
}

// ---------------------------------------------------------------------------
// Whole files

#[test]
fn stunnel_example_parses_unchanged() {
    let dir = TempDir::new();
    let text = format!(
        "chroot = /var/run/tlsplice
pid = /tlsplice.pid
setgid = nogroup
setuid = nobody
output = /var/log/tlsplice.log
syslog = no
accept = 127.0.0.1:8443
connect = 127.0.0.1:8080
local = 127.0.0.2
cert = {}
key = {}
",
        dir.file("server.crt"),
        dir.file("server.key")
    );
    let config = parse(&text).unwrap();

    assert_eq!(config.source, Some(PathBuf::from(FILE)));
    let global = &config.global;
    assert_eq!(global.chroot, Some(PathBuf::from("/var/run/tlsplice")));
    assert_eq!(global.pid, Some(PathBuf::from("/tlsplice.pid")));
    assert_eq!(global.setgid.as_deref(), Some("nogroup"));
    assert_eq!(global.setuid.as_deref(), Some("nobody"));
    assert_eq!(global.output, Some(PathBuf::from("/var/log/tlsplice.log")));
    assert!(!global.syslog);

    let service = only_service(&config);
    assert_eq!(service.name, "default");
    assert_eq!(service.accept, inet("127.0.0.1:8443"));
    assert_eq!(service.connect, vec![inet("127.0.0.1:8080")]);
    assert_eq!(service.local, Some(IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2))));
    assert_eq!(service.certs.len(), 1);
    assert_eq!(service.certs[0].cert, PathBuf::from(dir.file("server.crt")));
    assert_eq!(
        service.certs[0].key,
        Some(PathBuf::from(dir.file("server.key")))
    );
    assert_eq!(
        service.certs[0].origin,
        Origin {
            file: Some(PathBuf::from(FILE)),
            line: 10,
            option: "cert".to_string(),
        }
    );
    assert!(!service.self_signed);
}

#[test]
fn defaults_of_minimal_config() {
    let dir = TempDir::new();
    let config = parse(&minimal(&dir, "")).unwrap();

    let global = &config.global;
    assert_eq!(global.chroot, None);
    assert_eq!(global.pid, None);
    assert_eq!(global.setuid, None);
    assert_eq!(global.setgid, None);
    assert_eq!(global.output, None);
    assert!(global.syslog);
    assert_eq!(global.syslog_facility, "daemon");
    assert!(!global.foreground);
    assert!(!global.log_stderr);
    assert_eq!(global.debug, LogLevel::Notice);
    assert_eq!(global.threads, None);
    assert_eq!(global.maxconn, 32768);
    assert_eq!(global.shutdown_timeout, Duration::from_secs(30));
    assert_eq!(global.stats, None);
    assert_eq!(global.histogram_log, None);
    assert_eq!(global.histogram_log_interval, Duration::from_secs(10));
    assert_eq!(global.privsep, None);
    assert_eq!(global.splice, SpliceMode::Direct);

    let service = only_service(&config);
    assert_eq!(service.accept, inet("[::]:8443"));
    assert_eq!(service.local, None);
    assert!(service.sni.is_empty());
    assert!(service.alpn.is_empty());
    assert_eq!(service.tls_min, TlsVersion::Tls12);
    assert_eq!(service.tls_max, TlsVersion::Tls13);
    assert_eq!(service.cipher_suites, None);
    assert_eq!(service.timeouts, Timeouts::default());
    assert_eq!(service.ktls, KtlsMode::Auto);
    assert_eq!(service.proxy_protocol, None);
    assert!(!service.accept_proxy);
    assert!(!service.transparent_source);
    assert!(!service.self_signed);
}

#[test]
fn comments_blank_lines_and_spacing() {
    let dir = TempDir::new();
    let text = format!(
        "\u{feff}; a comment\n# another comment\n\n   accept=8443   \n\tconnect =\t127.0.0.1:8080\ncert   =   {}\n",
        dir.file("both.pem")
    );
    let service = only_service(&parse(&text).unwrap()).clone();
    assert_eq!(service.accept, inet("[::]:8443"));
    assert_eq!(service.connect, vec![inet("127.0.0.1:8080")]);
}

#[test]
fn crlf_lines_and_semicolon_in_value() {
    let dir = TempDir::new();
    let text = minimal(&dir, "alpn = h2;x\r\n").replace('\n', "\r\n");
    let service = only_service(&parse(&text).unwrap()).clone();
    assert_eq!(service.accept, inet("[::]:8443"));
    assert_eq!(service.alpn, vec!["h2;x".to_string()]);
}

#[test]
fn option_names_ignore_case() {
    let dir = TempDir::new();
    let text = minimal(
        &dir,
        "timeoutbusy = 7\nTIMEOUTIDLE = 8\nSslVersionMin = TLSv1.3\nKTLS = off\n",
    );
    let service = only_service(&parse(&text).unwrap()).clone();
    assert_eq!(service.timeouts.busy, Duration::from_secs(7));
    assert_eq!(service.timeouts.idle, Duration::from_secs(8));
    assert_eq!(service.tls_min, TlsVersion::Tls13);
    assert_eq!(service.ktls, KtlsMode::Off);
}

#[test]
fn parse_file_reads_file() {
    let dir = TempDir::new();
    let path = dir.path.join("tlsplice.conf");
    std::fs::write(&path, minimal(&dir, "")).unwrap();
    let config = parse_file(&path).unwrap();
    assert_eq!(config.source, Some(path));
    assert_eq!(config.services.len(), 1);
}

#[test]
fn parse_str_resolves_localhost() {
    // /etc/hosts answers for localhost, so this makes no DNS query.
    let dir = TempDir::new();
    let text = format!(
        "accept = 0\nconnect = localhost:8080\ncert = {}\n",
        dir.file("both.pem")
    );
    let config = parse_str(&text, None).unwrap();
    let Address::Inet(backend) = &only_service(&config).connect[0] else {
        panic!("expected an inet address");
    };
    assert!(backend.ip().is_loopback());
    assert_eq!(backend.port(), 8080);
}

// ---------------------------------------------------------------------------
// Global options

#[test]
fn global_options_all_set() {
    let dir = TempDir::new();
    let text = minimal(&dir, "").replace(
        "accept",
        "chroot = /srv/jail\npid = /run/tlsplice.pid\nsetuid = 65534\nsetgid = 0\n\
         output = /var/log/t.log\nsyslog = yes\nforeground = yes\ndebug = local3.info\n\
         threads = 4\nmaxconn = 1000\nshutdown_timeout = 0\nstats = [::1]:9100\n\
         histogram_log = /var/log/t.hlog\nhistogram_log_interval = 60\nprivsep = no\nsplice = ring\naccept",
    );
    let global = parse(&text).unwrap().global;
    assert_eq!(global.chroot, Some(PathBuf::from("/srv/jail")));
    assert_eq!(global.pid, Some(PathBuf::from("/run/tlsplice.pid")));
    assert_eq!(global.setuid.as_deref(), Some("65534"));
    assert_eq!(global.setgid.as_deref(), Some("0"));
    assert_eq!(global.output, Some(PathBuf::from("/var/log/t.log")));
    assert!(global.syslog);
    assert!(global.foreground);
    assert!(global.log_stderr);
    assert_eq!(global.syslog_facility, "local3");
    assert_eq!(global.debug, LogLevel::Info);
    assert_eq!(global.threads, Some(4));
    assert_eq!(global.maxconn, 1000);
    assert_eq!(global.shutdown_timeout, Duration::ZERO);
    assert_eq!(global.stats, Some("[::1]:9100".parse().unwrap()));
    assert_eq!(global.histogram_log, Some(PathBuf::from("/var/log/t.hlog")));
    assert_eq!(global.histogram_log_interval, Duration::from_secs(60));
    assert_eq!(global.privsep, Some(false));
    assert_eq!(global.splice, SpliceMode::Ring);
}

#[test]
fn foreground_values() {
    let dir = TempDir::new();
    for (value, foreground, stderr) in [
        ("yes", true, true),
        ("quiet", true, false),
        ("no", false, false),
    ] {
        let global = parse(&minimal(&dir, &format!("foreground = {value}\n")))
            .unwrap()
            .global;
        assert_eq!(global.foreground, foreground, "foreground = {value}");
        assert_eq!(global.log_stderr, stderr, "foreground = {value}");
    }
}

#[test]
fn debug_levels_by_number_and_name() {
    let dir = TempDir::new();
    let cases = [
        ("0", LogLevel::Emerg),
        ("3", LogLevel::Err),
        ("7", LogLevel::Debug),
        ("emerg", LogLevel::Emerg),
        ("alert", LogLevel::Alert),
        ("crit", LogLevel::Crit),
        ("err", LogLevel::Err),
        ("warning", LogLevel::Warning),
        ("notice", LogLevel::Notice),
        ("info", LogLevel::Info),
        ("DEBUG", LogLevel::Debug),
        ("daemon.5", LogLevel::Notice),
        ("authpriv.debug", LogLevel::Debug),
    ];
    for (value, level) in cases {
        let global = parse(&minimal(&dir, &format!("debug = {value}\n")))
            .unwrap()
            .global;
        assert_eq!(global.debug, level, "debug = {value}");
    }
}

#[test]
fn setuid_and_setgid_names() {
    let dir = TempDir::new();
    let global = parse(&minimal(&dir, "setuid = root\nsetgid = root\n"))
        .unwrap()
        .global;
    assert_eq!(global.setuid.as_deref(), Some("root"));
    assert_eq!(global.setgid.as_deref(), Some("root"));
}

// ---------------------------------------------------------------------------
// Service options

#[test]
fn accept_address_forms() {
    let dir = TempDir::new();
    let cases = [
        ("8443", inet("[::]:8443")),
        ("0", inet("[::]:0")),
        ("127.0.0.1:0", inet("127.0.0.1:0")),
        ("[::1]:8443", inet("[::1]:8443")),
        ("backend.test:443", inet("127.0.0.5:443")),
        (
            "/run/tlsplice.sock",
            Address::Unix(PathBuf::from("/run/tlsplice.sock")),
        ),
    ];
    for (value, expected) in cases {
        let text = minimal(&dir, "").replace("accept = 8443", &format!("accept = {value}"));
        let service = only_service(&parse(&text).unwrap()).clone();
        assert_eq!(service.accept, expected, "accept = {value}");
    }
}

#[test]
fn connect_repeats_in_order() {
    let dir = TempDir::new();
    let text = minimal(
        &dir,
        "connect = [::1]:8081\nconnect = /run/backend.sock\nconnect = backend.test:80\n",
    );
    let service = only_service(&parse(&text).unwrap()).clone();
    assert_eq!(
        service.connect,
        vec![
            inet("127.0.0.1:8080"),
            inet("[::1]:8081"),
            Address::Unix(PathBuf::from("/run/backend.sock")),
            inet("127.0.0.5:80"),
        ]
    );
}

#[test]
fn local_accepts_ipv6() {
    let dir = TempDir::new();
    let service = only_service(&parse(&minimal(&dir, "local = ::1\n")).unwrap()).clone();
    assert_eq!(service.local, Some(IpAddr::V6(Ipv6Addr::LOCALHOST)));
}

#[test]
fn several_certs_with_own_keys() {
    let dir = TempDir::new();
    let text = format!(
        "accept = 8443\nconnect = 127.0.0.1:8080\ncert = {}\nkey = {}\ncert = {}\ncert = {}\nkey = {}\n",
        dir.file("server.crt"),
        dir.file("server.key"),
        dir.file("both.pem"),
        dir.file("other.crt"),
        dir.file("other.key"),
    );
    let service = only_service(&parse(&text).unwrap()).clone();
    let pairs: Vec<(PathBuf, Option<PathBuf>, usize)> = service
        .certs
        .iter()
        .map(|source| (source.cert.clone(), source.key.clone(), source.origin.line))
        .collect();
    assert_eq!(
        pairs,
        vec![
            (
                dir.file("server.crt").into(),
                Some(dir.file("server.key").into()),
                3
            ),
            (dir.file("both.pem").into(), None, 5),
            (
                dir.file("other.crt").into(),
                Some(dir.file("other.key").into()),
                6
            ),
        ]
    );
}

#[test]
fn key_before_cert_goes_to_first_cert() {
    let dir = TempDir::new();
    let text = format!(
        "accept = 8443\nconnect = 127.0.0.1:8080\nkey = {}\ncert = {}\n",
        dir.file("server.key"),
        dir.file("server.crt"),
    );
    let service = only_service(&parse(&text).unwrap()).clone();
    assert_eq!(service.certs[0].cert, PathBuf::from(dir.file("server.crt")));
    assert_eq!(
        service.certs[0].key,
        Some(PathBuf::from(dir.file("server.key")))
    );
}

#[test]
fn alpn_list() {
    let dir = TempDir::new();
    let service = only_service(&parse(&minimal(&dir, "alpn = h2, http/1.1,h2\n")).unwrap()).clone();
    assert_eq!(service.alpn, vec!["h2".to_string(), "http/1.1".to_string()]);
}

#[test]
fn tls_version_options() {
    let dir = TempDir::new();
    let cases = [
        (
            "sslVersionMin = TLSv1.3",
            TlsVersion::Tls13,
            TlsVersion::Tls13,
        ),
        (
            "sslVersionMax = TLSv1.2",
            TlsVersion::Tls12,
            TlsVersion::Tls12,
        ),
        (
            "sslVersionMin = all\nsslVersionMax = all",
            TlsVersion::Tls12,
            TlsVersion::Tls13,
        ),
        ("sslVersion = TLSv1.2", TlsVersion::Tls12, TlsVersion::Tls12),
        ("sslVersion = tlsv1.3", TlsVersion::Tls13, TlsVersion::Tls13),
        ("sslVersion = all", TlsVersion::Tls12, TlsVersion::Tls13),
    ];
    for (lines, min, max) in cases {
        let service = only_service(&parse(&minimal(&dir, &format!("{lines}\n"))).unwrap()).clone();
        assert_eq!((service.tls_min, service.tls_max), (min, max), "{lines}");
    }
}

#[test]
fn cipher_options_union() {
    let dir = TempDir::new();
    let text = minimal(
        &dir,
        "ciphersuites = TLS_CHACHA20_POLY1305_SHA256:TLS_AES_128_GCM_SHA256\n\
         ciphers = ECDHE-RSA-AES256-GCM-SHA384:ecdhe-ecdsa-chacha20-poly1305\n",
    );
    let service = only_service(&parse(&text).unwrap()).clone();
    assert_eq!(
        service.cipher_suites,
        Some(vec![
            CipherSuite::TLS13_CHACHA20_POLY1305_SHA256,
            CipherSuite::TLS13_AES_128_GCM_SHA256,
            CipherSuite::TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384,
            CipherSuite::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256,
        ])
    );
}

#[test]
fn every_cipher_name_maps() {
    let dir = TempDir::new();
    let text = minimal(
        &dir,
        "ciphersuites = TLS_AES_128_GCM_SHA256:TLS_AES_256_GCM_SHA384:TLS_CHACHA20_POLY1305_SHA256\n\
         ciphers = ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256:\
         ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-RSA-AES256-GCM-SHA384:\
         ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-RSA-CHACHA20-POLY1305\n",
    );
    let service = only_service(&parse(&text).unwrap()).clone();
    assert_eq!(
        service.cipher_suites,
        Some(vec![
            CipherSuite::TLS13_AES_128_GCM_SHA256,
            CipherSuite::TLS13_AES_256_GCM_SHA384,
            CipherSuite::TLS13_CHACHA20_POLY1305_SHA256,
            CipherSuite::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
            CipherSuite::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,
            CipherSuite::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
            CipherSuite::TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384,
            CipherSuite::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256,
            CipherSuite::TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256,
        ])
    );
}

#[test]
fn ciphersuites_alone_keeps_tls12_suites() {
    let dir = TempDir::new();
    let service =
        only_service(&parse(&minimal(&dir, "ciphersuites = TLS_AES_256_GCM_SHA384\n")).unwrap())
            .clone();
    let suites = service.cipher_suites.unwrap();
    assert_eq!(suites[0], CipherSuite::TLS13_AES_256_GCM_SHA384);
    assert_eq!(suites.len(), 1 + 6);
    assert!(suites.contains(&CipherSuite::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256));
}

#[test]
fn timeouts_all_set() {
    let dir = TempDir::new();
    let text = minimal(
        &dir,
        "TIMEOUTbusy = 1\nTIMEOUTidle = 2\nTIMEOUTconnect = 3\nTIMEOUTclose = 4\nTIMEOUThandshake = 5\n",
    );
    let service = only_service(&parse(&text).unwrap()).clone();
    assert_eq!(
        service.timeouts,
        Timeouts {
            busy: Duration::from_secs(1),
            idle: Duration::from_secs(2),
            connect: Duration::from_secs(3),
            close: Duration::from_secs(4),
            handshake: Duration::from_secs(5),
        }
    );
}

#[test]
fn ktls_values() {
    let dir = TempDir::new();
    for (value, mode) in [
        ("auto", KtlsMode::Auto),
        ("on", KtlsMode::On),
        ("off", KtlsMode::Off),
    ] {
        let service =
            only_service(&parse(&minimal(&dir, &format!("ktls = {value}\n"))).unwrap()).clone();
        assert_eq!(service.ktls, mode, "ktls = {value}");
    }
}

#[test]
fn proxy_options() {
    let dir = TempDir::new();
    let cases = [
        ("protocol = proxy", Some(ProxyVersion::V1)),
        ("proxy_protocol = v1", Some(ProxyVersion::V1)),
        ("proxy_protocol = V2", Some(ProxyVersion::V2)),
    ];
    for (line, expected) in cases {
        let service = only_service(&parse(&minimal(&dir, &format!("{line}\n"))).unwrap()).clone();
        assert_eq!(service.proxy_protocol, expected, "{line}");
    }
    let service = only_service(&parse(&minimal(&dir, "accept_proxy = yes\n")).unwrap()).clone();
    assert!(service.accept_proxy);
}

#[test]
fn transparent_values() {
    let dir = TempDir::new();
    for (value, source) in [("source", true), ("none", false), ("no", false)] {
        let service =
            only_service(&parse(&minimal(&dir, &format!("transparent = {value}\n"))).unwrap())
                .clone();
        assert_eq!(service.transparent_source, source, "transparent = {value}");
    }
}

// ---------------------------------------------------------------------------
// Sections, inheritance and sni

#[test]
fn global_service_options_are_inherited() {
    let dir = TempDir::new();
    let text = format!(
        "cert = {}
key = {}
TIMEOUTidle = 600
sslVersionMin = TLSv1.3
connect = 127.0.0.1:8080
alpn = h2

[web]
accept = 443

[api]
accept = 8443
connect = 127.0.0.1:9090
cert = {}
TIMEOUTidle = 60
alpn = http/1.1
",
        dir.file("server.crt"),
        dir.file("server.key"),
        dir.file("both.pem"),
    );
    let config = parse(&text).unwrap();
    assert_eq!(config.services.len(), 2);

    let web = &config.services[0];
    assert_eq!(web.name, "web");
    assert_eq!(web.accept, inet("[::]:443"));
    assert_eq!(web.connect, vec![inet("127.0.0.1:8080")]);
    assert_eq!(web.certs[0].cert, PathBuf::from(dir.file("server.crt")));
    assert_eq!(
        web.certs[0].key,
        Some(PathBuf::from(dir.file("server.key")))
    );
    assert_eq!(web.certs[0].origin.line, 1);
    assert_eq!(web.timeouts.idle, Duration::from_secs(600));
    assert_eq!(web.tls_min, TlsVersion::Tls13);
    assert_eq!(web.alpn, vec!["h2".to_string()]);

    let api = &config.services[1];
    assert_eq!(api.name, "api");
    assert_eq!(api.connect, vec![inet("127.0.0.1:9090")]);
    assert_eq!(api.certs.len(), 1);
    assert_eq!(api.certs[0].cert, PathBuf::from(dir.file("both.pem")));
    assert_eq!(api.certs[0].key, None);
    assert_eq!(api.timeouts.idle, Duration::from_secs(60));
    assert_eq!(api.timeouts.busy, Timeouts::default().busy);
    assert_eq!(api.tls_min, TlsVersion::Tls13);
    assert_eq!(api.alpn, vec!["http/1.1".to_string()]);
}

#[test]
fn global_accept_with_sections() {
    let dir = TempDir::new();
    let text = format!("{}\n[other]\naccept = 9443\n", minimal(&dir, ""));
    let config = parse(&text).unwrap();
    let names: Vec<&str> = config.services.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, ["default", "other"]);
    assert_eq!(config.services[1].accept, inet("[::]:9443"));
    assert_eq!(config.services[1].connect, vec![inet("127.0.0.1:8080")]);
}

#[test]
fn sni_sections_attach_to_parent() {
    let dir = TempDir::new();
    let text = format!(
        "[www.example.com]
sni = web:WWW.Example.com
cert = {}
key = {}

[web]
accept = 443
connect = 127.0.0.1:8080
cert = {}

[wild]
sni = web:*.example.org
cert = {}
connect = 127.0.0.1:9000
",
        dir.file("other.crt"),
        dir.file("other.key"),
        dir.file("both.pem"),
        dir.file("server.crt"),
    );
    let config = parse(&text).unwrap();
    let web = only_service(&config);
    assert_eq!(web.name, "web");
    assert_eq!(web.sni.len(), 2);

    let first = &web.sni[0];
    assert_eq!(first.name, "www.example.com");
    assert_eq!(first.pattern, "www.example.com");
    assert_eq!(first.cert.cert, PathBuf::from(dir.file("other.crt")));
    assert_eq!(first.cert.key, Some(PathBuf::from(dir.file("other.key"))));
    assert!(first.connect.is_empty());

    let wild = &web.sni[1];
    assert_eq!(wild.pattern, "*.example.org");
    assert_eq!(wild.cert.key, None);
    assert_eq!(wild.connect, vec![inet("127.0.0.1:9000")]);
}

#[test]
fn sni_parent_may_be_default_service() {
    let dir = TempDir::new();
    let text = format!(
        "{}\n[alt]\nsni = default:alt.example.com\ncert = {}\n",
        minimal(&dir, ""),
        dir.file("other.crt")
    );
    let config = parse(&text).unwrap();
    let service = only_service(&config);
    assert_eq!(service.sni[0].pattern, "alt.example.com");
}

// ---------------------------------------------------------------------------
// Errors, with their whole text

#[test]
fn error_invalid_seconds() {
    let dir = TempDir::new();
    let text = format!("{}TIMEOUTidle = abc\n{}", "\n".repeat(6), minimal(&dir, ""));
    assert_eq!(
        error_text(&text),
        "/etc/tlsplice.conf:7: TIMEOUTidle = abc: invalid number of seconds; use a whole number such as 43200"
    );
}

/// Appends `line` to a valid configuration and returns the error text, which
/// names line 5.
fn line5_error(line: &str) -> String {
    let dir = TempDir::new();
    error_text(&minimal(&dir, &format!("{line}\n")))
}

#[test]
fn error_value_messages() {
    let cases = [
        ("TIMEOUTbusy = 0", "TIMEOUTbusy = 0: 0 seconds is not allowed; use a whole number such as 300"),
        ("TIMEOUTconnect = -1", "TIMEOUTconnect = -1: invalid number of seconds; use a whole number such as 10"),
        ("TIMEOUTclose = 1.5", "TIMEOUTclose = 1.5: invalid number of seconds; use a whole number such as 60"),
        (
            "TIMEOUThandshake = 99999999999",
            "TIMEOUThandshake = 99999999999: too many seconds; use at most 4294967295",
        ),
        ("histogram_log_interval = 0", "histogram_log_interval = 0: 0 seconds is not allowed; use a whole number such as 10"),
        ("shutdown_timeout = soon", "shutdown_timeout = soon: invalid number of seconds; use a whole number such as 30"),
        ("syslog = maybe", "syslog = maybe: invalid value; use yes or no"),
        ("privsep = 1", "privsep = 1: invalid value; use yes or no"),
        ("splice = io_uring", "splice = io_uring: invalid value; use direct or ring"),
        ("accept_proxy = true", "accept_proxy = true: invalid value; use yes or no"),
        ("foreground = always", "foreground = always: invalid value; use yes, no or quiet"),
        ("threads = 0", "threads = 0: invalid thread count; use a whole number from 1 to 1024"),
        ("threads = 1025", "threads = 1025: invalid thread count; use a whole number from 1 to 1024"),
        ("maxconn = 0", "maxconn = 0: invalid connection limit; use a whole number from 1 to 4294967295"),
        ("chroot = jail", "chroot = jail: relative path; use an absolute path such as /var/run/tlsplice"),
        (
            "stats = localhost:9100",
            "stats = localhost:9100: invalid address; use a port (bound to 127.0.0.1) or a literal IP address and port such as 127.0.0.1:9100",
        ),
        (
            "debug = 8",
            "debug = 8: invalid log level; use a number from 0 to 7 or one of emerg, alert, crit, err, warning, notice, info, debug",
        ),
        (
            "debug = mars.info",
            "debug = mars.info: unknown syslog facility `mars`; use one of auth, authpriv, cron, daemon, ftp, kern, lpr, mail, news, syslog, user, uucp, local0, local1, local2, local3, local4, local5, local6, local7",
        ),
        ("local = backend.test", "local = backend.test: invalid IP address; use a literal address such as 127.0.0.2 or ::1"),
        (
            "alpn = h2,,http/1.1",
            "alpn = h2,,http/1.1: invalid ALPN protocol id ``; use comma-separated ids of 1 to 255 printable characters, such as h2,http/1.1",
        ),
        (
            "sslVersionMin = TLSv1",
            "sslVersionMin = TLSv1: rustls supports only TLSv1.2 and TLSv1.3; use TLSv1.2 or TLSv1.3",
        ),
        (
            "sslVersionMax = TLSv1.1",
            "sslVersionMax = TLSv1.1: rustls supports only TLSv1.2 and TLSv1.3; use TLSv1.2 or TLSv1.3",
        ),
        ("sslVersion = SSLv3", "sslVersion = SSLv3: rustls supports only TLSv1.2 and TLSv1.3; use TLSv1.2 or TLSv1.3"),
        ("sslVersion = TLSv2", "sslVersion = TLSv2: invalid TLS version; use TLSv1.2, TLSv1.3 or all"),
        (
            "ciphersuites = TLS_AES_128_CCM_SHA256",
            "ciphersuites = TLS_AES_128_CCM_SHA256: unknown cipher suite `TLS_AES_128_CCM_SHA256`; supported: TLS_AES_128_GCM_SHA256, TLS_AES_256_GCM_SHA384, TLS_CHACHA20_POLY1305_SHA256",
        ),
        (
            "ciphers = HIGH:!aNULL",
            "ciphers = HIGH:!aNULL: unknown cipher suite `HIGH`; supported: ECDHE-ECDSA-AES128-GCM-SHA256, ECDHE-RSA-AES128-GCM-SHA256, ECDHE-ECDSA-AES256-GCM-SHA384, ECDHE-RSA-AES256-GCM-SHA384, ECDHE-ECDSA-CHACHA20-POLY1305, ECDHE-RSA-CHACHA20-POLY1305",
        ),
        (
            "ciphers = TLS_AES_128_GCM_SHA256",
            "ciphers = TLS_AES_128_GCM_SHA256: `TLS_AES_128_GCM_SHA256` belongs in `ciphersuites`; move it there",
        ),
        (
            "ciphersuites = TLS_AES_128_GCM_SHA256::TLS_AES_256_GCM_SHA384",
            "ciphersuites = TLS_AES_128_GCM_SHA256::TLS_AES_256_GCM_SHA384: empty cipher suite name; separate names with single colons",
        ),
        ("ktls = yes", "ktls = yes: invalid value; use auto, on or off"),
        (
            "protocol = smtp",
            "protocol = smtp: protocol `smtp` is not implemented by tlsplice; remove it (only `protocol = proxy` is supported)",
        ),
        ("protocol = http", "protocol = http: unknown protocol; use proxy"),
        ("proxy_protocol = v3", "proxy_protocol = v3: invalid PROXY protocol version; use v1 or v2"),
        (
            "transparent = destination",
            "transparent = destination: transparent = destination is not implemented by tlsplice; use source or none",
        ),
        ("transparent = both", "transparent = both: transparent = both is not implemented by tlsplice; use source or none"),
        ("transparent = yes", "transparent = yes: invalid value; use source or none"),
    ];
    for (line, message) in cases {
        assert_eq!(line5_error(line), format!("{FILE}:5: {message}"), "{line}");
    }
}

#[test]
fn error_address_messages() {
    let forms = "use host:port, [ipv6]:port, a bare port, or a /path for a UNIX socket";
    let long_path = format!("/{}", "s".repeat(107));
    let cases = [
        ("connect = 127.0.0.1:0", "port 0 cannot be connected to; use a port from 1 to 65535".to_string()),
        ("connect = 0", "port 0 cannot be connected to; use a port from 1 to 65535".to_string()),
        ("connect = 127.0.0.1:http", "invalid port `http`; use a number from 1 to 65535".to_string()),
        ("connect = 127.0.0.1:65536", "invalid port `65536`; use a number from 1 to 65535".to_string()),
        ("connect = backend.test", format!("missing port; {forms}")),
        ("connect = ::1:80", "IPv6 address without brackets; write it as [::1]:80".to_string()),
        ("connect = :80", format!("missing host before `:`; {forms}")),
        ("connect = [::1]", format!("missing port after the bracketed IPv6 address; {forms}")),
        ("connect = [fe80::zz]:80", format!("invalid IPv6 address `fe80::zz`; {forms}")),
        (
            "connect = nx.test:80",
            "failed to resolve host `nx.test`: name not known; use an IP address or a name that resolves".to_string(),
        ),
        (
            "connect = empty.test:80",
            "host `empty.test` has no addresses; use an IP address or a name that resolves".to_string(),
        ),
        (
            &format!("connect = {long_path}"),
            "UNIX socket path is 108 bytes long; use a path of at most 107 bytes".to_string(),
        ),
    ];
    for (line, message) in cases {
        let (option, value) = line.split_once(" = ").unwrap();
        assert_eq!(
            line5_error(line),
            format!("{FILE}:5: {option} = {value}: {message}"),
            "{line}"
        );
    }
    assert_eq!(
        line5_error("accept = 127.0.0.1:99999"),
        format!("{FILE}:5: accept = 127.0.0.1:99999: already set on line 1; remove one of the two lines")
    );
}

#[test]
fn error_accept_port_range() {
    let dir = TempDir::new();
    let text = minimal(&dir, "").replace("accept = 8443", "accept = 127.0.0.1:99999");
    assert_eq!(
        error_text(&text),
        format!("{FILE}:1: accept = 127.0.0.1:99999: invalid port `99999`; use a number from 0 to 65535")
    );
}

#[test]
fn error_unknown_option() {
    assert_eq!(
        line5_error("TIMEOUTidel = 5"),
        format!("{FILE}:5: TIMEOUTidel = 5: unknown option; did you mean `TIMEOUTidle`?")
    );
    assert_eq!(
        line5_error("listen = 443"),
        format!("{FILE}:5: listen = 443: unknown option; see docs/configuration.md for the supported options")
    );
}

#[test]
fn error_unimplemented_stunnel_options() {
    assert_eq!(
        line5_error("verify = 2"),
        format!(
            "{FILE}:5: verify = 2: stunnel option `verify` is not implemented by tlsplice; remove it \
             (or check client certificates in the backend, because tlsplice does not verify peers)"
        )
    );
    assert_eq!(
        line5_error("CAfile = /etc/ssl/ca.pem"),
        format!(
            "{FILE}:5: CAfile = /etc/ssl/ca.pem: stunnel option `CAfile` is not implemented by tlsplice; remove it \
             (or check client certificates in the backend, because tlsplice does not verify peers)"
        )
    );
    assert_eq!(
        line5_error("client = yes"),
        format!(
            "{FILE}:5: client = yes: stunnel option `client` is not implemented by tlsplice; remove it \
             (or tlsplice only accepts TLS and connects to plain-text backends; keep stunnel for client mode)"
        )
    );
    assert_eq!(
        line5_error("sessionCacheSize = 1000"),
        format!(
            "{FILE}:5: sessionCacheSize = 1000: stunnel option `sessionCacheSize` is not implemented by tlsplice; \
             remove it (or rustls manages sessions and tickets itself)"
        )
    );
    for name in [
        "CApath",
        "CRLfile",
        "CRLpath",
        "verifyChain",
        "verifyPeer",
        "checkHost",
        "checkEmail",
        "checkIP",
        "compression",
        "curves",
        "delay",
        "engine",
        "engineId",
        "engineNum",
        "engineDefault",
        "EGD",
        "exec",
        "execArgs",
        "failover",
        "fips",
        "ident",
        "include",
        "libwrap",
        "logId",
        "OCSP",
        "OCSPaia",
        "OCSPflag",
        "OCSPnonce",
        "options",
        "PSKidentity",
        "PSKsecrets",
        "pty",
        "redirect",
        "renegotiation",
        "requireCert",
        "reset",
        "retry",
        "RNDbytes",
        "RNDfile",
        "RNDoverwrite",
        "service",
        "sessionCacheTimeout",
        "sessionResume",
        "socket",
        "stack",
        "ticketKeySecret",
        "ticketMacSecret",
        "TIMEOUTocsp",
        "securityLevel",
        "encryptedKey",
        "config",
        "protocolAuthentication",
        "protocolDomain",
        "protocolHeader",
        "protocolHost",
        "protocolPassword",
        "protocolUsername",
    ] {
        let text = line5_error(&format!("{name} = x"));
        let expected = format!("{FILE}:5: {name} = x: stunnel option `{name}` is not implemented by tlsplice; remove it (or ");
        assert!(text.starts_with(&expected), "{text}");
    }
}

#[test]
fn error_missing_value() {
    assert_eq!(
        line5_error("connect ="),
        format!("{FILE}:5: connect: missing value; write `connect = host:port or /unix/path`")
    );
}

#[test]
fn error_invalid_lines() {
    assert_eq!(
        line5_error("accept 443"),
        format!("{FILE}:5: invalid line `accept 443`; write `option = value`, `[section]` or a comment starting with ; or #")
    );
    assert_eq!(
        line5_error("[web"),
        format!("{FILE}:5: invalid section header `[web`; write it as [name]")
    );
    assert_eq!(
        line5_error("[ ]"),
        format!("{FILE}:5: empty section name; write it as [name]")
    );
}

#[test]
fn error_duplicate_option() {
    assert_eq!(
        line5_error("local = 127.0.0.1\nlocal = 127.0.0.2"),
        format!("{FILE}:6: local = 127.0.0.2: already set on line 5; remove one of the two lines")
    );
    assert_eq!(
        line5_error("sslVersionMin = TLSv1.2\nsslVersion = TLSv1.3"),
        format!("{FILE}:6: sslVersion = TLSv1.3: conflicts with `sslVersionMin` on line 5; remove one of them")
    );
    assert_eq!(
        line5_error("protocol = proxy\nproxy_protocol = v2"),
        format!("{FILE}:6: proxy_protocol = v2: conflicts with `protocol` on line 5; remove one of them")
    );
    assert_eq!(
        line5_error("Syslog = no\nsyslog = no"),
        format!("{FILE}:6: syslog = no: already set on line 5; remove one of the two lines")
    );
}

#[test]
fn error_global_option_in_section() {
    let dir = TempDir::new();
    let text = format!("[web]\n{}debug = 7\n", minimal(&dir, ""));
    assert_eq!(
        error_text(&text),
        format!(
            "{FILE}:6: debug = 7: `debug` is a global option; move it above the first [section]"
        )
    );
}

#[test]
fn error_missing_required_options() {
    let dir = TempDir::new();
    let cert = dir.file("both.pem");
    assert_eq!(
        error_text(&format!("connect = 127.0.0.1:80\ncert = {cert}\n")),
        format!("{FILE}: service [default] has no `accept`; add `accept = [host:]port`")
    );
    assert_eq!(
        error_text(&format!("accept = 443\ncert = {cert}\n")),
        format!("{FILE}: service [default] has no `connect`; add `connect = host:port`")
    );
    assert_eq!(
        error_text("accept = 443\nconnect = 127.0.0.1:80\n"),
        format!("{FILE}: service [default] has no `cert`; add `cert = /path/to/cert.pem`")
    );
    assert_eq!(
        error_text(&format!("cert = {cert}\n\n[web]\nconnect = 127.0.0.1:80\n")),
        format!("{FILE}:3: section [web] has no `accept`; add `accept = [host:]port`")
    );
    assert_eq!(
        error_text(&format!("cert = {cert}\n[web]\naccept = 443\n")),
        format!("{FILE}:2: section [web] has no `connect`; add `connect = host:port`")
    );
    assert_eq!(
        error_text("[web]\naccept = 443\nconnect = 127.0.0.1:80\n"),
        format!("{FILE}:1: section [web] has no `cert`; add `cert = /path/to/cert.pem`")
    );
    assert_eq!(
        error_text("; nothing here\n"),
        format!(
            "{FILE}: no service defined; add a [section] with accept, connect and cert options"
        )
    );
}

#[test]
fn error_unreadable_cert_and_key() {
    let dir = TempDir::new();
    let missing = dir.file("missing.pem");
    let text = minimal(&dir, "").replace(&dir.file("server.crt"), &missing);
    assert_eq!(
        error_text(&text),
        format!(
            "{FILE}:3: cert = {missing}: failed to read file: No such file or directory (os error 2); \
             check the path and its permissions"
        )
    );
    let text = minimal(&dir, "").replace(&dir.file("server.key"), &dir.path.display().to_string());
    assert_eq!(
        error_text(&text),
        format!(
            "{FILE}:4: key = {}: failed to read file: Is a directory (os error 21); \
             check the path and its permissions",
            dir.path.display()
        )
    );
}

#[test]
fn error_key_placement() {
    let dir = TempDir::new();
    let text = format!(
        "accept = 443\nconnect = 127.0.0.1:80\ncert = {}\nkey = {}\nkey = {}\n",
        dir.file("server.crt"),
        dir.file("server.key"),
        dir.file("other.key")
    );
    assert_eq!(
        error_text(&text),
        format!(
            "{FILE}:5: key = {}: the cert on line 3 already has its key on line 4; add a `cert` line before this key",
            dir.file("other.key")
        )
    );

    let text = format!(
        "cert = {}\n[web]\naccept = 443\nconnect = 127.0.0.1:80\nkey = {}\n",
        dir.file("server.crt"),
        dir.file("server.key")
    );
    assert_eq!(
        error_text(&text),
        format!(
            "{FILE}:5: key = {}: no `cert` for this key; add the `cert` line it belongs to in the same section",
            dir.file("server.key")
        )
    );

    let text = format!(
        "key = {}\nkey = {}\n",
        dir.file("server.key"),
        dir.file("other.key")
    );
    assert_eq!(
        error_text(&text),
        format!(
            "{FILE}:2: key = {}: already set on line 1; remove one of the two lines",
            dir.file("other.key")
        )
    );
}

#[test]
fn error_tls_versions_conflict() {
    assert_eq!(
        line5_error("sslVersionMin = TLSv1.3\nsslVersionMax = TLSv1.2"),
        format!(
            "{FILE}:6: sslVersionMax = TLSv1.2: sslVersionMin TLSv1.3 is above sslVersionMax TLSv1.2; \
             lower sslVersionMin or raise sslVersionMax"
        )
    );

    let dir = TempDir::new();
    let text = format!(
        "sslVersionMin = TLSv1.3\ncert = {}\nconnect = 127.0.0.1:80\n[web]\naccept = 443\nsslVersionMax = TLSv1.2\n",
        dir.file("both.pem")
    );
    assert_eq!(
        error_text(&text),
        format!(
            "{FILE}:6: sslVersionMax = TLSv1.2: sslVersionMin TLSv1.3 is above sslVersionMax TLSv1.2; \
             lower sslVersionMin or raise sslVersionMax"
        )
    );
}

#[test]
fn error_unknown_user_and_group() {
    assert_eq!(
        line5_error("setuid = tlsplice-no-such-user"),
        format!("{FILE}:5: setuid = tlsplice-no-such-user: user not found; use an existing user name or a numeric uid")
    );
    assert_eq!(
        line5_error("setgid = tlsplice-no-such-group"),
        format!(
            "{FILE}:5: setgid = tlsplice-no-such-group: group not found; use an existing group name or a numeric gid"
        )
    );
}

#[test]
fn error_duplicate_sections() {
    let dir = TempDir::new();
    let body = format!(
        "accept = 443\nconnect = 127.0.0.1:80\ncert = {}\n",
        dir.file("both.pem")
    );
    assert_eq!(
        error_text(&format!("[web]\n{body}[web]\n{body}")),
        format!("{FILE}:5: duplicate section [web], first defined on line 1; rename one of them")
    );
    assert_eq!(
        error_text(&format!("{body}[default]\n{body}")),
        format!(
            "{FILE}:4: section [default] has the name of the service defined by `accept` before the first section; \
             rename the section"
        )
    );
}

#[test]
fn error_sni_sections() {
    let dir = TempDir::new();
    let cert = dir.file("both.pem");
    let web = format!("[web]\naccept = 443\nconnect = 127.0.0.1:80\ncert = {cert}\n");

    assert_eq!(
        error_text(&format!("{web}[alt]\nsni = www:alt.example.com\ncert = {cert}\n")),
        format!(
            "{FILE}:6: sni = www:alt.example.com: parent section [www] not found; define it or correct the name"
        )
    );
    assert_eq!(
        error_text(&format!(
            "{web}[alt]\nsni = web:alt.example.com\ncert = {cert}\n[alt2]\nsni = alt:b.example.com\ncert = {cert}\n"
        )),
        format!(
            "{FILE}:9: sni = alt:b.example.com: [alt] is an sni section itself; name a section that has `accept`"
        )
    );
    assert_eq!(
        error_text(&format!(
            "{web}[alt]\nsni = web:alt.example.com\naccept = 444\ncert = {cert}\n"
        )),
        format!(
            "{FILE}:7: accept = 444: an sni section uses the listener of [web]; remove `accept`"
        )
    );
    assert_eq!(
        error_text(&format!("{web}[alt]\nTIMEOUTidle = 5\nsni = web:alt.example.com\ncert = {cert}\n")),
        format!(
            "{FILE}:6: TIMEOUTidle = 5: `TIMEOUTidle` has no effect in an sni section, because the listener \
             belongs to [web]; move it to [web]"
        )
    );
    assert_eq!(
        error_text(&format!("{web}[alt]\nsni = web:alt.example.com\ncert = {cert}\ncert = {cert}\n")),
        format!(
            "{FILE}:8: cert = {cert}: an sni section takes one cert; give each certificate its own sni section"
        )
    );
    assert_eq!(
        error_text(&format!("{web}[alt]\nsni = web:alt.example.com\n")),
        format!("{FILE}:5: section [alt] has no `cert`; add `cert = /path/to/cert.pem`")
    );
    assert_eq!(
        error_text(&format!(
            "{web}[a]\nsni = web:x.example.com\ncert = {cert}\n[b]\nsni = web:X.example.com\ncert = {cert}\n"
        )),
        format!(
            "{FILE}:9: sni = web:X.example.com: server name `x.example.com` is already routed to [a] on line 5; \
             remove one of them"
        )
    );
    assert_eq!(
        error_text(&format!("{web}[alt]\nsni = alt.example.com\n")),
        format!(
            "{FILE}:6: sni = alt.example.com: missing `:` between service and server name; \
             use parent_service:server_name, such as web:www.example.com or web:*.example.com"
        )
    );
    assert_eq!(
        error_text(&format!("{web}[alt]\nsni = web:a..example.com\n")),
        format!(
            "{FILE}:6: sni = web:a..example.com: invalid server name pattern `a..example.com`; \
             use parent_service:server_name, such as web:www.example.com or web:*.example.com"
        )
    );
    assert_eq!(
        error_text(&format!("sni = web:alt.example.com\n{web}")),
        format!(
            "{FILE}:1: sni = web:alt.example.com: `sni` must be in a [section] of its own; add a section header above it"
        )
    );
}

#[test]
fn parse_file_missing_file() {
    let dir = TempDir::new();
    let path = dir.path.join("absent.conf");
    let err = parse_file(&path).unwrap_err();
    assert_eq!(
        err.to_string(),
        format!(
            "{}: failed to read configuration file: No such file or directory (os error 2); \
             check the path and its permissions",
            path.display()
        )
    );
}

// ---------------------------------------------------------------------------
// Options that conflict with each other

#[test]
fn output_and_histogram_log_same_file_rejected() {
    let dir = TempDir::new();
    assert_eq!(
        line5_error("output = /var/log/t.log\nhistogram_log = /var/log/t.log"),
        format!(
            "{FILE}:6: histogram_log = /var/log/t.log: `output` on line 5 names the same file /var/log/t.log; use different files for output and histogram_log"
        )
    );
    // Another spelling of the same path is the same file.
    let text = minimal(
        &dir,
        "histogram_log = /var/log/./t.log\noutput = /var//log/t.log\n",
    );
    assert_eq!(
        error_text(&text),
        format!(
            "{FILE}:6: output = /var//log/t.log: `histogram_log` on line 5 names the same file /var//log/t.log; use different files for output and histogram_log"
        )
    );
}

#[test]
fn pid_same_file_as_log_rejected() {
    assert_eq!(
        line5_error("pid = /run/t.pid\noutput = /run/t.pid"),
        format!(
            "{FILE}:6: output = /run/t.pid: `pid` on line 5 names the same file /run/t.pid; use different files for output and pid"
        )
    );
    assert_eq!(
        line5_error("histogram_log = /run/t.pid\npid = /run/t.pid"),
        format!(
            "{FILE}:6: pid = /run/t.pid: `histogram_log` on line 5 names the same file /run/t.pid; use different files for histogram_log and pid"
        )
    );
    // The pid file is written inside the chroot; the log is opened outside it.
    assert_eq!(
        line5_error("chroot = /var/jail\npid = /t.pid\noutput = /var/jail/t.pid"),
        format!(
            "{FILE}:7: output = /var/jail/t.pid: `pid` on line 6 names the same file /var/jail/t.pid; use different files for output and pid"
        )
    );
}

#[test]
fn distinct_files_accepted() {
    let dir = TempDir::new();
    let text = minimal(
        &dir,
        "output = /var/log/t.log\nhistogram_log = /var/log/t.hlog\npid = /run/t.pid\n",
    );
    parse(&text).unwrap();
    // With a chroot, `pid = /t.log` is /var/jail/t.log, not the log file.
    let text = minimal(&dir, "chroot = /var/jail\npid = /t.log\noutput = /t.log\n");
    parse(&text).unwrap();
}

#[test]
fn stats_on_accept_address_rejected() {
    let dir = TempDir::new();
    let certs = format!(
        "cert = {}\nkey = {}\n",
        dir.file("server.crt"),
        dir.file("server.key")
    );
    let text = format!(
        "stats = 127.0.0.1:19443\n[web]\naccept = 127.0.0.1:19443\nconnect = 127.0.0.1:8080\n{certs}"
    );
    assert_eq!(
        error_text(&text),
        format!(
            "{FILE}:1: stats = 127.0.0.1:19443: service [web] has `accept = 127.0.0.1:19443` on line 3 on the same port; give stats and accept different ports or addresses"
        )
    );

    // A bare-port accept listens on [::], which covers 127.0.0.1 too.
    assert_eq!(
        line5_error("stats = 8443"),
        format!(
            "{FILE}:5: stats = 127.0.0.1:8443: service [default] has `accept = [::]:8443` on line 1 on the same port; give stats and accept different ports or addresses"
        )
    );

    // A wildcard stats address covers the service's address.
    let text = format!(
        "stats = 0.0.0.0:19443\n[api]\naccept = 127.0.0.1:19443\nconnect = 127.0.0.1:8080\n{certs}"
    );
    assert!(
        error_text(&text).contains("service [api] has `accept = 127.0.0.1:19443` on line 3"),
        "{}",
        error_text(&text)
    );
}

#[test]
fn stats_on_other_port_accepted() {
    let dir = TempDir::new();
    let certs = format!(
        "cert = {}\nkey = {}\n",
        dir.file("server.crt"),
        dir.file("server.key")
    );
    for (stats, accept) in [
        ("127.0.0.1:9100", "127.0.0.1:19443"),
        ("127.0.0.2:19443", "127.0.0.1:19443"),
        ("[::1]:19443", "0.0.0.0:19443"),
        ("127.0.0.1:0", "127.0.0.1:0"),
    ] {
        let text =
            format!("stats = {stats}\n[web]\naccept = {accept}\nconnect = 127.0.0.1:8080\n{certs}");
        assert!(parse(&text).is_ok(), "stats = {stats}, accept = {accept}");
    }
}

// ---------------------------------------------------------------------------
// Command-line flags

fn flags(accept: &str, connect: &str) -> Flags {
    Flags {
        accept: accept.to_string(),
        connect: connect.to_string(),
        ..Flags::default()
    }
}

fn flags_config(flags: &Flags) -> Result<Config, ConfigError> {
    super::flags::config_from_flags(flags, fake_resolve)
}

#[test]
fn flags_without_cert_self_signed() {
    let config = flags_config(&flags("0", "backend.test:8080")).unwrap();
    assert_eq!(config.source, None);
    assert!(config.global.foreground);
    assert!(config.global.log_stderr);
    assert!(!config.global.syslog);
    assert_eq!(config.global.output, None);
    assert_eq!(config.global.threads, None);

    let service = only_service(&config);
    assert_eq!(service.name, "default");
    assert_eq!(service.accept, inet("[::]:0"));
    assert_eq!(service.connect, vec![inet("127.0.0.5:8080")]);
    assert!(service.certs.is_empty());
    assert!(service.self_signed);
    assert_eq!(service.timeouts, Timeouts::default());
}

#[test]
fn flags_with_cert_and_threads() {
    let dir = TempDir::new();
    let flags = Flags {
        cert: Some(dir.file("server.crt").into()),
        key: Some(dir.file("server.key").into()),
        threads: Some(2),
        ..flags("127.0.0.1:8443", "/run/backend.sock")
    };
    let config = flags_config(&flags).unwrap();
    assert_eq!(config.global.threads, Some(2));
    let service = only_service(&config);
    assert!(!service.self_signed);
    assert_eq!(
        service.connect,
        vec![Address::Unix(PathBuf::from("/run/backend.sock"))]
    );
    assert_eq!(service.certs[0].cert, PathBuf::from(dir.file("server.crt")));
    assert_eq!(
        service.certs[0].key,
        Some(PathBuf::from(dir.file("server.key")))
    );
    assert_eq!(service.certs[0].origin.option, "--cert");
}

#[test]
fn flags_public_entry_point() {
    let config = Config::from_flags(&flags("127.0.0.1:0", "127.0.0.1:8080")).unwrap();
    assert_eq!(only_service(&config).accept, inet("127.0.0.1:0"));
}

#[test]
fn flags_errors() {
    let dir = TempDir::new();
    let error = |flags: Flags| flags_config(&flags).unwrap_err().to_string();

    assert_eq!(
        error(flags("", "127.0.0.1:80")),
        "--accept: missing value; give an address such as --accept 127.0.0.1:8443"
    );
    assert_eq!(
        error(flags("8443", "127.0.0.1:0")),
        "--connect 127.0.0.1:0: port 0 cannot be connected to; use a port from 1 to 65535"
    );
    assert_eq!(
        error(flags("host-without-port", "127.0.0.1:80")),
        "--accept host-without-port: missing port; use host:port, [ipv6]:port, a bare port, or a /path for a UNIX socket"
    );
    assert_eq!(
        error(Flags {
            key: Some(dir.file("server.key").into()),
            ..flags("8443", "127.0.0.1:80")
        }),
        format!(
            "--key {}: a key needs its certificate; add --cert or remove --key",
            dir.file("server.key")
        )
    );
    assert_eq!(
        error(Flags {
            cert: Some(dir.file("missing.crt").into()),
            ..flags("8443", "127.0.0.1:80")
        }),
        format!(
            "--cert {}: failed to read file: No such file or directory (os error 2); check the path and its permissions",
            dir.file("missing.crt")
        )
    );
    assert_eq!(
        error(Flags {
            threads: Some(0),
            ..flags("8443", "127.0.0.1:80")
        }),
        "--threads 0: invalid thread count; use a whole number from 1 to 1024"
    );
}
