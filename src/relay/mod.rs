//! Moving bytes between the client and the backend after the handshake.
//!
//! The worker owns the sockets and submits the I/O; a relay owns the bytes in
//! between and decides what each completion turns into. [`userspace`] decrypts and
//! encrypts with rustls in this process. A kernel TLS relay, which splices between
//! sockets through pipes, plugs in beside it as a second mode.

pub mod userspace;

pub use userspace::UserspaceRelay;

/// Which data path a connection took, as written in its log line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DataPath {
    Userspace,
    Ktls,
}

impl DataPath {
    pub fn as_str(self) -> &'static str {
        match self {
            DataPath::Userspace => "userspace",
            DataPath::Ktls => "ktls",
        }
    }
}
