//! The splice relay between plain loopback TCP sockets, in both splice modes,
//! driven by `relay::plain` on the host. These need no tls ULP; the kernel TLS
//! path of the same relay runs in `ktls_proxy` inside the VM.

mod common;

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::os::fd::AsFd;
use std::thread;
use std::time::Duration;

use tlsplice::config::SpliceMode;
use tlsplice::relay::plain::{relay_plain, Relayed};

use common::{Checksum, Pattern};

/// Upper bound on one relay run; the transfers here take well under a second.
const RELAY_TIMEOUT: Duration = Duration::from_secs(60);

/// Returns the relay's end (non-blocking) and the peer's end of a loopback
/// connection.
fn tcp_pair() -> (TcpStream, TcpStream) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let peer = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
    let (near, _) = listener.accept().unwrap();
    near.set_nonblocking(true).unwrap();
    (near, peer)
}

/// Writes `total` pattern bytes in `chunk`-sized writes, then sends FIN.
/// Returns the checksum of what was written.
fn send_pattern(mut stream: TcpStream, seed: u64, total: usize, chunk: usize) -> u64 {
    let mut pattern = Pattern::new(seed);
    let mut sum = Checksum::new();
    let mut buf = vec![0u8; chunk];
    let mut sent = 0;
    while sent < total {
        let len = chunk.min(total - sent);
        pattern.fill(&mut buf[..len]);
        sum.update(&buf[..len]);
        stream.write_all(&buf[..len]).unwrap();
        sent += len;
    }
    stream.shutdown(Shutdown::Write).unwrap();
    sum.value()
}

/// Reads to end of stream in `chunk`-sized reads, pausing after each read when
/// `pause` is set so the relay meets a full socket buffer. Returns the byte
/// count and checksum.
fn receive_all(mut stream: TcpStream, chunk: usize, pause: Option<Duration>) -> (usize, u64) {
    stream.set_read_timeout(Some(RELAY_TIMEOUT)).unwrap();
    let mut sum = Checksum::new();
    let mut buf = vec![0u8; chunk];
    let mut received = 0;
    loop {
        let n = stream.read(&mut buf).unwrap();
        if n == 0 {
            return (received, sum.value());
        }
        sum.update(&buf[..n]);
        received += n;
        if let Some(pause) = pause {
            thread::sleep(pause);
        }
    }
}

struct Transfer {
    up: usize,
    down: usize,
    /// Write and read size of the peers; small sizes make short splices.
    chunk: usize,
    /// Pause of the backend's reader after each read.
    backend_pause: Option<Duration>,
}

/// Runs the relay between a client and a backend that send at the same time,
/// and checks counts and checksums of both directions.
fn relay_both_ways(mode: SpliceMode, transfer: Transfer) {
    let (client_near, client_far) = tcp_pair();
    let (backend_near, backend_far) = tcp_pair();
    let chunk = transfer.chunk;

    let relay = thread::spawn(move || {
        relay_plain(
            client_near.as_fd(),
            backend_near.as_fd(),
            mode,
            RELAY_TIMEOUT,
        )
    });
    let client_reader = client_far.try_clone().unwrap();
    let backend_reader = backend_far.try_clone().unwrap();
    let up_sent = thread::spawn(move || send_pattern(client_far, 1, transfer.up, chunk));
    let down_sent = thread::spawn(move || send_pattern(backend_far, 2, transfer.down, chunk));
    let pause = transfer.backend_pause;
    let up_received = thread::spawn(move || receive_all(backend_reader, chunk, pause));
    let down_received = thread::spawn(move || receive_all(client_reader, chunk, None));

    let relayed = relay.join().unwrap().unwrap();
    assert_eq!(
        relayed,
        Relayed {
            up: transfer.up as u64,
            down: transfer.down as u64
        }
    );
    let (up_count, up_sum) = up_received.join().unwrap();
    let (down_count, down_sum) = down_received.join().unwrap();
    assert_eq!(up_count, transfer.up);
    assert_eq!(down_count, transfer.down);
    assert_eq!(up_sum, up_sent.join().unwrap());
    assert_eq!(down_sum, down_sent.join().unwrap());
}

#[test]
fn ring_mode_bulk_both_ways() {
    relay_both_ways(
        SpliceMode::Ring,
        Transfer {
            up: 16 << 20,
            down: 16 << 20,
            chunk: 64 * 1024,
            backend_pause: None,
        },
    );
}

#[test]
fn direct_mode_bulk_both_ways() {
    relay_both_ways(
        SpliceMode::Direct,
        Transfer {
            up: 16 << 20,
            down: 16 << 20,
            chunk: 64 * 1024,
            backend_pause: None,
        },
    );
}

/// Small writes and a slow backend reader: splices move a few bytes at a time,
/// the backend socket fills up, and the up direction waits for writability
/// with bytes left in its pipe.
#[test]
fn ring_mode_short_splices_and_slow_reader() {
    relay_both_ways(
        SpliceMode::Ring,
        Transfer {
            up: 4 << 20,
            down: 300_000,
            chunk: 1000,
            backend_pause: Some(Duration::from_micros(50)),
        },
    );
}

#[test]
fn direct_mode_short_splices_and_slow_reader() {
    relay_both_ways(
        SpliceMode::Direct,
        Transfer {
            up: 4 << 20,
            down: 300_000,
            chunk: 1000,
            backend_pause: None,
        },
    );
}

/// The client finishes first and the backend goes on sending: the FIN reaches
/// the backend, and the other direction keeps flowing.
#[test]
fn ring_mode_half_close_from_client() {
    let (client_near, mut client_far) = tcp_pair();
    let (backend_near, mut backend_far) = tcp_pair();
    let relay = thread::spawn(move || {
        relay_plain(
            client_near.as_fd(),
            backend_near.as_fd(),
            SpliceMode::Ring,
            RELAY_TIMEOUT,
        )
    });

    client_far.write_all(b"request").unwrap();
    client_far.shutdown(Shutdown::Write).unwrap();
    backend_far.set_read_timeout(Some(RELAY_TIMEOUT)).unwrap();
    let mut request = Vec::new();
    backend_far.read_to_end(&mut request).unwrap();
    assert_eq!(request, b"request");

    backend_far.write_all(b"late reply").unwrap();
    backend_far.shutdown(Shutdown::Write).unwrap();
    client_far.set_read_timeout(Some(RELAY_TIMEOUT)).unwrap();
    let mut reply = Vec::new();
    client_far.read_to_end(&mut reply).unwrap();
    assert_eq!(reply, b"late reply");

    let relayed = relay.join().unwrap().unwrap();
    assert_eq!(relayed, Relayed { up: 7, down: 10 });
}
