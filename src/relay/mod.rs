//! Moving bytes between the client and the backend after the handshake.
//!
//! The worker owns the sockets and submits the I/O; a relay owns the bytes in
//! between and decides what each completion turns into. [`userspace`] decrypts and
//! encrypts with rustls in this process. [`splice`] runs after a hand-off to kernel
//! TLS and moves bytes between the sockets through pipes.

pub mod splice;
pub mod userspace;

pub use splice::{PipePool, SpliceRelay};
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
