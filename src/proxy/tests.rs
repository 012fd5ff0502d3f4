//! Unit tests: byte-exact headers from the specification's examples, round
//! trips, malformed input, and a loop over pseudo-random addresses.

use super::error::Side;
use super::*;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

fn tcp(source: &str, destination: &str) -> Addresses {
    Addresses::Tcp {
        source: source.parse().unwrap(),
        destination: destination.parse().unwrap(),
    }
}

fn v1(addresses: &Addresses) -> Vec<u8> {
    let mut out = Vec::new();
    encode_v1(&mut out, addresses);
    out
}

fn v2(addresses: &Addresses, tlvs: &Tlvs) -> Vec<u8> {
    let mut out = Vec::new();
    encode_v2(&mut out, addresses, tlvs).unwrap();
    out
}

/// Decodes input that must contain a complete header, returning it and its length.
fn done(input: &[u8]) -> (Header, usize) {
    match decode(input) {
        Ok(Progress::Done { header, consumed }) => (header, consumed),
        other => panic!("expected a complete header, got {other:?} for {input:?}"),
    }
}

fn error(input: &[u8]) -> DecodeError {
    match decode(input) {
        Err(e) => e,
        Ok(other) => panic!("expected an error, got {other:?} for {input:?}"),
    }
}

// ---- version 1 ----

#[test]
fn v1_encode_spec_example() {
    let addresses = tcp("192.168.0.1:56324", "192.168.0.11:443");
    assert_eq!(
        v1(&addresses),
        b"PROXY TCP4 192.168.0.1 192.168.0.11 56324 443\r\n"
    );
}

#[test]
fn v1_decode_spec_example_leaves_request() {
    let input = b"PROXY TCP4 192.168.0.1 192.168.0.11 56324 443\r\nGET / HTTP/1.1\r\nHost: 192.168.0.11\r\n\r\n";
    let (header, consumed) = done(input);
    assert_eq!(consumed, 47);
    assert_eq!(&input[consumed..consumed + 3], b"GET");
    assert_eq!(header.version, Version::V1);
    assert_eq!(
        header.addresses,
        tcp("192.168.0.1:56324", "192.168.0.11:443")
    );
}

#[test]
fn v1_maximum_lengths_from_spec() {
    let tcp4 = b"PROXY TCP4 255.255.255.255 255.255.255.255 65535 65535\r\n";
    assert_eq!(tcp4.len(), 56);
    assert_eq!(done(tcp4).1, 56);

    let full = "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff";
    let tcp6 = format!("PROXY TCP6 {full} {full} 65535 65535\r\n");
    assert_eq!(tcp6.len(), 104);
    let (header, consumed) = done(tcp6.as_bytes());
    assert_eq!(consumed, 104);
    let all_ones = IpAddr::V6(Ipv6Addr::from([0xff; 16]));
    assert_eq!(
        header.addresses,
        Addresses::Tcp {
            source: SocketAddr::new(all_ones, 65535),
            destination: SocketAddr::new(all_ones, 65535),
        }
    );

    assert_eq!(
        done(b"PROXY UNKNOWN\r\n"),
        (Header::new(Version::V1, Addresses::Unknown), 15)
    );

    let worst = format!("PROXY UNKNOWN {full} {full} 65535 65535\r\n");
    assert_eq!(worst.len(), V1_MAX_LENGTH);
    assert_eq!(done(worst.as_bytes()).1, V1_MAX_LENGTH);
}

#[test]
fn v1_longer_than_maximum_rejected() {
    let full = "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff";
    let too_long = format!("PROXY UNKNOWN {full} {full} 65535 655355\r\n");
    assert_eq!(too_long.len(), V1_MAX_LENGTH + 1);
    assert_eq!(error(too_long.as_bytes()), DecodeError::V1TooLong);

    // Without any line end, the error comes as soon as the maximum is reached.
    let no_end = vec![b'A'; 200];
    let mut input = b"PROXY UNKNOWN ".to_vec();
    input.extend_from_slice(&no_end);
    assert_eq!(error(&input[..V1_MAX_LENGTH]), DecodeError::V1TooLong);
    assert_eq!(decode(&input[..V1_MAX_LENGTH - 1]), Ok(Progress::NeedMore));
}

#[test]
fn v1_unknown_ignores_rest_of_line() {
    let input = b"PROXY UNKNOWN anything at all 1 2 3\r\n\x16\x03\x01";
    let (header, consumed) = done(input);
    assert_eq!(header.addresses, Addresses::Unknown);
    assert_eq!(consumed, input.len() - 3);
}

#[test]
fn v1_encode_local_and_unknown() {
    assert_eq!(v1(&Addresses::Local), b"PROXY UNKNOWN\r\n");
    assert_eq!(v1(&Addresses::Unknown), b"PROXY UNKNOWN\r\n");
}

#[test]
fn v1_encode_ipv6() {
    let addresses = tcp("[2001:db8::1]:51234", "[2001:db8::2]:443");
    assert_eq!(
        v1(&addresses),
        b"PROXY TCP6 2001:db8::1 2001:db8::2 51234 443\r\n"
    );
}

#[test]
fn v1_encode_mapped_ipv4_as_tcp4() {
    let addresses = tcp("[::ffff:198.51.100.7]:51234", "[::ffff:203.0.113.1]:443");
    assert_eq!(
        v1(&addresses),
        b"PROXY TCP4 198.51.100.7 203.0.113.1 51234 443\r\n"
    );
}

#[test]
fn v1_encode_mixed_families_as_tcp6() {
    let addresses = tcp("[2001:db8::1]:51234", "203.0.113.1:443");
    assert_eq!(
        v1(&addresses),
        b"PROXY TCP6 2001:db8::1 ::ffff:203.0.113.1 51234 443\r\n"
    );
    // The decoder reads the mapped form back as an IPv6 address.
    let (header, _) = done(&v1(&addresses));
    assert_eq!(
        header.addresses,
        tcp("[2001:db8::1]:51234", "[::ffff:203.0.113.1]:443")
    );
}

#[test]
fn v1_encode_appends_to_existing_bytes() {
    let mut out = b"xy".to_vec();
    encode_v1(&mut out, &Addresses::Unknown);
    assert_eq!(out, b"xyPROXY UNKNOWN\r\n");
}

#[test]
fn v1_invalid_source_port_message() {
    let e = error(b"PROXY TCP4 192.168.0.1 192.168.0.11 99999 443\r\n");
    assert_eq!(
        e,
        DecodeError::V1InvalidPort {
            side: Side::Source,
            value: "99999".into()
        }
    );
    assert_eq!(
        e.to_string(),
        "v1 header has an invalid source port `99999`"
    );
}

#[test]
fn v1_malformed_lines_rejected() {
    use DecodeError::*;
    let cases: &[(&[u8], DecodeError)] = &[
        (
            b"PROXY TCP4 192.168.0.1 192.168.0.11 56324 0443\r\n",
            V1InvalidPort {
                side: Side::Destination,
                value: "0443".into(),
            },
        ),
        (
            b"PROXY TCP4 192.168.0.1 192.168.0.11 +5632 443\r\n",
            V1InvalidPort {
                side: Side::Source,
                value: "+5632".into(),
            },
        ),
        (
            b"PROXY TCP4 192.168.0.1 192.168.0.11 65536 443\r\n",
            V1InvalidPort {
                side: Side::Source,
                value: "65536".into(),
            },
        ),
        (
            b"PROXY TCP4 192.168.0.1 192.168.0.11 00 443\r\n",
            V1InvalidPort {
                side: Side::Source,
                value: "00".into(),
            },
        ),
        (
            b"PROXY TCP4 192.168.000.1 192.168.0.11 56324 443\r\n",
            V1InvalidAddress {
                side: Side::Source,
                protocol: "TCP4",
                value: "192.168.000.1".into(),
            },
        ),
        (
            b"PROXY TCP4 192.168.0.1 192.168.0.256 56324 443\r\n",
            V1InvalidAddress {
                side: Side::Destination,
                protocol: "TCP4",
                value: "192.168.0.256".into(),
            },
        ),
        (
            b"PROXY TCP4 ::1 192.168.0.11 56324 443\r\n",
            V1InvalidAddress {
                side: Side::Source,
                protocol: "TCP4",
                value: "::1".into(),
            },
        ),
        (
            b"PROXY TCP6 192.168.0.1 ::1 56324 443\r\n",
            V1InvalidAddress {
                side: Side::Source,
                protocol: "TCP6",
                value: "192.168.0.1".into(),
            },
        ),
        (
            b"PROXY TCP6 fe80::1%eth0 ::1 56324 443\r\n",
            V1InvalidAddress {
                side: Side::Source,
                protocol: "TCP6",
                value: "fe80::1%eth0".into(),
            },
        ),
        (
            b"PROXY tcp4 192.168.0.1 192.168.0.11 56324 443\r\n",
            V1InvalidProtocol {
                protocol: "tcp4".into(),
            },
        ),
        (
            b"PROXY UDP4 192.168.0.1 192.168.0.11 56324 443\r\n",
            V1InvalidProtocol {
                protocol: "UDP4".into(),
            },
        ),
        (
            b"PROXY UNKNOWNX\r\n",
            V1InvalidProtocol {
                protocol: "UNKNOWNX".into(),
            },
        ),
        (b"PROXY \r\n", V1MissingField { field: "protocol" }),
        (
            b"PROXY TCP4 192.168.0.1  192.168.0.11 56324 443\r\n",
            V1MissingField {
                field: "destination address",
            },
        ),
        (
            b"PROXY TCP4 192.168.0.1 192.168.0.11 56324\r\n",
            V1MissingField {
                field: "destination port",
            },
        ),
        (
            b"PROXY TCP4 192.168.0.1 192.168.0.11 56324 443 \r\n",
            V1TrailingText { text: "".into() },
        ),
        (
            b"PROXY TCP4 192.168.0.1 192.168.0.11 56324 443 7\r\n",
            V1TrailingText { text: "7".into() },
        ),
        (
            b"PROXY TCP4 192.168.0.1 192.168.0.11 56324 443\n",
            V1InvalidLineEnding { offset: 45 },
        ),
        (
            b"PROXY TCP4 192.168.0.1 192.168.0.11 56324 443\rX",
            V1InvalidLineEnding { offset: 45 },
        ),
        (
            b"PROXY TCP4 192.168.0.1\t192.168.0.11 56324 443\r\n",
            V1InvalidByte {
                byte: b'\t',
                offset: 22,
            },
        ),
        (b"PROXY\r\n", InvalidSignature),
        (b"PROXZ TCP4", InvalidSignature),
    ];
    for (input, expected) in cases {
        assert_eq!(
            &error(input),
            expected,
            "input {:?}",
            String::from_utf8_lossy(input)
        );
    }
}

#[test]
fn v1_truncated_at_each_byte_needs_more() {
    let input = b"PROXY TCP6 2001:db8::1 2001:db8::2 51234 443\r\n";
    for end in 0..input.len() {
        assert_eq!(
            decode(&input[..end]),
            Ok(Progress::NeedMore),
            "prefix of {end} bytes"
        );
    }
    assert_eq!(done(input).1, input.len());
}

// ---- version 2 ----

const SIG: [u8; 12] = [
    0x0D, 0x0A, 0x0D, 0x0A, 0x00, 0x0D, 0x0A, 0x51, 0x55, 0x49, 0x54, 0x0A,
];

fn bytes(parts: &[&[u8]]) -> Vec<u8> {
    parts.concat()
}

#[test]
fn v2_signature_constant_matches_spec() {
    assert_eq!(V2_SIGNATURE, SIG);
}

#[test]
fn v2_encode_tcp4_exact() {
    let addresses = tcp("192.168.0.1:56324", "192.168.0.11:443");
    let expected = bytes(&[
        &SIG,
        &[0x21, 0x11, 0x00, 0x0C],
        &[192, 168, 0, 1, 192, 168, 0, 11],
        &[0xDC, 0x04, 0x01, 0xBB],
    ]);
    assert_eq!(v2(&addresses, &Tlvs::default()), expected);
}

#[test]
fn v2_encode_tcp6_exact() {
    let addresses = tcp("[2001:db8::1]:51234", "[2001:db8::2]:443");
    let mut source = [0u8; 16];
    source[..4].copy_from_slice(&[0x20, 0x01, 0x0d, 0xb8]);
    source[15] = 1;
    let mut destination = source;
    destination[15] = 2;
    let expected = bytes(&[
        &SIG,
        &[0x21, 0x21, 0x00, 0x24],
        &source,
        &destination,
        &[0xC8, 0x22, 0x01, 0xBB],
    ]);
    assert_eq!(v2(&addresses, &Tlvs::default()), expected);
}

#[test]
fn v2_encode_local_exact() {
    let tlvs = Tlvs {
        alpn: Some(b"h2"),
        ..Tlvs::default()
    };
    // LOCAL carries neither addresses nor TLVs.
    assert_eq!(
        v2(&Addresses::Local, &tlvs),
        bytes(&[&SIG, &[0x20, 0x00, 0x00, 0x00]])
    );
}

#[test]
fn v2_encode_unknown_exact() {
    // AF_UNSPEC carries no TLVs, since receivers skip its whole block.
    assert_eq!(
        v2(&Addresses::Unknown, &full_tlvs()),
        bytes(&[&SIG, &[0x21, 0x00, 0x00, 0x00]])
    );
}

fn full_tlvs() -> Tlvs<'static> {
    Tlvs {
        alpn: Some(b"h2"),
        authority: Some("www.example.com"),
        ssl: Some(Ssl {
            version: "TLSv1.3",
            cipher: "TLS13_AES_128_GCM_SHA256",
            client_cert_verified: false,
        }),
    }
}

#[test]
fn v2_encode_tlvs_exact() {
    let addresses = tcp("198.51.100.7:51234", "203.0.113.1:443");
    let ssl_value = bytes(&[
        &[0x01, 0x00, 0x00, 0x00, 0x01],
        &[0x21, 0x00, 0x07],
        b"TLSv1.3",
        &[0x23, 0x00, 0x18],
        b"TLS13_AES_128_GCM_SHA256",
    ]);
    assert_eq!(ssl_value.len(), 42);
    let tlvs = bytes(&[
        &[0x01, 0x00, 0x02],
        b"h2",
        &[0x02, 0x00, 0x0F],
        b"www.example.com",
        &[0x20, 0x00, 0x2A],
        &ssl_value,
    ]);
    let length = 12 + tlvs.len();
    let expected = bytes(&[
        &SIG,
        &[0x21, 0x11],
        &(length as u16).to_be_bytes(),
        &[198, 51, 100, 7, 203, 0, 113, 1],
        &51234u16.to_be_bytes(),
        &443u16.to_be_bytes(),
        &tlvs,
    ]);
    assert_eq!(v2(&addresses, &full_tlvs()), expected);
}

#[test]
fn v2_encode_verified_client_cert_flags() {
    let tlvs = Tlvs {
        ssl: Some(Ssl {
            version: "TLSv1.2",
            cipher: "X",
            client_cert_verified: true,
        }),
        ..Tlvs::default()
    };
    let encoded = v2(&tcp("127.0.0.1:1", "127.0.0.1:2"), &tlvs);
    // Fixed part, IPv4 addresses, then the SSL TLV's type and length, then
    // client and verify.
    assert_eq!(&encoded[31..36], &[0x03, 0x00, 0x00, 0x00, 0x00]);
}

#[test]
fn v2_round_trip_with_tlvs() {
    let addresses = tcp("[2001:db8::7]:40000", "[2001:db8::443]:443");
    let mut input = v2(&addresses, &full_tlvs());
    let header_length = input.len();
    input.extend_from_slice(&[0x16, 0x03, 0x01, 0x00, 0xc8]);

    let (header, consumed) = done(&input);
    assert_eq!(consumed, header_length);
    assert_eq!(header.version, Version::V2);
    assert_eq!(header.addresses, addresses);
    assert_eq!(header.alpn.as_deref(), Some(&b"h2"[..]));
    assert_eq!(header.authority.as_deref(), Some("www.example.com"));
    assert_eq!(
        header.ssl,
        Some(SslTlv {
            client: PP2_CLIENT_SSL,
            verify: 1,
            version: Some("TLSv1.3".into()),
            cipher: Some("TLS13_AES_128_GCM_SHA256".into()),
        })
    );
}

#[test]
fn v2_truncated_at_each_byte_needs_more() {
    let input = v2(&tcp("198.51.100.7:51234", "203.0.113.1:443"), &full_tlvs());
    for end in 0..input.len() {
        assert_eq!(
            decode(&input[..end]),
            Ok(Progress::NeedMore),
            "prefix of {end} bytes"
        );
    }
    assert_eq!(done(&input).1, input.len());
}

#[test]
fn v2_local_skips_declared_block() {
    // A LOCAL header's family is ignored and its block skipped, whatever it contains.
    let input = bytes(&[&SIG, &[0x20, 0x77, 0x00, 0x03], &[1, 2, 3], b"rest"]);
    let (header, consumed) = done(&input);
    assert_eq!(header, Header::new(Version::V2, Addresses::Local));
    assert_eq!(consumed, 19);
}

#[test]
fn v2_unspec_skips_declared_block() {
    let input = bytes(&[&SIG, &[0x21, 0x00, 0x00, 0x02], &[9, 9], b"rest"]);
    let (header, consumed) = done(&input);
    assert_eq!(header.addresses, Addresses::Unknown);
    assert_eq!(consumed, 18);
}

#[test]
fn v2_udp_and_unix_fall_back_to_unknown() {
    let udp4 = bytes(&[&SIG, &[0x21, 0x12, 0x00, 0x0C], &[0; 12]]);
    assert_eq!(done(&udp4).0.addresses, Addresses::Unknown);

    let udp6 = bytes(&[&SIG, &[0x21, 0x22, 0x00, 0x24], &[0; 36]]);
    assert_eq!(done(&udp6).0.addresses, Addresses::Unknown);

    // AF_UNIX addresses are 108 bytes each, and TLVs after them are still parsed.
    let unix = bytes(&[
        &SIG,
        &[0x21, 0x31, 0x00, 0xDD],
        &[0; 216],
        &[0x01, 0x00, 0x02],
        b"h2",
    ]);
    let (header, consumed) = done(&unix);
    assert_eq!(header.addresses, Addresses::Unknown);
    assert_eq!(header.alpn.as_deref(), Some(&b"h2"[..]));
    assert_eq!(consumed, unix.len());
}

#[test]
fn v2_unknown_tlv_types_skipped() {
    let input = bytes(&[
        &SIG,
        &[0x21, 0x11, 0x00, 0x0C + 4 + 7 + 3 + 5],
        &[127, 0, 0, 1, 127, 0, 0, 2, 0x30, 0x39, 0x01, 0xBB],
        &[PP2_TYPE_NOOP, 0x00, 0x01, 0x00],
        &[PP2_TYPE_CRC32C, 0x00, 0x04, 1, 2, 3, 4],
        &[0xE0, 0x00, 0x00],
        &[PP2_TYPE_AUTHORITY, 0x00, 0x02],
        b"ab",
    ]);
    let (header, consumed) = done(&input);
    assert_eq!(consumed, input.len());
    assert_eq!(header.addresses, tcp("127.0.0.1:12345", "127.0.0.2:443"));
    assert_eq!(header.authority.as_deref(), Some("ab"));
    assert_eq!(header.alpn, None);
}

#[test]
fn v2_wrong_signature_rejected() {
    for position in 0..SIG.len() {
        let mut input = v2(&tcp("127.0.0.1:1", "127.0.0.1:2"), &Tlvs::default());
        input[position] ^= 0x40;
        let e = error(&input);
        assert_eq!(e, DecodeError::InvalidSignature, "flipped byte {position}");
        // The mismatch is reported as soon as that byte arrives.
        assert_eq!(
            decode(&input[..=position]),
            Err(DecodeError::InvalidSignature)
        );
    }
}

#[test]
fn non_proxy_protocols_rejected() {
    assert_eq!(error(b"GET / HTTP/1.1\r\n"), DecodeError::InvalidSignature);
    assert_eq!(
        error(&[0x16, 0x03, 0x01, 0x02, 0x00]),
        DecodeError::InvalidSignature
    );
    assert_eq!(error(b"\n"), DecodeError::InvalidSignature);
    assert_eq!(decode(b""), Ok(Progress::NeedMore));
}

#[test]
fn v2_invalid_version_and_command_rejected() {
    let version_1 = bytes(&[&SIG, &[0x11]]);
    assert_eq!(
        error(&version_1),
        DecodeError::V2InvalidVersion { version: 1 }
    );

    let command_2 = bytes(&[&SIG, &[0x22]]);
    assert_eq!(
        error(&command_2),
        DecodeError::V2InvalidCommand { command: 2 }
    );
    assert_eq!(
        error(&command_2).to_string(),
        "v2 header has an invalid command 0x2, expected 0x0 (LOCAL) or 0x1 (PROXY)"
    );
}

#[test]
fn v2_invalid_family_rejected() {
    for family in [0x01, 0x10, 0x13, 0x23, 0x40, 0x41, 0xFF] {
        let input = bytes(&[&SIG, &[0x21, family]]);
        assert_eq!(
            error(&input),
            DecodeError::V2InvalidFamily { family },
            "family {family:#x}"
        );
    }
}

#[test]
fn v2_oversized_rejected() {
    let declared = (V2_MAX_LENGTH - V2_FIXED_LENGTH + 1) as u16;
    let input = bytes(&[&SIG, &[0x21, 0x11], &declared.to_be_bytes()]);
    assert_eq!(
        error(&input),
        DecodeError::V2TooLong {
            length: V2_MAX_LENGTH + 1
        }
    );

    // Exactly the maximum is accepted, padded with a NOOP TLV.
    let declared = V2_MAX_LENGTH - V2_FIXED_LENGTH;
    let padding = declared - 12 - 3;
    let mut input = bytes(&[
        &SIG,
        &[0x21, 0x11],
        &(declared as u16).to_be_bytes(),
        &[0; 12],
        &[PP2_TYPE_NOOP],
        &(padding as u16).to_be_bytes(),
    ]);
    input.resize(V2_MAX_LENGTH, 0);
    assert_eq!(done(&input).1, V2_MAX_LENGTH);
}

#[test]
fn v2_addresses_too_short_rejected() {
    let input = bytes(&[&SIG, &[0x21, 0x11, 0x00, 0x0B]]);
    assert_eq!(
        error(&input),
        DecodeError::V2AddressesTooShort {
            family: 0x11,
            length: 11,
            required: 12
        }
    );
    let input = bytes(&[&SIG, &[0x21, 0x21, 0x00, 0x0C]]);
    assert_eq!(
        error(&input),
        DecodeError::V2AddressesTooShort {
            family: 0x21,
            length: 12,
            required: 36
        }
    );
}

#[test]
fn v2_tlv_past_end_rejected() {
    let address = [127, 0, 0, 1, 127, 0, 0, 2, 0x30, 0x39, 0x01, 0xBB];

    // ALPN declares 5 bytes, 2 remain.
    let overrun = bytes(&[
        &SIG,
        &[0x21, 0x11, 0x00, 17],
        &address,
        &[0x01, 0x00, 0x05],
        b"h2",
    ]);
    assert_eq!(
        error(&overrun),
        DecodeError::V2TlvOverrun {
            tlv_type: 0x01,
            offset: 28,
            length: 5,
            remaining: 2
        }
    );

    // Two bytes remain, which is too few for a TLV's type and length.
    let truncated = bytes(&[&SIG, &[0x21, 0x11, 0x00, 14], &address, &[0x01, 0x00]]);
    assert_eq!(
        error(&truncated),
        DecodeError::V2TlvTruncated { offset: 28 }
    );

    // A sub-TLV of SSL runs past the end of the SSL TLV.
    let ssl = bytes(&[
        &SIG,
        &[0x21, 0x11, 0x00, 12 + 3 + 8],
        &address,
        &[PP2_TYPE_SSL, 0x00, 0x08],
        &[0x01, 0, 0, 0, 1],
        &[PP2_SUBTYPE_SSL_VERSION, 0x00, 0x07],
    ]);
    assert_eq!(
        error(&ssl),
        DecodeError::V2TlvOverrun {
            tlv_type: PP2_SUBTYPE_SSL_VERSION,
            offset: 36,
            length: 7,
            remaining: 0
        }
    );

    // An SSL TLV too short for its client and verify fields.
    let short_ssl = bytes(&[
        &SIG,
        &[0x21, 0x11, 0x00, 12 + 3 + 2],
        &address,
        &[PP2_TYPE_SSL, 0x00, 0x02, 1, 0],
    ]);
    assert!(matches!(
        error(&short_ssl),
        DecodeError::V2InvalidTlv {
            tlv_type: PP2_TYPE_SSL,
            ..
        }
    ));
}

#[test]
fn v2_duplicate_and_invalid_tlvs_rejected() {
    let address = [127, 0, 0, 1, 127, 0, 0, 2, 0x30, 0x39, 0x01, 0xBB];
    let duplicate = bytes(&[
        &SIG,
        &[0x21, 0x11, 0x00, 12 + 10],
        &address,
        &[0x01, 0x00, 0x02],
        b"h2",
        &[0x01, 0x00, 0x02],
        b"h3",
    ]);
    assert_eq!(
        error(&duplicate),
        DecodeError::V2DuplicateTlv { tlv_type: 0x01 }
    );

    let bad_utf8 = bytes(&[
        &SIG,
        &[0x21, 0x11, 0x00, 12 + 4],
        &address,
        &[0x02, 0x00, 0x01, 0xFF],
    ]);
    assert!(matches!(
        error(&bad_utf8),
        DecodeError::V2InvalidTlv {
            tlv_type: PP2_TYPE_AUTHORITY,
            ..
        }
    ));
}

#[test]
fn v2_encode_too_long_leaves_output_unchanged() {
    let alpn = vec![b'a'; 70_000];
    let tlvs = Tlvs {
        alpn: Some(&alpn),
        ..Tlvs::default()
    };
    let mut out = b"kept".to_vec();
    let result = encode_v2(&mut out, &tcp("127.0.0.1:1", "127.0.0.1:2"), &tlvs);
    assert_eq!(result, Err(EncodeError::TooLong { length: 70_000 }));
    assert_eq!(out, b"kept");

    // Each value fits, but together they exceed the 16-bit length field.
    let half = vec![b'a'; 40_000];
    let authority = "b".repeat(40_000);
    let tlvs = Tlvs {
        alpn: Some(&half),
        authority: Some(&authority),
        ssl: None,
    };
    let result = encode_v2(&mut out, &tcp("127.0.0.1:1", "127.0.0.1:2"), &tlvs);
    assert_eq!(
        result,
        Err(EncodeError::TooLong {
            length: 12 + 80_006
        })
    );
    assert_eq!(out, b"kept");
}

// ---- random round trips ----

/// xorshift64*: a small deterministic generator so failures reproduce.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn address(&mut self) -> SocketAddr {
        let port = self.next() as u16;
        if self.next().is_multiple_of(2) {
            SocketAddr::new(Ipv4Addr::from(self.next() as u32).into(), port)
        } else {
            // Some addresses get long zero runs to exercise `::` compression.
            let mut bits = u128::from(self.next()) << 64 | u128::from(self.next());
            if self.next().is_multiple_of(3) {
                bits &= !(0xffff_ffff_ffffu128 << 32);
            }
            SocketAddr::new(Ipv6Addr::from(bits).into(), port)
        }
    }
}

/// Returns the addresses a receiver reads back: one family, IPv4-mapped IPv6 as IPv4.
fn expected_addresses(source: SocketAddr, destination: SocketAddr) -> Addresses {
    let canonical = |a: SocketAddr| SocketAddr::new(a.ip().to_canonical(), a.port());
    let (s, d) = (canonical(source), canonical(destination));
    let to_v6 = |a: SocketAddr| match a.ip() {
        IpAddr::V4(v4) => SocketAddr::new(v4.to_ipv6_mapped().into(), a.port()),
        IpAddr::V6(_) => a,
    };
    if s.is_ipv4() && d.is_ipv4() {
        Addresses::Tcp {
            source: s,
            destination: d,
        }
    } else {
        Addresses::Tcp {
            source: to_v6(s),
            destination: to_v6(d),
        }
    }
}

#[test]
fn random_addresses_round_trip() {
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    let mut out = Vec::new();
    for iteration in 0..5_000 {
        let (source, destination) = (rng.address(), rng.address());
        let addresses = Addresses::Tcp {
            source,
            destination,
        };
        let expected = expected_addresses(source, destination);
        let trailer = [0x16, 0x03, 0x01];

        out.clear();
        encode_v1(&mut out, &addresses);
        let header_length = out.len();
        assert!(header_length <= V1_MAX_LENGTH);
        out.extend_from_slice(&trailer);
        let (header, consumed) = done(&out);
        assert_eq!(header.addresses, expected, "v1 iteration {iteration}");
        assert_eq!(consumed, header_length, "v1 iteration {iteration}");

        out.clear();
        let authority = format!("host{iteration}.example");
        let tlvs = Tlvs {
            alpn: (iteration % 2 == 0).then_some(&b"http/1.1"[..]),
            authority: (iteration % 3 == 0).then_some(authority.as_str()),
            ssl: None,
        };
        encode_v2(&mut out, &addresses, &tlvs).unwrap();
        let header_length = out.len();
        out.extend_from_slice(&trailer);
        let (header, consumed) = done(&out);
        assert_eq!(header.addresses, expected, "v2 iteration {iteration}");
        assert_eq!(
            header.alpn.as_deref(),
            tlvs.alpn,
            "v2 iteration {iteration}"
        );
        assert_eq!(
            header.authority.as_deref(),
            tlvs.authority,
            "v2 iteration {iteration}"
        );
        assert_eq!(consumed, header_length, "v2 iteration {iteration}");
    }
}

#[test]
fn random_bytes_never_panic() {
    // Random tails after a valid prefix: each call must return, not panic, and
    // never report more bytes consumed than it was given.
    let mut rng = Rng(42);
    for _ in 0..5_000 {
        let mut input = if rng.next().is_multiple_of(2) {
            bytes(&[
                &SIG,
                &[0x21, [0x00, 0x11, 0x21, 0x31][rng.next() as usize % 4]],
            ])
        } else {
            b"PROXY ".to_vec()
        };
        let tail = rng.next() as usize % 80;
        for _ in 0..tail {
            input.push(rng.next() as u8);
        }
        if let Ok(Progress::Done { consumed, .. }) = decode(&input) {
            assert!(consumed <= input.len());
        }
    }
}
