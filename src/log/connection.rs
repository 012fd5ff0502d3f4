use std::fmt::{self, Write as _};
use std::net::SocketAddr;
use std::time::{Duration, SystemTime};

use super::{format_rfc3339, CloseReason};
use crate::config::LogLevel;

/// Fields of the log line of a finished connection.
#[derive(Debug, Clone)]
pub struct ConnectionRecord<'a> {
    pub service: &'a str,
    /// `None` for clients of a UNIX-socket listener.
    pub client: Option<SocketAddr>,
    /// Source address of the backend connection: the peer address the backend logs.
    pub local: Option<SocketAddr>,
    pub backend: Option<&'a crate::config::Address>,
    pub start: SystemTime,
    pub duration: Duration,
    pub tls_version: Option<&'a str>,
    pub cipher: Option<&'a str>,
    pub sni: Option<&'a str>,
    pub alpn: Option<&'a [u8]>,
    pub path: &'a str,
    /// Plaintext bytes from the client to the backend.
    pub up: u64,
    /// Plaintext bytes from the backend to the client.
    pub down: u64,
    pub reason: CloseReason,
}

impl fmt::Display for ConnectionRecord<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "conn service={} client=", self.service)?;
        match self.client {
            Some(client) => write!(f, "{client}")?,
            None => f.write_str("-")?,
        }
        f.write_str(" local=")?;
        match self.local {
            Some(local) => write!(f, "{local}")?,
            None => f.write_str("-")?,
        }
        f.write_str(" backend=")?;
        match self.backend {
            Some(crate::config::Address::Inet(addr)) => write!(f, "{addr}")?,
            Some(crate::config::Address::Unix(path)) => write_token(f, &path.to_string_lossy())?,
            None => f.write_str("-")?,
        }
        write!(
            f,
            " start={} duration={}.{:06} tls={} cipher={} sni=",
            format_rfc3339(self.start),
            self.duration.as_secs(),
            self.duration.subsec_micros(),
            self.tls_version.unwrap_or("-"),
            self.cipher.unwrap_or("-"),
        )?;
        write_token(f, self.sni.unwrap_or("-"))?;
        f.write_str(" alpn=")?;
        match self.alpn {
            Some(alpn) => write_token(f, &String::from_utf8_lossy(alpn))?,
            None => f.write_str("-")?,
        }
        write!(
            f,
            " path={} up={} down={} reason={}",
            self.path, self.up, self.down, self.reason
        )
    }
}

/// Writes `value` with every byte outside printable ASCII, and space, `%` and
/// `=`, escaped as `%XX`, so a field never contains a space.
fn write_token(f: &mut fmt::Formatter<'_>, value: &str) -> fmt::Result {
    if value.is_empty() {
        return f.write_str("-");
    }
    for byte in value.bytes() {
        if byte.is_ascii_graphic() && byte != b'%' && byte != b'=' {
            f.write_char(byte as char)?;
        } else {
            write!(f, "%{byte:02X}")?;
        }
    }
    Ok(())
}

impl ConnectionRecord<'_> {
    /// Writes the record's line at `notice`.
    pub fn log(&self) {
        super::write(LogLevel::Notice, format_args!("{self}"));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::UNIX_EPOCH;

    #[test]
    fn connection_line_format() {
        let backend = crate::config::Address::Inet("127.0.0.1:8080".parse().unwrap());
        let record = ConnectionRecord {
            service: "https",
            client: Some("[::1]:5000".parse().unwrap()),
            local: Some("127.0.0.2:40112".parse().unwrap()),
            backend: Some(&backend),
            start: UNIX_EPOCH + Duration::from_secs(1_796_414_462),
            duration: Duration::from_micros(45_678),
            tls_version: Some("TLSv1.3"),
            cipher: Some("TLS13_AES_128_GCM_SHA256"),
            sni: Some("odd name=%"),
            alpn: Some(b"h2"),
            path: "userspace",
            up: 517,
            down: 20480,
            reason: CloseReason::Done,
        };
        assert_eq!(
            record.to_string(),
            "conn service=https client=[::1]:5000 local=127.0.0.2:40112 backend=127.0.0.1:8080 \
             start=2026-12-04T20:01:02.000000Z duration=0.045678 tls=TLSv1.3 \
             cipher=TLS13_AES_128_GCM_SHA256 sni=odd%20name%3D%25 alpn=h2 path=userspace \
             up=517 down=20480 reason=done"
        );
    }
}
