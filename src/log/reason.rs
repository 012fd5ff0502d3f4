use std::fmt;

/// Cause of a connection's end, as written in the `reason=` field of its log line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum CloseReason {
    /// Both sides closed in order (close_notify or FIN each way).
    Done,
    /// The client reset the connection.
    ClientReset,
    /// The backend reset the connection.
    BackendReset,
    /// The TLS handshake did not finish within `TIMEOUThandshake`.
    HandshakeTimeout,
    /// The handshake failed: bad record, alert, no shared suite and so on.
    HandshakeFailed,
    /// The client closed before completing the handshake.
    HandshakeEof,
    /// The PROXY protocol header from the upstream load balancer was malformed.
    ProxyHeaderInvalid,
    /// No backend accepted the connection.
    ConnectFailed,
    /// Connecting to the backend took longer than `TIMEOUTconnect`.
    ConnectTimeout,
    /// No data either way for `TIMEOUTidle`.
    IdleTimeout,
    /// A peer did not take pending data for `TIMEOUTbusy`.
    BusyTimeout,
    /// One side closed and the other did not follow within `TIMEOUTclose`.
    CloseTimeout,
    /// A TLS error after the handshake: bad record or fatal alert.
    TlsError,
    /// The process was shutting down and the grace period ran out.
    Shutdown,
    /// A local error such as out of memory or file descriptors.
    Internal,
}

impl CloseReason {
    pub const ALL: [CloseReason; 15] = [
        CloseReason::Done,
        CloseReason::ClientReset,
        CloseReason::BackendReset,
        CloseReason::HandshakeTimeout,
        CloseReason::HandshakeFailed,
        CloseReason::HandshakeEof,
        CloseReason::ProxyHeaderInvalid,
        CloseReason::ConnectFailed,
        CloseReason::ConnectTimeout,
        CloseReason::IdleTimeout,
        CloseReason::BusyTimeout,
        CloseReason::CloseTimeout,
        CloseReason::TlsError,
        CloseReason::Shutdown,
        CloseReason::Internal,
    ];

    /// Returns the stable name used in logs and metrics labels.
    pub fn as_str(self) -> &'static str {
        match self {
            CloseReason::Done => "done",
            CloseReason::ClientReset => "client-reset",
            CloseReason::BackendReset => "backend-reset",
            CloseReason::HandshakeTimeout => "handshake-timeout",
            CloseReason::HandshakeFailed => "handshake-failed",
            CloseReason::HandshakeEof => "handshake-eof",
            CloseReason::ProxyHeaderInvalid => "proxy-header-invalid",
            CloseReason::ConnectFailed => "connect-failed",
            CloseReason::ConnectTimeout => "connect-timeout",
            CloseReason::IdleTimeout => "idle-timeout",
            CloseReason::BusyTimeout => "busy-timeout",
            CloseReason::CloseTimeout => "close-timeout",
            CloseReason::TlsError => "tls-error",
            CloseReason::Shutdown => "shutdown",
            CloseReason::Internal => "internal-error",
        }
    }
}

impl fmt::Display for CloseReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}
