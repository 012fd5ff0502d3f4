//! The link between a suspendable handshake step and the signer it calls.
//!
//! A worker runs each handshake step that may need a remote signature as a
//! coroutine. rustls calls the signer deep inside that step, and the signer
//! suspends the coroutine through its yielder until the key process replies.
//! The yielder reaches the signer through a thread-local pointer, which is set
//! only while the coroutine runs.

use std::cell::Cell;
use std::ptr;

/// The yielder of a handshake step: it suspends with the sequence number of the
/// signature request it waits for, and resumes with the reply packet, or with
/// `None` when the worker gives up waiting.
pub type StepYielder = corosensei::Yielder<Option<Vec<u8>>, u64>;

thread_local! {
    static CURRENT: Cell<*const StepYielder> = const { Cell::new(ptr::null()) };
}

/// Restores the previous yielder when a step body returns or unwinds.
struct Restore(*const StepYielder);

impl Drop for Restore {
    fn drop(&mut self) {
        CURRENT.with(|current| current.set(self.0));
    }
}

/// Runs `body` with `yielder` as the one [`suspend`] uses on this thread.
pub fn run_suspendable<R>(yielder: &StepYielder, body: impl FnOnce() -> R) -> R {
    let previous = CURRENT.with(|current| current.replace(yielder));
    let _restore = Restore(previous);
    body()
}

/// Tells whether the calling code runs inside [`run_suspendable`], so that
/// [`suspend`] can wait.
pub fn can_suspend() -> bool {
    CURRENT.with(|current| !current.get().is_null())
}

/// Suspends the running step until the worker resumes it with the reply to
/// request `seq`. Returns `None` outside a suspendable step, and `Some(None)`
/// when the worker gave up waiting.
pub fn suspend(seq: u64) -> Option<Option<Vec<u8>>> {
    let yielder = CURRENT.with(|current| current.replace(ptr::null()));
    if yielder.is_null() {
        return None;
    }
    // SAFETY: only `run_suspendable` stores a non-null pointer, taken from a
    // yielder reference that is valid while its body runs, and it restores the
    // previous value before returning. The pointer is cleared above for the time
    // the step is suspended, so it is never used while the coroutine is not
    // running, and it is put back below once the coroutine runs again.
    let reply = unsafe { (*yielder).suspend(seq) };
    CURRENT.with(|current| current.set(yielder));
    Some(reply)
}
