//! `sink`: a small HTTP/1.1 backend for uploads and for tests.
//!
//! It responds to `GET /bytes/N` with N bytes, any other request with `ok\n`, and reads
//! and drops request bodies. `POST /early` gets its response as soon as the request
//! head arrives, before the body, as nginx does for `return`. With a certificate and key it speaks TLS, so the client
//! modes can be tested without a proxy. It runs on one thread and stops after its
//! duration.

use std::collections::VecDeque;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use mio::net::TcpListener;
use mio::{Events, Interest, Poll, Token};
use rustls::ServerConfig;

use crate::http::{Head, MessageParser, Progress};
use crate::stream::Stream;

const LISTENER: Token = Token(usize::MAX);

/// Largest body that `GET /bytes/N` serves (1 TiB), so that a mistyped N cannot
/// make the sink send forever.
const MAX_BODY: u64 = 1 << 40;

pub struct SinkOptions {
    pub listen: SocketAddr,
    pub tls: Option<Arc<ServerConfig>>,
    pub duration: Duration,
}

struct Response {
    head: Vec<u8>,
    head_written: usize,
    body_left: u64,
    close: bool,
}

struct Conn {
    stream: Stream,
    parser: MessageParser,
    /// The current request's response was queued before its body arrived.
    responded_early: bool,
    responses: VecDeque<Response>,
}

/// Serves until `duration` has passed. Prints the bound address on stderr once the
/// socket listens.
pub fn run(options: &SinkOptions) -> io::Result<()> {
    let mut listener = TcpListener::bind(options.listen)?;
    let mut poll = Poll::new()?;
    poll.registry()
        .register(&mut listener, LISTENER, Interest::READABLE)?;
    eprintln!(
        "tlsplice-load: sink listening on {}",
        listener.local_addr()?
    );

    let deadline = Instant::now() + options.duration;
    let mut conns: Vec<Option<Conn>> = Vec::new();
    let mut free_slots: Vec<usize> = Vec::new();
    let mut events = Events::with_capacity(1024);
    let mut input = Vec::with_capacity(64 * 1024);

    while Instant::now() < deadline {
        let wait = deadline
            .saturating_duration_since(Instant::now())
            .min(Duration::from_millis(200));
        match poll.poll(&mut events, Some(wait)) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
        for event in events.iter() {
            if event.token() == LISTENER {
                accept_all(&listener, &poll, options, &mut conns, &mut free_slots);
                continue;
            }
            let slot = event.token().0;
            let Some(conn) = conns.get_mut(slot).and_then(Option::as_mut) else {
                continue;
            };
            if let Err(e) = serve(conn, &mut input) {
                if e.kind() != io::ErrorKind::UnexpectedEof {
                    eprintln!("tlsplice-load: sink: connection closed after error: {e}");
                }
                conns[slot] = None;
                free_slots.push(slot);
            }
        }
    }
    Ok(())
}

fn accept_all(
    listener: &TcpListener,
    poll: &Poll,
    options: &SinkOptions,
    conns: &mut Vec<Option<Conn>>,
    free_slots: &mut Vec<usize>,
) {
    loop {
        let (mut sock, _) = match listener.accept() {
            Ok(accepted) => accepted,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
            Err(e) => {
                eprintln!("tlsplice-load: sink: accept failed: {e}");
                return;
            }
        };
        let _ = sock.set_nodelay(true);
        let tls = match &options.tls {
            None => None,
            Some(config) => match rustls::ServerConnection::new(Arc::clone(config)) {
                Ok(conn) => Some(rustls::Connection::Server(conn)),
                Err(e) => {
                    eprintln!("tlsplice-load: sink: TLS setup failed: {e}");
                    continue;
                }
            },
        };
        let slot = free_slots.pop().unwrap_or_else(|| {
            conns.push(None);
            conns.len() - 1
        });
        if let Err(e) = poll.registry().register(
            &mut sock,
            Token(slot),
            Interest::READABLE | Interest::WRITABLE,
        ) {
            eprintln!("tlsplice-load: sink: register failed: {e}");
            free_slots.push(slot);
            continue;
        }
        conns[slot] = Some(Conn {
            stream: Stream::new(sock, tls),
            parser: MessageParser::request(),
            responded_early: false,
            responses: VecDeque::new(),
        });
    }
}

/// Reads requests, queues their responses and writes what the socket takes. An
/// `UnexpectedEof` error means the connection ended normally.
fn serve(conn: &mut Conn, input: &mut Vec<u8>) -> io::Result<()> {
    input.clear();
    let outcome = conn.stream.read_available(input)?;

    let mut rest: &[u8] = input;
    while !rest.is_empty() {
        let progress = conn
            .parser
            .feed(rest)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.to_string()))?;
        let Progress::Done { head, consumed } = progress else {
            let early = conn.parser.head().is_some_and(|h| h.path == "/early");
            if early && !conn.responded_early {
                let response = response_for(conn.parser.head().expect("checked above"));
                conn.responses.push_back(response);
                conn.responded_early = true;
            }
            break;
        };
        if !conn.responded_early {
            conn.responses.push_back(response_for(&head));
        }
        conn.responded_early = false;
        conn.parser = MessageParser::request();
        rest = &rest[consumed..];
    }

    let closing = write_responses(conn)?;
    if closing || (outcome.eof && conn.responses.is_empty()) {
        conn.stream.close();
        return Err(io::ErrorKind::UnexpectedEof.into());
    }
    Ok(())
}

fn response_for(head: &Head) -> Response {
    let body_len = match head.path.strip_prefix("/bytes/") {
        Some(count) if head.method == "GET" => count.parse::<u64>().unwrap_or(0).min(MAX_BODY),
        _ => 3,
    };
    let close_header = if head.close {
        "Connection: close\r\n"
    } else {
        ""
    };
    let text = format!("HTTP/1.1 200 OK\r\nContent-Length: {body_len}\r\n{close_header}\r\n");
    let mut head_bytes = text.into_bytes();
    let mut body_left = body_len;
    if !head.path.starts_with("/bytes/") || head.method != "GET" {
        head_bytes.extend_from_slice(b"ok\n");
        body_left = 0;
    }
    Response {
        head: head_bytes,
        head_written: 0,
        body_left,
        close: head.close,
    }
}

/// Writes queued responses in order. Returns true when a response that asked to
/// close the connection has gone out completely.
fn write_responses(conn: &mut Conn) -> io::Result<bool> {
    static FILL: [u8; 16 * 1024] = [b'x'; 16 * 1024];
    while let Some(response) = conn.responses.front_mut() {
        while response.head_written < response.head.len() {
            let n = conn
                .stream
                .write_plain(&response.head[response.head_written..])?;
            if n == 0 {
                break;
            }
            response.head_written += n;
        }
        while response.head_written == response.head.len() && response.body_left > 0 {
            let chunk = response.body_left.min(FILL.len() as u64) as usize;
            let n = conn.stream.write_plain(&FILL[..chunk])?;
            if n == 0 {
                break;
            }
            response.body_left -= n as u64;
        }
        conn.stream.flush()?;

        let done = response.head_written == response.head.len() && response.body_left == 0;
        if !done {
            if conn.stream.has_pending_output() {
                return Ok(false);
            }
            continue;
        }
        if response.close {
            // Closing drops bytes still queued, so wait until the socket took them.
            if conn.stream.has_pending_output() {
                return Ok(false);
            }
            conn.responses.pop_front();
            return Ok(true);
        }
        conn.responses.pop_front();
    }
    Ok(false)
}
