//! PROXY protocol versions 1 and 2: the header a proxy sends before the relayed
//! bytes so that the receiver learns the original client and server addresses.
//!
//! The wire format is haproxy's "The PROXY protocol, Versions 1 & 2"
//! (doc/proxy-protocol.txt, revision 2020/03/05).
//!
//! This module does two things and nothing else:
//! - [`encode_v1`] and [`encode_v2`] append a header to a caller's `Vec<u8>`, for
//!   `send_proxy` towards a backend. They allocate nothing beyond growing that
//!   vector, because they run once per connection.
//! - [`decode`] parses a header at the start of the bytes received so far, for
//!   `accept_proxy`, where a load balancer in front of tlsplice sends the header
//!   before the TLS ClientHello. It never consumes a byte past the header.
//!
//! Reading from sockets, deciding whether a peer may send a header at all, and
//! timeouts are the caller's job. The specification requires that a listener
//! expecting headers never guesses: every connection on it must start with one.

mod decode;
mod encode;
mod error;
#[cfg(test)]
mod tests;

pub use decode::{decode, Progress};
pub use encode::{encode_v1, encode_v2, EncodeError, Ssl, Tlvs};
pub use error::{DecodeError, Side};

use std::net::SocketAddr;

/// The 12-byte signature that starts every version 2 header.
pub const V2_SIGNATURE: [u8; 12] = *b"\r\n\r\n\0\r\nQUIT\n";

/// Maximum length of a version 1 header including its CRLF, from the worst case
/// `PROXY UNKNOWN` line with two full IPv6 addresses and ports.
pub const V1_MAX_LENGTH: usize = 107;

/// Maximum total length of a version 2 header that [`decode`] accepts.
///
/// The format allows 16 + 65535 bytes. Addresses and the TLVs tlsplice reads
/// (ALPN, authority, SSL) fit in far less, so a longer header is rejected rather
/// than buffered.
pub const V2_MAX_LENGTH: usize = 4096;

/// Length of the fixed part of a version 2 header: signature, version and
/// command, family and protocol, and the 16-bit length of the rest.
pub const V2_FIXED_LENGTH: usize = 16;

/// TLV type of the negotiated application protocol (ALPN).
pub const PP2_TYPE_ALPN: u8 = 0x01;
/// TLV type of the host name the client requested (the TLS SNI).
pub const PP2_TYPE_AUTHORITY: u8 = 0x02;
/// TLV type of a CRC32c checksum of the header.
pub const PP2_TYPE_CRC32C: u8 = 0x03;
/// TLV type for padding, ignored by receivers.
pub const PP2_TYPE_NOOP: u8 = 0x04;
/// TLV type of TLS details, whose value contains sub-TLVs.
pub const PP2_TYPE_SSL: u8 = 0x20;
/// Sub-TLV type of the TLS version name, such as `TLSv1.3`.
pub const PP2_SUBTYPE_SSL_VERSION: u8 = 0x21;
/// Sub-TLV type of the client certificate's common name.
pub const PP2_SUBTYPE_SSL_CN: u8 = 0x22;
/// Sub-TLV type of the cipher suite name.
pub const PP2_SUBTYPE_SSL_CIPHER: u8 = 0x23;

/// Bit in the SSL TLV's client field: the client connected over TLS.
pub const PP2_CLIENT_SSL: u8 = 0x01;
/// Bit in the SSL TLV's client field: the client sent a certificate on this connection.
pub const PP2_CLIENT_CERT_CONN: u8 = 0x02;
/// Bit in the SSL TLV's client field: the client sent a certificate in this TLS session.
pub const PP2_CLIENT_CERT_SESS: u8 = 0x04;

/// Protocol version of a header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    /// Human-readable text line.
    V1,
    /// Binary format.
    V2,
}

/// Address information carried by a header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Addresses {
    /// The proxy opened the connection for itself, for example a health check
    /// (v2 command LOCAL). The receiver uses the real socket addresses.
    ///
    /// Version 1 has no LOCAL command, so [`encode_v1`] writes `UNKNOWN` for it.
    Local,
    /// The connection is relayed but its addresses are unknown or of a family the
    /// receiver does not use (v1 `UNKNOWN`, or v2 PROXY with AF_UNSPEC, AF_UNIX or
    /// a datagram protocol). The receiver uses the real socket addresses.
    Unknown,
    /// A relayed TCP connection from `source` (the client) to `destination` (the
    /// address the client connected to).
    Tcp {
        source: SocketAddr,
        destination: SocketAddr,
    },
}

/// Contents of the PP2_TYPE_SSL TLV as decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SslTlv {
    /// Bit field of `PP2_CLIENT_*` flags.
    pub client: u8,
    /// Zero when the client presented a certificate that was verified, nonzero otherwise.
    pub verify: u32,
    /// TLS version name from PP2_SUBTYPE_SSL_VERSION, such as `TLSv1.3`.
    pub version: Option<String>,
    /// Cipher suite name from PP2_SUBTYPE_SSL_CIPHER.
    pub cipher: Option<String>,
}

/// A decoded PROXY protocol header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    pub version: Version,
    pub addresses: Addresses,
    /// Value of the PP2_TYPE_ALPN TLV (v2 only), such as `h2`.
    pub alpn: Option<Vec<u8>>,
    /// Value of the PP2_TYPE_AUTHORITY TLV (v2 only): the host name the client requested.
    pub authority: Option<String>,
    /// Value of the PP2_TYPE_SSL TLV (v2 only).
    pub ssl: Option<SslTlv>,
}

impl Header {
    /// Creates a header with the given addresses and no TLVs.
    pub fn new(version: Version, addresses: Addresses) -> Header {
        Header {
            version,
            addresses,
            alpn: None,
            authority: None,
            ssl: None,
        }
    }
}
