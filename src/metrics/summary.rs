//! The human-readable summary written to the log.

use std::fmt::Write;

use super::record::{HistogramKind, ServiceMetrics, Unit};
use super::registry::Snapshot;

impl Snapshot {
    /// Returns one line per service and total with its counters, and one indented
    /// line per non-empty histogram with count, p50, p99 and max.
    pub fn summary(&self) -> String {
        let mut text = String::new();
        for (name, service) in &self.services {
            write_service(&mut text, &format!("service {name}"), service);
        }
        write_service(&mut text, "all services", &self.total);
        text
    }
}

fn write_service(text: &mut String, title: &str, metrics: &ServiceMetrics) {
    let _ = writeln!(
        text,
        "{title}: accepted {}, active {}, closed {}, handshake failures {}, backend connect failures {}",
        metrics.accepted,
        metrics.active(),
        metrics.closed_total(),
        metrics.handshake_failures.iter().sum::<u64>(),
        metrics.backend_connect_failures,
    );

    for kind in HistogramKind::ALL {
        let recorder = metrics.histogram(kind);
        let histogram = recorder.histogram();
        if recorder.count() == 0 {
            continue;
        }
        let unit = kind.unit();
        let _ = writeln!(
            text,
            "  {}: count {}, p50 {}, p99 {}, max {}",
            kind.as_str(),
            recorder.count(),
            format_value(histogram.value_at_quantile(0.5), unit),
            format_value(histogram.value_at_quantile(0.99), unit),
            format_value(histogram.max(), unit),
        );
    }
}

/// Formats microseconds as us, ms or s and bytes as B, KiB, MiB, GiB or TiB.
pub(super) fn format_value(value: u64, unit: Unit) -> String {
    match unit {
        Unit::Microseconds => {
            if value < 1_000 {
                format!("{value}us")
            } else if value < 1_000_000 {
                format!("{:.2}ms", value as f64 / 1e3)
            } else {
                format!("{:.3}s", value as f64 / 1e6)
            }
        }
        Unit::Bytes => {
            const UNITS: [&str; 4] = ["KiB", "MiB", "GiB", "TiB"];
            if value < 1024 {
                return format!("{value}B");
            }
            let mut scaled = value as f64 / 1024.0;
            let mut index = 0;
            while scaled >= 1024.0 && index + 1 < UNITS.len() {
                scaled /= 1024.0;
                index += 1;
            }
            format!("{scaled:.1}{}", UNITS[index])
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn format_value_picks_unit() {
        assert_eq!(format_value(999, Unit::Microseconds), "999us");
        assert_eq!(format_value(1_500, Unit::Microseconds), "1.50ms");
        assert_eq!(format_value(2_500_000, Unit::Microseconds), "2.500s");
        assert_eq!(format_value(100, Unit::Bytes), "100B");
        assert_eq!(format_value(1536, Unit::Bytes), "1.5KiB");
        assert_eq!(format_value(1 << 40, Unit::Bytes), "1.0TiB");
    }
}
