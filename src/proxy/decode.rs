//! Header decoding for `accept_proxy`.

use super::error::Side;
use super::{
    Addresses, DecodeError, Header, SslTlv, Version, PP2_SUBTYPE_SSL_CIPHER,
    PP2_SUBTYPE_SSL_VERSION, PP2_TYPE_ALPN, PP2_TYPE_AUTHORITY, PP2_TYPE_SSL, V1_MAX_LENGTH,
    V2_FIXED_LENGTH, V2_MAX_LENGTH, V2_SIGNATURE,
};
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};

/// Outcome of [`decode`] on the bytes received so far.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Progress {
    /// The bytes so far are a valid beginning of a header; read more and call again.
    NeedMore,
    /// A complete header occupies the first `consumed` bytes. Bytes after them
    /// (the TLS ClientHello) belong to the connection and were not looked at.
    Done { header: Header, consumed: usize },
}

const V1_PREFIX: &[u8] = b"PROXY ";

/// Decodes a PROXY protocol header, version 1 or 2, at the start of `received`.
///
/// `received` contains every byte read from the connection so far, so the caller
/// appends each read and calls again while this returns [`Progress::NeedMore`].
/// Each call reparses from the start, which costs at most [`V2_MAX_LENGTH`] bytes
/// of work. Invalid bytes are reported as soon as they arrive: a wrong first byte
/// fails at once, not after the maximum length.
pub fn decode(received: &[u8]) -> Result<Progress, DecodeError> {
    match received.first() {
        None => Ok(Progress::NeedMore),
        Some(b'P') => decode_v1(received),
        Some(b'\r') => decode_v2(received),
        Some(_) => Err(DecodeError::InvalidSignature),
    }
}

fn decode_v1(received: &[u8]) -> Result<Progress, DecodeError> {
    let prefix_length = received.len().min(V1_PREFIX.len());
    if received[..prefix_length] != V1_PREFIX[..prefix_length] {
        return Err(DecodeError::InvalidSignature);
    }

    let Some(line_length) = find_v1_line_end(received)? else {
        if received.len() >= V1_MAX_LENGTH {
            return Err(DecodeError::V1TooLong);
        }
        return Ok(Progress::NeedMore);
    };
    // The line is checked to be ASCII by find_v1_line_end.
    let text = std::str::from_utf8(&received[V1_PREFIX.len()..line_length - 2])
        .expect("v1 header bytes were checked to be ASCII");
    let addresses = parse_v1_fields(text)?;
    Ok(Progress::Done {
        header: Header::new(Version::V1, addresses),
        consumed: line_length,
    })
}

/// Returns the length of the v1 line including its CRLF, or `None` when no LF
/// arrived yet within the allowed length.
fn find_v1_line_end(received: &[u8]) -> Result<Option<usize>, DecodeError> {
    let window = &received[..received.len().min(V1_MAX_LENGTH)];
    for (offset, &byte) in window.iter().enumerate() {
        match byte {
            b'\n' => {
                if offset == 0 || window[offset - 1] != b'\r' {
                    return Err(DecodeError::V1InvalidLineEnding { offset });
                }
                return Ok(Some(offset + 1));
            }
            b'\r' => {
                if let Some(&next) = window.get(offset + 1) {
                    if next != b'\n' {
                        return Err(DecodeError::V1InvalidLineEnding { offset });
                    }
                }
            }
            0x20..=0x7e => {}
            _ => return Err(DecodeError::V1InvalidByte { byte, offset }),
        }
    }
    Ok(None)
}

/// Parses the part of a v1 line after `PROXY ` and before the CRLF.
fn parse_v1_fields(text: &str) -> Result<Addresses, DecodeError> {
    let mut fields = text.split(' ');
    let protocol = fields.next().unwrap_or_default();
    let is_ipv6 = match protocol {
        // The specification lets the sender put anything after UNKNOWN, and the
        // receiver must ignore it.
        "UNKNOWN" => return Ok(Addresses::Unknown),
        "TCP4" => false,
        "TCP6" => true,
        "" => return Err(DecodeError::V1MissingField { field: "protocol" }),
        other => {
            return Err(DecodeError::V1InvalidProtocol {
                protocol: other.to_owned(),
            })
        }
    };

    let mut next_field = |field: &'static str| match fields.next() {
        Some(value) if !value.is_empty() => Ok(value),
        _ => Err(DecodeError::V1MissingField { field }),
    };
    let source_ip = next_field("source address")?;
    let destination_ip = next_field("destination address")?;
    let source_port = next_field("source port")?;
    let destination_port = next_field("destination port")?;
    let rest: Vec<&str> = fields.collect();
    if !rest.is_empty() {
        return Err(DecodeError::V1TrailingText {
            text: rest.join(" "),
        });
    }

    let source_ip = parse_v1_ip(source_ip, is_ipv6, Side::Source)?;
    let destination_ip = parse_v1_ip(destination_ip, is_ipv6, Side::Destination)?;
    let source_port = parse_v1_port(source_port, Side::Source)?;
    let destination_port = parse_v1_port(destination_port, Side::Destination)?;
    Ok(Addresses::Tcp {
        source: SocketAddr::new(source_ip, source_port),
        destination: SocketAddr::new(destination_ip, destination_port),
    })
}

/// Parses an address of the family the protocol token names. The standard
/// library's parsers reject IPv4 octets with leading zeros, as the specification
/// requires, and accept the IPv6 forms `inet_ntop` produces, including
/// `::ffff:192.0.2.1`.
fn parse_v1_ip(value: &str, is_ipv6: bool, side: Side) -> Result<std::net::IpAddr, DecodeError> {
    let parsed = if is_ipv6 {
        value.parse::<Ipv6Addr>().map(std::net::IpAddr::V6).ok()
    } else {
        value.parse::<Ipv4Addr>().map(std::net::IpAddr::V4).ok()
    };
    parsed.ok_or_else(|| DecodeError::V1InvalidAddress {
        side,
        protocol: if is_ipv6 { "TCP6" } else { "TCP4" },
        value: value.to_owned(),
    })
}

/// Parses a decimal port in 0..=65535 without leading zeros or a sign.
fn parse_v1_port(value: &str, side: Side) -> Result<u16, DecodeError> {
    let well_formed = value.bytes().all(|b| b.is_ascii_digit())
        && value.len() <= 5
        && (value == "0" || !value.starts_with('0'));
    let port = if well_formed {
        value.parse::<u16>().ok()
    } else {
        None
    };
    port.ok_or_else(|| DecodeError::V1InvalidPort {
        side,
        value: value.to_owned(),
    })
}

const COMMAND_LOCAL: u8 = 0x0;
const COMMAND_PROXY: u8 = 0x1;

fn decode_v2(received: &[u8]) -> Result<Progress, DecodeError> {
    let prefix_length = received.len().min(V2_SIGNATURE.len());
    if received[..prefix_length] != V2_SIGNATURE[..prefix_length] {
        return Err(DecodeError::InvalidSignature);
    }

    let Some(&version_command) = received.get(12) else {
        return Ok(Progress::NeedMore);
    };
    let version = version_command >> 4;
    if version != 2 {
        return Err(DecodeError::V2InvalidVersion { version });
    }
    let command = version_command & 0x0f;
    if command != COMMAND_LOCAL && command != COMMAND_PROXY {
        return Err(DecodeError::V2InvalidCommand { command });
    }

    let Some(&family) = received.get(13) else {
        return Ok(Progress::NeedMore);
    };
    // The specification makes receivers ignore the family of a LOCAL header.
    let address_length = if command == COMMAND_PROXY {
        Some(address_block_length(family)?)
    } else {
        None
    };

    if received.len() < V2_FIXED_LENGTH {
        return Ok(Progress::NeedMore);
    }
    let length = usize::from(u16::from_be_bytes([received[14], received[15]]));
    let total = V2_FIXED_LENGTH + length;
    if total > V2_MAX_LENGTH {
        return Err(DecodeError::V2TooLong { length: total });
    }
    if let Some(required) = address_length {
        if length < required {
            return Err(DecodeError::V2AddressesTooShort {
                family,
                length,
                required,
            });
        }
    }
    if received.len() < total {
        return Ok(Progress::NeedMore);
    }

    let body = &received[V2_FIXED_LENGTH..total];
    let header = match address_length {
        // LOCAL: the receiver skips the whole block and uses the real endpoints.
        None => Header::new(Version::V2, Addresses::Local),
        // AF_UNSPEC: the address bytes have no defined layout, so whatever
        // follows cannot be located as TLVs either. All of it is skipped.
        Some(_) if family == 0x00 => Header::new(Version::V2, Addresses::Unknown),
        Some(address_length) => {
            let addresses = parse_v2_addresses(family, &body[..address_length]);
            let mut header = Header::new(Version::V2, addresses);
            parse_tlvs(
                &body[address_length..],
                V2_FIXED_LENGTH + address_length,
                &mut header,
            )?;
            header
        }
    };
    Ok(Progress::Done {
        header,
        consumed: total,
    })
}

/// Returns the address block length of a PROXY header's family and protocol byte.
fn address_block_length(family: u8) -> Result<usize, DecodeError> {
    match family {
        0x00 => Ok(0),
        0x11 | 0x12 => Ok(12),
        0x21 | 0x22 => Ok(36),
        0x31 | 0x32 => Ok(216),
        _ => Err(DecodeError::V2InvalidFamily { family }),
    }
}

/// Reads the addresses of TCP over IPv4 or IPv6. Datagram and AF_UNIX headers
/// are valid but carry nothing tlsplice can use, so they fall back to
/// [`Addresses::Unknown`], which the specification allows receivers to do.
fn parse_v2_addresses(family: u8, block: &[u8]) -> Addresses {
    match family {
        0x11 => {
            let source: [u8; 4] = block[0..4].try_into().expect("slice of 4 bytes");
            let destination: [u8; 4] = block[4..8].try_into().expect("slice of 4 bytes");
            Addresses::Tcp {
                source: SocketAddr::new(Ipv4Addr::from(source).into(), be16(&block[8..10])),
                destination: SocketAddr::new(
                    Ipv4Addr::from(destination).into(),
                    be16(&block[10..12]),
                ),
            }
        }
        0x21 => {
            let source: [u8; 16] = block[0..16].try_into().expect("slice of 16 bytes");
            let destination: [u8; 16] = block[16..32].try_into().expect("slice of 16 bytes");
            Addresses::Tcp {
                source: SocketAddr::new(Ipv6Addr::from(source).into(), be16(&block[32..34])),
                destination: SocketAddr::new(
                    Ipv6Addr::from(destination).into(),
                    be16(&block[34..36]),
                ),
            }
        }
        _ => Addresses::Unknown,
    }
}

fn be16(bytes: &[u8]) -> u16 {
    u16::from_be_bytes([bytes[0], bytes[1]])
}

/// One TLV found in a byte range.
struct Tlv<'a> {
    tlv_type: u8,
    value: &'a [u8],
    /// Offset of `value` from the start of the header.
    value_offset: usize,
}

/// Splits `bytes` into TLVs, calling `visit` for each. `base` is the offset of
/// `bytes` in the header, for error messages.
fn for_each_tlv<'a>(
    bytes: &'a [u8],
    base: usize,
    mut visit: impl FnMut(Tlv<'a>) -> Result<(), DecodeError>,
) -> Result<(), DecodeError> {
    let mut offset = 0;
    while offset < bytes.len() {
        let rest = &bytes[offset..];
        if rest.len() < 3 {
            return Err(DecodeError::V2TlvTruncated {
                offset: base + offset,
            });
        }
        let tlv_type = rest[0];
        let length = usize::from(be16(&rest[1..3]));
        if length > rest.len() - 3 {
            return Err(DecodeError::V2TlvOverrun {
                tlv_type,
                offset: base + offset,
                length,
                remaining: rest.len() - 3,
            });
        }
        visit(Tlv {
            tlv_type,
            value: &rest[3..3 + length],
            value_offset: base + offset + 3,
        })?;
        offset += 3 + length;
    }
    Ok(())
}

/// Parses the TLVs after the address block into `header`. ALPN, AUTHORITY and
/// SSL are kept; every other type, including CRC32C and NOOP, is skipped.
///
/// NOTE: a CRC32C TLV is skipped, not verified. The specification requires
/// verification only from receivers that support the checksum.
fn parse_tlvs(bytes: &[u8], base: usize, header: &mut Header) -> Result<(), DecodeError> {
    for_each_tlv(bytes, base, |tlv| {
        match tlv.tlv_type {
            PP2_TYPE_ALPN => {
                if header.alpn.is_some() {
                    return Err(DecodeError::V2DuplicateTlv {
                        tlv_type: tlv.tlv_type,
                    });
                }
                header.alpn = Some(tlv.value.to_vec());
            }
            PP2_TYPE_AUTHORITY => {
                if header.authority.is_some() {
                    return Err(DecodeError::V2DuplicateTlv {
                        tlv_type: tlv.tlv_type,
                    });
                }
                let authority =
                    std::str::from_utf8(tlv.value).map_err(|_| DecodeError::V2InvalidTlv {
                        tlv_type: tlv.tlv_type,
                        reason: "authority is not valid UTF-8",
                    })?;
                header.authority = Some(authority.to_owned());
            }
            PP2_TYPE_SSL => {
                if header.ssl.is_some() {
                    return Err(DecodeError::V2DuplicateTlv {
                        tlv_type: tlv.tlv_type,
                    });
                }
                header.ssl = Some(parse_ssl_tlv(tlv.value, tlv.value_offset)?);
            }
            _ => {}
        }
        Ok(())
    })
}

/// Parses the value of a PP2_TYPE_SSL TLV: client flags, verify result, and
/// sub-TLVs, of which version and cipher are kept.
fn parse_ssl_tlv(value: &[u8], value_offset: usize) -> Result<SslTlv, DecodeError> {
    if value.len() < 5 {
        return Err(DecodeError::V2InvalidTlv {
            tlv_type: PP2_TYPE_SSL,
            reason: "value is shorter than the 5 bytes of client and verify fields",
        });
    }
    let mut ssl = SslTlv {
        client: value[0],
        verify: u32::from_be_bytes([value[1], value[2], value[3], value[4]]),
        version: None,
        cipher: None,
    };

    for_each_tlv(&value[5..], value_offset + 5, |sub| {
        let slot = match sub.tlv_type {
            PP2_SUBTYPE_SSL_VERSION => &mut ssl.version,
            PP2_SUBTYPE_SSL_CIPHER => &mut ssl.cipher,
            _ => return Ok(()),
        };
        if slot.is_some() {
            return Err(DecodeError::V2DuplicateTlv {
                tlv_type: sub.tlv_type,
            });
        }
        if !sub.value.iter().all(|b| (0x20..=0x7e).contains(b)) {
            return Err(DecodeError::V2InvalidTlv {
                tlv_type: sub.tlv_type,
                reason: "value is not printable US-ASCII",
            });
        }
        let text = std::str::from_utf8(sub.value).expect("printable ASCII is UTF-8");
        *slot = Some(text.to_owned());
        Ok(())
    })?;
    Ok(ssl)
}
