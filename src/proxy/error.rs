//! Errors from header decoding. Each one means the peer sent bytes that are not
//! a valid PROXY protocol header, so the connection is to be closed.

use std::fmt;

/// Side of a header, source or destination, that an address or port problem concerns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    Source,
    Destination,
}

impl fmt::Display for Side {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Side::Source => "source",
            Side::Destination => "destination",
        })
    }
}

/// Problem found in a received header.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum DecodeError {
    /// The input starts with neither `PROXY` nor the v2 signature.
    InvalidSignature,
    /// No CRLF within the first [`super::V1_MAX_LENGTH`] bytes.
    V1TooLong,
    /// A CR not followed by LF, or an LF not preceded by CR.
    V1InvalidLineEnding {
        offset: usize,
    },
    /// A byte other than printable US-ASCII before the CRLF.
    V1InvalidByte {
        byte: u8,
        offset: usize,
    },
    /// The protocol token is not `TCP4`, `TCP6` or `UNKNOWN`.
    V1InvalidProtocol {
        protocol: String,
    },
    /// A field is empty (two spaces in a row) or absent.
    V1MissingField {
        field: &'static str,
    },
    /// Text follows the destination port.
    V1TrailingText {
        text: String,
    },
    V1InvalidAddress {
        side: Side,
        protocol: &'static str,
        value: String,
    },
    V1InvalidPort {
        side: Side,
        value: String,
    },
    /// The high nibble of the 13th byte is not 2.
    V2InvalidVersion {
        version: u8,
    },
    /// The low nibble of the 13th byte is neither LOCAL (0) nor PROXY (1).
    V2InvalidCommand {
        command: u8,
    },
    /// The 14th byte is not one of the seven family and protocol values the
    /// specification defines.
    V2InvalidFamily {
        family: u8,
    },
    /// The declared total length exceeds [`super::V2_MAX_LENGTH`].
    V2TooLong {
        length: usize,
    },
    /// The declared length is less than the family's address block needs.
    V2AddressesTooShort {
        family: u8,
        length: usize,
        required: usize,
    },
    /// Fewer than 3 bytes remain for a TLV's type and length.
    V2TlvTruncated {
        offset: usize,
    },
    /// A TLV's value runs past the end of the header or of its enclosing TLV.
    V2TlvOverrun {
        tlv_type: u8,
        offset: usize,
        length: usize,
        remaining: usize,
    },
    /// A TLV that may appear once appears twice.
    V2DuplicateTlv {
        tlv_type: u8,
    },
    /// A TLV's value is not of the form its type requires.
    V2InvalidTlv {
        tlv_type: u8,
        reason: &'static str,
    },
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DecodeError::InvalidSignature => f.write_str(
                "input does not start with a PROXY protocol header \
                 (neither `PROXY ` nor the v2 signature)",
            ),
            DecodeError::V1TooLong => write!(
                f,
                "v1 header has no CRLF within the first {} bytes",
                super::V1_MAX_LENGTH
            ),
            DecodeError::V1InvalidLineEnding { offset } => write!(
                f,
                "v1 header has a CR or LF at offset {offset} that is not part of a CRLF"
            ),
            DecodeError::V1InvalidByte { byte, offset } => write!(
                f,
                "v1 header has a non-printable byte {byte:#04x} at offset {offset}"
            ),
            DecodeError::V1InvalidProtocol { protocol } => write!(
                f,
                "v1 header has an invalid protocol `{protocol}`, expected TCP4, TCP6 or UNKNOWN"
            ),
            DecodeError::V1MissingField { field } => {
                write!(f, "v1 header is missing the {field}")
            }
            DecodeError::V1TrailingText { text } => write!(
                f,
                "v1 header has unexpected text `{text}` after the destination port"
            ),
            DecodeError::V1InvalidAddress {
                side,
                protocol,
                value,
            } => write!(
                f,
                "v1 header has an invalid {side} address `{value}` for {protocol}"
            ),
            DecodeError::V1InvalidPort { side, value } => {
                write!(f, "v1 header has an invalid {side} port `{value}`")
            }
            DecodeError::V2InvalidVersion { version } => write!(
                f,
                "v2 header has version {version}, expected 2"
            ),
            DecodeError::V2InvalidCommand { command } => write!(
                f,
                "v2 header has an invalid command {command:#x}, expected 0x0 (LOCAL) or 0x1 (PROXY)"
            ),
            DecodeError::V2InvalidFamily { family } => write!(
                f,
                "v2 header has an invalid family and protocol byte {family:#04x}"
            ),
            DecodeError::V2TooLong { length } => write!(
                f,
                "v2 header declares a total length of {length} bytes, more than the {} accepted",
                super::V2_MAX_LENGTH
            ),
            DecodeError::V2AddressesTooShort {
                family,
                length,
                required,
            } => write!(
                f,
                "v2 header declares {length} bytes after its fixed part, \
                 but family {family:#04x} needs at least {required} for addresses"
            ),
            DecodeError::V2TlvTruncated { offset } => write!(
                f,
                "v2 header has a truncated TLV at offset {offset}: fewer than 3 bytes for type and length"
            ),
            DecodeError::V2TlvOverrun {
                tlv_type,
                offset,
                length,
                remaining,
            } => write!(
                f,
                "v2 header has a TLV of type {tlv_type:#04x} at offset {offset} with length {length}, \
                 but only {remaining} bytes remain"
            ),
            DecodeError::V2DuplicateTlv { tlv_type } => write!(
                f,
                "v2 header has more than one TLV of type {tlv_type:#04x}"
            ),
            DecodeError::V2InvalidTlv { tlv_type, reason } => write!(
                f,
                "v2 header has an invalid TLV of type {tlv_type:#04x}: {reason}"
            ),
        }
    }
}

impl std::error::Error for DecodeError {}
