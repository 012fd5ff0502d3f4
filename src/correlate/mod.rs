//! `tlsplice correlate`: rewrites a backend's access log with the real client
//! addresses, by joining it with tlsplice's connection log.
//!
//! Behind tlsplice, a backend logs tlsplice's own socket as the peer of every
//! request. If the backend also logs the peer port, that address and port are
//! the `local=` field of one tlsplice connection line, and that line's
//! `client=` field is the real client. Ports are reused, so a line is joined to
//! the connection whose `local` matches and whose lifetime `[start, start +
//! duration]`, widened by `--skew` on both sides for clock differences,
//! overlaps the access line's time. When several do, the nearest wins.
//!
//! # Bounded memory: a windowed join without sorting
//!
//! Both logs are read as streams, each merged from its files by time
//! (`input::Merge`), and only connections that an access line may still refer
//! to are kept in an index keyed by local address (`index::Index`). For each access line with time `t`:
//!
//! 1. Connection lines are read until one was logged after
//!    `t + resolution + skew + window`. tlsplice logs a connection when it
//!    closes, so every connection that closed before the access line has been
//!    read, provided the connection log is out of order by less than `window`.
//! 2. Connections that ended before `newest - window - skew` are evicted, where
//!    `newest` is the latest access time seen. An access line may be older than
//!    `newest` by at most `window`, so these connections can match no later line.
//! 3. The line is matched against the index and written out at once.
//!
//! The index therefore contains the connections that closed within about
//! `2 × (window + skew)` of the current access time, plus those read early
//! because the connection log was out of order. Memory grows with the
//! connection rate times the window, not with the size of the logs.
//!
//! The window bounds three things, documented for `--window`: how far each log
//! may be out of time order, and how long after an access line its connection
//! may close. A connection that closed more than `window` after its request
//! (a long-lived keep-alive or WebSocket connection) is found only if it was
//! already read, so such lines may come out unmatched. A larger window fixes
//! that at the cost of memory.
//!
//! # Output
//!
//! Each access line is written in input order (merged by time when there are
//! several access files). A matched line has its address text replaced by the
//! client's IP address and is otherwise unchanged byte for byte. An unmatched
//! line is kept and gets [`UNMATCHED_MARKER`] appended before its line ending.
//! A line that does not match the format is copied unchanged.

mod access_format;
mod connection_log;
mod index;
mod input;
#[cfg(test)]
mod tests;
pub mod time;

pub use access_format::{AccessFormat, AccessLine, APACHE_TEMPLATE, NGINX_TEMPLATE};
pub use connection_log::{parse_connection_line, Connection, ConnectionLine};

use connection_log::canonical;
use index::Index;
use input::{split_line_ending, Keyed, LineSource, Merge};
use std::fmt;
use std::fs::File;
use std::io::{self, BufRead, BufWriter, Write};
use std::net::SocketAddr;
use std::path::PathBuf;
use time::{Micros, MICROS_PER_SECOND};

/// Text appended to an access line that no connection matched. A space-separated
/// `key=value` word at the end of the line, which Apache and nginx log parsers
/// that match from the start of the line ignore, and which `grep` finds.
pub const UNMATCHED_MARKER: &str = " tlsplice=unmatched";

/// Command-line arguments of `tlsplice correlate`.
#[derive(Debug, Clone, clap::Args)]
pub struct CorrelateArgs {
    /// tlsplice log file with connection lines. Repeat for rotated files, in any
    /// order. Gzip files are read too.
    #[arg(long = "connections", value_name = "TLSPLICE_LOG", required = true)]
    pub connections: Vec<PathBuf>,

    /// Backend access log to rewrite. Repeat for rotated files, in any order.
    /// `-` reads standard input. Gzip files are read too.
    #[arg(long = "access-log", value_name = "ACCESS_LOG", required = true)]
    pub access_logs: Vec<PathBuf>,

    /// Access log format: `combined`, `common`, `nginx`, or a template with
    /// {addr}, {port}, and one of {clf}, {iso} or {epoch} (see docs/correlate.md).
    #[arg(long, value_name = "FORMAT", default_value = "combined")]
    pub format: String,

    /// Maximum clock difference between the two logs, in seconds.
    #[arg(long, value_name = "SECONDS", default_value_t = 2.0)]
    pub skew: f64,

    /// Maximum time, in seconds, that each log may be out of order, and within
    /// which a connection must close after its request to be matched for sure.
    /// Memory use grows with it.
    #[arg(long, value_name = "SECONDS", default_value_t = 300.0)]
    pub window: f64,

    /// Use only connections to this backend address, for when tlsplice serves
    /// several backends and the same local port may be open to two of them at once.
    #[arg(long, value_name = "IP:PORT")]
    pub backend: Option<SocketAddr>,

    /// Write the rewritten access log to this file instead of standard output.
    #[arg(long, value_name = "FILE")]
    pub output: Option<PathBuf>,
}

/// Validated settings of a join.
#[derive(Debug, Clone)]
pub struct Options {
    pub format: AccessFormat,
    pub skew: Micros,
    pub window: Micros,
    pub backend: Option<SocketAddr>,
}

impl Options {
    /// Validates command-line arguments into options.
    pub fn from_args(args: &CorrelateArgs) -> Result<Options, CorrelateError> {
        let format = AccessFormat::from_option(&args.format).map_err(|reason| {
            CorrelateError::InvalidOption {
                option: "--format",
                value: args.format.clone(),
                reason,
            }
        })?;
        Ok(Options {
            format,
            skew: seconds_option("--skew", args.skew)?,
            window: seconds_option("--window", args.window)?,
            backend: args.backend.map(canonical),
        })
    }
}

fn seconds_option(option: &'static str, seconds: f64) -> Result<Micros, CorrelateError> {
    // One year is far beyond any useful value and keeps the arithmetic in range.
    if !(0.0..=31_536_000.0).contains(&seconds) {
        return Err(CorrelateError::InvalidOption {
            option,
            value: seconds.to_string(),
            reason: "expected a number of seconds from 0 to 31536000".to_owned(),
        });
    }
    Ok((seconds * MICROS_PER_SECOND as f64).round() as Micros)
}

/// A failure that stops the join.
#[derive(Debug)]
#[non_exhaustive]
pub enum CorrelateError {
    InvalidOption {
        option: &'static str,
        value: String,
        reason: String,
    },
    /// An input file could not be opened or read.
    Input { path: String, source: io::Error },
    /// The output could not be written.
    Output { path: String, source: io::Error },
}

impl fmt::Display for CorrelateError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CorrelateError::InvalidOption {
                option,
                value,
                reason,
            } => write!(f, "invalid {option} `{value}`: {reason}"),
            CorrelateError::Input { path, source } => {
                write!(f, "failed to read {path}: {source}")
            }
            CorrelateError::Output { path, source } => {
                write!(f, "failed to write {path}: {source}")
            }
        }
    }
}

impl std::error::Error for CorrelateError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            CorrelateError::InvalidOption { .. } => None,
            CorrelateError::Input { source, .. } | CorrelateError::Output { source, .. } => {
                Some(source)
            }
        }
    }
}

/// Counts of one join, printed on standard error by [`run`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Summary {
    pub access_lines: u64,
    pub matched: u64,
    pub unmatched: u64,
    /// Access lines that do not match the format, copied unchanged.
    pub unparsable: u64,
    /// `file:line` of the first unparsable access line.
    pub first_unparsable: Option<String>,
    /// Matched lines where another connection with a different client was just
    /// as near, typically a port reused within the access log's time resolution.
    pub ambiguous: u64,
    /// Access lines older than the newest one by more than the window, for which
    /// connections may already have been evicted.
    pub late: u64,
    /// Connection lines with a local address that passed the `--backend` filter.
    pub connections: u64,
    /// Malformed connection lines, skipped.
    pub invalid_connection_lines: u64,
    /// `file:line: reason` of the first malformed connection line.
    pub first_invalid_connection_line: Option<String>,
    /// Largest number of connections held in memory at once.
    pub peak_index_len: usize,
}

impl fmt::Display for Summary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "correlate: {} access lines: {} matched, {} unmatched, {} unparsable",
            self.access_lines, self.matched, self.unmatched, self.unparsable
        )?;
        if let Some(first) = &self.first_unparsable {
            write!(f, " (first at {first})")?;
        }
        write!(
            f,
            "; {} connections read, {} invalid connection lines",
            self.connections, self.invalid_connection_lines
        )?;
        if let Some(first) = &self.first_invalid_connection_line {
            write!(f, " (first at {first})")?;
        }
        if self.ambiguous > 0 {
            write!(
                f,
                "; {} matches had an equally near connection from another client",
                self.ambiguous
            )?;
        }
        if self.late > 0 {
            write!(
                f,
                "; {} access lines were out of order by more than --window",
                self.late
            )?;
        }
        write!(f, "; at most {} connections in memory", self.peak_index_len)
    }
}

/// Runs `tlsplice correlate`: opens the files, joins them, writes the output,
/// and prints the summary on standard error.
pub fn run(args: &CorrelateArgs) -> Result<Summary, CorrelateError> {
    let options = Options::from_args(args)?;
    let connections = args
        .connections
        .iter()
        .map(|path| LineSource::open(path))
        .collect::<Result<Vec<_>, _>>()?;
    let access_logs = args
        .access_logs
        .iter()
        .map(|path| LineSource::open(path))
        .collect::<Result<Vec<_>, _>>()?;

    let (output_name, output): (String, Box<dyn Write>) = match &args.output {
        Some(path) => {
            let file = File::create(path).map_err(|source| CorrelateError::Output {
                path: path.display().to_string(),
                source,
            })?;
            (path.display().to_string(), Box::new(file))
        }
        None => ("standard output".to_owned(), Box::new(io::stdout().lock())),
    };
    let mut output = BufWriter::new(output);

    let summary = correlate(
        &options,
        connections,
        access_logs,
        &mut output,
        &output_name,
    )?;
    output.flush().map_err(|source| CorrelateError::Output {
        path: output_name,
        source,
    })?;
    eprintln!("{summary}");
    Ok(summary)
}

/// Joins in-memory or other readers, for tests and callers that are not the
/// command line. Each pair is a name for messages and a reader.
pub fn correlate_readers(
    options: &Options,
    connections: Vec<(String, Box<dyn BufRead>)>,
    access_logs: Vec<(String, Box<dyn BufRead>)>,
    output: &mut dyn Write,
) -> Result<Summary, CorrelateError> {
    let to_sources = |readers: Vec<(String, Box<dyn BufRead>)>| {
        readers
            .into_iter()
            .map(|(name, reader)| LineSource::new(name, reader))
            .collect()
    };
    correlate(
        options,
        to_sources(connections),
        to_sources(access_logs),
        output,
        "output",
    )
}

/// A connection log file and what was skipped in it.
struct ConnectionSource {
    lines: LineSource,
    line: Vec<u8>,
    invalid: u64,
    first_invalid: Option<String>,
}

/// Reads the next usable connection from one file, keyed by its log time.
fn next_connection(
    source: &mut ConnectionSource,
) -> Result<Option<Keyed<Connection>>, CorrelateError> {
    while source.lines.read_line(&mut source.line)? {
        let (content, _) = split_line_ending(&source.line);
        let Ok(text) = std::str::from_utf8(content) else {
            // tlsplice writes ASCII, so other bytes mean another file or damage.
            continue;
        };
        match parse_connection_line(text) {
            ConnectionLine::Connection(connection) => {
                return Ok(Some(Keyed {
                    key: connection.logged,
                    item: connection,
                }))
            }
            ConnectionLine::Invalid(reason) => {
                source.invalid += 1;
                if source.first_invalid.is_none() {
                    source.first_invalid = Some(format!(
                        "{}:{}: {reason}",
                        source.lines.name, source.lines.line_number
                    ));
                }
            }
            ConnectionLine::WithoutLocal | ConnectionLine::Other => {}
        }
    }
    Ok(None)
}

/// An access log file and the time of its last parsed line.
struct AccessSource {
    lines: LineSource,
    /// Position of this file among the access logs given.
    index: usize,
    format: AccessFormat,
    last_time: Micros,
}

/// One access line read from a file.
struct AccessItem {
    line: Vec<u8>,
    parsed: Option<AccessLine>,
    /// Index of the access log file and 1-based line number.
    location: (usize, u64),
}

fn next_access_line(
    source: &mut AccessSource,
) -> Result<Option<Keyed<AccessItem>>, CorrelateError> {
    let mut line = Vec::new();
    if !source.lines.read_line(&mut line)? {
        return Ok(None);
    }
    let parsed = source.format.parse(split_line_ending(&line).0);
    // An unparsable line keeps its place after the line before it.
    if let Some(parsed) = &parsed {
        source.last_time = parsed.time;
    }
    Ok(Some(Keyed {
        key: source.last_time,
        item: AccessItem {
            line,
            parsed,
            location: (source.index, source.lines.line_number),
        },
    }))
}

fn correlate(
    options: &Options,
    connections: Vec<LineSource>,
    access_logs: Vec<LineSource>,
    output: &mut dyn Write,
    output_name: &str,
) -> Result<Summary, CorrelateError> {
    let connection_sources = connections
        .into_iter()
        .map(|lines| ConnectionSource {
            lines,
            line: Vec::new(),
            invalid: 0,
            first_invalid: None,
        })
        .collect();
    let mut connections = Merge::new(connection_sources, next_connection)?;

    let access_names: Vec<String> = access_logs.iter().map(|s| s.name.clone()).collect();
    let access_sources = access_logs
        .into_iter()
        .enumerate()
        .map(|(index, lines)| AccessSource {
            lines,
            index,
            format: options.format.clone(),
            last_time: Micros::MIN,
        })
        .collect();
    let mut access = Merge::new(access_sources, next_access_line)?;

    let mut join = Join {
        options,
        index: Index::default(),
        newest_access: Micros::MIN,
        latest_logged: Micros::MIN,
        connections_done: false,
        summary: Summary::default(),
    };
    let write_error = |source| CorrelateError::Output {
        path: output_name.to_owned(),
        source,
    };

    while let Some(item) = access.pop(next_access_line)? {
        join.summary.access_lines += 1;
        let (content, ending) = split_line_ending(&item.line);
        let Some(parsed) = &item.parsed else {
            join.summary.unparsable += 1;
            if join.summary.first_unparsable.is_none() {
                let (index, line_number) = item.location;
                join.summary.first_unparsable =
                    Some(format!("{}:{line_number}", access_names[index]));
            }
            output.write_all(&item.line).map_err(write_error)?;
            continue;
        };

        match join.find(parsed, &mut connections)? {
            Some(client) => {
                output
                    .write_all(&content[..parsed.address_range.start])
                    .map_err(write_error)?;
                write!(output, "{client}").map_err(write_error)?;
                output
                    .write_all(&item.line[parsed.address_range.end..])
                    .map_err(write_error)?;
            }
            None => {
                output.write_all(content).map_err(write_error)?;
                output
                    .write_all(UNMATCHED_MARKER.as_bytes())
                    .map_err(write_error)?;
                output.write_all(ending).map_err(write_error)?;
            }
        }
    }

    let mut summary = join.summary;
    summary.peak_index_len = join.index.peak_len();
    for source in connections.sources() {
        summary.invalid_connection_lines += source.invalid;
        if summary.first_invalid_connection_line.is_none() {
            summary.first_invalid_connection_line = source.first_invalid.clone();
        }
    }
    Ok(summary)
}

/// State of the windowed join between the two streams.
struct Join<'a> {
    options: &'a Options,
    index: Index,
    /// Latest access line time seen.
    newest_access: Micros,
    /// Latest connection log time read.
    latest_logged: Micros,
    connections_done: bool,
    summary: Summary,
}

impl Join<'_> {
    /// Advances the connection stream for one access line, evicts what no later
    /// line can match, and returns the matched client, counting the outcome.
    fn find(
        &mut self,
        line: &AccessLine,
        connections: &mut Merge<Connection, ConnectionSource>,
    ) -> Result<Option<std::net::IpAddr>, CorrelateError> {
        let Options {
            skew,
            window,
            backend,
            ..
        } = *self.options;

        // NOTE: one access line with a wrong time far in the future moves
        // `newest_access` ahead, so the lines after it count as late and
        // connections they need may already be evicted.
        if line.time < self.newest_access.saturating_sub(window) {
            self.summary.late += 1;
        }
        self.newest_access = self.newest_access.max(line.time);

        let horizon = line.time + line.resolution + skew + window;
        while !self.connections_done && self.latest_logged <= horizon {
            match connections.pop(next_connection)? {
                Some(connection) => {
                    self.latest_logged = self.latest_logged.max(connection.logged);
                    if backend.is_none() || connection.backend == backend {
                        self.summary.connections += 1;
                        self.index.insert(connection);
                    }
                }
                None => self.connections_done = true,
            }
        }
        self.index
            .evict_ended_before(self.newest_access.saturating_sub(window + skew));

        match self.index.find(line.peer, line.time, line.resolution, skew) {
            Some(found) => {
                self.summary.matched += 1;
                if found.ambiguous {
                    self.summary.ambiguous += 1;
                }
                Ok(Some(found.client))
            }
            None => {
                self.summary.unmatched += 1;
                Ok(None)
            }
        }
    }
}
