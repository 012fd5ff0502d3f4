//! Handshake steps that may wait for a signature, run as coroutines on the
//! worker thread.
//!
//! With privilege separation the certificate keys live in the key process, and a
//! signature is a round trip to it. rustls requests the signature synchronously,
//! while it processes a ClientHello. So the worker runs that step as a
//! coroutine: the signer sends the request and suspends the step, the worker
//! serves its other connections, and the reply, received through the ring,
//! resumes the step where it stopped.

use std::io;
use std::time::Instant;

use corosensei::stack::DefaultStack;
use corosensei::{Coroutine, CoroutineResult};

use crate::sys::suspend::{self, StepYielder};
use crate::tls::{Progress, TlsSession};

/// Stack size of a step, an estimate with room to spare: the RSA and ECDSA
/// handshakes of the tests fit. Pages that a step never touches take no memory.
const STACK_SIZE: usize = 256 * 1024;
/// Stacks kept for reuse, at most.
// NOTE: each suspended step keeps its own stack, so the memory of a worker grows
// with the handshakes that wait for the key process at one time (the pages a
// step touched, not the whole 256 KiB). Nothing caps that number below maxconn.
const STACK_POOL_MAX: usize = 64;

/// The result of one step, with the session to put back.
pub struct Output {
    pub tls: TlsSession,
    /// The step's input; the bytes past `Progress::consumed` are a partial record.
    pub input: Vec<u8>,
    /// Handshake messages and alerts for the client.
    pub to_client: Vec<u8>,
    /// Application data that arrived with the handshake.
    pub plaintext: Vec<u8>,
    pub result: Result<Progress, rustls::Error>,
}

/// The step's closure and its output move through the coroutine's stack
/// switch, which takes at most 1 KiB, so both are boxed.
type StepCoroutine = Coroutine<Option<Vec<u8>>, u64, Box<Output>, DefaultStack>;

/// A step suspended until the key process replies to request `seq`.
pub struct Suspended {
    coroutine: StepCoroutine,
    pub seq: u64,
    pub since: Instant,
}

/// The state of a step after it ran.
pub enum State {
    Suspended(Suspended),
    Done(Box<Output>),
}

/// The worker's pool of step stacks.
#[derive(Default)]
pub struct Steps {
    stacks: Vec<DefaultStack>,
}

impl Steps {
    /// Runs a step over `input` with the session `tls` until it finishes or
    /// waits for a signature.
    pub fn start(&mut self, tls: TlsSession, input: Vec<u8>) -> io::Result<State> {
        let mut work = Box::new((tls, input));
        let stack = match self.stacks.pop() {
            Some(stack) => stack,
            None => DefaultStack::new(STACK_SIZE)?,
        };
        let mut coroutine = Coroutine::with_stack(
            stack,
            move |yielder: &StepYielder, _first: Option<Vec<u8>>| {
                suspend::run_suspendable(yielder, move || {
                    let (tls, input) = &mut *work;
                    let mut to_client = Vec::new();
                    let mut plaintext = Vec::new();
                    let result = tls.read(input, &mut to_client, &mut plaintext);
                    let (tls, input) = *work;
                    Box::new(Output {
                        tls,
                        input,
                        to_client,
                        plaintext,
                        result,
                    })
                })
            },
        );
        let result = coroutine.resume(None);
        Ok(self.settle(coroutine, result))
    }

    /// Resumes a suspended step with the reply packet, or with `None` to give up
    /// waiting, which fails the signature and so the handshake.
    pub fn resume(&mut self, step: Suspended, reply: Option<Vec<u8>>) -> State {
        let Suspended { mut coroutine, .. } = step;
        let result = coroutine.resume(reply);
        self.settle(coroutine, result)
    }

    fn settle(
        &mut self,
        coroutine: StepCoroutine,
        result: CoroutineResult<u64, Box<Output>>,
    ) -> State {
        match result {
            CoroutineResult::Yield(seq) => State::Suspended(Suspended {
                coroutine,
                seq,
                since: Instant::now(),
            }),
            CoroutineResult::Return(output) => {
                if self.stacks.len() < STACK_POOL_MAX {
                    self.stacks.push(coroutine.into_stack());
                }
                State::Done(output)
            }
        }
    }
}
