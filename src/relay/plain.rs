//! Runs one [`SpliceRelay`] between two plain TCP sockets on its own io_uring,
//! outside a worker, in either splice mode.
//!
//! The relay moves bytes through pipes the same way with or without kernel TLS,
//! so host tests and the splice benchmark use this driver on kernels without the
//! tls ULP. The worker drives the relay with the same requests in
//! `runtime/worker/kernel_tls.rs`, tagged with its connection tokens.

use std::io;
use std::net::Shutdown;
use std::os::fd::{AsRawFd, BorrowedFd};
use std::time::Duration;

use socket2::SockRef;

use super::splice::{PipePool, Pumped, Sockets, SpliceRelay, Stage, Wants, RING_IO_WORKERS};
use crate::config::SpliceMode;
use crate::sys::ring::{Completion, Op, Ring, RingConfig};
use crate::tls::kernel;

/// Tags of this driver's operations: splices use their [`Stage`] number.
const TAG_CLIENT_READABLE: u64 = 10;
const TAG_CLIENT_WRITABLE: u64 = 11;
const TAG_BACKEND_READABLE: u64 = 12;
const TAG_BACKEND_WRITABLE: u64 = 13;
const TAG_DEADLINE: u64 = 20;

/// Bytes a finished relay moved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Relayed {
    /// Client to backend.
    pub up: u64,
    /// Backend to client.
    pub down: u64,
}

/// Relays between `client` and `backend`, both connected non-blocking TCP
/// sockets, until both have sent FIN and every byte was delivered. Each FIN is
/// passed on with shutdown(SHUT_WR). Fails with `TimedOut` after `timeout`, and
/// with the relay's message when a splice fails.
pub fn relay_plain(
    client: BorrowedFd<'_>,
    backend: BorrowedFd<'_>,
    mode: SpliceMode,
    timeout: Duration,
) -> io::Result<Relayed> {
    let mut ring = Ring::new(RingConfig {
        entries: 64,
        // Nothing here receives into provided buffers; the ring needs at least one.
        buffers: 1,
        buffer_size: 64,
        io_workers: (mode == SpliceMode::Ring).then_some(RING_IO_WORKERS),
    })?;
    ring.submit(TAG_DEADLINE, Op::Timeout { after: timeout })?;

    let mut driver = Driver {
        relay: SpliceRelay::plain(),
        pool: PipePool::new(2),
        polling: Wants::default(),
        splices_in_flight: 0,
        relayed: Relayed { up: 0, down: 0 },
        up_finished: false,
        down_finished: false,
    };
    let sockets = Sockets { client, backend };
    let support = kernel::probe();
    let mut completions = Vec::new();
    loop {
        let pumped = match mode {
            SpliceMode::Direct => driver.relay.pump(sockets, &mut driver.pool, support, false),
            SpliceMode::Ring => {
                driver
                    .relay
                    .pump_ring(sockets, &mut driver.pool, support, false, driver.polling)
            }
        };
        driver.apply(sockets, &mut ring, pumped)?;
        if driver.up_finished && driver.down_finished && driver.splices_in_flight == 0 {
            return Ok(driver.relayed);
        }

        ring.submit_and_wait(1)?;
        ring.reap(&mut completions);
        for completion in completions.drain(..) {
            driver.complete(sockets, &mut ring, completion)?;
        }
    }
}

struct Driver {
    relay: SpliceRelay,
    pool: PipePool,
    /// Polls in flight.
    polling: Wants,
    splices_in_flight: usize,
    relayed: Relayed,
    up_finished: bool,
    down_finished: bool,
}

impl Driver {
    fn complete(
        &mut self,
        sockets: Sockets<'_>,
        ring: &mut Ring,
        completion: Completion,
    ) -> io::Result<()> {
        let poll_done = match completion.tag {
            TAG_DEADLINE => {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "the relay did not finish before its deadline",
                ))
            }
            TAG_CLIENT_READABLE => &mut self.polling.client_readable,
            TAG_CLIENT_WRITABLE => &mut self.polling.client_writable,
            TAG_BACKEND_READABLE => &mut self.polling.backend_readable,
            TAG_BACKEND_WRITABLE => &mut self.polling.backend_writable,
            tag => {
                let stage = Stage::ALL[tag as usize];
                self.splices_in_flight -= 1;
                let pumped = self
                    .relay
                    .splice_done(stage, completion.result, &mut self.pool);
                return self.apply(sockets, ring, pumped);
            }
        };
        *poll_done = false;
        Ok(())
    }

    fn apply(&mut self, sockets: Sockets<'_>, ring: &mut Ring, pumped: Pumped) -> io::Result<()> {
        self.relayed.up += pumped.up;
        self.relayed.down += pumped.down;
        if let Some(end) = pumped.end {
            return Err(io::Error::other(end.message));
        }
        if pumped.up_finished {
            self.up_finished = true;
            SockRef::from(&sockets.backend).shutdown(Shutdown::Write)?;
        }
        if pumped.down_finished {
            self.down_finished = true;
            SockRef::from(&sockets.client).shutdown(Shutdown::Write)?;
        }

        let client = sockets.client.as_raw_fd();
        let backend = sockets.backend.as_raw_fd();
        let wants = pumped.wants;
        for (wanted, polling, tag, op) in [
            (
                wants.client_readable,
                &mut self.polling.client_readable,
                TAG_CLIENT_READABLE,
                Op::PollIn { fd: client },
            ),
            (
                wants.client_writable,
                &mut self.polling.client_writable,
                TAG_CLIENT_WRITABLE,
                Op::PollOut { fd: client },
            ),
            (
                wants.backend_readable,
                &mut self.polling.backend_readable,
                TAG_BACKEND_READABLE,
                Op::PollIn { fd: backend },
            ),
            (
                wants.backend_writable,
                &mut self.polling.backend_writable,
                TAG_BACKEND_WRITABLE,
                Op::PollOut { fd: backend },
            ),
        ] {
            if wanted && !*polling {
                *polling = true;
                ring.submit(tag, op)?;
            }
        }

        for (stage, request) in Stage::ALL.into_iter().zip(pumped.splices) {
            if let Some(request) = request {
                self.splices_in_flight += 1;
                ring.submit(stage as u64, request.op())?;
            }
        }
        Ok(())
    }
}
