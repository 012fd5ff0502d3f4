"""Summary of the runs (per-proxy medians and ratios to haproxy) as Markdown and SVG."""

import statistics

# Summary metrics: (key, scenario, label, unit, True when higher is better).
METRICS = [
    ("full_handshakes_per_cpu_s", "handshake", "full handshakes per proxy CPU-second", "1/s", True),
    ("full_handshakes_per_s", "handshake", "full handshakes per second (wall)", "1/s", True),
    ("resumed_handshakes_per_cpu_s", "resumed", "resumed handshakes per proxy CPU-second", "1/s", True),
    ("keepalive_requests_per_cpu_s", "keepalive", "keep-alive requests per proxy CPU-second", "1/s", True),
    ("keepalive_requests_per_s", "keepalive", "keep-alive requests per second (wall)", "1/s", True),
    ("download_bytes_per_cpu_s", "download", "download bytes per proxy CPU-second", "B/s", True),
    ("download_bytes_per_s", "download", "download throughput (wall)", "B/s", True),
    ("upload_bytes_per_cpu_s", "upload", "upload bytes per proxy CPU-second", "B/s", True),
    ("upload_bytes_per_s", "upload", "upload throughput (wall)", "B/s", True),
    ("latency_p50_us", "latency", "latency p50 at fixed rate", "us", False),
    ("latency_p99_us", "latency", "latency p99 at fixed rate", "us", False),
    ("latency_p999_us", "latency", "latency p99.9 at fixed rate", "us", False),
    ("latency_max_us", "latency", "latency max at fixed rate", "us", False),
    ("rss_per_idle_connection_bytes", "rss", "RSS per idle TLS connection", "B", False),
    ("hold_errors", "hold", "errors while holding connections", "", False),
]


def metric_values(runs, key):
    """Return {proxy: [value per round]} for one summary metric."""
    values = {}

    def add(proxy, value):
        if value is not None:
            values.setdefault(proxy, []).append(value)

    def per_cpu(count, cpu):
        return count / cpu if cpu > 0 else None

    for run in runs:
        load, proxy, scenario = run.get("load"), run["proxy"], run["scenario"]
        if not load:
            continue
        cpu = run["proxy_cpu_s"]
        if key == "full_handshakes_per_cpu_s" and scenario == "handshake":
            add(proxy, per_cpu(load["handshakes"], cpu))
        elif key == "full_handshakes_per_s" and scenario == "handshake":
            add(proxy, load["handshakes_per_s"])
        elif key == "resumed_handshakes_per_cpu_s" and scenario == "resumed":
            add(proxy, per_cpu(load["handshakes"], cpu))
        elif key == "keepalive_requests_per_cpu_s" and scenario == "keepalive":
            add(proxy, per_cpu(load["requests"], cpu))
        elif key == "keepalive_requests_per_s" and scenario == "keepalive":
            add(proxy, load["requests_per_s"])
        elif key == "download_bytes_per_cpu_s" and scenario == "download":
            add(proxy, per_cpu(load["bytes_received"], cpu))
        elif key == "download_bytes_per_s" and scenario == "download":
            add(proxy, load["throughput_bytes_per_s"])
        elif key == "upload_bytes_per_cpu_s" and scenario == "upload":
            add(proxy, per_cpu(load["bytes_sent"], cpu))
        elif key == "upload_bytes_per_s" and scenario == "upload":
            add(proxy, load["throughput_bytes_per_s"])
        elif key.startswith("latency_") and scenario == "latency":
            quantile = {"latency_p50_us": "p50", "latency_p99_us": "p99", "latency_p999_us": "p99.9",
                        "latency_max_us": "max"}[key]
            add(proxy, load["latency_us"].get(quantile))
        elif key == "rss_per_idle_connection_bytes" and scenario == "rss":
            add(proxy, run.get("rss_per_connection_bytes"))
        elif key == "hold_errors" and scenario == "hold":
            add(proxy, load["errors"])
    return values


def summarize(runs, proxy_names):
    """Return {metric: {proxy: {"value": median, "ratio": value / haproxy's}}}."""
    summary = {}
    for key, _, _, _, _ in METRICS:
        values = metric_values(runs, key)
        medians = {proxy: statistics.median(v) for proxy, v in values.items() if v}
        reference = medians.get("haproxy")
        entry = {}
        for proxy in proxy_names:
            if proxy not in medians:
                continue
            ratio = medians[proxy] / reference if reference else None
            entry[proxy] = {"value": medians[proxy], "ratio": ratio, "rounds": len(values[proxy])}
        summary[key] = entry
    return summary


def privsep_ratios(runs):
    """Return, per round in order, tlsplice's full handshakes per CPU-second divided by
    tlsplice-noprivsep's in the same round, for the rounds where both were measured."""
    rates = {}
    for run in runs:
        load, cpu = run.get("load"), run.get("proxy_cpu_s", 0)
        if run["scenario"] == "handshake" and load and cpu > 0:
            rates[(run["proxy"], run["round"])] = load["handshakes"] / cpu
    rounds = sorted({round_ for _, round_ in rates})
    return [rates[("tlsplice", r)] / rates[("tlsplice-noprivsep", r)] for r in rounds
            if ("tlsplice", r) in rates and ("tlsplice-noprivsep", r) in rates]


def format_value(value, unit):
    if value is None:
        return "-"
    if unit == "B/s":
        return f"{value / 1e6:,.1f} MB/s"
    if unit == "B":
        return f"{value / 1024:,.1f} KiB"
    if unit == "us":
        return f"{value:,.0f} us"
    if unit == "1/s":
        return f"{value:,.0f}/s"
    return f"{value:,.0f}"


def write_markdown(path, result):
    """Write the summary table and the run's notes as Markdown."""
    lines = [f"# tlsplice benchmark, {result['date']} on {result['machine']['host']}", ""]
    lines.append(f"Machine: {result['machine']['cpu']}, {result['machine']['cpus']} CPUs, "
                 f"kernel {result['machine']['kernel']}. Profile `{result['profile']}`, "
                 f"{result['settings']['rounds']} round(s); each figure is the median over rounds.")
    lines.append("Proxies run on CPU 0; tlsplice-load, nginx and wrk share CPU 1. The machine is "
                 "shared with other work, so compare ratios within this run, not across runs.")
    lines.append("")
    lines.extend(markdown_table(result))
    lines.append("")
    lines.extend(markdown_notes(result))
    with open(path, "w") as out:
        out.write("\n".join(lines))


def markdown_table(result):
    """Return the lines of the table: one row per metric, values per proxy, then ratios."""
    proxies = result["proxies"]
    lines = []
    header = "| metric | " + " | ".join(proxies) + " | " + " | ".join(f"{p} / haproxy" for p in proxies if p != "haproxy") + " |"
    lines.append(header)
    lines.append("|" + " --- |" * (1 + len(proxies) + len([p for p in proxies if p != "haproxy"])))
    for key, _, label, unit, higher_better in METRICS:
        entry = result["summary"].get(key, {})
        cells = [format_value(entry.get(p, {}).get("value"), unit) for p in proxies]
        ratios = []
        for proxy in proxies:
            if proxy == "haproxy":
                continue
            ratio = entry.get(proxy, {}).get("ratio")
            ratios.append("-" if ratio is None else f"{ratio:.2f}")
        direction = "higher is better" if higher_better else "lower is better"
        lines.append(f"| {label} ({direction}) | " + " | ".join(cells) + " | " + " | ".join(ratios) + " |")
    return lines


def markdown_notes(result):
    """Return the paragraphs below the table: wrk check, sizes, latency rate, notes, versions."""
    lines = []
    check = result.get("wrk_check", {})
    if check.get("per_cpu_ratio"):
        lines.append(f"Load generator check against wrk (keep-alive through haproxy, {check['connections']} "
                     f"connections, {check['seconds']:g} s each, back to back): requests per haproxy CPU-second "
                     f"{check['wrk_requests_per_proxy_cpu_s']:,.0f} with wrk and "
                     f"{check['tlsplice_load_requests_per_proxy_cpu_s']:,.0f} with tlsplice-load "
                     f"(ratio {check['per_cpu_ratio']:.2f}). Wall rates: wrk {check['wrk_requests_per_s']:,.0f}/s, "
                     f"tlsplice-load {check['tlsplice_load_requests_per_s']:,.0f}/s (ratio {check['wall_ratio']:.2f}); "
                     "both clients share CPU 1 with nginx, so the wall rate is mostly the client's own limit. "
                     f"Errors: wrk {'; '.join(check['wrk_errors']) or 'none'}, "
                     f"tlsplice-load {check['tlsplice_load_errors']}.")
        lines.append("")
    elif check:
        lines.append(f"Load generator check against wrk: not available ({check.get('error') or check.get('skipped')}).")
        lines.append("")
    ratios = privsep_ratios(result.get("runs", []))
    if ratios:
        lines.append("Privilege separation: full handshakes per CPU-second of tlsplice divided by "
                     "tlsplice-noprivsep's, the two measured one after the other in each round: "
                     + ", ".join(f"{ratio:.3f}" for ratio in ratios)
                     + f" (median {statistics.median(ratios):.3f}).")
        lines.append("")
    lines.append(f"Connections: {result['settings']['rss_connections']} for RSS per idle connection, "
                 f"{result['hold_connections']} in the hold scenario.")
    lines.append("")
    if result.get("latency_rate"):
        lines.append(f"Latency scenario: offered rate {result['latency_rate']:,.0f} requests/s over "
                     f"{result['settings']['latency_connections']} keep-alive connections, latency from each "
                     "request's intended send time (coordinated omission corrected).")
        lines.append("")
    if result["notes"]:
        lines.append("Notes:")
        lines.extend(f"- {note}" for note in result["notes"])
        lines.append("")
    lines.append("Versions: " + "; ".join(f"{name}: {version}" for name, version in result["versions"].items()))
    lines.append("")
    return lines


def write_svg(path, result):
    """Draw one horizontal bar per proxy and metric, as a ratio to haproxy."""
    proxies = result["proxies"]
    colors = {"haproxy": "#4e79a7", "stunnel": "#f28e2b", "tlsplice": "#59a14f"}
    rows = [(key, label, unit, higher) for key, _, label, unit, higher in METRICS if result["summary"].get(key)]
    bar, gap, left, width = 12, 14, 330, 420

    max_ratio = 2.0
    for key, _, _, _ in rows:
        for proxy in proxies:
            ratio = result["summary"][key].get(proxy, {}).get("ratio")
            if ratio:
                max_ratio = max(max_ratio, min(ratio, 10.0))
    scale = width / max_ratio
    height = 70 + len(rows) * (len(proxies) * bar + gap) + 30
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{left + width + 170}" height="{height}" '
           'font-family="sans-serif" font-size="11">',
           '<rect width="100%" height="100%" fill="white"/>',
           f'<text x="10" y="20" font-size="14" font-weight="bold">tlsplice benchmark {result["date"]} '
           f'on {escape(result["machine"]["host"])}: ratio to haproxy (1.0 = haproxy)</text>']

    legend_x = 10
    for proxy in proxies:
        out.append(f'<rect x="{legend_x}" y="32" width="10" height="10" fill="{colors.get(proxy, "#999")}"/>')
        out.append(f'<text x="{legend_x + 14}" y="41">{escape(proxy)}</text>')
        legend_x += 90

    one_x = left + scale
    bottom = height - 30
    out.append(f'<line x1="{one_x:.1f}" y1="55" x2="{one_x:.1f}" y2="{bottom}" stroke="#888" stroke-dasharray="3,3"/>')
    out.append(f'<text x="{one_x - 8:.1f}" y="{bottom + 14}">1.0</text>')

    y = 60
    for key, label, unit, higher in rows:
        note = "higher is better" if higher else "lower is better"
        out.append(f'<text x="10" y="{y + bar}">{escape(label)}</text>')
        out.append(f'<text x="10" y="{y + bar + 12}" fill="#666">({note})</text>')
        for proxy in proxies:
            entry = result["summary"][key].get(proxy, {})
            ratio = entry.get("ratio")
            if ratio is not None:
                length = max(1.0, min(ratio, max_ratio) * scale)
                value = escape(format_value(entry.get("value"), unit))
                out.append(f'<rect x="{left}" y="{y}" width="{length:.1f}" height="{bar - 2}" '
                           f'fill="{colors.get(proxy, "#999")}"/>')
                out.append(f'<text x="{left + length + 4:.1f}" y="{y + bar - 3}">{ratio:.2f}</text>')
                out.append(f'<text x="{left + length + 34:.1f}" y="{y + bar - 3}" fill="#666">{value}</text>')
            elif entry.get("value") is not None:
                # No ratio when haproxy's value is 0 (hold errors, say), so show the value.
                value = escape(format_value(entry["value"], unit))
                out.append(f'<text x="{left + 4}" y="{y + bar - 3}" fill="#666">{value} (no ratio)</text>')
            else:
                out.append(f'<text x="{left + 4}" y="{y + bar - 3}" fill="#666">not measured</text>')
            y += bar
        y += gap
    out.append("</svg>")

    with open(path, "w") as svg:
        svg.write("\n".join(out) + "\n")


def escape(text):
    return str(text).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
