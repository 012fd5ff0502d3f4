//! The `/stats.json` page.

use base64::Engine;
use hdrhistogram::serialization::{Serializer, V2DeflateSerializer};
use serde_json::{json, Map, Value};

use super::record::{HistogramKind, Recorder, ServiceMetrics, Unit};
use super::registry::Snapshot;
use super::{suite_name, version_name, DataPath, HandshakeFailure};
use crate::log::CloseReason;

/// Renders the whole page; the layout is described in `docs/metrics.md`.
pub(super) fn render(snapshot: &Snapshot) -> String {
    let mut serializer = V2DeflateSerializer::new();
    let timestamp_ms = snapshot
        .taken_at
        .duration_since(std::time::UNIX_EPOCH)
        .map(|elapsed| elapsed.as_millis() as u64)
        .unwrap_or(0);

    let services: Vec<Value> = snapshot
        .services
        .iter()
        .map(|(name, metrics)| {
            let mut object = service_object(metrics, &mut serializer);
            object.insert("name".to_owned(), Value::String(name.clone()));
            Value::Object(object)
        })
        .collect();

    let document = json!({
        "timestamp_ms": timestamp_ms,
        "total": Value::Object(service_object(&snapshot.total, &mut serializer)),
        "services": services,
    });
    let mut text = document.to_string();
    text.push('\n');
    text
}

fn service_object(
    metrics: &ServiceMetrics,
    serializer: &mut V2DeflateSerializer,
) -> Map<String, Value> {
    let closed: Map<String, Value> = CloseReason::ALL
        .iter()
        .map(|reason| {
            (
                reason.as_str().to_owned(),
                json!(metrics.closed_by(*reason)),
            )
        })
        .collect();
    let failures: Map<String, Value> = HandshakeFailure::ALL
        .iter()
        .map(|failure| {
            let count = metrics.handshake_failures_by(*failure);
            (failure.as_str().to_owned(), json!(count))
        })
        .collect();
    let paths: Map<String, Value> = DataPath::ALL
        .iter()
        .map(|path| {
            (
                path.as_str().to_owned(),
                json!(metrics.data_path_count(*path)),
            )
        })
        .collect();
    let versions: Map<String, Value> = metrics
        .version_counts()
        .into_iter()
        .map(|(code, count)| (version_name(code), json!(count)))
        .collect();
    let suites: Map<String, Value> = metrics
        .suite_counts()
        .into_iter()
        .map(|(code, count)| (suite_name(code), json!(count)))
        .collect();

    let counters = json!({
        "accepted": metrics.accepted,
        "active": metrics.active(),
        "closed": closed,
        "handshake_failures": failures,
        "backend_connect_failures": metrics.backend_connect_failures,
        "data_path": paths,
        "tls_versions": versions,
        "cipher_suites": suites,
    });

    let mut histograms = Map::new();
    for kind in HistogramKind::ALL {
        let value = histogram_object(metrics.histogram(kind), kind.unit(), serializer);
        histograms.insert(kind.as_str().to_owned(), value);
    }

    let mut object = Map::new();
    object.insert("counters".to_owned(), counters);
    object.insert("histograms".to_owned(), Value::Object(histograms));
    object
}

fn histogram_object(
    recorder: &Recorder,
    unit: Unit,
    serializer: &mut V2DeflateSerializer,
) -> Value {
    let histogram = recorder.histogram();
    let mut encoded = Vec::new();
    let hdr = match serializer.serialize(histogram, &mut encoded) {
        Ok(_) => Value::String(base64::engine::general_purpose::STANDARD.encode(&encoded)),
        // The V2 format rejects only counts above i64::MAX, so this should not
        // happen. The statistics are still useful without the encoding.
        Err(error) => {
            log::warn!("metrics: histogram serialization failed: {error:?}");
            Value::Null
        }
    };
    let unit = match unit {
        Unit::Microseconds => "us",
        Unit::Bytes => "bytes",
    };
    let is_empty = recorder.count() == 0;
    let mean = if is_empty { 0.0 } else { histogram.mean() };

    json!({
        "unit": unit,
        "count": recorder.count(),
        "sum": recorder.sum(),
        "min": if is_empty { 0 } else { histogram.min() },
        "mean": mean,
        "p50": histogram.value_at_quantile(0.5),
        "p90": histogram.value_at_quantile(0.9),
        "p99": histogram.value_at_quantile(0.99),
        "p99_9": histogram.value_at_quantile(0.999),
        "p99_99": histogram.value_at_quantile(0.9999),
        "max": histogram.max(),
        "hdr": hdr,
    })
}
