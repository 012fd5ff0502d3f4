//! Diagnostics and the connection log.

mod reason;

pub use reason::CloseReason;
