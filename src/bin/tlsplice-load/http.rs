//! The small part of HTTP/1.1 the load generator and the sink speak: requests and
//! responses framed by `Content-Length`, one exchange at a time per connection.

/// Maximum size of a request or response head.
const MAX_HEAD: usize = 16 * 1024;

#[derive(Debug, PartialEq, Eq)]
pub enum HttpError {
    HeadTooLarge,
    Malformed(&'static str),
    /// Chunked bodies are not supported; the peers used here send `Content-Length`.
    Chunked,
}

impl std::fmt::Display for HttpError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            HttpError::HeadTooLarge => write!(f, "HTTP head larger than {MAX_HEAD} bytes"),
            HttpError::Malformed(what) => write!(f, "malformed HTTP message: {what}"),
            HttpError::Chunked => write!(f, "chunked transfer encoding is not supported"),
        }
    }
}

/// Formats a request head. `body_len` is sent as `Content-Length` when it is not zero.
pub fn request_head(method: &str, path: &str, host: &str, body_len: u64, close: bool) -> Vec<u8> {
    let mut head = format!("{method} {path} HTTP/1.1\r\nHost: {host}\r\n");
    if body_len > 0 {
        head.push_str(&format!("Content-Length: {body_len}\r\n"));
    }
    if close {
        head.push_str("Connection: close\r\n");
    }
    head.push_str("\r\n");
    head.into_bytes()
}

/// Fields of a parsed head that the callers use.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Head {
    /// Request method, empty for a response.
    pub method: String,
    /// Request target, empty for a response.
    pub path: String,
    /// Response status, 0 for a request.
    pub status: u16,
    pub content_length: u64,
    pub close: bool,
}

/// Progress of one message through [`MessageParser::feed`].
#[derive(Debug, PartialEq, Eq)]
pub enum Progress {
    /// More bytes are needed.
    Incomplete,
    /// The whole message arrived. `consumed` bytes of the last input belonged to it.
    Done { head: Head, consumed: usize },
}

enum State {
    Head(Vec<u8>),
    Body { head: Head, remaining: u64 },
}

/// Incremental parser for one request or one response. Body bytes are counted, not
/// stored.
pub struct MessageParser {
    is_request: bool,
    state: State,
    pub body_received: u64,
}

impl MessageParser {
    pub fn response() -> MessageParser {
        MessageParser::new(false)
    }

    pub fn request() -> MessageParser {
        MessageParser::new(true)
    }

    fn new(is_request: bool) -> MessageParser {
        MessageParser {
            is_request,
            state: State::Head(Vec::new()),
            body_received: 0,
        }
    }

    /// Returns the parsed head once it is complete, also while the body is still
    /// arriving.
    pub fn head(&self) -> Option<&Head> {
        match &self.state {
            State::Head(_) => None,
            State::Body { head, .. } => Some(head),
        }
    }

    /// Feeds received bytes. After `Done`, the bytes past `consumed` belong to the
    /// next message and the parser must be replaced.
    pub fn feed(&mut self, data: &[u8]) -> Result<Progress, HttpError> {
        let mut consumed = 0;
        if let State::Head(buf) = &mut self.state {
            let already = buf.len();
            buf.extend_from_slice(data);
            let Some(end) = find_head_end(buf) else {
                if buf.len() > MAX_HEAD {
                    return Err(HttpError::HeadTooLarge);
                }
                return Ok(Progress::Incomplete);
            };
            let head = parse_head(&buf[..end], self.is_request)?;
            consumed = end - already;
            let remaining = head.content_length;
            self.state = State::Body { head, remaining };
        }

        let State::Body { head, remaining } = &mut self.state else {
            unreachable!("the head state was replaced above");
        };
        let take = (*remaining).min((data.len() - consumed) as u64);
        *remaining -= take;
        self.body_received += take;
        consumed += take as usize;
        if *remaining > 0 {
            return Ok(Progress::Incomplete);
        }
        Ok(Progress::Done {
            head: head.clone(),
            consumed,
        })
    }
}

/// Returns the length of the head including its blank line.
fn find_head_end(buf: &[u8]) -> Option<usize> {
    buf.windows(4).position(|w| w == b"\r\n\r\n").map(|i| i + 4)
}

fn parse_head(bytes: &[u8], is_request: bool) -> Result<Head, HttpError> {
    let text = std::str::from_utf8(bytes).map_err(|_| HttpError::Malformed("head is not UTF-8"))?;
    let mut lines = text.split("\r\n");
    let start = lines.next().unwrap_or_default();
    let mut parts = start.splitn(3, ' ');
    let first = parts.next().unwrap_or_default();
    let second = parts
        .next()
        .ok_or(HttpError::Malformed("short start line"))?;
    let third = parts.next().unwrap_or_default();

    let mut head = Head::default();
    if is_request {
        if !third.starts_with("HTTP/1.") {
            return Err(HttpError::Malformed("request is not HTTP/1.x"));
        }
        head.method = first.to_string();
        head.path = second.to_string();
    } else {
        if !first.starts_with("HTTP/1.") {
            return Err(HttpError::Malformed("response is not HTTP/1.x"));
        }
        head.status = second
            .parse()
            .map_err(|_| HttpError::Malformed("invalid status code"))?;
        head.close = first == "HTTP/1.0";
    }

    for line in lines.filter(|l| !l.is_empty()) {
        let (name, value) = line
            .split_once(':')
            .ok_or(HttpError::Malformed("header line without a colon"))?;
        let value = value.trim();
        if name.eq_ignore_ascii_case("content-length") {
            head.content_length = value
                .parse()
                .map_err(|_| HttpError::Malformed("invalid Content-Length"))?;
        } else if name.eq_ignore_ascii_case("transfer-encoding")
            && !value.eq_ignore_ascii_case("identity")
        {
            return Err(HttpError::Chunked);
        } else if name.eq_ignore_ascii_case("connection") {
            head.close = value.eq_ignore_ascii_case("close");
        }
    }
    Ok(head)
}

#[cfg(test)]
mod tests {
    use super::*;

    const RESPONSE: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nServer: x\r\n\r\nhello";

    #[test]
    fn response_in_one_piece() {
        let mut parser = MessageParser::response();
        let progress = parser.feed(RESPONSE).unwrap();
        let Progress::Done { head, consumed } = progress else {
            panic!("expected a complete response, got {progress:?}");
        };
        assert_eq!(head.status, 200);
        assert_eq!(head.content_length, 5);
        assert!(!head.close);
        assert_eq!(consumed, RESPONSE.len());
        assert_eq!(parser.body_received, 5);
    }

    #[test]
    fn response_byte_by_byte() {
        let mut parser = MessageParser::response();
        for (i, byte) in RESPONSE.iter().enumerate() {
            let progress = parser.feed(std::slice::from_ref(byte)).unwrap();
            if i + 1 < RESPONSE.len() {
                assert_eq!(progress, Progress::Incomplete, "byte {i}");
            } else {
                assert!(matches!(progress, Progress::Done { consumed: 1, .. }));
            }
        }
    }

    #[test]
    fn response_leaves_next_bytes() {
        let mut input = RESPONSE.to_vec();
        input.extend_from_slice(b"HTTP/1.1");
        let mut parser = MessageParser::response();
        let progress = parser.feed(&input).unwrap();
        assert!(matches!(progress, Progress::Done { consumed, .. } if consumed == RESPONSE.len()));
    }

    #[test]
    fn response_connection_close() {
        let mut parser = MessageParser::response();
        let progress = parser
            .feed(b"HTTP/1.1 204 No Content\r\nconnection: Close\r\n\r\n")
            .unwrap();
        let Progress::Done { head, .. } = progress else {
            panic!("expected a complete response, got {progress:?}");
        };
        assert_eq!(head.status, 204);
        assert!(head.close);
    }

    #[test]
    fn response_chunked_rejected() {
        let mut parser = MessageParser::response();
        let result = parser.feed(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n");
        assert_eq!(result, Err(HttpError::Chunked));
    }

    #[test]
    fn response_head_too_large() {
        let mut parser = MessageParser::response();
        let result = parser.feed(&vec![b'a'; MAX_HEAD + 1]);
        assert_eq!(result, Err(HttpError::HeadTooLarge));
    }

    #[test]
    fn request_with_body() {
        let mut input = request_head("POST", "/upload", "localhost", 3, false);
        input.extend_from_slice(b"abc");
        let mut parser = MessageParser::request();
        let progress = parser.feed(&input).unwrap();
        let Progress::Done { head, consumed } = progress else {
            panic!("expected a complete request, got {progress:?}");
        };
        assert_eq!(head.method, "POST");
        assert_eq!(head.path, "/upload");
        assert_eq!(head.content_length, 3);
        assert_eq!(consumed, input.len());
    }

    #[test]
    fn request_not_http() {
        let mut parser = MessageParser::request();
        let result = parser.feed(b"GET / SPDY/3\r\n\r\n");
        assert!(matches!(result, Err(HttpError::Malformed(_))));
    }
}
