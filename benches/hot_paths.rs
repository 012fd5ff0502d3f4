//! Criterion benchmarks of the per-connection hot paths: userspace record
//! encryption and decryption, configuration parsing, and PROXY header encoding.
//! Metrics recording has its own file, `benches/metrics.rs`.

use std::hint::black_box;
use std::net::SocketAddr;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};

#[path = "support/inmemory.rs"]
mod inmemory;

use inmemory::handshake;

fn records(c: &mut Criterion) {
    let mut group = c.benchmark_group("userspace_records");
    for size in [1024usize, 16 * 1024] {
        group.throughput(Throughput::Bytes(size as u64));
        let payload = vec![0x5au8; size];

        let mut pair = handshake();
        let mut out = Vec::with_capacity(size + 1024);
        group.bench_function(format!("encrypt_{}k", size / 1024), |b| {
            b.iter(|| {
                out.clear();
                pair.server.write(black_box(&payload), &mut out).unwrap();
                black_box(out.len())
            })
        });

        let mut pair = handshake();
        let mut to_client = Vec::new();
        let mut plaintext = Vec::with_capacity(size);
        group.bench_function(format!("decrypt_{}k", size / 1024), |b| {
            b.iter_batched(
                || {
                    // The client seals fresh records each time, in sequence.
                    use std::io::Write;
                    pair.client.writer().write_all(&payload).unwrap();
                    let mut wire = Vec::with_capacity(size + 1024);
                    while pair.client.wants_write() {
                        pair.client.write_tls(&mut wire).unwrap();
                    }
                    wire
                },
                |mut wire| {
                    plaintext.clear();
                    let progress = pair
                        .server
                        .read(&mut wire, &mut to_client, &mut plaintext)
                        .unwrap();
                    assert_eq!(plaintext.len(), size);
                    black_box(progress.consumed)
                },
                BatchSize::SmallInput,
            )
        });
    }
    group.finish();
}

fn config_parsing(c: &mut Criterion) {
    let dir = std::env::temp_dir().join(format!("tlsplice-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let cert = dir.join("server.crt");
    let key = dir.join("server.key");
    std::fs::write(&cert, "placeholder").unwrap();
    std::fs::write(&key, "placeholder").unwrap();
    let mut text = String::from("foreground = yes\nsyslog = no\nTIMEOUTidle = 600\n");
    for index in 0..10 {
        text.push_str(&format!(
            "[service{index}]\naccept = 127.0.0.1:{}\nconnect = 127.0.0.1:{}\ncert = {}\nkey = {}\nalpn = h2,http/1.1\nsslVersionMin = TLSv1.2\n",
            8000 + index,
            9000 + index,
            cert.display(),
            key.display()
        ));
    }
    c.bench_function("config_parse_10_services", |b| {
        b.iter(|| tlsplice::config::parse_str(black_box(&text), None).unwrap())
    });
    let _ = std::fs::remove_dir_all(&dir);
}

fn proxy_headers(c: &mut Criterion) {
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
    c.bench_function("proxy_v1_encode", |b| {
        b.iter(|| {
            out.clear();
            tlsplice::proxy::encode_v1(&mut out, black_box(&addresses));
            black_box(out.len())
        })
    });
    c.bench_function("proxy_v2_encode_tlvs", |b| {
        b.iter(|| {
            out.clear();
            tlsplice::proxy::encode_v2(&mut out, black_box(&addresses), black_box(&tlvs)).unwrap();
            black_box(out.len())
        })
    });
}

fn token_round_trip(c: &mut Criterion) {
    use tlsplice::runtime::token::{Kind, Token};
    // Every completion is routed by decoding its token and checking the slot's
    // generation, so this is the fixed cost of one state transition.
    c.bench_function("completion_token_round_trip", |b| {
        let mut slot = 0u32;
        b.iter(|| {
            slot = slot.wrapping_add(1);
            let token = Token::new(Kind::ClientRecv, black_box(slot), black_box(7));
            black_box(Token::decode(token.encode()))
        })
    });
}

criterion_group!(
    benches,
    records,
    config_parsing,
    proxy_headers,
    token_round_trip
);
criterion_main!(benches);
