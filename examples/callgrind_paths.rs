//! Fixed amounts of work on tlsplice's hot paths, for instruction counts under
//! `valgrind --tool=callgrind`, which repeat across runs whatever else the
//! machine does. `scripts/bench --quick` runs each path and compares the counts
//! with `perf/baseline.json`.
//!
//! Usage: `callgrind_paths config|proxy|records`

use std::io::Write;
use std::net::SocketAddr;

#[path = "../benches/support/inmemory.rs"]
mod inmemory;

fn main() {
    let path = std::env::args().nth(1).unwrap_or_default();
    match path.as_str() {
        "config" => config(),
        "proxy" => proxy(),
        "records" => records(),
        other => {
            eprintln!("callgrind_paths: unknown path `{other}`; use config, proxy or records");
            std::process::exit(2);
        }
    }
}

/// Parses a ten-service configuration 200 times.
fn config() {
    let dir = std::env::temp_dir().join(format!("tlsplice-callgrind-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let cert = dir.join("server.crt");
    std::fs::write(&cert, "placeholder").unwrap();
    let mut text = String::from("foreground = yes\nsyslog = no\n");
    for index in 0..10 {
        text.push_str(&format!(
            "[s{index}]\naccept = 127.0.0.1:{}\nconnect = 127.0.0.1:{}\ncert = {}\nalpn = h2,http/1.1\n",
            8000 + index,
            9000 + index,
            cert.display()
        ));
    }
    for _ in 0..200 {
        std::hint::black_box(tlsplice::config::parse_str(&text, None).unwrap());
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// Encodes 100 000 PROXY v1 and v2 headers.
fn proxy() {
    let addresses = tlsplice::proxy::Addresses::Tcp {
        source: "198.51.100.7:51234".parse::<SocketAddr>().unwrap(),
        destination: "203.0.113.1:443".parse::<SocketAddr>().unwrap(),
    };
    let tlvs = tlsplice::proxy::Tlvs {
        alpn: Some(b"h2"),
        authority: Some("www.example.com"),
        ssl: Some(tlsplice::proxy::Ssl {
            version: "TLSv1.3",
            cipher: "TLS_AES_128_GCM_SHA256",
            client_cert_verified: false,
        }),
    };
    let mut out = Vec::with_capacity(256);
    for _ in 0..100_000 {
        out.clear();
        tlsplice::proxy::encode_v1(&mut out, &addresses);
        tlsplice::proxy::encode_v2(&mut out, &addresses, &tlvs).unwrap();
        std::hint::black_box(out.len());
    }
}

/// Encrypts 16 MiB with the server session and decrypts 16 MiB from the client,
/// in 16 KiB writes, after one in-memory handshake.
fn records() {
    let mut pair = inmemory::handshake();
    let payload = vec![0x5au8; 16 * 1024];
    let mut out = Vec::with_capacity(payload.len() + 1024);
    let mut plaintext = Vec::with_capacity(payload.len());
    let mut to_client = Vec::new();
    for _ in 0..1024 {
        out.clear();
        pair.server.write(&payload, &mut out).unwrap();

        pair.client.writer().write_all(&payload).unwrap();
        let mut wire = Vec::with_capacity(payload.len() + 1024);
        while pair.client.wants_write() {
            pair.client.write_tls(&mut wire).unwrap();
        }
        plaintext.clear();
        pair.server
            .read(&mut wire, &mut to_client, &mut plaintext)
            .unwrap();
        assert_eq!(plaintext.len(), payload.len());
    }
}
