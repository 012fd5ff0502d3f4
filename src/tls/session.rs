//! The rustls handshake and userspace record layer for one connection.

use std::fmt;
use std::sync::{Arc, OnceLock};

use rustls::server::{ClientHello, ResolvesServerCert, UnbufferedServerConnection};
use rustls::sign::CertifiedKey;
use rustls::unbuffered::{ConnectionState, EncodeError, EncryptError, InsufficientSizeError};
use rustls::{HandshakeKind, ServerConfig};

use super::certs::SniResolver;

/// Largest TLS record on the wire: 16 KiB of payload plus header, type and tag
/// with room for TLS 1.2's explicit nonce.
pub const MAX_RECORD: usize = 16384 + 256 + 5;

/// Outcome of one call to [`TlsSession::read`].
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Progress {
    /// Bytes of the input that were processed and must be dropped by the caller.
    pub consumed: usize,
    /// The handshake finished during this call.
    pub handshake_completed: bool,
    /// The client sent close_notify; it sends no more data.
    pub peer_closed: bool,
}

/// One server-side TLS connection.
pub struct TlsSession {
    /// `None` once the connection was handed to kernel TLS.
    conn: Option<UnbufferedServerConnection>,
    /// Parameters the handshake negotiated, kept for the log after a hand-off.
    negotiated: Option<Negotiated>,
    choice: Arc<Choice>,
    handshake_done: bool,
    peer_closed: bool,
}

/// The parameters of a finished handshake.
#[derive(Debug, Clone)]
struct Negotiated {
    version: Option<rustls::ProtocolVersion>,
    suite: Option<rustls::SupportedCipherSuite>,
    alpn: Option<Vec<u8>>,
}

/// The certificate choice made for one connection, kept because the unbuffered
/// server connection does not expose the client's server name.
#[derive(Debug, Default)]
pub struct Chosen {
    pub server_name: Option<String>,
    /// The SNI route whose certificate was chosen, if any.
    pub route: Option<usize>,
}

/// A per-connection certificate resolver that records what it chose.
struct Choice {
    resolver: Arc<SniResolver>,
    chosen: OnceLock<Chosen>,
}

impl fmt::Debug for Choice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Choice")
            .field("chosen", &self.chosen)
            .finish()
    }
}

impl ResolvesServerCert for Choice {
    fn resolve(&self, client_hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let server_name = client_hello.server_name();
        let cert = self.resolver.choose(server_name);
        let _ = self.chosen.set(Chosen {
            server_name: server_name.map(str::to_string),
            route: cert.route,
        });
        Some(cert.key.clone())
    }
}

impl TlsSession {
    /// Starts a server session. `config` is the service's shared configuration;
    /// each session gets a copy with its own recording certificate resolver.
    pub fn new(
        config: &ServerConfig,
        resolver: &Arc<SniResolver>,
    ) -> Result<TlsSession, rustls::Error> {
        let choice = Arc::new(Choice {
            resolver: resolver.clone(),
            chosen: OnceLock::new(),
        });
        let mut config = config.clone();
        config.cert_resolver = choice.clone();
        Ok(TlsSession {
            conn: Some(UnbufferedServerConnection::new(Arc::new(config))?),
            negotiated: None,
            choice,
            handshake_done: false,
            peer_closed: false,
        })
    }

    /// Returns the server name the client requested and the route it selected.
    pub fn chosen(&self) -> Option<&Chosen> {
        self.choice.chosen.get()
    }

    pub fn is_handshaking(&self) -> bool {
        !self.handshake_done
    }

    /// Returns whether processing more handshake records may need a signature
    /// from the certificate's key. rustls signs while it processes the
    /// ClientHello of a full handshake and records the handshake kind in that
    /// same step. So this is true until the kind is known, and after a
    /// HelloRetryRequest, because the second ClientHello is the one that is signed for.
    pub fn may_sign(&self) -> bool {
        match &self.conn {
            Some(conn) if !self.handshake_done => matches!(
                conn.handshake_kind(),
                None | Some(HandshakeKind::FullWithHelloRetryRequest)
            ),
            _ => false,
        }
    }

    /// Moves the session out, for one [`TlsSession::read`] in a suspendable
    /// handshake step, and leaves a stand-in that fails reads and writes until
    /// [`TlsSession::restore`] puts the session back.
    pub fn lend(&mut self) -> TlsSession {
        let stand_in = TlsSession {
            conn: None,
            negotiated: None,
            choice: self.choice.clone(),
            handshake_done: self.handshake_done,
            peer_closed: self.peer_closed,
        };
        std::mem::replace(self, stand_in)
    }

    /// Puts back a session taken with [`TlsSession::lend`].
    pub fn restore(&mut self, lent: TlsSession) {
        *self = lent;
    }

    /// Processes the complete records at the start of `incoming`. Handshake
    /// messages and alerts to send are appended to `to_client`, and decrypted
    /// application data to `plaintext`. A partial record at the end is left for
    /// the caller to complete with more input.
    ///
    /// On an error, whatever alert rustls queued is still appended to `to_client`.
    pub fn read(
        &mut self,
        incoming: &mut [u8],
        to_client: &mut Vec<u8>,
        plaintext: &mut Vec<u8>,
    ) -> Result<Progress, rustls::Error> {
        let mut progress = Progress::default();
        let conn = self.conn.as_mut().ok_or_else(handed_off)?;
        loop {
            let status = conn.process_tls_records(&mut incoming[progress.consumed..]);
            let mut discard = status.discard;
            let state = match status.state {
                Ok(state) => state,
                Err(err) => {
                    drain_alert(conn, to_client);
                    return Err(err);
                }
            };
            let finished = match state {
                ConnectionState::ReadTraffic(mut traffic) => {
                    while let Some(record) = traffic.next_record() {
                        let record = record?;
                        discard += record.discard;
                        plaintext.extend_from_slice(record.payload);
                    }
                    false
                }
                ConnectionState::EncodeTlsData(mut encode) => {
                    append_with(to_client, |buf| match encode.encode(buf) {
                        Ok(written) => Ok(written),
                        Err(EncodeError::InsufficientSize(InsufficientSizeError {
                            required_size,
                        })) => Err(required_size),
                        Err(EncodeError::AlreadyEncoded) => Ok(0),
                    });
                    false
                }
                ConnectionState::TransmitTlsData(transmit) => {
                    // The bytes already sit in `to_client`, which the caller sends.
                    transmit.done();
                    false
                }
                ConnectionState::PeerClosed => {
                    self.peer_closed = true;
                    progress.peer_closed = true;
                    false
                }
                ConnectionState::WriteTraffic(_) => {
                    if !self.handshake_done {
                        self.handshake_done = true;
                        progress.handshake_completed = true;
                    }
                    true
                }
                ConnectionState::BlockedHandshake | ConnectionState::Closed => true,
                // Early data is disabled in the configuration, so rustls never
                // offers it; stop rather than spin on an unexpected state.
                _ => true,
            };
            progress.consumed += discard;
            if finished {
                return Ok(progress);
            }
        }
    }

    /// Encrypts `plaintext` into records appended to `to_client`.
    pub fn write(
        &mut self,
        plaintext: &[u8],
        to_client: &mut Vec<u8>,
    ) -> Result<(), rustls::Error> {
        self.with_write_traffic(|traffic| {
            append_with_encrypt(to_client, |buf| traffic.encrypt(plaintext, buf))
        })
    }

    /// Appends a close_notify alert to `to_client`.
    pub fn close_notify(&mut self, to_client: &mut Vec<u8>) -> Result<(), rustls::Error> {
        self.with_write_traffic(|traffic| {
            append_with_encrypt(to_client, |buf| traffic.queue_close_notify(buf))
        })
    }

    fn with_write_traffic(
        &mut self,
        write: impl FnOnce(
            &mut rustls::unbuffered::WriteTraffic<'_, rustls::server::ServerConnectionData>,
        ) -> Result<(), rustls::Error>,
    ) -> Result<(), rustls::Error> {
        let conn = self.conn.as_mut().ok_or_else(handed_off)?;
        let status = conn.process_tls_records(&mut []);
        match status.state? {
            ConnectionState::WriteTraffic(mut traffic) => write(&mut traffic),
            other => Err(rustls::Error::General(format!(
                "cannot write application data in state {other:?}"
            ))),
        }
    }

    pub fn alpn_protocol(&self) -> Option<&[u8]> {
        match (&self.conn, &self.negotiated) {
            (Some(conn), _) => conn.alpn_protocol(),
            (None, Some(negotiated)) => negotiated.alpn.as_deref(),
            (None, None) => None,
        }
    }

    pub fn protocol_version(&self) -> Option<rustls::ProtocolVersion> {
        match (&self.conn, &self.negotiated) {
            (Some(conn), _) => conn.protocol_version(),
            (None, negotiated) => negotiated.as_ref().and_then(|n| n.version),
        }
    }

    pub fn cipher_suite(&self) -> Option<rustls::SupportedCipherSuite> {
        match (&self.conn, &self.negotiated) {
            (Some(conn), _) => conn.negotiated_cipher_suite(),
            (None, negotiated) => negotiated.as_ref().and_then(|n| n.suite),
        }
    }

    /// Takes the rustls connection out for a hand-off to kernel TLS, keeping the
    /// negotiated version, suite and ALPN protocol for the log. Later reads and
    /// writes fail, and a second call returns `None`.
    pub fn take_for_kernel(&mut self) -> Option<UnbufferedServerConnection> {
        let conn = self.conn.take()?;
        self.negotiated = Some(Negotiated {
            version: conn.protocol_version(),
            suite: conn.negotiated_cipher_suite(),
            alpn: conn.alpn_protocol().map(<[u8]>::to_vec),
        });
        Some(conn)
    }
}

fn handed_off() -> rustls::Error {
    rustls::Error::General("the TLS session was handed to kernel TLS".into())
}
/// After an error, appends the alert rustls queued, if any.
fn drain_alert(conn: &mut UnbufferedServerConnection, to_client: &mut Vec<u8>) {
    for _ in 0..4 {
        let status = conn.process_tls_records(&mut []);
        match status.state {
            Ok(ConnectionState::EncodeTlsData(mut encode)) => {
                append_with(to_client, |buf| match encode.encode(buf) {
                    Ok(written) => Ok(written),
                    Err(EncodeError::InsufficientSize(InsufficientSizeError { required_size })) => {
                        Err(required_size)
                    }
                    Err(EncodeError::AlreadyEncoded) => Ok(0),
                });
            }
            Ok(ConnectionState::TransmitTlsData(transmit)) => transmit.done(),
            _ => return,
        }
    }
}

/// Appends what `write` produces to `out`, growing the spare room until it fits.
/// `write` returns the bytes written or the size it needs.
fn append_with(out: &mut Vec<u8>, mut write: impl FnMut(&mut [u8]) -> Result<usize, usize>) {
    let start = out.len();
    let mut room = 4096;
    loop {
        out.resize(start + room, 0);
        match write(&mut out[start..]) {
            Ok(written) => {
                out.truncate(start + written);
                return;
            }
            Err(required) => room = required.max(room + 1),
        }
    }
}

fn append_with_encrypt(
    out: &mut Vec<u8>,
    mut encrypt: impl FnMut(&mut [u8]) -> Result<usize, EncryptError>,
) -> Result<(), rustls::Error> {
    let start = out.len();
    // A first guess that fits all but unusual records: the payload plus 64 bytes
    // of header and tag per record is filled in by the encrypt call below.
    let mut room = 64;
    loop {
        out.resize(start + room, 0);
        match encrypt(&mut out[start..]) {
            Ok(written) => {
                out.truncate(start + written);
                return Ok(());
            }
            Err(EncryptError::InsufficientSize(InsufficientSizeError { required_size })) => {
                room = required_size.max(room + 1);
            }
            Err(EncryptError::EncryptExhausted) => {
                out.truncate(start);
                return Err(rustls::Error::EncryptError);
            }
        }
    }
}
