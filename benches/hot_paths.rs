//! Criterion benchmarks of the per-connection hot paths: userspace record
//! encryption and decryption, configuration parsing, and PROXY header encoding.
//! Metrics recording has its own file, `benches/metrics.rs`.

use std::hint::black_box;
use std::net::SocketAddr;
use std::sync::Arc;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tlsplice::tls::certs::{LoadedCert, SniResolver};
use tlsplice::tls::TlsSession;

/// A server session and a rustls client that completed a handshake in memory.
struct Pair {
    server: TlsSession,
    client: rustls::ClientConnection,
}

fn handshake() -> Pair {
    let generated = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    let cert = CertificateDer::from(generated.cert.der().to_vec());
    let key = PrivateKeyDer::try_from(generated.signing_key.serialize_der()).unwrap();
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let certified =
        rustls::sign::CertifiedKey::from_der(vec![cert.clone()], key, &provider).unwrap();
    let resolver = Arc::new(SniResolver::new(vec![LoadedCert {
        key: Arc::new(certified),
        route: None,
        pattern: None,
    }]));
    let server_config = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_cert_resolver(resolver.clone());
    let mut roots = rustls::RootCertStore::empty();
    roots.add(cert).unwrap();
    let client_config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let mut client = rustls::ClientConnection::new(
        Arc::new(client_config),
        ServerName::try_from("localhost").unwrap(),
    )
    .unwrap();
    let mut server = TlsSession::new(&server_config, &resolver).unwrap();

    let mut to_server = Vec::new();
    let mut to_client = Vec::new();
    let mut plaintext = Vec::new();
    for _ in 0..10 {
        while client.wants_write() {
            client.write_tls(&mut to_server).unwrap();
        }
        let progress = server
            .read(&mut to_server, &mut to_client, &mut plaintext)
            .unwrap();
        to_server.drain(..progress.consumed);
        let mut reader = &to_client[..];
        while !reader.is_empty() {
            client.read_tls(&mut reader).unwrap();
            client.process_new_packets().unwrap();
        }
        to_client.clear();
        if !client.is_handshaking() && !server.is_handshaking() {
            return Pair { server, client };
        }
    }
    panic!("the in-memory handshake did not finish");
}

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

criterion_group!(benches, records, config_parsing, proxy_headers);
criterion_main!(benches);
