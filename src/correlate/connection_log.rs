//! Parsing of tlsplice's connection log lines.
//!
//! A connection line is `TIMESTAMP LEVEL conn key=value ...` with the keys
//! `service client local backend start duration tls cipher sni alpn path up down
//! reason`. Fields are found by key, so the parser only needs the ones it uses.

use super::time::{parse_rfc3339, parse_seconds, Micros};
use std::net::{IpAddr, SocketAddr};

/// One finished connection, as far as the join needs it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Connection {
    /// tlsplice's source address towards the backend, which the backend logs as its peer.
    pub local: SocketAddr,
    pub backend: Option<SocketAddr>,
    /// The real client's address, written into the access log.
    pub client: IpAddr,
    /// When tlsplice accepted the client connection.
    pub start: Micros,
    /// `start` plus the logged duration.
    pub end: Micros,
    /// Timestamp of the log line, which tlsplice writes when the connection closes.
    pub logged: Micros,
}

/// Result of parsing one line of a tlsplice log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConnectionLine {
    Connection(Connection),
    /// A connection line with `local=-`: a UNIX-socket backend or no backend
    /// connection, so no access log line can refer to it.
    WithoutLocal,
    /// A diagnostic line, not a connection line.
    Other,
    /// A connection line that is malformed, with the reason.
    Invalid(&'static str),
}

/// Parses one line of a tlsplice log, without its line ending.
pub fn parse_connection_line(line: &str) -> ConnectionLine {
    let mut words = line.split(' ');
    let (Some(timestamp), Some(_level), Some("conn")) = (words.next(), words.next(), words.next())
    else {
        return ConnectionLine::Other;
    };

    let Some(logged) = parse_rfc3339(timestamp) else {
        return ConnectionLine::Invalid("invalid line timestamp");
    };
    let mut client = None;
    let mut local = None;
    let mut backend = None;
    let mut start = None;
    let mut duration = None;
    for word in words {
        let Some((key, value)) = word.split_once('=') else {
            return ConnectionLine::Invalid("field without `=`");
        };
        match key {
            "client" => client = Some(value),
            "local" => local = Some(value),
            "backend" => backend = Some(value),
            "start" => start = Some(value),
            "duration" => duration = Some(value),
            _ => {}
        }
    }

    let (Some(client), Some(local), Some(start), Some(duration)) = (client, local, start, duration)
    else {
        return ConnectionLine::Invalid("missing client, local, start or duration field");
    };
    if local == "-" {
        return ConnectionLine::WithoutLocal;
    }
    let Ok(client) = client.parse::<SocketAddr>() else {
        return ConnectionLine::Invalid("invalid client address");
    };
    let Ok(local) = local.parse::<SocketAddr>() else {
        return ConnectionLine::Invalid("invalid local address");
    };
    let backend = match backend {
        None | Some("-") => None,
        Some(value) => match value.parse::<SocketAddr>() {
            Ok(address) => Some(canonical(address)),
            Err(_) => return ConnectionLine::Invalid("invalid backend address"),
        },
    };
    let Some(start) = parse_rfc3339(start) else {
        return ConnectionLine::Invalid("invalid start timestamp");
    };
    let Some(duration) = parse_seconds(duration) else {
        return ConnectionLine::Invalid("invalid duration");
    };

    ConnectionLine::Connection(Connection {
        local: canonical(local),
        backend,
        client: client.ip().to_canonical(),
        start: start.micros,
        end: start.micros + duration,
        logged: logged.micros,
    })
}

/// Maps an IPv4-mapped IPv6 address to IPv4, because a dual-stack backend logs
/// `::ffff:127.0.0.1` for the same socket that tlsplice logs as `127.0.0.1`.
pub fn canonical(address: SocketAddr) -> SocketAddr {
    SocketAddr::new(address.ip().to_canonical(), address.port())
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLE: &str = "2026-12-04T20:01:02.345678Z notice conn service=https \
        client=198.51.100.7:51234 local=127.0.0.2:40112 backend=127.0.0.1:8080 \
        start=2026-12-04T20:01:02.300000Z duration=0.045678 tls=TLSv1.3 \
        cipher=TLS13_AES_128_GCM_SHA256 sni=www.example.com alpn=h2 path=userspace \
        up=517 down=20480 reason=done";

    #[test]
    fn connection_line_example() {
        let ConnectionLine::Connection(c) = parse_connection_line(EXAMPLE) else {
            panic!("example line did not parse");
        };
        let start = parse_rfc3339("2026-12-04T20:01:02.300000Z").unwrap().micros;
        assert_eq!(c.local, "127.0.0.2:40112".parse().unwrap());
        assert_eq!(c.backend, Some("127.0.0.1:8080".parse().unwrap()));
        assert_eq!(c.client, "198.51.100.7".parse::<IpAddr>().unwrap());
        assert_eq!(c.start, start);
        assert_eq!(c.end, start + 45_678);
        assert_eq!(c.logged, start + 45_678);
    }

    #[test]
    fn connection_line_ipv6_client() {
        let line = EXAMPLE.replace("198.51.100.7:51234", "[2001:db8::7]:51234");
        let ConnectionLine::Connection(c) = parse_connection_line(&line) else {
            panic!("line did not parse");
        };
        assert_eq!(c.client, "2001:db8::7".parse::<IpAddr>().unwrap());
    }

    #[test]
    fn connection_line_other_kinds() {
        let without_local = EXAMPLE.replace("local=127.0.0.2:40112", "local=-");
        assert_eq!(
            parse_connection_line(&without_local),
            ConnectionLine::WithoutLocal
        );
        assert_eq!(
            parse_connection_line("2026-12-04T20:01:02.345678Z info listening on 0.0.0.0:443"),
            ConnectionLine::Other
        );
        assert_eq!(parse_connection_line(""), ConnectionLine::Other);
        let bad_duration = EXAMPLE.replace("duration=0.045678", "duration=abc");
        assert_eq!(
            parse_connection_line(&bad_duration),
            ConnectionLine::Invalid("invalid duration")
        );
        let bad_local = EXAMPLE.replace("local=127.0.0.2:40112", "local=127.0.0.2");
        assert_eq!(
            parse_connection_line(&bad_local),
            ConnectionLine::Invalid("invalid local address")
        );
    }
}
