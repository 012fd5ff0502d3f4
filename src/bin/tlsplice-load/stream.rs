//! A non-blocking TCP stream with optional TLS, driven by edge-triggered mio events.
//!
//! Callers register the socket once for both readiness kinds, then after every event
//! call [`Stream::read_available`] until it reports `WouldBlock` (it does so itself)
//! and [`Stream::flush`]. Nothing is re-registered, so a caller that stops before
//! `WouldBlock` would miss the next edge.

use std::io::{self, Read, Write};

use mio::net::TcpStream;

/// Maximum plaintext that [`Stream::write_plain`] accepts before the socket drains.
/// It is also the rustls buffer limit.
const WRITE_BUFFER_LIMIT: usize = 64 * 1024;

pub struct Stream {
    pub sock: TcpStream,
    tls: Option<rustls::Connection>,
    /// Plaintext not yet written, for streams without TLS.
    plain_out: Vec<u8>,
}

/// Result of one call to [`Stream::read_available`].
#[derive(Debug, Default, PartialEq, Eq)]
pub struct ReadOutcome {
    /// The peer closed its side (TCP FIN or TLS close_notify).
    pub eof: bool,
    /// The read stopped at its byte budget before the socket would block, so
    /// more data may be waiting without a new readiness event.
    pub more: bool,
}

impl Stream {
    pub fn new(sock: TcpStream, tls: Option<rustls::Connection>) -> Stream {
        let mut tls = tls;
        if let Some(conn) = tls.as_mut() {
            conn.set_buffer_limit(Some(WRITE_BUFFER_LIMIT));
        }
        Stream {
            sock,
            tls,
            plain_out: Vec::new(),
        }
    }

    pub fn is_handshaking(&self) -> bool {
        self.tls.as_ref().is_some_and(|c| c.is_handshaking())
    }

    /// Returns whether the completed TLS handshake resumed an earlier session.
    pub fn resumed(&self) -> bool {
        matches!(
            self.tls.as_ref().and_then(|c| c.handshake_kind()),
            Some(rustls::HandshakeKind::Resumed)
        )
    }

    /// Reads everything the socket has, appending the plaintext to `out`.
    /// Returns when the socket would block or the peer closed.
    pub fn read_available(&mut self, out: &mut Vec<u8>) -> io::Result<ReadOutcome> {
        self.read_bounded(out, usize::MAX)
    }

    /// Reads like [`Stream::read_available`], but stops once `out` holds at least
    /// `budget` bytes and reports `more`, so one fast peer cannot keep the event
    /// loop from its deadlines.
    pub fn read_bounded(&mut self, out: &mut Vec<u8>, budget: usize) -> io::Result<ReadOutcome> {
        match self.tls.as_mut() {
            None => read_plain(&mut self.sock, out, budget),
            Some(tls) => {
                let outcome = read_tls(&mut self.sock, tls, out, budget);
                // An alert or a handshake message may be waiting to go out, also
                // after a TLS error.
                self.flush()?;
                outcome
            }
        }
    }

    /// Queues plaintext and returns how many bytes were accepted, which is fewer than
    /// `data.len()` once the write buffer contains `WRITE_BUFFER_LIMIT` bytes.
    pub fn write_plain(&mut self, data: &[u8]) -> io::Result<usize> {
        match self.tls.as_mut() {
            Some(tls) => tls.writer().write(data),
            None => {
                let room = WRITE_BUFFER_LIMIT.saturating_sub(self.plain_out.len());
                let taken = room.min(data.len());
                self.plain_out.extend_from_slice(&data[..taken]);
                Ok(taken)
            }
        }
    }

    /// Writes buffered bytes to the socket until it would block or nothing is left.
    pub fn flush(&mut self) -> io::Result<()> {
        match self.tls.as_mut() {
            Some(tls) => {
                while tls.wants_write() {
                    match tls.write_tls(&mut self.sock) {
                        Ok(_) => {}
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                        Err(e) => return Err(e),
                    }
                }
            }
            None => {
                let mut written = 0;
                while written < self.plain_out.len() {
                    match self.sock.write(&self.plain_out[written..]) {
                        Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                        Ok(n) => written += n,
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                        Err(e) => return Err(e),
                    }
                }
                self.plain_out.drain(..written);
            }
        }
        Ok(())
    }

    /// Returns whether bytes are still waiting for the socket.
    pub fn has_pending_output(&self) -> bool {
        match self.tls.as_ref() {
            Some(tls) => tls.wants_write(),
            None => !self.plain_out.is_empty(),
        }
    }

    /// Sends a TLS close_notify when TLS is in use, best effort. The socket closes
    /// when the stream is dropped.
    pub fn close(&mut self) {
        if let Some(tls) = self.tls.as_mut() {
            tls.send_close_notify();
            let _ = self.flush();
        }
    }
}

fn read_plain(sock: &mut TcpStream, out: &mut Vec<u8>, budget: usize) -> io::Result<ReadOutcome> {
    let mut chunk = [0u8; 16 * 1024];
    loop {
        if out.len() >= budget {
            return Ok(ReadOutcome {
                eof: false,
                more: true,
            });
        }
        match sock.read(&mut chunk) {
            Ok(0) => {
                return Ok(ReadOutcome {
                    eof: true,
                    more: false,
                })
            }
            Ok(n) => out.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(ReadOutcome::default()),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}

/// Reads TLS records and drains their plaintext after each read, because rustls
/// rejects further reads once its received-plaintext buffer is full.
fn read_tls(
    sock: &mut TcpStream,
    tls: &mut rustls::Connection,
    out: &mut Vec<u8>,
    budget: usize,
) -> io::Result<ReadOutcome> {
    let mut chunk = [0u8; 16 * 1024];
    loop {
        if out.len() >= budget {
            return Ok(ReadOutcome {
                eof: false,
                more: true,
            });
        }
        let socket_eof = match tls.read_tls(sock) {
            Ok(0) => true,
            Ok(_) => false,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(ReadOutcome::default()),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };

        let state = tls
            .process_new_packets()
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;

        let mut plaintext_left = state.plaintext_bytes_to_read();
        while plaintext_left > 0 {
            let n = tls.reader().read(&mut chunk)?;
            out.extend_from_slice(&chunk[..n]);
            plaintext_left -= n;
        }

        if state.peer_has_closed() || socket_eof {
            return Ok(ReadOutcome {
                eof: true,
                more: false,
            });
        }
    }
}
