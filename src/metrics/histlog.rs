//! The `histogram_log` file: HdrHistogram interval logs.
//!
//! Every `histogram_log_interval` the logger merges the workers' published values
//! and writes, for each histogram of the total and of each service, the values
//! recorded since the previous interval. Histograms are V2 deflate-compressed,
//! base64 encoded and tagged, in the format that HdrHistogram's
//! `HistogramLogReader` and `HistogramLogProcessor` read.

use std::fs::{File, OpenOptions};
use std::io::{self, BufWriter, Write};
use std::path::Path;
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, SystemTime};

use hdrhistogram::serialization::interval_log::{IntervalLogWriterBuilder, Tag};
use hdrhistogram::serialization::V2DeflateSerializer;
use hdrhistogram::Histogram;

use super::record::{HistogramKind, ServiceMetrics};
use super::registry::{Registry, Snapshot};

/// Creates or truncates the `histogram_log` file at `path` and opens it for
/// appending. With O_APPEND every write goes to the current end of the file, so
/// after logrotate's `copytruncate` empties it the next interval starts at offset
/// 0 instead of leaving a hole of NUL bytes before it.
pub fn create_log_file(path: &Path) -> io::Result<File> {
    // The standard library rejects append combined with truncate, so the file
    // is truncated after it is opened.
    let file = OpenOptions::new().create(true).append(true).open(path)?;
    file.set_len(0)?;
    Ok(file)
}

/// A running interval log writer. Dropping it writes the last interval and
/// closes the file.
pub struct HistogramLogger {
    stop: Option<mpsc::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl HistogramLogger {
    /// Creates (or truncates) `path`, writes the log header, and starts a thread
    /// that writes one set of intervals every `interval`.
    pub fn start(
        path: &Path,
        interval: Duration,
        registry: Arc<Registry>,
    ) -> io::Result<HistogramLogger> {
        let file = create_log_file(path).map_err(|error| {
            io::Error::new(
                error.kind(),
                format!("cannot create histogram log {}: {error}", path.display()),
            )
        })?;
        let mut log = IntervalLog::new(BufWriter::new(file), registry.snapshot())?;
        let (stop, stopped) = mpsc::channel::<()>();
        let display_path = path.display().to_string();

        let thread = thread::Builder::new()
            .name("histogram-log".to_owned())
            .spawn(move || {
                let mut failures: u64 = 0;
                loop {
                    let finished = match stopped.recv_timeout(interval) {
                        Err(RecvTimeoutError::Timeout) => false,
                        Ok(()) | Err(RecvTimeoutError::Disconnected) => true,
                    };
                    if let Err(error) = log.write_interval(&registry.snapshot()) {
                        failures += 1;
                        if failures <= 10 {
                            log::warn!(
                                "metrics: writing histogram log {display_path} failed: {error}"
                            );
                        }
                    }
                    if finished {
                        break;
                    }
                }
            })?;
        log::info!(
            "metrics: writing histogram log {} every {:?}",
            path.display(),
            interval
        );

        Ok(HistogramLogger {
            stop: Some(stop),
            thread: Some(thread),
        })
    }

    /// Writes the last interval, closes the file and waits for the thread.
    pub fn stop(mut self) {
        self.stop_thread();
    }

    fn stop_thread(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for HistogramLogger {
    fn drop(&mut self) {
        self.stop_thread();
    }
}

/// An interval log on any writer: the writer and the cumulative values at the
/// end of the last interval, which the next interval subtracts.
/// [`HistogramLogger`] runs one on a thread; the metrics process of
/// privilege separation runs one on its main thread.
pub struct IntervalLog<W: Write> {
    writer: W,
    serializer: V2DeflateSerializer,
    base_time: SystemTime,
    previous: Snapshot,
}

impl<W: Write> IntervalLog<W> {
    /// Writes the header; `start` supplies the start time and the values that the
    /// first interval is measured from.
    pub fn new(mut writer: W, start: Snapshot) -> io::Result<IntervalLog<W>> {
        let mut serializer = V2DeflateSerializer::new();
        IntervalLogWriterBuilder::new()
            .add_comment("tlsplice latency and size histograms")
            .add_comment("Durations are in microseconds and sizes in bytes.")
            .add_comment("Tags are HISTOGRAM for all services and HISTOGRAM:SERVICE per service.")
            .with_start_time(start.taken_at)
            .with_base_time(start.taken_at)
            .begin_log_with(&mut writer, &mut serializer)?;
        writer.write_all(
            b"\"StartTimestamp\",\"Interval_Length\",\"Interval_Max\",\"Interval_Compressed_Histogram\"\n",
        )?;
        writer.flush()?;

        Ok(IntervalLog {
            writer,
            serializer,
            base_time: start.taken_at,
            previous: start,
        })
    }

    /// Writes the values recorded between the previous snapshot and `current`,
    /// one tagged line per histogram of the total and of each service.
    pub fn write_interval(&mut self, current: &Snapshot) -> io::Result<()> {
        let start = elapsed(self.base_time, self.previous.taken_at);
        let length = elapsed(self.previous.taken_at, current.taken_at);

        let mut scopes: Vec<(Option<&str>, &ServiceMetrics, &ServiceMetrics)> =
            vec![(None, &current.total, &self.previous.total)];
        for ((name, now), (_, before)) in current.services.iter().zip(&self.previous.services) {
            scopes.push((Some(name.as_str()), now, before));
        }

        let mut log = IntervalLogWriterBuilder::new()
            .begin_log_with(&mut self.writer, &mut self.serializer)?;
        for (service, now, before) in scopes {
            for kind in HistogramKind::ALL {
                let delta = interval_histogram(
                    now.histogram(kind).histogram(),
                    before.histogram(kind).histogram(),
                );
                let tag_text = tag_for(kind, service);
                let tag = Tag::new(&tag_text);
                log.write_histogram(&delta, start, length, tag)
                    .map_err(|error| io::Error::other(error.to_string()))?;
            }
        }
        drop(log);
        self.writer.flush()?;

        self.previous = current.clone();
        Ok(())
    }
}

fn elapsed(from: SystemTime, to: SystemTime) -> Duration {
    to.duration_since(from).unwrap_or(Duration::ZERO)
}

/// Returns `now - before`. Published values only grow, so the subtraction fits.
/// If it does not, which would be a bug, the whole of `now` is logged.
fn interval_histogram(now: &Histogram<u64>, before: &Histogram<u64>) -> Histogram<u64> {
    let mut delta = now.clone();
    if delta.subtract(before).is_err() {
        log::warn!("metrics: histogram shrank between intervals; logging cumulative values");
        return now.clone();
    }
    delta
}

/// Builds a tag, replacing the characters the log format forbids in tags.
fn tag_for(kind: HistogramKind, service: Option<&str>) -> String {
    let raw = match service {
        Some(name) => format!("{}:{name}", kind.as_str()),
        None => kind.as_str().to_owned(),
    };
    raw.chars()
        .map(|c| {
            if matches!(c, ',' | ' ' | '\r' | '\n') {
                '_'
            } else {
                c
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use hdrhistogram::serialization::interval_log::{IntervalLogIterator, LogEntry};
    use hdrhistogram::serialization::Deserializer;

    use base64::Engine;

    use crate::log::CloseReason;
    use crate::metrics::DataPath;

    /// Returns (tag, interval start, histogram count) for each interval line.
    fn read_intervals(log: &[u8]) -> Vec<(String, Duration, u64)> {
        let mut intervals = Vec::new();
        for entry in IntervalLogIterator::new(log) {
            if let LogEntry::Interval(interval) = entry.expect("log line parses") {
                let bytes = base64::engine::general_purpose::STANDARD
                    .decode(interval.encoded_histogram())
                    .unwrap();
                let histogram: Histogram<u64> = Deserializer::new()
                    .deserialize(&mut bytes.as_slice())
                    .unwrap();
                let tag = interval
                    .tag()
                    .map(|t| t.as_str().to_owned())
                    .unwrap_or_default();
                intervals.push((tag, interval.start_timestamp(), histogram.len()));
            }
        }
        intervals
    }

    #[test]
    fn interval_log_writes_deltas() {
        let registry = Registry::new(vec!["web".to_owned(), "api".to_owned()]);
        let mut worker = registry.register_worker();
        let mut log = IntervalLog::new(Vec::new(), registry.snapshot()).unwrap();

        for _ in 0..3 {
            worker.closed(
                0,
                CloseReason::Done,
                Duration::from_secs(1),
                10,
                20,
                DataPath::Ktls,
            );
        }
        worker.publish();
        log.write_interval(&registry.snapshot()).unwrap();

        worker.closed(
            1,
            CloseReason::Done,
            Duration::from_secs(1),
            10,
            20,
            DataPath::Ktls,
        );
        worker.publish();
        log.write_interval(&registry.snapshot()).unwrap();

        let text = String::from_utf8(log.writer.clone()).unwrap();
        assert!(text.contains("#[StartTime: "), "{text}");
        assert!(text.contains("#[BaseTime: "), "{text}");

        let intervals = read_intervals(&log.writer);
        // Two intervals of 6 histograms for the total and each of 2 services.
        assert_eq!(intervals.len(), 2 * 6 * 3);
        let count = |index: usize, tag: &str| {
            let per_interval = &intervals[index * 18..(index + 1) * 18];
            per_interval
                .iter()
                .find(|(t, _, _)| t == tag)
                .unwrap_or_else(|| panic!("tag {tag} missing"))
                .2
        };
        assert_eq!(count(0, "connection_duration"), 3);
        assert_eq!(count(0, "connection_duration:web"), 3);
        assert_eq!(count(0, "connection_duration:api"), 0);
        assert_eq!(count(1, "connection_duration"), 1);
        assert_eq!(count(1, "connection_duration:web"), 0);
        assert_eq!(count(1, "bytes_backend_to_client:api"), 1);
        assert!(intervals[18].1 >= intervals[0].1, "timestamps go backwards");
    }

    #[test]
    fn tag_for_replaces_forbidden_characters() {
        assert_eq!(
            tag_for(HistogramKind::Handshake, None),
            "handshake_duration"
        );
        assert_eq!(
            tag_for(HistogramKind::Lifetime, Some("my web,1")),
            "connection_duration:my_web_1"
        );
    }
}
