//! The `stats` HTTP/1.1 listener: `/metrics` and `/stats.json`.
//!
//! Blocking std::net with one thread per request, at most
//! [`StatsServerOptions::max_connections`] at once. Every response closes the
//! connection. The server reads only published snapshots and never touches a
//! worker's live values.

use std::io::{self, Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use super::registry::Registry;
use super::{json, prometheus};

/// Maximum request head (request line and headers) read before responding with 431.
const MAX_HEAD_BYTES: usize = 8 * 1024;

/// Settings of the stats listener.
#[derive(Debug, Clone, Copy)]
pub struct StatsServerOptions {
    /// Time a client has to send its whole request head; then the connection
    /// is closed without a response.
    pub read_timeout: Duration,
    /// Time allowed for writing the response.
    pub write_timeout: Duration,
    /// Requests served at once; connections beyond this get 503.
    pub max_connections: usize,
}

impl Default for StatsServerOptions {
    fn default() -> Self {
        StatsServerOptions {
            read_timeout: Duration::from_secs(5),
            write_timeout: Duration::from_secs(5),
            max_connections: 8,
        }
    }
}

/// A running stats listener. Dropping it stops the listener.
pub struct StatsServer {
    local_addr: SocketAddr,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl StatsServer {
    /// Binds `addr` (port 0 picks a free port) and serves on a new thread.
    pub fn start(
        addr: SocketAddr,
        registry: Arc<Registry>,
        options: StatsServerOptions,
    ) -> io::Result<StatsServer> {
        let listener = TcpListener::bind(addr)?;
        let local_addr = listener.local_addr()?;
        let stop = Arc::new(AtomicBool::new(false));

        let thread_stop = Arc::clone(&stop);
        let thread = thread::Builder::new()
            .name("stats".to_owned())
            .spawn(move || accept_loop(listener, registry, options, thread_stop))?;
        log::info!("metrics: stats listener started on {local_addr}");

        Ok(StatsServer {
            local_addr,
            stop,
            thread: Some(thread),
        })
    }

    /// Returns the bound address, with the port the system chose for port 0.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Stops accepting and waits for the accept thread; requests in progress
    /// finish on their own threads.
    pub fn stop(mut self) {
        self.stop_thread();
    }

    fn stop_thread(&mut self) {
        let Some(thread) = self.thread.take() else {
            return;
        };
        self.stop.store(true, Ordering::SeqCst);
        // `accept` blocks, so a connection to our own listener wakes it to see the flag.
        let wake_addr = match self.local_addr.ip() {
            IpAddr::V4(ip) if ip.is_unspecified() => {
                SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), self.local_addr.port())
            }
            IpAddr::V6(ip) if ip.is_unspecified() => {
                SocketAddr::new(IpAddr::V6(Ipv6Addr::LOCALHOST), self.local_addr.port())
            }
            _ => self.local_addr,
        };
        if let Err(error) = TcpStream::connect_timeout(&wake_addr, Duration::from_secs(1)) {
            log::warn!("metrics: could not wake the stats listener on {wake_addr}: {error}");
            return;
        }
        let _ = thread.join();
        log::info!("metrics: stats listener on {} stopped", self.local_addr);
    }
}

impl Drop for StatsServer {
    fn drop(&mut self) {
        self.stop_thread();
    }
}

fn accept_loop(
    listener: TcpListener,
    registry: Arc<Registry>,
    options: StatsServerOptions,
    stop: Arc<AtomicBool>,
) {
    let in_flight = Arc::new(AtomicUsize::new(0));
    let mut accept_errors: u64 = 0;

    for stream in listener.incoming() {
        if stop.load(Ordering::SeqCst) {
            break;
        }
        let stream = match stream {
            Ok(stream) => stream,
            Err(error) => {
                accept_failed(&mut accept_errors, &error);
                continue;
            }
        };

        if in_flight.fetch_add(1, Ordering::SeqCst) >= options.max_connections {
            in_flight.fetch_sub(1, Ordering::SeqCst);
            let mut stream = stream;
            let _ = stream.set_write_timeout(Some(options.write_timeout));
            let _ = write_response(
                &mut stream,
                &Response::error(503, "too many requests"),
                false,
            );
            continue;
        }

        let registry = Arc::clone(&registry);
        let in_flight_thread = Arc::clone(&in_flight);
        let spawned = thread::Builder::new()
            .name("stats-request".to_owned())
            .spawn(move || {
                serve(stream, &registry, options);
                in_flight_thread.fetch_sub(1, Ordering::SeqCst);
            });
        if let Err(error) = spawned {
            in_flight.fetch_sub(1, Ordering::SeqCst);
            log::warn!("metrics: could not start a stats request thread: {error}");
        }
    }
}

/// Accepts and serves requests one at a time on the calling thread, and never
/// returns. Several threads may share one listener, each serving one request at
/// a time, so this needs no thread per request. The metrics process of privilege
/// separation uses it because its seccomp filter forbids starting threads.
pub fn serve_shared(listener: &TcpListener, registry: &Registry, options: StatsServerOptions) -> ! {
    let mut accept_errors: u64 = 0;
    loop {
        match listener.accept() {
            Ok((stream, _)) => serve(stream, registry, options),
            Err(error) => accept_failed(&mut accept_errors, &error),
        }
    }
}

/// Handles a failed accept of the stats listener (EMFILE and the like): logs the
/// first 10 failures and pauses, so that a failure that persists does not spin.
/// Serving goes on, as the data path does not depend on this listener.
fn accept_failed(failures: &mut u64, error: &std::io::Error) {
    *failures += 1;
    if *failures <= 10 {
        log::warn!("metrics: stats accept failed: {error}");
    }
    crate::sys::process::pause(Duration::from_millis(100));
}

/// An HTTP response before serialization.
struct Response {
    status: u16,
    content_type: &'static str,
    allow: bool,
    body: String,
}

impl Response {
    fn error(status: u16, message: &str) -> Response {
        Response {
            status,
            content_type: "text/plain; charset=utf-8",
            allow: status == 405,
            body: format!("{message}\n"),
        }
    }
}

/// The parts of a request that the server acts on.
#[derive(Debug, PartialEq, Eq)]
struct Request {
    method: String,
    path: String,
}

fn serve(mut stream: TcpStream, registry: &Registry, options: StatsServerOptions) {
    let peer = stream.peer_addr().ok();
    let _ = stream.set_write_timeout(Some(options.write_timeout));

    let head = match read_head(&mut stream, options.read_timeout) {
        Ok(Some(head)) => head,
        Ok(None) => {
            let response = Response::error(431, "request header fields too large");
            let _ = write_response(&mut stream, &response, false);
            return;
        }
        Err(error) => {
            log::debug!("metrics: stats request from {peer:?} dropped: {error}");
            let _ = stream.shutdown(Shutdown::Both);
            return;
        }
    };

    let (response, is_head) = match parse_request(&head) {
        Some(request) => (route(&request, registry), request.method == "HEAD"),
        None => (Response::error(400, "bad request"), false),
    };
    if let Err(error) = write_response(&mut stream, &response, is_head) {
        log::debug!("metrics: stats response to {peer:?} failed: {error}");
    }
}

/// Reads until the blank line that ends the request head. Returns `Ok(None)` when
/// the head exceeds [`MAX_HEAD_BYTES`], and an error on EOF or when `timeout`
/// runs out, however slowly the bytes arrive.
fn read_head(stream: &mut TcpStream, timeout: Duration) -> io::Result<Option<Vec<u8>>> {
    let deadline = Instant::now() + timeout;
    let mut head = Vec::with_capacity(1024);
    let mut buffer = [0u8; 1024];

    loop {
        let remaining = deadline.saturating_duration_since(Instant::now());
        if remaining.is_zero() {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "request head timed out",
            ));
        }
        stream.set_read_timeout(Some(remaining))?;

        let read = stream.read(&mut buffer)?;
        if read == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "connection closed before the end of the request head",
            ));
        }
        head.extend_from_slice(&buffer[..read]);

        if let Some(end) = find_head_end(&head) {
            head.truncate(end);
            return Ok(Some(head));
        }
        if head.len() > MAX_HEAD_BYTES {
            return Ok(None);
        }
    }
}

/// Returns the length of the head without its final blank line, accepting
/// bare LF line ends as RFC 9112 permits.
fn find_head_end(data: &[u8]) -> Option<usize> {
    if let Some(position) = data.windows(4).position(|window| window == b"\r\n\r\n") {
        return Some(position);
    }
    data.windows(2).position(|window| window == b"\n\n")
}

/// Parses the request line; headers are read and ignored.
fn parse_request(head: &[u8]) -> Option<Request> {
    let text = std::str::from_utf8(head).ok()?;
    let line = text.lines().next()?;
    let mut parts = line.split(' ');
    let method = parts.next()?;
    let target = parts.next()?;
    let version = parts.next()?;
    if parts.next().is_some() {
        return None;
    }

    let is_token = !method.is_empty() && method.bytes().all(|b| b.is_ascii_uppercase());
    if !is_token || !target.starts_with('/') || !matches!(version, "HTTP/1.1" | "HTTP/1.0") {
        return None;
    }
    let path = target.split('?').next().unwrap_or(target);

    Some(Request {
        method: method.to_owned(),
        path: path.to_owned(),
    })
}

fn route(request: &Request, registry: &Registry) -> Response {
    let render: fn(&super::Snapshot) -> String = match request.path.as_str() {
        "/metrics" => prometheus::render,
        "/stats.json" => json::render,
        _ => return Response::error(404, "not found: try /metrics or /stats.json"),
    };
    if request.method != "GET" && request.method != "HEAD" {
        return Response::error(405, "method not allowed: use GET or HEAD");
    }

    let content_type = if request.path == "/metrics" {
        prometheus::CONTENT_TYPE
    } else {
        "application/json"
    };
    Response {
        status: 200,
        content_type,
        allow: false,
        body: render(&registry.snapshot()),
    }
}

fn write_response(stream: &mut TcpStream, response: &Response, is_head: bool) -> io::Result<()> {
    let reason = match response.status {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        431 => "Request Header Fields Too Large",
        503 => "Service Unavailable",
        _ => "Error",
    };
    let mut head = format!(
        "HTTP/1.1 {} {reason}\r\nContent-Type: {}\r\nContent-Length: {}\r\nConnection: close\r\n",
        response.status,
        response.content_type,
        response.body.len()
    );
    if response.allow {
        head.push_str("Allow: GET, HEAD\r\n");
    }
    head.push_str("\r\n");

    stream.write_all(head.as_bytes())?;
    if !is_head {
        stream.write_all(response.body.as_bytes())?;
    }
    stream.flush()?;
    stream.shutdown(Shutdown::Write)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_request_accepts_get() {
        let request = parse_request(b"GET /metrics?x=1 HTTP/1.1\r\nHost: a").unwrap();
        assert_eq!(request.method, "GET");
        assert_eq!(request.path, "/metrics");
    }

    #[test]
    fn parse_request_rejects_garbage() {
        for head in [
            &b"hello"[..],
            b"GET /metrics",
            b"GET metrics HTTP/1.1",
            b"GET /metrics HTTP/2.0",
            b"get /metrics HTTP/1.1",
            b"GET  /metrics HTTP/1.1",
            b"\xff\xfe",
        ] {
            assert_eq!(
                parse_request(head),
                None,
                "{:?}",
                String::from_utf8_lossy(head)
            );
        }
    }

    #[test]
    fn find_head_end_handles_both_line_ends() {
        assert_eq!(find_head_end(b"GET / HTTP/1.1\r\n\r\n"), Some(14));
        assert_eq!(find_head_end(b"GET / HTTP/1.1\n\n"), Some(14));
        assert_eq!(find_head_end(b"GET / HTTP/1.1\r\n"), None);
    }
}
