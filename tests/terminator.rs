//! End-to-end tests of the terminator: the real binary between a rustls client and
//! real backends on loopback.

mod common;

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::mpsc;
use std::thread;
use std::time::Duration;

use common::*;

fn service(cert: &Cert, backend: &Backend, extra: &str) -> String {
    format!(
        "[test]\naccept = 127.0.0.1:0\nconnect = {}\ncert = {}\nkey = {}\n{extra}\n",
        backend.addr,
        cert.cert.display(),
        cert.key.display()
    )
}

fn echo_round_trip(stream: &mut TlsStream, message: &[u8]) {
    stream.write_all(message).unwrap();
    stream.flush().unwrap();
    let mut reply = vec![0u8; message.len()];
    stream.read_exact(&mut reply).unwrap();
    assert_eq!(reply, message);
}

#[test]
fn bulk_64_mib_each_way() {
    const TOTAL: usize = 64 * 1024 * 1024;
    let dir = TempDir::new("bulk");
    let cert = make_cert(&dir, "server", KeyKind::EcdsaP256, &["localhost"]);
    let backend = Backend::echo();
    let proxy = Proxy::start(&service(&cert, &backend, ""));
    let config = client_config(std::slice::from_ref(&cert.der), rustls::ALL_VERSIONS);
    let stream = tls_connect(proxy.addr(), &config, "localhost").unwrap();

    // rustls streams are not split into halves, so one thread drives both
    // directions: write a chunk whenever the proxy is ready to take it, and read
    // what comes back.
    let mut stream = stream;
    stream.sock.set_nonblocking(true).unwrap();
    let mut pattern = Pattern::new(7);
    let mut sent = 0usize;
    let mut received = 0usize;
    let mut sent_sum = Checksum::new();
    let mut received_sum = Checksum::new();
    let mut chunk = vec![0u8; 64 * 1024];
    let mut pending: Vec<u8> = Vec::new();
    let mut read_buf = vec![0u8; 256 * 1024];
    let deadline = std::time::Instant::now() + Duration::from_secs(240);
    while received < TOTAL {
        assert!(
            std::time::Instant::now() < deadline,
            "bulk transfer stalled at {received}"
        );
        if pending.is_empty() && sent < TOTAL {
            let len = chunk.len().min(TOTAL - sent);
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
                Err(err) if err.kind() == std::io::ErrorKind::WouldBlock => break,
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
                        Err(err) if err.kind() == std::io::ErrorKind::WouldBlock => break,
                        Err(err) => panic!("read failed: {err}"),
                    }
                }
            }
            Err(err) if err.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(err) => panic!("read_tls failed: {err}"),
        }
        if !progressed {
            thread::sleep(Duration::from_micros(200));
        }
    }
    assert_eq!(sent, TOTAL);
    assert_eq!(received, TOTAL);
    assert_eq!(received_sum.value(), sent_sum.value());
    drop(stream);

    let line = &proxy.wait_for_conn_lines(1)[0];
    assert_eq!(field(line, "up"), TOTAL.to_string());
    assert_eq!(field(line, "down"), TOTAL.to_string());
}

#[test]
fn five_hundred_concurrent_connections() {
    const COUNT: usize = 500;
    let dir = TempDir::new("concurrent");
    let cert = make_cert(&dir, "server", KeyKind::EcdsaP256, &["localhost"]);
    let backend = Backend::echo();
    let proxy = Proxy::start(&service(&cert, &backend, ""));
    let config = client_config(std::slice::from_ref(&cert.der), rustls::ALL_VERSIONS);

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
    assert!(
        lines.iter().all(|line| field(line, "reason") == "done"),
        "{lines:#?}"
    );
}

#[test]
fn half_close_from_client() {
    let dir = TempDir::new("half-client");
    let cert = make_cert(&dir, "server", KeyKind::EcdsaP256, &["localhost"]);
    // The backend reads to EOF, then replies with the byte count and closes.
    let backend = Backend::start(|mut stream| {
        let mut request = Vec::new();
        stream.read_to_end(&mut request).unwrap();
        stream
            .write_all(format!("got {} bytes", request.len()).as_bytes())
            .unwrap();
    });
    let proxy = Proxy::start(&service(&cert, &backend, ""));
    let config = client_config(std::slice::from_ref(&cert.der), rustls::ALL_VERSIONS);
    let mut stream = tls_connect(proxy.addr(), &config, "localhost").unwrap();

    stream.write_all(&[b'x'; 10_000]).unwrap();
    stream.conn.send_close_notify();
    stream.flush().unwrap();
    stream.sock.shutdown(Shutdown::Write).unwrap();

    let mut reply = String::new();
    stream.read_to_string(&mut reply).unwrap();
    assert_eq!(reply, "got 10000 bytes");
    let line = &proxy.wait_for_conn_lines(1)[0];
    assert_eq!(field(line, "reason"), "done");
    assert_eq!(field(line, "up"), "10000");
}

#[test]
fn half_close_from_backend() {
    let dir = TempDir::new("half-backend");
    let cert = make_cert(&dir, "server", KeyKind::EcdsaP256, &["localhost"]);
    let (report, reports) = mpsc::channel();
    let report = std::sync::Mutex::new(report);
    // The backend greets, closes its sending side, then still reads the client.
    let backend = Backend::start(move |mut stream| {
        stream.write_all(b"greeting").unwrap();
        stream.shutdown(Shutdown::Write).unwrap();
        let mut rest = Vec::new();
        stream.read_to_end(&mut rest).unwrap();
        report.lock().unwrap().send(rest).unwrap();
    });
    let proxy = Proxy::start(&service(&cert, &backend, ""));
    let config = client_config(std::slice::from_ref(&cert.der), rustls::ALL_VERSIONS);
    let mut stream = tls_connect(proxy.addr(), &config, "localhost").unwrap();

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
    assert_eq!(field(line, "reason"), "done");
}

#[test]
fn backend_refused_closes_client() {
    let dir = TempDir::new("refused");
    let cert = make_cert(&dir, "server", KeyKind::EcdsaP256, &["localhost"]);
    // A port that was free a moment ago and has no listener now.
    let closed = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let proxy = Proxy::start(&format!(
        "[test]\naccept = 127.0.0.1:0\nconnect = {closed}\ncert = {}\nkey = {}\n",
        cert.cert.display(),
        cert.key.display()
    ));
    let config = client_config(std::slice::from_ref(&cert.der), rustls::ALL_VERSIONS);
    let mut stream = tls_connect(proxy.addr(), &config, "localhost").unwrap();
    let mut buf = [0u8; 16];
    let read = stream.read(&mut buf);
    assert!(
        matches!(read, Ok(0) | Err(_)),
        "expected a close, got {read:?}"
    );
    let line = &proxy.wait_for_conn_lines(1)[0];
    assert_eq!(field(line, "reason"), "connect-failed");
    proxy.wait_for_line(&["connect to backend", "Connection refused"]);
}

#[test]
fn backend_unreachable_times_out() {
    let dir = TempDir::new("unreachable");
    let cert = make_cert(&dir, "server", KeyKind::EcdsaP256, &["localhost"]);
    // A listener that never accepts, with its queue filled, drops further SYNs,
    // so a connect to it hangs like one to an unreachable host.
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    socket
        .bind(
            &"127.0.0.1:0"
                .parse::<std::net::SocketAddr>()
                .unwrap()
                .into(),
        )
        .unwrap();
    socket.listen(0).unwrap();
    let blackhole = socket.local_addr().unwrap().as_socket().unwrap();
    let mut fillers = Vec::new();
    for _ in 0..4 {
        let filler =
            socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
        filler.set_nonblocking(true).unwrap();
        let _ = filler.connect(&blackhole.into());
        fillers.push(filler);
    }
    let proxy = Proxy::start(&format!(
        "[test]\naccept = 127.0.0.1:0\nconnect = {blackhole}\ncert = {}\nkey = {}\nTIMEOUTconnect = 1\n",
        cert.cert.display(),
        cert.key.display()
    ));
    let config = client_config(std::slice::from_ref(&cert.der), rustls::ALL_VERSIONS);
    let mut stream = tls_connect(proxy.addr(), &config, "localhost").unwrap();
    let mut buf = [0u8; 16];
    let read = stream.read(&mut buf);
    assert!(
        matches!(read, Ok(0) | Err(_)),
        "expected a close, got {read:?}"
    );
    let line = &proxy.wait_for_conn_lines(1)[0];
    assert_eq!(field(line, "reason"), "connect-timeout");
    drop(socket);
}

#[test]
fn handshake_timeout_closes_silent_client() {
    let dir = TempDir::new("hs-timeout");
    let cert = make_cert(&dir, "server", KeyKind::EcdsaP256, &["localhost"]);
    let backend = Backend::echo();
    let proxy = Proxy::start(&service(&cert, &backend, "TIMEOUThandshake = 1"));
    let mut silent = TcpStream::connect(proxy.addr()).unwrap();
    silent.set_read_timeout(Some(WAIT)).unwrap();
    let mut buf = [0u8; 16];
    let read = silent.read(&mut buf);
    assert!(
        matches!(read, Ok(0) | Err(_)),
        "expected a close, got {read:?}"
    );
    let line = &proxy.wait_for_conn_lines(1)[0];
    assert_eq!(field(line, "reason"), "handshake-timeout");
    assert_eq!(field(line, "tls"), "-");
    assert!(
        backend.peers.lock().unwrap().is_empty(),
        "no backend connection is made"
    );
}

#[test]
fn garbage_instead_of_client_hello() {
    let dir = TempDir::new("garbage");
    let cert = make_cert(&dir, "server", KeyKind::EcdsaP256, &["localhost"]);
    let backend = Backend::echo();
    let proxy = Proxy::start(&service(&cert, &backend, ""));
    let mut client = TcpStream::connect(proxy.addr()).unwrap();
    client.set_read_timeout(Some(WAIT)).unwrap();
    client
        .write_all(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .unwrap();
    let mut reply = Vec::new();
    let _ = client.read_to_end(&mut reply);
    // Whatever came back is a TLS alert record (content type 21), not HTTP.
    if !reply.is_empty() {
        assert_eq!(reply[0], 21, "expected an alert record, got {reply:?}");
    }
    let line = &proxy.wait_for_conn_lines(1)[0];
    assert_eq!(field(line, "reason"), "handshake-failed");
    assert!(backend.peers.lock().unwrap().is_empty());
}

#[test]
fn client_reset_mid_transfer_closes_backend() {
    let dir = TempDir::new("reset");
    let cert = make_cert(&dir, "server", KeyKind::EcdsaP256, &["localhost"]);
    let (report, reports) = mpsc::channel();
    let report = std::sync::Mutex::new(report);
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
    let proxy = Proxy::start(&service(&cert, &backend, ""));
    let config = client_config(std::slice::from_ref(&cert.der), rustls::ALL_VERSIONS);
    let mut stream = tls_connect(proxy.addr(), &config, "localhost").unwrap();
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
            std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::BrokenPipe
        ),
        "backend saw {outcome:?}"
    );
    let line = &proxy.wait_for_conn_lines(1)[0];
    assert_eq!(field(line, "reason"), "client-reset");
}

#[test]
fn tls_versions_and_key_types() {
    let dir = TempDir::new("versions");
    let backend = Backend::echo();
    for kind in [KeyKind::EcdsaP256, KeyKind::Rsa2048] {
        let cert = make_cert(&dir, &format!("{kind:?}"), kind, &["localhost"]);
        let proxy = Proxy::start(&service(&cert, &backend, ""));
        let cases: [(&'static rustls::SupportedProtocolVersion, &str); 2] = [
            (&rustls::version::TLS12, "TLSv1.2"),
            (&rustls::version::TLS13, "TLSv1.3"),
        ];
        for (index, (version, name)) in cases.iter().enumerate() {
            let config = client_config(std::slice::from_ref(&cert.der), &[version]);
            let mut stream = tls_connect(proxy.addr(), &config, "localhost").unwrap();
            echo_round_trip(&mut stream, format!("{kind:?} {name}").as_bytes());
            assert_eq!(
                stream.conn.protocol_version(),
                Some(version.version),
                "{kind:?} {name}"
            );
            drop(stream);
            let line = &proxy.wait_for_conn_lines(index + 1)[index];
            assert_eq!(field(line, "tls"), *name, "{kind:?}");
        }
    }
}

#[test]
fn key_formats_and_key_in_cert_file() {
    let dir = TempDir::new("key-formats");
    let backend = Backend::echo();
    for kind in [KeyKind::EcdsaP256, KeyKind::Rsa2048] {
        let cert = make_cert(&dir, &format!("formats-{kind:?}"), kind, &["localhost"]);
        let traditional = dir.join(&format!("{kind:?}-traditional.key"));
        write_traditional_key(&cert, kind, &traditional);
        let combined = dir.join(&format!("{kind:?}-combined.pem"));
        let mut both = std::fs::read(&cert.cert).unwrap();
        both.extend(std::fs::read(&traditional).unwrap());
        std::fs::write(&combined, both).unwrap();

        let configs = [
            format!(
                "cert = {}\nkey = {}",
                cert.cert.display(),
                traditional.display()
            ),
            format!("cert = {}", combined.display()),
        ];
        for lines in configs {
            let proxy = Proxy::start(&format!(
                "[test]\naccept = 127.0.0.1:0\nconnect = {}\n{lines}\n",
                backend.addr
            ));
            let config = client_config(std::slice::from_ref(&cert.der), rustls::ALL_VERSIONS);
            let mut stream = tls_connect(proxy.addr(), &config, "localhost").unwrap();
            echo_round_trip(&mut stream, b"key format");
        }
    }
}

#[test]
fn sni_selects_certificate_and_backend() {
    let dir = TempDir::new("sni");
    let default_cert = make_cert(&dir, "default", KeyKind::EcdsaP256, &["default.test"]);
    let listed = make_cert(&dir, "listed", KeyKind::Rsa2048, &["listed.test"]);
    let routed = make_cert(&dir, "routed", KeyKind::EcdsaP256, &["api.routed.test"]);
    let main_backend = Backend::start(|mut stream| {
        let _ = stream.write_all(b"main");
    });
    let api_backend = Backend::start(|mut stream| {
        let _ = stream.write_all(b"api");
    });
    let proxy = Proxy::start(&format!(
        "[web]\naccept = 127.0.0.1:0\nconnect = {}\ncert = {}\nkey = {}\ncert = {}\nkey = {}\n\
         [api]\nsni = web:*.routed.test\nconnect = {}\ncert = {}\nkey = {}\n",
        main_backend.addr,
        default_cert.cert.display(),
        default_cert.key.display(),
        listed.cert.display(),
        listed.key.display(),
        api_backend.addr,
        routed.cert.display(),
        routed.key.display(),
    ));
    let cases = [
        ("default.test", &default_cert, "main"),
        ("listed.test", &listed, "main"),
        ("api.routed.test", &routed, "api"),
    ];
    for (index, (name, cert, body)) in cases.iter().enumerate() {
        // Each client trusts only the certificate it expects, so a wrong choice
        // fails the handshake.
        let config = client_config(std::slice::from_ref(&cert.der), rustls::ALL_VERSIONS);
        let mut stream =
            tls_connect(proxy.addr(), &config, name).unwrap_or_else(|err| panic!("{name}: {err}"));
        let mut reply = String::new();
        stream.read_to_string(&mut reply).unwrap();
        assert_eq!(reply, *body, "{name}");
        drop(stream);
        let line = &proxy.wait_for_conn_lines(index + 1)[index];
        assert_eq!(field(line, "sni"), *name);
    }
}

#[test]
fn alpn_is_advertised_and_logged() {
    let dir = TempDir::new("alpn");
    let cert = make_cert(&dir, "server", KeyKind::EcdsaP256, &["localhost"]);
    let backend = Backend::echo();
    let proxy = Proxy::start(&service(&cert, &backend, "alpn = h2,http/1.1"));
    let mut config =
        (*client_config(std::slice::from_ref(&cert.der), rustls::ALL_VERSIONS)).clone();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let mut stream = tls_connect(proxy.addr(), &std::sync::Arc::new(config), "localhost").unwrap();
    assert_eq!(stream.conn.alpn_protocol(), Some(&b"http/1.1"[..]));
    echo_round_trip(&mut stream, b"alpn");
    drop(stream);
    let line = &proxy.wait_for_conn_lines(1)[0];
    assert_eq!(field(line, "alpn"), "http/1.1");
}

#[test]
fn sigterm_drains_open_connections() {
    let dir = TempDir::new("drain");
    let cert = make_cert(&dir, "server", KeyKind::EcdsaP256, &["localhost"]);
    let backend = Backend::echo();
    let mut proxy = Proxy::start(&service(&cert, &backend, ""));
    let addr = proxy.addr();
    let config = client_config(std::slice::from_ref(&cert.der), rustls::ALL_VERSIONS);
    let mut open = tls_connect(addr, &config, "localhost").unwrap();
    echo_round_trip(&mut open, b"before");

    proxy.signal(libc::SIGTERM);
    proxy.wait_for_line(&["draining connections"]);

    // New connections are refused once the listeners are closed.
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        if TcpStream::connect(addr).is_err() {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "listener still open");
        thread::sleep(Duration::from_millis(20));
    }
    // The open connection keeps working until the client ends it.
    echo_round_trip(&mut open, b"during drain");
    assert!(proxy.child.as_mut().unwrap().try_wait().unwrap().is_none());
    open.conn.send_close_notify();
    open.flush().unwrap();
    open.sock.shutdown(Shutdown::Write).unwrap();
    let mut rest = Vec::new();
    let _ = open.read_to_end(&mut rest);

    let status = proxy.wait_exit();
    assert!(status.success(), "exit status {status:?}");
    // Probe connections made while the listeners closed log lines of their own;
    // pick the line of the connection that stayed open.
    let port = open.sock.local_addr().unwrap().port();
    let line = proxy.wait_for_line(&[" conn service=", &format!("client=127.0.0.1:{port} ")]);
    assert_eq!(field(&line, "reason"), "done");
}

#[test]
fn sigterm_grace_period_closes_idle_connections() {
    let dir = TempDir::new("grace");
    let cert = make_cert(&dir, "server", KeyKind::EcdsaP256, &["localhost"]);
    let backend = Backend::echo();
    let mut proxy = Proxy::start(&format!(
        "shutdown_timeout = 1\n{}",
        service(&cert, &backend, "")
    ));
    let config = client_config(std::slice::from_ref(&cert.der), rustls::ALL_VERSIONS);
    let mut open = tls_connect(proxy.addr(), &config, "localhost").unwrap();
    echo_round_trip(&mut open, b"idle");
    proxy.signal(libc::SIGTERM);
    let status = proxy.wait_exit();
    assert!(status.success(), "exit status {status:?}");
    let line = &proxy.wait_for_conn_lines(1)[0];
    assert_eq!(field(line, "reason"), "shutdown");
}

#[test]
fn unix_listener_orderly_close_is_done() {
    let Some(curl) = program("curl") else { return };
    let dir = TempDir::new("unix-listener");
    let cert = make_cert(&dir, "server", KeyKind::EcdsaP256, &["localhost"]);
    let backend = Backend::start(|mut stream| {
        let mut request = [0u8; 1024];
        let _ = stream.read(&mut request);
        let _ = stream
            .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok");
    });
    let socket = dir.join("tls.sock");
    let proxy = Proxy::start(&format!(
        "[unix]\naccept = {}\nconnect = {}\ncert = {}\nkey = {}\n",
        socket.display(),
        backend.addr,
        cert.cert.display(),
        cert.key.display()
    ));
    for _ in 0..3 {
        let output = std::process::Command::new(&curl)
            .args(["--silent", "--show-error", "--insecure", "--unix-socket"])
            .arg(&socket)
            .arg("https://localhost/")
            .output()
            .unwrap();
        assert_eq!(String::from_utf8_lossy(&output.stdout), "ok");
    }
    let lines = proxy.wait_for_conn_lines(3);
    for line in &lines {
        assert_eq!(field(line, "reason"), "done", "{line}");
        assert_eq!(field(line, "client"), "-", "{line}");
    }
}

#[test]
fn dual_stack_listener_logs_ipv4_clients_plainly() {
    let dir = TempDir::new("dual-stack");
    let cert = make_cert(&dir, "server", KeyKind::EcdsaP256, &["localhost"]);
    let backend = Backend::echo();
    // A bare port listens on all interfaces, IPv4 and IPv6.
    let proxy = Proxy::start(&format!(
        "[any]\naccept = 0\nconnect = {}\ncert = {}\nkey = {}\n",
        backend.addr,
        cert.cert.display(),
        cert.key.display()
    ));
    let port = proxy.addr().port();
    let config = client_config(std::slice::from_ref(&cert.der), rustls::ALL_VERSIONS);
    let mut stream = tls_connect(([127, 0, 0, 1], port).into(), &config, "localhost").unwrap();
    echo_round_trip(&mut stream, b"v4");
    let client = stream.sock.local_addr().unwrap();
    drop(stream);
    let line = &proxy.wait_for_conn_lines(1)[0];
    assert_eq!(field(line, "client"), client.to_string());
}
