//! Resource limits and operator signals: running out of file descriptors,
//! maxconn, and SIGHUP log reopening.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;

#[test]
fn out_of_descriptors_pauses_then_recovers() {
    let Some(prlimit) = program("prlimit") else {
        return;
    };
    let dir = TempDir::new("emfile");
    let cert = make_cert(&dir, "server", KeyKind::EcdsaP256, &["localhost"]);
    let backend = Backend::echo();
    let config = dir.write(
        "emfile.conf",
        &format!(
            "foreground = yes\nsyslog = no\nthreads = 1\n[web]\naccept = 127.0.0.1:0\nconnect = {}\ncert = {}\nkey = {}\n",
            backend.addr,
            cert.cert.display(),
            cert.key.display()
        ),
    );
    // A hard limit of 48 descriptors: the process itself uses about 20.
    let proxy = Proxy::start_command(
        Command::new(prlimit)
            .arg("--nofile=48:48")
            .arg(binary())
            .arg(&config),
        1,
    );

    // Idle connections that never send a ClientHello use up the descriptors.
    let mut idle = Vec::new();
    for _ in 0..60 {
        idle.push(TcpStream::connect(proxy.addr()).unwrap());
    }
    proxy.wait_for_line(&["out of file descriptors"]);

    drop(idle);
    // Once descriptors are free again, new connections are served.
    let client = client_config(std::slice::from_ref(&cert.der), rustls::ALL_VERSIONS);
    let deadline = Instant::now() + WAIT;
    loop {
        let attempt = tls_connect(proxy.addr(), &client, "localhost").and_then(|mut stream| {
            stream.write_all(b"again")?;
            let mut reply = [0u8; 5];
            stream.read_exact(&mut reply)?;
            Ok(reply)
        });
        if let Ok(reply) = attempt {
            assert_eq!(&reply, b"again");
            break;
        }
        assert!(Instant::now() < deadline, "no recovery: {attempt:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
    let warnings = proxy
        .output()
        .iter()
        .filter(|line| line.contains("out of file descriptors"))
        .count();
    assert!(warnings >= 1);
    assert!(
        warnings < 60,
        "the warning repeats per connection: {warnings}"
    );
}

#[test]
fn maxconn_closes_connections_beyond_limit() {
    let dir = TempDir::new("maxconn");
    let cert = make_cert(&dir, "server", KeyKind::EcdsaP256, &["localhost"]);
    let backend = Backend::echo();
    let proxy = Proxy::start(&format!(
        "threads = 1\nmaxconn = 2\n[web]\naccept = 127.0.0.1:0\nconnect = {}\ncert = {}\nkey = {}\n",
        backend.addr,
        cert.cert.display(),
        cert.key.display()
    ));
    let client = client_config(std::slice::from_ref(&cert.der), rustls::ALL_VERSIONS);
    let first = tls_connect(proxy.addr(), &client, "localhost").unwrap();
    let second = tls_connect(proxy.addr(), &client, "localhost").unwrap();
    let third = tls_connect(proxy.addr(), &client, "localhost");
    assert!(third.is_err(), "a third connection was served");
    proxy.wait_for_line(&["maxconn 2 reached"]);
    drop(first);
    drop(second);
}

#[test]
fn sighup_reopens_the_log_file() {
    let dir = TempDir::new("sighup");
    let cert = make_cert(&dir, "server", KeyKind::EcdsaP256, &["localhost"]);
    let backend = Backend::echo();
    let log = dir.join("tlsplice.log");
    let proxy = Proxy::start(&format!(
        "output = {}\n[web]\naccept = 127.0.0.1:0\nconnect = {}\ncert = {}\nkey = {}\n",
        log.display(),
        backend.addr,
        cert.cert.display(),
        cert.key.display()
    ));
    // logrotate's default: rename, then signal.
    let rotated = dir.join("tlsplice.log.1");
    std::fs::rename(&log, &rotated).unwrap();
    proxy.signal(libc::SIGHUP);
    // The parent's own line, not the metrics process's "metrics process: log
    // file reopened", which can come first.
    proxy.wait_for_line(&[" notice log file reopened"]);

    let client = client_config(std::slice::from_ref(&cert.der), rustls::ALL_VERSIONS);
    let mut stream = tls_connect(proxy.addr(), &client, "localhost").unwrap();
    stream.write_all(b"rotate").unwrap();
    let mut reply = [0u8; 6];
    stream.read_exact(&mut reply).unwrap();
    drop(stream);
    proxy.wait_for_conn_lines(1);

    let fresh = std::fs::read_to_string(&log).unwrap();
    assert!(fresh.contains(" conn service=web "), "{fresh}");
    let old = std::fs::read_to_string(&rotated).unwrap();
    assert!(old.contains("listening on"), "{old}");
    assert!(!old.contains(" conn service="), "{old}");
}

#[test]
fn sigusr1_logs_histogram_summary() {
    let dir = TempDir::new("sigusr1");
    let cert = make_cert(&dir, "server", KeyKind::EcdsaP256, &["localhost"]);
    let backend = Backend::echo();
    let mut proxy = Proxy::start(&format!(
        "[web]\naccept = 127.0.0.1:0\nconnect = {}\ncert = {}\nkey = {}\n",
        backend.addr,
        cert.cert.display(),
        cert.key.display()
    ));
    let client = client_config(std::slice::from_ref(&cert.der), rustls::ALL_VERSIONS);
    let mut stream = tls_connect(proxy.addr(), &client, "localhost").unwrap();
    stream.write_all(b"count me").unwrap();
    let mut reply = [0u8; 8];
    stream.read_exact(&mut reply).unwrap();
    drop(stream);
    proxy.wait_for_conn_lines(1);

    proxy.signal(libc::SIGUSR1);
    proxy.wait_for_line(&["stats: ", "web"]);
    // The process keeps running after the summary.
    assert!(proxy.child.as_mut().unwrap().try_wait().unwrap().is_none());
    let again = tls_connect(proxy.addr(), &client, "localhost");
    assert!(again.is_ok(), "{again:?}");
}
