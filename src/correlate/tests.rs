//! Join tests on generated logs with known expected output.

use super::time::{format_clf, format_rfc3339, parse_rfc3339, Micros, MICROS_PER_SECOND};
use super::*;
use std::io::{BufReader, Cursor, Read};

const SECOND: Micros = MICROS_PER_SECOND;

/// 2026-12-04T20:00:00Z, the start of every generated log.
fn base() -> Micros {
    parse_rfc3339("2026-12-04T20:00:00Z").unwrap().micros
}

/// Returns a tlsplice connection line, logged when the connection closes.
fn connection_line(
    client: &str,
    local: &str,
    backend: &str,
    start: Micros,
    duration: Micros,
) -> String {
    format!(
        "{} notice conn service=https client={client} local={local} backend={backend} \
         start={} duration={}.{:06} tls=TLSv1.3 cipher=TLS13_AES_128_GCM_SHA256 \
         sni=www.example.com alpn=h2 path=userspace up=517 down=20480 reason=done\n",
        format_rfc3339(start + duration),
        format_rfc3339(start),
        duration / SECOND,
        duration % SECOND
    )
}

/// Returns an access line in the `combined` format with the peer port second.
fn access_line(peer: &str, port: u16, time: Micros, path: &str) -> String {
    format!(
        "{peer} {port} - - [{}] \"GET {path} HTTP/1.1\" 200 512 \"-\" \"curl/8.5.0\"\n",
        format_clf(time, 0)
    )
}

fn options() -> Options {
    Options {
        format: AccessFormat::from_option("combined").unwrap(),
        skew: 2 * SECOND,
        window: 300 * SECOND,
        backend: None,
    }
}

fn reader(name: &str, text: String) -> (String, Box<dyn BufRead>) {
    (name.to_owned(), Box::new(Cursor::new(text.into_bytes())))
}

/// Joins one connection log and one access log given as text.
fn join(options: &Options, connections: &str, access: &str) -> (String, Summary) {
    join_files(
        options,
        vec![reader("tlsplice.log", connections.to_owned())],
        vec![reader("access.log", access.to_owned())],
    )
}

fn join_files(
    options: &Options,
    connections: Vec<(String, Box<dyn BufRead>)>,
    access: Vec<(String, Box<dyn BufRead>)>,
) -> (String, Summary) {
    let mut output = Vec::new();
    let summary = correlate_readers(options, connections, access, &mut output).unwrap();
    (String::from_utf8(output).unwrap(), summary)
}

#[test]
fn match_replaces_only_address() {
    let t = base();
    let connections = connection_line(
        "198.51.100.7:51234",
        "127.0.0.2:40112",
        "127.0.0.1:8080",
        t,
        SECOND / 2,
    );
    let access = access_line("127.0.0.2", 40112, t, "/index.html");

    let (output, summary) = join(&options(), &connections, &access);
    assert_eq!(output, access.replacen("127.0.0.2", "198.51.100.7", 1));
    assert_eq!(summary.access_lines, 1);
    assert_eq!(summary.matched, 1);
    assert_eq!(summary.unmatched, 0);
    assert_eq!(summary.unparsable, 0);
    assert_eq!(summary.connections, 1);
}

#[test]
fn port_reuse_picks_connection_by_time() {
    let t = base();
    let local = "127.0.0.2:40000";
    let mut connections = String::new();
    let mut access = String::new();
    let mut expected = String::new();
    for (i, client) in ["198.51.100.1", "198.51.100.2", "198.51.100.3"]
        .iter()
        .enumerate()
    {
        let start = t + i as Micros * 100 * SECOND;
        connections += &connection_line(
            &format!("{client}:5000"),
            local,
            "127.0.0.1:8080",
            start,
            5 * SECOND,
        );
        let line = access_line("127.0.0.2", 40000, start + 2 * SECOND, "/");
        expected += &line.replacen("127.0.0.2", client, 1);
        access += &line;
    }

    let (output, summary) = join(&options(), &connections, &access);
    assert_eq!(output, expected);
    assert_eq!(summary.matched, 3);
    assert_eq!(summary.ambiguous, 0);
}

#[test]
fn port_reuse_nearest_window_wins() {
    // Two connections on one port, 3 s apart: an access line one second after
    // the first closed is within the skew of both, and the first is nearer.
    let t = base();
    let connections = connection_line(
        "198.51.100.1:5000",
        "127.0.0.2:40000",
        "127.0.0.1:8080",
        t,
        SECOND,
    ) + &connection_line(
        "198.51.100.2:5000",
        "127.0.0.2:40000",
        "127.0.0.1:8080",
        t + 4 * SECOND,
        SECOND,
    );
    let access = access_line("127.0.0.2", 40000, t + 2 * SECOND, "/");

    let (output, summary) = join(&options(), &connections, &access);
    assert!(output.starts_with("198.51.100.1 40000 "), "{output}");
    assert_eq!(summary.matched, 1);
}

#[test]
fn port_reuse_within_one_second_ambiguous() {
    let t = base();
    let connections = connection_line(
        "198.51.100.1:5000",
        "127.0.0.2:40000",
        "127.0.0.1:8080",
        t,
        SECOND / 4,
    ) + &connection_line(
        "198.51.100.2:5000",
        "127.0.0.2:40000",
        "127.0.0.1:8080",
        t + SECOND / 2,
        SECOND / 4,
    );
    let access = access_line("127.0.0.2", 40000, t, "/");

    let (output, summary) = join(&options(), &connections, &access);
    assert_eq!(summary.matched, 1);
    assert_eq!(summary.ambiguous, 1);
    // The logged second [0 s, 1 s) overlaps both, so the nearer midpoint
    // decides: 0.625 s for the second connection against 0.125 s for the first.
    assert!(output.starts_with("198.51.100.2 "), "{output}");
}

#[test]
fn clock_skew_within_limit_matches() {
    // The backend's clock runs 1.5 s ahead of tlsplice's.
    let t = base() + 10 * SECOND;
    let connections = connection_line(
        "198.51.100.7:5000",
        "127.0.0.2:40000",
        "127.0.0.1:8080",
        t,
        SECOND / 5,
    );
    let access = access_line("127.0.0.2", 40000, t + SECOND * 3 / 2, "/");

    let (output, summary) = join(&options(), &connections, &access);
    assert!(output.starts_with("198.51.100.7 "), "{output}");
    assert_eq!(summary.matched, 1);

    let no_skew = Options {
        skew: 0,
        ..options()
    };
    let (output, summary) = join(&no_skew, &connections, &access);
    assert!(output.ends_with(" tlsplice=unmatched\n"), "{output}");
    assert_eq!(summary.unmatched, 1);
}

#[test]
fn clf_offset_converted_to_utc() {
    let t = base();
    let connections = connection_line(
        "198.51.100.7:5000",
        "127.0.0.2:40000",
        "127.0.0.1:8080",
        t,
        SECOND,
    );
    let access = format!(
        "127.0.0.2 40000 - - [{}] \"GET / HTTP/1.1\" 200 1\n",
        format_clf(t, -7 * 60)
    );
    let (_, summary) = join(&options(), &connections, &access);
    assert_eq!(summary.matched, 1);
}

#[test]
fn out_of_order_lines_match() {
    let t = base();
    let mut connection_lines = Vec::new();
    let mut access_lines = Vec::new();
    for i in 0..200u16 {
        let start = t + Micros::from(i) * SECOND / 2;
        let client = format!("198.51.100.{}", i % 250 + 1);
        connection_lines.push(connection_line(
            &format!("{client}:5000"),
            &format!("127.0.0.2:{}", 40000 + i),
            "127.0.0.1:8080",
            start,
            SECOND / 10,
        ));
        access_lines.push((
            client,
            access_line("127.0.0.2", 40000 + i, start, &format!("/{i}")),
        ));
    }
    // Reverse blocks of 20 lines (10 s of traffic), well within the window.
    for block in connection_lines.chunks_mut(20) {
        block.reverse();
    }
    for block in access_lines.chunks_mut(20) {
        block.reverse();
    }

    let access: String = access_lines.iter().map(|(_, line)| line.as_str()).collect();
    let expected: String = access_lines
        .iter()
        .map(|(client, line)| line.replacen("127.0.0.2", client, 1))
        .collect();
    let (output, summary) = join(&options(), &connection_lines.concat(), &access);
    assert_eq!(summary.matched, 200);
    assert_eq!(summary.late, 0);
    assert_eq!(output, expected);
}

#[test]
fn rotated_logs_in_any_order() {
    let t = base();
    let mut connections = [String::new(), String::new()];
    let mut access = [String::new(), String::new()];
    let mut expected = String::new();
    for i in 0..100u16 {
        let start = t + Micros::from(i) * SECOND;
        let client = format!("203.0.113.{}", i + 1);
        let half = usize::from(i >= 50);
        connections[half] += &connection_line(
            &format!("{client}:6000"),
            &format!("127.0.0.2:{}", 41000 + i % 7),
            "127.0.0.1:8080",
            start,
            SECOND / 2,
        );
        let line = access_line("127.0.0.2", 41000 + i % 7, start, "/");
        expected += &line.replacen("127.0.0.2", &client, 1);
        access[half] += &line;
    }

    // Newer file first, as `ls` would list `access.log` before `access.log.1`.
    let (output, summary) = join_files(
        &options(),
        vec![
            reader("tlsplice.log", connections[1].clone()),
            reader("tlsplice.log.1", connections[0].clone()),
        ],
        vec![
            reader("access.log", access[1].clone()),
            reader("access.log.1", access[0].clone()),
        ],
    );
    assert_eq!(summary.matched, 100);
    assert_eq!(output, expected);
}

#[test]
fn unmatched_line_marked() {
    let t = base();
    let connections = connection_line(
        "198.51.100.7:5000",
        "127.0.0.2:40000",
        "127.0.0.1:8080",
        t,
        SECOND,
    );
    let access = access_line("127.0.0.2", 40001, t, "/");

    let (output, summary) = join(&options(), &connections, &access);
    assert_eq!(output, access.replace('\n', " tlsplice=unmatched\n"));
    assert_eq!(summary.unmatched, 1);
    assert_eq!(summary.matched, 0);
}

#[test]
fn line_endings_kept() {
    let t = base();
    let connections = connection_line(
        "198.51.100.7:5000",
        "127.0.0.2:40000",
        "127.0.0.1:8080",
        t,
        SECOND,
    );
    let matched = access_line("127.0.0.2", 40000, t, "/").replace('\n', "\r\n");
    let unmatched = access_line("127.0.0.2", 40009, t, "/").replace('\n', "\r\n");
    // The last line has no line ending at all.
    let last = access_line("127.0.0.2", 40000, t, "/last").replace('\n', "");
    let access = format!("{matched}{unmatched}{last}");

    let (output, _) = join(&options(), &connections, &access);
    let expected = format!(
        "{}{}{}",
        matched.replacen("127.0.0.2", "198.51.100.7", 1),
        unmatched.replace("\r\n", " tlsplice=unmatched\r\n"),
        last.replacen("127.0.0.2", "198.51.100.7", 1)
    );
    assert_eq!(output, expected);
}

#[test]
fn unparsable_lines_copied_and_counted() {
    let t = base();
    let connections = connection_line(
        "198.51.100.7:5000",
        "127.0.0.2:40000",
        "127.0.0.1:8080",
        t,
        SECOND,
    ) + "2026-12-04T20:00:00.000000Z notice conn client=broken\n"
        + "2026-12-04T20:00:00.000000Z info listening on 0.0.0.0:443\n";
    let good = access_line("127.0.0.2", 40000, t, "/");
    let access = format!("{good}not an access line\n\n{good}");

    let (output, summary) = join(&options(), &connections, &access);
    let rewritten = good.replacen("127.0.0.2", "198.51.100.7", 1);
    assert_eq!(
        output,
        format!("{rewritten}not an access line\n\n{rewritten}")
    );
    assert_eq!(summary.access_lines, 4);
    assert_eq!(summary.matched, 2);
    assert_eq!(summary.unparsable, 2);
    assert_eq!(summary.first_unparsable.as_deref(), Some("access.log:2"));
    assert_eq!(summary.invalid_connection_lines, 1);
    assert_eq!(
        summary.first_invalid_connection_line.as_deref(),
        Some("tlsplice.log:2: missing client, local, start or duration field")
    );
}

#[test]
fn backend_filter_separates_shared_port() {
    // One local port open to two backends at the same time.
    let t = base();
    let connections = connection_line(
        "198.51.100.1:5000",
        "127.0.0.2:40000",
        "127.0.0.1:8080",
        t,
        SECOND,
    ) + &connection_line(
        "198.51.100.2:5000",
        "127.0.0.2:40000",
        "127.0.0.1:9090",
        t,
        SECOND,
    );
    let access = access_line("127.0.0.2", 40000, t, "/");

    let filtered = Options {
        backend: Some("127.0.0.1:9090".parse().unwrap()),
        ..options()
    };
    let (output, summary) = join(&filtered, &connections, &access);
    assert!(output.starts_with("198.51.100.2 "), "{output}");
    assert_eq!(summary.connections, 1);
}

#[test]
fn ipv6_local_and_client() {
    let t = base();
    let connections = connection_line("[2001:db8::7]:5000", "[::1]:40000", "[::1]:8080", t, SECOND);
    let access = access_line("::1", 40000, t, "/");

    let (output, summary) = join(&options(), &connections, &access);
    assert_eq!(output, access.replacen("::1", "2001:db8::7", 1));
    assert_eq!(summary.matched, 1);
}

#[test]
fn mapped_ipv4_peer_matches() {
    // A dual-stack backend logs the IPv4 peer in its IPv6-mapped form.
    let t = base();
    let connections = connection_line(
        "198.51.100.7:5000",
        "127.0.0.2:40000",
        "127.0.0.1:8080",
        t,
        SECOND,
    );
    let access = access_line("::ffff:127.0.0.2", 40000, t, "/");

    let (output, _) = join(&options(), &connections, &access);
    assert_eq!(
        output,
        access.replacen("::ffff:127.0.0.2", "198.51.100.7", 1)
    );
}

#[test]
fn invalid_options_rejected() {
    let args = CorrelateArgs {
        connections: vec!["c".into()],
        access_logs: vec!["a".into()],
        format: "combined".into(),
        skew: -1.0,
        window: 300.0,
        backend: None,
        output: None,
    };
    let error = Options::from_args(&args).unwrap_err();
    assert_eq!(
        error.to_string(),
        "invalid --skew `-1`: expected a number of seconds from 0 to 31536000"
    );

    let args = CorrelateArgs {
        skew: 2.0,
        format: "{addr} {port}".into(),
        ..args
    };
    let error = Options::from_args(&args).unwrap_err();
    assert!(
        error
            .to_string()
            .starts_with("invalid --format `{addr} {port}`: "),
        "{error}"
    );
}

/// A log generated line by line on demand, so a large test does not hold the
/// whole text in memory.
struct GeneratedLog<F: FnMut(usize) -> String> {
    generate: F,
    next_line: usize,
    line_count: usize,
    pending: Cursor<Vec<u8>>,
}

impl<F: FnMut(usize) -> String> GeneratedLog<F> {
    fn new(line_count: usize, generate: F) -> GeneratedLog<F> {
        GeneratedLog {
            generate,
            next_line: 0,
            line_count,
            pending: Cursor::new(Vec::new()),
        }
    }
}

impl<F: FnMut(usize) -> String> Read for GeneratedLog<F> {
    fn read(&mut self, buffer: &mut [u8]) -> io::Result<usize> {
        if self.pending.position() as usize == self.pending.get_ref().len() {
            if self.next_line == self.line_count {
                return Ok(0);
            }
            let line = (self.generate)(self.next_line);
            self.next_line += 1;
            self.pending = Cursor::new(line.into_bytes());
        }
        self.pending.read(buffer)
    }
}

#[test]
fn large_log_index_stays_bounded() {
    // 200 000 connections at 50 per second over 4 000 s, each with one request,
    // on 1 000 local ports reused every 20 s. With a 60 s window the index must
    // hold only the connections around the current time, not all of them.
    const CONNECTIONS: usize = 200_000;
    const PER_SECOND: usize = 50;
    const PORTS: usize = 1_000;
    let t = base();
    let start_of = move |i: usize| t + (i as Micros) * SECOND / PER_SECOND as Micros;
    let client_of = |i: usize| format!("10.{}.{}.{}", i / 65536 % 256, i / 256 % 256, i % 256);

    let connections = GeneratedLog::new(CONNECTIONS, move |i| {
        connection_line(
            &format!("{}:5000", client_of(i)),
            &format!("127.0.0.2:{}", 30000 + i % PORTS),
            "127.0.0.1:8080",
            start_of(i),
            SECOND / 4,
        )
    });
    let access = GeneratedLog::new(CONNECTIONS, move |i| {
        access_line("127.0.0.2", (30000 + i % PORTS) as u16, start_of(i), "/")
    });

    let window = 60;
    let skew = 2;
    let options = Options {
        window: window * SECOND,
        skew: skew * SECOND,
        ..options()
    };
    let mut output = io::sink();
    let summary = correlate_readers(
        &options,
        vec![("tlsplice.log".into(), Box::new(BufReader::new(connections)))],
        vec![("access.log".into(), Box::new(BufReader::new(access)))],
        &mut output,
    )
    .unwrap();

    assert_eq!(summary.access_lines, CONNECTIONS as u64);
    assert_eq!(summary.matched, CONNECTIONS as u64);
    assert_eq!(summary.connections, CONNECTIONS as u64);
    // Connections that closed within window + skew behind and ahead of the
    // current access time, plus the one-second resolution of the access times
    // and the one line read past the read-ahead horizon.
    let bound = PER_SECOND * (2 * (window + skew) as usize + 2) + 1;
    assert!(
        summary.peak_index_len <= bound,
        "peak index length {} exceeds the bound {bound}",
        summary.peak_index_len
    );
    assert!(summary.peak_index_len > 0);
}

/// A temporary directory for one test, removed when dropped.
struct TempDir(std::path::PathBuf);

impl TempDir {
    fn new(name: &str) -> TempDir {
        let path =
            std::env::temp_dir().join(format!("tlsplice-correlate-{}-{name}", std::process::id()));
        std::fs::create_dir_all(&path).unwrap();
        TempDir(path)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[test]
fn run_reads_files_and_gzip() {
    use flate2::write::GzEncoder;

    let dir = TempDir::new("run");
    let t = base();
    let old = connection_line(
        "198.51.100.1:5000",
        "127.0.0.2:40000",
        "127.0.0.1:8080",
        t,
        SECOND,
    );
    let new = connection_line(
        "198.51.100.2:5000",
        "127.0.0.2:40000",
        "127.0.0.1:8080",
        t + 60 * SECOND,
        SECOND,
    );
    let mut encoder = GzEncoder::new(Vec::new(), flate2::Compression::fast());
    encoder.write_all(old.as_bytes()).unwrap();
    std::fs::write(dir.0.join("tlsplice.log.1.gz"), encoder.finish().unwrap()).unwrap();
    std::fs::write(dir.0.join("tlsplice.log"), new).unwrap();
    let access = access_line("127.0.0.2", 40000, t, "/a")
        + &access_line("127.0.0.2", 40000, t + 60 * SECOND, "/b");
    std::fs::write(dir.0.join("access.log"), &access).unwrap();

    let args = CorrelateArgs {
        connections: vec![dir.0.join("tlsplice.log"), dir.0.join("tlsplice.log.1.gz")],
        access_logs: vec![dir.0.join("access.log")],
        format: "combined".into(),
        skew: 2.0,
        window: 300.0,
        backend: None,
        output: Some(dir.0.join("out.log")),
    };
    let summary = run(&args).unwrap();
    assert_eq!(summary.matched, 2);

    let output = std::fs::read_to_string(dir.0.join("out.log")).unwrap();
    let lines: Vec<&str> = output.lines().collect();
    assert_eq!(lines.len(), 2);
    assert!(lines[0].starts_with("198.51.100.1 40000 "), "{output}");
    assert!(lines[1].starts_with("198.51.100.2 40000 "), "{output}");
}

#[test]
fn run_reports_missing_file() {
    let args = CorrelateArgs {
        connections: vec!["/nonexistent/tlsplice.log".into()],
        access_logs: vec!["/nonexistent/access.log".into()],
        format: "combined".into(),
        skew: 2.0,
        window: 300.0,
        backend: None,
        output: None,
    };
    let error = run(&args).unwrap_err();
    assert!(
        error
            .to_string()
            .starts_with("failed to read /nonexistent/tlsplice.log: "),
        "{error}"
    );
}

#[test]
fn args_parse_from_command_line() {
    use clap::Parser;

    #[derive(Parser)]
    struct Command {
        #[command(flatten)]
        args: CorrelateArgs,
    }

    let command = Command::try_parse_from([
        "correlate",
        "--connections",
        "tlsplice.log",
        "--connections",
        "tlsplice.log.1.gz",
        "--access-log",
        "access.log",
        "--format",
        "nginx",
        "--skew",
        "0.5",
        "--backend",
        "127.0.0.1:8080",
    ])
    .unwrap();
    let args = command.args;
    assert_eq!(args.connections.len(), 2);
    assert_eq!(
        args.access_logs,
        vec![std::path::PathBuf::from("access.log")]
    );
    assert_eq!(args.format, "nginx");
    assert_eq!(args.skew, 0.5);
    assert_eq!(args.window, 300.0);
    assert_eq!(args.backend, Some("127.0.0.1:8080".parse().unwrap()));
    assert_eq!(args.output, None);

    let missing_access_log = Command::try_parse_from(["correlate", "--connections", "c"]);
    assert!(missing_access_log.is_err());
}
