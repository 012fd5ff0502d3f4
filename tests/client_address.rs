//! Real client addresses at the backend: PROXY headers toward nginx and haproxy,
//! PROXY headers from an upstream haproxy, and the correlate subcommand joining a
//! real nginx access log.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::Command;

use common::*;

#[test]
fn proxy_v1_reaches_nginx() {
    let dir = TempDir::new("pp-nginx");
    let port = free_port();
    let log = dir.join("access.log");
    let Some(_nginx) = start_nginx(
        &dir,
        &format!(
            "log_format pp '$proxy_protocol_addr:$proxy_protocol_port $remote_addr';\n\
             server {{ listen 127.0.0.1:{port} proxy_protocol; access_log {} pp;\n\
             location / {{ return 200 \"from $proxy_protocol_addr:$proxy_protocol_port\"; }} }}",
            log.display()
        ),
    ) else {
        return;
    };
    wait_listening(SocketAddr::from(([127, 0, 0, 1], port)));
    let cert = make_cert(&dir, "server", KeyKind::EcdsaP256, &["localhost"]);
    let proxy = Proxy::start(&format!(
        "[web]\naccept = 127.0.0.1:0\nconnect = 127.0.0.1:{port}\ncert = {}\nkey = {}\nprotocol = proxy\n",
        cert.cert.display(),
        cert.key.display()
    ));
    let config = client_config(std::slice::from_ref(&cert.der), rustls::ALL_VERSIONS);
    let response = https_get(proxy.addr(), &config, "localhost", "/");
    let line = &proxy.wait_for_conn_lines(1)[0];
    let client = field(line, "client");
    assert!(
        response.ends_with(&format!("from {client}")),
        "nginx saw another address than the client {client}: {response}"
    );
}

#[test]
fn proxy_v2_reaches_haproxy_with_tlvs() {
    let dir = TempDir::new("pp-haproxy");
    let port = free_port();
    let Some(_haproxy) = start_haproxy(
        &dir,
        &format!(
            "global\n  log stderr local0 warning\ndefaults\n  mode http\n  timeout client 10s\n  timeout server 10s\n  timeout connect 5s\n\
             frontend fe\n  bind 127.0.0.1:{port} accept-proxy\n\
             \x20 http-request return status 200 content-type text/plain lf-string \"src=%[src]:%[src_port] authority=%[fc_pp_authority]\"\n"
        ),
    ) else {
        return;
    };
    wait_listening(SocketAddr::from(([127, 0, 0, 1], port)));
    let cert = make_cert(&dir, "server", KeyKind::EcdsaP256, &["app.test"]);
    let proxy = Proxy::start(&format!(
        "[web]\naccept = 127.0.0.1:0\nconnect = 127.0.0.1:{port}\ncert = {}\nkey = {}\nproxy_protocol = v2\n",
        cert.cert.display(),
        cert.key.display()
    ));
    let config = client_config(std::slice::from_ref(&cert.der), rustls::ALL_VERSIONS);
    let response = https_get(proxy.addr(), &config, "app.test", "/");
    let line = &proxy.wait_for_conn_lines(1)[0];
    let client = field(line, "client");
    assert!(
        response.contains(&format!("src={client} authority=app.test")),
        "haproxy did not see client {client} and SNI app.test: {response}"
    );
}

/// Writes a PROXY v1 header, then runs a TLS handshake on the same socket.
fn connect_with_header(
    addr: SocketAddr,
    header: &[u8],
    config: &std::sync::Arc<rustls::ClientConfig>,
) -> std::io::Result<TlsStream> {
    let mut tcp = TcpStream::connect(addr)?;
    tcp.set_read_timeout(Some(WAIT))?;
    tcp.write_all(header)?;
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let conn =
        rustls::ClientConnection::new(config.clone(), name).map_err(std::io::Error::other)?;
    let mut stream = rustls::StreamOwned::new(conn, tcp);
    while stream.conn.is_handshaking() {
        stream.conn.complete_io(&mut stream.sock)?;
    }
    Ok(stream)
}

#[test]
fn accept_proxy_takes_client_address_from_header() {
    let dir = TempDir::new("accept-proxy");
    let cert = make_cert(&dir, "server", KeyKind::EcdsaP256, &["localhost"]);
    let backend = Backend::echo();
    let proxy = Proxy::start(&format!(
        "[web]\naccept = 127.0.0.1:0\nconnect = {}\ncert = {}\nkey = {}\naccept_proxy = yes\n",
        backend.addr,
        cert.cert.display(),
        cert.key.display()
    ));
    let config = client_config(std::slice::from_ref(&cert.der), rustls::ALL_VERSIONS);
    let header = format!("PROXY TCP4 192.0.2.7 {} 40123 443\r\n", proxy.addr().ip());
    let mut stream = connect_with_header(proxy.addr(), header.as_bytes(), &config).unwrap();
    stream.write_all(b"ping").unwrap();
    stream.flush().unwrap();
    let mut reply = [0u8; 4];
    stream.read_exact(&mut reply).unwrap();
    assert_eq!(&reply, b"ping");
    drop(stream);
    let line = &proxy.wait_for_conn_lines(1)[0];
    assert_eq!(field(line, "client"), "192.0.2.7:40123");

    // A malformed header closes the connection with its own reason.
    let mut bad = TcpStream::connect(proxy.addr()).unwrap();
    bad.set_read_timeout(Some(WAIT)).unwrap();
    bad.write_all(b"PROXY TCP4 192.0.2.7 127.0.0.1 99999 443\r\n")
        .unwrap();
    let mut rest = Vec::new();
    let _ = bad.read_to_end(&mut rest);
    let line = &proxy.wait_for_conn_lines(2)[1];
    assert_eq!(field(line, "reason"), "proxy-header-invalid");
    proxy.wait_for_line(&["invalid PROXY header", "99999"]);
}

#[test]
fn accept_proxy_behind_real_haproxy() {
    let dir = TempDir::new("upstream-haproxy");
    let cert = make_cert(&dir, "server", KeyKind::EcdsaP256, &["localhost"]);
    let backend = Backend::echo();
    let proxy = Proxy::start(&format!(
        "[web]\naccept = 127.0.0.1:0\nconnect = {}\ncert = {}\nkey = {}\naccept_proxy = yes\n",
        backend.addr,
        cert.cert.display(),
        cert.key.display()
    ));
    let port = free_port();
    let Some(_haproxy) = start_haproxy(
        &dir,
        &format!(
            "defaults\n  mode tcp\n  timeout client 10s\n  timeout server 10s\n  timeout connect 5s\n\
             listen lb\n  bind 127.0.0.3:{port}\n  server tls {} send-proxy-v2\n",
            proxy.addr()
        ),
    ) else {
        return;
    };
    let lb = SocketAddr::from(([127, 0, 0, 3], port));
    wait_listening(lb);
    let config = client_config(std::slice::from_ref(&cert.der), rustls::ALL_VERSIONS);

    // The client connects from 127.0.0.4, so its address differs from haproxy's.
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    socket
        .bind(&SocketAddr::from(([127, 0, 0, 4], 0)).into())
        .unwrap();
    socket.connect(&lb.into()).unwrap();
    let tcp: TcpStream = socket.into();
    let client = tcp.local_addr().unwrap();
    tcp.set_read_timeout(Some(WAIT)).unwrap();
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let conn = rustls::ClientConnection::new(config, name).unwrap();
    let mut stream = rustls::StreamOwned::new(conn, tcp);
    stream.write_all(b"through haproxy").unwrap();
    let mut reply = [0u8; 15];
    stream.read_exact(&mut reply).unwrap();
    assert_eq!(&reply, b"through haproxy");
    drop(stream);
    // Lines from haproxy's own health checks, if any, carry other addresses.
    let line = proxy.wait_for_line(&[" conn service=", &format!("client={client}")]);
    assert_eq!(field(&line, "client"), client.to_string());
}

#[test]
fn correlate_rewrites_nginx_access_log() {
    let dir = TempDir::new("correlate");
    let port = free_port();
    let access_log = dir.join("access.log");
    let Some(_nginx) = start_nginx(
        &dir,
        &format!(
            "log_format withport '$remote_addr $remote_port - $remote_user [$time_local] \"$request\" $status $body_bytes_sent \"$http_referer\" \"$http_user_agent\"';\n\
             server {{ listen 127.0.0.1:{port}; access_log {} withport;\n\
             location / {{ return 200 \"ok\"; }} }}",
            access_log.display()
        ),
    ) else {
        return;
    };
    wait_listening(SocketAddr::from(([127, 0, 0, 1], port)));
    let cert = make_cert(&dir, "server", KeyKind::EcdsaP256, &["localhost"]);
    let connection_log = dir.join("tlsplice.log");
    let mut proxy = Proxy::start(&format!(
        "output = {}\n[web]\naccept = 127.0.0.1:0\nconnect = 127.0.0.1:{port}\nlocal = 127.0.0.2\ncert = {}\nkey = {}\n",
        connection_log.display(),
        cert.cert.display(),
        cert.key.display()
    ));
    let config = client_config(std::slice::from_ref(&cert.der), rustls::ALL_VERSIONS);
    // Clients from several loopback addresses; nginx sees only 127.0.0.2.
    let mut clients = Vec::new();
    for last in 5..10u8 {
        let socket =
            socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
        socket
            .bind(&SocketAddr::from(([127, 0, 0, last], 0)).into())
            .unwrap();
        socket.connect(&proxy.addr().into()).unwrap();
        let tcp: TcpStream = socket.into();
        tcp.set_read_timeout(Some(WAIT)).unwrap();
        let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
        let conn = rustls::ClientConnection::new(config.clone(), name).unwrap();
        let mut stream = rustls::StreamOwned::new(conn, tcp);
        write!(
            stream,
            "GET /{last} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
        )
        .unwrap();
        let mut response = String::new();
        let _ = stream.read_to_string(&mut response);
        assert!(response.ends_with("ok"), "{response}");
        clients.push((last, format!("127.0.0.{last}")));
    }
    proxy.signal(libc::SIGTERM);
    proxy.wait_exit();
    drop(_nginx);

    let access = std::fs::read_to_string(&access_log).unwrap();
    assert_eq!(access.lines().count(), 5, "{access}");
    assert!(
        access.lines().all(|line| line.starts_with("127.0.0.2 ")),
        "{access}"
    );

    let output = Command::new(binary())
        .args(["correlate", "--format", "nginx", "--connections"])
        .arg(&connection_log)
        .arg("--access-log")
        .arg(&access_log)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let rewritten = String::from_utf8(output.stdout).unwrap();
    for (last, client_ip) in clients {
        let line = rewritten
            .lines()
            .find(|line| line.contains(&format!("GET /{last} ")))
            .unwrap_or_else(|| panic!("no line for /{last} in {rewritten}"));
        assert!(line.starts_with(&format!("{client_ip} ")), "{line}");
    }
    assert!(!rewritten.contains("tlsplice=unmatched"), "{rewritten}");
}
