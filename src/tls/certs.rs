//! Loading certificates and keys, and choosing one by server name.

use std::fmt;
use std::path::Path;
use std::sync::Arc;

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

use zeroize::{Zeroize, Zeroizing};

use crate::config::{CertSource, ConfigError};

/// A loaded certificate chain with its signing key.
#[derive(Debug, Clone)]
pub struct LoadedCert {
    pub key: Arc<CertifiedKey>,
    /// `Some(route)` when the certificate belongs to an SNI route.
    pub route: Option<usize>,
    /// The route's server name pattern, for SNI routes.
    pub pattern: Option<String>,
}

/// Loads `source`'s chain and key and checks that they belong together. The key
/// file's text and the decoded key are zeroized once the signing key is built.
/// NOTE: the signing library keeps its own copy of the key for signing, and the
/// buffers of its parser are freed without zeroizing.
pub fn load(source: &CertSource) -> Result<CertifiedKey, ConfigError> {
    let chain = read_chain(&source.cert).map_err(|message| error(source, &source.cert, message))?;
    let key_path = source.key.as_deref().unwrap_or(&source.cert);
    let key_error = |message: String| match &source.key_origin {
        Some(origin) => ConfigError {
            file: origin.file.clone(),
            line: origin.line,
            option: Some(origin.option.clone()).filter(|option| !option.is_empty()),
            value: Some(key_path.display().to_string()),
            message,
        },
        None => error(source, key_path, message),
    };
    let pem = std::fs::read(key_path)
        .map(Zeroizing::new)
        .map_err(|err| key_error(format!("cannot read private key: {err}")))?;
    if is_encrypted_key(&pem) {
        return Err(key_error(format!(
            "the private key is encrypted, and tlsplice cannot ask for a passphrase; decrypt it with `openssl pkey -in {0} -out {0}.plain` and use that file",
            key_path.display()
        )));
    }
    let mut key = PrivateKeyDer::from_pem_slice(&pem).map_err(|err| {
        let message = match err {
            rustls::pki_types::pem::Error::NoItemsFound if source.key.is_none() => {
                "no private key found in the certificate file; add a `key = FILE` line".to_string()
            }
            rustls::pki_types::pem::Error::NoItemsFound => {
                "no PEM private key found (expected PKCS#8, SEC1 or PKCS#1)".to_string()
            }
            other => format!("cannot read private key: {other}"),
        };
        key_error(message)
    })?;
    // Loaded by reference, so the only decoded copy is the one zeroized here.
    let signing_key = rustls::crypto::aws_lc_rs::sign::any_supported_type(&key);
    key.zeroize();
    let signing_key = signing_key.map_err(|err| {
        key_error(format!(
            "unsupported private key ({err}); use an RSA key, or an ECDSA key on P-256 or P-384, or Ed25519"
        ))
    })?;
    let certified = CertifiedKey::new(chain, signing_key);
    match certified.keys_match() {
        Ok(()) | Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::Unknown)) => {}
        Err(rustls::Error::InconsistentKeys(_)) => {
            return Err(error(
                source,
                &source.cert,
                format!(
                    "private key {} does not match the certificate; use the key the certificate was issued for",
                    key_path.display()
                ),
            ))
        }
        Err(other) => {
            return Err(error(
                source,
                &source.cert,
                format!("unusable certificate or key: {other}"),
            ))
        }
    }
    Ok(certified)
}

/// Tells whether a PEM key file's text is an encrypted key (PKCS#8 `ENCRYPTED
/// PRIVATE KEY` or a traditional key with a `Proc-Type: 4,ENCRYPTED` header).
fn is_encrypted_key(pem: &[u8]) -> bool {
    let contains = |needle: &[u8]| pem.windows(needle.len()).any(|window| window == needle);
    contains(b"-----BEGIN ENCRYPTED PRIVATE KEY-----") || contains(b"Proc-Type: 4,ENCRYPTED")
}

fn read_chain(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let chain = CertificateDer::pem_file_iter(path)
        .map_err(|err| format!("cannot read certificate: {}", pem_error(err)))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|err| format!("invalid PEM certificate: {}", pem_error(err)))?;
    if chain.is_empty() {
        return Err("no PEM certificate found; expected -----BEGIN CERTIFICATE-----".into());
    }
    Ok(chain)
}

fn pem_error(err: rustls::pki_types::pem::Error) -> String {
    match err {
        rustls::pki_types::pem::Error::Io(io) => io.to_string(),
        other => format!("{other:?}"),
    }
}

fn error(source: &CertSource, path: &Path, message: String) -> ConfigError {
    ConfigError {
        file: source.origin.file.clone(),
        line: source.origin.line,
        option: Some(source.origin.option.clone()).filter(|option| !option.is_empty()),
        value: Some(path.display().to_string()),
        message,
    }
}

/// Generates a self-signed ECDSA P-256 certificate for `localhost`, `127.0.0.1` and
/// `::1`, kept in memory only.
pub fn self_signed(provider: &CryptoProvider) -> Result<CertifiedKey, rcgen::Error> {
    let names = vec!["localhost".to_string(), "127.0.0.1".into(), "::1".into()];
    let generated = rcgen::generate_simple_self_signed(names)?;
    let key = PrivateKeyDer::try_from(generated.signing_key.serialize_der())
        .map_err(|_| rcgen::Error::CouldNotParseKeyPair)?;
    let chain = vec![generated.cert.der().clone()];
    CertifiedKey::from_der(chain, key, provider).map_err(|_| rcgen::Error::CouldNotParseKeyPair)
}

/// Picks a certificate by the client's server name.
///
/// Order: SNI routes whose pattern matches, then the listener's certificates whose
/// subject names match, then the listener's first certificate.
pub struct SniResolver {
    certs: Vec<LoadedCert>,
}

impl SniResolver {
    /// `certs` contains the listener's own certificates first, default first, then
    /// the SNI routes' certificates.
    pub fn new(certs: Vec<LoadedCert>) -> SniResolver {
        assert!(
            !certs.is_empty(),
            "a listener needs at least one certificate"
        );
        SniResolver { certs }
    }

    /// Returns the certificate chosen for `server_name`, with its route, if any.
    pub fn choose(&self, server_name: Option<&str>) -> &LoadedCert {
        let Some(name) = server_name else {
            return &self.certs[0];
        };
        let by_route = self.certs.iter().find(|cert| {
            cert.pattern
                .as_deref()
                .is_some_and(|pattern| name_matches(pattern, name))
        });
        if let Some(cert) = by_route {
            return cert;
        }
        let Ok(server_name) = ServerName::try_from(name) else {
            return &self.certs[0];
        };
        self.certs
            .iter()
            .filter(|cert| cert.route.is_none())
            .find(|cert| cert_matches(&cert.key, &server_name))
            .unwrap_or(&self.certs[0])
    }
}

impl fmt::Debug for SniResolver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SniResolver")
            .field("certs", &self.certs.len())
            .finish()
    }
}

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, client_hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.choose(client_hello.server_name()).key.clone())
    }
}

fn cert_matches(key: &CertifiedKey, name: &ServerName<'_>) -> bool {
    let Some(end_entity) = key.cert.first() else {
        return false;
    };
    webpki::EndEntityCert::try_from(end_entity)
        .is_ok_and(|cert| cert.verify_is_valid_for_subject_name(name).is_ok())
}

/// Matches a server name against a pattern: exact, case-insensitive, or
/// `*.example.com`, where `*` stands for exactly one label.
pub fn name_matches(pattern: &str, name: &str) -> bool {
    let name = name.trim_end_matches('.');
    match pattern.strip_prefix("*.") {
        Some(suffix) => name
            .split_once('.')
            .is_some_and(|(label, rest)| !label.is_empty() && rest.eq_ignore_ascii_case(suffix)),
        None => pattern.eq_ignore_ascii_case(name),
    }
}

#[cfg(test)]
mod tests {
    use super::name_matches;

    #[test]
    fn name_patterns() {
        assert!(name_matches("www.example.com", "WWW.example.com"));
        assert!(name_matches("www.example.com", "www.example.com."));
        assert!(name_matches("*.example.com", "a.example.com"));
        assert!(!name_matches("*.example.com", "example.com"));
        assert!(!name_matches("*.example.com", "a.b.example.com"));
        assert!(!name_matches("www.example.com", "www.example.org"));
    }
}
