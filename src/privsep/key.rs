//! The key process: the only process that reads private keys. It loads them,
//! jails itself, and from then on only signs on the workers' behalf.
//!
//! | peer | channel | receives | sends |
//! | --- | --- | --- | --- |
//! | parent | control socket pair | the log file reopened on SIGHUP; end of file means the parent exited | key descriptions (public parts) at start-up, or the load error |
//! | worker N | socket pair N | sign requests | sign replies |
//!
//! It opens no file and no socket after start-up, and its seccomp filter allows
//! neither, so a reopened log file comes from the parent as a descriptor. A
//! request that fails to decode, names an unknown key or a scheme the key does
//! not allow, or arrives past its deadline gets an error reply. The process
//! keeps serving after each of them.

use std::os::fd::OwnedFd;
use std::path::Path;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Barrier};
use std::time::Duration;

use rustls::sign::SigningKey;
use rustls::SignatureScheme;

use super::protocol::{
    pack_batches, split_batch, FilesReopened, KeyDescription, SignReply, SignRequest,
    StartupMessage, Status, MAX_BATCH_MESSAGES, SIGN_PACKET_BUFFER,
};
use crate::config::Config;
use crate::runtime::privileges::Ids;
use crate::sys::process::{self, Packet};
use crate::sys::seccomp;
use crate::{debug, warning};

/// Every scheme rustls can negotiate for a certificate key, in the order a key
/// prefers them when a client offers several.
const SCHEMES: [SignatureScheme; 11] = [
    SignatureScheme::ECDSA_NISTP384_SHA384,
    SignatureScheme::ECDSA_NISTP256_SHA256,
    SignatureScheme::ECDSA_NISTP521_SHA512,
    SignatureScheme::ED25519,
    SignatureScheme::ED448,
    SignatureScheme::RSA_PSS_SHA512,
    SignatureScheme::RSA_PSS_SHA384,
    SignatureScheme::RSA_PSS_SHA256,
    SignatureScheme::RSA_PKCS1_SHA512,
    SignatureScheme::RSA_PKCS1_SHA384,
    SignatureScheme::RSA_PKCS1_SHA256,
];

/// A loaded key and the schemes it signs with.
pub struct HeldKey {
    key: Arc<dyn SigningKey>,
    schemes: Vec<SignatureScheme>,
}

impl HeldKey {
    pub fn new(key: Arc<dyn SigningKey>) -> HeldKey {
        let schemes = SCHEMES
            .into_iter()
            .filter(|scheme| key.choose_scheme(&[*scheme]).is_some())
            .collect();
        HeldKey { key, schemes }
    }

    pub fn schemes(&self) -> &[SignatureScheme] {
        &self.schemes
    }
}

/// The key process's start-up state, prepared by the parent before the fork.
pub struct KeyStart<'a> {
    pub config: &'a Config,
    /// The key process's end of the control socket pair.
    pub control: OwnedFd,
    /// The key process's end of each worker's socket pair.
    pub workers: Vec<OwnedFd>,
    /// The directory to chroot into: the configured chroot or an empty one;
    /// `None` when not started as root.
    pub root: Option<&'a Path>,
    pub ids: Ids,
}

/// Runs the key process in a freshly forked child; never returns.
pub fn run(start: KeyStart<'_>, parent: libc::pid_t) -> ! {
    super::die_with_parent_or_exit(libc::SIGKILL, parent);
    let control = start.control;
    let (keys, descriptions) = match load_keys(start.config) {
        Ok(loaded) => loaded,
        Err(message) => fail(&control, message),
    };
    let jailed = super::jail_child(
        "key process",
        start.root,
        start.ids,
        &[],
        libc::SIGKILL,
        parent,
    );
    if let Err(message) = jailed {
        fail(&control, message);
    }

    // The serving threads start before the filter, which forbids creating
    // threads. The barrier is passed twice: once when every thread has finished
    // its start-up syscalls (rseq, prctl for its name), and once the filter is in
    // place.
    let keys: Arc<[HeldKey]> = keys.into();
    let barrier = Arc::new(Barrier::new(start.workers.len() + 1));
    for (index, socket) in start.workers.into_iter().enumerate() {
        let keys = keys.clone();
        let barrier = barrier.clone();
        let spawned = std::thread::Builder::new()
            .name(format!("tlsplice-key-{index}"))
            .spawn(move || {
                // Each thread's random generator state is set up on first use.
                crate::tls::prepare_random();
                // A request then does not preempt the worker that sent it.
                if let Err(err) = process::set_batch_scheduling() {
                    warning!(
                        "key process: cannot set the SCHED_BATCH policy ({err}); signatures cost more context switches"
                    );
                }
                barrier.wait();
                barrier.wait();
                serve(index, &socket, &keys);
            });
        if let Err(err) = spawned {
            fail(
                &control,
                format!("key process: cannot start a thread: {err}"),
            );
        }
    }
    barrier.wait();
    if let Err(err) = seccomp::install(seccomp::Role::Key) {
        fail(
            &control,
            format!("key process: cannot install the seccomp filter: {err}"),
        );
    }
    barrier.wait();

    for description in descriptions {
        send_or_exit(&control, &StartupMessage::Key(description));
    }
    send_or_exit(
        &control,
        &StartupMessage::Done {
            count: keys.len() as u32,
        },
    );

    // From now on the parent sends only the log file it reopened on SIGHUP. End
    // of file means it is gone.
    let mut buf = [0u8; 16];
    loop {
        match process::recv_with_fds(&control, &mut buf) {
            Ok((Packet::Closed, _)) | Err(_) => crate::sys::exit_now(0),
            Ok((Packet::Data(len), fds)) => take_reopened_log(&buf[..len], fds),
            Ok((Packet::Truncated(len), _)) => {
                warning!("key process: dropped a {len}-byte control packet from the parent");
            }
        }
    }
}

/// Writes the log to the file the parent reopened, if `packet` passes one.
fn take_reopened_log(packet: &[u8], fds: Vec<OwnedFd>) {
    match FilesReopened::decode(packet) {
        Ok(files) if files.output && !files.histogram_log && fds.len() == 1 => {
            let file = fds.into_iter().next().map(std::fs::File::from);
            if let Some(file) = file {
                crate::log::replace_output(file);
                crate::notice!("key process: log file reopened");
            }
        }
        Ok(files) => warning!(
            "key process: the parent passed {} files for {files:?}; ignoring them",
            fds.len()
        ),
        Err(err) => warning!("key process: invalid control packet from the parent: {err}"),
    }
}

/// Loads every service's keys in resolver order and keeps their public parts for
/// the parent.
fn load_keys(config: &Config) -> Result<(Vec<HeldKey>, Vec<KeyDescription>), String> {
    let mut keys = Vec::new();
    let mut descriptions = Vec::new();
    for (service_index, service) in config.services.iter().enumerate() {
        let certs = crate::tls::load_certs(service).map_err(|err| err.to_string())?;
        for cert in certs {
            let held = HeldKey::new(cert.key.key.clone());
            if held.schemes.is_empty() {
                return Err(format!(
                    "service [{}]: the key of {} signs with no scheme rustls supports",
                    service.name,
                    cert.pattern.as_deref().unwrap_or("the certificate")
                ));
            }
            descriptions.push(KeyDescription {
                service: service_index as u32,
                algorithm: cert.key.key.algorithm(),
                schemes: held.schemes.clone(),
                chain: cert.key.cert.iter().map(|der| der.to_vec()).collect(),
            });
            keys.push(held);
        }
    }
    Ok((keys, descriptions))
}

fn fail(control: &OwnedFd, message: String) -> ! {
    let _ = process::send_packet(control, &StartupMessage::Failed(message).encode());
    crate::sys::exit_now(1)
}

fn send_or_exit(control: &OwnedFd, message: &StartupMessage) {
    if process::send_packet(control, &message.encode()).is_err() {
        crate::sys::exit_now(1);
    }
}

/// Malformed requests seen, across all workers; the first is logged as a
/// warning, the rest at debug level.
static MALFORMED: AtomicU64 = AtomicU64::new(0);

/// Environment variable of a test hook, compiled into debug builds only: a
/// number of milliseconds the key process waits before it replies to each request,
/// so tests can watch what workers do while a signature is outstanding. Release
/// builds ignore the variable.
pub const SIGN_DELAY_ENV: &str = "TLSPLICE_DEBUG_SIGN_DELAY_MS";

fn sign_delay() -> Option<Duration> {
    if !cfg!(debug_assertions) {
        return None;
    }
    let millis = std::env::var(SIGN_DELAY_ENV).ok()?.parse().ok()?;
    Some(Duration::from_millis(millis))
}

/// Maximum time the key process spends on one worker's requests, counted from
/// the start of the first one whose reply waits, before it sends the waiting
/// replies. With the time of the signature in progress, it bounds the delay
/// batching adds to a reply. A signature that takes longer by itself, as RSA
/// ones do, has its reply sent at once.
const MAX_REPLY_WAIT: Duration = Duration::from_micros(200);

/// Serves one worker's sign requests until its socket closes.
fn serve(worker: usize, socket: &OwnedFd, keys: &[HeldKey]) {
    let mut buf = vec![0u8; SIGN_PACKET_BUFFER];
    let delay = sign_delay();
    let mut outbox = Outbox {
        worker,
        socket,
        replies: Vec::new(),
        since: 0,
    };
    loop {
        let received = if outbox.replies.is_empty() {
            process::recv_packet(socket, &mut buf, None).map(Some)
        } else {
            process::try_recv_packet(socket, &mut buf)
        };
        let packet = match received {
            Ok(Some(packet)) => packet,
            Ok(None) => {
                outbox.send();
                continue;
            }
            Err(err) => {
                warning!("key process: receive from worker {worker} failed: {err}");
                return;
            }
        };
        match packet {
            Packet::Data(len) => {
                if let Some(delay) = delay {
                    crate::notice!(
                        "key process: holding a request of worker {worker} for {} ms (test hook)",
                        delay.as_millis()
                    );
                    process::pause(delay);
                    crate::notice!("key process: answering worker {worker} (test hook)");
                }
                match split_batch(&buf[..len]) {
                    Ok(messages) => {
                        for message in messages {
                            let started = process::monotonic_nanos();
                            let reply = answer(worker, message, keys);
                            outbox.push(reply, started, process::monotonic_nanos());
                        }
                    }
                    Err(err) => {
                        note_malformed(worker, &format!("invalid batch: {err}"));
                        let now = process::monotonic_nanos();
                        outbox.push(failed_reply(0, Status::Malformed), now, now);
                    }
                }
            }
            Packet::Truncated(len) => {
                note_malformed(worker, &format!("request of {len} bytes is too long"));
                let now = process::monotonic_nanos();
                outbox.push(failed_reply(0, Status::Malformed), now, now);
            }
            Packet::Closed => return,
        }
    }
}

/// The replies to one worker that wait to leave together. They wait while more
/// of the worker's requests are queued, until [`MAX_REPLY_WAIT`] has passed
/// since the first of them was started or [`MAX_BATCH_MESSAGES`] of them wait.
struct Outbox<'a> {
    worker: usize,
    socket: &'a OwnedFd,
    replies: Vec<Vec<u8>>,
    /// CLOCK_MONOTONIC nanoseconds when the work on the first waiting reply
    /// started.
    since: u64,
}

impl Outbox<'_> {
    /// Adds `reply`, whose request was taken up at `started`, and sends the
    /// waiting replies if a limit is reached at `now` (CLOCK_MONOTONIC
    /// nanoseconds).
    fn push(&mut self, reply: SignReply, started: u64, now: u64) {
        if self.replies.is_empty() {
            self.since = started;
        }
        self.replies.push(reply.encode());
        let waited = now.saturating_sub(self.since);
        if self.replies.len() >= MAX_BATCH_MESSAGES || waited >= MAX_REPLY_WAIT.as_nanos() as u64 {
            self.send();
        }
    }

    /// Sends the waiting replies in as few packets as the batch limits allow.
    fn send(&mut self) {
        for (packet, _) in pack_batches(&self.replies) {
            if let Err(err) = process::send_packet(self.socket, &packet) {
                debug!("key process: reply to worker {} failed: {err}", self.worker);
            }
        }
        self.replies.clear();
    }
}

fn failed_reply(seq: u64, status: Status) -> SignReply {
    SignReply {
        seq,
        status,
        signature: Vec::new(),
    }
}

fn note_malformed(worker: usize, detail: &str) {
    crate::log::warn_first(
        &MALFORMED,
        format_args!("key process: rejected a malformed request from worker {worker}: {detail}"),
    );
}

/// Decodes one request packet and builds its reply, signing when the request is valid.
pub fn answer(worker: usize, packet: &[u8], keys: &[HeldKey]) -> SignReply {
    let request = match SignRequest::decode(packet) {
        Ok(request) => request,
        Err((seq, err)) => {
            note_malformed(worker, &err.to_string());
            return failed_reply(seq.unwrap_or(0), Status::Malformed);
        }
    };
    let Some(held) = keys.get(request.key as usize) else {
        note_malformed(worker, &format!("no key {}", request.key));
        return failed_reply(request.seq, Status::UnknownKey);
    };
    if !held.schemes.contains(&request.scheme) {
        note_malformed(
            worker,
            &format!(
                "key {} does not sign with {:?}",
                request.key, request.scheme
            ),
        );
        return failed_reply(request.seq, Status::SchemeNotAllowed);
    }
    if process::monotonic_nanos() > request.deadline {
        debug!(
            "key process: request {} from worker {worker} expired",
            request.seq
        );
        return failed_reply(request.seq, Status::Expired);
    }
    let Some(signer) = held.key.choose_scheme(&[request.scheme]) else {
        return failed_reply(request.seq, Status::SchemeNotAllowed);
    };
    match signer.sign(&request.message) {
        Ok(signature) => SignReply {
            seq: request.seq,
            status: Status::Signed,
            signature,
        },
        Err(err) => {
            warning!("key process: signing failed: {err}");
            failed_reply(request.seq, Status::SignFailed)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::privsep::protocol::{SignReply, MAX_SIGNED_MESSAGE};
    use rustls::pki_types::PrivateKeyDer;

    fn ecdsa_key() -> (HeldKey, rcgen::KeyPair) {
        let pair = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let der = PrivateKeyDer::try_from(pair.serialize_der()).unwrap();
        let key = rustls::crypto::aws_lc_rs::sign::any_supported_type(&der).unwrap();
        (HeldKey::new(key), pair)
    }

    fn request(seq: u64, key: u32, scheme: SignatureScheme) -> SignRequest {
        SignRequest {
            seq,
            deadline: process::monotonic_nanos() + 60_000_000_000,
            key,
            scheme,
            message: b"signed content".to_vec(),
        }
    }

    fn exchange(socket: &OwnedFd, packet: &[u8]) -> SignReply {
        process::send_packet(socket, packet).unwrap();
        let mut buf = vec![0u8; SIGN_PACKET_BUFFER];
        let timeout = Some(std::time::Duration::from_secs(30));
        match process::recv_packet(socket, &mut buf, timeout).unwrap() {
            Packet::Data(len) => SignReply::decode(&buf[..len]).unwrap(),
            other => panic!("expected a reply, got {other:?}"),
        }
    }

    #[test]
    fn ecdsa_key_allows_only_its_scheme() {
        let (held, _) = ecdsa_key();
        assert_eq!(held.schemes(), &[SignatureScheme::ECDSA_NISTP256_SHA256]);
    }

    #[test]
    fn serving_loop_survives_malformed_requests() {
        let (held, pair) = ecdsa_key();
        let keys: Arc<[HeldKey]> = vec![held].into();
        let (worker, key_end) = process::seqpacket_pair().unwrap();
        let serving = {
            let keys = keys.clone();
            std::thread::spawn(move || serve(0, &key_end, &keys))
        };
        let scheme = SignatureScheme::ECDSA_NISTP256_SHA256;

        let empty = exchange(&worker, &[]);
        assert_eq!(empty.status, Status::Malformed);
        let garbage = exchange(&worker, &[0xff; 40]);
        assert_eq!(garbage.status, Status::Malformed);

        let mut truncated = request(11, 0, scheme).encode();
        truncated.truncate(20);
        let reply = exchange(&worker, &truncated);
        assert_eq!((reply.seq, reply.status), (11, Status::Malformed));

        let mut oversized = request(12, 0, scheme);
        oversized.message = vec![0; MAX_SIGNED_MESSAGE * 4];
        let reply = exchange(&worker, &oversized.encode());
        assert_eq!(reply.status, Status::Malformed);

        let reply = exchange(&worker, &request(13, 5, scheme).encode());
        assert_eq!((reply.seq, reply.status), (13, Status::UnknownKey));

        let wrong_scheme = SignatureScheme::RSA_PSS_SHA256;
        let reply = exchange(&worker, &request(14, 0, wrong_scheme).encode());
        assert_eq!((reply.seq, reply.status), (14, Status::SchemeNotAllowed));

        let mut expired = request(15, 0, scheme);
        expired.deadline = 0;
        let reply = exchange(&worker, &expired.encode());
        assert_eq!((reply.seq, reply.status), (15, Status::Expired));

        let reply = exchange(&worker, &request(16, 0, scheme).encode());
        assert_eq!((reply.seq, reply.status), (16, Status::Signed));
        let verified = webpki::aws_lc_rs::ECDSA_P256_SHA256.verify_signature(
            pair.public_key_raw(),
            b"signed content",
            &reply.signature,
        );
        assert!(verified.is_ok(), "signature does not verify");

        drop(worker);
        serving.join().unwrap();
    }

    /// Receives reply packets until `count` replies arrived, and returns them in
    /// arrival order with the number of packets they came in.
    fn receive_replies(socket: &OwnedFd, count: usize) -> (Vec<SignReply>, usize) {
        let mut buf = vec![0u8; SIGN_PACKET_BUFFER];
        let timeout = Some(std::time::Duration::from_secs(30));
        let (mut replies, mut packets) = (Vec::new(), 0);
        while replies.len() < count {
            let Packet::Data(len) = process::recv_packet(socket, &mut buf, timeout).unwrap() else {
                panic!("expected a reply packet");
            };
            packets += 1;
            for message in split_batch(&buf[..len]).unwrap() {
                replies.push(SignReply::decode(message).unwrap());
            }
        }
        (replies, packets)
    }

    #[test]
    fn outbox_sends_when_wait_passes() {
        let (worker, key_end) = process::seqpacket_pair().unwrap();
        let mut outbox = Outbox {
            worker: 0,
            socket: &key_end,
            replies: Vec::new(),
            since: 0,
        };
        let wait = MAX_REPLY_WAIT.as_nanos() as u64;
        let reply = |seq| failed_reply(seq, Status::Expired);

        // A reply that took the whole wait to make leaves at once, alone.
        outbox.push(reply(1), 0, wait);
        let (replies, packets) = receive_replies(&worker, 1);
        assert_eq!(replies[0].seq, 1);
        assert_eq!(packets, 1);

        // Quick replies wait for each other until the wait has passed.
        let start = 10 * wait;
        outbox.push(reply(2), start, start + 1000);
        outbox.push(reply(3), start + 1000, start + 2000);
        assert_eq!(outbox.replies.len(), 2);
        outbox.push(reply(4), start + 2000, start + wait);
        assert!(outbox.replies.is_empty());
        let (replies, packets) = receive_replies(&worker, 3);
        let seqs: Vec<u64> = replies.iter().map(|reply| reply.seq).collect();
        assert_eq!(seqs, [2, 3, 4]);
        assert_eq!(packets, 1);
    }

    #[test]
    fn batched_requests_each_get_their_reply() {
        let (held, pair) = ecdsa_key();
        let keys: Arc<[HeldKey]> = vec![held].into();
        let (worker, key_end) = process::seqpacket_pair().unwrap();
        let scheme = SignatureScheme::ECDSA_NISTP256_SHA256;

        // Everything is queued before the key thread starts, as when a worker
        // sends while the key thread waits for the CPU.
        let mut truncated = request(2, 0, scheme).encode();
        truncated.truncate(20);
        let batch = vec![
            request(1, 0, scheme).encode(),
            truncated,
            request(3, 7, scheme).encode(),
            request(4, 0, scheme).encode(),
        ];
        let (packet, count) = pack_batches(&batch).remove(0);
        assert_eq!(count, 4);
        process::send_packet(&worker, &packet).unwrap();
        process::send_packet(&worker, &request(5, 0, scheme).encode()).unwrap();
        // A batch that claims to carry no message.
        let mut empty_batch = packet.clone();
        empty_batch[1] = 0;
        process::send_packet(&worker, &empty_batch).unwrap();

        let serving = {
            let keys = keys.clone();
            std::thread::spawn(move || serve(0, &key_end, &keys))
        };
        let (replies, packets) = receive_replies(&worker, 6);
        let outcomes: Vec<(u64, Status)> = replies
            .iter()
            .map(|reply| (reply.seq, reply.status))
            .collect();
        assert_eq!(
            outcomes,
            [
                (1, Status::Signed),
                (2, Status::Malformed),
                (3, Status::UnknownKey),
                (4, Status::Signed),
                (5, Status::Signed),
                (0, Status::Malformed),
            ]
        );
        assert!(packets < 6, "six replies came in {packets} packets");
        for reply in replies
            .iter()
            .filter(|reply| reply.status == Status::Signed)
        {
            let verified = webpki::aws_lc_rs::ECDSA_P256_SHA256.verify_signature(
                pair.public_key_raw(),
                b"signed content",
                &reply.signature,
            );
            assert!(verified.is_ok(), "signature {} does not verify", reply.seq);
        }

        // A lone request still gets a reply of its own.
        let reply = exchange(&worker, &request(6, 0, scheme).encode());
        assert_eq!((reply.seq, reply.status), (6, Status::Signed));

        drop(worker);
        serving.join().unwrap();
    }
}
