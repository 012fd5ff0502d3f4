//! The jailed stunnel configuration as root, and configuration errors as the
//! binary reports them.

mod common;

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;

/// Creates the unprivileged `tlsplice` user and group when they are missing.
fn ensure_tlsplice_user() {
    let exists = Command::new("id")
        .arg("tlsplice")
        .output()
        .unwrap()
        .status
        .success();
    if !exists {
        let status = Command::new("useradd")
            .args([
                "--system",
                "--user-group",
                "--no-create-home",
                "--shell",
                "/usr/sbin/nologin",
                "tlsplice",
            ])
            .status()
            .expect("useradd runs");
        assert!(status.success(), "useradd tlsplice failed");
    }
}

fn id_of(flag: &str) -> u32 {
    let output = Command::new("id")
        .args([flag, "tlsplice"])
        .output()
        .unwrap();
    String::from_utf8_lossy(&output.stdout)
        .trim()
        .parse()
        .unwrap()
}

#[test]
fn jailed_configuration_runs_unchanged() {
    if !is_root() {
        eprintln!("note: not root; skipping the chroot and setuid test");
        return;
    }
    ensure_tlsplice_user();
    let dir = TempDir::new("jail");
    let jail = dir.join("var-run-tlsplice");
    std::fs::create_dir(&jail).unwrap();
    // The jail is writable by the service user so it can remove its pid file.
    Command::new("chown")
        .arg("tlsplice:tlsplice")
        .arg(&jail)
        .status()
        .unwrap();
    let log = dir.join("tlsplice.log");
    let cert = make_cert(&dir, "server", KeyKind::EcdsaP256, &["localhost"]);

    // The backend sees the `local` source address.
    let backend = Backend::echo();

    // The configuration from the stunnel era, with paths and ports filled in.
    let config = dir.write(
        "tlsplice.conf",
        &format!(
            "chroot = {jail}\npid = /tlsplice.pid\nsetgid = tlsplice\nsetuid = tlsplice\n\
             output = {log}\nsyslog = no\naccept = 127.0.0.1:0\nconnect = {backend}\n\
             local = 127.0.0.2\ncert = {cert}\nkey = {key}\n",
            jail = jail.display(),
            log = log.display(),
            backend = backend.addr,
            cert = cert.cert.display(),
            key = cert.key.display(),
        ),
    );

    // Without `foreground`, tlsplice daemonizes; the parent exits once it runs.
    let status = Command::new(binary()).arg(&config).status().unwrap();
    assert!(status.success(), "start failed: {status:?}");

    let pid_path = jail.join("tlsplice.pid");
    let pid: u32 = std::fs::read_to_string(&pid_path)
        .expect("pid file inside the chroot")
        .trim()
        .parse()
        .unwrap();
    // With privilege separation, on by default as root, the pid file names the
    // parent, which keeps root. Its key process and workers are the jailed ones.
    let children: Vec<u32> = std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
        .unwrap_or_default()
        .split_whitespace()
        .map(|child| child.parse().unwrap())
        .collect();
    let jailed_pids = if children.is_empty() {
        vec![pid]
    } else {
        children
    };
    for jailed in jailed_pids {
        let status_text = std::fs::read_to_string(format!("/proc/{jailed}/status")).unwrap();
        let uid_line = status_text
            .lines()
            .find(|line| line.starts_with("Uid:"))
            .unwrap();
        let gid_line = status_text
            .lines()
            .find(|line| line.starts_with("Gid:"))
            .unwrap();
        let uid = id_of("-u");
        let gid = id_of("-g");
        assert!(
            uid_line
                .split_whitespace()
                .skip(1)
                .all(|id| id == uid.to_string()),
            "{uid_line}"
        );
        assert!(
            gid_line
                .split_whitespace()
                .skip(1)
                .all(|id| id == gid.to_string()),
            "{gid_line}"
        );
        let root = std::fs::read_link(format!("/proc/{jailed}/root")).unwrap();
        assert_eq!(root, jail);
        assert!(status_text.contains("NoNewPrivs:\t1"), "{status_text}");
    }

    // The log file outside the jail names the listening address.
    let deadline = Instant::now() + WAIT;
    let addr: SocketAddr = loop {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        if let Some(rest) = text.split(" listening on ").nth(1) {
            break rest.split_whitespace().next().unwrap().parse().unwrap();
        }
        assert!(Instant::now() < deadline, "no listening line in {log:?}");
        std::thread::sleep(Duration::from_millis(20));
    };
    let config = client_config(std::slice::from_ref(&cert.der), rustls::ALL_VERSIONS);
    let mut stream = tls_connect(addr, &config, "localhost").unwrap();
    stream.write_all(b"jailed").unwrap();
    let mut reply = [0u8; 6];
    stream.read_exact(&mut reply).unwrap();
    assert_eq!(&reply, b"jailed");
    drop(stream);
    assert!(
        backend
            .peers
            .lock()
            .unwrap()
            .iter()
            .all(|peer| peer.ip().to_string() == "127.0.0.2"),
        "backend peers: {:?}",
        backend.peers.lock().unwrap()
    );

    // SIGTERM stops it and the pid file goes away.
    Command::new("kill").arg(pid.to_string()).status().unwrap();
    let deadline = Instant::now() + WAIT;
    while std::path::Path::new(&format!("/proc/{pid}")).exists() {
        assert!(Instant::now() < deadline, "tlsplice {pid} did not stop");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(!pid_path.exists(), "pid file left behind");
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(text.contains(" conn service=default "), "{text}");
    assert!(text.contains(" local=127.0.0.2:"), "{text}");
}

/// Runs the binary on a configuration and returns (exit code, stderr).
fn run_config(dir: &TempDir, text: &str) -> (i32, String) {
    let path = dir.write("bad.conf", text);
    let output = Command::new(binary())
        .arg("--check")
        .arg(&path)
        .output()
        .unwrap();
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[test]
fn config_errors_name_file_line_option_and_value() {
    let dir = TempDir::new("errors");
    let cert = make_cert(&dir, "server", KeyKind::EcdsaP256, &["localhost"]);
    let other = make_cert(&dir, "other", KeyKind::EcdsaP256, &["localhost"]);
    let path = dir.join("bad.conf");
    let file = path.display().to_string();
    let head = "[web]\naccept = 127.0.0.1:0\nconnect = 127.0.0.1:9\n";
    let good_cert = format!(
        "cert = {}\nkey = {}\n",
        cert.cert.display(),
        cert.key.display()
    );

    let cases: Vec<(String, Vec<String>)> = vec![
        (
            format!("{head}{good_cert}acceptt = 1\n"),
            vec![format!("{file}:6: acceptt"), "unknown option".into()],
        ),
        (
            format!("{head}{good_cert}verify = 2\n"),
            vec![format!("{file}:6: verify = 2"), "not implemented".into()],
        ),
        (
            format!("{head}{good_cert}TIMEOUTidle = abc\n"),
            vec![format!("{file}:6: TIMEOUTidle = abc"), "invalid".into()],
        ),
        (
            format!("{head}cert = /nonexistent/server.crt\n"),
            vec![
                format!("{file}:4: cert = /nonexistent/server.crt"),
                "No such file".into(),
            ],
        ),
        (
            format!(
                "{head}cert = {}\nkey = {}\n",
                cert.cert.display(),
                other.key.display()
            ),
            vec![
                format!("{file}:4: cert = {}", cert.cert.display()),
                "does not match the certificate".into(),
            ],
        ),
    ];
    for (text, expected) in cases {
        let (code, stderr) = run_config(&dir, &text);
        assert_eq!(code, 3, "config:\n{text}\nstderr: {stderr}");
        for needle in expected {
            assert!(
                stderr.contains(&needle),
                "expected {needle:?} in {stderr:?}"
            );
        }
    }

    // An encrypted key is reported at the key line, with what to do.
    let encrypted = dir.join("encrypted.key");
    let status = Command::new("openssl")
        .args(["pkey", "-in"])
        .arg(&cert.key)
        .args(["-aes256", "-passout", "pass:secret", "-out"])
        .arg(&encrypted)
        .status()
        .unwrap();
    assert!(status.success());
    let (code, stderr) = run_config(
        &dir,
        &format!(
            "{head}cert = {}\nkey = {}\n",
            cert.cert.display(),
            encrypted.display()
        ),
    );
    assert_eq!(code, 3, "{stderr}");
    assert!(
        stderr.contains(&format!("{file}:5: key = {}", encrypted.display())),
        "{stderr}"
    );
    assert!(stderr.contains("encrypted"), "{stderr}");

    // Settings that parse but cannot work here are caught by --check too.
    let machine_cases: Vec<(String, &str)> = vec![
        (format!("{head}{good_cert}local = 192.0.2.1\n"), "local = 192.0.2.1"),
        (format!("{head}{good_cert}local = ::1\n"), "different IP versions"),
        (
            format!("{head}{good_cert}[again]\naccept = 127.0.0.1:7443\nconnect = 127.0.0.1:9\n{good_cert}[twice]\naccept = 127.0.0.1:7443\nconnect = 127.0.0.1:9\n{good_cert}"),
            "both accept on this address",
        ),
        (format!("output = /nonexistent/dir/t.log\n{head}{good_cert}"), "directory /nonexistent/dir does not exist"),
        (
            format!("histogram_log = /nonexistent/dir/t.hlog\n{head}{good_cert}"),
            "histogram_log = /nonexistent/dir/t.hlog: directory /nonexistent/dir does not exist; create it or choose another path",
        ),
        (format!("chroot = /nonexistent/jail\n{head}{good_cert}"), "chroot = /nonexistent/jail"),
        (
            format!("output = /tmp/t.log\nhistogram_log = /tmp/t.log\n{head}{good_cert}"),
            "histogram_log = /tmp/t.log: `output` on line 1 names the same file /tmp/t.log; use different files for output and histogram_log",
        ),
        (
            format!("stats = 127.0.0.1:7444\n[web]\naccept = 127.0.0.1:7444\nconnect = 127.0.0.1:9\n{good_cert}"),
            "stats = 127.0.0.1:7444: service [web] has `accept = 127.0.0.1:7444` on line 3 on the same port",
        ),
        (format!("{head}{good_cert}TIMEOUTidle = 60 ; one minute\n"), "comments must be on their own line"),
    ];
    for (text, needle) in machine_cases {
        let (code, stderr) = run_config(&dir, &text);
        assert_eq!(code, 3, "config:\n{text}\nstderr: {stderr}");
        assert!(stderr.contains(needle), "expected {needle:?} in {stderr:?}");
    }

    // Transparent mode needs a capability that setuid drops.
    let (code, stderr) = run_config(
        &dir,
        &format!("setuid = nobody\n{head}{good_cert}transparent = source\n"),
    );
    assert_eq!(code, 3, "{stderr}");
    assert!(stderr.contains("transparent = source"), "{stderr}");
    assert!(
        stderr.contains("remove setuid or the transparent option"),
        "{stderr}"
    );

    // A valid configuration passes --check.
    let (code, stderr) = run_config(&dir, &format!("{head}{good_cert}"));
    assert_eq!(code, 0, "{stderr}");
}

#[test]
fn address_in_use_is_a_start_up_error() {
    let dir = TempDir::new("in-use");
    let cert = make_cert(&dir, "server", KeyKind::EcdsaP256, &["localhost"]);
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap();
    let path = dir.write(
        "in-use.conf",
        &format!(
            "foreground = yes\n[web]\naccept = {addr}\nconnect = 127.0.0.1:9\ncert = {}\nkey = {}\n",
            cert.cert.display(),
            cert.key.display()
        ),
    );
    let output = Command::new(binary()).arg(&path).output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(4), "{stderr}");
    assert!(
        stderr.contains(&format!("service [web]: accept = {addr}")),
        "{stderr}"
    );
    assert!(stderr.contains("Address already in use"), "{stderr}");
}

#[test]
fn second_instance_on_same_port_is_refused() {
    let backend = Backend::echo();
    let first = Proxy::start_args(
        &[
            "--accept",
            "127.0.0.1:0",
            "--connect",
            &backend.addr.to_string(),
        ],
        1,
    );
    // The first instance listens with SO_REUSEPORT; a second must not share it.
    let output = Command::new(binary())
        .args([
            "--accept",
            &first.addr().to_string(),
            "--connect",
            &backend.addr.to_string(),
        ])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(4), "{stderr}");
    assert!(stderr.contains("Address already in use"), "{stderr}");
}

#[test]
fn command_line_without_cert_uses_self_signed() {
    let backend = Backend::echo();
    let proxy = Proxy::start_args(
        &[
            "--accept",
            "127.0.0.1:0",
            "--connect",
            &backend.addr.to_string(),
            "--threads",
            "1",
        ],
        1,
    );
    proxy.wait_for_line(&["self-signed certificate"]);
    // openssl s_client completes a handshake and round-trips a line.
    let mut child = Command::new("openssl")
        .args(["s_client", "-connect", &proxy.addr().to_string(), "-quiet"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(b"hello openssl\n").unwrap();
    stdin.flush().unwrap();
    let stdout = child.stdout.take().unwrap();
    let (sender, receiver) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            if sender.send(line).is_err() {
                break;
            }
        }
    });
    let line = receiver
        .recv_timeout(WAIT)
        .expect("an echoed line from s_client");
    assert_eq!(line, "hello openssl");
    drop(stdin);
    let _ = child.kill();
    let _ = child.wait();
}

#[test]
fn curl_through_tlsplice_to_nginx() {
    let dir = TempDir::new("curl-nginx");
    let port = free_port();
    let Some(_nginx) = start_nginx(
        &dir,
        &format!("server {{ listen 127.0.0.1:{port}; location / {{ return 200 \"hello from nginx\\n\"; }} }}"),
    ) else {
        return;
    };
    wait_listening(SocketAddr::from(([127, 0, 0, 1], port)));
    let cert = make_cert(&dir, "server", KeyKind::EcdsaP256, &["localhost"]);
    let ca = dir.join("server-ca.crt");
    let proxy = Proxy::start(&format!(
        "[web]\naccept = 127.0.0.1:0\nconnect = 127.0.0.1:{port}\ncert = {}\nkey = {}\nalpn = http/1.1\n",
        cert.cert.display(),
        cert.key.display()
    ));
    let Some(curl) = program("curl") else { return };
    let output = Command::new(curl)
        .args(["--silent", "--show-error", "--cacert"])
        .arg(&ca)
        .args([
            "--resolve",
            &format!("localhost:{}:127.0.0.1", proxy.addr().port()),
        ])
        .arg(format!("https://localhost:{}/", proxy.addr().port()))
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&output.stdout),
        "hello from nginx\n"
    );
    let line = &proxy.wait_for_conn_lines(1)[0];
    assert_eq!(field(line, "alpn"), "http/1.1");
}

#[test]
fn check_counts_services_and_sni_routes() {
    let dir = TempDir::new("check-count");
    let cert = make_cert(&dir, "server", KeyKind::EcdsaP256, &["localhost"]);
    let keys = format!(
        "cert = {}\nkey = {}\n",
        cert.cert.display(),
        cert.key.display()
    );
    let service =
        |name: &str| format!("[{name}]\naccept = 127.0.0.1:0\nconnect = 127.0.0.1:9\n{keys}");
    let route = |name: &str, pattern: &str| format!("[{name}]\nsni = web:{pattern}\n{keys}");

    let cases = [
        (service("web"), "(1 service)"),
        (
            format!("{}{}", service("web"), route("www", "www.example.com")),
            "(1 service, 1 SNI route)",
        ),
        (
            format!(
                "{}{}{}{}",
                service("web"),
                service("api"),
                route("www", "www.example.com"),
                route("shop", "shop.example.com")
            ),
            "(2 services, 2 SNI routes)",
        ),
    ];
    for (text, expected) in cases {
        let path = dir.write("count.conf", &text);
        let output = Command::new(binary())
            .arg("--check")
            .arg(&path)
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&output.stdout);
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
        assert!(
            stdout.contains(&format!("configuration is valid {expected}")),
            "expected {expected:?} in {stdout:?}"
        );
    }
}

/// Returns the `privsep` settings to run a test with: both as root, and only
/// `no` otherwise, because privilege separation needs root.
fn privsep_modes() -> &'static [&'static str] {
    if is_root() {
        &["privsep = no", "privsep = yes"]
    } else {
        &["privsep = no"]
    }
}

#[test]
fn one_worker_logged_in_singular() {
    let dir = TempDir::new("one-worker");
    let cert = make_cert(&dir, "server", KeyKind::EcdsaP256, &["localhost"]);
    let backend = Backend::echo();
    for mode in privsep_modes() {
        let proxy = Proxy::start(&format!(
            "{mode}\nthreads = 1\naccept = 127.0.0.1:0\nconnect = {}\ncert = {}\nkey = {}\n",
            backend.addr,
            cert.cert.display(),
            cert.key.display()
        ));
        let line = proxy.wait_for_line(&[" listening on "]);
        assert!(line.ends_with(" with 1 worker"), "{mode}: {line}");
    }
}

#[test]
fn inherited_descriptor_closed_at_start() {
    let dir = TempDir::new("inherited-fd");
    let cert = make_cert(&dir, "server", KeyKind::EcdsaP256, &["localhost"]);
    let backend = Backend::echo();
    // With privilege separation the children are checked too.
    for mode in privsep_modes() {
        let config = dir.write(
            "inherited.conf",
            &format!(
                "foreground = yes\nsyslog = no\n{mode}\nthreads = 2\naccept = 127.0.0.1:0\nconnect = {}\ncert = {}\nkey = {}\n",
                backend.addr,
                cert.cert.display(),
                cert.key.display()
            ),
        );
        // The shell opens descriptor 7 without close-on-exec, as a launching
        // shell or supervisor may, and then becomes tlsplice.
        let proxy = Proxy::start_command(
            Command::new("bash")
                .arg("-c")
                .arg("exec 7</dev/null; exec \"$0\" \"$1\"")
                .arg(binary())
                .arg(&config),
            1,
        );
        let mut pids = vec![proxy.pid()];
        pids.extend(child_pids(proxy.pid()));
        if *mode == "privsep = yes" {
            // The key process, the metrics process and two workers.
            assert!(pids.len() >= 5, "{mode}: processes {pids:?}");
        }
        for pid in pids {
            let fd = format!("/proc/{pid}/fd/7");
            let target = std::fs::read_link(&fd);
            assert!(
                target
                    .as_ref()
                    .map_or(true, |target| target != std::path::Path::new("/dev/null")),
                "{mode}: {fd} -> {target:?}"
            );
        }
    }
}
