//! The messages between workers, the parent and the key process, and their
//! encoding. Each message travels as one `SOCK_SEQPACKET` packet, so a message
//! never arrives in pieces. Every decoder checks the length of the packet and of
//! each field, and rejects a packet with bytes left over.
//!
//! All integers are little-endian. A sign request:
//!
//! | bytes | field |
//! | --- | --- |
//! | 1 | kind, 1 |
//! | 8 | sequence number, echoed in the reply |
//! | 8 | deadline, CLOCK_MONOTONIC nanoseconds |
//! | 4 | key index |
//! | 2 | signature scheme |
//! | 4 | message length, at most [`MAX_SIGNED_MESSAGE`] |
//! | n | message to sign |
//!
//! A sign reply: kind 2, sequence number (8), [`Status`] (1), signature length
//! (4, at most [`MAX_SIGNATURE`]) and the signature. At start-up the key process
//! sends the parent one key description per loaded certificate (kind 3) and then
//! kind 4 with the count, or kind 5 with an error message.

use rustls::{SignatureAlgorithm, SignatureScheme};

/// Largest message a worker may ask to have signed. TLS 1.3 signs 130 bytes plus
/// a hash and TLS 1.2 about 200, so this leaves ample room.
pub const MAX_SIGNED_MESSAGE: usize = 8 * 1024;
/// Largest signature: RSA with a 16384-bit modulus.
pub const MAX_SIGNATURE: usize = 2048;
/// Largest start-up key description: a certificate chain of this size is far past
/// any real one.
pub const MAX_KEY_DESCRIPTION: usize = 512 * 1024;
/// Receive buffer size for sign requests and replies: a valid one always fits.
pub const SIGN_PACKET_BUFFER: usize = 64 + MAX_SIGNED_MESSAGE + MAX_SIGNATURE;

const KIND_SIGN_REQUEST: u8 = 1;
const KIND_SIGN_REPLY: u8 = 2;
const KIND_KEY: u8 = 3;
const KIND_KEYS_DONE: u8 = 4;
const KIND_KEYS_FAILED: u8 = 5;

/// Why a packet could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DecodeError {
    /// The packet is empty or ends inside a field.
    Truncated,
    /// The first byte names no message of the expected kind.
    UnexpectedKind(u8),
    /// A length field exceeds its limit.
    TooLong { field: &'static str, len: usize },
    /// Bytes follow the last field.
    TrailingBytes(usize),
    /// A field holds a value outside its range.
    InvalidField(&'static str),
}

impl std::fmt::Display for DecodeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DecodeError::Truncated => write!(f, "message truncated"),
            DecodeError::UnexpectedKind(kind) => write!(f, "unexpected message kind {kind}"),
            DecodeError::TooLong { field, len } => write!(f, "{field} too long: {len} bytes"),
            DecodeError::TrailingBytes(count) => {
                write!(f, "{count} bytes after the last field")
            }
            DecodeError::InvalidField(field) => write!(f, "invalid {field}"),
        }
    }
}

impl std::error::Error for DecodeError {}

/// A worker's request to sign `message` with key `key` and `scheme`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignRequest {
    pub seq: u64,
    /// CLOCK_MONOTONIC nanoseconds after which the worker no longer waits.
    pub deadline: u64,
    pub key: u32,
    pub scheme: SignatureScheme,
    pub message: Vec<u8>,
}

/// The outcome of a sign request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Status {
    Signed = 0,
    /// The request could not be decoded.
    Malformed = 1,
    /// No key has this index.
    UnknownKey = 2,
    /// The key does not sign with this scheme.
    SchemeNotAllowed = 3,
    /// The request's deadline had passed when the key process read it.
    Expired = 4,
    /// The signing library failed.
    SignFailed = 5,
}

impl Status {
    fn from_u8(value: u8) -> Option<Status> {
        Some(match value {
            0 => Status::Signed,
            1 => Status::Malformed,
            2 => Status::UnknownKey,
            3 => Status::SchemeNotAllowed,
            4 => Status::Expired,
            5 => Status::SignFailed,
            _ => return None,
        })
    }
}

/// The key process's reply; `signature` is empty unless `status` is `Signed`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignReply {
    pub seq: u64,
    pub status: Status,
    pub signature: Vec<u8>,
}

/// A loaded key as the parent and workers see it: the public parts only.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyDescription {
    pub service: u32,
    pub algorithm: SignatureAlgorithm,
    /// The schemes the key signs with, in the key's order of preference.
    pub schemes: Vec<SignatureScheme>,
    /// The certificate chain, end-entity first, DER.
    pub chain: Vec<Vec<u8>>,
}

/// A start-up message from the key process to the parent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StartupMessage {
    Key(KeyDescription),
    Done { count: u32 },
    Failed(String),
}

struct Reader<'a> {
    bytes: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, count: usize) -> Result<&'a [u8], DecodeError> {
        if self.bytes.len() < count {
            return Err(DecodeError::Truncated);
        }
        let (head, rest) = self.bytes.split_at(count);
        self.bytes = rest;
        Ok(head)
    }

    fn u8(&mut self) -> Result<u8, DecodeError> {
        Ok(self.take(1)?[0])
    }

    fn u16(&mut self) -> Result<u16, DecodeError> {
        Ok(u16::from_le_bytes(self.take(2)?.try_into().unwrap()))
    }

    fn u32(&mut self) -> Result<u32, DecodeError> {
        Ok(u32::from_le_bytes(self.take(4)?.try_into().unwrap()))
    }

    fn u64(&mut self) -> Result<u64, DecodeError> {
        Ok(u64::from_le_bytes(self.take(8)?.try_into().unwrap()))
    }

    /// A length-prefixed byte string of at most `max` bytes.
    fn bytes(&mut self, field: &'static str, max: usize) -> Result<&'a [u8], DecodeError> {
        let len = self.u32()? as usize;
        if len > max {
            return Err(DecodeError::TooLong { field, len });
        }
        self.take(len)
    }

    fn finish(self) -> Result<(), DecodeError> {
        if self.bytes.is_empty() {
            Ok(())
        } else {
            Err(DecodeError::TrailingBytes(self.bytes.len()))
        }
    }
}

fn put_bytes(out: &mut Vec<u8>, bytes: &[u8]) {
    out.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
    out.extend_from_slice(bytes);
}

impl SignRequest {
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(27 + self.message.len());
        out.push(KIND_SIGN_REQUEST);
        out.extend_from_slice(&self.seq.to_le_bytes());
        out.extend_from_slice(&self.deadline.to_le_bytes());
        out.extend_from_slice(&self.key.to_le_bytes());
        out.extend_from_slice(&u16::from(self.scheme).to_le_bytes());
        put_bytes(&mut out, &self.message);
        out
    }

    /// Decodes a request. On failure, returns the sequence number too when the
    /// packet was long enough to carry one, so the reply can name the request.
    pub fn decode(packet: &[u8]) -> Result<SignRequest, (Option<u64>, DecodeError)> {
        let mut reader = Reader { bytes: packet };
        let kind = reader.u8().map_err(|err| (None, err))?;
        if kind != KIND_SIGN_REQUEST {
            return Err((None, DecodeError::UnexpectedKind(kind)));
        }
        let seq = reader.u64().map_err(|err| (None, err))?;
        let with_seq = |err| (Some(seq), err);
        let deadline = reader.u64().map_err(with_seq)?;
        let key = reader.u32().map_err(with_seq)?;
        let scheme = SignatureScheme::from(reader.u16().map_err(with_seq)?);
        if matches!(scheme, SignatureScheme::Unknown(_)) {
            return Err(with_seq(DecodeError::InvalidField("signature scheme")));
        }
        let message = reader
            .bytes("message", MAX_SIGNED_MESSAGE)
            .map_err(with_seq)?
            .to_vec();
        reader.finish().map_err(with_seq)?;
        Ok(SignRequest {
            seq,
            deadline,
            key,
            scheme,
            message,
        })
    }
}

impl SignReply {
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(14 + self.signature.len());
        out.push(KIND_SIGN_REPLY);
        out.extend_from_slice(&self.seq.to_le_bytes());
        out.push(self.status as u8);
        put_bytes(&mut out, &self.signature);
        out
    }

    pub fn decode(packet: &[u8]) -> Result<SignReply, DecodeError> {
        let mut reader = Reader { bytes: packet };
        let kind = reader.u8()?;
        if kind != KIND_SIGN_REPLY {
            return Err(DecodeError::UnexpectedKind(kind));
        }
        let seq = reader.u64()?;
        let status = Status::from_u8(reader.u8()?).ok_or(DecodeError::InvalidField("status"))?;
        let signature = reader.bytes("signature", MAX_SIGNATURE)?.to_vec();
        reader.finish()?;
        if status != Status::Signed && !signature.is_empty() {
            return Err(DecodeError::InvalidField("signature of a failed request"));
        }
        Ok(SignReply {
            seq,
            status,
            signature,
        })
    }
}

impl StartupMessage {
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        match self {
            StartupMessage::Key(key) => {
                out.push(KIND_KEY);
                out.extend_from_slice(&key.service.to_le_bytes());
                out.extend_from_slice(&u8::from(key.algorithm).to_le_bytes());
                out.extend_from_slice(&(key.schemes.len() as u16).to_le_bytes());
                for scheme in &key.schemes {
                    out.extend_from_slice(&u16::from(*scheme).to_le_bytes());
                }
                out.extend_from_slice(&(key.chain.len() as u32).to_le_bytes());
                for cert in &key.chain {
                    put_bytes(&mut out, cert);
                }
            }
            StartupMessage::Done { count } => {
                out.push(KIND_KEYS_DONE);
                out.extend_from_slice(&count.to_le_bytes());
            }
            StartupMessage::Failed(message) => {
                out.push(KIND_KEYS_FAILED);
                put_bytes(&mut out, message.as_bytes());
            }
        }
        out
    }

    pub fn decode(packet: &[u8]) -> Result<StartupMessage, DecodeError> {
        let mut reader = Reader { bytes: packet };
        let message = match reader.u8()? {
            KIND_KEY => {
                let service = reader.u32()?;
                let algorithm = SignatureAlgorithm::from(reader.u8()?);
                if matches!(algorithm, SignatureAlgorithm::Unknown(_)) {
                    return Err(DecodeError::InvalidField("signature algorithm"));
                }
                let scheme_count = reader.u16()? as usize;
                let mut schemes = Vec::with_capacity(scheme_count.min(64));
                for _ in 0..scheme_count {
                    schemes.push(SignatureScheme::from(reader.u16()?));
                }
                let cert_count = reader.u32()? as usize;
                if cert_count == 0 {
                    return Err(DecodeError::InvalidField("empty certificate chain"));
                }
                let mut chain = Vec::with_capacity(cert_count.min(16));
                for _ in 0..cert_count {
                    chain.push(reader.bytes("certificate", MAX_KEY_DESCRIPTION)?.to_vec());
                }
                StartupMessage::Key(KeyDescription {
                    service,
                    algorithm,
                    schemes,
                    chain,
                })
            }
            KIND_KEYS_DONE => StartupMessage::Done {
                count: reader.u32()?,
            },
            KIND_KEYS_FAILED => {
                let text = reader.bytes("error message", 64 * 1024)?;
                StartupMessage::Failed(String::from_utf8_lossy(text).into_owned())
            }
            other => return Err(DecodeError::UnexpectedKind(other)),
        };
        reader.finish()?;
        Ok(message)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request() -> SignRequest {
        SignRequest {
            seq: 7,
            deadline: 123_456,
            key: 1,
            scheme: SignatureScheme::ECDSA_NISTP256_SHA256,
            message: b"to be signed".to_vec(),
        }
    }

    #[test]
    fn sign_request_round_trip() {
        let encoded = request().encode();
        assert_eq!(SignRequest::decode(&encoded), Ok(request()));
    }

    #[test]
    fn sign_request_every_truncation_rejected() {
        let encoded = request().encode();
        for len in 0..encoded.len() {
            let err = SignRequest::decode(&encoded[..len]).unwrap_err();
            assert_eq!(err.1, DecodeError::Truncated, "length {len}");
            let expected_seq = (len >= 9).then_some(7);
            assert_eq!(err.0, expected_seq, "length {len}");
        }
    }

    #[test]
    fn sign_request_trailing_bytes_rejected() {
        let mut encoded = request().encode();
        encoded.push(0);
        assert_eq!(
            SignRequest::decode(&encoded),
            Err((Some(7), DecodeError::TrailingBytes(1)))
        );
    }

    #[test]
    fn sign_request_oversized_message_rejected() {
        let mut long = request();
        long.message = vec![0; MAX_SIGNED_MESSAGE + 1];
        assert_eq!(
            SignRequest::decode(&long.encode()),
            Err((
                Some(7),
                DecodeError::TooLong {
                    field: "message",
                    len: MAX_SIGNED_MESSAGE + 1
                }
            ))
        );
    }

    #[test]
    fn sign_request_length_past_packet_rejected() {
        let mut encoded = request().encode();
        // The message length field sits after kind, seq, deadline, key, scheme.
        encoded[23..27].copy_from_slice(&4000u32.to_le_bytes());
        assert_eq!(
            SignRequest::decode(&encoded),
            Err((Some(7), DecodeError::Truncated))
        );
    }

    #[test]
    fn sign_request_unknown_scheme_rejected() {
        let mut encoded = request().encode();
        encoded[21..23].copy_from_slice(&0xfefeu16.to_le_bytes());
        assert_eq!(
            SignRequest::decode(&encoded),
            Err((Some(7), DecodeError::InvalidField("signature scheme")))
        );
    }

    #[test]
    fn sign_request_other_kind_rejected() {
        let reply = SignReply {
            seq: 7,
            status: Status::Signed,
            signature: vec![1, 2],
        };
        assert_eq!(
            SignRequest::decode(&reply.encode()),
            Err((None, DecodeError::UnexpectedKind(KIND_SIGN_REPLY)))
        );
    }

    #[test]
    fn sign_reply_round_trip_and_checks() {
        let reply = SignReply {
            seq: 9,
            status: Status::Signed,
            signature: vec![3; 64],
        };
        assert_eq!(SignReply::decode(&reply.encode()), Ok(reply));

        let failed = SignReply {
            seq: 9,
            status: Status::UnknownKey,
            signature: Vec::new(),
        };
        assert_eq!(SignReply::decode(&failed.encode()), Ok(failed.clone()));

        let mut bad_status = failed.encode();
        bad_status[9] = 200;
        assert_eq!(
            SignReply::decode(&bad_status),
            Err(DecodeError::InvalidField("status"))
        );

        let failed_with_bytes = SignReply {
            seq: 9,
            status: Status::SignFailed,
            signature: vec![1],
        };
        assert_eq!(
            SignReply::decode(&failed_with_bytes.encode()),
            Err(DecodeError::InvalidField("signature of a failed request"))
        );
    }

    #[test]
    fn startup_messages_round_trip() {
        let messages = [
            StartupMessage::Key(KeyDescription {
                service: 2,
                algorithm: SignatureAlgorithm::RSA,
                schemes: vec![
                    SignatureScheme::RSA_PSS_SHA256,
                    SignatureScheme::RSA_PKCS1_SHA256,
                ],
                chain: vec![vec![1, 2, 3], vec![4]],
            }),
            StartupMessage::Done { count: 3 },
            StartupMessage::Failed("cannot read key".into()),
        ];
        for message in messages {
            assert_eq!(StartupMessage::decode(&message.encode()), Ok(message));
        }
    }

    #[test]
    fn startup_key_without_chain_rejected() {
        let message = StartupMessage::Key(KeyDescription {
            service: 0,
            algorithm: SignatureAlgorithm::ECDSA,
            schemes: vec![SignatureScheme::ECDSA_NISTP256_SHA256],
            chain: Vec::new(),
        });
        assert_eq!(
            StartupMessage::decode(&message.encode()),
            Err(DecodeError::InvalidField("empty certificate chain"))
        );
    }
}
