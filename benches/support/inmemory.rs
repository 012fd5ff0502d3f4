//! An in-memory TLS handshake between tlsplice's server session and a rustls
//! client, shared by the criterion benchmarks and the callgrind driver.

use std::sync::Arc;

use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tlsplice::tls::certs::{LoadedCert, SniResolver};
use tlsplice::tls::TlsSession;

/// A server session and a rustls client that completed a handshake in memory.
pub struct Pair {
    pub server: TlsSession,
    pub client: rustls::ClientConnection,
}

pub fn handshake() -> Pair {
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
