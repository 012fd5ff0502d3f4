//! Runs `tlsplice-load` client modes against its own TLS sink over loopback.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};

use serde_json::Value;

const LOAD: &str = env!("CARGO_BIN_EXE_tlsplice-load");

/// A TLS sink on an ephemeral loopback port, stopped on drop.
struct Sink {
    child: Child,
    addr: String,
    dir: PathBuf,
}

impl Sink {
    fn start(name: &str) -> Sink {
        let certified = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
        Sink::serve(
            name,
            &certified.cert.pem(),
            &certified.signing_key.serialize_pem(),
        )
    }

    /// Starts a sink whose certificate is a self-signed CA certificate, as
    /// `openssl req -x509` makes by default.
    fn start_with_ca_certificate(name: &str) -> Sink {
        let mut params = rcgen::CertificateParams::new(vec!["localhost".to_string()]).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        Sink::serve(name, &cert.pem(), &key.serialize_pem())
    }

    fn serve(name: &str, cert_pem: &str, key_pem: &str) -> Sink {
        let dir = std::env::temp_dir().join(format!("tlsplice-load-{}-{name}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("cert.pem"), cert_pem).unwrap();
        std::fs::write(dir.join("key.pem"), key_pem).unwrap();

        let mut child = Command::new(LOAD)
            .args(["sink", "--listen", "127.0.0.1:0", "--duration", "60"])
            .arg("--cert")
            .arg(dir.join("cert.pem"))
            .arg("--key")
            .arg(dir.join("key.pem"))
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();

        // The sink prints its bound address once it listens.
        let mut stderr = BufReader::new(child.stderr.take().unwrap());
        let mut line = String::new();
        stderr.read_line(&mut line).unwrap();
        let addr = line
            .trim()
            .rsplit_once("listening on ")
            .unwrap_or_else(|| panic!("unexpected sink output: {line:?}"))
            .1
            .to_string();
        Sink { child, addr, dir }
    }

    fn cert(&self) -> PathBuf {
        self.dir.join("cert.pem")
    }
}

impl Drop for Sink {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Runs the load generator and returns its exit code and JSON report.
fn run_load(args: &[&str]) -> (i32, Value) {
    let output = Command::new(LOAD).args(args).output().unwrap();
    let stdout = String::from_utf8(output.stdout).unwrap();
    let report = serde_json::from_str(&stdout).unwrap_or_else(|e| {
        panic!(
            "no JSON report ({e}); stdout: {stdout:?}, stderr: {}",
            String::from_utf8_lossy(&output.stderr)
        )
    });
    (output.status.code().unwrap(), report)
}

fn count(report: &Value, field: &str) -> u64 {
    report[field]
        .as_u64()
        .unwrap_or_else(|| panic!("missing {field} in {report}"))
}

#[test]
fn handshake_mode_counts_requests() {
    let sink = Sink::start("handshake");
    let (code, report) = run_load(&[
        "handshake",
        "--connect",
        &sink.addr,
        "--insecure",
        "--requests",
        "40",
        "--concurrency",
        "4",
        "--duration",
        "60",
    ]);
    assert_eq!(code, 0, "{report}");
    assert_eq!(report["mode"], "handshake");
    assert_eq!(count(&report, "handshakes_full"), 40);
    assert_eq!(count(&report, "handshakes_resumed"), 0);
    assert_eq!(count(&report, "requests"), 40);
    assert_eq!(count(&report, "errors"), 0);
    assert_eq!(count(&report["handshake_latency_us"], "count"), 40);
}

#[test]
fn handshake_resume_uses_tickets() {
    let sink = Sink::start("resume");
    let cert = sink.cert();
    let (code, report) = run_load(&[
        "handshake",
        "--connect",
        &sink.addr,
        "--cafile",
        cert.to_str().unwrap(),
        "--resume",
        "--requests",
        "30",
        "--concurrency",
        "1",
        "--duration",
        "60",
    ]);
    assert_eq!(code, 0, "{report}");
    assert_eq!(count(&report, "handshakes"), 30);
    // With one connection at a time, only the first handshake lacks a ticket.
    assert_eq!(count(&report, "handshakes_full"), 1);
    assert_eq!(count(&report, "handshakes_resumed"), 29);
}

#[test]
fn keepalive_mode_reuses_connections() {
    let sink = Sink::start("keepalive");
    let (code, report) = run_load(&[
        "keepalive",
        "--connect",
        &sink.addr,
        "--insecure",
        "--requests",
        "500",
        "--connections",
        "3",
        "--duration",
        "60",
    ]);
    assert_eq!(code, 0, "{report}");
    assert_eq!(count(&report, "requests"), 500);
    assert_eq!(count(&report, "connections_opened"), 3);
    assert_eq!(count(&report, "bytes_received"), 500 * 3);
}

#[test]
fn bulk_download_counts_bytes() {
    let sink = Sink::start("download");
    let (code, report) = run_load(&[
        "bulk",
        "--connect",
        &sink.addr,
        "--insecure",
        "--path",
        "/bytes/3000000",
        "--requests",
        "4",
        "--connections",
        "2",
        "--duration",
        "60",
    ]);
    assert_eq!(code, 0, "{report}");
    assert_eq!(report["mode"], "bulk-download");
    assert_eq!(count(&report, "requests"), 4);
    assert_eq!(count(&report, "bytes_received"), 4 * 3_000_000);
}

#[test]
fn bulk_download_cut_at_duration() {
    let sink = Sink::start("cut");
    let (code, report) = run_load(&[
        "bulk",
        "--connect",
        &sink.addr,
        "--insecure",
        "--path",
        "/bytes/1000000000000",
        "--connections",
        "2",
        "--duration",
        "0.5",
    ]);
    assert_eq!(code, 0, "{report}");
    assert_eq!(count(&report, "errors"), 0);
    assert_eq!(count(&report, "requests"), 0);
    assert_eq!(count(&report, "cut_off"), 2);
    assert!(count(&report, "bytes_received") > 0, "{report}");
}

#[test]
fn bulk_upload_counts_bytes() {
    let sink = Sink::start("upload");
    let (code, report) = run_load(&[
        "bulk",
        "--connect",
        &sink.addr,
        "--insecure",
        "--direction",
        "upload",
        "--bytes",
        "2500000",
        "--path",
        "/upload",
        "--requests",
        "4",
        "--connections",
        "2",
        "--duration",
        "60",
    ]);
    assert_eq!(code, 0, "{report}");
    assert_eq!(report["mode"], "bulk-upload");
    assert_eq!(count(&report, "requests"), 4);
    assert_eq!(count(&report, "bytes_sent"), 4 * 2_500_000);
}

#[test]
fn bulk_upload_early_response() {
    // The sink responds to /early before the body arrives, as nginx does for
    // `return`. The client must finish the body before its next request. The body
    // is larger than loopback socket buffers, so the response arrives mid-body.
    let sink = Sink::start("early");
    let (code, report) = run_load(&[
        "bulk",
        "--connect",
        &sink.addr,
        "--insecure",
        "--direction",
        "upload",
        "--bytes",
        "32000000",
        "--path",
        "/early",
        "--requests",
        "3",
        "--connections",
        "1",
        "--duration",
        "60",
    ]);
    assert_eq!(code, 0, "{report}");
    assert_eq!(count(&report, "errors"), 0);
    assert_eq!(count(&report, "requests"), 3);
    assert_eq!(count(&report, "bytes_sent"), 3 * 32_000_000);
}

#[test]
fn latency_mode_sends_at_rate() {
    let sink = Sink::start("latency");
    let (code, report) = run_load(&[
        "latency",
        "--connect",
        &sink.addr,
        "--insecure",
        "--rate",
        "200",
        "--requests",
        "100",
        "--connections",
        "4",
        "--duration",
        "60",
    ]);
    assert_eq!(code, 0, "{report}");
    assert_eq!(count(&report, "requests"), 100);
    assert_eq!(count(&report, "unsent"), 0);
    assert_eq!(count(&report["send_lateness_us"], "count"), 100);
    let corrected = &report["latency_us"];
    let service = &report["service_latency_us"];
    assert!(count(corrected, "max") >= count(service, "max"), "{report}");
}

#[test]
fn hold_mode_reports_established() {
    let sink = Sink::start("hold");
    let output = Command::new(LOAD)
        .args([
            "hold",
            "--connect",
            &sink.addr,
            "--insecure",
            "--connections",
            "50",
            "--interval",
            "0.05",
            "--requests",
            "100",
            "--duration",
            "60",
        ])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    assert!(
        stderr.contains("hold: established 50 of 50 connections, 0 errors"),
        "{stderr}"
    );
    let report: Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(count(&report, "handshakes"), 50);
    assert_eq!(count(&report, "max_open_connections"), 50);
    assert_eq!(count(&report, "requests"), 100);
}

#[test]
fn refused_connections_stop_run() {
    // Bind and drop a listener to find a loopback port with nothing behind it.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let addr = format!("127.0.0.1:{port}");
    let (code, report) = run_load(&[
        "handshake",
        "--connect",
        &addr,
        "--insecure",
        "--duration",
        "60",
    ]);
    assert_eq!(code, 1);
    assert_eq!(count(&report, "handshakes"), 0);
    assert!(
        count(&report["errors_by_kind"], "connect") >= 100,
        "{report}"
    );
}

#[test]
fn remote_target_rejected() {
    let output = Command::new(LOAD)
        .args([
            "handshake",
            "--connect",
            "192.0.2.1:443",
            "--insecure",
            "--duration",
            "1",
        ])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("not a loopback address"), "{stderr}");
}

#[test]
fn ca_server_certificate_error_says_what_to_do() {
    let sink = Sink::start_with_ca_certificate("ca-certificate");
    let cafile = sink.cert();
    let output = Command::new(LOAD)
        .args(["handshake", "--connect", &sink.addr, "--requests", "3"])
        .args(["--concurrency", "1", "--duration", "10"])
        .arg("--cafile")
        .arg(&cafile)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("the server's certificate is a CA certificate"),
        "{stderr}"
    );
}
