//! Shared pieces of the integration tests: the real tlsplice binary, real
//! certificates made with the openssl command, real backends on loopback, and a
//! rustls client.

#![allow(dead_code)]

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};

/// Upper bound for any single wait in a test, so a broken build fails instead of
/// hanging. Not a performance threshold.
pub const WAIT: Duration = Duration::from_secs(30);

/// A fresh directory under the system temp directory, removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(name: &str) -> TempDir {
        static COUNTER: AtomicUsize = AtomicUsize::new(0);
        let path = std::env::temp_dir().join(format!(
            "tlsplice-test-{name}-{}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).unwrap();
        TempDir(path)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }

    pub fn join(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }

    pub fn write(&self, name: &str, contents: &str) -> PathBuf {
        let path = self.join(name);
        std::fs::write(&path, contents).unwrap();
        path
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Key algorithms the tests make certificates with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyKind {
    EcdsaP256,
    Rsa2048,
}

/// A self-signed certificate and key written by the openssl command.
pub struct Cert {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub der: CertificateDer<'static>,
}

fn openssl(args: &[&str]) {
    let output = Command::new("openssl")
        .args(args)
        .output()
        .expect("the openssl command is installed");
    assert!(
        output.status.success(),
        "openssl {args:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// Makes a certificate for `names` in `dir` with openssl, issued by a CA made for
/// it alone, so a client that trusts `der` accepts this certificate and no other.
/// The key file is PKCS#8.
pub fn make_cert(dir: &TempDir, stem: &str, kind: KeyKind, names: &[&str]) -> Cert {
    let ca_cert = dir.join(&format!("{stem}-ca.crt"));
    let ca_key = dir.join(&format!("{stem}-ca.key"));
    let csr = dir.join(&format!("{stem}.csr"));
    let ext = dir.join(&format!("{stem}.ext"));
    let cert = dir.join(&format!("{stem}.crt"));
    let key = dir.join(&format!("{stem}.key"));
    let path = |p: &PathBuf| p.to_str().unwrap().to_string();

    let ca_subject = format!("/CN={stem} test CA");
    openssl(&[
        "req",
        "-x509",
        "-nodes",
        "-days",
        "2",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-keyout",
        &path(&ca_key),
        "-out",
        &path(&ca_cert),
        "-subj",
        &ca_subject,
    ]);

    let san = names
        .iter()
        .map(|name| {
            if name.parse::<std::net::IpAddr>().is_ok() {
                format!("IP:{name}")
            } else {
                format!("DNS:{name}")
            }
        })
        .collect::<Vec<_>>()
        .join(",");
    std::fs::write(
        &ext,
        format!("subjectAltName={san}\nbasicConstraints=critical,CA:FALSE\n"),
    )
    .unwrap();
    let subject = format!("/CN={}", names[0]);
    let mut request = vec![
        "req",
        "-new",
        "-nodes",
        "-keyout",
        key.to_str().unwrap(),
        "-out",
        csr.to_str().unwrap(),
        "-subj",
        &subject,
    ];
    match kind {
        KeyKind::EcdsaP256 => {
            request.extend(["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256"])
        }
        KeyKind::Rsa2048 => request.extend(["-newkey", "rsa:2048"]),
    }
    openssl(&request);
    openssl(&[
        "x509",
        "-req",
        "-days",
        "2",
        "-in",
        &path(&csr),
        "-CA",
        &path(&ca_cert),
        "-CAkey",
        &path(&ca_key),
        "-CAcreateserial",
        "-extfile",
        &path(&ext),
        "-out",
        &path(&cert),
    ]);
    let der = CertificateDer::from_pem_file(&ca_cert).unwrap();
    Cert { cert, key, der }
}

/// Rewrites `cert`'s key in the traditional format: SEC1 for EC, PKCS#1 for RSA.
pub fn write_traditional_key(cert: &Cert, kind: KeyKind, path: &Path) {
    // `openssl ec` writes SEC1 by default; `openssl rsa` needs -traditional
    // for PKCS#1.
    let mut args = vec![
        match kind {
            KeyKind::EcdsaP256 => "ec",
            KeyKind::Rsa2048 => "rsa",
        },
        "-in",
        cert.key.to_str().unwrap(),
        "-out",
        path.to_str().unwrap(),
    ];
    if kind == KeyKind::Rsa2048 {
        args.push("-traditional");
    }
    openssl(&args);
    let written = std::fs::read_to_string(path).unwrap();
    let expected = match kind {
        KeyKind::EcdsaP256 => "BEGIN EC PRIVATE KEY",
        KeyKind::Rsa2048 => "BEGIN RSA PRIVATE KEY",
    };
    assert!(
        written.contains(expected),
        "{path:?} is not in the traditional format"
    );
}

/// A running tlsplice process, killed on drop. Its stderr lines are collected.
pub struct Proxy {
    pub child: Option<Child>,
    pub lines: Arc<Mutex<Vec<String>>>,
    line_events: mpsc::Receiver<String>,
    /// Listening address per service, in configuration order.
    pub addrs: Vec<SocketAddr>,
    pub dir: TempDir,
}

pub fn binary() -> &'static str {
    env!("CARGO_BIN_EXE_tlsplice")
}

impl Proxy {
    /// Starts tlsplice in the foreground on `config` (appended after
    /// `foreground = yes`) and waits for every service to report its address.
    pub fn start(config: &str) -> Proxy {
        Proxy::start_with_env(config, &[])
    }

    /// Starts tlsplice like [`Proxy::start`], with extra environment variables.
    /// The log level is `info` unless `config` sets `debug` itself.
    pub fn start_with_env(config: &str, env: &[(&str, &str)]) -> Proxy {
        let dir = TempDir::new("proxy");
        let sets_level = config
            .lines()
            .any(|line| line.trim_start().starts_with("debug"));
        let level = if sets_level { "" } else { "debug = info\n" };
        let text = format!("foreground = yes\nsyslog = no\n{level}{config}");
        let path = dir.write("tlsplice.conf", &text);
        let services = text
            .lines()
            .filter(|line| line.trim_start().starts_with('['))
            .count()
            .max(1);
        let sni_sections = text
            .lines()
            .filter(|line| line.trim_start().to_lowercase().starts_with("sni"))
            .count();
        Proxy::spawn(
            Command::new(binary()).arg(&path).envs(env.iter().copied()),
            services - sni_sections,
            dir,
        )
    }

    /// Starts a command that runs tlsplice, such as a wrapper that sets limits.
    pub fn start_command(command: &mut Command, services: usize) -> Proxy {
        let dir = TempDir::new("proxy");
        Proxy::spawn(command, services, dir)
    }

    /// Starts tlsplice with command-line arguments.
    pub fn start_args(args: &[&str], services: usize) -> Proxy {
        let dir = TempDir::new("proxy");
        Proxy::spawn(Command::new(binary()).args(args), services, dir)
    }

    fn spawn(command: &mut Command, services: usize, dir: TempDir) -> Proxy {
        let mut child = command
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("tlsplice starts");
        let stderr = child.stderr.take().unwrap();
        let lines = Arc::new(Mutex::new(Vec::new()));
        let (sender, receiver) = mpsc::channel();
        {
            let lines = lines.clone();
            thread::spawn(move || {
                for line in BufReader::new(stderr).lines() {
                    let Ok(line) = line else { break };
                    lines.lock().unwrap().push(line.clone());
                    if sender.send(line).is_err() {
                        // Keep collecting after the test stopped listening.
                    }
                }
            });
        }
        let mut proxy = Proxy {
            child: Some(child),
            lines,
            line_events: receiver,
            addrs: Vec::new(),
            dir,
        };
        while proxy.addrs.len() < services {
            let line = proxy.next_line(WAIT).unwrap_or_else(|| {
                panic!(
                    "tlsplice did not report listening; output: {:?}",
                    proxy.output()
                )
            });
            if !line.contains(" notice service ") {
                continue;
            }
            if let Some(rest) = line.split(" listening on ").nth(1) {
                let addr = rest.split_whitespace().next().unwrap();
                // A UNIX-socket listener has no socket address; tests use its path.
                proxy
                    .addrs
                    .push(addr.parse().unwrap_or(SocketAddr::from(([0, 0, 0, 0], 0))));
            }
        }
        proxy
    }

    pub fn addr(&self) -> SocketAddr {
        self.addrs[0]
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().unwrap().id()
    }

    fn next_line(&self, timeout: Duration) -> Option<String> {
        self.line_events.recv_timeout(timeout).ok()
    }

    /// Returns every stderr line so far.
    pub fn output(&self) -> Vec<String> {
        self.lines.lock().unwrap().clone()
    }

    /// Waits until a line containing every one of `needles` appears; returns it.
    pub fn wait_for_line(&self, needles: &[&str]) -> String {
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(line) = self
                .output()
                .into_iter()
                .find(|line| needles.iter().all(|needle| line.contains(needle)))
            {
                return line;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(
                !left.is_zero(),
                "no line with {needles:?} in output: {:#?}",
                self.output()
            );
            let _ = self.next_line(left.min(Duration::from_millis(200)));
        }
    }

    /// Waits until `count` connection lines have been logged; returns them.
    pub fn wait_for_conn_lines(&self, count: usize) -> Vec<String> {
        let deadline = Instant::now() + WAIT;
        loop {
            let lines: Vec<String> = self
                .output()
                .into_iter()
                .filter(|line| line.contains(" conn service="))
                .collect();
            if lines.len() >= count {
                return lines;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(
                !left.is_zero(),
                "expected {count} connection lines, got {}: {:#?}",
                lines.len(),
                self.output()
            );
            let _ = self.next_line(left.min(Duration::from_millis(200)));
        }
    }

    pub fn signal(&self, signal: i32) {
        let status = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(self.pid().to_string())
            .status()
            .unwrap();
        assert!(status.success());
    }

    /// Waits for the process to exit; returns its status.
    pub fn wait_exit(&mut self) -> ExitStatus {
        let child = self.child.as_mut().unwrap();
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                return status;
            }
            assert!(Instant::now() < deadline, "tlsplice did not exit");
            thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        if let Some(child) = self.child.as_mut() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Returns the value of `key=` in a connection log line.
pub fn field<'a>(line: &'a str, key: &str) -> &'a str {
    let prefix = format!(" {key}=");
    let start = line
        .find(&prefix)
        .unwrap_or_else(|| panic!("no {key}= in {line}"))
        + prefix.len();
    line[start..].split(' ').next().unwrap()
}

// ---- backends ----

/// A TCP backend on 127.0.0.1 serving each connection on its own thread.
pub struct Backend {
    pub addr: SocketAddr,
    /// Peer addresses of accepted connections.
    pub peers: Arc<Mutex<Vec<SocketAddr>>>,
}

impl Backend {
    pub fn start<F>(handler: F) -> Backend
    where
        F: Fn(TcpStream) + Send + Sync + 'static,
    {
        Backend::start_on("127.0.0.1:0", handler)
    }

    pub fn start_on<F>(addr: &str, handler: F) -> Backend
    where
        F: Fn(TcpStream) + Send + Sync + 'static,
    {
        let listener = TcpListener::bind(addr).unwrap();
        let addr = listener.local_addr().unwrap();
        let peers = Arc::new(Mutex::new(Vec::new()));
        let handler = Arc::new(handler);
        {
            let peers = peers.clone();
            thread::spawn(move || {
                for stream in listener.incoming() {
                    let Ok(stream) = stream else { continue };
                    if let Ok(peer) = stream.peer_addr() {
                        peers.lock().unwrap().push(peer);
                    }
                    let handler = handler.clone();
                    thread::spawn(move || handler(stream));
                }
            });
        }
        Backend { addr, peers }
    }

    /// Echoes every byte back, and half-closes after the client's FIN.
    pub fn echo() -> Backend {
        Backend::start(|mut stream| {
            let mut buf = vec![0u8; 64 * 1024];
            loop {
                match stream.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        if stream.write_all(&buf[..n]).is_err() {
                            return;
                        }
                    }
                }
            }
            let _ = stream.shutdown(Shutdown::Write);
        })
    }
}

// ---- client ----

/// Builds a rustls client configuration that trusts exactly `roots`.
pub fn client_config(
    roots: &[CertificateDer<'static>],
    versions: &[&'static rustls::SupportedProtocolVersion],
) -> Arc<rustls::ClientConfig> {
    let mut store = rustls::RootCertStore::empty();
    for root in roots {
        store.add(root.clone()).unwrap();
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    Arc::new(
        rustls::ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(versions)
            .unwrap()
            .with_root_certificates(store)
            .with_no_client_auth(),
    )
}

pub type TlsStream = rustls::StreamOwned<rustls::ClientConnection, TcpStream>;

/// Connects and completes the handshake.
pub fn tls_connect(
    addr: SocketAddr,
    config: &Arc<rustls::ClientConfig>,
    server_name: &str,
) -> io::Result<TlsStream> {
    let tcp = TcpStream::connect(addr)?;
    tcp.set_read_timeout(Some(WAIT))?;
    tcp.set_write_timeout(Some(WAIT))?;
    let name = ServerName::try_from(server_name.to_string()).unwrap();
    let conn = rustls::ClientConnection::new(config.clone(), name).map_err(io::Error::other)?;
    let mut stream = rustls::StreamOwned::new(conn, tcp);
    while stream.conn.is_handshaking() {
        stream.conn.complete_io(&mut stream.sock)?;
    }
    Ok(stream)
}

/// A deterministic byte stream for checking bulk transfers.
pub struct Pattern {
    state: u64,
}

impl Pattern {
    pub fn new(seed: u64) -> Pattern {
        Pattern {
            state: seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1,
        }
    }

    pub fn fill(&mut self, buf: &mut [u8]) {
        for chunk in buf.chunks_mut(8) {
            // xorshift64
            self.state ^= self.state << 13;
            self.state ^= self.state >> 7;
            self.state ^= self.state << 17;
            let bytes = self.state.to_le_bytes();
            chunk.copy_from_slice(&bytes[..chunk.len()]);
        }
    }
}

/// Checksum (FNV-1a, 64 bit) over a stream of chunks.
#[derive(Default)]
pub struct Checksum(u64);

impl Checksum {
    pub fn new() -> Checksum {
        Checksum(0xcbf2_9ce4_8422_2325)
    }

    pub fn update(&mut self, data: &[u8]) {
        for byte in data {
            self.0 ^= u64::from(*byte);
            self.0 = self.0.wrapping_mul(0x0100_0000_01b3);
        }
    }

    pub fn value(&self) -> u64 {
        self.0
    }
}

/// Reports whether the tests run as root (chroot and setuid tests need it).
pub fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|out| String::from_utf8_lossy(&out.stdout).trim() == "0")
        .unwrap_or(false)
}

// ---- real peers: nginx and haproxy ----

/// Path of an installed program, or `None` with a note, so a test can skip on a
/// machine without it. CI installs every program the tests use.
pub fn program(name: &str) -> Option<PathBuf> {
    for dir in [
        "/usr/sbin",
        "/usr/bin",
        "/usr/local/sbin",
        "/usr/local/bin",
        "/sbin",
        "/bin",
    ] {
        let path = Path::new(dir).join(name);
        if path.exists() {
            return Some(path);
        }
    }
    eprintln!("note: {name} is not installed; skipping this test");
    None
}

/// A loopback port that was free when checked. Programs configured with a
/// fixed port (nginx, haproxy) get one of these.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Waits until something accepts connections on `addr`.
pub fn wait_listening(addr: SocketAddr) {
    let deadline = Instant::now() + WAIT;
    while TcpStream::connect(addr).is_err() {
        assert!(Instant::now() < deadline, "nothing listens on {addr}");
        thread::sleep(Duration::from_millis(20));
    }
}

/// A child process killed on drop.
pub struct Daemon(pub Child);

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts nginx in the foreground with `http_body` inside its `http {}` block.
pub fn start_nginx(dir: &TempDir, http_body: &str) -> Option<Daemon> {
    let nginx = program("nginx")?;
    let prefix = dir.join("nginx");
    std::fs::create_dir_all(prefix.join("logs")).unwrap();
    let config = format!(
        "daemon off;\nmaster_process off;\nworker_processes 1;\npid {prefix}/nginx.pid;\n\
         error_log {prefix}/logs/error.log warn;\nevents {{ worker_connections 256; }}\n\
         http {{\n client_body_temp_path {prefix}/body;\n proxy_temp_path {prefix}/proxy;\n\
         fastcgi_temp_path {prefix}/fastcgi;\n uwsgi_temp_path {prefix}/uwsgi;\n scgi_temp_path {prefix}/scgi;\n\
         {http_body}\n}}\n",
        prefix = prefix.display()
    );
    let path = prefix.join("nginx.conf");
    std::fs::write(&path, config).unwrap();
    let child = Command::new(nginx)
        .arg("-p")
        .arg(&prefix)
        .arg("-c")
        .arg(&path)
        .stdin(Stdio::null())
        .spawn()
        .expect("nginx starts");
    Some(Daemon(child))
}

/// Starts haproxy in the foreground with the given configuration.
pub fn start_haproxy(dir: &TempDir, config: &str) -> Option<Daemon> {
    let haproxy = program("haproxy")?;
    let path = dir.write("haproxy.cfg", config);
    let child = Command::new(haproxy)
        .arg("-db")
        .arg("-f")
        .arg(&path)
        .stdin(Stdio::null())
        .spawn()
        .expect("haproxy starts");
    Some(Daemon(child))
}

/// Sends one HTTP/1.1 request over TLS and returns the whole response.
pub fn https_get(
    addr: SocketAddr,
    config: &Arc<rustls::ClientConfig>,
    server_name: &str,
    path: &str,
) -> String {
    let mut stream = tls_connect(addr, config, server_name).unwrap();
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {server_name}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    stream.flush().unwrap();
    let mut response = String::new();
    let _ = stream.read_to_string(&mut response);
    response
}

/// Runs `ip` with `args`; panics with its error output on failure.
pub fn ip(args: &[&str]) {
    let output = Command::new("ip")
        .args(args)
        .output()
        .expect("the ip command runs");
    assert!(
        output.status.success(),
        "ip {args:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// Network namespaces created by a test, deleted on drop.
pub struct Namespaces(pub Vec<String>);

impl Drop for Namespaces {
    fn drop(&mut self) {
        for name in &self.0 {
            let _ = Command::new("ip").args(["netns", "del", name]).status();
        }
    }
}

impl Proxy {
    /// Starts tlsplice inside network namespace `namespace`.
    pub fn start_in_namespace(namespace: &str, config: &str) -> Proxy {
        let dir = TempDir::new("proxy-ns");
        let text = format!("foreground = yes\nsyslog = no\ndebug = info\n{config}");
        let path = dir.write("tlsplice.conf", &text);
        let mut command = Command::new("ip");
        command
            .args(["netns", "exec", namespace, binary()])
            .arg(&path);
        Proxy::spawn(&mut command, 1, dir)
    }
}

/// Returns the pids of `pid`'s children, read from every thread's list.
pub fn child_pids(pid: u32) -> Vec<u32> {
    let mut found = Vec::new();
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return found;
    };
    for task in tasks.flatten() {
        let text = std::fs::read_to_string(task.path().join("children")).unwrap_or_default();
        found.extend(
            text.split_whitespace()
                .map(|child| child.parse::<u32>().unwrap()),
        );
    }
    found
}

/// Sends a GET to the stats listener at `addr`; returns the body of its 200
/// response.
pub fn stats_get(addr: SocketAddr, path: &str) -> String {
    let mut stream = TcpStream::connect(addr).unwrap();
    stream.set_read_timeout(Some(WAIT)).unwrap();
    write!(stream, "GET {path} HTTP/1.1\r\nHost: stats\r\n\r\n").unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    let (head, body) = response.split_once("\r\n\r\n").unwrap();
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    body.to_string()
}

impl Proxy {
    /// Waits for the log line of the stats listener; returns its address.
    pub fn stats_address(&self) -> SocketAddr {
        let line = self.wait_for_line(&["stats listening on "]);
        line.rsplit(' ').next().unwrap().parse().unwrap()
    }
}
