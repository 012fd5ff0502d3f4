//! Kernel TLS (kTLS) offload after a rustls handshake.
//!
//! This module moves record encryption of an established connection into the
//! Linux kernel, so that the relay can splice(2) payload bytes between the client
//! socket and the backend socket without copying them into user space. It does
//! five things:
//!
//! 1. [`probe`] checks once whether the kernel has the tls ULP, which ciphers it
//!    can offload and whether it can replace keys on a live socket (re-key).
//! 2. [`into_kernel_connection`] turns a finished [`UnbufferedServerConnection`]
//!    into its traffic secrets and a [`KernelConnection`], and
//!    [`offload`] installs those secrets on the socket (`TCP_ULP`, `TLS_TX`,
//!    `TLS_RX`).
//! 3. [`read_control_record`] reads and classifies the non-data record that
//!    stopped a splice: close_notify, another alert, a TLS 1.3 KeyUpdate or
//!    something else.
//! 4. [`update_rx_key`], [`send_key_update`] and [`handle_key_update`] follow a
//!    TLS 1.3 KeyUpdate, or report [`RekeyError::KernelCannotRekey`] on kernels
//!    that cannot install a second key (Linux 6.1 is one).
//! 5. [`RecordBudget`] counts records sent under one key against the cipher
//!    suite's confidentiality limit.
//!
//! Everything else is the caller's job:
//! - drive the handshake until rustls returns `WriteTraffic`, transmit all
//!   pending TLS output (TLS 1.3 session tickets included) and check that no
//!   unprocessed bytes remain in the incoming buffer before calling
//!   [`into_kernel_connection`] (a partial record there means: read more first);
//! - forward the plaintext rustls already decrypted during the handshake to the
//!   backend before anything read from the kernel, exactly once;
//! - set `ServerConfig::enable_secret_extraction = true`;
//! - close the connection when any function here returns an error; after a
//!   failed [`offload`] the socket may be half configured and is unusable.
//!
//! Every function works on non-blocking sockets and returns `WouldBlock` errors
//! unchanged, so an event loop can retry it. None of them starts a thread.
//! Nothing here logs; the caller logs the returned errors, which never contain
//! key material.

use std::error::Error as StdError;
use std::fmt;
use std::io;
use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::os::fd::{AsFd, BorrowedFd};
use std::sync::OnceLock;

use rustls::kernel::KernelConnection;
use rustls::server::{ServerConnectionData, UnbufferedServerConnection};
use rustls::{
    CipherSuite, ConnectionTrafficSecrets, ExtractedSecrets, ProtocolVersion, SupportedCipherSuite,
};

use crate::sys::ktls::{self as sys, CryptoInfo, CryptoInfoHeader, TlsDirection};

/// TLS record content type of an alert.
pub const RECORD_TYPE_ALERT: u8 = 21;
/// TLS record content type of a handshake message.
pub const RECORD_TYPE_HANDSHAKE: u8 = 22;
/// TLS record content type of application data.
pub const RECORD_TYPE_APPLICATION_DATA: u8 = 23;

/// Handshake message type of a TLS 1.3 KeyUpdate.
const HANDSHAKE_TYPE_KEY_UPDATE: u8 = 24;
/// Alert level "warning"; close_notify is sent at this level.
const ALERT_LEVEL_WARNING: u8 = 1;
/// Alert level "fatal".
const ALERT_LEVEL_FATAL: u8 = 2;
/// Alert description close_notify.
const ALERT_CLOSE_NOTIFY: u8 = 0;

/// Maximum plaintext length of one TLS record (RFC 8446, section 5.1).
pub const MAX_RECORD_PLAINTEXT: usize = 16 * 1024;

/// Buffer length for [`read_control_record`] that fits the plaintext of any record.
pub const CONTROL_RECORD_BUFFER_LEN: usize = MAX_RECORD_PLAINTEXT;

/// A cipher the kernel may offload.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum KernelCipher {
    AesGcm128,
    AesGcm256,
    Chacha20Poly1305,
}

impl KernelCipher {
    /// All ciphers, in the order [`probe`] tries them.
    pub const ALL: [KernelCipher; 3] = [Self::AesGcm128, Self::AesGcm256, Self::Chacha20Poly1305];

    /// Returns the kTLS cipher that a rustls cipher suite uses, or `None` when the
    /// kernel has no matching cipher.
    pub fn for_suite(suite: CipherSuite) -> Option<Self> {
        match suite {
            CipherSuite::TLS13_AES_128_GCM_SHA256
            | CipherSuite::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256
            | CipherSuite::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256 => Some(Self::AesGcm128),
            CipherSuite::TLS13_AES_256_GCM_SHA384
            | CipherSuite::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384
            | CipherSuite::TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384 => Some(Self::AesGcm256),
            CipherSuite::TLS13_CHACHA20_POLY1305_SHA256
            | CipherSuite::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256
            | CipherSuite::TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256 => {
                Some(Self::Chacha20Poly1305)
            }
            _ => None,
        }
    }

    /// Returns the cipher's name for logs.
    pub fn name(self) -> &'static str {
        match self {
            Self::AesGcm128 => "aes-128-gcm",
            Self::AesGcm256 => "aes-256-gcm",
            Self::Chacha20Poly1305 => "chacha20-poly1305",
        }
    }
}

/// Kernel TLS features of the running kernel, as found by [`probe`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KernelTlsSupport {
    /// Reason kTLS is unavailable (the failed step and errno), or `None` when
    /// the tls ULP could be attached.
    pub unavailable: Option<String>,
    /// Ciphers for which `TLS_TX` and `TLS_RX` both succeeded.
    pub ciphers: Vec<KernelCipher>,
    /// Whether the kernel accepted a second `TLS_TX` on a TLS 1.3 socket, which
    /// kernels with TLS 1.3 re-key support do.
    // NOTE: only the transmit side is probed, because a second `TLS_RX` is
    // accepted only after a KeyUpdate arrives. Receive re-key is assumed to
    // come with transmit re-key.
    pub rekey: bool,
}

impl KernelTlsSupport {
    /// Returns whether the tls ULP is available.
    pub fn is_available(&self) -> bool {
        self.unavailable.is_none()
    }

    /// Returns whether `cipher` can be offloaded.
    pub fn supports(&self, cipher: KernelCipher) -> bool {
        self.ciphers.contains(&cipher)
    }
}

impl fmt::Display for KernelTlsSupport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(reason) = &self.unavailable {
            return write!(f, "kernel TLS unavailable: {reason}");
        }

        write!(f, "kernel TLS available, ciphers:")?;
        if self.ciphers.is_empty() {
            write!(f, " none")?;
        }
        for cipher in &self.ciphers {
            write!(f, " {}", cipher.name())?;
        }
        let rekey = if self.rekey {
            "supported"
        } else {
            "not supported"
        };
        write!(f, ", TLS 1.3 re-key {rekey}")
    }
}

/// Probes the kernel once and returns the cached result.
///
/// The probe opens connected TCP socket pairs on 127.0.0.1, attaches the tls ULP
/// and installs dummy TLS 1.3 keys for each cipher. It blocks for the few
/// loopback syscalls this takes, so call it at start-up, not from the event loop.
pub fn probe() -> &'static KernelTlsSupport {
    static SUPPORT: OnceLock<KernelTlsSupport> = OnceLock::new();
    SUPPORT.get_or_init(probe_uncached)
}

fn probe_uncached() -> KernelTlsSupport {
    let mut support = KernelTlsSupport::default();
    for cipher in KernelCipher::ALL {
        match probe_cipher(cipher) {
            Ok(ProbeOutcome { rekey }) => {
                support.ciphers.push(cipher);
                support.rekey |= rekey;
            }
            Err(ProbeFailure::Ulp(reason)) => {
                support.unavailable = Some(reason);
                support.ciphers.clear();
                support.rekey = false;
                break;
            }
            Err(ProbeFailure::Cipher) => {}
        }
    }
    support
}

struct ProbeOutcome {
    rekey: bool,
}

enum ProbeFailure {
    /// The socket pair or the tls ULP failed; kTLS is unusable.
    Ulp(String),
    /// The kernel rejected this cipher's keys.
    Cipher,
}

fn probe_cipher(cipher: KernelCipher) -> Result<ProbeOutcome, ProbeFailure> {
    let (client, _server) = connected_loopback_pair()
        .map_err(|err| ProbeFailure::Ulp(format!("loopback socket pair failed: {err}")))?;
    sys::set_tcp_ulp_tls(client.as_fd())
        .map_err(|err| ProbeFailure::Ulp(format!("setsockopt TCP_ULP \"tls\" failed: {err}")))?;

    let info = dummy_crypto_info(cipher);
    sys::set_crypto_info(client.as_fd(), TlsDirection::Transmit, &info)
        .map_err(|_| ProbeFailure::Cipher)?;
    sys::set_crypto_info(client.as_fd(), TlsDirection::Receive, &info)
        .map_err(|_| ProbeFailure::Cipher)?;

    let rekey = sys::set_crypto_info(client.as_fd(), TlsDirection::Transmit, &info).is_ok();
    Ok(ProbeOutcome { rekey })
}

fn connected_loopback_pair() -> io::Result<(TcpStream, TcpStream)> {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?;
    let client = TcpStream::connect(listener.local_addr()?)?;
    let (server, _) = listener.accept()?;
    Ok((client, server))
}

fn dummy_crypto_info(cipher: KernelCipher) -> CryptoInfo {
    let key_len = match cipher {
        KernelCipher::AesGcm128 => 16,
        KernelCipher::AesGcm256 | KernelCipher::Chacha20Poly1305 => 32,
    };
    build_crypto_info(
        ProtocolVersion::TLSv1_3,
        0,
        cipher,
        &[0; 32][..key_len],
        &[0; 12],
    )
    .expect("dummy key and IV lengths match the cipher")
}

/// Returns whether a negotiated cipher suite can be offloaded to this kernel.
pub fn can_offload(suite: SupportedCipherSuite, support: &KernelTlsSupport) -> bool {
    support.is_available()
        && KernelCipher::for_suite(suite.suite()).is_some_and(|cipher| support.supports(cipher))
}

/// Error from [`offload`] and [`crypto_info`]: the failed step and its errno.
#[derive(Debug)]
#[non_exhaustive]
pub enum OffloadError {
    /// The protocol version is neither TLS 1.2 nor TLS 1.3.
    UnsupportedVersion(ProtocolVersion),
    /// rustls returned secrets for an AEAD that has no kTLS mapping here.
    UnsupportedCipher,
    /// rustls returned a key or IV of unexpected length.
    InvalidSecretLength,
    /// setsockopt `TCP_ULP "tls"` failed (`ENOENT`: no tls module).
    AttachUlp(io::Error),
    /// setsockopt `TLS_TX` failed.
    SetTransmitKey(io::Error),
    /// setsockopt `TLS_RX` failed.
    SetReceiveKey(io::Error),
}

impl fmt::Display for OffloadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::UnsupportedVersion(version) => {
                write!(
                    f,
                    "kernel TLS offload failed: unsupported protocol version {version:?}"
                )
            }
            Self::UnsupportedCipher => {
                write!(
                    f,
                    "kernel TLS offload failed: the negotiated cipher has no kernel mapping"
                )
            }
            Self::InvalidSecretLength => {
                write!(
                    f,
                    "kernel TLS offload failed: invalid key or IV length from rustls"
                )
            }
            Self::AttachUlp(err) => write!(f, "setsockopt TCP_ULP \"tls\" failed: {err}"),
            Self::SetTransmitKey(err) => write!(f, "setsockopt TLS_TX failed: {err}"),
            Self::SetReceiveKey(err) => write!(f, "setsockopt TLS_RX failed: {err}"),
        }
    }
}

impl StdError for OffloadError {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        match self {
            Self::AttachUlp(err) | Self::SetTransmitKey(err) | Self::SetReceiveKey(err) => {
                Some(err)
            }
            _ => None,
        }
    }
}

/// Builds the kernel crypto info for one direction from rustls secrets and the
/// sequence number of the next record.
pub fn crypto_info(
    version: ProtocolVersion,
    sequence: u64,
    secrets: &ConnectionTrafficSecrets,
) -> Result<CryptoInfo, OffloadError> {
    let (cipher, key, iv) = match secrets {
        ConnectionTrafficSecrets::Aes128Gcm { key, iv } => (KernelCipher::AesGcm128, key, iv),
        ConnectionTrafficSecrets::Aes256Gcm { key, iv } => (KernelCipher::AesGcm256, key, iv),
        ConnectionTrafficSecrets::Chacha20Poly1305 { key, iv } => {
            (KernelCipher::Chacha20Poly1305, key, iv)
        }
        _ => return Err(OffloadError::UnsupportedCipher),
    };
    build_crypto_info(version, sequence, cipher, key.as_ref(), iv.as_ref())
}

fn build_crypto_info(
    version: ProtocolVersion,
    sequence: u64,
    cipher: KernelCipher,
    key: &[u8],
    iv: &[u8],
) -> Result<CryptoInfo, OffloadError> {
    let version = match version {
        ProtocolVersion::TLSv1_2 => sys::TLS_1_2_VERSION,
        ProtocolVersion::TLSv1_3 => sys::TLS_1_3_VERSION,
        other => return Err(OffloadError::UnsupportedVersion(other)),
    };
    let rec_seq = sequence.to_be_bytes();

    // For AES-GCM, rustls's 12-byte IV is the kernel's 4-byte salt followed by
    // its 8-byte IV. ChaCha20-Poly1305 takes all 12 bytes as the IV.
    let info = match cipher {
        KernelCipher::AesGcm128 => {
            let (salt, iv) = split_gcm_iv(iv)?;
            CryptoInfo::AesGcm128(sys::AesGcm128CryptoInfo {
                header: CryptoInfoHeader {
                    version,
                    cipher_type: sys::TLS_CIPHER_AES_GCM_128,
                },
                iv,
                key: fixed(key)?,
                salt,
                rec_seq,
            })
        }
        KernelCipher::AesGcm256 => {
            let (salt, iv) = split_gcm_iv(iv)?;
            CryptoInfo::AesGcm256(sys::AesGcm256CryptoInfo {
                header: CryptoInfoHeader {
                    version,
                    cipher_type: sys::TLS_CIPHER_AES_GCM_256,
                },
                iv,
                key: fixed(key)?,
                salt,
                rec_seq,
            })
        }
        KernelCipher::Chacha20Poly1305 => {
            CryptoInfo::Chacha20Poly1305(sys::Chacha20Poly1305CryptoInfo {
                header: CryptoInfoHeader {
                    version,
                    cipher_type: sys::TLS_CIPHER_CHACHA20_POLY1305,
                },
                iv: fixed(iv)?,
                key: fixed(key)?,
                rec_seq,
            })
        }
    };
    Ok(info)
}

fn split_gcm_iv(iv: &[u8]) -> Result<([u8; 4], [u8; 8]), OffloadError> {
    if iv.len() != 12 {
        return Err(OffloadError::InvalidSecretLength);
    }
    let (salt, explicit) = iv.split_at(4);
    Ok((fixed(salt)?, fixed(explicit)?))
}

fn fixed<const N: usize>(bytes: &[u8]) -> Result<[u8; N], OffloadError> {
    bytes
        .try_into()
        .map_err(|_| OffloadError::InvalidSecretLength)
}

/// Installs the traffic secrets on a connected socket: attaches the tls ULP,
/// then sets `TLS_TX` and `TLS_RX`. From then on the kernel encrypts what is
/// written to the socket and decrypts what is read from it.
///
/// `version` is [`KernelConnection::protocol_version`]. On error the caller must
/// close the socket.
pub fn offload(
    fd: BorrowedFd<'_>,
    version: ProtocolVersion,
    secrets: &ExtractedSecrets,
) -> Result<(), OffloadError> {
    attach_ulp(fd)?;
    install_keys(fd, version, secrets)
}

/// Attaches the tls ULP, the first step of [`offload`]. A caller that wants to
/// keep its rustls session when the socket cannot take the ULP calls this before
/// [`into_kernel_connection`] and [`install_keys`] after it. The kernel accepts
/// the ULP only on an established socket, so a peer that already sent its FIN
/// makes this fail with `ENOTCONN`.
pub fn attach_ulp(fd: BorrowedFd<'_>) -> Result<(), OffloadError> {
    sys::set_tcp_ulp_tls(fd).map_err(OffloadError::AttachUlp)
}

/// Sets `TLS_TX` and `TLS_RX` on a socket that already has the tls ULP, the
/// second step of [`offload`]. On error the caller must close the socket.
pub fn install_keys(
    fd: BorrowedFd<'_>,
    version: ProtocolVersion,
    secrets: &ExtractedSecrets,
) -> Result<(), OffloadError> {
    let (tx_sequence, tx_secrets) = &secrets.tx;
    let (rx_sequence, rx_secrets) = &secrets.rx;
    let transmit = crypto_info(version, *tx_sequence, tx_secrets)?;
    let receive = crypto_info(version, *rx_sequence, rx_secrets)?;

    sys::set_crypto_info(fd, TlsDirection::Transmit, &transmit)
        .map_err(OffloadError::SetTransmitKey)?;
    sys::set_crypto_info(fd, TlsDirection::Receive, &receive)
        .map_err(OffloadError::SetReceiveKey)?;
    Ok(())
}

/// Error from [`into_kernel_connection`].
#[derive(Debug)]
#[non_exhaustive]
pub enum HandoffError {
    /// The server config does not set `enable_secret_extraction`.
    SecretExtractionDisabled,
    /// The handshake has not reached `WriteTraffic` yet.
    HandshakeNotComplete,
    /// rustls still has TLS records that were not transmitted.
    PendingOutput,
    /// Another rustls error.
    Rustls(rustls::Error),
}

impl fmt::Display for HandoffError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::SecretExtractionDisabled => write!(
                f,
                "kernel TLS handoff failed: secret extraction is disabled in the server config"
            ),
            Self::HandshakeNotComplete => {
                write!(
                    f,
                    "kernel TLS handoff failed: the handshake is not complete"
                )
            }
            Self::PendingOutput => write!(
                f,
                "kernel TLS handoff failed: rustls has TLS records that were not transmitted"
            ),
            Self::Rustls(err) => write!(f, "kernel TLS handoff failed: {err}"),
        }
    }
}

impl StdError for HandoffError {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        match self {
            Self::Rustls(err) => Some(err),
            _ => None,
        }
    }
}

/// Extracts the traffic secrets and the [`KernelConnection`] from a connection
/// whose handshake reached `WriteTraffic` with all output transmitted.
pub fn into_kernel_connection(
    conn: UnbufferedServerConnection,
) -> Result<(ExtractedSecrets, KernelConnection<ServerConnectionData>), HandoffError> {
    conn.dangerous_into_kernel_connection()
        .map_err(|err| match err {
            rustls::Error::HandshakeNotComplete => HandoffError::HandshakeNotComplete,
            // NOTE: rustls 0.23 reports these two cases only as `Error::General`
            // with fixed text, so this match distinguishes them by that text.
            rustls::Error::General(text) if text.contains("extraction is disabled") => {
                HandoffError::SecretExtractionDisabled
            }
            rustls::Error::General(text) if text.contains("buffered TLS records") => {
                HandoffError::PendingOutput
            }
            other => HandoffError::Rustls(other),
        })
}

/// A record read from a kTLS socket by [`read_control_record`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ControlRecord {
    /// Application data in the first `len` bytes of the buffer, to be forwarded.
    ApplicationData { len: usize },
    /// The peer's close_notify alert: it sends no more data.
    CloseNotify,
    /// Any other alert. The connection ends either way, and `is_fatal` returns
    /// whether the peer reported an error.
    Alert { level: u8, description: u8 },
    /// A TLS 1.3 KeyUpdate. `update_requested` means the peer requests that we
    /// update our keys too.
    KeyUpdate { update_requested: bool },
    /// Any other record, such as a handshake message other than one KeyUpdate.
    Other { record_type: u8, len: usize },
    /// The peer closed the TCP stream without close_notify.
    EndOfStream,
}

impl ControlRecord {
    /// Returns whether this is an alert at level fatal.
    pub fn is_fatal(&self) -> bool {
        matches!(self, Self::Alert { level, .. } if *level == ALERT_LEVEL_FATAL)
    }
}

/// Reads one record with recvmsg(2) and classifies it. Call it when a splice
/// from the kTLS socket fails with `EINVAL` (the next record is not application
/// data) or `EIO`. `buf` must hold [`CONTROL_RECORD_BUFFER_LEN`] bytes so a
/// whole record fits. Returns `WouldBlock` unchanged.
pub fn read_control_record(fd: BorrowedFd<'_>, buf: &mut [u8]) -> io::Result<ControlRecord> {
    let (len, record_type) = sys::recv_record(fd, buf)?;
    let Some(record_type) = record_type else {
        return if len == 0 {
            Ok(ControlRecord::EndOfStream)
        } else {
            Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "recvmsg returned data without a TLS record type; is kernel TLS enabled on the socket?",
            ))
        };
    };
    Ok(classify_record(record_type, &buf[..len]))
}

/// Classifies a decrypted record by its content type and plaintext.
pub fn classify_record(record_type: u8, payload: &[u8]) -> ControlRecord {
    match (record_type, payload) {
        (RECORD_TYPE_APPLICATION_DATA, _) => ControlRecord::ApplicationData { len: payload.len() },
        (RECORD_TYPE_ALERT, [ALERT_LEVEL_WARNING, ALERT_CLOSE_NOTIFY]) => {
            ControlRecord::CloseNotify
        }
        (RECORD_TYPE_ALERT, &[level, description]) => ControlRecord::Alert { level, description },
        (RECORD_TYPE_HANDSHAKE, &[HANDSHAKE_TYPE_KEY_UPDATE, 0, 0, 1, request @ (0 | 1)]) => {
            ControlRecord::KeyUpdate {
                update_requested: request == 1,
            }
        }
        _ => ControlRecord::Other {
            record_type,
            len: payload.len(),
        },
    }
}

/// Sends a close_notify alert through a kTLS socket. Returns `WouldBlock`
/// unchanged; nothing was sent then.
pub fn send_close_notify(fd: BorrowedFd<'_>) -> io::Result<()> {
    send_whole_record(
        fd,
        RECORD_TYPE_ALERT,
        &[ALERT_LEVEL_WARNING, ALERT_CLOSE_NOTIFY],
    )
}

fn send_whole_record(fd: BorrowedFd<'_>, record_type: u8, payload: &[u8]) -> io::Result<()> {
    let sent = sys::send_record(fd, record_type, payload)?;
    if sent != payload.len() {
        return Err(io::Error::new(
            io::ErrorKind::WriteZero,
            format!(
                "sendmsg sent {sent} of {} bytes of a control record",
                payload.len()
            ),
        ));
    }
    Ok(())
}

/// Error from [`update_rx_key`], [`send_key_update`] and [`handle_key_update`].
#[derive(Debug)]
#[non_exhaustive]
pub enum RekeyError {
    /// The kernel cannot replace the keys of a kTLS socket (Linux before TLS 1.3
    /// re-key support, such as 6.1). Close the connection.
    KernelCannotRekey,
    /// The connection is not TLS 1.3, so KeyUpdate is not allowed.
    NotTls13,
    /// rustls failed to derive the next secret.
    Rustls(rustls::Error),
    /// The new secret could not be converted for the kernel.
    Offload(OffloadError),
    /// sendmsg of our KeyUpdate failed. On `WouldBlock` nothing was sent and
    /// [`send_key_update`] may be called again.
    SendKeyUpdate(io::Error),
}

impl RekeyError {
    /// Returns whether the error is a `WouldBlock` that a retry after POLLOUT resolves.
    pub fn is_would_block(&self) -> bool {
        matches!(self, Self::SendKeyUpdate(err) if err.kind() == io::ErrorKind::WouldBlock)
    }
}

impl fmt::Display for RekeyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::KernelCannotRekey => write!(
                f,
                "key update failed: this kernel cannot replace kernel TLS keys; closing the connection"
            ),
            Self::NotTls13 => write!(f, "key update failed: the connection is not TLS 1.3"),
            Self::Rustls(err) => write!(f, "key update failed: {err}"),
            Self::Offload(err) => write!(f, "key update failed: {err}"),
            Self::SendKeyUpdate(err) => write!(f, "key update failed: sendmsg KeyUpdate: {err}"),
        }
    }
}

impl StdError for RekeyError {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        match self {
            Self::Rustls(err) => Some(err),
            Self::Offload(err) => Some(err),
            Self::SendKeyUpdate(err) => Some(err),
            _ => None,
        }
    }
}

fn check_rekey_possible(
    conn: &KernelConnection<ServerConnectionData>,
    support: &KernelTlsSupport,
) -> Result<ProtocolVersion, RekeyError> {
    let version = conn.protocol_version();
    if version != ProtocolVersion::TLSv1_3 {
        return Err(RekeyError::NotTls13);
    }
    if !support.rekey {
        return Err(RekeyError::KernelCannotRekey);
    }
    Ok(version)
}

fn set_key(
    fd: BorrowedFd<'_>,
    direction: TlsDirection,
    info: &CryptoInfo,
) -> Result<(), RekeyError> {
    sys::set_crypto_info(fd, direction, info).map_err(|err| {
        // Kernels without re-key support reject a second key with EBUSY.
        if err.raw_os_error() == Some(libc::EBUSY) {
            return RekeyError::KernelCannotRekey;
        }
        match direction {
            TlsDirection::Transmit => RekeyError::Offload(OffloadError::SetTransmitKey(err)),
            TlsDirection::Receive => RekeyError::Offload(OffloadError::SetReceiveKey(err)),
        }
    })
}

/// Installs the peer's next receive key after it sent a KeyUpdate.
// NOTE: the success path has only run where the kernel rejects a second key
// (Linux 6.1), so it is untested on kernels with TLS 1.3 re-key support.
pub fn update_rx_key(
    fd: BorrowedFd<'_>,
    conn: &mut KernelConnection<ServerConnectionData>,
    support: &KernelTlsSupport,
) -> Result<(), RekeyError> {
    let version = check_rekey_possible(conn, support)?;
    let (sequence, secrets) = conn.update_rx_secret().map_err(RekeyError::Rustls)?;
    let info = crypto_info(version, sequence, &secrets).map_err(RekeyError::Offload)?;
    set_key(fd, TlsDirection::Receive, &info)
}

/// Sends our KeyUpdate under the current key, then installs the next transmit
/// key. `request_peer_update` requests that the peer update its keys as well (for a
/// key update we start, as when [`RecordBudget`] runs out). The caller must not
/// write to the socket between a `WouldBlock` from this function and its retry.
pub fn send_key_update(
    fd: BorrowedFd<'_>,
    conn: &mut KernelConnection<ServerConnectionData>,
    request_peer_update: bool,
    support: &KernelTlsSupport,
) -> Result<(), RekeyError> {
    let version = check_rekey_possible(conn, support)?;
    let message = [
        HANDSHAKE_TYPE_KEY_UPDATE,
        0,
        0,
        1,
        u8::from(request_peer_update),
    ];
    send_whole_record(fd, RECORD_TYPE_HANDSHAKE, &message).map_err(RekeyError::SendKeyUpdate)?;

    let (sequence, secrets) = conn.update_tx_secret().map_err(RekeyError::Rustls)?;
    let info = crypto_info(version, sequence, &secrets).map_err(RekeyError::Offload)?;
    set_key(fd, TlsDirection::Transmit, &info)
}

/// Handles a KeyUpdate received from the peer: installs the next receive key
/// and, when the peer requested it, sends our own KeyUpdate and installs
/// the next transmit key.
///
/// If sending ours returns `WouldBlock` ([`RekeyError::is_would_block`]), the
/// receive key is already installed; retry with [`send_key_update`] only, with
/// `request_peer_update` false.
pub fn handle_key_update(
    fd: BorrowedFd<'_>,
    conn: &mut KernelConnection<ServerConnectionData>,
    update_requested: bool,
    support: &KernelTlsSupport,
) -> Result<(), RekeyError> {
    update_rx_key(fd, conn, support)?;
    if update_requested {
        send_key_update(fd, conn, false, support)?;
    }
    Ok(())
}

/// Action on the confidentiality limit, returned by [`RecordBudget::action`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeyLimitAction {
    /// Keep sending under the current key.
    Continue,
    /// Call [`send_key_update`] before sending more.
    Rekey,
    /// The limit is near and the key cannot be replaced: close the connection.
    Close,
}

/// A count of records sent under one transmit key, compared with the cipher
/// suite's confidentiality limit.
///
/// The kernel builds the records, so the count is an estimate: each send or
/// splice call of `n` bytes is counted as `ceil(n / 16384)` records.
// NOTE: the kernel may end a record early, for example when the socket's send
// buffer is full, so the true count can be higher. The reserve in `action`
// covers that case only as an estimate.
#[derive(Clone, Debug)]
pub struct RecordBudget {
    limit: u64,
    sent: u64,
}

impl RecordBudget {
    /// Divisor of the limit that sets the reserve: [`RecordBudget::action`]
    /// requests a re-key once `limit - limit / RESERVE_DIVISOR` records were
    /// sent, which leaves room for records already queued in the relay.
    pub const RESERVE_DIVISOR: u64 = 16;

    /// Creates a budget for `suite` with `sent` records already sent under the current
    /// key; at handoff that is the transmit sequence number `ExtractedSecrets::tx.0`.
    pub fn new(suite: SupportedCipherSuite, sent: u64) -> Self {
        let limit = match suite {
            SupportedCipherSuite::Tls12(suite) => suite.common.confidentiality_limit,
            SupportedCipherSuite::Tls13(suite) => suite.common.confidentiality_limit,
        };
        Self { limit, sent }
    }

    /// Counts one send or splice call that moved `bytes` into the kTLS socket.
    pub fn count_send(&mut self, bytes: usize) {
        let records = bytes.div_ceil(MAX_RECORD_PLAINTEXT) as u64;
        self.sent = self.sent.saturating_add(records);
    }

    /// Returns the records counted under the current key.
    pub fn records_sent(&self) -> u64 {
        self.sent
    }

    /// Returns the suite's confidentiality limit in records.
    pub fn limit(&self) -> u64 {
        self.limit
    }

    /// Returns whether to keep sending, re-key now or close now. `can_rekey` is true
    /// for TLS 1.3 on a kernel with re-key support.
    pub fn action(&self, can_rekey: bool) -> KeyLimitAction {
        let threshold = self.limit - self.limit / Self::RESERVE_DIVISOR;
        if self.sent < threshold {
            KeyLimitAction::Continue
        } else if can_rekey {
            KeyLimitAction::Rekey
        } else {
            KeyLimitAction::Close
        }
    }

    /// Starts counting again after a new transmit key was installed.
    pub fn reset(&mut self) {
        self.sent = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classify_record_close_notify() {
        assert_eq!(classify_record(21, &[1, 0]), ControlRecord::CloseNotify);
    }

    #[test]
    fn classify_record_fatal_alert() {
        let record = classify_record(21, &[2, 40]);
        assert_eq!(
            record,
            ControlRecord::Alert {
                level: 2,
                description: 40
            }
        );
        assert!(record.is_fatal());
    }

    #[test]
    fn classify_record_key_update() {
        assert_eq!(
            classify_record(22, &[24, 0, 0, 1, 1]),
            ControlRecord::KeyUpdate {
                update_requested: true
            }
        );
        assert_eq!(
            classify_record(22, &[24, 0, 0, 1, 0]),
            ControlRecord::KeyUpdate {
                update_requested: false
            }
        );
    }

    #[test]
    fn classify_record_two_key_updates_is_other() {
        assert_eq!(
            classify_record(22, &[24, 0, 0, 1, 0, 24, 0, 0, 1, 0]),
            ControlRecord::Other {
                record_type: 22,
                len: 10
            }
        );
    }

    #[test]
    fn classify_record_invalid_key_update_request() {
        assert_eq!(
            classify_record(22, &[24, 0, 0, 1, 2]),
            ControlRecord::Other {
                record_type: 22,
                len: 5
            }
        );
    }

    #[test]
    fn crypto_info_splits_gcm_iv() {
        let iv: [u8; 12] = [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12];
        let info = build_crypto_info(
            ProtocolVersion::TLSv1_2,
            0x0102,
            KernelCipher::AesGcm128,
            &[7u8; 16],
            &iv,
        )
        .unwrap();
        let CryptoInfo::AesGcm128(info) = &info else {
            panic!("expected AES-128-GCM crypto info");
        };
        assert_eq!(info.header.version, 0x0303);
        assert_eq!(info.header.cipher_type, 51);
        assert_eq!(info.salt, [1, 2, 3, 4]);
        assert_eq!(info.iv, [5, 6, 7, 8, 9, 10, 11, 12]);
        assert_eq!(info.key, [7u8; 16]);
        assert_eq!(info.rec_seq, [0, 0, 0, 0, 0, 0, 1, 2]);
    }

    #[test]
    fn crypto_info_rejects_wrong_key_length() {
        let result = build_crypto_info(
            ProtocolVersion::TLSv1_3,
            0,
            KernelCipher::AesGcm256,
            &[7u8; 16],
            &[0u8; 12],
        );
        assert!(matches!(result, Err(OffloadError::InvalidSecretLength)));
    }

    #[test]
    fn record_budget_counts_whole_records() {
        let suite = rustls::crypto::aws_lc_rs::cipher_suite::TLS13_AES_128_GCM_SHA256;
        let mut budget = RecordBudget::new(suite, 2);
        budget.count_send(1);
        budget.count_send(MAX_RECORD_PLAINTEXT);
        budget.count_send(MAX_RECORD_PLAINTEXT + 1);
        assert_eq!(budget.records_sent(), 2 + 1 + 1 + 2);
    }

    #[test]
    fn record_budget_asks_for_rekey_near_limit() {
        let suite = rustls::crypto::aws_lc_rs::cipher_suite::TLS13_AES_128_GCM_SHA256;
        let mut budget = RecordBudget::new(suite, 0);
        assert_eq!(budget.action(true), KeyLimitAction::Continue);

        let threshold = budget.limit() - budget.limit() / RecordBudget::RESERVE_DIVISOR;
        budget.sent = threshold;
        assert_eq!(budget.action(true), KeyLimitAction::Rekey);
        assert_eq!(budget.action(false), KeyLimitAction::Close);

        budget.reset();
        assert_eq!(budget.action(false), KeyLimitAction::Continue);
    }
}
