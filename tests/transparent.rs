//! `transparent = source` in network namespaces that the test builds: a client
//! host, the tlsplice host and a backend host, joined by veth pairs.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};

use common::*;

const CLIENT_IP: &str = "198.51.100.2";
const PROXY_FRONT_IP: &str = "198.51.100.1";
const PROXY_BACK_IP: &str = "203.0.113.1";
const BACKEND_IP: &str = "203.0.113.2";

/// Builds the three namespaces. Replies from the backend to the client's
/// address arrive at the tlsplice host on `p1`, and policy routing delivers them
/// locally, to the socket that IP_TRANSPARENT bound to the client's address.
fn build_network() -> (Namespaces, String, String, String) {
    let tag = std::process::id();
    let client = format!("tlsp-c-{tag}");
    let proxy = format!("tlsp-p-{tag}");
    let backend = format!("tlsp-b-{tag}");
    let namespaces = Namespaces(vec![client.clone(), proxy.clone(), backend.clone()]);
    for name in &namespaces.0 {
        ip(&["netns", "add", name]);
        ip(&["-n", name, "link", "set", "lo", "up"]);
    }
    ip(&[
        "link", "add", "c0", "netns", &client, "type", "veth", "peer", "name", "p0", "netns",
        &proxy,
    ]);
    ip(&[
        "link", "add", "b0", "netns", &backend, "type", "veth", "peer", "name", "p1", "netns",
        &proxy,
    ]);

    ip(&[
        "-n",
        &client,
        "addr",
        "add",
        &format!("{CLIENT_IP}/24"),
        "dev",
        "c0",
    ]);
    ip(&["-n", &client, "link", "set", "c0", "up"]);
    ip(&[
        "-n",
        &client,
        "route",
        "add",
        "default",
        "via",
        PROXY_FRONT_IP,
    ]);

    ip(&[
        "-n",
        &proxy,
        "addr",
        "add",
        &format!("{PROXY_FRONT_IP}/24"),
        "dev",
        "p0",
    ]);
    ip(&[
        "-n",
        &proxy,
        "addr",
        "add",
        &format!("{PROXY_BACK_IP}/24"),
        "dev",
        "p1",
    ]);
    ip(&["-n", &proxy, "link", "set", "p0", "up"]);
    ip(&["-n", &proxy, "link", "set", "p1", "up"]);
    ip(&["-n", &proxy, "rule", "add", "iif", "p1", "lookup", "100"]);
    ip(&[
        "-n",
        &proxy,
        "route",
        "add",
        "local",
        "0.0.0.0/0",
        "dev",
        "lo",
        "table",
        "100",
    ]);

    ip(&[
        "-n",
        &backend,
        "addr",
        "add",
        &format!("{BACKEND_IP}/24"),
        "dev",
        "b0",
    ]);
    ip(&["-n", &backend, "link", "set", "b0", "up"]);
    ip(&[
        "-n",
        &backend,
        "route",
        "add",
        "default",
        "via",
        PROXY_BACK_IP,
    ]);
    (namespaces, client, proxy, backend)
}

#[test]
fn transparent_source_shows_client_address_to_backend() {
    if !is_root() || program("ip").is_none() || program("python3").is_none() {
        eprintln!("note: needs root, ip and python3; skipping");
        return;
    }
    let (_namespaces, client_ns, proxy_ns, backend_ns) = build_network();

    // The backend reports the peer address of each connection it accepts.
    let backend_script = format!(
        "import socket\n\
         s = socket.socket()\n\
         s.bind(('{BACKEND_IP}', 8080))\n\
         s.listen(4)\n\
         print('ready', flush=True)\n\
         c, peer = s.accept()\n\
         c.sendall(('peer=%s:%d\\n' % peer).encode())\n\
         c.recv(100)\n\
         c.close()\n"
    );
    let mut backend = Command::new("ip")
        .args([
            "netns",
            "exec",
            &backend_ns,
            "python3",
            "-c",
            &backend_script,
        ])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut backend_out = BufReader::new(backend.stdout.take().unwrap());
    let mut ready = String::new();
    backend_out.read_line(&mut ready).unwrap();
    assert_eq!(ready.trim(), "ready");
    let _backend = Daemon(backend);

    let dir = TempDir::new("transparent");
    let cert = make_cert(&dir, "server", KeyKind::EcdsaP256, &["localhost"]);
    let proxy = Proxy::start_in_namespace(
        &proxy_ns,
        &format!(
            "[web]\naccept = {PROXY_FRONT_IP}:0\nconnect = {BACKEND_IP}:8080\ntransparent = source\ncert = {}\nkey = {}\n",
            cert.cert.display(),
            cert.key.display()
        ),
    );

    let mut client = Command::new("ip")
        .args([
            "netns", "exec", &client_ns, "openssl", "s_client", "-quiet", "-connect",
        ])
        .arg(proxy.addr().to_string())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut stdin = client.stdin.take().unwrap();
    let mut reply = String::new();
    BufReader::new(client.stdout.take().unwrap())
        .read_line(&mut reply)
        .unwrap();
    let _ = stdin.write_all(b"bye\n");
    drop(stdin);
    let _client = Daemon(client);

    assert!(
        reply.starts_with(&format!("peer={CLIENT_IP}:")),
        "backend saw {reply:?}; tlsplice output: {:#?}",
        proxy.output()
    );
    let line = &proxy.wait_for_conn_lines(1)[0];
    assert!(field(line, "client").starts_with(CLIENT_IP), "{line}");
    assert!(field(line, "local").starts_with(CLIENT_IP), "{line}");
}
