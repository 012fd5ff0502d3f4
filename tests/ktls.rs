//! Kernel TLS offload tests over loopback.
//!
//! A rustls client (the buffered `ClientConnection` on a std `TcpStream`)
//! handshakes with a server driven by `UnbufferedServerConnection`. The server
//! side then moves into the kernel with `tlsplice::tls::kernel`. Data is checked
//! byte for byte in both directions, with plain read/write on the kTLS socket and
//! with splice(2) through pipes to a plain TCP backend.
//!
//! Every test skips with a printed note when the kernel has no tls ULP, so the
//! suite passes on hosts without CONFIG_TLS. `scripts/ktls-vm-test` runs it in
//! a guest whose kernel has kTLS.

use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::{Arc, OnceLock};
use std::thread;

use rustls::client::ClientConnection;
use rustls::crypto::aws_lc_rs::{self, cipher_suite};
use rustls::kernel::KernelConnection;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
use rustls::server::{ServerConnectionData, UnbufferedServerConnection};
use rustls::unbuffered::{ConnectionState, EncodeError};
use rustls::version::{TLS12, TLS13};
use rustls::{
    ClientConfig, ProtocolVersion, RootCertStore, ServerConfig, SupportedCipherSuite,
    SupportedProtocolVersion,
};
use tlsplice::sys::ktls as sys;
use tlsplice::tls::kernel::{
    self, ControlRecord, KernelTlsSupport, RecordBudget, RekeyError, CONTROL_RECORD_BUFFER_LEN,
};

const SMALL_LEN: usize = 1024 * 1024;
const LARGE_LEN: usize = 64 * 1024 * 1024;
const CLIENT_SEED: u64 = 0x5eed_0001;
const BACKEND_SEED: u64 = 0x5eed_0002;

/// Returns the kernel's kTLS support, or `None` after printing why the test skips.
fn kernel_tls() -> Option<&'static KernelTlsSupport> {
    let support = kernel::probe();
    if support.is_available() {
        Some(support)
    } else {
        eprintln!("skipping: {support}");
        None
    }
}

/// A deterministic pseudo-random byte stream (xorshift64*).
struct ByteStream {
    state: u64,
    buffered: [u8; 8],
    used: usize,
}

impl ByteStream {
    fn new(seed: u64) -> Self {
        Self {
            state: seed | 1,
            buffered: [0; 8],
            used: 8,
        }
    }

    fn next_byte(&mut self) -> u8 {
        if self.used == 8 {
            self.state ^= self.state >> 12;
            self.state ^= self.state << 25;
            self.state ^= self.state >> 27;
            self.buffered = self.state.wrapping_mul(0x2545_f491_4f6c_dd1d).to_le_bytes();
            self.used = 0;
        }
        let byte = self.buffered[self.used];
        self.used += 1;
        byte
    }

    fn fill(&mut self, buf: &mut [u8]) {
        for byte in buf {
            *byte = self.next_byte();
        }
    }

    /// Panics at the first byte of `received` that differs from the stream;
    /// `offset` is the stream position of `received[0]`.
    fn check(&mut self, received: &[u8], offset: usize) {
        for (i, byte) in received.iter().enumerate() {
            let expected = self.next_byte();
            assert_eq!(
                *byte,
                expected,
                "byte {} differs from the stream",
                offset + i
            );
        }
    }
}

/// Writes `len` bytes of the stream seeded with `seed`.
fn write_stream(writer: &mut impl Write, seed: u64, len: usize) -> io::Result<()> {
    let mut stream = ByteStream::new(seed);
    let mut chunk = vec![0u8; 64 * 1024];
    let mut written = 0;
    while written < len {
        let n = chunk.len().min(len - written);
        stream.fill(&mut chunk[..n]);
        writer.write_all(&chunk[..n])?;
        written += n;
    }
    writer.flush()
}

/// Reads until `len` bytes of `stream` were checked, `already` of them by the
/// caller before this call.
fn read_and_check(reader: &mut impl Read, stream: &mut ByteStream, already: usize, len: usize) {
    let mut chunk = vec![0u8; 64 * 1024];
    let mut received = already;
    while received < len {
        let n = chunk.len().min(len - received);
        let n = reader.read(&mut chunk[..n]).expect("read failed");
        assert_ne!(n, 0, "end of stream after {received} of {len} bytes");
        stream.check(&chunk[..n], received);
        received += n;
    }
}

struct TestCertificate {
    chain: Vec<CertificateDer<'static>>,
    key: Vec<u8>,
}

fn certificate() -> &'static TestCertificate {
    static CERTIFICATE: OnceLock<TestCertificate> = OnceLock::new();
    CERTIFICATE.get_or_init(|| {
        let generated = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
        TestCertificate {
            chain: vec![generated.cert.der().clone()],
            key: generated.signing_key.serialize_der(),
        }
    })
}

fn provider(suite: SupportedCipherSuite) -> Arc<rustls::crypto::CryptoProvider> {
    let mut provider = aws_lc_rs::default_provider();
    provider.cipher_suites = vec![suite];
    Arc::new(provider)
}

fn protocol(suite: SupportedCipherSuite) -> &'static SupportedProtocolVersion {
    match suite.version().version {
        ProtocolVersion::TLSv1_2 => &TLS12,
        _ => &TLS13,
    }
}

fn server_config(suite: SupportedCipherSuite) -> Arc<ServerConfig> {
    let certificate = certificate();
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(certificate.key.clone()));
    let mut config = ServerConfig::builder_with_provider(provider(suite))
        .with_protocol_versions(&[protocol(suite)])
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(certificate.chain.clone(), key)
        .unwrap();
    config.enable_secret_extraction = true;
    Arc::new(config)
}

fn client_config(suite: SupportedCipherSuite) -> Arc<ClientConfig> {
    let mut roots = RootCertStore::empty();
    roots.add(certificate().chain[0].clone()).unwrap();
    let config = ClientConfig::builder_with_provider(provider(suite))
        .with_protocol_versions(&[protocol(suite)])
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    Arc::new(config)
}

fn new_client(suite: SupportedCipherSuite) -> ClientConnection {
    let name = ServerName::try_from("localhost").unwrap();
    ClientConnection::new(client_config(suite), name).unwrap()
}

/// The server side after the handoff to the kernel.
struct Offloaded {
    stream: TcpStream,
    conn: KernelConnection<ServerConnectionData>,
    /// Plaintext rustls decrypted before the handoff, to be forwarded first.
    early_plaintext: Vec<u8>,
    tx_sequence: u64,
}

/// Drives an unbuffered server handshake on a blocking stream until rustls
/// returns `WriteTraffic` with all output sent and no unprocessed input, then
/// offloads the connection to the kernel.
fn accept_and_offload(listener: &TcpListener, suite: SupportedCipherSuite) -> Offloaded {
    let (mut stream, _) = listener.accept().unwrap();
    let mut conn = UnbufferedServerConnection::new(server_config(suite)).unwrap();
    let mut incoming = vec![0u8; 64 * 1024];
    let mut filled = 0;
    let mut outgoing = vec![0u8; 64 * 1024];
    let mut pending_out = 0;
    let mut early_plaintext = Vec::new();

    loop {
        let status = conn.process_tls_records(&mut incoming[..filled]);
        let discard = status.discard;
        let mut need_input = false;
        let mut done = false;

        match status.state.expect("server handshake failed") {
            ConnectionState::ReadTraffic(mut traffic) => {
                while let Some(record) = traffic.next_record() {
                    early_plaintext.extend_from_slice(record.unwrap().payload);
                }
            }
            ConnectionState::EncodeTlsData(mut encoder) => {
                match encoder.encode(&mut outgoing[pending_out..]) {
                    Ok(n) => pending_out += n,
                    Err(EncodeError::InsufficientSize(size)) => {
                        outgoing.resize(pending_out + size.required_size, 0);
                        pending_out += encoder.encode(&mut outgoing[pending_out..]).unwrap();
                    }
                    Err(err) => panic!("encode failed: {err}"),
                }
            }
            ConnectionState::TransmitTlsData(transmit) => {
                stream.write_all(&outgoing[..pending_out]).unwrap();
                pending_out = 0;
                transmit.done();
            }
            ConnectionState::BlockedHandshake => need_input = true,
            ConnectionState::WriteTraffic(_) => {
                assert_eq!(pending_out, 0, "handshake output left unsent");
                // Leftover bytes are a partial record: read the rest first so
                // that the kernel starts at a record boundary.
                if filled == discard {
                    done = true;
                } else {
                    need_input = true;
                }
            }
            other => panic!("unexpected state during the handshake: {other:?}"),
        }

        incoming.copy_within(discard..filled, 0);
        filled -= discard;
        if done {
            break;
        }
        if need_input {
            if filled == incoming.len() {
                incoming.resize(incoming.len() * 2, 0);
            }
            let n = stream.read(&mut incoming[filled..]).unwrap();
            assert_ne!(n, 0, "client closed during the handshake");
            filled += n;
        }
    }

    let (secrets, kernel_conn) = kernel::into_kernel_connection(conn).unwrap();
    let tx_sequence = secrets.tx.0;
    kernel::offload(stream.as_fd(), kernel_conn.protocol_version(), &secrets).unwrap();
    Offloaded {
        stream,
        conn: kernel_conn,
        early_plaintext,
        tx_sequence,
    }
}

/// Runs the client handshake to completion over a blocking stream.
fn client_handshake(conn: &mut ClientConnection, stream: &mut TcpStream) {
    while conn.is_handshaking() {
        conn.complete_io(stream).unwrap();
    }
}

/// Reads until end of stream and returns how many bytes came before it.
fn read_to_end_count(reader: &mut impl Read) -> io::Result<usize> {
    let mut sink = Vec::new();
    reader.read_to_end(&mut sink)
}

fn listen() -> (TcpListener, SocketAddr) {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
    let addr = listener.local_addr().unwrap();
    (listener, addr)
}

/// Client half of the plain and splice exchanges: sends `len` bytes of the
/// client stream, checks `len` bytes of the backend stream, expects the
/// server's close_notify and then sends its own.
fn run_exchange_client(addr: SocketAddr, suite: SupportedCipherSuite, len: usize) {
    let mut sock = TcpStream::connect(addr).unwrap();
    let mut conn = new_client(suite);
    client_handshake(&mut conn, &mut sock);
    let mut tls = rustls::Stream::new(&mut conn, &mut sock);

    write_stream(&mut tls, CLIENT_SEED, len).unwrap();
    read_and_check(&mut tls, &mut ByteStream::new(BACKEND_SEED), 0, len);
    assert_eq!(
        read_to_end_count(&mut tls).unwrap(),
        0,
        "data after the backend stream"
    );

    conn.send_close_notify();
    while conn.wants_write() {
        conn.write_tls(&mut sock).unwrap();
    }
}

/// Plain read(2)/write(2) on the kTLS socket in both directions.
fn plain_exchange(suite: SupportedCipherSuite, len: usize) {
    let Some(support) = kernel_tls() else { return };
    assert!(kernel::can_offload(suite, support), "{support}");
    let (listener, addr) = listen();
    let client = thread::spawn(move || run_exchange_client(addr, suite, len));

    let mut server = accept_and_offload(&listener, suite);
    let mut expected = ByteStream::new(CLIENT_SEED);
    expected.check(&server.early_plaintext, 0);
    read_and_check(
        &mut server.stream,
        &mut expected,
        server.early_plaintext.len(),
        len,
    );

    write_stream(&mut server.stream, BACKEND_SEED, len).unwrap();
    kernel::send_close_notify(server.stream.as_fd()).unwrap();

    let mut buf = vec![0u8; CONTROL_RECORD_BUFFER_LEN];
    let record = kernel::read_control_record(server.stream.as_fd(), &mut buf).unwrap();
    assert_eq!(record, ControlRecord::CloseNotify);
    client.join().unwrap();
}

/// One direction of the splice relay: source -> pipe -> destination.
struct SpliceDirection<'a> {
    source: BorrowedFd<'a>,
    destination: BorrowedFd<'a>,
    pipe_read: OwnedFd,
    pipe_write: OwnedFd,
    capacity: usize,
    in_pipe: usize,
    source_done: bool,
    finished: bool,
}

impl<'a> SpliceDirection<'a> {
    fn new(source: BorrowedFd<'a>, destination: BorrowedFd<'a>) -> Self {
        let (pipe_read, pipe_write) = sys::pipe_nonblocking().unwrap();
        let capacity = sys::set_pipe_size(pipe_write.as_fd(), 256 * 1024).unwrap();
        assert_eq!(sys::pipe_size(pipe_read.as_fd()).unwrap(), capacity);
        Self {
            source,
            destination,
            pipe_read,
            pipe_write,
            capacity,
            in_pipe: 0,
            source_done: false,
            finished: false,
        }
    }

    /// Fills the pipe from the source and returns whether bytes moved or the
    /// source ended. On a kTLS source, a non-data record is read into `control`.
    fn fill(&mut self, ktls_source: bool, control: &mut Vec<ControlRecord>) -> bool {
        if self.source_done || self.in_pipe == self.capacity {
            return false;
        }
        let room = self.capacity - self.in_pipe;
        match sys::splice(self.source, self.pipe_write.as_fd(), room, false) {
            Ok(0) => {
                self.source_done = true;
                true
            }
            Ok(n) => {
                self.in_pipe += n;
                true
            }
            Err(err) if err.kind() == io::ErrorKind::WouldBlock => false,
            Err(err)
                if ktls_source && matches!(err.raw_os_error(), Some(libc::EINVAL | libc::EIO)) =>
            {
                let mut buf = vec![0u8; CONTROL_RECORD_BUFFER_LEN];
                let record = kernel::read_control_record(self.source, &mut buf).unwrap();
                control.push(record);
                assert_eq!(
                    record,
                    ControlRecord::CloseNotify,
                    "unexpected control record"
                );
                self.source_done = true;
                true
            }
            Err(err) => panic!("splice from the source failed: {err}"),
        }
    }

    /// Drains the pipe into the destination and returns the bytes moved.
    fn drain(&mut self) -> usize {
        if self.in_pipe == 0 {
            return 0;
        }
        match sys::splice(
            self.pipe_read.as_fd(),
            self.destination,
            self.in_pipe,
            false,
        ) {
            Ok(n) => {
                self.in_pipe -= n;
                n
            }
            Err(err) if err.kind() == io::ErrorKind::WouldBlock => 0,
            Err(err) => panic!("splice into the destination failed: {err}"),
        }
    }

    fn is_drained(&self) -> bool {
        self.source_done && self.in_pipe == 0
    }

    fn poll_entries(&self, entries: &mut Vec<libc::pollfd>) {
        use std::os::fd::AsRawFd;
        if !self.source_done && self.in_pipe < self.capacity {
            entries.push(libc::pollfd {
                fd: self.source.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            });
        }
        if self.in_pipe > 0 {
            entries.push(libc::pollfd {
                fd: self.destination.as_raw_fd(),
                events: libc::POLLOUT,
                revents: 0,
            });
        }
    }
}

/// Relays between the kTLS socket and the backend with splice until the client
/// sent close_notify and the backend closed its side. Returns the control
/// records read from the kTLS socket.
fn splice_relay(
    ktls: &TcpStream,
    backend: &TcpStream,
    budget: &mut RecordBudget,
) -> Vec<ControlRecord> {
    ktls.set_nonblocking(true).unwrap();
    backend.set_nonblocking(true).unwrap();
    let mut upstream = SpliceDirection::new(ktls.as_fd(), backend.as_fd());
    let mut downstream = SpliceDirection::new(backend.as_fd(), ktls.as_fd());
    let mut control = Vec::new();

    while !(upstream.finished && downstream.finished) {
        let mut progress = upstream.fill(true, &mut control);
        progress |= upstream.drain() > 0;
        progress |= downstream.fill(false, &mut control);
        let sent = downstream.drain();
        if sent > 0 {
            budget.count_send(sent);
            progress = true;
        }

        if upstream.is_drained() && !upstream.finished {
            backend.shutdown(Shutdown::Write).unwrap();
            upstream.finished = true;
            progress = true;
        }
        if downstream.is_drained() && !downstream.finished {
            kernel::send_close_notify(ktls.as_fd()).unwrap();
            downstream.finished = true;
            progress = true;
        }

        if !progress {
            let mut entries = Vec::new();
            upstream.poll_entries(&mut entries);
            downstream.poll_entries(&mut entries);
            sys::poll(&mut entries, -1).unwrap();
        }
    }
    control
}

/// Backend half of the splice exchange: checks the client stream, sends the
/// backend stream, closes its write side and expects end of stream.
fn run_backend(listener: TcpListener, len: usize) {
    let (mut stream, _) = listener.accept().unwrap();
    read_and_check(&mut stream, &mut ByteStream::new(CLIENT_SEED), 0, len);
    write_stream(&mut stream, BACKEND_SEED, len).unwrap();
    stream.shutdown(Shutdown::Write).unwrap();
    assert_eq!(
        read_to_end_count(&mut stream).unwrap(),
        0,
        "backend got extra bytes"
    );
}

/// splice(2) between the kTLS socket and a plain backend in both directions.
fn splice_exchange(suite: SupportedCipherSuite, len: usize) {
    let Some(support) = kernel_tls() else { return };
    assert!(kernel::can_offload(suite, support), "{support}");
    let (listener, addr) = listen();
    let (backend_listener, backend_addr) = listen();
    let client = thread::spawn(move || run_exchange_client(addr, suite, len));
    let backend_thread = thread::spawn(move || run_backend(backend_listener, len));

    let server = accept_and_offload(&listener, suite);
    let mut backend = TcpStream::connect(backend_addr).unwrap();
    backend.write_all(&server.early_plaintext).unwrap();

    let mut budget = RecordBudget::new(suite, server.tx_sequence);
    let control = splice_relay(&server.stream, &backend, &mut budget);
    assert_eq!(control, vec![ControlRecord::CloseNotify]);
    assert!(budget.records_sent() >= (len / kernel::MAX_RECORD_PLAINTEXT) as u64);

    client.join().unwrap();
    backend_thread.join().unwrap();
}

macro_rules! suite_tests {
    ($($name:ident: $suite:expr,)*) => {
        mod plain {
            use super::*;
            $(#[test] fn $name() { plain_exchange($suite, SMALL_LEN); })*
        }
        mod splice {
            use super::*;
            $(#[test] fn $name() { splice_exchange($suite, SMALL_LEN); })*
        }
    };
}

suite_tests! {
    tls13_aes_128_gcm: cipher_suite::TLS13_AES_128_GCM_SHA256,
    tls13_aes_256_gcm: cipher_suite::TLS13_AES_256_GCM_SHA384,
    tls13_chacha20_poly1305: cipher_suite::TLS13_CHACHA20_POLY1305_SHA256,
    tls12_aes_128_gcm: cipher_suite::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
    tls12_aes_256_gcm: cipher_suite::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
    tls12_chacha20_poly1305: cipher_suite::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256,
}

#[test]
fn splice_64_mib_each_way() {
    splice_exchange(cipher_suite::TLS13_AES_128_GCM_SHA256, LARGE_LEN);
}

#[test]
fn plain_64_mib_each_way() {
    plain_exchange(
        cipher_suite::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
        LARGE_LEN,
    );
}

#[test]
fn probe_finds_all_ciphers() {
    let Some(support) = kernel_tls() else { return };
    eprintln!("{support}");
    for cipher in kernel::KernelCipher::ALL {
        assert!(
            support.supports(cipher),
            "{} missing: {support}",
            cipher.name()
        );
    }
}

/// Sends `request` in the same write as the client Finished and checks that the
/// server forwards it exactly once: first what rustls decrypted during the
/// handshake, then what the kernel decrypts.
fn first_request_with_finished(request_len: usize) {
    let Some(_) = kernel_tls() else { return };
    let suite = cipher_suite::TLS13_AES_128_GCM_SHA256;
    let (listener, addr) = listen();
    let client = thread::spawn(move || {
        let mut sock = TcpStream::connect(addr).unwrap();
        let mut conn = new_client(suite);
        conn.set_buffer_limit(None);
        write_stream(&mut conn.writer(), CLIENT_SEED, request_len).unwrap();

        // Collect the client's Finished and the queued request, then send them
        // in one write.
        while conn.is_handshaking() {
            while conn.wants_write() {
                conn.write_tls(&mut sock).unwrap();
            }
            if !conn.is_handshaking() {
                break;
            }
            conn.read_tls(&mut sock).unwrap();
            conn.process_new_packets().unwrap();
        }
        let mut flight = Vec::new();
        while conn.wants_write() {
            conn.write_tls(&mut flight).unwrap();
        }
        sock.write_all(&flight).unwrap();

        let mut tls = rustls::Stream::new(&mut conn, &mut sock);
        assert_eq!(read_to_end_count(&mut tls).unwrap(), 0);
        conn.send_close_notify();
        while conn.wants_write() {
            conn.write_tls(&mut sock).unwrap();
        }
    });

    let mut server = accept_and_offload(&listener, suite);
    assert!(
        !server.early_plaintext.is_empty(),
        "no plaintext arrived with the client Finished"
    );
    let mut expected = ByteStream::new(CLIENT_SEED);
    expected.check(&server.early_plaintext, 0);
    read_and_check(
        &mut server.stream,
        &mut expected,
        server.early_plaintext.len(),
        request_len,
    );
    kernel::send_close_notify(server.stream.as_fd()).unwrap();

    // A duplicate of the early plaintext would arrive here as application data.
    let mut buf = vec![0u8; CONTROL_RECORD_BUFFER_LEN];
    let record = kernel::read_control_record(server.stream.as_fd(), &mut buf).unwrap();
    assert_eq!(record, ControlRecord::CloseNotify);
    client.join().unwrap();
}

#[test]
fn first_request_with_finished_small() {
    first_request_with_finished(1000);
}

#[test]
fn first_request_with_finished_spans_records() {
    first_request_with_finished(100 * 1000);
}

/// Updates the client's keys `updates` times, then sends data and reads a
/// reply. Without kernel re-key support, the first update must end with
/// `RekeyError::KernelCannotRekey`.
fn client_key_updates(updates: usize) {
    let Some(support) = kernel_tls() else { return };
    let suite = cipher_suite::TLS13_CHACHA20_POLY1305_SHA256;
    let (listener, addr) = listen();
    let (offloaded_tx, offloaded) = std::sync::mpsc::channel::<()>();
    let client = thread::spawn(move || {
        let mut sock = TcpStream::connect(addr).unwrap();
        let mut conn = new_client(suite);
        client_handshake(&mut conn, &mut sock);
        // An update that arrived with the client's Finished would be handled by
        // rustls before the hand-off, and the kernel would never see it.
        offloaded.recv().unwrap();
        for _ in 0..updates {
            conn.refresh_traffic_keys().unwrap();
        }
        let mut tls = rustls::Stream::new(&mut conn, &mut sock);

        // Without re-key support the server closes early, so writing may fail,
        // and the reply only arrives when the server could follow the updates.
        write_stream(&mut tls, CLIENT_SEED, SMALL_LEN).ok()?;
        let mut reply = [0u8; 5];
        tls.read_exact(&mut reply).ok()?;
        Some(reply)
    });

    let mut server = accept_and_offload(&listener, suite);
    offloaded_tx.send(()).unwrap();
    let fd = server.stream.as_fd();
    let mut buf = vec![0u8; CONTROL_RECORD_BUFFER_LEN];
    let mut expected = ByteStream::new(CLIENT_SEED);
    let mut received = 0;
    let mut key_updates = 0;

    while received < SMALL_LEN {
        match kernel::read_control_record(fd, &mut buf).unwrap() {
            ControlRecord::ApplicationData { len } => {
                expected.check(&buf[..len], received);
                received += len;
            }
            ControlRecord::KeyUpdate { update_requested } => {
                assert!(update_requested, "rustls clients request an update back");
                key_updates += 1;
                let result =
                    kernel::handle_key_update(fd, &mut server.conn, update_requested, support);
                if support.rekey {
                    result.unwrap();
                } else {
                    assert!(
                        matches!(result, Err(RekeyError::KernelCannotRekey)),
                        "expected KernelCannotRekey, got {result:?}"
                    );
                    eprintln!("kernel cannot re-key, as expected: {}", result.unwrap_err());
                    break;
                }
            }
            other => panic!("unexpected record {other:?}"),
        }
    }

    if support.rekey {
        assert_eq!(key_updates, updates);
        server.stream.write_all(b"reply").unwrap();
        assert_eq!(client.join().unwrap(), Some(*b"reply"));
    } else {
        assert_eq!(key_updates, 1);
        assert_eq!(received, 0);
        drop(server);
        assert_eq!(client.join().unwrap(), None);
    }
}

#[test]
fn client_key_update_once() {
    client_key_updates(1);
}

#[test]
fn client_key_update_three_in_a_row() {
    client_key_updates(3);
}

#[test]
fn key_update_on_tls12_is_rejected() {
    let Some(support) = kernel_tls() else { return };
    let suite = cipher_suite::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256;
    let (listener, addr) = listen();
    let client = thread::spawn(move || {
        let mut sock = TcpStream::connect(addr).unwrap();
        let mut conn = new_client(suite);
        client_handshake(&mut conn, &mut sock);
        let mut tls = rustls::Stream::new(&mut conn, &mut sock);
        assert_eq!(read_to_end_count(&mut tls).unwrap(), 0);
    });

    let mut server = accept_and_offload(&listener, suite);
    let result = kernel::handle_key_update(server.stream.as_fd(), &mut server.conn, true, support);
    assert!(
        matches!(result, Err(RekeyError::NotTls13)),
        "got {result:?}"
    );

    kernel::send_close_notify(server.stream.as_fd()).unwrap();
    server.stream.shutdown(Shutdown::Write).unwrap();
    client.join().unwrap();
}

#[test]
fn fatal_alert_from_client() {
    let Some(_) = kernel_tls() else { return };
    let suite = cipher_suite::TLS13_AES_256_GCM_SHA384;
    let (listener, addr) = listen();
    let client = thread::spawn(move || {
        let mut sock = TcpStream::connect(addr).unwrap();
        let mut conn = new_client(suite);
        client_handshake(&mut conn, &mut sock);
        let mut tls = rustls::Stream::new(&mut conn, &mut sock);
        let mut buf = [0u8; 16];
        tls.read(&mut buf).unwrap_err()
    });

    // A HelloRequest is not allowed after a TLS 1.3 handshake, so the client
    // rejects it with a fatal unexpected_message alert.
    let server = accept_and_offload(&listener, suite);
    let hello_request = [0u8, 0, 0, 0];
    let sent = sys::send_record(server.stream.as_fd(), 22, &hello_request).unwrap();
    assert_eq!(sent, hello_request.len());

    let mut buf = vec![0u8; CONTROL_RECORD_BUFFER_LEN];
    let record = kernel::read_control_record(server.stream.as_fd(), &mut buf).unwrap();
    assert_eq!(
        record,
        ControlRecord::Alert {
            level: 2,
            description: 10
        }
    );
    assert!(record.is_fatal());

    let error = client.join().unwrap();
    assert_eq!(error.kind(), io::ErrorKind::InvalidData, "{error}");
}

#[test]
fn handoff_without_secret_extraction_fails() {
    let suite = cipher_suite::TLS13_AES_128_GCM_SHA256;
    let mut config = (*server_config(suite)).clone();
    config.enable_secret_extraction = false;
    let conn = UnbufferedServerConnection::new(Arc::new(config)).unwrap();
    let result = kernel::into_kernel_connection(conn);
    assert!(
        matches!(result, Err(kernel::HandoffError::SecretExtractionDisabled)),
        "got {:?}",
        result.err()
    );
}
