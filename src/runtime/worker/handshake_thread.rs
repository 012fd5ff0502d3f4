//! A worker's handshake thread, for the handshake steps that may sign.
//!
//! With privilege separation the certificate keys live in the key process, and a
//! signature is a round trip to it. rustls requests the signature synchronously,
//! while it answers a ClientHello, so the worker hands that step to this thread
//! and keeps serving its other connections in the meantime. The thread takes the
//! connection's TLS session and input, runs one [`TlsSession::read`], sends
//! everything back, and signals an eventfd that the worker's ring reads.
//!
//! The thread starts before the seccomp filter, which forbids creating threads,
//! and inherits the worker's CPU. It processes one step at a time: the key
//! process answers one request per worker link at a time anyway.

use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::sync::mpsc;

use crate::tls::{Progress, TlsSession};
use crate::warning;

/// One handshake step for the thread: the session, lent by its connection, and
/// the bytes to process (a partial record left over, then what arrived).
pub struct Step {
    pub slot: u32,
    pub generation: u32,
    pub tls: TlsSession,
    pub input: Vec<u8>,
}

/// A processed step, with the session to put back.
pub struct Finished {
    pub slot: u32,
    pub generation: u32,
    pub tls: TlsSession,
    /// The step's input; the bytes past `Progress::consumed` are a partial record.
    pub input: Vec<u8>,
    /// Handshake messages and alerts for the client.
    pub to_client: Vec<u8>,
    /// Application data that arrived with the handshake.
    pub plaintext: Vec<u8>,
    pub result: Result<Progress, rustls::Error>,
}

pub struct HandshakeThread {
    steps: mpsc::Sender<Step>,
    finished: mpsc::Receiver<Finished>,
    ready: OwnedFd,
}

impl HandshakeThread {
    /// Starts the thread of worker `index`.
    pub fn start(index: usize) -> io::Result<HandshakeThread> {
        let ready = crate::sys::eventfd()?;
        let signal = ready.try_clone()?;
        let (steps, step_rx) = mpsc::channel::<Step>();
        let (finished_tx, finished) = mpsc::channel::<Finished>();
        let (started_tx, started) = mpsc::sync_channel::<()>(1);
        std::thread::Builder::new()
            .name(format!("tlsplice-handshake-{index}"))
            .spawn(move || {
                let _ = started_tx.send(());
                serve(index, &step_rx, &finished_tx, &signal)
            })?;
        // A new thread makes syscalls of its own set-up (its name, signal stack,
        // robust futex list) that the seccomp filter forbids, so the filter must
        // wait until the thread runs its own code.
        started.recv().map_err(|_| ended())?;
        Ok(HandshakeThread {
            steps,
            finished,
            ready,
        })
    }

    /// Returns the eventfd that the thread signals after each finished step.
    pub fn ready_fd(&self) -> RawFd {
        self.ready.as_raw_fd()
    }

    /// Queues a step. Fails only when the thread has ended.
    pub fn submit(&self, step: Step) -> io::Result<()> {
        self.steps.send(step).map_err(|_| ended())
    }

    /// Returns the next finished step, `Ok(None)` when none is waiting, and an
    /// error when the thread has ended.
    pub fn take_finished(&self) -> io::Result<Option<Finished>> {
        match self.finished.try_recv() {
            Ok(finished) => Ok(Some(finished)),
            Err(mpsc::TryRecvError::Empty) => Ok(None),
            Err(mpsc::TryRecvError::Disconnected) => Err(ended()),
        }
    }
}

fn ended() -> io::Error {
    io::Error::other("the handshake thread has ended")
}

/// Runs steps until the worker drops its end of the channel.
fn serve(
    index: usize,
    steps: &mpsc::Receiver<Step>,
    finished: &mpsc::Sender<Finished>,
    signal: &OwnedFd,
) {
    while let Ok(step) = steps.recv() {
        let Step {
            slot,
            generation,
            mut tls,
            mut input,
        } = step;
        let mut to_client = Vec::new();
        let mut plaintext = Vec::new();
        let result = tls.read(&mut input, &mut to_client, &mut plaintext);
        let done = Finished {
            slot,
            generation,
            tls,
            input,
            to_client,
            plaintext,
            result,
        };
        if finished.send(done).is_err() {
            return;
        }
        if let Err(err) = crate::sys::eventfd_signal(signal) {
            warning!("worker {index}: the handshake thread cannot wake the worker: {err}");
            return;
        }
    }
}
