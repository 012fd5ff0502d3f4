//! The worker's side of kernel TLS: choosing the data path after the handshake,
//! the hand-off to the kernel, and running the splice relay from `drive`.
//!
//! Hand-off order: the backend connection is up, every byte rustls produced for
//! the client (TLS 1.2 Finished, TLS 1.3 session tickets) has been sent, and no
//! receive is in flight. A partial record left in the receive buffer is completed
//! first by reading exactly its missing bytes with recv(2), so the kernel starts at
//! a record boundary. Plaintext rustls decrypted before the hand-off stays in
//! `to_backend`, and the splice relay pauses the client-to-backend direction until
//! it is sent.

use std::io::{self, Read};
use std::os::fd::AsFd;
use std::time::Instant;

use socket2::SockRef;

use super::{display_addr, Slot, Worker};
use crate::config::SpliceMode;
use crate::log::CloseReason;
use crate::relay::splice::{Pumped, Sockets, SpliceRelay, SpliceRequest, Stage, Wants};
use crate::relay::DataPath;
use crate::runtime::conn::Phase;
use crate::runtime::token::{Kind, Token};
use crate::sys::ring::Op;
use crate::tls::kernel::{self, RecordBudget};
use crate::{debug, notice, warning};

/// TLS record header: type, version, 16-bit length.
const RECORD_HEADER_LEN: usize = 5;

/// Whether `drive` may go on with the connection after a kernel TLS step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Flow {
    Continue,
    /// The connection was closed, or another call already drove it; its slot may
    /// be free.
    Stopped,
}

impl Worker {
    /// Decides after the handshake whether the connection moves to kernel TLS,
    /// from the service's `ktls` option, the kernel probe and the negotiated suite.
    pub(super) fn choose_data_path(&mut self, slot: u32) -> io::Result<Flow> {
        let services = self.services.clone();
        let conn = self.conn(slot);
        let service = &services[conn.service];
        let mode = service.config.ktls;
        if mode == crate::config::KtlsMode::Off {
            return Ok(Flow::Continue);
        }

        let support = kernel::probe();
        let suite = conn.tls.cipher_suite();
        if suite.is_some_and(|suite| kernel::can_offload(suite, support)) {
            conn.handoff_pending = true;
            return Ok(Flow::Continue);
        }

        let suite_name = suite
            .and_then(|suite| suite.suite().as_str())
            .unwrap_or("unknown");
        if mode == crate::config::KtlsMode::On {
            warning!(
                "service {}: client {}: ktls = on, but cipher suite {suite_name} cannot be offloaded ({support}); closing the connection",
                service.name,
                display_addr(conn.client_addr)
            );
            self.close(slot, CloseReason::Internal)?;
            return Ok(Flow::Stopped);
        }
        debug!(
            "client {}: using the userspace path: cipher suite {suite_name} cannot be offloaded ({support})",
            display_addr(conn.client_addr)
        );
        Ok(Flow::Continue)
    }

    /// Runs the hand-off when it is due and the splice relay once it is done.
    pub(super) fn drive_kernel_tls(&mut self, slot: u32) -> io::Result<Flow> {
        if self.conn(slot).handoff_pending {
            let flow = self.try_handoff(slot)?;
            if flow == Flow::Stopped || self.conn(slot).handoff_pending {
                return Ok(flow);
            }
        }
        let conn = self.conn(slot);
        if conn.splice.is_none() || conn.phase != Phase::Relaying {
            return Ok(Flow::Continue);
        }
        self.pump(slot)
    }

    fn try_handoff(&mut self, slot: u32) -> io::Result<Flow> {
        let conn = self.conn(slot);
        if conn.phase != Phase::Relaying
            || !conn.relay.to_client.is_empty()
            || conn.is_inflight(Kind::ClientSend)
            || conn.is_inflight(Kind::ClientRecv)
        {
            return Ok(Flow::Continue);
        }
        // After an error or the client's close_notify nothing more is read from
        // the client, so the userspace path finishes the connection.
        if conn.close_after_flush.is_some() || conn.client_eof {
            conn.handoff_pending = false;
            return Ok(Flow::Continue);
        }

        if !conn.relay.partial_record.is_empty() {
            let flow = self.complete_partial_record(slot)?;
            let conn = self.conn(slot);
            if flow == Flow::Stopped
                || !conn.handoff_pending
                || !conn.relay.partial_record.is_empty()
            {
                return Ok(flow);
            }
        }
        self.hand_off(slot)
    }

    /// Reads the missing bytes of the partial record in the userspace buffer, no
    /// more, and lets rustls process the record.
    fn complete_partial_record(&mut self, slot: u32) -> io::Result<Flow> {
        let Slot::Used(conn) = &mut self.slots[slot as usize] else {
            unreachable!("slot {slot} is free")
        };
        let missing = missing_record_bytes(&conn.relay.partial_record);
        let mut buf = vec![0u8; missing];
        let read = if missing == 0 {
            Ok(0)
        } else {
            (&*SockRef::from(&conn.client)).read(&mut buf)
        };
        let received = match read {
            Ok(0) if missing > 0 => {
                // A FIN in the middle of a record: the userspace path reports it.
                conn.handoff_pending = false;
                return Ok(Flow::Continue);
            }
            Ok(received) => received,
            Err(err) if err.kind() == io::ErrorKind::WouldBlock => {
                self.post_poll(slot, Kind::ClientReadable)?;
                return Ok(Flow::Continue);
            }
            Err(err) => {
                debug!(
                    "client {}: receive failed: {err}",
                    display_addr(conn.client_addr)
                );
                self.close(slot, CloseReason::ClientReset)?;
                return Ok(Flow::Stopped);
            }
        };

        let now = Instant::now();
        conn.last_activity = now;
        let before = conn.relay.to_backend.len();
        let result = conn.relay.client_bytes(&mut conn.tls, &mut buf[..received]);
        let plaintext = conn.relay.to_backend.len() - before;
        conn.bytes_up += plaintext as u64;
        if plaintext > 0 {
            conn.first_request_at.get_or_insert(now);
        }
        match result {
            Ok(progress) => {
                if progress.peer_closed {
                    conn.client_eof = true;
                    conn.handoff_pending = false;
                    self.mark_half_closed(slot);
                } else if missing == 0 && !conn.relay.partial_record.is_empty() {
                    // rustls kept bytes it should have processed; do not loop on them.
                    conn.handoff_pending = false;
                }
            }
            Err(err) => {
                debug!(
                    "client {}: TLS error: {err}",
                    display_addr(conn.client_addr)
                );
                conn.close_after_flush = Some(CloseReason::TlsError);
                conn.handoff_pending = false;
            }
        }
        Ok(Flow::Continue)
    }

    /// Moves the session into the kernel and starts the splice relay.
    fn hand_off(&mut self, slot: u32) -> io::Result<Flow> {
        let conn = self.conn(slot);
        let client = display_addr(conn.client_addr);
        // The ULP goes on first, while the rustls session is still whole, so a
        // socket that cannot take it stays on the userspace path.
        if let Err(err) = kernel::attach_ulp(conn.client.as_fd()) {
            debug!("client {client}: staying on the userspace path: {err}");
            conn.handoff_pending = false;
            return Ok(Flow::Continue);
        }
        let Some(session) = conn.tls.take_for_kernel() else {
            warning!("client {client}: kernel TLS hand-off found no TLS session; closing");
            self.close(slot, CloseReason::Internal)?;
            return Ok(Flow::Stopped);
        };
        let (secrets, kernel_conn) = match kernel::into_kernel_connection(session) {
            Ok(parts) => parts,
            Err(err) => {
                warning!("client {client}: {err}; closing the connection");
                self.close(slot, CloseReason::Internal)?;
                return Ok(Flow::Stopped);
            }
        };
        let version = kernel_conn.protocol_version();
        if let Err(err) = kernel::install_keys(conn.client.as_fd(), version, &secrets) {
            warning!("client {client}: {err}; closing the connection");
            self.close(slot, CloseReason::Internal)?;
            return Ok(Flow::Stopped);
        }

        let suite = conn
            .tls
            .cipher_suite()
            .expect("a finished handshake has a cipher suite");
        let budget = RecordBudget::new(suite, secrets.tx.0);
        drop(secrets);
        conn.splice = Some(Box::new(SpliceRelay::new(kernel_conn, budget)));
        conn.handoff_pending = false;
        conn.path = DataPath::Ktls;
        conn.relay.shrink_idle();
        debug!("client {client}: handed off to kernel TLS");
        Ok(Flow::Continue)
    }

    /// Runs the splice relay in the configured mode and applies what it reports.
    fn pump(&mut self, slot: u32) -> io::Result<Flow> {
        let support = kernel::probe();
        let mode = self.splice_mode;
        let Slot::Used(conn) = &mut self.slots[slot as usize] else {
            unreachable!("slot {slot} is free")
        };
        let Some(backend) = conn.backend.as_ref() else {
            return Ok(Flow::Continue);
        };
        let sockets = Sockets {
            client: conn.client.as_fd(),
            backend: backend.as_fd(),
        };
        let up_paused = !conn.relay.to_backend.is_empty() || conn.is_inflight(Kind::BackendSend);
        let polling = Wants {
            client_readable: conn.is_inflight(Kind::ClientReadable),
            client_writable: conn.is_inflight(Kind::ClientWritable),
            backend_readable: conn.is_inflight(Kind::BackendReadable),
            backend_writable: conn.is_inflight(Kind::BackendWritable),
        };
        let splice = conn.splice.as_mut().expect("the caller checked the relay");
        let pumped = match mode {
            SpliceMode::Direct => splice.pump(sockets, &mut self.pipes, support, up_paused),
            SpliceMode::Ring => {
                splice.pump_ring(sockets, &mut self.pipes, support, up_paused, polling)
            }
        };
        self.apply_pumped(slot, pumped)
    }

    /// Ring mode: passes a splice completion to the relay, then drives the
    /// connection on.
    pub(super) fn on_splice_done(
        &mut self,
        slot: u32,
        kind: Kind,
        result: Result<u32, i32>,
    ) -> io::Result<()> {
        let stage = match kind {
            Kind::ClientToPipe => Stage::ClientToPipe,
            Kind::PipeToBackend => Stage::PipeToBackend,
            Kind::BackendToPipe => Stage::BackendToPipe,
            Kind::PipeToClient => Stage::PipeToClient,
            _ => unreachable!("{kind:?} is not a splice"),
        };
        let Slot::Used(conn) = &mut self.slots[slot as usize] else {
            unreachable!("slot {slot} is free")
        };
        let splice = conn
            .splice
            .as_mut()
            .expect("a splice completed for a connection without a splice relay");
        let pumped = splice.splice_done(stage, result, &mut self.pipes);
        if self.apply_pumped(slot, pumped)? == Flow::Stopped {
            return Ok(());
        }
        self.drive(slot)
    }

    /// Applies what one relay step reports: byte counts, finished directions,
    /// the end of the connection, and the polls and splices to submit.
    fn apply_pumped(&mut self, slot: u32, pumped: Pumped) -> io::Result<Flow> {
        let Pumped {
            up,
            down,
            active,
            wants,
            up_finished,
            down_finished,
            plaintext,
            end,
            splices,
        } = pumped;
        let Slot::Used(conn) = &mut self.slots[slot as usize] else {
            unreachable!("slot {slot} is free")
        };
        let now = Instant::now();
        if active || up_finished || down_finished {
            conn.last_activity = now;
            conn.last_progress = now;
        }
        conn.bytes_up += up;
        conn.bytes_down += down;
        if up > 0 {
            conn.first_request_at.get_or_insert(now);
        }
        if down > 0 && !conn.backend_replied {
            conn.backend_replied = true;
            if let Some(request) = conn.first_request_at {
                self.metrics.first_byte(conn.service, now - request);
            }
        }
        if let Some(plaintext) = plaintext {
            conn.bytes_up += plaintext.len() as u64;
            conn.first_request_at.get_or_insert(now);
            conn.relay.to_backend.extend_from_slice(&plaintext);
        }
        if up_finished {
            conn.client_eof = true;
            self.mark_half_closed(slot);
        }
        if down_finished {
            let conn = self.conn(slot);
            conn.backend_eof = true;
            // close_notify went out through the kernel; the drive loop sends the FIN.
            conn.close_notify_queued = true;
            self.mark_half_closed(slot);
        }

        if let Some(end) = end {
            let conn = self.conn(slot);
            let client = display_addr(conn.client_addr);
            if end.notify_client {
                notice!("client {client}: {}; closing the connection", end.message);
                let _ = kernel::send_close_notify(conn.client.as_fd());
            } else {
                debug!("client {client}: {}; closing the connection", end.message);
            }
            self.close(slot, end.reason)?;
            return Ok(Flow::Stopped);
        }
        self.post_polls(slot, wants)?;
        self.submit_splices(slot, splices)?;
        Ok(Flow::Continue)
    }

    /// Ring mode: submits the splices the relay requested.
    fn submit_splices(&mut self, slot: u32, splices: [Option<SpliceRequest>; 4]) -> io::Result<()> {
        for (stage, request) in Stage::ALL.into_iter().zip(splices) {
            let Some(request) = request else {
                continue;
            };
            let kind = match stage {
                Stage::ClientToPipe => Kind::ClientToPipe,
                Stage::PipeToBackend => Kind::PipeToBackend,
                Stage::BackendToPipe => Kind::BackendToPipe,
                Stage::PipeToClient => Kind::PipeToClient,
            };
            let conn = self.conn(slot);
            conn.set_inflight(kind);
            let tag = Token::new(kind, slot, conn.generation).encode();
            self.ring.submit(tag, request.op())?;
        }
        Ok(())
    }

    fn post_polls(&mut self, slot: u32, wants: Wants) -> io::Result<()> {
        for (wanted, kind) in [
            (wants.client_readable, Kind::ClientReadable),
            (wants.client_writable, Kind::ClientWritable),
            (wants.backend_readable, Kind::BackendReadable),
            (wants.backend_writable, Kind::BackendWritable),
        ] {
            if wanted {
                self.post_poll(slot, kind)?;
            }
        }
        Ok(())
    }

    /// Submits a one-shot poll unless one of the same kind is in flight.
    fn post_poll(&mut self, slot: u32, kind: Kind) -> io::Result<()> {
        let conn = self.conn(slot);
        if conn.is_inflight(kind) {
            return Ok(());
        }
        let client = conn.client.as_fd();
        let backend = conn.backend.as_ref().map(AsFd::as_fd);
        let op = match (kind, backend) {
            (Kind::ClientReadable, _) => Op::PollIn {
                fd: std::os::fd::AsRawFd::as_raw_fd(&client),
            },
            (Kind::ClientWritable, _) => Op::PollOut {
                fd: std::os::fd::AsRawFd::as_raw_fd(&client),
            },
            (Kind::BackendReadable, Some(backend)) => Op::PollIn {
                fd: std::os::fd::AsRawFd::as_raw_fd(&backend),
            },
            (Kind::BackendWritable, Some(backend)) => Op::PollOut {
                fd: std::os::fd::AsRawFd::as_raw_fd(&backend),
            },
            _ => return Ok(()),
        };
        conn.set_inflight(kind);
        let generation = conn.generation;
        self.ring
            .submit(Token::new(kind, slot, generation).encode(), op)
    }
}

/// Returns how many bytes complete the TLS record that `partial` starts: the rest
/// of the header first, then the rest of the record. Zero means `partial` holds a
/// whole record.
fn missing_record_bytes(partial: &[u8]) -> usize {
    if partial.len() < RECORD_HEADER_LEN {
        return RECORD_HEADER_LEN - partial.len();
    }
    let body = usize::from(u16::from_be_bytes([partial[3], partial[4]]));
    (RECORD_HEADER_LEN + body).saturating_sub(partial.len())
}

#[cfg(test)]
mod tests {
    use super::missing_record_bytes;

    #[test]
    fn missing_bytes_of_header_then_body() {
        assert_eq!(missing_record_bytes(&[23]), 4);
        assert_eq!(missing_record_bytes(&[23, 3, 3, 0x01, 0x00]), 256);
        assert_eq!(missing_record_bytes(&[23, 3, 3, 0x00, 0x02, 9]), 1);
        assert_eq!(missing_record_bytes(&[23, 3, 3, 0x00, 0x01, 9]), 0);
    }
}
