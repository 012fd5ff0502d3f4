//! Checks between global options that are valid one by one but cannot work
//! together: two options that name the same file, and a `stats` listener on a
//! service's address.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Component, Path, PathBuf};

use super::{Address, ConfigError, Global, Origin};

/// A service's `accept` address and where it was written.
pub(super) struct AcceptOrigin<'a> {
    pub service: &'a str,
    pub address: &'a Address,
    pub origin: Origin,
}

/// Rejects `output`, `histogram_log` and `pid` when two of them name the same
/// file, because each writer truncates or overwrites what the other wrote.
/// `origins` maps each global option written in the file to its location.
pub(super) fn check_file_paths(
    global: &Global,
    origins: &HashMap<&'static str, Origin>,
) -> Result<(), ConfigError> {
    // The pid file is written inside the chroot, while the log and the
    // histogram log are opened before it, so compare the pid file's path as
    // seen from outside the jail.
    let pid_outside = global.pid_outside_jail();
    let files = [
        ("output", global.output.clone()),
        ("histogram_log", global.histogram_log.clone()),
        ("pid", pid_outside),
    ];

    for (index, (first, first_path)) in files.iter().enumerate() {
        let Some(first_path) = first_path else {
            continue;
        };
        for (second, second_path) in &files[index + 1..] {
            if second_path
                .as_ref()
                .is_none_or(|path| normalize(path) != normalize(first_path))
            {
                continue;
            }
            // Report the option written last, and name the earlier one.
            let line = |option: &str| origins.get(option).map_or(0, |origin| origin.line);
            let (earlier, later) = if line(first) <= line(second) {
                (*first, *second)
            } else {
                (*second, *first)
            };
            let origin = origins.get(later).cloned().unwrap_or_default();
            return Err(ConfigError {
                file: origin.file,
                line: origin.line,
                option: Some(later.to_string()),
                value: Some(written_value(global, later)),
                message: format!(
                    "`{earlier}` on line {} names the same file {}; use different files for {first} and {second}",
                    line(earlier),
                    first_path.display()
                ),
            });
        }
    }
    Ok(())
}

/// Returns the value of a file option as the configuration wrote it.
fn written_value(global: &Global, option: &str) -> String {
    let path = match option {
        "output" => &global.output,
        "histogram_log" => &global.histogram_log,
        _ => &global.pid,
    };
    path.as_ref()
        .map(|path| path.display().to_string())
        .unwrap_or_default()
}

/// Drops `.` components, so that `./t.log` and `t.log` compare equal. Path
/// equality already ignores repeated and trailing slashes and a `.` inside the
/// path, but not a leading `.`.
// NOTE: `..`, symbolic links and a relative path against an absolute one are not
// resolved, so such spellings of one file still pass.
fn normalize(path: &Path) -> PathBuf {
    path.components()
        .filter(|component| *component != Component::CurDir)
        .collect()
}

/// Rejects a `stats` address that a service's `accept` also binds: the same
/// port on the same address, or on a wildcard address that covers it. The
/// second bind at start would fail and blame the service.
pub(super) fn check_stats_address(
    global: &Global,
    stats_origin: Option<&Origin>,
    accepts: &[AcceptOrigin],
) -> Result<(), ConfigError> {
    let Some(stats) = global.stats else {
        return Ok(());
    };
    for accept in accepts {
        let Address::Inet(address) = accept.address else {
            continue;
        };
        if !listeners_overlap(stats, *address) {
            continue;
        }
        let origin = stats_origin.cloned().unwrap_or_default();
        return Err(ConfigError {
            file: origin.file,
            line: origin.line,
            option: Some("stats".to_string()),
            value: Some(stats.to_string()),
            message: format!(
                "service [{}] has `accept = {address}` on line {} on the same port; give stats and accept different ports or addresses",
                accept.service, accept.origin.line
            ),
        });
    }
    Ok(())
}

/// Reports whether two TCP listeners would take the same port on one address.
/// A port of 0 is picked by the kernel and never collides. An IPv6 wildcard
/// covers IPv4 too, because service listeners bind `[::]` with IPV6_V6ONLY off
/// (the stats listener has the system default, off unless net.ipv6.bindv6only=1).
fn listeners_overlap(first: SocketAddr, second: SocketAddr) -> bool {
    if first.port() == 0 || first.port() != second.port() {
        return false;
    }
    let covers = |wildcard: SocketAddr, other: SocketAddr| {
        wildcard.ip().is_unspecified() && (wildcard.is_ipv6() || other.is_ipv4())
    };
    first.ip() == second.ip() || covers(first, second) || covers(second, first)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn overlap(first: &str, second: &str) -> bool {
        listeners_overlap(first.parse().unwrap(), second.parse().unwrap())
    }

    #[test]
    fn listeners_overlap_cases() {
        assert!(overlap("127.0.0.1:9100", "127.0.0.1:9100"));
        assert!(overlap("127.0.0.1:9100", "0.0.0.0:9100"));
        assert!(overlap("0.0.0.0:9100", "127.0.0.1:9100"));
        assert!(overlap("127.0.0.1:9100", "[::]:9100"));
        assert!(overlap("[::1]:9100", "[::]:9100"));
        assert!(overlap("[::]:9100", "0.0.0.0:9100"));

        assert!(!overlap("127.0.0.1:9100", "127.0.0.1:9101"));
        assert!(!overlap("127.0.0.1:9100", "127.0.0.2:9100"));
        assert!(!overlap("[::1]:9100", "0.0.0.0:9100"));
        assert!(!overlap("127.0.0.1:0", "127.0.0.1:0"));
    }

    #[test]
    fn normalize_spellings_of_one_path() {
        assert_eq!(
            normalize(Path::new("/var/log/./t.log")),
            normalize(Path::new("/var//log/t.log"))
        );
        assert_ne!(
            normalize(Path::new("/var/log/t.log")),
            normalize(Path::new("/var/log/t.hlog"))
        );
        assert_ne!(Path::new("./t.log"), Path::new("t.log"));
        assert_eq!(
            normalize(Path::new("./t.log")),
            normalize(Path::new("t.log"))
        );
    }
}
