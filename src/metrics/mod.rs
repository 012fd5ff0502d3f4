//! Latency histograms, connection counters and their export.
//!
//! Each worker thread owns a [`WorkerMetrics`] and records into it without locks.
//! About every 250 ms the worker calls [`WorkerMetrics::publish`], which swaps the
//! values recorded since its last publish into a slot shared with the
//! [`Registry`]. The registry moves them into running totals, either when a
//! [`Collector`] thread calls [`Registry::collect`] or when a reader asks for a
//! [`Snapshot`]. Readers (the [`StatsServer`], the [`HistogramLogger`] and
//! [`Registry::summary`]) never touch a worker's live values, so what they show
//! lags the workers by at most one publish interval.
//!
//! Durations are recorded in microseconds and sizes in bytes, in HdrHistogram
//! histograms with 3 significant digits that resize as needed. Counts and sums are
//! exact; percentiles, min and max are exact to within 0.1 %.
//!
//! `docs/metrics.md` lists every metric name, the JSON layout and the log format.

mod histlog;
mod http;
mod json;
mod prometheus;
mod record;
mod registry;
mod summary;

pub use histlog::{create_log_file, HistogramLogger, IntervalLog};
pub use http::{serve_shared, StatsServer, StatsServerOptions};
pub use record::{HistogramKind, Recorder, ServiceMetrics, TlsCount, Unit, WorkerMetrics};
pub use registry::{Collector, Registry, Snapshot};

/// Cause of a failed TLS handshake, as counted by `tlsplice_handshake_failures_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum HandshakeFailure {
    /// The handshake did not finish within `TIMEOUThandshake`.
    Timeout,
    /// The client sent a record or message that could not be decoded.
    BadRecord,
    /// The client sent a fatal alert.
    AlertReceived,
    /// The client offered no cipher suite that the service allows.
    NoSharedCipherSuite,
    /// The client offered no protocol version that the service allows.
    NoSharedVersion,
    /// The client closed the connection before the handshake finished.
    Eof,
    /// The key process did not sign for the handshake: no reply before the
    /// deadline, a closed link or an error reply (privilege separation).
    KeyProcess,
    /// Any other error, such as a local certificate or I/O failure.
    Other,
}

impl HandshakeFailure {
    pub const ALL: [HandshakeFailure; 8] = [
        HandshakeFailure::Timeout,
        HandshakeFailure::BadRecord,
        HandshakeFailure::AlertReceived,
        HandshakeFailure::NoSharedCipherSuite,
        HandshakeFailure::NoSharedVersion,
        HandshakeFailure::Eof,
        HandshakeFailure::KeyProcess,
        HandshakeFailure::Other,
    ];

    /// Returns the stable name used in the `reason` label and in JSON keys.
    pub fn as_str(self) -> &'static str {
        match self {
            HandshakeFailure::Timeout => "timeout",
            HandshakeFailure::BadRecord => "bad-record",
            HandshakeFailure::AlertReceived => "alert-received",
            HandshakeFailure::NoSharedCipherSuite => "no-shared-cipher-suite",
            HandshakeFailure::NoSharedVersion => "no-shared-version",
            HandshakeFailure::Eof => "eof",
            HandshakeFailure::KeyProcess => "key-process",
            HandshakeFailure::Other => "other",
        }
    }

    /// Classifies a rustls handshake error. Timeouts and EOF are not rustls
    /// errors, so the caller records those variants directly.
    pub fn from_rustls(error: &rustls::Error) -> HandshakeFailure {
        use rustls::{Error, PeerIncompatible, PeerMisbehaved};

        match error {
            Error::InvalidMessage(_)
            | Error::DecryptError
            | Error::InappropriateMessage { .. }
            | Error::InappropriateHandshakeMessage { .. }
            | Error::PeerMisbehaved(PeerMisbehaved::TooMuchEarlyDataReceived) => {
                HandshakeFailure::BadRecord
            }
            Error::AlertReceived(_) => HandshakeFailure::AlertReceived,
            // A client that shares no key exchange group cannot agree on an
            // ECDHE suite either, so it counts with the cipher suites.
            Error::PeerIncompatible(
                PeerIncompatible::NoCipherSuitesInCommon | PeerIncompatible::NoKxGroupsInCommon,
            ) => HandshakeFailure::NoSharedCipherSuite,
            // TLS 1.0 and 1.1 clients send no signature_algorithms extension,
            // which is how rustls notices them.
            Error::PeerIncompatible(
                PeerIncompatible::SupportedVersionsExtensionRequired
                | PeerIncompatible::Tls12NotOffered
                | PeerIncompatible::Tls12NotOfferedOrEnabled
                | PeerIncompatible::ServerDoesNotSupportTls12Or13
                | PeerIncompatible::SignatureAlgorithmsExtensionRequired,
            ) => HandshakeFailure::NoSharedVersion,
            Error::Other(other)
                if other
                    .0
                    .downcast_ref::<crate::privsep::signer::KeyProcessError>()
                    .is_some() =>
            {
                HandshakeFailure::KeyProcess
            }
            _ => HandshakeFailure::Other,
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

pub use crate::relay::DataPath;

/// Returns the IANA-style name rustls gives a protocol version, or its code in hex.
fn version_name(code: u16) -> String {
    match rustls::ProtocolVersion::from(code).as_str() {
        Some(name) => name.to_owned(),
        None => format!("0x{code:04x}"),
    }
}

/// Returns the IANA name rustls gives a cipher suite, or its code in hex.
fn suite_name(code: u16) -> String {
    match rustls::CipherSuite::from(code).as_str() {
        Some(name) => name.to_owned(),
        None => format!("0x{code:04x}"),
    }
}
