//! Privilege separation end to end: the real binary as root with `privsep = yes`,
//! real rustls clients, and checks on the key process, the metrics process and
//! the worker processes through /proc.

mod common;

use std::collections::HashMap;
use std::io::{Read, Seek, SeekFrom, Write};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use common::*;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    Key,
    Metrics,
    Worker,
}

/// Returns a child's role, read from the names of its threads, or `None` while
/// it starts.
fn role(pid: u32) -> Option<Role> {
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).ok()?;
    for task in tasks.flatten() {
        let name = std::fs::read_to_string(task.path().join("comm")).unwrap_or_default();
        if name.starts_with("tlsplice-key") {
            return Some(Role::Key);
        }
        if name.starts_with("tlsplice-metric") {
            return Some(Role::Metrics);
        }
        if name.starts_with("tlsplice-worke") {
            return Some(Role::Worker);
        }
    }
    None
}

/// Waits until the proxy has one key process, one metrics process and
/// `workers` worker processes; returns the worker pids.
fn wait_for_workers(proxy: &Proxy, workers: usize) -> Vec<u32> {
    wait_for_children(proxy, workers).1
}

/// Like [`wait_for_workers`]; returns the metrics process's pid too.
fn wait_for_children(proxy: &Proxy, workers: usize) -> (u32, Vec<u32>) {
    let deadline = Instant::now() + WAIT;
    loop {
        let roles: Vec<(u32, Option<Role>)> = child_pids(proxy.pid())
            .into_iter()
            .map(|pid| (pid, role(pid)))
            .collect();
        let with_role = |wanted: Role| -> Vec<u32> {
            roles
                .iter()
                .filter(|(_, role)| *role == Some(wanted))
                .map(|(pid, _)| *pid)
                .collect()
        };
        let keys = with_role(Role::Key);
        let metrics = with_role(Role::Metrics);
        let found = with_role(Role::Worker);
        if keys.len() == 1 && metrics.len() == 1 && found.len() == workers {
            return (metrics[0], found);
        }
        assert!(
            Instant::now() < deadline,
            "expected 1 key process, 1 metrics process and {workers} workers, found {roles:?}"
        );
        thread::sleep(Duration::from_millis(20));
    }
}

/// Returns /proc/PID/status of `pid` once its seccomp filter is on, or as it is
/// when the deadline passes (so the caller's checks fail). A process names its
/// threads before it installs the filter, which is the last step of its jail.
fn status_once_filtered(pid: u32) -> String {
    let deadline = Instant::now() + WAIT;
    let mut status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    while !status.contains("Seccomp:\t2") && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(20));
        status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    }
    status
}

/// Asserts that process `pid` runs under seccomp with no_new_privs, as a user
/// other than root, chrooted to `root`. `role_name` names it in failures.
fn assert_jailed(pid: u32, root: &std::path::Path, role_name: &str) {
    let status = status_once_filtered(pid);
    let value = |key: &str| {
        status
            .lines()
            .find_map(|line| line.strip_prefix(key))
            .map(str::trim)
            .unwrap_or_default()
            .to_string()
    };
    assert_eq!(value("Seccomp:"), "2", "{role_name} {pid}");
    assert_eq!(value("NoNewPrivs:"), "1", "{role_name} {pid}");
    assert_ne!(
        value("Uid:").split_whitespace().next(),
        Some("0"),
        "{role_name} {pid}"
    );
    let link = std::fs::read_link(format!("/proc/{pid}/root")).unwrap();
    assert_eq!(link, root, "{role_name} {pid}");
}

/// For each needle, whether it occurs in any readable mapping of `pid`.
fn memory_contains(pid: u32, needles: &[Vec<u8>]) -> Vec<bool> {
    let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).unwrap();
    let mut mem = std::fs::File::open(format!("/proc/{pid}/mem")).unwrap();
    let mut found = vec![false; needles.len()];
    let mut scanned = 0usize;
    for line in maps.lines() {
        let mut parts = line.split_whitespace();
        let range = parts.next().unwrap();
        let perms = parts.next().unwrap();
        if !perms.starts_with('r') || line.ends_with("[vvar]") || line.ends_with("[vsyscall]") {
            continue;
        }
        let (start, end) = range.split_once('-').unwrap();
        let start = u64::from_str_radix(start, 16).unwrap();
        let end = u64::from_str_radix(end, 16).unwrap();
        let mut region = vec![0u8; (end - start) as usize];
        if mem.seek(SeekFrom::Start(start)).is_err() || mem.read_exact(&mut region).is_err() {
            continue;
        }
        scanned += region.len();
        for (index, needle) in needles.iter().enumerate() {
            if !found[index] && contains(&region, needle) {
                found[index] = true;
            }
        }
    }
    assert!(scanned > 0, "read no memory of pid {pid}");
    found
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    let first = needle[0];
    haystack
        .iter()
        .enumerate()
        .filter(|(_, byte)| **byte == first)
        .any(|(at, _)| haystack[at..].starts_with(needle))
}

/// The private scalar of an EC key or the private exponent of an RSA key, as
/// printed by `openssl pkey -text`, big-endian without leading zero bytes.
fn private_number(key: &PathBuf) -> Vec<u8> {
    let output = Command::new("openssl")
        .args(["pkey", "-noout", "-text", "-in"])
        .arg(key)
        .output()
        .unwrap();
    let text = String::from_utf8(output.stdout).unwrap();
    let mut lines = text
        .lines()
        .skip_while(|line| !(line.starts_with("priv:") || line.starts_with("privateExponent:")));
    lines
        .next()
        .expect("a private number in the openssl output");
    let hex: String = lines
        .take_while(|line| line.starts_with(' '))
        .flat_map(|line| line.trim().split(':'))
        .filter(|byte| !byte.is_empty())
        .collect::<Vec<_>>()
        .concat();
    let bytes: Vec<u8> = (0..hex.len())
        .step_by(2)
        .map(|at| u8::from_str_radix(&hex[at..at + 2], 16).unwrap())
        .collect();
    let first = bytes.iter().position(|byte| *byte != 0).unwrap();
    bytes[first..].to_vec()
}

fn echo_round_trip(stream: &mut TlsStream, message: &[u8]) {
    use std::io::Write;
    stream.write_all(message).unwrap();
    let mut reply = vec![0u8; message.len()];
    stream.read_exact(&mut reply).unwrap();
    assert_eq!(reply, message);
}

fn try_round_trip(
    addr: std::net::SocketAddr,
    config: &Arc<rustls::ClientConfig>,
) -> std::io::Result<()> {
    use std::io::Write;
    let mut stream = tls_connect(addr, config, "ec.test")?;
    stream.write_all(b"ping")?;
    let mut reply = [0u8; 4];
    stream.read_exact(&mut reply)?;
    Ok(())
}

/// An RSA listener certificate and an ECDSA SNI route, both to an echo backend.
fn two_key_config(rsa: &Cert, ecdsa: &Cert, backend: &Backend, extra: &str) -> String {
    format!(
        "privsep = yes\nthreads = 2\n{extra}\n[web]\naccept = 127.0.0.1:0\nconnect = {}\ncert = {}\nkey = {}\n\
         [ec]\nsni = web:ec.test\nconnect = {}\ncert = {}\nkey = {}\n",
        backend.addr,
        rsa.cert.display(),
        rsa.key.display(),
        backend.addr,
        ecdsa.cert.display(),
        ecdsa.key.display(),
    )
}

#[test]
fn rsa_and_ecdsa_handshakes_across_sni() {
    let dir = TempDir::new("privsep-keys");
    let rsa = make_cert(&dir, "rsa", KeyKind::Rsa2048, &["localhost"]);
    let ecdsa = make_cert(&dir, "ecdsa", KeyKind::EcdsaP256, &["ec.test"]);
    let backend = Backend::echo();
    let proxy = Proxy::start(&two_key_config(&rsa, &ecdsa, &backend, ""));
    wait_for_workers(&proxy, 2);

    let versions: [&[&'static rustls::SupportedProtocolVersion]; 2] =
        [&[&rustls::version::TLS12], &[&rustls::version::TLS13]];
    for version in versions {
        for (cert, name) in [(&rsa, "localhost"), (&ecdsa, "ec.test")] {
            let config = client_config(std::slice::from_ref(&cert.der), version);
            let mut stream = tls_connect(proxy.addr(), &config, name)
                .unwrap_or_else(|err| panic!("{name} {version:?}: {err}"));
            echo_round_trip(&mut stream, name.as_bytes());
        }
    }
    let lines = proxy.wait_for_conn_lines(4);
    assert_eq!(field(&lines[0], "tls"), "TLSv1.2");
    assert_eq!(field(&lines[3], "tls"), "TLSv1.3");
    assert_eq!(field(&lines[3], "sni"), "ec.test");
}

#[test]
fn worker_memory_holds_no_private_key() {
    let dir = TempDir::new("privsep-memory");
    let rsa = make_cert(&dir, "rsa", KeyKind::Rsa2048, &["localhost"]);
    let ecdsa = make_cert(&dir, "ecdsa", KeyKind::EcdsaP256, &["ec.test"]);
    let backend = Backend::echo();
    let proxy = Proxy::start(&two_key_config(&rsa, &ecdsa, &backend, ""));
    let workers = wait_for_workers(&proxy, 2);
    // Handshakes on every worker: SO_REUSEPORT spreads these over both.
    for _ in 0..8 {
        for (cert, name) in [(&rsa, "localhost"), (&ecdsa, "ec.test")] {
            let config = client_config(std::slice::from_ref(&cert.der), rustls::ALL_VERSIONS);
            let mut stream = tls_connect(proxy.addr(), &config, name).unwrap();
            echo_round_trip(&mut stream, b"warm");
        }
    }

    let mut needles = Vec::new();
    let mut labels = Vec::new();
    for (cert, kind) in [(&rsa, "rsa"), (&ecdsa, "ecdsa")] {
        let der = PrivateKeyDer::from_pem_file(&cert.key).unwrap();
        needles.push(der.secret_der().to_vec());
        labels.push(format!("{kind} key DER"));
        let number = private_number(&cert.key);
        let mut reversed = number.clone();
        reversed.reverse();
        needles.push(number);
        labels.push(format!("{kind} private number, big-endian"));
        needles.push(reversed);
        labels.push(format!("{kind} private number, little-endian"));
    }
    // The certificate is public and workers keep it, so finding it shows that the
    // scan reads the worker's heap.
    let end_entity = CertificateDer::from_pem_file(&ecdsa.cert).unwrap();
    needles.push(end_entity.to_vec());
    labels.push("ecdsa certificate".into());

    for pid in workers {
        let found = memory_contains(pid, &needles);
        let certificate = found.len() - 1;
        assert!(
            found[certificate],
            "worker {pid}: certificate not found; the scan is blind"
        );
        for (index, label) in labels.iter().enumerate().take(certificate) {
            assert!(!found[index], "worker {pid} holds the {label}");
        }
    }
}

#[test]
fn worker_is_jailed_and_filtered() {
    let dir = TempDir::new("privsep-jail");
    let root = dir.join("jail");
    std::fs::create_dir(&root).unwrap();
    let rsa = make_cert(&dir, "rsa", KeyKind::Rsa2048, &["localhost"]);
    let ecdsa = make_cert(&dir, "ecdsa", KeyKind::EcdsaP256, &["ec.test"]);
    let backend = Backend::echo();
    let extra = format!("chroot = {}\nsetuid = nobody\n", root.display());
    let probe = "/bin/true";
    let proxy = Proxy::start_with_env(
        &two_key_config(&rsa, &ecdsa, &backend, &extra),
        &[("TLSPLICE_DEBUG_JAIL_PROBE", probe)],
    );

    // Worker 0's first start runs the jail probe: the open fails, and the exec
    // attempt is outside the filter and kills the process.
    proxy.wait_for_line(&["jail probe: cannot open /bin/true"]);
    let killed = proxy.wait_for_line(&["worker 0", "killed by signal 31 (SIGSYS)"]);
    assert!(
        !proxy.output().iter().any(|line| line.contains("exec of")),
        "{killed}"
    );

    let workers = wait_for_workers(&proxy, 2);
    for pid in workers {
        assert_jailed(pid, &root, "worker");
    }

    let config = client_config(std::slice::from_ref(&rsa.der), rustls::ALL_VERSIONS);
    let mut stream = tls_connect(proxy.addr(), &config, "localhost").unwrap();
    echo_round_trip(&mut stream, b"jailed");
}

#[test]
fn killed_worker_is_restarted() {
    let dir = TempDir::new("privsep-restart");
    let rsa = make_cert(&dir, "rsa", KeyKind::Rsa2048, &["localhost"]);
    let ecdsa = make_cert(&dir, "ecdsa", KeyKind::EcdsaP256, &["ec.test"]);
    let backend = Backend::echo();
    let proxy = Proxy::start(&two_key_config(&rsa, &ecdsa, &backend, ""));
    let before = wait_for_workers(&proxy, 2);
    let addr = proxy.addr();
    let config = client_config(std::slice::from_ref(&ecdsa.der), rustls::ALL_VERSIONS);

    // Clients keep connecting while a worker is killed: at most 2000 handshakes,
    // ended once the replacement serves. Connections the killed worker held fail.
    let stop = Arc::new(AtomicBool::new(false));
    let succeeded = Arc::new(AtomicUsize::new(0));
    let clients = {
        let stop = stop.clone();
        let succeeded = succeeded.clone();
        let config = config.clone();
        thread::spawn(move || {
            for _ in 0..2000 {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                if try_round_trip(addr, &config).is_ok() {
                    succeeded.fetch_add(1, Ordering::Relaxed);
                }
            }
        })
    };

    let victim = before[0];
    assert!(Command::new("kill")
        .args(["-KILL", &victim.to_string()])
        .status()
        .unwrap()
        .success());
    let line = proxy.wait_for_line(&[&format!("(pid {victim}) was killed by signal 9 (SIGKILL)")]);
    assert!(line.contains("restarting"), "{line}");
    let at_kill = succeeded.load(Ordering::Relaxed);

    let after = wait_for_replacement(&proxy, &[victim], 2);
    assert!(
        after.contains(&before[1]),
        "the other worker was restarted too"
    );
    stop.store(true, Ordering::Relaxed);
    clients.join().unwrap();
    assert!(
        succeeded.load(Ordering::Relaxed) > at_kill,
        "no connection succeeded between the kill and the restart"
    );

    // Every worker serves again: enough connections that both get some.
    for _ in 0..20 {
        let mut stream = tls_connect(addr, &config, "ec.test").unwrap();
        echo_round_trip(&mut stream, b"after restart");
    }
}

/// Returns the time a log line was written, from its leading timestamp, in
/// microseconds since the epoch.
fn line_micros(line: &str) -> i64 {
    let stamp = line.split_whitespace().next().unwrap_or_default();
    tlsplice::correlate::time::parse_rfc3339(stamp)
        .unwrap_or_else(|| panic!("no timestamp in {line:?}"))
        .micros
}

fn now_micros() -> i64 {
    let since = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap();
    since.as_micros() as i64
}

/// While the key process delays one handshake's signature request, the same
/// worker keeps relaying for a connection that is already open. The round trip
/// on that connection finishes before the key process replies.
#[test]
fn pending_signature_keeps_worker_serving() {
    let dir = TempDir::new("privsep-pending-sign");
    let ecdsa = make_cert(&dir, "ecdsa", KeyKind::EcdsaP256, &["localhost"]);
    let backend = Backend::echo();
    let config = one_worker_config(&ecdsa, &backend);
    let proxy = Proxy::start_with_env(&config, &[("TLSPLICE_DEBUG_SIGN_DELAY_MS", "1500")]);
    wait_for_workers(&proxy, 1);

    // A fresh client configuration has no ticket to resume with, so each of the
    // two handshakes requests a signature from the key process.
    let open_config = client_config(std::slice::from_ref(&ecdsa.der), rustls::ALL_VERSIONS);
    let mut open = tls_connect(proxy.addr(), &open_config, "localhost").unwrap();
    echo_round_trip(&mut open, b"before");
    proxy.wait_for_line(&["answering worker 0 (test hook)"]);
    let hook_lines_before = proxy
        .output()
        .iter()
        .filter(|line| line.contains("(test hook)"))
        .count();

    let addr = proxy.addr();
    let second_config = client_config(std::slice::from_ref(&ecdsa.der), rustls::ALL_VERSIONS);
    let second = thread::spawn(move || {
        let mut stream = tls_connect(addr, &second_config, "localhost").unwrap();
        echo_round_trip(&mut stream, b"second");
    });
    // Wait until the second handshake's request is held, then use the open
    // connection on the same worker.
    let deadline = Instant::now() + WAIT;
    loop {
        let delayed = proxy
            .output()
            .iter()
            .filter(|line| line.contains("holding a request of worker 0"))
            .count();
        if delayed == 2 {
            break;
        }
        assert!(Instant::now() < deadline, "the second request was not held");
        thread::sleep(Duration::from_millis(10));
    }
    echo_round_trip(&mut open, b"during");
    let relayed_at = now_micros();
    second.join().unwrap();

    let answers: Vec<String> = proxy
        .output()
        .into_iter()
        .filter(|line| line.contains("answering worker 0 (test hook)"))
        .collect();
    assert_eq!(hook_lines_before, 2, "{answers:?}");
    assert_eq!(answers.len(), 2, "{answers:?}");
    let answered_at = line_micros(&answers[1]);
    assert!(
        relayed_at < answered_at,
        "the open connection's round trip finished at {relayed_at}, after the key \
         process answered at {answered_at}: the worker waited for the signature"
    );
}

#[test]
fn queued_signatures_share_packets() {
    let dir = TempDir::new("privsep-sign-batch");
    let ecdsa = make_cert(&dir, "ecdsa", KeyKind::EcdsaP256, &["localhost"]);
    let backend = Backend::echo();
    let config = format!("debug = debug\n{}", one_worker_config(&ecdsa, &backend));
    let proxy = Proxy::start_with_env(&config, &[("TLSPLICE_DEBUG_SIGN_DELAY_MS", "300")]);
    wait_for_workers(&proxy, 1);

    // While the key process delays its reply to the first request, the other
    // handshakes' requests queue behind it, so some of the replies leave together.
    let clients: Vec<_> = (0..4)
        .map(|index| {
            let addr = proxy.addr();
            let config = client_config(std::slice::from_ref(&ecdsa.der), rustls::ALL_VERSIONS);
            thread::spawn(move || {
                let mut stream = tls_connect(addr, &config, "localhost").unwrap();
                echo_round_trip(&mut stream, format!("client {index}").as_bytes());
            })
        })
        .collect();
    for client in clients {
        client.join().unwrap();
    }
    let output = proxy.output();
    let batches: Vec<&String> = output
        .iter()
        .filter(|line| line.contains("sign replies in one packet"))
        .collect();
    assert!(
        !batches.is_empty(),
        "every reply came alone: {:?}",
        output
            .iter()
            .filter(|line| line.contains("test hook"))
            .collect::<Vec<_>>()
    );
}

// ---- metrics with privilege separation ----

/// Bytes each metrics test connection sends; the echo backend returns them.
const ECHOED: usize = 100;

/// Polls /stats.json until `accepted` connections are counted and none is
/// active; returns the document.
fn wait_for_counts(stats: SocketAddr, accepted: u64) -> serde_json::Value {
    let deadline = Instant::now() + WAIT;
    loop {
        let json: serde_json::Value =
            serde_json::from_str(&stats_get(stats, "/stats.json")).unwrap();
        let counters = &json["total"]["counters"];
        if counters["accepted"] == accepted && counters["active"] == 0 {
            return json;
        }
        assert!(
            Instant::now() < deadline,
            "expected {accepted} accepted and closed connections: {json}"
        );
        thread::sleep(Duration::from_millis(50));
    }
}

/// Returns the worker process among `workers` that has the accepted socket
/// of the client connection from `client` to `server`, found through
/// /proc/net/tcp and the workers' descriptors.
fn worker_of(client: SocketAddr, server: SocketAddr, workers: &[u32]) -> Option<u32> {
    let port = |field: &str| u16::from_str_radix(field.rsplit(':').next()?, 16).ok();
    let table = std::fs::read_to_string("/proc/net/tcp").unwrap();
    let inode = table.lines().skip(1).find_map(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let matches = port(fields[1]) == Some(server.port())
            && port(fields[2]) == Some(client.port())
            && fields[9] != "0";
        matches.then(|| fields[9].to_string())
    })?;
    let target = format!("socket:[{inode}]");
    workers.iter().copied().find(|pid| {
        std::fs::read_dir(format!("/proc/{pid}/fd"))
            .map(|entries| {
                entries.flatten().any(|entry| {
                    std::fs::read_link(entry.path())
                        .is_ok_and(|link| link.to_str() == Some(target.as_str()))
                })
            })
            .unwrap_or(false)
    })
}

/// Makes echoed TLS connections until each worker served at least `minimum`,
/// at most 200. Returns the number each worker served.
fn connect_until_each_worker_served(
    proxy: &Proxy,
    cert: &Cert,
    workers: &[u32],
    minimum: usize,
) -> HashMap<u32, usize> {
    let config = client_config(std::slice::from_ref(&cert.der), rustls::ALL_VERSIONS);
    let mut served: HashMap<u32, usize> = workers.iter().map(|pid| (*pid, 0)).collect();
    for _ in 0..200 {
        if served.values().all(|count| *count >= minimum) {
            break;
        }
        let mut stream = tls_connect(proxy.addr(), &config, "localhost").unwrap();
        echo_round_trip(&mut stream, &[b'm'; ECHOED]);
        let client = stream.sock.local_addr().unwrap();
        let worker = worker_of(client, proxy.addr(), workers)
            .unwrap_or_else(|| panic!("no worker has the connection from {client}"));
        *served.get_mut(&worker).unwrap() += 1;
        stream.conn.send_close_notify();
        let _ = stream.flush();
    }
    assert!(
        served.values().all(|count| *count >= minimum),
        "SO_REUSEPORT gave every connection to one worker: {served:?}"
    );
    served
}

/// Returns the count of the histogram tagged `tag`, summed over every interval
/// of an HdrHistogram interval log.
fn logged_count(log: &[u8], tag: &str) -> u64 {
    use base64::Engine;
    use hdrhistogram::serialization::interval_log::{IntervalLogIterator, LogEntry};
    use hdrhistogram::serialization::Deserializer;

    let mut count = 0;
    for entry in IntervalLogIterator::new(log) {
        let Ok(LogEntry::Interval(interval)) = entry else {
            continue;
        };
        if interval.tag().map(|t| t.as_str()) != Some(tag) {
            continue;
        }
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(interval.encoded_histogram())
            .unwrap();
        let histogram: hdrhistogram::Histogram<u64> = Deserializer::new()
            .deserialize(&mut bytes.as_slice())
            .unwrap();
        count += histogram.len();
    }
    count
}

/// One service on one privilege-separated worker, to an echo backend.
fn one_worker_config(cert: &Cert, backend: &Backend) -> String {
    format!(
        "privsep = yes\nthreads = 1\n[web]\naccept = 127.0.0.1:0\nconnect = {}\ncert = {}\nkey = {}\n",
        backend.addr,
        cert.cert.display(),
        cert.key.display(),
    )
}

fn metrics_config(cert: &Cert, backend: &Backend, extra: &str) -> String {
    format!(
        "privsep = yes\nthreads = 2\nstats = 127.0.0.1:0\n{extra}\n[web]\naccept = 127.0.0.1:0\nconnect = {}\ncert = {}\nkey = {}\n",
        backend.addr,
        cert.cert.display(),
        cert.key.display(),
    )
}

#[test]
fn metrics_process_merges_both_workers() {
    let dir = TempDir::new("privsep-metrics");
    let root = dir.join("jail");
    std::fs::create_dir(&root).unwrap();
    let cert = make_cert(&dir, "ecdsa", KeyKind::EcdsaP256, &["localhost"]);
    let backend = Backend::echo();
    let histogram_log = dir.join("latency.hlog");
    let extra = format!(
        "chroot = {}\nsetuid = nobody\nhistogram_log = {}\nhistogram_log_interval = 1\n",
        root.display(),
        histogram_log.display()
    );
    let proxy = Proxy::start_with_env(
        &metrics_config(&cert, &backend, &extra),
        &[("TLSPLICE_DEBUG_MALFORMED_METRICS", "garbage")],
    );
    let stats = proxy.stats_address();
    let (metrics, workers) = wait_for_children(&proxy, 2);
    assert_jailed(metrics, &root, "metrics process");

    // Worker 0's first start sends one delta that does not decode.
    proxy.wait_for_line(&["dropped a malformed metrics delta from worker 0"]);

    let served = connect_until_each_worker_served(&proxy, &cert, &workers, 3);
    let total: usize = served.values().sum();
    proxy.wait_for_conn_lines(total);

    let json = wait_for_counts(stats, total as u64);
    let counters = &json["total"]["counters"];
    assert_eq!(counters["accepted"], total as u64);
    let closed: u64 = counters["closed"]
        .as_object()
        .unwrap()
        .values()
        .map(|count| count.as_u64().unwrap())
        .sum();
    assert_eq!(closed, total as u64);
    let histograms = &json["total"]["histograms"];
    assert_eq!(histograms["handshake_duration"]["count"], total as u64);
    assert_eq!(
        histograms["bytes_client_to_backend"]["sum"],
        (total * ECHOED) as u64
    );
    assert_eq!(
        histograms["bytes_backend_to_client"]["sum"],
        (total * ECHOED) as u64
    );
    assert_eq!(json["services"][0]["counters"]["accepted"], total as u64);

    let exposition = stats_get(stats, "/metrics");
    let accepted_line = format!("tlsplice_connections_accepted_total{{service=\"web\"}} {total}");
    assert!(
        exposition.lines().any(|line| line == accepted_line),
        "{exposition}"
    );

    // The histogram log gets an interval every second; wait until the intervals
    // written so far hold every connection.
    let deadline = Instant::now() + WAIT;
    loop {
        let log = std::fs::read(&histogram_log).unwrap();
        let logged = logged_count(&log, "connection_duration");
        if logged == total as u64 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the histogram log holds {logged} of {total} connections"
        );
        thread::sleep(Duration::from_millis(100));
    }

    proxy.signal(libc::SIGUSR1);
    proxy.wait_for_line(&[&format!("stats: all services: accepted {total},")]);

    // The malformed delta did not end the metrics process.
    assert_eq!(wait_for_children(&proxy, 2).0, metrics);
    assert!(
        !proxy
            .output()
            .iter()
            .any(|line| line.contains("the metrics process (pid")),
        "{:#?}",
        proxy.output()
    );
}

#[test]
fn metrics_survive_worker_kill() {
    let dir = TempDir::new("privsep-metrics-restart");
    let cert = make_cert(&dir, "ecdsa", KeyKind::EcdsaP256, &["localhost"]);
    let backend = Backend::echo();
    let mut proxy = Proxy::start(&metrics_config(&cert, &backend, ""));
    let stats = proxy.stats_address();
    let workers = wait_for_workers(&proxy, 2);

    let served = connect_until_each_worker_served(&proxy, &cert, &workers, 2);
    let before: usize = served.values().sum();
    proxy.wait_for_conn_lines(before);
    wait_for_counts(stats, before as u64);

    let victim = workers[0];
    let after = kill_workers(&proxy, &[victim], 2);

    // The victim's connections are still counted.
    let json: serde_json::Value = serde_json::from_str(&stats_get(stats, "/stats.json")).unwrap();
    assert_eq!(
        json["total"]["counters"]["accepted"], before as u64,
        "{json}"
    );

    let served = connect_until_each_worker_served(&proxy, &cert, &after, 1);
    let total = before + served.values().sum::<usize>();
    wait_for_counts(stats, total as u64);

    // The metrics process logs the shutdown summary after the workers exit.
    proxy.signal(libc::SIGTERM);
    assert!(proxy.wait_exit().success());
    let summary = format!("stats: all services: accepted {total},");
    let output = proxy.output();
    let summary_at = output.iter().position(|line| line.contains(&summary));
    let stopped_at = output
        .iter()
        .position(|line| line.ends_with(" notice stopped"));
    assert!(
        summary_at.is_some() && summary_at < stopped_at,
        "no shutdown summary before the last line: {output:#?}"
    );
}

/// Polls /stats.json until the total counters satisfy `done`; returns them.
/// `expected` describes the condition in the failure message.
fn wait_for_counters(
    stats: SocketAddr,
    expected: &str,
    done: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let deadline = Instant::now() + WAIT;
    loop {
        let json: serde_json::Value =
            serde_json::from_str(&stats_get(stats, "/stats.json")).unwrap();
        let counters = &json["total"]["counters"];
        if done(counters) {
            return counters.clone();
        }
        assert!(Instant::now() < deadline, "expected {expected}: {json}");
        thread::sleep(Duration::from_millis(50));
    }
}

/// Sends SIGKILL to each of `pids` and waits until the parent has replaced them;
/// returns the pids of the `workers` workers then running.
fn kill_workers(proxy: &Proxy, pids: &[u32], workers: usize) -> Vec<u32> {
    for pid in pids {
        assert!(Command::new("kill")
            .args(["-KILL", &pid.to_string()])
            .status()
            .unwrap()
            .success());
    }
    for pid in pids {
        proxy.wait_for_line(&[&format!("(pid {pid}) was killed by signal 9 (SIGKILL)")]);
    }
    wait_for_replacement(proxy, pids, workers)
}

/// Waits until `workers` workers run and none of them is one of `killed`;
/// returns their pids.
fn wait_for_replacement(proxy: &Proxy, killed: &[u32], workers: usize) -> Vec<u32> {
    let deadline = Instant::now() + WAIT;
    loop {
        let after = wait_for_workers(proxy, workers);
        if !after.iter().any(|pid| killed.contains(pid)) {
            return after;
        }
        assert!(
            Instant::now() < deadline,
            "workers {killed:?} were not replaced"
        );
        thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn killed_workers_connections_count_closed() {
    let dir = TempDir::new("privsep-metrics-open");
    let cert = make_cert(&dir, "ecdsa", KeyKind::EcdsaP256, &["localhost"]);
    let backend = Backend::echo();
    let mut proxy = Proxy::start(&metrics_config(&cert, &backend, ""));
    let stats = proxy.stats_address();
    let workers = wait_for_workers(&proxy, 2);

    let config = client_config(std::slice::from_ref(&cert.der), rustls::ALL_VERSIONS);
    let mut open = Vec::new();
    for _ in 0..4 {
        let mut stream = tls_connect(proxy.addr(), &config, "localhost").unwrap();
        echo_round_trip(&mut stream, &[b'o'; ECHOED]);
        open.push(stream);
    }
    wait_for_counters(stats, "4 accepted and 4 active", |counters| {
        counters["accepted"] == 4 && counters["active"] == 4
    });

    kill_workers(&proxy, &workers, workers.len());
    let counters = wait_for_counters(stats, "no active connection", |counters| {
        counters["active"] == 0
    });
    assert_eq!(counters["accepted"], 4, "{counters}");
    assert_eq!(counters["closed"]["internal-error"], 4, "{counters}");
    let exposition = stats_get(stats, "/metrics");
    assert!(
        exposition
            .lines()
            .any(|line| line == "tlsplice_connections_active{service=\"web\"} 0"),
        "{exposition}"
    );
    drop(open);

    proxy.signal(libc::SIGTERM);
    assert!(proxy.wait_exit().success());
    let output = proxy.output();
    assert!(
        output
            .iter()
            .any(|line| line.contains("stats: all services: accepted 4, active 0,")),
        "{output:#?}"
    );
}

/// Waits until the interval log at `path` contains an interval line.
fn wait_for_interval(path: &std::path::Path) {
    wait_for_text(path, "Tag=");
}

#[test]
fn histogram_log_survives_copytruncate() {
    let dir = TempDir::new("privsep-hlog-truncate");
    let cert = make_cert(&dir, "ecdsa", KeyKind::EcdsaP256, &["localhost"]);
    let backend = Backend::echo();
    let histogram_log = dir.join("latency.hlog");
    let extra = format!(
        "histogram_log = {}\nhistogram_log_interval = 1\n",
        histogram_log.display()
    );
    let proxy = Proxy::start(&metrics_config(&cert, &backend, &extra));
    wait_for_workers(&proxy, 2);
    wait_for_interval(&histogram_log);

    // What logrotate's copytruncate does after copying the file.
    std::fs::OpenOptions::new()
        .write(true)
        .open(&histogram_log)
        .unwrap()
        .set_len(0)
        .unwrap();
    wait_for_interval(&histogram_log);

    let log = std::fs::read(&histogram_log).unwrap();
    assert_ne!(log[0], 0, "the log starts with a NUL byte");
    assert!(!log.contains(&0), "the log contains NUL bytes");
}

/// Returns the descriptors that process `pid` has open, as their link targets.
fn open_files(pid: u32) -> Vec<String> {
    let mut files: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .flatten()
        .filter_map(|entry| std::fs::read_link(entry.path()).ok())
        .map(|target| target.display().to_string())
        .collect();
    files.sort();
    files
}

#[test]
fn killed_metrics_process_is_restarted() {
    let dir = TempDir::new("privsep-metrics-killed");
    let cert = make_cert(&dir, "ecdsa", KeyKind::EcdsaP256, &["localhost"]);
    let backend = Backend::echo();
    let mut proxy = Proxy::start(&metrics_config(&cert, &backend, ""));
    let stats = proxy.stats_address();
    let (metrics, workers) = wait_for_children(&proxy, 2);
    let files_before = open_files(metrics);

    let served = connect_until_each_worker_served(&proxy, &cert, &workers, 1);
    let before: usize = served.values().sum();
    wait_for_counts(stats, before as u64);

    assert!(Command::new("kill")
        .args(["-KILL", &metrics.to_string()])
        .status()
        .unwrap()
        .success());
    proxy.wait_for_line(&[&format!(
        "the metrics process (pid {metrics}) was killed by signal 9 (SIGKILL)"
    )]);
    proxy.wait_for_line(&["metrics process restarted as pid "]);
    let (restarted, after) = wait_for_children(&proxy, 2);
    assert_ne!(restarted, metrics);
    assert_eq!(after, workers);
    // As many descriptors as the first, so the new process did not inherit a
    // service listener or a socket to the key process.
    assert_eq!(open_files(restarted).len(), files_before.len());

    // Totals start from zero in the new metrics process.
    let served = connect_until_each_worker_served(&proxy, &cert, &workers, 1);
    let new_connections: usize = served.values().sum();
    wait_for_counts(stats, new_connections as u64);

    proxy.signal(libc::SIGUSR1);
    proxy.wait_for_line(&[&format!("stats: all services: accepted {new_connections},")]);
    proxy.signal(libc::SIGTERM);
    assert!(proxy.wait_exit().success());
}

/// Waits until the file at `path` contains `needle`; returns its text.
fn wait_for_text(path: &std::path::Path, needle: &str) -> String {
    let deadline = Instant::now() + WAIT;
    loop {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        if text.contains(needle) {
            return text;
        }
        assert!(
            Instant::now() < deadline,
            "{} does not contain {needle:?}: {text}",
            path.display()
        );
        thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn sighup_reopens_helper_process_files() {
    let dir = TempDir::new("privsep-metrics-rotate");
    let root = dir.join("jail");
    std::fs::create_dir(&root).unwrap();
    let cert = make_cert(&dir, "ecdsa", KeyKind::EcdsaP256, &["localhost"]);
    let backend = Backend::echo();
    let log = dir.join("tlsplice.log");
    let histogram_log = dir.join("latency.hlog");
    let extra = format!(
        "chroot = {}\nsetuid = nobody\noutput = {}\nhistogram_log = {}\nhistogram_log_interval = 1\n",
        root.display(),
        log.display(),
        histogram_log.display()
    );
    let mut proxy = Proxy::start(&metrics_config(&cert, &backend, &extra));
    wait_for_workers(&proxy, 2);
    wait_for_interval(&histogram_log);

    // What logrotate does without copytruncate.
    let rotated_log = dir.join("tlsplice.log.1");
    let rotated_histogram_log = dir.join("latency.hlog.1");
    std::fs::rename(&log, &rotated_log).unwrap();
    std::fs::rename(&histogram_log, &rotated_histogram_log).unwrap();
    proxy.signal(libc::SIGHUP);
    proxy.wait_for_line(&["metrics process: log file reopened"]);
    proxy.wait_for_line(&["metrics process: histogram log", "reopened"]);
    proxy.wait_for_line(&["key process: log file reopened"]);

    let header = "#[StartTime: ";
    let new_histogram_log = wait_for_text(&histogram_log, header);
    assert!(
        new_histogram_log.starts_with("#"),
        "no header at the start: {new_histogram_log}"
    );
    wait_for_interval(&histogram_log);

    let config = client_config(std::slice::from_ref(&cert.der), rustls::ALL_VERSIONS);
    let mut stream = tls_connect(proxy.addr(), &config, "localhost").unwrap();
    echo_round_trip(&mut stream, &[b'r'; ECHOED]);
    drop(stream);
    proxy.wait_for_conn_lines(1);

    proxy.signal(libc::SIGUSR1);
    let summary = "stats: all services: accepted ";
    proxy.wait_for_line(&[summary]);
    wait_for_text(&log, summary);

    proxy.signal(libc::SIGTERM);
    assert!(proxy.wait_exit().success());
    let new_log = std::fs::read_to_string(&log).unwrap();
    assert!(
        new_log.contains("metrics process: log file reopened"),
        "{new_log}"
    );
    assert!(
        new_log.contains("key process: log file reopened"),
        "{new_log}"
    );
    let old_log = std::fs::read_to_string(&rotated_log).unwrap();
    assert!(!old_log.contains(summary), "{old_log}");
}

/// Reads the scheduling policy of thread `tid` of `pid`: field 41 of its stat file.
fn sched_policy(pid: u32, tid: &str) -> u32 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/stat")).unwrap();
    // The command name may contain spaces, so count from the ')' that ends it.
    // The field after that is field 3.
    let after_name = &stat[stat.rfind(')').unwrap() + 2..];
    after_name.split(' ').nth(41 - 3).unwrap().parse().unwrap()
}

/// The key threads run under SCHED_BATCH, so that a sign request does not
/// preempt the worker that sent it (see perf/privsep.md).
#[test]
fn key_threads_run_under_sched_batch() {
    let dir = TempDir::new("privsep-key-policy");
    let cert = make_cert(&dir, "ecdsa", KeyKind::EcdsaP256, &["localhost"]);
    let backend = Backend::echo();
    let proxy = Proxy::start(&metrics_config(&cert, &backend, ""));
    let workers = wait_for_workers(&proxy, 2);
    let key = child_pids(proxy.pid())
        .into_iter()
        .find(|pid| role(*pid) == Some(Role::Key))
        .unwrap();
    // The threads set their policy before the filter goes on.
    status_once_filtered(key);

    // The policies of the threads of `pid` whose names start with `prefix`.
    let policies = |pid: u32, prefix: &str| -> Vec<u32> {
        let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).unwrap();
        tasks
            .flatten()
            .filter(|task| {
                let name = std::fs::read_to_string(task.path().join("comm")).unwrap();
                name.starts_with(prefix)
            })
            .map(|task| sched_policy(pid, &task.file_name().into_string().unwrap()))
            .collect()
    };
    let batch = libc::SCHED_BATCH as u32;
    assert_eq!(policies(key, "tlsplice-key"), [batch, batch]);
    for pid in workers {
        assert_eq!(policies(pid, "tlsplice-worke"), [libc::SCHED_OTHER as u32]);
    }
}

#[test]
fn killed_key_process_stops_tlsplice() {
    let dir = TempDir::new("privsep-key-killed");
    let cert = make_cert(&dir, "ecdsa", KeyKind::EcdsaP256, &["localhost"]);
    let backend = Backend::echo();
    let mut proxy = Proxy::start(&metrics_config(&cert, &backend, ""));
    wait_for_workers(&proxy, 2);
    let key = child_pids(proxy.pid())
        .into_iter()
        .find(|pid| role(*pid) == Some(Role::Key))
        .unwrap();

    assert!(Command::new("kill")
        .args(["-KILL", &key.to_string()])
        .status()
        .unwrap()
        .success());
    assert!(!proxy.wait_exit().success());

    let output = proxy.output();
    let position = |needle: &str| output.iter().position(|line| line.contains(needle));
    let killed_at = position(&format!(
        "the key process (pid {key}) was killed by signal 9"
    ));
    let stopped_at = output
        .iter()
        .position(|line| line.ends_with(" notice stopped"));
    assert!(killed_at.is_some(), "{output:#?}");
    assert!(stopped_at.is_some(), "{output:#?}");
    assert!(killed_at < stopped_at, "{output:#?}");
    // The log goes to stderr here, so the error is not logged as well: main
    // prints it once, last.
    let errors: Vec<&String> = output
        .iter()
        .filter(|line| line.contains("the key process was killed by signal 9 (SIGKILL)"))
        .collect();
    assert_eq!(errors.len(), 1, "{output:#?}");
    assert!(errors[0].starts_with("tlsplice: "), "{output:#?}");
    assert!(
        !output.iter().any(|line| line.contains("a worker failed")),
        "{output:#?}"
    );
}

/// A signature that does not come back within the worker's deadline fails that
/// handshake, and the worker process stays up.
#[test]
fn late_signature_fails_handshake() {
    let dir = TempDir::new("privsep-late-sign");
    let ecdsa = make_cert(&dir, "ecdsa", KeyKind::EcdsaP256, &["localhost"]);
    let backend = Backend::echo();
    let config = format!(
        "stats = 127.0.0.1:0\n{}",
        one_worker_config(&ecdsa, &backend)
    );
    // Longer than the 2 second deadline of a signature request.
    let proxy = Proxy::start_with_env(&config, &[("TLSPLICE_DEBUG_SIGN_DELAY_MS", "2600")]);
    let workers = wait_for_workers(&proxy, 1);
    let stats = proxy.stats_address();

    let client = client_config(std::slice::from_ref(&ecdsa.der), rustls::ALL_VERSIONS);
    let result = tls_connect(proxy.addr(), &client, "localhost");
    assert!(
        result.is_err(),
        "the handshake succeeded without a signature"
    );
    let lines = proxy.wait_for_conn_lines(1);
    assert_eq!(field(&lines[0], "reason"), "handshake-failed");
    let warning = proxy.wait_for_line(&["the key process did not sign"]);
    assert!(warning.contains(" warning "), "{warning}");
    let json = wait_for_counts(stats, 1);
    let failures = &json["total"]["counters"]["handshake_failures"];
    assert_eq!(failures["key-process"], 1, "{json}");
    assert_eq!(failures["other"], 0, "{json}");

    // The key process's late reply arrives after the deadline and is dropped.
    proxy.wait_for_line(&["answering worker 0 (test hook)"]);
    assert_eq!(wait_for_workers(&proxy, 1), workers);
    assert!(
        !proxy
            .output()
            .iter()
            .any(|line| line.contains("restarting")),
        "{:?}",
        proxy.output()
    );
}

#[test]
fn aborted_handshakes_count_one_failure_each() {
    let dir = TempDir::new("privsep-aborted-handshakes");
    let served = make_cert(&dir, "served", KeyKind::EcdsaP256, &["localhost"]);
    let other = make_cert(&dir, "other", KeyKind::EcdsaP256, &["localhost"]);
    let backend = Backend::echo();
    let config = format!(
        "stats = 127.0.0.1:0\n{}",
        one_worker_config(&served, &backend)
    );
    let proxy = Proxy::start(&config);
    wait_for_workers(&proxy, 1);
    let stats = proxy.stats_address();

    // Clients that trust another certificate send an alert and hang up, and the
    // load generator stops with connections in flight, so some clients close
    // while the worker still sends its handshake flight.
    let output = Command::new(env!("CARGO_BIN_EXE_tlsplice-load"))
        .args(["handshake", "--connect", &proxy.addr().to_string()])
        .args([
            "--duration",
            "3",
            "--requests",
            "300",
            "--concurrency",
            "32",
        ])
        .arg("--cafile")
        .arg(&other.cert)
        .output()
        .unwrap();
    let report = String::from_utf8_lossy(&output.stdout);
    assert!(report.contains("\"handshakes\":0,"), "{report}");

    let deadline = Instant::now() + WAIT;
    let counters = loop {
        let json: serde_json::Value =
            serde_json::from_str(&stats_get(stats, "/stats.json")).unwrap();
        let counters = json["total"]["counters"].clone();
        let accepted = counters["accepted"].as_u64().unwrap();
        let closed: u64 = counters["closed"]
            .as_object()
            .unwrap()
            .values()
            .map(|count| count.as_u64().unwrap())
            .sum();
        if accepted > 0 && closed == accepted && counters["active"] == 0 {
            break counters;
        }
        assert!(Instant::now() < deadline, "connections still open: {json}");
        thread::sleep(Duration::from_millis(50));
    };
    let failures: u64 = counters["handshake_failures"]
        .as_object()
        .unwrap()
        .values()
        .map(|count| count.as_u64().unwrap())
        .sum();
    let closed = &counters["closed"];
    let failed_closes = ["handshake-failed", "handshake-eof", "handshake-timeout"]
        .iter()
        .map(|reason| closed[*reason].as_u64().unwrap())
        .sum::<u64>();
    assert_eq!(failures, failed_closes, "{counters}");
    assert_eq!(
        failures,
        counters["accepted"].as_u64().unwrap(),
        "{counters}"
    );
}

/// Returns a status line's hexadecimal capability set, such as `CapEff:`.
fn capability_set(pid: u32, key: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let value = status
        .lines()
        .find_map(|line| line.strip_prefix(key))
        .unwrap_or_else(|| panic!("no {key} in the status of {pid}"));
    u64::from_str_radix(value.trim(), 16).unwrap()
}

/// Workers that stay root (no `setuid`) keep no capability, except
/// CAP_DAC_OVERRIDE while a service connects to a Unix socket backend.
#[test]
fn root_workers_drop_capabilities() {
    const DAC_OVERRIDE: u64 = 1 << 1;
    let dir = TempDir::new("privsep-caps");
    let cert = make_cert(&dir, "ecdsa", KeyKind::EcdsaP256, &["localhost"]);
    let backend = Backend::echo();
    let socket = dir.join("backend.sock");
    let unix_backend = std::os::unix::net::UnixListener::bind(&socket).unwrap();

    let tcp_only = one_worker_config(&cert, &backend);
    let with_unix = format!(
        "{tcp_only}[local]\naccept = 127.0.0.1:0\nconnect = {}\ncert = {}\nkey = {}\n",
        socket.display(),
        cert.cert.display(),
        cert.key.display(),
    );
    for (config, expected) in [(tcp_only, 0), (with_unix, DAC_OVERRIDE)] {
        let proxy = Proxy::start(&config);
        let workers = wait_for_workers(&proxy, 1);
        let worker = workers[0];
        assert!(
            status_once_filtered(worker).contains("Seccomp:\t2"),
            "worker {worker} never jailed"
        );
        assert_eq!(capability_set(worker, "CapEff:"), expected, "{config}");
        assert_eq!(capability_set(worker, "CapPrm:"), expected, "{config}");
        // The parent still binds and restarts as root.
        assert_ne!(capability_set(proxy.pid(), "CapEff:"), 0);

        let client = client_config(std::slice::from_ref(&cert.der), rustls::ALL_VERSIONS);
        let mut stream = tls_connect(proxy.addr(), &client, "localhost").unwrap();
        echo_round_trip(&mut stream, b"no capabilities");
    }
    drop(unix_backend);
}
