//! Access log formats: which part of a line is the peer address, the peer port
//! and the time.
//!
//! A format is a template of literal text and placeholders:
//!
//! | placeholder | matches |
//! |---|---|
//! | `{addr}`  | the peer address, IPv4 or IPv6, optionally in `[...]`, and the text that is replaced |
//! | `{port}`  | the peer port, decimal |
//! | `{clf}`   | a Common Log Format time, `10/Oct/2000:13:55:36 -0700` (the brackets are literal text) |
//! | `{iso}`   | an RFC 3339 time, `2000-10-10T13:55:36-07:00`, with an optional fraction |
//! | `{epoch}` | seconds since the epoch with an optional fraction, `971211336.123` |
//! | `{skip}`  | any text, ignored |
//!
//! `{{` and `}}` are literal braces. A placeholder extends to the first
//! occurrence of the literal text that follows it in the template, or, at the
//! end of the template, to the next space or the end of the line. The template
//! only needs to describe the start of a line: text after its last element is
//! ignored. It must contain `{addr}`, `{port}` and one time placeholder, and
//! two placeholders need literal text between them.

use super::time::{parse_clf, parse_epoch, parse_rfc3339, Micros};
use std::net::{IpAddr, SocketAddr};
use std::ops::Range;

/// Template behind `--format common` and `--format combined`, for the Apache
/// `LogFormat "%a %{remote}p %l %u %t \"%r\" %>s %b"` and its combined form
/// with `\"%{Referer}i\" \"%{User-Agent}i\"` appended. Both start the same way,
/// so one template serves both.
pub const APACHE_TEMPLATE: &str = "{addr} {port} {skip} {skip} [{clf}]";

/// Template behind `--format nginx`, for
/// `log_format tlsplice '$remote_addr $remote_port - $remote_user [$time_local] "$request" $status $body_bytes_sent "$http_referer" "$http_user_agent"';`
pub const NGINX_TEMPLATE: &str = "{addr} {port} - {skip} [{clf}]";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Field {
    Address,
    Port,
    TimeClf,
    TimeIso,
    TimeEpoch,
    Skip,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Element {
    Literal(Vec<u8>),
    Field(Field),
}

/// A parsed access log template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccessFormat {
    elements: Vec<Element>,
}

/// The parts of one access log line that the join uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccessLine {
    /// Byte range of the address text, without brackets, to be replaced.
    pub address_range: Range<usize>,
    /// Peer address and port: tlsplice's `local` address for this connection.
    pub peer: SocketAddr,
    pub time: Micros,
    /// Length of the interval `time` stands for, from the precision of the text.
    pub resolution: Micros,
}

impl AccessFormat {
    /// Parses `--format`: `combined`, `common`, `nginx` or a template.
    pub fn from_option(value: &str) -> Result<AccessFormat, String> {
        match value {
            "combined" | "common" => AccessFormat::from_template(APACHE_TEMPLATE),
            "nginx" => AccessFormat::from_template(NGINX_TEMPLATE),
            template => AccessFormat::from_template(template),
        }
    }

    /// Parses a template, or returns an error that names what is wrong with it.
    pub fn from_template(template: &str) -> Result<AccessFormat, String> {
        let mut elements = Vec::new();
        let mut literal = Vec::new();
        let mut rest = template;
        while let Some(c) = rest.chars().next() {
            if let Some(after) = rest.strip_prefix("{{") {
                literal.push(b'{');
                rest = after;
            } else if let Some(after) = rest.strip_prefix("}}") {
                literal.push(b'}');
                rest = after;
            } else if c == '{' {
                let Some(close) = rest.find('}') else {
                    return Err(format!("unclosed `{{` in `{rest}`"));
                };
                let field = match &rest[1..close] {
                    "addr" => Field::Address,
                    "port" => Field::Port,
                    "clf" => Field::TimeClf,
                    "iso" => Field::TimeIso,
                    "epoch" => Field::TimeEpoch,
                    "skip" => Field::Skip,
                    other => {
                        return Err(format!(
                            "unknown placeholder `{{{other}}}`, expected addr, port, clf, iso, epoch or skip"
                        ))
                    }
                };
                if !literal.is_empty() {
                    elements.push(Element::Literal(std::mem::take(&mut literal)));
                } else if matches!(elements.last(), Some(Element::Field(_))) {
                    return Err(format!(
                        "placeholder `{}` directly follows another placeholder; put literal text between them",
                        &rest[..=close]
                    ));
                }
                elements.push(Element::Field(field));
                rest = &rest[close + 1..];
            } else if c == '}' {
                return Err("unmatched `}`; write `}}` for a literal brace".to_owned());
            } else {
                let mut buffer = [0u8; 4];
                literal.extend_from_slice(c.encode_utf8(&mut buffer).as_bytes());
                rest = &rest[c.len_utf8()..];
            }
        }
        if !literal.is_empty() {
            elements.push(Element::Literal(literal));
        }

        let count = |wanted: &[Field]| {
            elements
                .iter()
                .filter(|e| matches!(e, Element::Field(f) if wanted.contains(f)))
                .count()
        };
        if count(&[Field::Address]) != 1 || count(&[Field::Port]) != 1 {
            return Err("the format needs exactly one {addr} and one {port}".to_owned());
        }
        if count(&[Field::TimeClf, Field::TimeIso, Field::TimeEpoch]) != 1 {
            return Err(
                "the format needs exactly one time placeholder: {clf}, {iso} or {epoch}".to_owned(),
            );
        }
        Ok(AccessFormat { elements })
    }

    /// Parses one line, without its line ending. Returns `None` when the line
    /// does not match the template or a field is invalid.
    pub fn parse(&self, line: &[u8]) -> Option<AccessLine> {
        let mut position = 0;
        let mut address = None;
        let mut port = None;
        let mut time = None;

        for (index, element) in self.elements.iter().enumerate() {
            match element {
                Element::Literal(text) => {
                    if !line[position..].starts_with(text) {
                        return None;
                    }
                    position += text.len();
                }
                Element::Field(field) => {
                    let end = match self.elements.get(index + 1) {
                        Some(Element::Literal(next)) => position + find(&line[position..], next)?,
                        _ => line[position..]
                            .iter()
                            .position(|&b| b == b' ')
                            .map_or(line.len(), |offset| position + offset),
                    };
                    let text = std::str::from_utf8(&line[position..end]).ok()?;
                    match field {
                        Field::Address => address = Some(parse_address(text, position)?),
                        Field::Port => port = Some(parse_port(text)?),
                        Field::TimeClf => time = Some(parse_clf(text)?),
                        Field::TimeIso => time = Some(parse_rfc3339(text)?),
                        Field::TimeEpoch => time = Some(parse_epoch(text)?),
                        Field::Skip => {}
                    }
                    position = end;
                }
            }
        }

        let (ip, address_range) = address?;
        let time = time?;
        Some(AccessLine {
            address_range,
            peer: SocketAddr::new(ip, port?),
            time: time.micros,
            resolution: time.resolution,
        })
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack
        .windows(needle.len())
        .position(|window| window == needle)
}

/// Parses an address field that starts at byte `start` of the line, returning
/// the canonical address and the byte range of its text without brackets.
fn parse_address(text: &str, start: usize) -> Option<(IpAddr, Range<usize>)> {
    let (inner, offset) = match text.strip_prefix('[').and_then(|t| t.strip_suffix(']')) {
        Some(inner) => (inner, 1),
        None => (text, 0),
    };
    let ip: IpAddr = inner.parse().ok()?;
    Some((
        ip.to_canonical(),
        start + offset..start + offset + inner.len(),
    ))
}

fn parse_port(text: &str) -> Option<u16> {
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    text.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    const COMBINED: &[u8] = b"127.0.0.2 40112 - frank [04/Dec/2026:20:01:02 +0000] \"GET / HTTP/1.1\" 200 2326 \"-\" \"curl/8.5\"";

    #[test]
    fn combined_line_fields() {
        let format = AccessFormat::from_option("combined").unwrap();
        let line = format.parse(COMBINED).unwrap();
        assert_eq!(line.address_range, 0..9);
        assert_eq!(line.peer, "127.0.0.2:40112".parse().unwrap());
        assert_eq!(
            line.time,
            parse_rfc3339("2026-12-04T20:01:02Z").unwrap().micros
        );
        assert_eq!(line.resolution, 1_000_000);
    }

    #[test]
    fn user_with_space_still_parses() {
        let format = AccessFormat::from_option("common").unwrap();
        let line =
            b"127.0.0.2 40112 - john doe [04/Dec/2026:20:01:02 +0000] \"GET / HTTP/1.1\" 200 1";
        assert!(format.parse(line).is_some());
    }

    #[test]
    fn nginx_line_with_ipv6_peer() {
        let format = AccessFormat::from_option("nginx").unwrap();
        let line =
            b"::1 40112 - - [04/Dec/2026:20:01:02 +0000] \"GET / HTTP/1.1\" 200 5 \"-\" \"-\"";
        let parsed = format.parse(line).unwrap();
        assert_eq!(parsed.peer, "[::1]:40112".parse().unwrap());
        assert_eq!(parsed.address_range, 0..3);
    }

    #[test]
    fn custom_template_with_port_last() {
        let format = AccessFormat::from_template("{iso} [{addr}]:{port}").unwrap();
        let line = b"2026-12-04T20:01:02.250+00:00 [::ffff:127.0.0.2]:40112 GET /";
        let parsed = format.parse(line).unwrap();
        assert_eq!(parsed.peer, "127.0.0.2:40112".parse().unwrap());
        assert_eq!(&line[parsed.address_range.clone()], b"::ffff:127.0.0.2");
        assert_eq!(parsed.resolution, 1_000);
    }

    #[test]
    fn unmatched_lines_rejected() {
        let format = AccessFormat::from_option("combined").unwrap();
        assert_eq!(format.parse(b""), None);
        assert_eq!(format.parse(b"garbage"), None);
        assert_eq!(
            format.parse(b"127.0.0.2 notaport - - [04/Dec/2026:20:01:02 +0000] \"GET /\""),
            None
        );
        assert_eq!(
            format.parse(b"127.0.0.2 40112 - - [04/Dec/2026:25:01:02 +0000] \"GET /\""),
            None
        );
        assert_eq!(
            format.parse(b"localhost 40112 - - [04/Dec/2026:20:01:02 +0000] \"GET /\""),
            None
        );
    }

    #[test]
    fn invalid_templates_rejected() {
        assert!(AccessFormat::from_template("{addr} {port}").is_err());
        assert!(AccessFormat::from_template("{addr}{port} {clf}").is_err());
        assert!(AccessFormat::from_template("{addr} {port} {clf} {clf}").is_err());
        assert!(AccessFormat::from_template("{addr} {port} {time}").is_err());
        assert!(AccessFormat::from_template("{addr} {port} {clf").is_err());
        assert!(AccessFormat::from_template("{addr} } {port} {clf}").is_err());
        assert!(AccessFormat::from_template("{{{addr}}} {port} [{clf}]").is_ok());
    }
}
