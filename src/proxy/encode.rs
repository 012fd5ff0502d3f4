//! Header encoding for `send_proxy`.

use super::{
    Addresses, PP2_CLIENT_CERT_CONN, PP2_CLIENT_SSL, PP2_SUBTYPE_SSL_CIPHER,
    PP2_SUBTYPE_SSL_VERSION, PP2_TYPE_ALPN, PP2_TYPE_AUTHORITY, PP2_TYPE_SSL, V2_SIGNATURE,
};
use std::fmt;
use std::io::Write;
use std::net::{IpAddr, SocketAddr};

/// Optional TLVs for a version 2 header.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Tlvs<'a> {
    /// Negotiated ALPN protocol, written as PP2_TYPE_ALPN.
    pub alpn: Option<&'a [u8]>,
    /// Host name from the client's SNI, written as PP2_TYPE_AUTHORITY.
    pub authority: Option<&'a str>,
    /// TLS details, written as PP2_TYPE_SSL with version and cipher sub-TLVs.
    pub ssl: Option<Ssl<'a>>,
}

/// TLS details for the PP2_TYPE_SSL TLV.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ssl<'a> {
    /// TLS version name, such as `TLSv1.3`.
    pub version: &'a str,
    /// Cipher suite name, such as `TLS13_AES_128_GCM_SHA256`.
    pub cipher: &'a str,
    /// Whether the client presented a certificate and it was verified. tlsplice
    /// does not verify client certificates, so it passes `false`, which sets only
    /// PP2_CLIENT_SSL and a nonzero verify field.
    pub client_cert_verified: bool,
}

/// A header that cannot be encoded.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum EncodeError {
    /// A TLV value, or all of them together, exceed the 65535 bytes that the
    /// 16-bit length fields can express.
    TooLong { length: usize },
}

impl fmt::Display for EncodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            EncodeError::TooLong { length } => write!(
                f,
                "v2 header would carry {length} bytes after its fixed part, more than the \
                 65535 its length field allows; shorten the TLV values"
            ),
        }
    }
}

impl std::error::Error for EncodeError {}

/// Addresses of one family after canonicalization.
enum Endpoints {
    V4 {
        source: [u8; 4],
        destination: [u8; 4],
        ports: (u16, u16),
    },
    V6 {
        source: [u8; 16],
        destination: [u8; 16],
        ports: (u16, u16),
    },
}

/// Puts both addresses in one family. IPv4-mapped IPv6 addresses, as a
/// dual-stack listener reports IPv4 clients, become IPv4. When one side is IPv4
/// and the other IPv6, the IPv4 one is mapped into IPv6, because a header has a
/// single family.
fn canonical_endpoints(source: SocketAddr, destination: SocketAddr) -> Endpoints {
    let ports = (source.port(), destination.port());
    match (source.ip().to_canonical(), destination.ip().to_canonical()) {
        (IpAddr::V4(s), IpAddr::V4(d)) => Endpoints::V4 {
            source: s.octets(),
            destination: d.octets(),
            ports,
        },
        (s, d) => Endpoints::V6 {
            source: to_ipv6_octets(s),
            destination: to_ipv6_octets(d),
            ports,
        },
    }
}

fn to_ipv6_octets(ip: IpAddr) -> [u8; 16] {
    match ip {
        IpAddr::V4(v4) => v4.to_ipv6_mapped().octets(),
        IpAddr::V6(v6) => v6.octets(),
    }
}

/// Appends a version 1 header line to `out`.
///
/// [`Addresses::Local`] and [`Addresses::Unknown`] are written as
/// `PROXY UNKNOWN\r\n`. IPv4 addresses are written as `TCP4`, others as `TCP6`
/// (see the canonicalization rule on [`encode_v2`]).
pub fn encode_v1(out: &mut Vec<u8>, addresses: &Addresses) {
    let (source, destination) = match *addresses {
        Addresses::Local | Addresses::Unknown => {
            out.extend_from_slice(b"PROXY UNKNOWN\r\n");
            return;
        }
        Addresses::Tcp {
            source,
            destination,
        } => (source, destination),
    };

    // Writing into a Vec cannot fail. IP addresses and integers are formatted by
    // `core`, which has no allocator, so only `out` grows.
    let written = match canonical_endpoints(source, destination) {
        Endpoints::V4 {
            source,
            destination,
            ports,
        } => write!(
            out,
            "PROXY TCP4 {} {} {} {}\r\n",
            std::net::Ipv4Addr::from(source),
            std::net::Ipv4Addr::from(destination),
            ports.0,
            ports.1
        ),
        Endpoints::V6 {
            source,
            destination,
            ports,
        } => write!(
            out,
            "PROXY TCP6 {} {} {} {}\r\n",
            std::net::Ipv6Addr::from(source),
            std::net::Ipv6Addr::from(destination),
            ports.0,
            ports.1
        ),
    };
    written.expect("writing to a Vec<u8> does not fail");
}

/// Appends a version 2 header with the given TLVs to `out`.
///
/// [`Addresses::Local`] is written as command LOCAL with AF_UNSPEC and no
/// addresses or TLVs, as the specification recommends for health checks.
/// [`Addresses::Unknown`] is written as command PROXY with AF_UNSPEC and no
/// TLVs, because an AF_UNSPEC block has no defined layout and receivers,
/// [`super::decode`] included, skip all of it. TCP addresses use AF_INET when both are IPv4 (IPv4-mapped IPv6
/// counts as IPv4) and AF_INET6 otherwise, mapping an IPv4 side into IPv6.
///
/// On error `out` is left unchanged.
pub fn encode_v2(out: &mut Vec<u8>, addresses: &Addresses, tlvs: &Tlvs) -> Result<(), EncodeError> {
    // Version 2 in the high nibble, command LOCAL (0) or PROXY (1) in the low one.
    const LOCAL: u8 = 0x20;
    const PROXY: u8 = 0x21;

    let endpoints = match *addresses {
        Addresses::Local => {
            out.extend_from_slice(&V2_SIGNATURE);
            out.extend_from_slice(&[LOCAL, 0x00, 0x00, 0x00]);
            return Ok(());
        }
        Addresses::Unknown => {
            out.extend_from_slice(&V2_SIGNATURE);
            out.extend_from_slice(&[PROXY, 0x00, 0x00, 0x00]);
            return Ok(());
        }
        Addresses::Tcp {
            source,
            destination,
        } => canonical_endpoints(source, destination),
    };
    // TCP over IPv4 or IPv6, and the length of its address block.
    let (family, address_length) = match endpoints {
        Endpoints::V4 { .. } => (0x11, 12),
        Endpoints::V6 { .. } => (0x21, 36),
    };
    let length = address_length + tlvs_length(tlvs)?;
    let length_field = u16::try_from(length).map_err(|_| EncodeError::TooLong { length })?;

    out.reserve(super::V2_FIXED_LENGTH + length);
    out.extend_from_slice(&V2_SIGNATURE);
    out.push(PROXY);
    out.push(family);
    out.extend_from_slice(&length_field.to_be_bytes());

    match endpoints {
        Endpoints::V4 {
            source,
            destination,
            ports,
        } => {
            out.extend_from_slice(&source);
            out.extend_from_slice(&destination);
            out.extend_from_slice(&ports.0.to_be_bytes());
            out.extend_from_slice(&ports.1.to_be_bytes());
        }
        Endpoints::V6 {
            source,
            destination,
            ports,
        } => {
            out.extend_from_slice(&source);
            out.extend_from_slice(&destination);
            out.extend_from_slice(&ports.0.to_be_bytes());
            out.extend_from_slice(&ports.1.to_be_bytes());
        }
    }

    if let Some(alpn) = tlvs.alpn {
        push_tlv(out, PP2_TYPE_ALPN, alpn);
    }
    if let Some(authority) = tlvs.authority {
        push_tlv(out, PP2_TYPE_AUTHORITY, authority.as_bytes());
    }
    if let Some(ssl) = &tlvs.ssl {
        push_ssl_tlv(out, ssl);
    }
    Ok(())
}

/// Bytes of the SSL TLV's value before its sub-TLVs: client (1) and verify (4).
const SSL_FIXED_LENGTH: usize = 5;

/// Returns the encoded length of all TLVs, checking each 16-bit length field.
fn tlvs_length(tlvs: &Tlvs) -> Result<usize, EncodeError> {
    let mut total = 0;
    if let Some(alpn) = tlvs.alpn {
        total += tlv_length(alpn.len())?;
    }
    if let Some(authority) = tlvs.authority {
        total += tlv_length(authority.len())?;
    }
    if let Some(ssl) = &tlvs.ssl {
        let inner =
            SSL_FIXED_LENGTH + tlv_length(ssl.version.len())? + tlv_length(ssl.cipher.len())?;
        total += tlv_length(inner)?;
    }
    Ok(total)
}

fn tlv_length(value_length: usize) -> Result<usize, EncodeError> {
    if value_length > usize::from(u16::MAX) {
        return Err(EncodeError::TooLong {
            length: value_length,
        });
    }
    Ok(3 + value_length)
}

/// Appends one TLV. The caller has checked that the value fits a 16-bit length.
fn push_tlv(out: &mut Vec<u8>, tlv_type: u8, value: &[u8]) {
    out.push(tlv_type);
    out.extend_from_slice(&(value.len() as u16).to_be_bytes());
    out.extend_from_slice(value);
}

fn push_ssl_tlv(out: &mut Vec<u8>, ssl: &Ssl) {
    let inner = SSL_FIXED_LENGTH + 3 + ssl.version.len() + 3 + ssl.cipher.len();
    let (client, verify): (u8, u32) = if ssl.client_cert_verified {
        (PP2_CLIENT_SSL | PP2_CLIENT_CERT_CONN, 0)
    } else {
        (PP2_CLIENT_SSL, 1)
    };

    out.push(PP2_TYPE_SSL);
    out.extend_from_slice(&(inner as u16).to_be_bytes());
    out.push(client);
    out.extend_from_slice(&verify.to_be_bytes());
    push_tlv(out, PP2_SUBTYPE_SSL_VERSION, ssl.version.as_bytes());
    push_tlv(out, PP2_SUBTYPE_SSL_CIPHER, ssl.cipher.as_bytes());
}
