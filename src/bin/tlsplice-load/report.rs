//! Counters and latency histograms, merged across worker threads and printed as JSON.

use std::collections::BTreeMap;
use std::time::Duration;

use hdrhistogram::Histogram;
use serde_json::{json, Value};

/// Highest latency the histograms record, in microseconds (one hour). Larger
/// values are clamped to it.
const MAX_LATENCY_US: u64 = 3_600_000_000;

pub fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, MAX_LATENCY_US, 3).expect("the histogram bounds are valid")
}

pub fn record(histogram: &mut Histogram<u64>, elapsed: Duration) {
    let micros = (elapsed.as_micros() as u64).clamp(1, MAX_LATENCY_US);
    histogram.saturating_record(micros);
}

/// Results of one client thread, or of all threads after [`Stats::merge`].
pub struct Stats {
    pub connections_opened: u64,
    pub handshakes_full: u64,
    pub handshakes_resumed: u64,
    pub requests: u64,
    /// Body bytes received in responses.
    pub bytes_received: u64,
    /// Body bytes sent in requests.
    pub bytes_sent: u64,
    /// Error counts by kind: `connect`, `tls`, `io`, `closed`, `http`, `status`,
    /// `timeout`.
    pub errors: BTreeMap<&'static str, u64>,
    /// The first error message seen for each error kind.
    pub first_errors: BTreeMap<&'static str, String>,
    /// Time from TCP connect to the end of the TLS handshake.
    pub handshake_latency: Histogram<u64>,
    /// Time from a request's intended send time to its complete response. Outside
    /// the latency mode the intended time is the actual send time.
    pub latency: Histogram<u64>,
    /// Time from a request's actual send time to its complete response.
    pub service_latency: Histogram<u64>,
    /// Latency mode: time from a request's intended start to the moment the
    /// client started sending it. The event loop's timer has 1 ms resolution, so
    /// this is the client's own share of `latency`.
    pub send_lateness: Histogram<u64>,
    /// Requests whose intended send time passed without a free connection to send
    /// them on before the run ended (latency mode).
    pub unsent: u64,
    /// Bulk mode: transfers stopped because the run's duration had passed.
    pub cut_off: u64,
    /// Highest number of connections open at the same time.
    pub max_open: u64,
}

impl Stats {
    pub fn new() -> Stats {
        Stats {
            connections_opened: 0,
            handshakes_full: 0,
            handshakes_resumed: 0,
            requests: 0,
            bytes_received: 0,
            bytes_sent: 0,
            errors: BTreeMap::new(),
            first_errors: BTreeMap::new(),
            handshake_latency: new_histogram(),
            latency: new_histogram(),
            service_latency: new_histogram(),
            send_lateness: new_histogram(),
            unsent: 0,
            cut_off: 0,
            max_open: 0,
        }
    }

    /// Counts an error and keeps its message if it is the first of its kind.
    pub fn error_with_detail(&mut self, kind: &'static str, detail: String) {
        *self.errors.entry(kind).or_default() += 1;
        self.first_errors.entry(kind).or_insert(detail);
    }

    pub fn error_total(&self) -> u64 {
        self.errors.values().sum()
    }

    pub fn merge(&mut self, other: &Stats) {
        self.connections_opened += other.connections_opened;
        self.handshakes_full += other.handshakes_full;
        self.handshakes_resumed += other.handshakes_resumed;
        self.requests += other.requests;
        self.bytes_received += other.bytes_received;
        self.bytes_sent += other.bytes_sent;
        for (kind, count) in &other.errors {
            *self.errors.entry(kind).or_default() += count;
        }
        for (kind, detail) in &other.first_errors {
            self.first_errors
                .entry(kind)
                .or_insert_with(|| detail.clone());
        }
        self.handshake_latency
            .add(&other.handshake_latency)
            .expect("histograms share their bounds");
        self.latency
            .add(&other.latency)
            .expect("histograms share their bounds");
        self.service_latency
            .add(&other.service_latency)
            .expect("histograms share their bounds");
        self.send_lateness
            .add(&other.send_lateness)
            .expect("histograms share their bounds");
        self.unsent += other.unsent;
        self.cut_off += other.cut_off;
        self.max_open += other.max_open;
    }

    /// Builds the JSON report. `elapsed` is the wall time of the run.
    pub fn to_json(&self, mode: &str, elapsed: Duration) -> Value {
        let seconds = elapsed.as_secs_f64().max(1e-9);
        let handshakes = self.handshakes_full + self.handshakes_resumed;
        json!({
            "mode": mode,
            "elapsed_s": seconds,
            "connections_opened": self.connections_opened,
            "max_open_connections": self.max_open,
            "handshakes": handshakes,
            "handshakes_full": self.handshakes_full,
            "handshakes_resumed": self.handshakes_resumed,
            "handshakes_per_s": handshakes as f64 / seconds,
            "requests": self.requests,
            "requests_per_s": self.requests as f64 / seconds,
            "bytes_received": self.bytes_received,
            "bytes_sent": self.bytes_sent,
            "throughput_bytes_per_s": (self.bytes_received + self.bytes_sent) as f64 / seconds,
            "errors": self.error_total(),
            "errors_by_kind": self.errors,
            "first_errors": self.first_errors,
            "unsent": self.unsent,
            "cut_off": self.cut_off,
            "handshake_latency_us": summarize(&self.handshake_latency),
            "latency_us": summarize(&self.latency),
            "service_latency_us": summarize(&self.service_latency),
            "send_lateness_us": summarize(&self.send_lateness),
        })
    }
}

fn summarize(histogram: &Histogram<u64>) -> Value {
    if histogram.is_empty() {
        return json!({ "count": 0 });
    }
    json!({
        "count": histogram.len(),
        "mean": histogram.mean(),
        "p50": histogram.value_at_quantile(0.5),
        "p90": histogram.value_at_quantile(0.9),
        "p99": histogram.value_at_quantile(0.99),
        "p99.9": histogram.value_at_quantile(0.999),
        "max": histogram.max(),
    })
}
