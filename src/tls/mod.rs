//! TLS: certificates, per-service rustls configuration, and the handshake driver.
//!
//! rustls runs through its unbuffered API, so the worker owns every buffer and the
//! session can later be handed to the kernel for record encryption.

pub mod certs;
pub mod kernel;
pub mod session;

use std::sync::Arc;

use rustls::crypto::CryptoProvider;
use rustls::ServerConfig;

use crate::config::{ConfigError, KtlsMode, Service, TlsVersion};
use certs::{LoadedCert, SniResolver};

pub use session::{Progress, TlsSession};

/// A service's TLS setup, shared read-only by every worker.
#[derive(Debug)]
pub struct ServiceTls {
    pub config: Arc<ServerConfig>,
    pub resolver: Arc<SniResolver>,
    /// True when the certificate was generated because none was configured.
    pub self_signed: bool,
}

/// Loads the service's certificates and builds its rustls configuration.
pub fn build(service: &Service) -> Result<ServiceTls, ConfigError> {
    let certs = load_certs(service)?;
    build_with_certs(service, certs)
}

/// Loads the service's certificates with their keys, in the order the SNI
/// resolver expects: the generated one, the listener's own, then the routes'.
pub fn load_certs(service: &Service) -> Result<Vec<LoadedCert>, ConfigError> {
    let provider = provider_for(service);
    let mut certs = Vec::new();
    if service.self_signed {
        let key = certs::self_signed(&provider).map_err(|err| ConfigError {
            file: None,
            line: 0,
            option: None,
            value: None,
            message: format!("cannot generate a self-signed certificate: {err}"),
        })?;
        certs.push(LoadedCert {
            key: Arc::new(key),
            route: None,
            pattern: None,
        });
    }
    for source in &service.certs {
        certs.push(LoadedCert {
            key: Arc::new(certs::load(source)?),
            route: None,
            pattern: None,
        });
    }
    for (index, route) in service.sni.iter().enumerate() {
        certs.push(LoadedCert {
            key: Arc::new(certs::load(&route.cert)?),
            route: Some(index),
            pattern: Some(route.pattern.clone()),
        });
    }
    Ok(certs)
}

/// Builds the service's rustls configuration around `certs`, as returned by
/// [`load_certs`] or with the same chains and another signing key each.
pub fn build_with_certs(
    service: &Service,
    certs: Vec<LoadedCert>,
) -> Result<ServiceTls, ConfigError> {
    let provider = provider_for(service);
    let resolver = Arc::new(SniResolver::new(certs));

    let versions: Vec<&'static rustls::SupportedProtocolVersion> = [
        (TlsVersion::Tls12, &rustls::version::TLS12),
        (TlsVersion::Tls13, &rustls::version::TLS13),
    ]
    .into_iter()
    .filter(|(version, _)| (service.tls_min..=service.tls_max).contains(version))
    .map(|(_, supported)| supported)
    .collect();

    let mut config = ServerConfig::builder_with_provider(Arc::new(provider))
        .with_protocol_versions(&versions)
        .map_err(|err| ConfigError {
            file: None,
            line: 0,
            option: Some("ciphersuites".into()),
            value: None,
            message: format!(
                "service [{}]: no cipher suite left for the allowed TLS versions ({err}); allow a suite of each version",
                service.name
            ),
        })?
        .with_no_client_auth()
        .with_cert_resolver(resolver.clone());
    config.alpn_protocols = service.alpn.iter().map(|p| p.as_bytes().to_vec()).collect();
    config.enable_secret_extraction = service.ktls != KtlsMode::Off;
    config.max_early_data_size = 0;
    config.ignore_client_order = true;
    if let Ok(ticketer) = rustls::crypto::aws_lc_rs::Ticketer::new() {
        config.ticketer = ticketer;
    }
    Ok(ServiceTls {
        config: Arc::new(config),
        resolver,
        self_signed: service.self_signed,
    })
}

fn provider_for(service: &Service) -> CryptoProvider {
    let mut provider = rustls::crypto::aws_lc_rs::default_provider();
    if let Some(allowed) = &service.cipher_suites {
        provider
            .cipher_suites
            .retain(|suite| allowed.contains(&suite.suite()));
    }
    provider
}

/// Draws random bytes once, so the crypto library sets up its random generator
/// now rather than during the first handshake. aws-lc seeds it from CPU jitter
/// the first time in a process, which took tens of milliseconds here (see
/// perf/privsep.md), reseeds it once after a fork, and sets up each thread's
/// own state on that thread's first draw. Call it at start, in each forked
/// process, and on each thread that handshakes or signs, before it serves.
pub fn prepare_random() {
    let provider = rustls::crypto::aws_lc_rs::default_provider();
    let mut bytes = [0u8; 32];
    if let Err(err) = provider.secure_random.fill(&mut bytes) {
        crate::warning!("cannot draw random bytes at start: {err:?}");
    }
}

/// The protocol version as written in logs: `TLSv1.2` or `TLSv1.3`.
pub fn version_name(version: rustls::ProtocolVersion) -> &'static str {
    match version {
        rustls::ProtocolVersion::TLSv1_2 => "TLSv1.2",
        rustls::ProtocolVersion::TLSv1_3 => "TLSv1.3",
        _ => "unknown",
    }
}

/// Returns the OpenSSL name of a cipher suite, which PROXY protocol consumers such
/// as haproxy and nginx expect in the SSL TLV. Suites without a known OpenSSL name
/// fall back to the IANA name rustls uses.
pub fn openssl_cipher_name(suite: rustls::SupportedCipherSuite) -> &'static str {
    use rustls::CipherSuite as Suite;
    match suite.suite() {
        Suite::TLS13_AES_128_GCM_SHA256 => "TLS_AES_128_GCM_SHA256",
        Suite::TLS13_AES_256_GCM_SHA384 => "TLS_AES_256_GCM_SHA384",
        Suite::TLS13_CHACHA20_POLY1305_SHA256 => "TLS_CHACHA20_POLY1305_SHA256",
        Suite::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256 => "ECDHE-ECDSA-AES128-GCM-SHA256",
        Suite::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384 => "ECDHE-ECDSA-AES256-GCM-SHA384",
        Suite::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256 => "ECDHE-ECDSA-CHACHA20-POLY1305",
        Suite::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256 => "ECDHE-RSA-AES128-GCM-SHA256",
        Suite::TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384 => "ECDHE-RSA-AES256-GCM-SHA384",
        Suite::TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256 => "ECDHE-RSA-CHACHA20-POLY1305",
        other => other.as_str().unwrap_or("unknown"),
    }
}
