//! Moving bytes between the client and the backend after the handshake.
//!
//! The worker owns the sockets and submits the I/O; a relay owns the bytes in
//! between and decides what each completion turns into. [`userspace`] decrypts and
//! encrypts with rustls in this process. [`splice`] runs after a hand-off to kernel
//! TLS and moves bytes between the sockets through pipes.

pub mod plain;
pub mod splice;
pub mod userspace;

pub use splice::{PipePool, SpliceRelay};
pub use userspace::UserspaceRelay;

/// Data path a connection took after the handshake, as written in its log line
/// and in metrics labels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DataPath {
    /// rustls encrypts and decrypts in the worker.
    Userspace,
    /// The kernel encrypts and decrypts (kTLS).
    Ktls,
}

impl DataPath {
    pub const ALL: [DataPath; 2] = [DataPath::Userspace, DataPath::Ktls];

    /// Position in [`DataPath::ALL`], for counter arrays.
    pub fn index(self) -> usize {
        self as usize
    }

    pub fn as_str(self) -> &'static str {
        match self {
            DataPath::Userspace => "userspace",
            DataPath::Ktls => "ktls",
        }
    }
}
