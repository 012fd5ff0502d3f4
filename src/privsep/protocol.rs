//! The messages between workers, the parent, the key process and the metrics
//! process, and their encoding. Each message travels as one `SOCK_SEQPACKET`
//! packet, so a message never arrives in pieces. Every decoder checks the length
//! of the packet and of each field, and rejects a packet with bytes left over.
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
//! (4, at most [`MAX_SIGNATURE`]) and the signature.
//!
//! Several requests, or several replies, may share one packet as a batch: kind 9,
//! a message count (1, from 1 to [`MAX_BATCH_MESSAGES`]), then each message with
//! its length (4) before it. A batch contains requests or replies, never another
//! batch, and is at most [`SIGN_PACKET_BUFFER`] bytes long, so every buffer that
//! fits a single message fits a batch too. Batches save a send, a receive and a
//! wake-up per signature when a worker has several handshakes waiting.
//!
//! At start-up the key process
//! sends the parent one key description per loaded certificate (kind 3) and then
//! kind 4 with the count, or kind 5 with an error message.
//!
//! A worker sends the metrics process metrics deltas (kind 6): the values one
//! service recorded since the worker's previous delta.
//!
//! | bytes | field |
//! | --- | --- |
//! | 1 | kind, 6 |
//! | 4 | service index |
//! | 8 | connections accepted |
//! | 1 + 8 n | closed connections per close reason |
//! | 1 + 8 n | failed handshakes per failure cause |
//! | 8 | failed backend connects |
//! | 1 + 8 n | closed connections per data path |
//! | 2 + 12 n | completed handshakes: version (2), cipher suite (2), count (8) |
//! | 1 | histogram count, at most 6 |
//! | per histogram | kind (1), exact sum (8), length (4), HdrHistogram V2 serialization |
//!
//! Each `n` must equal the number of values of this build, and each histogram
//! must have 3 significant digits and a lowest discernible value of 1, which
//! bounds the memory that decoding one allocates.
//!
//! When a worker process exits, the parent sends kind 7 with the process's pid
//! (4) on the same socket pair, after everything the worker sent. The metrics
//! process accepts it only from the parent's pid, which the kernel attaches to
//! each packet (SO_PASSCRED).
//!
//! On SIGHUP the parent sends the metrics process, on their control socket
//! pair, kind 8 with two flags (1 each): whether a reopened `output` file and
//! whether a reopened `histogram_log` file are attached (SCM_RIGHTS), in that
//! order.

use hdrhistogram::serialization::{Deserializer, Serializer, V2Serializer};
use hdrhistogram::Histogram;
use rustls::{SignatureAlgorithm, SignatureScheme};

use crate::metrics::{HistogramKind, ServiceMetrics};

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
const KIND_METRICS: u8 = 6;
const KIND_WORKER_EXITED: u8 = 7;
const KIND_FILES_REOPENED: u8 = 8;
const KIND_SIGN_BATCH: u8 = 9;

/// Maximum number of sign requests or replies in one batch packet.
pub const MAX_BATCH_MESSAGES: usize = 64;
/// Bytes of a batch packet besides its messages: the kind and the count.
const BATCH_HEADER: usize = 2;
/// Bytes a batch adds before each message: its length.
const BATCH_LENGTH: usize = 4;

/// Largest metrics delta packet. A delta that encodes larger is split into one
/// packet per histogram. The parent sizes the send buffer of the metrics socket
/// pairs to fit a packet of this size.
pub const MAX_METRICS_PACKET: usize = 128 * 1024;
/// Largest number of version and cipher suite pairs in one metrics delta.
pub const MAX_TLS_COUNTS: usize = 256;
/// Header of an HdrHistogram V2 serialization: cookie, payload length,
/// normalizing offset, significant digits, lowest and highest trackable values,
/// and the integer to double ratio.
const V2_HEADER: usize = 40;
const V2_COOKIE: u32 = 0x1c84_9313;
/// Significant digits of every histogram in [`crate::metrics`].
const HISTOGRAM_DIGITS: u32 = 3;

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

/// Packs encoded sign requests or replies, in order, into as few packets as
/// [`SIGN_PACKET_BUFFER`] and [`MAX_BATCH_MESSAGES`] allow. Returns each packet
/// with the number of messages it carries. A packet of one message is that
/// message as it is, so a lone request or reply travels without the batch
/// header.
pub fn pack_batches(messages: &[Vec<u8>]) -> Vec<(Vec<u8>, usize)> {
    let mut packets = Vec::new();
    let mut start = 0;
    while start < messages.len() {
        let mut end = start + 1;
        let mut size = BATCH_HEADER + BATCH_LENGTH + messages[start].len();
        while end < messages.len()
            && end - start < MAX_BATCH_MESSAGES
            && size + BATCH_LENGTH + messages[end].len() <= SIGN_PACKET_BUFFER
        {
            size += BATCH_LENGTH + messages[end].len();
            end += 1;
        }
        let group = &messages[start..end];
        let packet = if let [message] = group {
            message.clone()
        } else {
            let mut out = Vec::with_capacity(size);
            out.push(KIND_SIGN_BATCH);
            out.push(group.len() as u8);
            for message in group {
                put_bytes(&mut out, message);
            }
            out
        };
        packets.push((packet, group.len()));
        start = end;
    }
    packets
}

/// Splits a packet from the sign link into the messages it carries: the messages
/// of a batch, or the packet itself when it is not a batch. The messages are not
/// decoded here; each one is checked by its own decoder.
pub fn split_batch(packet: &[u8]) -> Result<Vec<&[u8]>, DecodeError> {
    if packet.first() != Some(&KIND_SIGN_BATCH) {
        return Ok(vec![packet]);
    }
    if packet.len() > SIGN_PACKET_BUFFER {
        return Err(DecodeError::TooLong {
            field: "batch",
            len: packet.len(),
        });
    }
    let mut reader = Reader {
        bytes: &packet[1..],
    };
    let count = reader.u8()? as usize;
    if count == 0 || count > MAX_BATCH_MESSAGES {
        return Err(DecodeError::InvalidField("batch message count"));
    }
    let mut messages = Vec::with_capacity(count);
    for _ in 0..count {
        let message = reader.bytes("batched message", SIGN_PACKET_BUFFER)?;
        if message.first() == Some(&KIND_SIGN_BATCH) {
            return Err(DecodeError::InvalidField("batch inside a batch"));
        }
        messages.push(message);
    }
    reader.finish()?;
    Ok(messages)
}

/// Encodes the delta of service `service` as packets of at most
/// [`MAX_METRICS_PACKET`] bytes: one packet, or, when that would be larger, one
/// with the counters and one per histogram. Returns the packets and the number
/// of histograms dropped because even alone they exceed the limit or fail to
/// serialize.
pub fn encode_metrics(service: u32, values: &ServiceMetrics) -> (Vec<Vec<u8>>, usize) {
    let mut serializer = V2Serializer::new();
    let mut histograms = Vec::new();
    let mut dropped = 0;
    let overhead = histogram_packet_overhead(service);
    for kind in HistogramKind::ALL {
        let recorder = values.histogram(kind);
        if recorder.count() == 0 {
            continue;
        }
        let mut bytes = Vec::new();
        match serializer.serialize(recorder.histogram(), &mut bytes) {
            Ok(_) if overhead + bytes.len() <= MAX_METRICS_PACKET => {
                histograms.push((kind, recorder.sum(), bytes));
            }
            _ => dropped += 1,
        }
    }

    let whole = encode_metrics_packet(service, Some(values), &histograms);
    if whole.len() <= MAX_METRICS_PACKET {
        return (vec![whole], dropped);
    }
    let mut packets = vec![encode_metrics_packet(service, Some(values), &[])];
    for histogram in histograms {
        packets.push(encode_metrics_packet(
            service,
            None,
            std::slice::from_ref(&histogram),
        ));
    }
    (packets, dropped)
}

/// Returns the bytes of a packet with zero counters and one histogram, besides
/// the histogram's serialization: the packet that carries a histogram alone.
fn histogram_packet_overhead(service: u32) -> usize {
    encode_metrics_packet(service, None, &[(HistogramKind::ALL[0], 0, Vec::new())]).len()
}

/// Encodes one packet: the counters of `values` (zeros when `None`) and
/// `histograms`, each with its kind, exact sum and V2 serialization.
fn encode_metrics_packet(
    service: u32,
    values: Option<&ServiceMetrics>,
    histograms: &[(HistogramKind, u64, Vec<u8>)],
) -> Vec<u8> {
    // The zeros hold six empty histograms, so they are built only when needed.
    let zeros;
    let values = match values {
        Some(values) => values,
        None => {
            zeros = ServiceMetrics::default();
            &zeros
        }
    };
    let mut out = Vec::with_capacity(256);
    out.push(KIND_METRICS);
    out.extend_from_slice(&service.to_le_bytes());
    out.extend_from_slice(&values.accepted.to_le_bytes());
    put_counts(&mut out, &values.closed);
    put_counts(&mut out, &values.handshake_failures);
    out.extend_from_slice(&values.backend_connect_failures.to_le_bytes());
    put_counts(&mut out, &values.data_paths);
    let handshakes = &values.handshakes[..values.handshakes.len().min(MAX_TLS_COUNTS)];
    out.extend_from_slice(&(handshakes.len() as u16).to_le_bytes());
    for entry in handshakes {
        out.extend_from_slice(&entry.version.to_le_bytes());
        out.extend_from_slice(&entry.suite.to_le_bytes());
        out.extend_from_slice(&entry.count.to_le_bytes());
    }
    out.push(histograms.len() as u8);
    for (kind, sum, bytes) in histograms {
        out.push(*kind as u8);
        out.extend_from_slice(&sum.to_le_bytes());
        put_bytes(&mut out, bytes);
    }
    out
}

fn put_counts(out: &mut Vec<u8>, counts: &[u64]) {
    out.push(counts.len() as u8);
    for count in counts {
        out.extend_from_slice(&count.to_le_bytes());
    }
}

/// Reads a count-prefixed array of counters into `target`, whose length the
/// count must equal.
fn read_counts(
    reader: &mut Reader<'_>,
    field: &'static str,
    target: &mut [u64],
) -> Result<(), DecodeError> {
    if reader.u8()? as usize != target.len() {
        return Err(DecodeError::InvalidField(field));
    }
    for value in target {
        *value = reader.u64()?;
    }
    Ok(())
}

/// Decodes a metrics delta from a worker. `services` is the number of
/// configured services. Returns the service index and its values.
pub fn decode_metrics(
    packet: &[u8],
    services: usize,
) -> Result<(usize, ServiceMetrics), DecodeError> {
    let mut reader = Reader { bytes: packet };
    let kind = reader.u8()?;
    if kind != KIND_METRICS {
        return Err(DecodeError::UnexpectedKind(kind));
    }
    let service = reader.u32()? as usize;
    if service >= services {
        return Err(DecodeError::InvalidField("service index"));
    }
    let mut values = ServiceMetrics::default();
    values.accepted = reader.u64()?;
    read_counts(&mut reader, "close reason count", &mut values.closed)?;
    read_counts(
        &mut reader,
        "handshake failure count",
        &mut values.handshake_failures,
    )?;
    values.backend_connect_failures = reader.u64()?;
    read_counts(&mut reader, "data path count", &mut values.data_paths)?;

    let pairs = reader.u16()? as usize;
    if pairs > MAX_TLS_COUNTS {
        return Err(DecodeError::TooLong {
            field: "handshake counts",
            len: pairs,
        });
    }
    for _ in 0..pairs {
        let version = reader.u16()?;
        let suite = reader.u16()?;
        let count = reader.u64()?;
        values.add_handshakes(version, suite, count);
    }

    let histograms = reader.u8()? as usize;
    if histograms > HistogramKind::ALL.len() {
        return Err(DecodeError::InvalidField("histogram count"));
    }
    let mut seen = [false; HistogramKind::ALL.len()];
    for _ in 0..histograms {
        let index = reader.u8()? as usize;
        let Some(kind) = HistogramKind::ALL.get(index).copied() else {
            return Err(DecodeError::InvalidField("histogram kind"));
        };
        if std::mem::replace(&mut seen[index], true) {
            return Err(DecodeError::InvalidField("repeated histogram kind"));
        }
        let sum = reader.u64()?;
        let bytes = reader.bytes("histogram", MAX_METRICS_PACKET)?;
        let histogram = decode_histogram(bytes)?;
        values.add_histogram(kind, &histogram, sum);
    }
    reader.finish()?;
    Ok((service, values))
}

/// Checks the V2 header before the hdrhistogram deserializer reads it, because
/// the deserializer allocates what the payload length and the value range
/// request. Both are bounded here first.
fn decode_histogram(bytes: &[u8]) -> Result<Histogram<u64>, DecodeError> {
    let invalid = DecodeError::InvalidField("histogram");
    if bytes.len() < V2_HEADER {
        return Err(DecodeError::Truncated);
    }
    let word = |at: usize| u32::from_be_bytes(bytes[at..at + 4].try_into().unwrap());
    let lowest = u64::from_be_bytes(bytes[16..24].try_into().unwrap());
    if word(0) != V2_COOKIE
        || word(4) as usize != bytes.len() - V2_HEADER
        || word(12) != HISTOGRAM_DIGITS
        || lowest != 1
    {
        return Err(invalid);
    }
    let mut input = bytes;
    let histogram: Histogram<u64> = Deserializer::new()
        .deserialize(&mut input)
        .map_err(|_| invalid.clone())?;
    if !input.is_empty() {
        return Err(DecodeError::TrailingBytes(input.len()));
    }
    Ok(histogram)
}

/// Encodes the parent's notice that worker process `pid` has exited.
pub fn encode_worker_exited(pid: libc::pid_t) -> Vec<u8> {
    let mut out = vec![KIND_WORKER_EXITED];
    out.extend_from_slice(&(pid as u32).to_le_bytes());
    out
}

/// Decodes the parent's notice that a worker process has exited; returns its pid.
pub fn decode_worker_exited(packet: &[u8]) -> Result<libc::pid_t, DecodeError> {
    let mut reader = Reader { bytes: packet };
    let kind = reader.u8()?;
    if kind != KIND_WORKER_EXITED {
        return Err(DecodeError::UnexpectedKind(kind));
    }
    let pid = reader.u32()?;
    reader.finish()?;
    libc::pid_t::try_from(pid)
        .ok()
        .filter(|pid| *pid > 0)
        .ok_or(DecodeError::InvalidField("pid"))
}

/// The files that the parent reopened on SIGHUP and attached to a kind 8 packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FilesReopened {
    pub output: bool,
    pub histogram_log: bool,
}

impl FilesReopened {
    pub fn encode(&self) -> Vec<u8> {
        vec![
            KIND_FILES_REOPENED,
            u8::from(self.output),
            u8::from(self.histogram_log),
        ]
    }

    pub fn decode(packet: &[u8]) -> Result<FilesReopened, DecodeError> {
        let mut reader = Reader { bytes: packet };
        let kind = reader.u8()?;
        if kind != KIND_FILES_REOPENED {
            return Err(DecodeError::UnexpectedKind(kind));
        }
        let flag = |value: u8| match value {
            0 => Ok(false),
            1 => Ok(true),
            _ => Err(DecodeError::InvalidField("reopened file flag")),
        };
        let output = flag(reader.u8()?)?;
        let histogram_log = flag(reader.u8()?)?;
        reader.finish()?;
        Ok(FilesReopened {
            output,
            histogram_log,
        })
    }

    /// Returns the number of descriptors attached to the packet.
    pub fn count(&self) -> usize {
        usize::from(self.output) + usize::from(self.histogram_log)
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
    use crate::log::CloseReason;
    use crate::metrics::{DataPath, HandshakeFailure, Registry};
    use std::time::Duration;

    /// Values of service 1 of two after a few recorded events.
    fn recorded() -> ServiceMetrics {
        let registry = Registry::new(vec!["web".into(), "api".into()]);
        let mut worker = registry.register_worker();
        for value in [1u64, 700, 90_000] {
            worker.accepted(1);
            worker.handshake_done(
                1,
                Duration::from_micros(value),
                rustls::ProtocolVersion::TLSv1_3,
                rustls::CipherSuite::TLS13_AES_128_GCM_SHA256,
            );
            worker.backend_connected(1, Duration::from_micros(value * 2));
            worker.first_byte(1, Duration::from_micros(value * 3));
            worker.closed(
                1,
                CloseReason::Done,
                Duration::from_micros(value * 4),
                value,
                value * 10,
                DataPath::Userspace,
            );
        }
        worker.handshake_failed(1, HandshakeFailure::Eof);
        worker.backend_connect_failed(1);
        worker.publish();
        registry.drain().swap_remove(1)
    }

    fn assert_same(decoded: &ServiceMetrics, expected: &ServiceMetrics) {
        assert_eq!(decoded.accepted, expected.accepted);
        assert_eq!(decoded.closed, expected.closed);
        assert_eq!(decoded.handshake_failures, expected.handshake_failures);
        assert_eq!(
            decoded.backend_connect_failures,
            expected.backend_connect_failures
        );
        assert_eq!(decoded.data_paths, expected.data_paths);
        assert_eq!(decoded.handshakes, expected.handshakes);
        for kind in HistogramKind::ALL {
            let (got, want) = (decoded.histogram(kind), expected.histogram(kind));
            assert_eq!(got.count(), want.count(), "{kind:?}");
            assert_eq!(got.sum(), want.sum(), "{kind:?}");
            assert_eq!(got.histogram().max(), want.histogram().max(), "{kind:?}");
            assert_eq!(
                got.histogram().value_at_quantile(0.5),
                want.histogram().value_at_quantile(0.5),
                "{kind:?}"
            );
        }
    }

    fn one_packet(values: &ServiceMetrics) -> Vec<u8> {
        let (mut packets, dropped) = encode_metrics(1, values);
        assert_eq!((packets.len(), dropped), (1, 0));
        packets.remove(0)
    }

    #[test]
    fn metrics_round_trip() {
        let values = recorded();
        let (service, decoded) = decode_metrics(&one_packet(&values), 2).unwrap();
        assert_eq!(service, 1);
        assert_same(&decoded, &values);
        assert_eq!(decoded.accepted, 3);
        assert_eq!(decoded.histogram(HistogramKind::BytesDown).sum(), 907_010);
    }

    #[test]
    fn metrics_every_truncation_rejected() {
        let encoded = one_packet(&recorded());
        for len in 0..encoded.len() {
            assert!(
                decode_metrics(&encoded[..len], 2).is_err(),
                "length {len} decoded"
            );
        }
    }

    #[test]
    fn metrics_trailing_bytes_rejected() {
        let mut encoded = one_packet(&recorded());
        encoded.push(0);
        assert_eq!(
            decode_metrics(&encoded, 2).unwrap_err(),
            DecodeError::TrailingBytes(1)
        );
    }

    #[test]
    fn metrics_unknown_service_rejected() {
        let encoded = one_packet(&recorded());
        assert_eq!(
            decode_metrics(&encoded, 1).unwrap_err(),
            DecodeError::InvalidField("service index")
        );
    }

    #[test]
    fn metrics_garbage_rejected() {
        let mut packets: Vec<Vec<u8>> = vec![
            Vec::new(),
            vec![0xff; 64],
            vec![0; 64],
            vec![KIND_METRICS; 64],
            b"garbage".to_vec(),
        ];
        let mut wrong_counts = one_packet(&recorded());
        // The count of close reasons follows kind, service and accepted.
        wrong_counts[13] += 1;
        packets.push(wrong_counts);
        for packet in packets {
            assert!(decode_metrics(&packet, 2).is_err(), "{packet:?} decoded");
        }
    }

    /// Encodes a packet whose one histogram has `bytes` as its serialization.
    fn with_histogram(bytes: Vec<u8>) -> Vec<u8> {
        encode_metrics_packet(0, None, &[(HistogramKind::Lifetime, 5, bytes)])
    }

    fn serialized(histogram: &Histogram<u64>) -> Vec<u8> {
        let mut bytes = Vec::new();
        V2Serializer::new()
            .serialize(histogram, &mut bytes)
            .unwrap();
        bytes
    }

    #[test]
    fn metrics_histogram_header_checked() {
        let mut histogram = Histogram::<u64>::new(3).unwrap();
        histogram.record(5).unwrap();
        let valid = serialized(&histogram);
        let (_, decoded) = decode_metrics(&with_histogram(valid.clone()), 1).unwrap();
        assert_eq!(decoded.histogram(HistogramKind::Lifetime).count(), 1);

        let precise = serialized(&Histogram::<u64>::new(5).unwrap());
        let coarse_low = serialized(&Histogram::<u64>::new_with_bounds(10, 1000, 3).unwrap());
        let mut long_payload = valid.clone();
        long_payload[4..8].copy_from_slice(&u32::MAX.to_be_bytes());
        let mut compressed_cookie = valid.clone();
        compressed_cookie[3] += 1;
        for (label, bytes) in [
            ("5 digits", precise),
            ("lowest value 10", coarse_low),
            ("payload length past the packet", long_payload),
            ("other cookie", compressed_cookie),
            ("header only", valid[..V2_HEADER - 1].to_vec()),
        ] {
            assert!(
                decode_metrics(&with_histogram(bytes), 1).is_err(),
                "{label} decoded"
            );
        }
    }

    #[test]
    fn metrics_histogram_length_limited() {
        let mut packet = with_histogram(vec![0; 8]);
        // The histogram length field ends 8 bytes before the end.
        let at = packet.len() - 12;
        packet[at..at + 4].copy_from_slice(&(MAX_METRICS_PACKET as u32 + 1).to_le_bytes());
        assert_eq!(
            decode_metrics(&packet, 1).unwrap_err(),
            DecodeError::TooLong {
                field: "histogram",
                len: MAX_METRICS_PACKET + 1
            }
        );
    }

    #[test]
    fn metrics_repeated_histogram_rejected() {
        let mut histogram = Histogram::<u64>::new(3).unwrap();
        histogram.record(5).unwrap();
        let bytes = serialized(&histogram);
        let packet = encode_metrics_packet(
            0,
            None,
            &[
                (HistogramKind::Lifetime, 5, bytes.clone()),
                (HistogramKind::Lifetime, 5, bytes),
            ],
        );
        assert_eq!(
            decode_metrics(&packet, 1).unwrap_err(),
            DecodeError::InvalidField("repeated histogram kind")
        );
    }

    #[test]
    fn metrics_large_delta_split_into_packets() {
        let registry = Registry::new(vec!["web".into()]);
        let mut worker = registry.register_worker();
        // One value per histogram bucket from 1 to 2^40, so every histogram
        // serializes to tens of KiB and all six together exceed one packet.
        let mut value = 1u64;
        while value < 1 << 40 {
            let duration = Duration::from_micros(value);
            worker.handshake_done(
                0,
                duration,
                rustls::ProtocolVersion::TLSv1_3,
                rustls::CipherSuite::TLS13_AES_128_GCM_SHA256,
            );
            worker.backend_connected(0, duration);
            worker.first_byte(0, duration);
            worker.closed(
                0,
                CloseReason::Done,
                duration,
                value,
                value,
                DataPath::Userspace,
            );
            value = (value + 1).max(value + value / 1000);
        }
        worker.publish();
        let values = registry.drain().swap_remove(0);

        let (packets, dropped) = encode_metrics(0, &values);
        assert_eq!(dropped, 0);
        assert_eq!(packets.len(), 1 + HistogramKind::ALL.len());
        let mut merged = ServiceMetrics::default();
        for packet in &packets {
            assert!(packet.len() <= MAX_METRICS_PACKET, "{} bytes", packet.len());
            let (service, decoded) = decode_metrics(packet, 1).unwrap();
            assert_eq!(service, 0);
            merged.merge(&decoded);
        }
        assert_same(&merged, &values);
    }

    /// A histogram sent alone takes exactly the overhead that encode_metrics
    /// checks against the packet limit, whatever its size.
    #[test]
    fn histogram_packet_overhead_exact() {
        for size in [0, 1, 1000, 70_000] {
            let histogram = (HistogramKind::ALL[1], 7, vec![0xa5; size]);
            let packet = encode_metrics_packet(3, None, &[histogram]);
            assert_eq!(packet.len(), histogram_packet_overhead(3) + size, "{size}");
        }
    }

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
    fn batches_round_trip_and_keep_order() {
        let messages: Vec<Vec<u8>> = (0..150)
            .map(|seq| SignRequest { seq, ..request() }.encode())
            .collect();
        let packets = pack_batches(&messages);
        // 150 messages of 39 bytes fit in batches of MAX_BATCH_MESSAGES.
        let counts: Vec<usize> = packets.iter().map(|(_, count)| *count).collect();
        assert_eq!(counts, [64, 64, 22]);
        let mut seqs = Vec::new();
        for (packet, count) in &packets {
            assert!(packet.len() <= SIGN_PACKET_BUFFER);
            let split = split_batch(packet).unwrap();
            assert_eq!(split.len(), *count);
            for message in split {
                seqs.push(SignRequest::decode(message).unwrap().seq);
            }
        }
        assert_eq!(seqs, (0..150).collect::<Vec<u64>>());
    }

    #[test]
    fn batches_respect_the_packet_size() {
        let mut large = request();
        large.message = vec![1; MAX_SIGNED_MESSAGE];
        let messages = vec![large.encode(), request().encode(), large.encode()];
        let packets = pack_batches(&messages);
        let counts: Vec<usize> = packets.iter().map(|(_, count)| *count).collect();
        assert_eq!(counts, [2, 1]);
        assert!(packets
            .iter()
            .all(|(packet, _)| packet.len() <= SIGN_PACKET_BUFFER));
        // A lone message travels as itself.
        assert_eq!(packets[1].0, messages[2]);
        assert_eq!(split_batch(&messages[2]).unwrap(), [&messages[2][..]]);
        assert!(pack_batches(&[]).is_empty());
    }

    #[test]
    fn malformed_batches_rejected() {
        let messages = vec![request().encode(), request().encode()];
        let (batch, _) = pack_batches(&messages).remove(0);
        for len in 1..batch.len() {
            assert!(split_batch(&batch[..len]).is_err(), "length {len}");
        }

        let mut trailing = batch.clone();
        trailing.push(0);
        assert_eq!(split_batch(&trailing), Err(DecodeError::TrailingBytes(1)));

        let mut empty = batch.clone();
        empty[1] = 0;
        assert_eq!(
            split_batch(&empty),
            Err(DecodeError::InvalidField("batch message count"))
        );

        let mut too_many = batch.clone();
        too_many[1] = MAX_BATCH_MESSAGES as u8 + 1;
        assert_eq!(
            split_batch(&too_many),
            Err(DecodeError::InvalidField("batch message count"))
        );

        let nested = pack_batches(&[batch.clone(), batch.clone()]).remove(0).0;
        assert_eq!(
            split_batch(&nested),
            Err(DecodeError::InvalidField("batch inside a batch"))
        );

        let mut oversized = batch;
        oversized.resize(SIGN_PACKET_BUFFER + 1, 0);
        assert!(matches!(
            split_batch(&oversized),
            Err(DecodeError::TooLong { field: "batch", .. })
        ));
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
    fn worker_exited_round_trip_and_checks() {
        let encoded = encode_worker_exited(4321);
        assert_eq!(decode_worker_exited(&encoded), Ok(4321));
        for len in 0..encoded.len() {
            assert_eq!(
                decode_worker_exited(&encoded[..len]),
                Err(DecodeError::Truncated)
            );
        }
        let mut longer = encoded.clone();
        longer.push(0);
        assert_eq!(
            decode_worker_exited(&longer),
            Err(DecodeError::TrailingBytes(1))
        );
        assert_eq!(
            decode_worker_exited(&encode_worker_exited(0)),
            Err(DecodeError::InvalidField("pid"))
        );
        assert_eq!(
            decode_worker_exited(&[KIND_METRICS, 1, 0, 0, 0]),
            Err(DecodeError::UnexpectedKind(KIND_METRICS))
        );
    }

    #[test]
    fn files_reopened_round_trip_and_checks() {
        for (output, histogram_log) in [(false, false), (true, false), (false, true), (true, true)]
        {
            let message = FilesReopened {
                output,
                histogram_log,
            };
            assert_eq!(FilesReopened::decode(&message.encode()), Ok(message));
        }
        assert_eq!(
            FilesReopened::decode(&[KIND_FILES_REOPENED, 2, 0]),
            Err(DecodeError::InvalidField("reopened file flag"))
        );
        assert_eq!(
            FilesReopened::decode(&[KIND_FILES_REOPENED, 1]),
            Err(DecodeError::Truncated)
        );
        assert_eq!(
            FilesReopened::decode(&[KIND_FILES_REOPENED, 1, 1, 0]),
            Err(DecodeError::TrailingBytes(1))
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
