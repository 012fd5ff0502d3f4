//! The workers' side of remote signing: a rustls [`SigningKey`] that holds no key
//! material and forwards each signature to the key process.
//!
//! Each worker process has one link to the key process, installed once with
//! [`install_link`] after the fork. Requests carry a sequence number and a
//! deadline. Inside a suspendable handshake step (see [`crate::sys::suspend`])
//! the signer queues the request and suspends the step. The worker sends queued
//! requests with [`send_queued`], at once when no other step waits and else at
//! the end of its loop turn, and its ring receives the replies and resumes the
//! steps. Outside such a step the signer sends the request at once and waits
//! for the reply itself, dropping replies with another sequence number.

use std::fmt;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use rustls::sign::{Signer, SigningKey};
use rustls::{SignatureAlgorithm, SignatureScheme};

use super::protocol::{
    pack_batches, split_batch, SignReply, SignRequest, Status, SIGN_PACKET_BUFFER,
};
use crate::sys::process::{self, Packet};

/// Why the key process gave no signature: no reply before the deadline, a
/// closed link or an error reply. Handshakes that fail for it count as
/// `key-process` failures, apart from what clients do wrong.
#[derive(Debug)]
pub struct KeyProcessError(String);

impl fmt::Display for KeyProcessError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for KeyProcessError {}

fn key_error(message: String) -> rustls::Error {
    rustls::Error::Other(rustls::OtherError(std::sync::Arc::new(KeyProcessError(
        message,
    ))))
}

/// How long a worker waits for a signature before failing the handshake.
pub const SIGN_TIMEOUT: Duration = Duration::from_secs(2);

/// A worker's connection to the key process.
struct KeyLink {
    socket: OwnedFd,
    next_seq: u64,
    buf: Vec<u8>,
    /// Encoded requests of suspended steps not sent yet, and their sequence
    /// numbers in the same order.
    queued: Vec<Vec<u8>>,
    queued_seqs: Vec<u64>,
}

/// The requests that [`send_queued`] failed to send, and the error.
#[derive(Debug)]
pub struct Unsent {
    pub error: io::Error,
    pub seqs: Vec<u64>,
}

static LINK: OnceLock<Mutex<KeyLink>> = OnceLock::new();

/// Installs this process's link to the key process. Sequence numbers start from
/// the process id, so a reply meant for a dead worker that used the same socket
/// pair before never matches a request of its successor.
pub fn install_link(socket: OwnedFd) {
    let link = KeyLink {
        socket,
        next_seq: (process::getpid() as u64) << 32,
        buf: vec![0; SIGN_PACKET_BUFFER],
        queued: Vec::new(),
        queued_seqs: Vec::new(),
    };
    if LINK.set(Mutex::new(link)).is_err() {
        panic!("the link to the key process is installed once per process");
    }
}

/// Returns the socket of this process's link to the key process, for the
/// worker's ring to receive replies on.
pub fn link_socket() -> Option<RawFd> {
    Some(lock_link()?.socket.as_raw_fd())
}

/// Returns the sequence number of a reply, or `None` for an invalid reply.
pub fn reply_seq(message: &[u8]) -> Option<u64> {
    SignReply::decode(message).ok().map(|reply| reply.seq)
}

fn lock_link() -> Option<std::sync::MutexGuard<'static, KeyLink>> {
    let link = LINK.get()?;
    Some(link.lock().unwrap_or_else(|poisoned| poisoned.into_inner()))
}

/// Sends the requests that suspended steps queued since the last call, several
/// to a packet. On failure, returns the sequence numbers of the requests that
/// were not sent, so the worker can fail their handshakes.
pub fn send_queued() -> Result<(), Unsent> {
    let Some(mut link) = lock_link() else {
        return Ok(());
    };
    if link.queued.is_empty() {
        return Ok(());
    }
    let messages = std::mem::take(&mut link.queued);
    let mut seqs = std::mem::take(&mut link.queued_seqs);
    let mut sent = 0;
    for (packet, count) in pack_batches(&messages) {
        if let Err(error) = process::send_packet(&link.socket, &packet) {
            seqs.drain(..sent);
            return Err(Unsent { error, seqs });
        }
        sent += count;
    }
    Ok(())
}

/// Drops the queued request `seq`, if it was not sent yet, because its step
/// stopped waiting for the reply.
pub fn unqueue(seq: u64) {
    let Some(mut link) = lock_link() else {
        return;
    };
    if let Some(index) = link.queued_seqs.iter().position(|queued| *queued == seq) {
        link.queued_seqs.remove(index);
        link.queued.remove(index);
    }
}

/// Signs `message` in the key process, waiting at most [`SIGN_TIMEOUT`]: by
/// suspending the handshake step when it is suspendable, else on this thread.
fn sign_remote(
    key: u32,
    scheme: SignatureScheme,
    message: &[u8],
) -> Result<Vec<u8>, rustls::Error> {
    let Some(mut link) = lock_link() else {
        return Err(key_error(
            "no link to the key process in this process".into(),
        ));
    };
    let seq = link.next_seq;
    link.next_seq = link.next_seq.wrapping_add(1);
    let deadline = process::monotonic_nanos() + SIGN_TIMEOUT.as_nanos() as u64;
    let request = SignRequest {
        seq,
        deadline,
        key,
        scheme,
        message: message.to_vec(),
    };
    if crate::sys::suspend::can_suspend() {
        link.queued.push(request.encode());
        link.queued_seqs.push(seq);
        // The worker sends the request and its ring receives the reply while the
        // step is suspended, so the link must not stay locked.
        drop(link);
        return match crate::sys::suspend::suspend(seq) {
            Some(Some(packet)) => match SignReply::decode(&packet) {
                Ok(reply) if reply.seq == seq => signature(reply),
                Ok(reply) => Err(key_error(format!(
                    "the key process replied to request {} instead of {seq}",
                    reply.seq
                ))),
                Err(err) => Err(key_error(format!(
                    "invalid reply from the key process: {err}"
                ))),
            },
            Some(None) => Err(timed_out()),
            None => unreachable!("can_suspend was true on this thread"),
        };
    }

    // NOTE: a wait here would take replies meant for suspended steps, which then
    // time out. Workers sign only in suspendable steps, so this path serves
    // callers outside a worker's event loop.
    process::send_packet(&link.socket, &request.encode()).map_err(|err| {
        key_error(format!(
            "cannot send a sign request to the key process: {err}"
        ))
    })?;
    let KeyLink { socket, buf, .. } = &mut *link;
    loop {
        let left = deadline.saturating_sub(process::monotonic_nanos());
        if left == 0 {
            return Err(timed_out());
        }
        let len = match process::recv_packet(socket, buf, Some(Duration::from_nanos(left))) {
            Ok(Packet::Data(len)) => len,
            Ok(Packet::Truncated(len)) => {
                crate::warning!("key process sent an oversized reply of {len} bytes; dropped");
                continue;
            }
            Ok(Packet::Closed) => return Err(key_error("the key process closed the link".into())),
            Err(err) if err.kind() == std::io::ErrorKind::TimedOut => return Err(timed_out()),
            Err(err) => {
                return Err(key_error(format!(
                    "cannot receive from the key process: {err}"
                )))
            }
        };
        let messages = match split_batch(&buf[..len]) {
            Ok(messages) => messages,
            Err(err) => {
                crate::warning!("invalid packet from the key process ({err}); dropped");
                continue;
            }
        };
        for message in messages {
            let reply = match SignReply::decode(message) {
                Ok(reply) => reply,
                Err(err) => {
                    crate::warning!("invalid reply from the key process ({err}); dropped");
                    continue;
                }
            };
            if reply.seq == seq {
                return signature(reply);
            }
            crate::debug!(
                "dropping a key process reply for request {} while waiting for {seq}",
                reply.seq
            );
        }
    }
}

fn signature(reply: SignReply) -> Result<Vec<u8>, rustls::Error> {
    match reply.status {
        Status::Signed => Ok(reply.signature),
        status => Err(key_error(format!(
            "the key process did not sign: {status:?}"
        ))),
    }
}

fn timed_out() -> rustls::Error {
    key_error(format!(
        "the key process did not answer within {} ms",
        SIGN_TIMEOUT.as_millis()
    ))
}

/// A private key that lives in the key process, known here by its index there.
pub struct RemoteKey {
    pub index: u32,
    pub algorithm: SignatureAlgorithm,
    /// The schemes the key signs with, in its order of preference.
    pub schemes: Vec<SignatureScheme>,
}

impl fmt::Debug for RemoteKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RemoteKey")
            .field("index", &self.index)
            .field("algorithm", &self.algorithm)
            .finish()
    }
}

impl SigningKey for RemoteKey {
    fn choose_scheme(&self, offered: &[SignatureScheme]) -> Option<Box<dyn Signer>> {
        let scheme = self
            .schemes
            .iter()
            .find(|scheme| offered.contains(scheme))?;
        Some(Box::new(RemoteSigner {
            key: self.index,
            scheme: *scheme,
        }))
    }

    fn algorithm(&self) -> SignatureAlgorithm {
        self.algorithm
    }
}

#[derive(Debug)]
struct RemoteSigner {
    key: u32,
    scheme: SignatureScheme,
}

impl Signer for RemoteSigner {
    fn sign(&self, message: &[u8]) -> Result<Vec<u8>, rustls::Error> {
        sign_remote(self.key, self.scheme, message)
    }

    fn scheme(&self) -> SignatureScheme {
        self.scheme
    }
}
