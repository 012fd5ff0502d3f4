//! Per-worker recording: counters and histograms owned by one thread.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use hdrhistogram::Histogram;

use super::{DataPath, HandshakeFailure};
use crate::log::CloseReason;

/// Significant decimal digits kept by every histogram: values are exact to 0.1 %.
const SIGNIFICANT_DIGITS: u8 = 3;

/// The unit of a histogram's recorded values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unit {
    Microseconds,
    Bytes,
}

/// The histograms kept for each service.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HistogramKind {
    /// From the first ClientHello byte to the end of the handshake.
    Handshake,
    /// Time to connect to the backend.
    BackendConnect,
    /// From the client's first application byte to the backend's first byte.
    FirstByte,
    /// From accept to close.
    Lifetime,
    /// Application bytes sent from the client to the backend, per connection.
    BytesUp,
    /// Application bytes sent from the backend to the client, per connection.
    BytesDown,
}

impl HistogramKind {
    pub const ALL: [HistogramKind; 6] = [
        HistogramKind::Handshake,
        HistogramKind::BackendConnect,
        HistogramKind::FirstByte,
        HistogramKind::Lifetime,
        HistogramKind::BytesUp,
        HistogramKind::BytesDown,
    ];

    /// Returns the stable name used in JSON keys, log tags and the summary.
    pub fn as_str(self) -> &'static str {
        match self {
            HistogramKind::Handshake => "handshake_duration",
            HistogramKind::BackendConnect => "backend_connect_duration",
            HistogramKind::FirstByte => "first_byte_duration",
            HistogramKind::Lifetime => "connection_duration",
            HistogramKind::BytesUp => "bytes_client_to_backend",
            HistogramKind::BytesDown => "bytes_backend_to_client",
        }
    }

    pub fn unit(self) -> Unit {
        match self {
            HistogramKind::BytesUp | HistogramKind::BytesDown => Unit::Bytes,
            _ => Unit::Microseconds,
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// An HdrHistogram plus the exact sum of its values, which the histogram alone
/// only approximates.
#[derive(Debug, Clone)]
pub struct Recorder {
    histogram: Histogram<u64>,
    sum: u64,
}

impl Recorder {
    fn new() -> Recorder {
        let mut histogram =
            Histogram::new(SIGNIFICANT_DIGITS).expect("3 significant digits are valid");
        // The histogram starts small and grows to cover the largest value seen, so an
        // idle service costs little memory and no upper bound is guessed.
        histogram.auto(true);
        Recorder { histogram, sum: 0 }
    }

    fn record(&mut self, value: u64) {
        if self.histogram.record(value).is_err() {
            // Only values near u64::MAX fail to fit even with auto-resize.
            self.histogram.saturating_record(value);
        }
        self.sum = self.sum.saturating_add(value);
    }

    fn clear(&mut self) {
        self.histogram.reset();
        self.sum = 0;
    }

    fn merge(&mut self, source: &Recorder) {
        self.add(&source.histogram, source.sum);
    }

    fn add(&mut self, histogram: &Histogram<u64>, sum: u64) {
        // Both histograms auto-resize, so `add` grows `self` as needed. It fails
        // only if the grown histogram's length overflows usize.
        if let Err(error) = self.histogram.add(histogram) {
            log::warn!("metrics: merging histograms failed: {error:?}");
        }
        self.sum = self.sum.saturating_add(sum);
    }

    pub fn histogram(&self) -> &Histogram<u64> {
        &self.histogram
    }

    /// Exact sum of the recorded values, saturating at `u64::MAX`.
    pub fn sum(&self) -> u64 {
        self.sum
    }

    pub fn count(&self) -> u64 {
        self.histogram.len()
    }
}

/// Completed handshakes with one protocol version and cipher suite.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TlsCount {
    /// Wire code of the `rustls::ProtocolVersion`.
    pub version: u16,
    /// Wire code of the `rustls::CipherSuite`.
    pub suite: u16,
    pub count: u64,
}

/// Every counter and histogram of one service, or of all services together.
#[derive(Debug, Clone)]
pub struct ServiceMetrics {
    pub accepted: u64,
    /// Closed connections, indexed like `CloseReason::ALL`.
    pub closed: [u64; CloseReason::ALL.len()],
    /// Failed handshakes, indexed like `HandshakeFailure::ALL`.
    pub handshake_failures: [u64; HandshakeFailure::ALL.len()],
    pub backend_connect_failures: u64,
    /// Closed connections by the data path that relayed them, indexed like
    /// `DataPath::ALL`.
    pub data_paths: [u64; DataPath::ALL.len()],
    /// Completed handshakes by version and suite; a handful of entries at most.
    pub handshakes: Vec<TlsCount>,
    histograms: [Recorder; HistogramKind::ALL.len()],
}

impl Default for ServiceMetrics {
    fn default() -> Self {
        ServiceMetrics {
            accepted: 0,
            closed: [0; CloseReason::ALL.len()],
            handshake_failures: [0; HandshakeFailure::ALL.len()],
            backend_connect_failures: 0,
            data_paths: [0; DataPath::ALL.len()],
            handshakes: Vec::new(),
            histograms: std::array::from_fn(|_| Recorder::new()),
        }
    }
}

impl ServiceMetrics {
    pub fn histogram(&self, kind: HistogramKind) -> &Recorder {
        &self.histograms[kind.index()]
    }

    pub fn closed_total(&self) -> u64 {
        self.closed.iter().sum()
    }

    /// Connections accepted and not yet closed.
    pub fn active(&self) -> u64 {
        self.accepted.saturating_sub(self.closed_total())
    }

    pub fn closed_by(&self, reason: CloseReason) -> u64 {
        self.closed[close_index(reason)]
    }

    pub fn handshake_failures_by(&self, failure: HandshakeFailure) -> u64 {
        self.handshake_failures[failure.index()]
    }

    pub fn data_path_count(&self, path: DataPath) -> u64 {
        self.data_paths[path.index()]
    }

    /// Completed handshakes by protocol version code, in first-seen order.
    pub fn version_counts(&self) -> Vec<(u16, u64)> {
        sum_by_key(&self.handshakes, |entry| entry.version)
    }

    /// Completed handshakes by cipher suite code, in first-seen order.
    pub fn suite_counts(&self) -> Vec<(u16, u64)> {
        sum_by_key(&self.handshakes, |entry| entry.suite)
    }

    /// Adds `count` completed handshakes with `version` and `suite`.
    pub fn add_handshakes(&mut self, version: u16, suite: u16, count: u64) {
        let existing = self
            .handshakes
            .iter_mut()
            .find(|entry| entry.version == version && entry.suite == suite);
        match existing {
            Some(entry) => entry.count = entry.count.saturating_add(count),
            None => self.handshakes.push(TlsCount {
                version,
                suite,
                count,
            }),
        }
    }

    fn record(&mut self, kind: HistogramKind, value: u64) {
        self.histograms[kind.index()].record(value);
    }

    /// Adds the values of `histogram`, whose exact sum is `sum`, to the
    /// histogram `kind`.
    pub fn add_histogram(&mut self, kind: HistogramKind, histogram: &Histogram<u64>, sum: u64) {
        self.histograms[kind.index()].add(histogram, sum);
    }

    /// Returns true when nothing was recorded: every counter is zero and every
    /// histogram is empty.
    pub fn is_empty(&self) -> bool {
        self.accepted == 0
            && self.closed.iter().all(|count| *count == 0)
            && self.handshake_failures.iter().all(|count| *count == 0)
            && self.backend_connect_failures == 0
            && self.data_paths.iter().all(|count| *count == 0)
            && self.handshakes.is_empty()
            && self.histograms.iter().all(|recorder| recorder.count() == 0)
    }

    /// Zeroes every counter and histogram, keeping the histograms' memory.
    pub(super) fn clear(&mut self) {
        self.accepted = 0;
        self.closed = [0; CloseReason::ALL.len()];
        self.handshake_failures = [0; HandshakeFailure::ALL.len()];
        self.backend_connect_failures = 0;
        self.data_paths = [0; DataPath::ALL.len()];
        self.handshakes.clear();
        for recorder in &mut self.histograms {
            recorder.clear();
        }
    }

    /// Adds every counter and histogram of `source` to `self`. Counters saturate
    /// at `u64::MAX`, because `source` may come from another process.
    pub fn merge(&mut self, source: &ServiceMetrics) {
        self.accepted = self.accepted.saturating_add(source.accepted);
        add_arrays(&mut self.closed, &source.closed);
        add_arrays(&mut self.handshake_failures, &source.handshake_failures);
        self.backend_connect_failures = self
            .backend_connect_failures
            .saturating_add(source.backend_connect_failures);
        add_arrays(&mut self.data_paths, &source.data_paths);
        for entry in &source.handshakes {
            self.add_handshakes(entry.version, entry.suite, entry.count);
        }
        for (target, from) in self.histograms.iter_mut().zip(&source.histograms) {
            target.merge(from);
        }
    }
}

fn add_arrays<const N: usize>(target: &mut [u64; N], source: &[u64; N]) {
    for (t, s) in target.iter_mut().zip(source) {
        *t = t.saturating_add(*s);
    }
}

fn sum_by_key(entries: &[TlsCount], key: impl Fn(&TlsCount) -> u16) -> Vec<(u16, u64)> {
    let mut sums: Vec<(u16, u64)> = Vec::new();
    for entry in entries {
        let code = key(entry);
        match sums.iter_mut().find(|(k, _)| *k == code) {
            Some((_, count)) => *count += entry.count,
            None => sums.push((code, entry.count)),
        }
    }
    sums
}

fn close_index(reason: CloseReason) -> usize {
    // `CloseReason::ALL` lists the variants in declaration order, so the
    // discriminant is the index; a unit test checks this.
    reason as usize
}

/// Microseconds in `duration`, saturating at `u64::MAX`.
fn micros(duration: Duration) -> u64 {
    u64::try_from(duration.as_micros()).unwrap_or(u64::MAX)
}

/// The hand-off point between one worker and the registry. A worker moves its
/// recorded values in with [`WorkerMetrics::publish`], and
/// [`Registry::collect`](super::Registry::collect) moves them out.
pub(super) struct SlotState {
    /// Values published and not yet collected, per service.
    pub(super) deltas: Vec<ServiceMetrics>,
    /// Whether `deltas[i]` contains values; an empty entry is zeroed and ready to swap.
    pub(super) full: Vec<bool>,
}

pub(super) type Slot = Arc<Mutex<SlotState>>;

pub(super) fn new_slot(service_count: usize) -> Slot {
    Arc::new(Mutex::new(SlotState {
        deltas: (0..service_count)
            .map(|_| ServiceMetrics::default())
            .collect(),
        full: vec![false; service_count],
    }))
}

pub(super) fn lock_slot(slot: &Slot) -> MutexGuard<'_, SlotState> {
    // Every update under this lock is a swap or a merge of whole values, so a
    // panic elsewhere while it was held leaves usable data.
    slot.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// The metrics of one worker thread. Recording takes no lock and does not
/// allocate except when a histogram grows or a new version and suite pair first
/// appears.
///
/// The worker holds only the values recorded since its last publish; the
/// registry keeps the running totals.
///
/// Every recording method takes `service`, an index into the service list given to
/// [`Registry::new`](super::Registry::new), and panics if it is out of range.
pub struct WorkerMetrics {
    /// Values recorded since the last publish, per service.
    services: Vec<ServiceMetrics>,
    /// Services changed since the last publish.
    dirty: Vec<bool>,
    any_dirty: bool,
    slot: Slot,
    /// Incremented by readers that want fresh values.
    publish_requests: Arc<AtomicU64>,
    seen_requests: u64,
}

impl WorkerMetrics {
    pub(super) fn new(service_count: usize, slot: Slot, publish_requests: Arc<AtomicU64>) -> Self {
        WorkerMetrics {
            services: (0..service_count)
                .map(|_| ServiceMetrics::default())
                .collect(),
            dirty: vec![false; service_count],
            any_dirty: false,
            slot,
            publish_requests,
            seen_requests: 0,
        }
    }

    fn service_mut(&mut self, service: usize) -> &mut ServiceMetrics {
        self.dirty[service] = true;
        self.any_dirty = true;
        &mut self.services[service]
    }

    pub fn accepted(&mut self, service: usize) {
        self.service_mut(service).accepted += 1;
    }

    /// Records a completed handshake; `duration` runs from the first ClientHello
    /// byte to the end of the handshake.
    pub fn handshake_done(
        &mut self,
        service: usize,
        duration: Duration,
        version: rustls::ProtocolVersion,
        suite: rustls::CipherSuite,
    ) {
        let metrics = self.service_mut(service);
        metrics.record(HistogramKind::Handshake, micros(duration));
        metrics.add_handshakes(u16::from(version), u16::from(suite), 1);
    }

    pub fn handshake_failed(&mut self, service: usize, reason: HandshakeFailure) {
        self.service_mut(service).handshake_failures[reason.index()] += 1;
    }

    pub fn backend_connected(&mut self, service: usize, duration: Duration) {
        self.service_mut(service)
            .record(HistogramKind::BackendConnect, micros(duration));
    }

    /// Counts one backend that did not accept the connection; a connection that
    /// tries two backends in vain counts twice.
    pub fn backend_connect_failed(&mut self, service: usize) {
        self.service_mut(service).backend_connect_failures += 1;
    }

    /// Records the time from the client's first application byte to the backend's
    /// first byte.
    pub fn first_byte(&mut self, service: usize, duration: Duration) {
        self.service_mut(service)
            .record(HistogramKind::FirstByte, micros(duration));
    }

    /// Counts `count` connections of `service` as closed for `reason`, with no
    /// lifetime or byte counts: for connections whose process ended.
    pub fn add_closed(&mut self, service: usize, reason: CloseReason, count: u64) {
        let closed = &mut self.service_mut(service).closed[close_index(reason)];
        *closed = closed.saturating_add(count);
    }

    /// Records a closed connection. `lifetime` runs from accept to close;
    /// `bytes_up` are application bytes from the client to the backend and
    /// `bytes_down` the other way.
    pub fn closed(
        &mut self,
        service: usize,
        reason: CloseReason,
        lifetime: Duration,
        bytes_up: u64,
        bytes_down: u64,
        path: DataPath,
    ) {
        let metrics = self.service_mut(service);
        metrics.closed[close_index(reason)] += 1;
        metrics.data_paths[path.index()] += 1;
        metrics.record(HistogramKind::Lifetime, micros(lifetime));
        metrics.record(HistogramKind::BytesUp, bytes_up);
        metrics.record(HistogramKind::BytesDown, bytes_down);
    }

    /// Adds values recorded elsewhere, such as in a worker process, to `service`.
    pub fn merge(&mut self, service: usize, values: &ServiceMetrics) {
        self.service_mut(service).merge(values);
    }

    /// Hands the values recorded since the last publish to the registry, and
    /// returns whether there were any. Does nothing when nothing changed.
    ///
    /// When the registry has collected the previous hand-off, each changed service
    /// costs one swap of its values with the zeroed ones in the slot. Otherwise
    /// the worker adds its values to the uncollected ones and zeroes its own,
    /// which walks every histogram (about 0.3 ms per service in the benchmark, see
    /// `perf/metrics.md`). A [`Collector`](super::Collector) keeps the fast path.
    pub fn publish(&mut self) -> bool {
        self.seen_requests = self.publish_requests.load(Ordering::Relaxed);
        if !self.any_dirty {
            return false;
        }

        let mut slot = lock_slot(&self.slot);
        for (index, dirty) in self.dirty.iter_mut().enumerate() {
            if !*dirty {
                continue;
            }
            if slot.full[index] {
                slot.deltas[index].merge(&self.services[index]);
                self.services[index].clear();
            } else {
                std::mem::swap(&mut slot.deltas[index], &mut self.services[index]);
                slot.full[index] = true;
            }
            *dirty = false;
        }
        self.any_dirty = false;
        true
    }

    /// Returns true when a reader called
    /// [`Registry::request_publish`](super::Registry::request_publish) after this
    /// worker's last publish. One relaxed atomic load.
    pub fn publish_requested(&self) -> bool {
        self.publish_requests.load(Ordering::Relaxed) != self.seen_requests
    }
}

impl Drop for WorkerMetrics {
    /// Publishes what is left, so a worker that exits loses no values.
    fn drop(&mut self) {
        self.publish();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn close_reason_discriminant_is_index() {
        for (index, reason) in CloseReason::ALL.iter().enumerate() {
            assert_eq!(close_index(*reason), index, "{reason}");
        }
    }

    #[test]
    fn handshake_failure_discriminant_is_index() {
        for (index, failure) in HandshakeFailure::ALL.iter().enumerate() {
            assert_eq!(failure.index(), index, "{failure:?}");
        }
    }

    #[test]
    fn histogram_kind_discriminant_is_index() {
        for (index, kind) in HistogramKind::ALL.iter().enumerate() {
            assert_eq!(kind.index(), index, "{kind:?}");
        }
    }

    #[test]
    fn recorder_keeps_exact_sum() {
        let mut recorder = Recorder::new();
        recorder.record(1);
        recorder.record(123_456_789);
        recorder.record(3_600_000_000);
        assert_eq!(recorder.sum(), 3_723_456_790);
        assert_eq!(recorder.count(), 3);
    }

    #[test]
    fn recorder_covers_one_tebibyte() {
        let mut recorder = Recorder::new();
        let tebibyte = 1u64 << 40;
        recorder.record(tebibyte);
        assert!(recorder
            .histogram()
            .equivalent(recorder.histogram().max(), tebibyte));
    }
}
