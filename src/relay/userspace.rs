//! The userspace record path: rustls decrypts client records into plaintext for the
//! backend and encrypts backend bytes into records for the client.
//!
//! Memory stays bounded because the worker posts a receive on one side only while
//! the queue toward the other side is empty (see `Conn::wants_client_recv` and
//! `Conn::wants_backend_recv` in the worker). A queue therefore holds at most one
//! receive's worth of data, plus the buffer of the send in flight.

use crate::tls::{Progress, TlsSession};

/// The buffers of one connection on the userspace path.
#[derive(Debug, Default)]
pub struct UserspaceRelay {
    /// The start of a TLS record whose rest has not arrived yet.
    pub partial_record: Vec<u8>,
    /// Encrypted bytes queued for the client, not yet handed to a send.
    pub to_client: Vec<u8>,
    /// Plaintext queued for the backend, not yet handed to a send.
    pub to_backend: Vec<u8>,
}

impl UserspaceRelay {
    /// Feeds bytes received from the client through rustls. Complete records are
    /// processed, and the bytes of an incomplete last record are kept.
    ///
    /// When no partial record is pending, the records are decrypted straight from
    /// `received`, the receive buffer, without a copy.
    pub fn client_bytes(
        &mut self,
        tls: &mut TlsSession,
        received: &mut [u8],
    ) -> Result<Progress, rustls::Error> {
        if self.partial_record.is_empty() {
            let result = tls.read(received, &mut self.to_client, &mut self.to_backend);
            if let Ok(progress) = &result {
                if !progress.peer_closed {
                    self.partial_record
                        .extend_from_slice(&received[progress.consumed..]);
                }
            }
            return result;
        }

        let mut pending = self.take_pending(received);
        let result = tls.read(&mut pending, &mut self.to_client, &mut self.to_backend);
        self.keep_partial(pending, &result);
        result
    }

    /// Returns the input of the next read: the partial record kept from the last
    /// read, taken from the relay, followed by `received`.
    pub fn take_pending(&mut self, received: &[u8]) -> Vec<u8> {
        let mut pending = std::mem::take(&mut self.partial_record);
        pending.extend_from_slice(received);
        pending
    }

    /// Keeps the bytes of `input` that the read with `result` did not consume,
    /// the start of an incomplete record, unless the client closed.
    pub fn keep_partial(&mut self, mut input: Vec<u8>, result: &Result<Progress, rustls::Error>) {
        if let Ok(progress) = result {
            if !progress.peer_closed {
                input.drain(..progress.consumed);
                self.partial_record = input;
            }
        }
    }

    /// Encrypts bytes received from the backend into records for the client.
    pub fn backend_bytes(
        &mut self,
        tls: &mut TlsSession,
        received: &[u8],
    ) -> Result<(), rustls::Error> {
        tls.write(received, &mut self.to_client)
    }

    /// Queues a close_notify alert for the client.
    pub fn close_notify(&mut self, tls: &mut TlsSession) -> Result<(), rustls::Error> {
        tls.close_notify(&mut self.to_client)
    }

    /// Releases buffers that hold nothing, so an idle connection keeps no memory
    /// beyond its TLS state.
    pub fn shrink_idle(&mut self) {
        for buffer in [
            &mut self.partial_record,
            &mut self.to_client,
            &mut self.to_backend,
        ] {
            if buffer.is_empty() && buffer.capacity() > 0 {
                *buffer = Vec::new();
            }
        }
    }
}
