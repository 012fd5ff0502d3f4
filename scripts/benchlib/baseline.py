"""The --quick regression check of ratios to haproxy against perf/baseline.json."""

import json
import os

from benchlib.report import METRICS
from benchlib.system import log

# Metrics the --quick regression check compares, as ratios to haproxy, with the
# relative change each may make before it counts as a regression. The tolerances
# are estimates from the spread of the stunnel to haproxy ratio over 5 to 6 runs on
# the shared 2-CPU development machine: full handshakes 0.48 to 0.51, downloads
# 0.85 to 1.06, RSS 3.65 to 4.24, and up to 2x for resumed handshakes, keep-alive
# requests and uploads. Wall-clock figures and latencies are not gated because the
# p99 latency ratio ranged from 1.5 to 16.9.
GATED_METRICS = {
    "full_handshakes_per_cpu_s": 0.15,
    "resumed_handshakes_per_cpu_s": 0.5,
    "keepalive_requests_per_cpu_s": 0.5,
    "download_bytes_per_cpu_s": 0.25,
    "upload_bytes_per_cpu_s": 0.5,
    "rss_per_idle_connection_bytes": 0.3,
}


def compare_with_baseline(summary, baseline_path, tolerance_override=None):
    """Compare ratios to haproxy with the baseline. Returns a list of regression messages.

    Each metric uses the tolerance stored with it in the baseline, or
    tolerance_override when it is given.
    """
    if not os.path.exists(baseline_path):
        log(f"no baseline at {baseline_path}; run with --update-baseline to create it")
        return []
    with open(baseline_path) as baseline_file:
        baseline = json.load(baseline_file)
    higher_better = {key: higher for key, _, _, _, higher in METRICS}
    regressions = []
    for key, proxies in baseline.get("ratios", {}).items():
        tolerance = tolerance_override
        if tolerance is None:
            tolerance = baseline.get("tolerances", {}).get(key, GATED_METRICS.get(key, 0.25))
        for proxy, expected in proxies.items():
            actual = summary.get(key, {}).get(proxy, {}).get("ratio")
            if actual is None:
                log(f"baseline check: {key} for {proxy} was not measured in this run")
                continue
            if higher_better[key]:
                regressed = actual < expected * (1 - tolerance)
            else:
                regressed = actual > expected * (1 + tolerance)
            status = "REGRESSION" if regressed else "ok"
            log(f"baseline check: {key} {proxy}/haproxy {actual:.3f} (baseline {expected:.3f}, "
                f"tolerance {tolerance:.0%}): {status}")
            if regressed:
                regressions.append(f"{key}: {proxy}/haproxy ratio {actual:.3f}, baseline {expected:.3f}, "
                                   f"tolerance {tolerance:.0%}")
    return regressions


def load_callgrind_baseline(baseline_path):
    """Return the baseline's callgrind instruction counts, or {} without a baseline."""
    if not os.path.exists(baseline_path):
        return {}
    with open(baseline_path) as baseline_file:
        return json.load(baseline_file).get("callgrind_instructions", {})


def write_baseline(summary, baseline_path, source, callgrind=None):
    """Write the gated ratios and instruction counts of this run as the new baseline."""
    ratios = {}
    for key in GATED_METRICS:
        for proxy, entry in summary.get(key, {}).items():
            if proxy != "haproxy" and entry.get("ratio") is not None:
                ratios.setdefault(key, {})[proxy] = round(entry["ratio"], 4)
    baseline = {"source": source, "tolerances": GATED_METRICS, "ratios": ratios,
                "callgrind_instructions": callgrind or {}}
    with open(baseline_path, "w") as out:
        json.dump(baseline, out, indent=2, sort_keys=True)
        out.write("\n")
    log(f"wrote baseline {baseline_path}")
