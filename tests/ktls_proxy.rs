//! End-to-end tests of the kernel TLS path: the real tlsplice binary between
//! rustls clients and backends on loopback, with `path=ktls` checked in the
//! connection log.
//!
//! Tests that need the kernel's tls ULP skip with a printed note when it is
//! missing, so they pass on hosts without CONFIG_TLS; `scripts/ktls-vm-test` runs
//! them in a guest with kTLS. The `ktls = on` start-up check and the `ktls = off`
//! path run everywhere.
//!
//! `KTLS_TEST_SPLICE=direct` or `ring` sets the proxy's global `splice` option;
//! `scripts/ktls-vm-test` runs this suite once per mode.

mod common;

use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::path::PathBuf;
use std::sync::{mpsc, Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use rustls::crypto::aws_lc_rs::{self, cipher_suite};
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, RootCertStore, SupportedCipherSuite};
use tlsplice::tls::kernel;

use common::*;

/// Data each way for the per-suite exchange; small because the guest runs under
/// TCG, where every byte is encrypted by emulated instructions.
const SUITE_LEN: usize = 256 * 1024;

/// Returns whether the kernel has the tls ULP, printing a note when it does not.
fn ktls_available() -> bool {
    let support = kernel::probe();
    if !support.is_available() {
        eprintln!("skipping: {support}");
    }
    support.is_available()
}

/// A self-signed certificate for localhost made with rcgen (the guest has no
/// openssl command).
struct TestCert {
    cert: PathBuf,
    key: PathBuf,
    der: CertificateDer<'static>,
}

fn test_cert(dir: &TempDir) -> TestCert {
    let generated = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    TestCert {
        cert: dir.write("server.crt", &generated.cert.pem()),
        key: dir.write("server.key", &generated.signing_key.serialize_pem()),
        der: generated.cert.der().clone(),
    }
}

/// Returns the global `splice` line for the mode in `KTLS_TEST_SPLICE`, or an
/// empty string.
fn splice_option() -> String {
    match std::env::var("KTLS_TEST_SPLICE") {
        Ok(mode) if !mode.is_empty() => format!("splice = {mode}\n"),
        _ => String::new(),
    }
}

/// A proxy configuration: the global `splice` line, then one service.
fn service(cert: &TestCert, backend: &Backend, ktls: &str) -> String {
    format!(
        "{}[test]\naccept = 127.0.0.1:0\nconnect = {}\ncert = {}\nkey = {}\nktls = {ktls}\n",
        splice_option(),
        backend.addr,
        cert.cert.display(),
        cert.key.display()
    )
}

/// Connects to the proxy and completes the handshake. A failure shows the
/// proxy's output, which gives the reason a worker closed or reset the
/// connection.
fn connect(proxy: &Proxy, config: &Arc<ClientConfig>) -> TlsStream {
    tls_connect(proxy.addr(), config, "localhost")
        .unwrap_or_else(|err| panic!("handshake failed: {err}; output: {:#?}", proxy.output()))
}

/// A client configuration offering only `suite`, at the suite's TLS version.
fn client_for(cert: &TestCert, suite: SupportedCipherSuite) -> Arc<ClientConfig> {
    let mut roots = RootCertStore::empty();
    roots.add(cert.der.clone()).unwrap();
    let mut provider = aws_lc_rs::default_provider();
    provider.cipher_suites = vec![suite];
    let version = match suite {
        SupportedCipherSuite::Tls12(_) => &rustls::version::TLS12,
        SupportedCipherSuite::Tls13(_) => &rustls::version::TLS13,
    };
    Arc::new(
        ClientConfig::builder_with_provider(Arc::new(provider))
            .with_protocol_versions(&[version])
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth(),
    )
}

fn default_client(cert: &TestCert) -> Arc<ClientConfig> {
    client_for(cert, cipher_suite::TLS13_AES_128_GCM_SHA256)
}

/// Sends `total` pattern bytes through an echo backend and checks the checksum of
/// what comes back. One thread drives both directions, because a rustls stream
/// cannot be split.
fn echo_exchange(mut stream: TlsStream, total: usize) {
    stream.sock.set_nonblocking(true).unwrap();
    let mut pattern = Pattern::new(11);
    let mut sent = 0usize;
    let mut received = 0usize;
    let mut sent_sum = Checksum::new();
    let mut received_sum = Checksum::new();
    let mut chunk = vec![0u8; 64 * 1024];
    let mut pending: Vec<u8> = Vec::new();
    let mut read_buf = vec![0u8; 256 * 1024];
    let deadline = Instant::now() + Duration::from_secs(400);
    while received < total {
        assert!(
            Instant::now() < deadline,
            "transfer stalled at {received} of {total} bytes"
        );
        if pending.is_empty() && sent < total {
            let len = chunk.len().min(total - sent);
            pattern.fill(&mut chunk[..len]);
            sent_sum.update(&chunk[..len]);
            pending.extend_from_slice(&chunk[..len]);
            sent += len;
        }
        let mut progressed = false;
        if !pending.is_empty() && !stream.conn.wants_write() {
            let written = stream.conn.writer().write(&pending).unwrap();
            pending.drain(..written);
        }
        while stream.conn.wants_write() {
            match stream.conn.write_tls(&mut stream.sock) {
                Ok(_) => progressed = true,
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => break,
                Err(err) => panic!("write failed: {err}"),
            }
        }
        match stream.conn.read_tls(&mut stream.sock) {
            Ok(0) => panic!("proxy closed early after {received} bytes"),
            Ok(_) => {
                progressed = true;
                stream.conn.process_new_packets().unwrap();
                loop {
                    match stream.conn.reader().read(&mut read_buf) {
                        Ok(0) => break,
                        Ok(n) => {
                            received_sum.update(&read_buf[..n]);
                            received += n;
                        }
                        Err(err) if err.kind() == io::ErrorKind::WouldBlock => break,
                        Err(err) => panic!("read failed: {err}"),
                    }
                }
            }
            Err(err) if err.kind() == io::ErrorKind::WouldBlock => {}
            Err(err) => panic!("read_tls failed: {err}"),
        }
        if !progressed {
            thread::sleep(Duration::from_micros(200));
        }
    }
    assert_eq!(sent, total);
    assert_eq!(received, total);
    assert_eq!(received_sum.value(), sent_sum.value());

    // End in order: close_notify and FIN from the client, then the echo backend's
    // FIN comes back as close_notify.
    stream.sock.set_nonblocking(false).unwrap();
    stream.conn.send_close_notify();
    stream.flush().unwrap();
    stream.sock.shutdown(Shutdown::Write).unwrap();
    let mut rest = Vec::new();
    stream.read_to_end(&mut rest).unwrap();
    assert!(rest.is_empty());
}

fn suite_exchange(suite: SupportedCipherSuite) {
    if !ktls_available() {
        return;
    }
    let dir = TempDir::new("ktls-suite");
    let cert = test_cert(&dir);
    let backend = Backend::echo();
    let proxy = Proxy::start(&service(&cert, &backend, "auto"));
    let stream = connect(&proxy, &client_for(&cert, suite));
    echo_exchange(stream, SUITE_LEN);

    let line = &proxy.wait_for_conn_lines(1)[0];
    assert_eq!(field(line, "path"), "ktls");
    assert_eq!(field(line, "cipher"), suite.suite().as_str().unwrap());
    assert_eq!(field(line, "up"), SUITE_LEN.to_string());
    assert_eq!(field(line, "down"), SUITE_LEN.to_string());
    assert_eq!(field(line, "reason"), "done");
}

macro_rules! suite_tests {
    ($($name:ident => $suite:expr,)*) => {
        $(#[test] fn $name() { suite_exchange($suite); })*
    };
}

suite_tests! {
    tls13_aes_128_gcm => cipher_suite::TLS13_AES_128_GCM_SHA256,
    tls13_aes_256_gcm => cipher_suite::TLS13_AES_256_GCM_SHA384,
    tls13_chacha20_poly1305 => cipher_suite::TLS13_CHACHA20_POLY1305_SHA256,
    tls12_aes_128_gcm => cipher_suite::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
    tls12_aes_256_gcm => cipher_suite::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
    tls12_chacha20_poly1305 => cipher_suite::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256,
}

#[test]
fn bulk_64_mib_each_way() {
    const TOTAL: usize = 64 * 1024 * 1024;
    if !ktls_available() {
        return;
    }
    let dir = TempDir::new("ktls-bulk");
    let cert = test_cert(&dir);
    let backend = Backend::echo();
    let proxy = Proxy::start(&service(&cert, &backend, "on"));
    let stream = connect(&proxy, &default_client(&cert));
    echo_exchange(stream, TOTAL);

    let line = &proxy.wait_for_conn_lines(1)[0];
    assert_eq!(field(line, "path"), "ktls");
    assert_eq!(field(line, "up"), TOTAL.to_string());
    assert_eq!(field(line, "down"), TOTAL.to_string());
    assert_eq!(field(line, "reason"), "done");
}

/// Writes the request before the handshake finishes, so rustls sends it right
/// behind the client Finished and the proxy decrypts it before the hand-off.
fn first_request_with_finished(len: usize) {
    if !ktls_available() {
        return;
    }
    let dir = TempDir::new("ktls-first");
    let cert = test_cert(&dir);
    let backend = Backend::echo();
    let proxy = Proxy::start(&service(&cert, &backend, "on"));

    let mut sock = TcpStream::connect(proxy.addr()).unwrap();
    sock.set_read_timeout(Some(WAIT)).unwrap();
    let name = ServerName::try_from("localhost").unwrap();
    let mut conn = rustls::ClientConnection::new(default_client(&cert), name).unwrap();
    let mut request = vec![0u8; len];
    Pattern::new(3).fill(&mut request);
    // rustls buffers a limited amount before the handshake ends; the rest
    // follows right after.
    let early = conn.writer().write(&request).unwrap();
    assert!(early > 0);
    while conn.is_handshaking() {
        conn.complete_io(&mut sock)
            .unwrap_or_else(|err| panic!("handshake failed: {err}; output: {:#?}", proxy.output()));
    }
    let mut stream = rustls::StreamOwned::new(conn, sock);
    stream.write_all(&request[early..]).unwrap();
    stream.flush().unwrap();

    let mut reply = vec![0u8; len];
    stream.read_exact(&mut reply).unwrap();
    assert!(reply == request, "the echo differs from the request");
    stream.conn.send_close_notify();
    stream.flush().unwrap();

    let line = &proxy.wait_for_conn_lines(1)[0];
    assert_eq!(field(line, "path"), "ktls");
    assert_eq!(field(line, "up"), len.to_string());
    assert_eq!(field(line, "reason"), "done");
}

#[test]
fn first_request_with_finished_small() {
    first_request_with_finished(100);
}

#[test]
fn first_request_with_finished_spans_records() {
    first_request_with_finished(100 * 1000);
}

/// The client sends data, close_notify and FIN; the backend reads to EOF and
/// replies with the byte count. With `greet`, the backend speaks first and the
/// client waits for it, so the hand-off is done before the client closes.
fn client_half_close(greet: bool) -> String {
    let dir = TempDir::new("ktls-half-client");
    let cert = test_cert(&dir);
    let backend = Backend::start(move |mut stream| {
        if greet {
            stream.write_all(b"ready").unwrap();
        }
        let mut request = Vec::new();
        stream.read_to_end(&mut request).unwrap();
        stream
            .write_all(format!("got {} bytes", request.len()).as_bytes())
            .unwrap();
    });
    let proxy = Proxy::start(&service(&cert, &backend, "on"));
    let mut stream = connect(&proxy, &default_client(&cert));
    if greet {
        let mut greeting = [0u8; 5];
        stream.read_exact(&mut greeting).unwrap();
        assert_eq!(&greeting, b"ready");
    }

    stream.write_all(&[b'x'; 10_000]).unwrap();
    stream.conn.send_close_notify();
    stream.flush().unwrap();
    stream.sock.shutdown(Shutdown::Write).unwrap();

    let mut reply = String::new();
    stream
        .read_to_string(&mut reply)
        .unwrap_or_else(|err| panic!("read failed: {err}; output: {:#?}", proxy.output()));
    assert_eq!(reply, "got 10000 bytes");
    let line = proxy.wait_for_conn_lines(1)[0].clone();
    assert_eq!(field(&line, "reason"), "done");
    assert_eq!(field(&line, "up"), "10000");
    line
}

#[test]
fn half_close_from_client() {
    if !ktls_available() {
        return;
    }
    let line = client_half_close(true);
    assert_eq!(field(&line, "path"), "ktls");
}

/// A FIN that arrives before the hand-off makes the kernel reject the tls ULP
/// (`ENOTCONN`), and the connection stays on the userspace path. Whether the FIN
/// wins the race varies, so either path is accepted.
#[test]
fn half_close_racing_the_handoff() {
    if !ktls_available() {
        return;
    }
    let line = client_half_close(false);
    assert!(
        ["ktls", "userspace"].contains(&field(&line, "path")),
        "{line}"
    );
}

#[test]
fn half_close_from_backend() {
    if !ktls_available() {
        return;
    }
    let dir = TempDir::new("ktls-half-backend");
    let cert = test_cert(&dir);
    let (report, reports) = mpsc::channel();
    let report = Mutex::new(report);
    // The backend greets, closes its sending side, then still reads the client.
    let backend = Backend::start(move |mut stream| {
        stream.write_all(b"greeting").unwrap();
        stream.shutdown(Shutdown::Write).unwrap();
        let mut rest = Vec::new();
        stream.read_to_end(&mut rest).unwrap();
        report.lock().unwrap().send(rest).unwrap();
    });
    let proxy = Proxy::start(&service(&cert, &backend, "on"));
    let mut stream = connect(&proxy, &default_client(&cert));

    // The client sees the greeting and then a clean close_notify.
    let mut greeting = Vec::new();
    stream.read_to_end(&mut greeting).unwrap();
    assert_eq!(greeting, b"greeting");

    // Its own direction still flows.
    stream.write_all(b"late data").unwrap();
    stream.conn.send_close_notify();
    stream.flush().unwrap();
    let rest = reports.recv_timeout(WAIT).unwrap();
    assert_eq!(rest, b"late data");
    let line = &proxy.wait_for_conn_lines(1)[0];
    assert_eq!(field(line, "path"), "ktls");
    assert_eq!(field(line, "reason"), "done");
}

/// Sends `updates` KeyUpdates (each requests an update back, as rustls clients
/// do), then echoes a message. A kernel that cannot re-key makes the proxy close
/// cleanly after the first one, with the reason in its log.
fn client_key_updates(updates: usize) {
    if !ktls_available() {
        return;
    }
    let dir = TempDir::new("ktls-key-update");
    let cert = test_cert(&dir);
    let backend = Backend::echo();
    let proxy = Proxy::start(&service(&cert, &backend, "on"));
    let config = client_for(&cert, cipher_suite::TLS13_CHACHA20_POLY1305_SHA256);
    let mut stream = connect(&proxy, &config);
    stream.write_all(b"before").unwrap();
    let mut reply = [0u8; 6];
    stream.read_exact(&mut reply).unwrap();
    assert_eq!(&reply, b"before");

    for _ in 0..updates {
        stream.conn.refresh_traffic_keys().unwrap();
    }
    // Without re-key support the proxy may close before this write lands.
    let _ = stream.write_all(b"after");
    let _ = stream.flush();
    let mut received = Vec::new();
    let mut buf = [0u8; 64];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                received.extend_from_slice(&buf[..n]);
                if kernel::probe().rekey && received.len() == 5 {
                    break;
                }
            }
            Err(err) => panic!("the proxy did not close cleanly: {err}"),
        }
    }

    if kernel::probe().rekey {
        assert_eq!(received, b"after");
        stream.conn.send_close_notify();
        stream.flush().unwrap();
        let line = &proxy.wait_for_conn_lines(1)[0];
        assert_eq!(field(line, "reason"), "done");
    } else {
        // The read loop ended at a close_notify, not a reset.
        assert!(received.is_empty(), "unexpected data {received:?}");
        let line = &proxy.wait_for_conn_lines(1)[0];
        assert_eq!(field(line, "path"), "ktls");
        assert_eq!(field(line, "reason"), "tls-error");
        proxy.wait_for_line(&["key update failed", "cannot replace kernel TLS keys"]);
    }
}

#[test]
fn client_key_update_once() {
    client_key_updates(1);
}

#[test]
fn client_key_updates_many_in_a_row() {
    client_key_updates(8);
}

#[test]
fn fifteen_hundred_concurrent_connections() {
    const COUNT: usize = 1500;
    if !ktls_available() {
        return;
    }
    // Each connection costs the test process a client and a backend descriptor.
    tlsplice::sys::raise_fd_limit().unwrap();
    let dir = TempDir::new("ktls-concurrent");
    let cert = test_cert(&dir);
    let backend = Backend::echo();
    // The kernel exempts root from the per-user pipe budget
    // (fs.pipe-user-pages-soft), so a proxy started as root drops to nobody's ids.
    // Without privilege separation the process in the pid check is the worker
    // itself; with it, that process would be the parent, which stays root.
    let user = if is_root() {
        "setuid = nobody\nsetgid = nogroup\nprivsep = no\n"
    } else {
        ""
    };
    let proxy = Proxy::start(&format!("{user}{}", service(&cert, &backend, "on")));
    if is_root() {
        let status = std::fs::read_to_string(format!("/proc/{}/status", proxy.pid())).unwrap();
        let uid_line = status
            .lines()
            .find(|line| line.starts_with("Uid:"))
            .unwrap();
        assert!(uid_line.contains("65534"), "{uid_line}");
    }
    let config = default_client(&cert);

    let mut streams = Vec::with_capacity(COUNT);
    for index in 0..COUNT {
        let mut stream = tls_connect(proxy.addr(), &config, "localhost")
            .unwrap_or_else(|err| panic!("connection {index} failed: {err}"));
        stream
            .write_all(format!("hello {index}\n").as_bytes())
            .unwrap();
        stream.flush().unwrap();
        streams.push(stream);
    }
    // All connections are open at once; each gets its own reply.
    for (index, stream) in streams.iter_mut().enumerate() {
        let expected = format!("hello {index}\n");
        let mut reply = vec![0u8; expected.len()];
        stream.read_exact(&mut reply).unwrap();
        assert_eq!(reply, expected.as_bytes());
    }
    for mut stream in streams {
        stream.conn.send_close_notify();
        let _ = stream.conn.complete_io(&mut stream.sock);
    }
    let lines = proxy.wait_for_conn_lines(COUNT);
    assert_eq!(lines.len(), COUNT);
    let not_ktls: Vec<_> = lines
        .iter()
        .filter(|line| field(line, "path") != "ktls")
        .collect();
    assert!(not_ktls.is_empty(), "{not_ktls:#?}");
    let not_done: Vec<_> = lines
        .iter()
        .filter(|line| field(line, "reason") != "done")
        .collect();
    assert!(not_done.is_empty(), "{not_done:#?}");
}

#[test]
fn client_reset_propagates_to_backend() {
    if !ktls_available() {
        return;
    }
    let dir = TempDir::new("ktls-reset");
    let cert = test_cert(&dir);
    let (report, reports) = mpsc::channel();
    let report = Mutex::new(report);
    // The backend streams until the proxy closes its connection.
    let backend = Backend::start(move |mut stream| {
        let chunk = vec![b'z'; 16 * 1024];
        let outcome = loop {
            if let Err(err) = stream.write_all(&chunk) {
                break err.kind();
            }
        };
        report.lock().unwrap().send(outcome).unwrap();
    });
    let proxy = Proxy::start(&service(&cert, &backend, "on"));
    let mut stream = connect(&proxy, &default_client(&cert));
    let mut buf = vec![0u8; 64 * 1024];
    stream.read_exact(&mut buf).unwrap();

    // An abortive close: SO_LINGER 0 makes close() send RST.
    socket2::SockRef::from(&stream.sock)
        .set_linger(Some(Duration::ZERO))
        .unwrap();
    drop(stream);

    let outcome = reports
        .recv_timeout(WAIT)
        .expect("backend write fails after the reset");
    assert!(
        matches!(
            outcome,
            io::ErrorKind::ConnectionReset | io::ErrorKind::BrokenPipe
        ),
        "backend saw {outcome:?}"
    );
    let line = &proxy.wait_for_conn_lines(1)[0];
    assert_eq!(field(line, "path"), "ktls");
    assert_eq!(field(line, "reason"), "client-reset");
}

#[test]
fn sigterm_drains_ktls_connection() {
    if !ktls_available() {
        return;
    }
    let dir = TempDir::new("ktls-drain");
    let cert = test_cert(&dir);
    let backend = Backend::echo();
    let mut proxy = Proxy::start(&service(&cert, &backend, "on"));
    let mut open = connect(&proxy, &default_client(&cert));
    open.write_all(b"before").unwrap();
    let mut reply = [0u8; 6];
    open.read_exact(&mut reply).unwrap();

    proxy.signal(libc::SIGTERM);
    proxy.wait_for_line(&["draining connections"]);
    // The open connection keeps working until the client ends it.
    open.write_all(b"during").unwrap();
    open.read_exact(&mut reply).unwrap();
    assert_eq!(&reply, b"during");
    open.conn.send_close_notify();
    open.flush().unwrap();
    open.sock.shutdown(Shutdown::Write).unwrap();
    let mut rest = Vec::new();
    let _ = open.read_to_end(&mut rest);

    let status = proxy.wait_exit();
    assert!(status.success(), "exit status {status:?}");
    let line = &proxy.wait_for_conn_lines(1)[0];
    assert_eq!(field(line, "path"), "ktls");
    assert_eq!(field(line, "reason"), "done");
}

#[test]
fn ktls_on_without_ulp_refuses_to_start() {
    if kernel::probe().is_available() {
        eprintln!("skipping: this kernel has the tls ULP, so ktls = on starts");
        return;
    }
    let dir = TempDir::new("ktls-on");
    let cert = test_cert(&dir);
    let config = dir.write(
        "tlsplice.conf",
        &format!(
            "foreground = yes\nsyslog = no\n[test]\naccept = 127.0.0.1:0\nconnect = 127.0.0.1:9\ncert = {}\nkey = {}\nktls = on\n",
            cert.cert.display(),
            cert.key.display()
        ),
    );
    let output = std::process::Command::new(binary())
        .arg(&config)
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(4), "stderr: {stderr}");
    assert!(
        stderr.contains("ktls = on, but kernel TLS unavailable"),
        "stderr: {stderr}"
    );
    assert!(!stderr.contains("listening on"), "stderr: {stderr}");
}

#[test]
fn ktls_off_uses_userspace() {
    let dir = TempDir::new("ktls-off");
    let cert = test_cert(&dir);
    let backend = Backend::echo();
    let proxy = Proxy::start(&service(&cert, &backend, "off"));
    let stream = connect(&proxy, &default_client(&cert));
    echo_exchange(stream, 64 * 1024);
    let line = &proxy.wait_for_conn_lines(1)[0];
    assert_eq!(field(line, "path"), "userspace");
    assert_eq!(field(line, "reason"), "done");
}

#[test]
fn ktls_auto_follows_the_probe() {
    let dir = TempDir::new("ktls-auto");
    let cert = test_cert(&dir);
    let backend = Backend::echo();
    let proxy = Proxy::start(&service(&cert, &backend, "auto"));
    proxy.wait_for_line(&["notice", "kernel TLS"]);
    let stream = connect(&proxy, &default_client(&cert));
    echo_exchange(stream, 64 * 1024);
    let line = &proxy.wait_for_conn_lines(1)[0];
    let expected = if kernel::probe().is_available() {
        "ktls"
    } else {
        "userspace"
    };
    assert_eq!(field(line, "path"), expected);
    assert_eq!(field(line, "reason"), "done");
}

/// Returns the user plus system CPU time of process `pid` in seconds, from
/// fields 14 and 15 of /proc/PID/stat, counted in USER_HZ ticks (100 per second
/// on x86_64 Linux).
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // The command name may contain spaces, so count fields after its ')'.
    let fields: Vec<&str> = stat[stat.rfind(')').unwrap() + 2..].split(' ').collect();
    let user: u64 = fields[11].parse().unwrap();
    let system: u64 = fields[12].parse().unwrap();
    (user + system) as f64 / 100.0
}

/// Global options of the benchmarks: one worker, and no privilege separation, so
/// the process at `proxy.pid()` is the one that does the work.
const BENCHMARK_GLOBALS: &str = "threads = 1\nprivsep = no\n";

/// Returns the splice mode a benchmark line reports.
fn splice_mode_name() -> String {
    std::env::var("KTLS_TEST_SPLICE")
        .ok()
        .filter(|mode| !mode.is_empty())
        .unwrap_or_else(|| "default".to_string())
}

/// Prints the proxy's relayed bytes per CPU-second on each data path. Run it in
/// the guest with
/// `KTLS_VM_TEST_FILTER='--ignored --nocapture throughput' scripts/ktls-vm-test --test ktls_proxy`.
#[test]
#[ignore = "benchmark; prints figures instead of checking them"]
fn throughput_per_cpu_second() {
    const TOTAL: usize = 32 * 1024 * 1024;
    for ktls in ["on", "off"] {
        if ktls == "on" && !ktls_available() {
            continue;
        }
        let dir = TempDir::new("ktls-throughput");
        let cert = test_cert(&dir);
        let backend = Backend::echo();
        let proxy = Proxy::start(&format!(
            "{BENCHMARK_GLOBALS}{}",
            service(&cert, &backend, ktls)
        ));
        let stream = connect(&proxy, &default_client(&cert));
        let before = cpu_seconds(proxy.pid());
        echo_exchange(stream, TOTAL);
        let line = proxy.wait_for_conn_lines(1)[0].clone();
        let used = cpu_seconds(proxy.pid()) - before;
        let moved = (2 * TOTAL) as f64 / (1024.0 * 1024.0);
        println!(
            "throughput ktls={ktls} path={} splice={}: {moved:.0} MiB relayed in {used:.2} CPU-seconds, {:.1} MiB per CPU-second",
            field(&line, "path"),
            splice_mode_name(),
            moved / used.max(0.01)
        );
    }
}

/// Prints the proxy's relayed MiB per CPU-second for each direction alone, on
/// each data path: upload (the client sends and the backend discards) and
/// download (the backend sends and the client reads). Run it in the guest with
/// `KTLS_VM_TEST_FILTER='--ignored --nocapture one_direction' scripts/ktls-vm-test --test ktls_proxy`.
#[test]
#[ignore = "benchmark; prints figures instead of checking them"]
fn one_direction_per_cpu_second() {
    const TOTAL: usize = 32 * 1024 * 1024;
    for ktls in ["on", "off"] {
        if ktls == "on" && !ktls_available() {
            continue;
        }
        for direction in ["upload", "download"] {
            let dir = TempDir::new("ktls-direction");
            let cert = test_cert(&dir);
            let backend = if direction == "upload" {
                // Reads to the end, then reports the byte count.
                Backend::start(|mut stream| {
                    let mut buf = vec![0u8; 256 * 1024];
                    let mut count = 0u64;
                    while let Ok(read) = stream.read(&mut buf) {
                        if read == 0 {
                            break;
                        }
                        count += read as u64;
                    }
                    let _ = stream.write_all(&count.to_be_bytes());
                })
            } else {
                Backend::start(|mut stream| {
                    let chunk = vec![0x5a; 256 * 1024];
                    for _ in 0..TOTAL / chunk.len() {
                        if stream.write_all(&chunk).is_err() {
                            return;
                        }
                    }
                })
            };
            let proxy = Proxy::start(&format!(
                "{BENCHMARK_GLOBALS}{}",
                service(&cert, &backend, ktls)
            ));
            let mut stream = connect(&proxy, &default_client(&cert));
            let before = cpu_seconds(proxy.pid());
            if direction == "upload" {
                let chunk = vec![0xa5; 256 * 1024];
                for _ in 0..TOTAL / chunk.len() {
                    stream.write_all(&chunk).unwrap();
                }
                stream.conn.send_close_notify();
                stream.flush().unwrap();
                let mut count = [0u8; 8];
                stream.read_exact(&mut count).unwrap();
                assert_eq!(u64::from_be_bytes(count), TOTAL as u64);
            } else {
                let mut buf = vec![0u8; 256 * 1024];
                let mut received = 0;
                while received < TOTAL {
                    let read = stream.read(&mut buf).unwrap();
                    assert!(read > 0, "the download ended after {received} bytes");
                    received += read;
                }
            }
            drop(stream);
            let line = proxy.wait_for_conn_lines(1)[0].clone();
            let used = cpu_seconds(proxy.pid()) - before;
            let moved = TOTAL as f64 / (1024.0 * 1024.0);
            println!(
                "{direction} ktls={ktls} path={} splice={}: {moved:.0} MiB in {used:.2} CPU-seconds, {:.1} MiB per CPU-second",
                field(&line, "path"),
                splice_mode_name(),
                moved / used.max(0.01)
            );
        }
    }
}

/// Prints the proxy's full TLS 1.3 handshakes per CPU-second with `ktls = on`
/// and `ktls = off`. Each connection makes a handshake without resumption, sends
/// one small request, reads its echo and closes with close_notify, so the
/// kernel TLS figure includes the hand-off. Run it in the guest with
/// `KTLS_VM_TEST_FILTER='--ignored --nocapture handshakes' scripts/ktls-vm-test --test ktls_proxy`.
#[test]
#[ignore = "benchmark; prints figures instead of checking them"]
fn handshakes_per_cpu_second() {
    const COUNT: usize = 200;
    for ktls in ["on", "off"] {
        if ktls == "on" && !ktls_available() {
            continue;
        }
        let dir = TempDir::new("ktls-handshakes");
        let cert = test_cert(&dir);
        let backend = Backend::echo();
        let proxy = Proxy::start(&format!(
            "{BENCHMARK_GLOBALS}{}",
            service(&cert, &backend, ktls)
        ));
        // A fresh client configuration per connection has an empty session
        // cache, so no handshake is a resumption.
        let configs: Vec<_> = (0..COUNT).map(|_| default_client(&cert)).collect();

        let before = cpu_seconds(proxy.pid());
        for (index, config) in configs.into_iter().enumerate() {
            let mut stream = tls_connect(proxy.addr(), &config, "localhost")
                .unwrap_or_else(|err| panic!("handshake {index} failed: {err}"));
            stream.write_all(b"ping").unwrap();
            let mut reply = [0u8; 4];
            stream.read_exact(&mut reply).unwrap();
            assert_eq!(&reply, b"ping");
            stream.conn.send_close_notify();
            let _ = stream.conn.complete_io(&mut stream.sock);
        }
        let lines = proxy.wait_for_conn_lines(COUNT);
        let used = cpu_seconds(proxy.pid()) - before;
        let paths: Vec<&str> = lines.iter().map(|line| field(line, "path")).collect();
        let path = if paths.iter().all(|path| *path == paths[0]) {
            paths[0]
        } else {
            "mixed"
        };
        println!(
            "handshakes ktls={ktls} path={path} splice={}: {COUNT} handshakes in {used:.2} CPU-seconds, {:.1} handshakes per CPU-second",
            splice_mode_name(),
            COUNT as f64 / used.max(0.01)
        );
    }
}
