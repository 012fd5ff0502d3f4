//! One proxied connection's state, kept in its worker's slab.

use std::net::SocketAddr;
use std::os::fd::OwnedFd;
use std::time::{Instant, SystemTime};

use super::token::Kind;
use crate::config::Address;
use crate::log::CloseReason;
use crate::relay::{DataPath, SpliceRelay, UserspaceRelay};
use crate::tls::TlsSession;

/// The phase of a connection's life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Reading the PROXY protocol header that an upstream load balancer sends
    /// before the ClientHello (`accept_proxy = yes`).
    ProxyHeader,
    /// Reading the ClientHello and completing the TLS handshake.
    Handshake,
    /// The handshake is done; connecting to a backend.
    Connecting,
    /// Relaying data both ways.
    Relaying,
    /// Waiting for the operations still in flight before the slot is freed.
    Closing,
}

pub struct Conn {
    pub generation: u32,
    pub service: usize,
    pub phase: Phase,
    pub client: OwnedFd,
    /// The client's address: the peer of the accepted socket, or the source
    /// address of a PROXY header read with `accept_proxy`.
    pub client_addr: Option<SocketAddr>,
    /// The address the client connected to, for outgoing PROXY headers.
    pub accepted_on: Option<SocketAddr>,
    pub backend: Option<OwnedFd>,
    /// Index into the backend list of the attempt in progress.
    pub backend_attempt: usize,
    pub backend_addr: Option<Address>,
    /// Source address of the backend connection.
    pub local_addr: Option<SocketAddr>,
    /// The SNI route chosen during the handshake, if any.
    pub route: Option<usize>,
    pub tls: Box<TlsSession>,
    pub relay: UserspaceRelay,
    pub path: DataPath,
    /// The handshake chose kernel TLS, and the hand-off waits until the handshake
    /// output is sent and no partial record is buffered.
    pub handoff_pending: bool,
    /// The kernel TLS relay, once the hand-off is done.
    pub splice: Option<Box<SpliceRelay>>,

    /// Kinds of operations in flight, as [`Kind::bit`] values.
    pub inflight: u32,
    /// The client sent close_notify or FIN.
    pub client_eof: bool,
    /// The backend sent FIN.
    pub backend_eof: bool,
    /// shutdown(SHUT_WR) toward the backend completed.
    pub backend_write_closed: bool,
    /// close_notify and shutdown(SHUT_WR) toward the client completed.
    pub client_write_closed: bool,
    pub close_notify_queued: bool,
    /// Size of the close_notify record queued for the client.
    pub close_notify_bytes: usize,
    /// Close once everything queued for the client is sent (after a TLS error,
    /// so the alert reaches the client).
    pub close_after_flush: Option<CloseReason>,
    pub reason: Option<CloseReason>,

    pub accepted_at: Instant,
    pub accepted_wall: SystemTime,
    pub first_byte_at: Option<Instant>,
    pub connect_started: Option<Instant>,
    /// The client's first application byte, waiting for the backend's first byte.
    pub first_request_at: Option<Instant>,
    pub backend_replied: bool,
    pub last_activity: Instant,
    pub last_progress: Instant,
    pub half_closed_at: Option<Instant>,
    pub bytes_up: u64,
    pub bytes_down: u64,
}

impl Conn {
    pub fn is_inflight(&self, kind: Kind) -> bool {
        self.inflight & kind.bit() != 0
    }

    pub fn set_inflight(&mut self, kind: Kind) {
        self.inflight |= kind.bit();
    }

    pub fn clear_inflight(&mut self, kind: Kind) {
        self.inflight &= !kind.bit();
    }

    /// Whether a client receive should be posted now.
    pub fn wants_client_recv(&self) -> bool {
        if self.is_inflight(Kind::ClientRecv) || self.client_eof || self.is_kernel_tls() {
            return false;
        }
        match self.phase {
            Phase::ProxyHeader | Phase::Handshake => true,
            Phase::Relaying => self.relay.to_backend.is_empty() && self.close_after_flush.is_none(),
            Phase::Connecting | Phase::Closing => false,
        }
    }

    /// Whether a backend receive should be posted now.
    pub fn wants_backend_recv(&self) -> bool {
        self.phase == Phase::Relaying
            && !self.is_kernel_tls()
            && !self.is_inflight(Kind::BackendRecv)
            && !self.backend_eof
            && self.relay.to_client.is_empty()
            && self.close_after_flush.is_none()
    }

    /// Data is waiting for a peer that has not taken it yet.
    pub fn has_pending_output(&self) -> bool {
        !self.relay.to_client.is_empty()
            || !self.relay.to_backend.is_empty()
            || self.is_inflight(Kind::ClientSend)
            || self.is_inflight(Kind::BackendSend)
            || self
                .splice
                .as_ref()
                .is_some_and(|splice| splice.has_pending())
    }

    /// The connection uses kernel TLS or is about to, so the ring must not read
    /// its sockets.
    pub fn is_kernel_tls(&self) -> bool {
        self.handoff_pending || self.splice.is_some()
    }

    /// Both directions have finished in order.
    pub fn is_done(&self) -> bool {
        self.client_eof
            && self.backend_eof
            && self.client_write_closed
            && self.backend_write_closed
            && !self.has_pending_output()
    }
}
