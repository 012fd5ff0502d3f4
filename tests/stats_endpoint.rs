//! The stats listener of the real binary, checked against known traffic.

mod common;

use std::io::{Read, Write};
use std::time::{Duration, Instant};

use common::*;

#[test]
fn stats_match_known_traffic() {
    const CONNECTIONS: usize = 6;
    const REQUEST: usize = 100;
    const RESPONSE: usize = 1000;
    const DELAY: Duration = Duration::from_millis(50);

    let dir = TempDir::new("stats");
    let cert = make_cert(&dir, "server", KeyKind::EcdsaP256, &["localhost"]);
    // The backend reads the whole request, waits, then sends the response.
    let backend = Backend::start(|mut stream| {
        let mut request = [0u8; REQUEST];
        if stream.read_exact(&mut request).is_err() {
            return;
        }
        std::thread::sleep(DELAY);
        let _ = stream.write_all(&[b'r'; RESPONSE]);
    });
    let proxy = Proxy::start(&format!(
        "stats = 127.0.0.1:0\n[web]\naccept = 127.0.0.1:0\nconnect = {}\ncert = {}\nkey = {}\n",
        backend.addr,
        cert.cert.display(),
        cert.key.display()
    ));
    let stats = proxy.stats_address();

    let config = client_config(std::slice::from_ref(&cert.der), rustls::ALL_VERSIONS);
    for _ in 0..CONNECTIONS {
        let mut stream = tls_connect(proxy.addr(), &config, "localhost").unwrap();
        stream.write_all(&[b'q'; REQUEST]).unwrap();
        stream.flush().unwrap();
        let mut response = vec![0u8; RESPONSE];
        if let Err(err) = stream.read_exact(&mut response) {
            panic!("response: {err}; tlsplice output: {:#?}", proxy.output());
        }
        stream.conn.send_close_notify();
        let _ = stream.flush();
    }
    proxy.wait_for_conn_lines(CONNECTIONS);

    // Workers publish every 250 ms; poll until all connections are counted.
    let deadline = Instant::now() + WAIT;
    let json: serde_json::Value = loop {
        let json: serde_json::Value =
            serde_json::from_str(&stats_get(stats, "/stats.json")).unwrap();
        let closed = json["total"]["counters"]["closed"]["done"]
            .as_u64()
            .unwrap_or(0);
        if closed == CONNECTIONS as u64 {
            break json;
        }
        assert!(
            Instant::now() < deadline,
            "closed count stuck at {closed}: {json}"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    let total = &json["total"];
    assert_eq!(total["counters"]["accepted"], CONNECTIONS as u64);
    assert_eq!(total["counters"]["active"], 0);
    let histograms = &total["histograms"];
    assert_eq!(
        histograms["handshake_duration"]["count"],
        CONNECTIONS as u64
    );
    assert_eq!(
        histograms["first_byte_duration"]["count"],
        CONNECTIONS as u64
    );
    let first_byte_p50 = histograms["first_byte_duration"]["p50"].as_u64().unwrap();
    assert!(
        first_byte_p50 >= DELAY.as_micros() as u64,
        "time to first byte p50 {first_byte_p50} us is below the backend's delay"
    );
    assert_eq!(
        histograms["bytes_client_to_backend"]["sum"],
        (CONNECTIONS * REQUEST) as u64
    );
    assert_eq!(
        histograms["bytes_backend_to_client"]["sum"],
        (CONNECTIONS * RESPONSE) as u64
    );
    let service = &json["services"][0];
    assert_eq!(service["name"], "web");
    assert_eq!(service["counters"]["accepted"], CONNECTIONS as u64);

    let metrics = stats_get(stats, "/metrics");
    assert!(
        metrics.lines().any(
            |line| line.starts_with("tlsplice_connections_accepted_total")
                && line.ends_with(&format!(" {CONNECTIONS}"))
        ),
        "{metrics}"
    );
}
