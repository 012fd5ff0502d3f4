//! Recording, merging and export of the metrics module, through its public API
//! and the real stats listener on loopback.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use hdrhistogram::serialization::Deserializer;
use hdrhistogram::Histogram;
use rustls::{CipherSuite, ProtocolVersion};
use tlsplice::log::CloseReason;
use tlsplice::metrics::{
    DataPath, HandshakeFailure, HistogramKind, Registry, StatsServer, StatsServerOptions,
    WorkerMetrics,
};

fn registry(names: &[&str]) -> Arc<Registry> {
    Arc::new(Registry::new(names.iter().map(|n| n.to_string()).collect()))
}

/// Records a whole connection with the given handshake time and sizes.
fn connection(worker: &mut WorkerMetrics, service: usize, handshake_us: u64, up: u64, down: u64) {
    worker.accepted(service);
    worker.handshake_done(
        service,
        Duration::from_micros(handshake_us),
        ProtocolVersion::TLSv1_3,
        CipherSuite::TLS13_AES_128_GCM_SHA256,
    );
    worker.backend_connected(service, Duration::from_micros(200));
    worker.first_byte(service, Duration::from_millis(3));
    worker.closed(
        service,
        CloseReason::Done,
        Duration::from_secs(2),
        up,
        down,
        DataPath::Userspace,
    );
}

#[test]
fn count_matches_recorded_connections() {
    let registry = registry(&["web"]);
    let mut worker = registry.register_worker();
    for i in 0..1000 {
        connection(&mut worker, 0, 100 + i, 10, 20);
    }
    worker.accepted(0);
    worker.publish();

    let snapshot = registry.snapshot();
    let web = &snapshot.services[0].1;
    assert_eq!(web.accepted, 1001);
    assert_eq!(web.active(), 1);
    assert_eq!(web.closed_by(CloseReason::Done), 1000);
    assert_eq!(web.data_path_count(DataPath::Userspace), 1000);
    for kind in HistogramKind::ALL {
        assert_eq!(web.histogram(kind).count(), 1000, "{kind:?}");
    }
}

#[test]
fn percentiles_match_recorded_durations() {
    let registry = registry(&["web"]);
    let mut worker = registry.register_worker();
    // 1..=10000 ms: p50 is 5000 ms, p99 is 9900 ms, max is 10000 ms.
    for ms in 1..=10_000u64 {
        worker.handshake_done(
            0,
            Duration::from_millis(ms),
            ProtocolVersion::TLSv1_2,
            CipherSuite::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,
        );
    }
    worker.publish();

    let snapshot = registry.snapshot();
    let recorder = snapshot.services[0].1.histogram(HistogramKind::Handshake);
    let histogram = recorder.histogram();
    let within = |actual: u64, expected: u64| {
        let error = (actual as f64 - expected as f64).abs() / expected as f64;
        assert!(error <= 0.001, "{actual} is not within 0.1 % of {expected}");
    };
    within(histogram.value_at_quantile(0.5), 5_000_000);
    within(histogram.value_at_quantile(0.99), 9_900_000);
    within(histogram.max(), 10_000_000);
    within(histogram.min(), 1_000);
    assert_eq!(recorder.sum(), 50_005_000_000);
}

#[test]
fn bytes_sum_exactly() {
    let registry = registry(&["web"]);
    let mut worker = registry.register_worker();
    let sizes = [0u64, 1, 1_500, 65_537, 10_000_019, 1 << 40];
    for (i, size) in sizes.iter().enumerate() {
        connection(&mut worker, 0, 1_000, *size, i as u64);
    }
    worker.publish();

    let snapshot = registry.snapshot();
    let up = snapshot.services[0].1.histogram(HistogramKind::BytesUp);
    let down = snapshot.services[0].1.histogram(HistogramKind::BytesDown);
    assert_eq!(up.sum(), sizes.iter().sum::<u64>());
    assert_eq!(down.sum(), 15);
    assert_eq!(up.histogram().count_at(65_537), 1);
    assert!(up.histogram().equivalent(up.histogram().max(), 1 << 40));
}

#[test]
fn merge_sums_workers_and_services() {
    let registry = registry(&["web", "api", "mail"]);
    let mut workers: Vec<WorkerMetrics> = (0..3).map(|_| registry.register_worker()).collect();

    for (w, worker) in workers.iter_mut().enumerate() {
        for service in 0..3 {
            // Worker w records (w + 1) * (service + 1) connections per service.
            for i in 0..(w + 1) * (service + 1) {
                connection(worker, service, 500 + i as u64, 100, 1_000);
            }
            worker.handshake_failed(service, HandshakeFailure::NoSharedCipherSuite);
            worker.backend_connect_failed(service);
        }
        worker.publish();
    }

    let snapshot = registry.snapshot();
    let mut accepted_sum = 0;
    for (index, (name, service)) in snapshot.services.iter().enumerate() {
        // Sum over workers of (w + 1) * (index + 1) is 6 * (index + 1).
        let expected = 6 * (index as u64 + 1);
        assert_eq!(service.accepted, expected, "{name}");
        assert_eq!(
            service.histogram(HistogramKind::Handshake).count(),
            expected,
            "{name}"
        );
        assert_eq!(
            service.histogram(HistogramKind::BytesUp).sum(),
            expected * 100,
            "{name}"
        );
        assert_eq!(
            service.handshake_failures_by(HandshakeFailure::NoSharedCipherSuite),
            3,
            "{name}"
        );
        accepted_sum += service.accepted;
    }

    let total = &snapshot.total;
    assert_eq!(total.accepted, accepted_sum);
    assert_eq!(total.accepted, 36);
    assert_eq!(total.backend_connect_failures, 9);
    assert_eq!(
        total.handshake_failures_by(HandshakeFailure::NoSharedCipherSuite),
        9
    );
    assert_eq!(total.histogram(HistogramKind::Lifetime).count(), 36);
    assert_eq!(total.histogram(HistogramKind::BytesDown).sum(), 36_000);
    assert_eq!(
        total.version_counts(),
        vec![(u16::from(ProtocolVersion::TLSv1_3), 36)]
    );

    let mut per_service = Histogram::<u64>::new(3).unwrap();
    per_service.auto(true);
    for (_, service) in &snapshot.services {
        per_service
            .add(service.histogram(HistogramKind::Handshake).histogram())
            .unwrap();
    }
    assert_eq!(
        &per_service,
        total.histogram(HistogramKind::Handshake).histogram()
    );
}

#[test]
fn publish_skips_unchanged_worker() {
    let registry = registry(&["web"]);
    let mut worker = registry.register_worker();
    assert!(!worker.publish());
    worker.accepted(0);
    assert!(worker.publish());
    assert!(!worker.publish());

    assert!(!worker.publish_requested());
    registry.request_publish();
    assert!(worker.publish_requested());
    worker.publish();
    assert!(!worker.publish_requested());
}

#[test]
fn dropped_worker_publishes_remaining_values() {
    let registry = registry(&["web"]);
    let mut worker = registry.register_worker();
    worker.accepted(0);
    drop(worker);
    assert_eq!(registry.snapshot().total.accepted, 1);
}

#[test]
fn snapshot_excludes_unpublished_values() {
    let registry = registry(&["web"]);
    let mut worker = registry.register_worker();
    worker.accepted(0);
    assert_eq!(registry.snapshot().total.accepted, 0);
    worker.publish();
    assert_eq!(registry.snapshot().total.accepted, 1);
}

#[test]
fn summary_lists_every_recorded_histogram() {
    let registry = registry(&["web"]);
    let mut worker = registry.register_worker();
    connection(&mut worker, 0, 1_500, 2_048, 4_096);
    worker.publish();

    let summary = registry.summary();
    assert!(
        summary.contains("service web: accepted 1, active 0, closed 1"),
        "{summary}"
    );
    assert!(summary.contains("all services: accepted 1"), "{summary}");
    for kind in HistogramKind::ALL {
        assert!(
            summary.contains(kind.as_str()),
            "{} missing in {summary}",
            kind.as_str()
        );
    }
    assert!(summary.contains("p50 1.50ms"), "{summary}");
}

/// Starts a stats server over a few connections on two services, one with a
/// name that needs escaping in label values.
fn sample_server() -> (Arc<Registry>, StatsServer) {
    let registry = registry(&["web", "odd \"name\"\\\n"]);
    let mut worker = registry.register_worker();
    for i in 0..10 {
        connection(&mut worker, (i % 2) as usize, 100 * (i + 1), 1_000, 50_000);
    }
    worker.handshake_failed(1, HandshakeFailure::Timeout);
    worker.accepted(0);
    worker.publish();

    let options = StatsServerOptions {
        read_timeout: Duration::from_millis(300),
        ..StatsServerOptions::default()
    };
    let addr: SocketAddr = "127.0.0.1:0".parse().unwrap();
    let server = StatsServer::start(addr, Arc::clone(&registry), options).unwrap();
    (registry, server)
}

/// Sends `request` and returns the whole response, read until the server closes.
fn exchange(addr: SocketAddr, request: &[u8]) -> String {
    let mut stream = TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    stream.write_all(request).unwrap();
    let mut response = Vec::new();
    stream.read_to_end(&mut response).unwrap();
    String::from_utf8(response).unwrap()
}

fn split_response(response: &str) -> (&str, &str) {
    response
        .split_once("\r\n\r\n")
        .expect("response has a blank line after the head")
}

#[test]
fn stats_server_serves_metrics() {
    let (_registry, server) = sample_server();
    let response = exchange(
        server.local_addr(),
        b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n",
    );
    let (head, body) = split_response(&response);

    assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
    assert!(
        head.contains("Content-Type: text/plain; version=0.0.4"),
        "{head}"
    );
    assert!(
        head.contains(&format!("Content-Length: {}", body.len())),
        "{head}"
    );
    assert!(
        body.contains("tlsplice_connections_accepted_total 11\n"),
        "{body}"
    );
    assert!(body.contains("tlsplice_connections_accepted_total{service=\"web\"} 6\n"));
    assert!(
        body.contains("{service=\"odd \\\"name\\\"\\\\\\n\"}"),
        "{body}"
    );
    assert!(body.contains("tlsplice_connections_active 1\n"));
    assert!(
        body.contains("tlsplice_handshake_failures_total{service=\"web\",reason=\"timeout\"} 0\n")
    );
    assert!(body.contains("tlsplice_handshake_duration_seconds_count 10\n"));
    assert!(
        body.contains("tlsplice_handshake_duration_seconds_sum 0.0055\n"),
        "{body}"
    );
    assert!(body.contains("tlsplice_handshake_duration_seconds_bucket{le=\"0.0005\"} 5\n"));
    assert!(body.contains("tlsplice_handshake_duration_seconds_bucket{le=\"+Inf\"} 10\n"));
    assert!(body.contains(
        "tlsplice_connection_transferred_bytes_sum{direction=\"backend_to_client\"} 500000\n"
    ));
    assert!(body.contains(
        "tlsplice_handshakes_total{version=\"TLSv1_3\",cipher_suite=\"TLS13_AES_128_GCM_SHA256\"} 10\n"
    ));
}

#[test]
fn metrics_parse_with_prometheus_parse() {
    let (_registry, server) = sample_server();
    let response = exchange(server.local_addr(), b"GET /metrics HTTP/1.1\r\n\r\n");
    let (_, body) = split_response(&response);

    let lines = body.lines().map(|line| Ok(line.to_owned()));
    let scrape = prometheus_parse::Scrape::parse(lines).expect("page parses");

    let accepted: Vec<_> = scrape
        .samples
        .iter()
        .filter(|s| s.metric == "tlsplice_connections_accepted_total")
        .collect();
    assert_eq!(accepted.len(), 3);
    // prometheus-parse 0.2 returns label values still escaped, so this checks a
    // plain name; promtool checks the escaped one.
    let web = accepted
        .iter()
        .find(|s| s.labels.get("service") == Some("web"))
        .expect("series for service web");
    assert!(matches!(web.value, prometheus_parse::Value::Counter(v) if v == 6.0));

    let handshake = scrape
        .samples
        .iter()
        .find(|s| {
            s.metric == "tlsplice_handshake_duration_seconds" && s.labels.get("service").is_none()
        })
        .expect("total handshake histogram");
    match &handshake.value {
        prometheus_parse::Value::Histogram(buckets) => {
            let last = buckets.last().unwrap();
            assert!(last.less_than.is_infinite());
            assert_eq!(last.count, 10.0);
            assert!(buckets
                .windows(2)
                .all(|pair| pair[0].count <= pair[1].count));
        }
        other => panic!("expected a histogram, got {other:?}"),
    }
    assert!(scrape.docs.contains_key("tlsplice_connections_active"));
}

#[test]
fn metrics_pass_promtool_check() {
    let Ok(status) = Command::new("promtool")
        .arg("--version")
        .stdout(Stdio::null())
        .status()
    else {
        eprintln!("skipped: promtool not installed (Debian package prometheus)");
        return;
    };
    assert!(status.success());

    let (_registry, server) = sample_server();
    let response = exchange(server.local_addr(), b"GET /metrics HTTP/1.1\r\n\r\n");
    let (_, body) = split_response(&response);

    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(body.as_bytes())
        .unwrap();
    let output = child.wait_with_output().unwrap();
    let problems = String::from_utf8_lossy(&output.stdout).to_string()
        + &String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "promtool found problems:\n{problems}"
    );
    assert_eq!(problems.trim(), "", "promtool printed warnings");
}

#[test]
fn stats_json_histograms_decode() {
    let (registry, server) = sample_server();
    let response = exchange(server.local_addr(), b"GET /stats.json HTTP/1.1\r\n\r\n");
    let (head, body) = split_response(&response);
    assert!(head.contains("Content-Type: application/json"), "{head}");

    let document: serde_json::Value = serde_json::from_str(body).unwrap();
    let total = &document["total"];
    assert_eq!(total["counters"]["accepted"], 11);
    assert_eq!(total["counters"]["active"], 1);
    assert_eq!(total["counters"]["closed"]["done"], 10);
    assert_eq!(total["counters"]["handshake_failures"]["timeout"], 1);
    assert_eq!(total["counters"]["tls_versions"]["TLSv1_3"], 10);
    assert_eq!(
        total["counters"]["cipher_suites"]["TLS13_AES_128_GCM_SHA256"],
        10
    );
    assert_eq!(total["counters"]["data_path"]["userspace"], 10);
    assert_eq!(document["services"][0]["name"], "web");
    assert_eq!(document["services"][1]["name"], "odd \"name\"\\\n");

    let handshake = &total["histograms"]["handshake_duration"];
    assert_eq!(handshake["unit"], "us");
    assert_eq!(handshake["count"], 10);
    assert_eq!(handshake["sum"], 5_500);
    assert_eq!(handshake["min"], 100);
    assert_eq!(handshake["max"], 1_000);
    assert_eq!(handshake["p50"], 500);
    for key in ["mean", "p90", "p99", "p99_9", "p99_99"] {
        assert!(handshake[key].is_number(), "{key} missing");
    }

    let snapshot = registry.snapshot();
    for kind in HistogramKind::ALL {
        let encoded = total["histograms"][kind.as_str()]["hdr"].as_str().unwrap();
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(encoded)
            .unwrap();
        let decoded: Histogram<u64> = Deserializer::new()
            .deserialize(&mut bytes.as_slice())
            .unwrap();
        let expected = snapshot.total.histogram(kind).histogram();
        assert_eq!(decoded.len(), expected.len(), "{kind:?}");
        assert_eq!(&decoded, expected, "{kind:?}");
    }
}

#[test]
fn stats_server_answers_head_without_body() {
    let (_registry, server) = sample_server();
    let response = exchange(server.local_addr(), b"HEAD /stats.json HTTP/1.1\r\n\r\n");
    let (head, body) = split_response(&response);
    assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
    assert!(!head.contains("Content-Length: 0\r\n"), "{head}");
    assert_eq!(body, "");
}

#[test]
fn stats_server_rejects_post() {
    let (_registry, server) = sample_server();
    let response = exchange(
        server.local_addr(),
        b"POST /metrics HTTP/1.1\r\nContent-Length: 0\r\n\r\n",
    );
    assert!(
        response.starts_with("HTTP/1.1 405 Method Not Allowed\r\n"),
        "{response}"
    );
    assert!(response.contains("\r\nAllow: GET, HEAD\r\n"), "{response}");
}

#[test]
fn stats_server_unknown_path_is_404() {
    let (_registry, server) = sample_server();
    let response = exchange(server.local_addr(), b"GET /admin HTTP/1.1\r\n\r\n");
    assert!(
        response.starts_with("HTTP/1.1 404 Not Found\r\n"),
        "{response}"
    );
}

#[test]
fn stats_server_garbage_is_400() {
    let (_registry, server) = sample_server();
    let response = exchange(server.local_addr(), b"\x16\x03\x01\x00\x05hello\r\n\r\n");
    assert!(
        response.starts_with("HTTP/1.1 400 Bad Request\r\n"),
        "{response}"
    );
}

#[test]
fn stats_server_drops_silent_client() {
    let (_registry, server) = sample_server();
    let mut stream = TcpStream::connect(server.local_addr()).unwrap();
    // The server's read timeout is 300 ms; this bound only keeps a broken server
    // from hanging the test.
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let mut response = Vec::new();
    let read = stream.read_to_end(&mut response);
    assert!(
        matches!(read, Ok(0)) || read.is_err(),
        "expected close without a response, got {:?}",
        String::from_utf8_lossy(&response)
    );
    assert!(response.is_empty());
}

#[test]
fn stats_server_stops() {
    let (_registry, server) = sample_server();
    let addr = server.local_addr();
    server.stop();
    assert!(
        TcpStream::connect(addr).is_err(),
        "listener still open after stop"
    );
}

#[test]
fn histogram_logger_writes_last_interval_on_stop() {
    use hdrhistogram::serialization::interval_log::{IntervalLogIterator, LogEntry};
    use tlsplice::metrics::HistogramLogger;

    let directory = std::env::temp_dir().join(format!("tlsplice-hlog-{}", std::process::id()));
    std::fs::create_dir_all(&directory).unwrap();
    let path = directory.join("test.hlog");

    let registry = registry(&["web"]);
    let logger =
        HistogramLogger::start(&path, Duration::from_secs(3600), Arc::clone(&registry)).unwrap();
    let mut worker = registry.register_worker();
    for i in 0..5 {
        connection(&mut worker, 0, 100 + i, 10, 20);
    }
    worker.publish();
    logger.stop();

    let log = std::fs::read(&path).unwrap();
    std::fs::remove_dir_all(&directory).unwrap();
    let mut counts = Vec::new();
    for entry in IntervalLogIterator::new(&log) {
        if let LogEntry::Interval(interval) = entry.expect("log line parses") {
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(interval.encoded_histogram())
                .unwrap();
            let histogram: Histogram<u64> = Deserializer::new()
                .deserialize(&mut bytes.as_slice())
                .unwrap();
            let tag = interval.tag().unwrap().as_str().to_owned();
            counts.push((tag, histogram.len()));
        }
    }
    assert_eq!(counts.len(), 12, "{counts:?}");
    assert!(
        counts.contains(&("handshake_duration".to_owned(), 5)),
        "{counts:?}"
    );
    assert!(
        counts.contains(&("bytes_client_to_backend:web".to_owned(), 5)),
        "{counts:?}"
    );
}

#[test]
fn histogram_log_survives_copytruncate() {
    use tlsplice::metrics::HistogramLogger;

    let directory =
        std::env::temp_dir().join(format!("tlsplice-hlog-trunc-{}", std::process::id()));
    std::fs::create_dir_all(&directory).unwrap();
    let path = directory.join("test.hlog");
    let registry = registry(&["web"]);
    let logger =
        HistogramLogger::start(&path, Duration::from_millis(50), Arc::clone(&registry)).unwrap();
    let mut worker = registry.register_worker();
    connection(&mut worker, 0, 100, 10, 20);
    worker.publish();

    // Readiness waits for the logger thread; the deadline only keeps a broken
    // logger from hanging the test.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let wait_for_interval = || loop {
        let text = std::fs::read(&path).unwrap();
        if text.windows(4).any(|window| window == b"Tag=") {
            return;
        }
        assert!(std::time::Instant::now() < deadline, "no interval written");
        std::thread::sleep(Duration::from_millis(10));
    };
    wait_for_interval();

    // What logrotate's copytruncate does after copying the file.
    std::fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .unwrap()
        .set_len(0)
        .unwrap();
    wait_for_interval();
    logger.stop();

    let log = std::fs::read(&path).unwrap();
    std::fs::remove_dir_all(&directory).unwrap();
    assert_ne!(log[0], 0, "the log starts with a NUL byte");
    assert!(!log.contains(&0), "the log contains NUL bytes");
}
