//! The `/metrics` page in the Prometheus text exposition format, version 0.0.4.
//!
//! Each family lists the total over all services first, as series without a
//! `service` label, then one series per service with `service="NAME"`.

use std::fmt::{Display, Write};

use hdrhistogram::Histogram;

use super::record::{HistogramKind, ServiceMetrics};
use super::registry::Snapshot;
use super::{suite_name, version_name, DataPath, HandshakeFailure};
use crate::log::CloseReason;

/// The `Content-Type` of the page.
pub(super) const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Bucket bounds for handshake, backend connect and first byte times, in
/// microseconds, with the `le` label text in seconds.
const LATENCY_BOUNDS: &[(u64, &str)] = &[
    (100, "0.0001"),
    (250, "0.00025"),
    (500, "0.0005"),
    (1_000, "0.001"),
    (2_500, "0.0025"),
    (5_000, "0.005"),
    (10_000, "0.01"),
    (25_000, "0.025"),
    (50_000, "0.05"),
    (100_000, "0.1"),
    (250_000, "0.25"),
    (500_000, "0.5"),
    (1_000_000, "1"),
    (2_500_000, "2.5"),
    (5_000_000, "5"),
    (10_000_000, "10"),
    (30_000_000, "30"),
    (60_000_000, "60"),
];

/// Bucket bounds for connection lifetimes, in microseconds, from 1 ms to 1 day.
const LIFETIME_BOUNDS: &[(u64, &str)] = &[
    (1_000, "0.001"),
    (10_000, "0.01"),
    (100_000, "0.1"),
    (1_000_000, "1"),
    (10_000_000, "10"),
    (60_000_000, "60"),
    (300_000_000, "300"),
    (900_000_000, "900"),
    (3_600_000_000, "3600"),
    (14_400_000_000, "14400"),
    (43_200_000_000, "43200"),
    (86_400_000_000, "86400"),
];

/// Bucket bounds for bytes per connection: powers of 4 from 64 B to 1 TiB.
const BYTES_BOUNDS: &[(u64, &str)] = &[
    (1 << 6, "64"),
    (1 << 8, "256"),
    (1 << 10, "1024"),
    (1 << 12, "4096"),
    (1 << 14, "16384"),
    (1 << 16, "65536"),
    (1 << 18, "262144"),
    (1 << 20, "1048576"),
    (1 << 22, "4194304"),
    (1 << 24, "16777216"),
    (1 << 26, "67108864"),
    (1 << 28, "268435456"),
    (1 << 30, "1073741824"),
    (1 << 32, "4294967296"),
    (1 << 34, "17179869184"),
    (1 << 36, "68719476736"),
    (1 << 38, "274877906944"),
    (1 << 40, "1099511627776"),
];

/// Renders the whole page.
pub(super) fn render(snapshot: &Snapshot) -> String {
    let mut out = String::with_capacity(16 * 1024);
    let scopes = scopes(snapshot);

    write_counters(&mut out, &scopes);
    write_handshake_counters(&mut out, &scopes);

    let duration_families = [
        (
            HistogramKind::Handshake,
            "tlsplice_handshake_duration_seconds",
            "TLS handshake time, from the first ClientHello byte to the end of the handshake.",
            LATENCY_BOUNDS,
        ),
        (
            HistogramKind::BackendConnect,
            "tlsplice_backend_connect_duration_seconds",
            "Time to connect to the backend.",
            LATENCY_BOUNDS,
        ),
        (
            HistogramKind::FirstByte,
            "tlsplice_first_byte_duration_seconds",
            "Time from the client's first application byte to the backend's first byte.",
            LATENCY_BOUNDS,
        ),
        (
            HistogramKind::Lifetime,
            "tlsplice_connection_duration_seconds",
            "Connection lifetime, from accept to close.",
            LIFETIME_BOUNDS,
        ),
    ];
    for (kind, name, help, bounds) in duration_families {
        write_header(&mut out, name, help, "histogram");
        for (service, metrics) in &scopes {
            let labels = service_labels(*service);
            write_histogram(&mut out, name, &labels, metrics, kind, bounds, 1e6);
        }
    }

    let name = "tlsplice_connection_transferred_bytes";
    write_header(
        &mut out,
        name,
        "Application bytes relayed per closed connection, by direction.",
        "histogram",
    );
    for (service, metrics) in &scopes {
        for (kind, direction) in [
            (HistogramKind::BytesUp, "client_to_backend"),
            (HistogramKind::BytesDown, "backend_to_client"),
        ] {
            let mut labels = service_labels(*service);
            labels.push(("direction", direction.to_owned()));
            write_histogram(&mut out, name, &labels, metrics, kind, BYTES_BOUNDS, 1.0);
        }
    }

    out
}

/// Lists the total first, with no service name, then each service.
fn scopes(snapshot: &Snapshot) -> Vec<(Option<&str>, &ServiceMetrics)> {
    let mut scopes = vec![(None, &snapshot.total)];
    for (name, metrics) in &snapshot.services {
        scopes.push((Some(name.as_str()), metrics));
    }
    scopes
}

fn service_labels(service: Option<&str>) -> Vec<(&'static str, String)> {
    match service {
        Some(name) => vec![("service", name.to_owned())],
        None => Vec::new(),
    }
}

fn write_counters(out: &mut String, scopes: &[(Option<&str>, &ServiceMetrics)]) {
    let name = "tlsplice_connections_accepted_total";
    write_header(out, name, "Accepted client connections.", "counter");
    for (service, metrics) in scopes {
        write_sample(out, name, &service_labels(*service), metrics.accepted);
    }

    let name = "tlsplice_connections_active";
    write_header(
        out,
        name,
        "Client connections accepted and not yet closed.",
        "gauge",
    );
    for (service, metrics) in scopes {
        write_sample(out, name, &service_labels(*service), metrics.active());
    }

    let name = "tlsplice_connections_closed_total";
    write_header(
        out,
        name,
        "Closed client connections, by reason.",
        "counter",
    );
    for (service, metrics) in scopes {
        for reason in CloseReason::ALL {
            let mut labels = service_labels(*service);
            labels.push(("reason", reason.as_str().to_owned()));
            write_sample(out, name, &labels, metrics.closed_by(reason));
        }
    }

    let name = "tlsplice_handshake_failures_total";
    write_header(out, name, "Failed TLS handshakes, by reason.", "counter");
    for (service, metrics) in scopes {
        for failure in HandshakeFailure::ALL {
            let mut labels = service_labels(*service);
            labels.push(("reason", failure.as_str().to_owned()));
            write_sample(out, name, &labels, metrics.handshake_failures_by(failure));
        }
    }

    let name = "tlsplice_backend_connect_failures_total";
    write_header(
        out,
        name,
        "Backend connection attempts that failed or timed out.",
        "counter",
    );
    for (service, metrics) in scopes {
        let value = metrics.backend_connect_failures;
        write_sample(out, name, &service_labels(*service), value);
    }

    let name = "tlsplice_data_path_connections_total";
    write_header(
        out,
        name,
        "Closed connections, by the data path that relayed them.",
        "counter",
    );
    for (service, metrics) in scopes {
        for path in DataPath::ALL {
            let mut labels = service_labels(*service);
            labels.push(("path", path.as_str().to_owned()));
            write_sample(out, name, &labels, metrics.data_path_count(path));
        }
    }
}

fn write_handshake_counters(out: &mut String, scopes: &[(Option<&str>, &ServiceMetrics)]) {
    let name = "tlsplice_handshakes_total";
    write_header(
        out,
        name,
        "Completed TLS handshakes, by protocol version and cipher suite.",
        "counter",
    );
    for (service, metrics) in scopes {
        for entry in &metrics.handshakes {
            let mut labels = service_labels(*service);
            labels.push(("version", version_name(entry.version)));
            labels.push(("cipher_suite", suite_name(entry.suite)));
            write_sample(out, name, &labels, entry.count);
        }
    }
}

fn write_header(out: &mut String, name: &str, help: &str, kind: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

fn write_sample(out: &mut String, name: &str, labels: &[(&str, String)], value: impl Display) {
    out.push_str(name);
    write_labels(out, labels);
    let _ = writeln!(out, " {value}");
}

fn write_labels(out: &mut String, labels: &[(&str, String)]) {
    if labels.is_empty() {
        return;
    }
    out.push('{');
    for (index, (key, value)) in labels.iter().enumerate() {
        if index > 0 {
            out.push(',');
        }
        out.push_str(key);
        out.push_str("=\"");
        escape_label_value(out, value);
        out.push('"');
    }
    out.push('}');
}

/// Escapes a label value as the text format requires: backslash, double quote
/// and line feed.
fn escape_label_value(out: &mut String, value: &str) {
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            _ => out.push(c),
        }
    }
}

/// Writes the cumulative buckets, `_sum` and `_count` of one histogram.
/// `divisor` turns recorded units into the exported unit (1e6 for seconds).
fn write_histogram(
    out: &mut String,
    name: &str,
    labels: &[(&str, String)],
    metrics: &ServiceMetrics,
    kind: HistogramKind,
    bounds: &[(u64, &str)],
    divisor: f64,
) {
    let recorder = metrics.histogram(kind);
    let counts = cumulative_counts(recorder.histogram(), bounds);

    let bucket_name = format!("{name}_bucket");
    for ((_, le), count) in bounds.iter().zip(&counts) {
        let mut bucket_labels = labels.to_vec();
        bucket_labels.push(("le", (*le).to_owned()));
        write_sample(out, &bucket_name, &bucket_labels, count);
    }
    let mut infinity_labels = labels.to_vec();
    infinity_labels.push(("le", "+Inf".to_owned()));
    write_sample(out, &bucket_name, &infinity_labels, recorder.count());

    let sum = if divisor == 1.0 {
        recorder.sum().to_string()
    } else {
        (recorder.sum() as f64 / divisor).to_string()
    };
    write_sample(out, &format!("{name}_sum"), labels, sum);
    write_sample(out, &format!("{name}_count"), labels, recorder.count());
}

/// Counts the values at or below each bound in one pass over the recorded values.
/// A value is placed by the lowest value of its HdrHistogram bucket, so a value
/// less than 0.1 % above a bound may be counted at that bound.
fn cumulative_counts(histogram: &Histogram<u64>, bounds: &[(u64, &str)]) -> Vec<u64> {
    let mut per_bucket = vec![0u64; bounds.len()];
    for item in histogram.iter_recorded() {
        let value = histogram.lowest_equivalent(item.value_iterated_to());
        if let Some(index) = bounds.iter().position(|(bound, _)| value <= *bound) {
            per_bucket[index] += item.count_at_value();
        }
    }

    let mut running = 0;
    per_bucket
        .into_iter()
        .map(|count| {
            running += count;
            running
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escape_label_value_escapes_specials() {
        let mut out = String::new();
        escape_label_value(&mut out, "a\\b\"c\nd");
        assert_eq!(out, "a\\\\b\\\"c\\nd");
    }

    #[test]
    fn cumulative_counts_include_bound() {
        let mut histogram = Histogram::<u64>::new(3).unwrap();
        histogram.auto(true);
        for value in [50, 100, 101, 1_000, 5_000_000] {
            histogram.record(value).unwrap();
        }
        let bounds = &[(100, "a"), (1_000, "b"), (10_000, "c")];
        assert_eq!(cumulative_counts(&histogram, bounds), vec![2, 4, 4]);
    }

    #[test]
    fn bounds_ascend_and_match_labels() {
        for (bounds, divisor) in [
            (LATENCY_BOUNDS, 1e6),
            (LIFETIME_BOUNDS, 1e6),
            (BYTES_BOUNDS, 1.0),
        ] {
            for pair in bounds.windows(2) {
                assert!(pair[0].0 < pair[1].0, "{} before {}", pair[0].1, pair[1].1);
            }
            for (value, label) in bounds {
                let parsed: f64 = label.parse().unwrap();
                assert_eq!(parsed, *value as f64 / divisor, "label {label}");
            }
        }
    }
}
