"""Unit tests for the summary, baseline and output code of scripts/bench (benchlib).

Run with: python3 -m unittest discover -s scripts -p 'test_*.py'
"""

import json
import os
import sys
import tempfile
import unittest
import xml.etree.ElementTree as ElementTree

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from benchlib import baseline, report, system  # noqa: E402


def load_report(**fields):
    report = {"handshakes": 0, "handshakes_per_s": 0.0, "requests": 0, "requests_per_s": 0.0,
              "bytes_received": 0, "bytes_sent": 0, "throughput_bytes_per_s": 0.0, "errors": 0,
              "latency_us": {"count": 0}}
    report.update(fields)
    return report


def run(scenario, proxy, cpu, **fields):
    return {"scenario": scenario, "proxy": proxy, "round": 0, "proxy_cpu_s": cpu, "load": load_report(**fields)}


RUNS = [
    run("handshake", "haproxy", 2.0, handshakes=4000, handshakes_per_s=800.0),
    run("handshake", "stunnel", 2.0, handshakes=2000, handshakes_per_s=400.0),
    run("latency", "haproxy", 1.0, latency_us={"p50": 100, "p99": 1000, "p99.9": 2000, "max": 3000}),
    run("latency", "stunnel", 1.0, latency_us={"p50": 200, "p99": 3000, "p99.9": 4000, "max": 5000}),
    {"scenario": "download", "proxy": "stunnel", "round": 0, "error": "did not start"},
]


class SummaryTest(unittest.TestCase):
    def test_per_cpu_ratio(self):
        summary = report.summarize(RUNS, ["haproxy", "stunnel"])
        entry = summary["full_handshakes_per_cpu_s"]
        self.assertEqual(entry["haproxy"]["value"], 2000.0)
        self.assertEqual(entry["stunnel"]["value"], 1000.0)
        self.assertEqual(entry["stunnel"]["ratio"], 0.5)
        self.assertEqual(entry["haproxy"]["ratio"], 1.0)

    def test_median_over_rounds(self):
        runs = [run("keepalive", "haproxy", 1.0, requests=n) for n in (100, 300, 200)]
        summary = report.summarize(runs, ["haproxy"])
        self.assertEqual(summary["keepalive_requests_per_cpu_s"]["haproxy"]["value"], 200.0)
        self.assertEqual(summary["keepalive_requests_per_cpu_s"]["haproxy"]["rounds"], 3)

    def test_zero_cpu_skipped(self):
        summary = report.summarize([run("handshake", "haproxy", 0.0, handshakes=10)], ["haproxy"])
        self.assertNotIn("haproxy", summary["full_handshakes_per_cpu_s"])

    def test_failed_run_ignored(self):
        summary = report.summarize(RUNS, ["haproxy", "stunnel"])
        self.assertEqual(summary["download_bytes_per_cpu_s"], {})


class BaselineTest(unittest.TestCase):
    def setUp(self):
        self.dir = tempfile.TemporaryDirectory()
        self.path = os.path.join(self.dir.name, "baseline.json")

    def tearDown(self):
        self.dir.cleanup()

    def write(self, ratios, tolerances=None):
        with open(self.path, "w") as out:
            json.dump({"tolerances": tolerances or {}, "ratios": ratios}, out)

    def test_throughput_drop_regresses(self):
        self.write({"full_handshakes_per_cpu_s": {"stunnel": 0.8}})
        summary = report.summarize(RUNS, ["haproxy", "stunnel"])
        regressions = baseline.compare_with_baseline(summary, self.path, 0.25)
        self.assertEqual(len(regressions), 1)
        self.assertIn("full_handshakes_per_cpu_s", regressions[0])

    def test_throughput_within_tolerance(self):
        self.write({"full_handshakes_per_cpu_s": {"stunnel": 0.6}})
        summary = report.summarize(RUNS, ["haproxy", "stunnel"])
        self.assertEqual(baseline.compare_with_baseline(summary, self.path, 0.25), [])

    def test_latency_rise_regresses(self):
        self.write({"latency_p99_us": {"stunnel": 2.0}}, {"latency_p99_us": 0.25})
        summary = report.summarize(RUNS, ["haproxy", "stunnel"])
        self.assertEqual(len(baseline.compare_with_baseline(summary, self.path)), 1)

    def test_stored_tolerance_used(self):
        self.write({"latency_p99_us": {"stunnel": 2.0}}, {"latency_p99_us": 1.0})
        summary = report.summarize(RUNS, ["haproxy", "stunnel"])
        self.assertEqual(baseline.compare_with_baseline(summary, self.path), [])

    def test_override_beats_stored_tolerance(self):
        self.write({"latency_p99_us": {"stunnel": 2.0}}, {"latency_p99_us": 1.0})
        summary = report.summarize(RUNS, ["haproxy", "stunnel"])
        self.assertEqual(len(baseline.compare_with_baseline(summary, self.path, 0.25)), 1)

    def test_latency_drop_passes(self):
        self.write({"latency_p99_us": {"stunnel": 5.0}})
        summary = report.summarize(RUNS, ["haproxy", "stunnel"])
        self.assertEqual(baseline.compare_with_baseline(summary, self.path, 0.25), [])

    def test_missing_proxy_passes(self):
        self.write({"full_handshakes_per_cpu_s": {"tlsplice": 1.5}})
        summary = report.summarize(RUNS, ["haproxy", "stunnel"])
        self.assertEqual(baseline.compare_with_baseline(summary, self.path, 0.25), [])

    def test_missing_baseline_passes(self):
        summary = report.summarize(RUNS, ["haproxy", "stunnel"])
        self.assertEqual(baseline.compare_with_baseline(summary, self.path + ".none", 0.25), [])

    def test_written_baseline_round_trips(self):
        summary = report.summarize(RUNS, ["haproxy", "stunnel"])
        baseline.write_baseline(summary, self.path, "test.json")
        with open(self.path) as baseline_file:
            written = json.load(baseline_file)
        self.assertEqual(written["tolerances"], baseline.GATED_METRICS)
        self.assertNotIn("latency_p99_us", written["ratios"])
        self.assertEqual(written["ratios"]["full_handshakes_per_cpu_s"], {"stunnel": 0.5})
        self.assertNotIn("haproxy", written["ratios"]["full_handshakes_per_cpu_s"])
        self.assertEqual(baseline.compare_with_baseline(summary, self.path), [])


class OutputTest(unittest.TestCase):
    def result(self):
        return {
            "date": "2026-01-01 00:00 UTC",
            "machine": {"host": "test<host>", "cpu": "cpu", "cpus": 2, "kernel": "6"},
            "profile": "quick",
            "settings": {"rounds": 1, "latency_connections": 64, "rss_connections": 1000},
            "hold_connections": 2000,
            "proxies": ["haproxy", "stunnel"],
            "latency_rate": 1000,
            "versions": {"haproxy": "2.6"},
            "wrk_check": {"skipped": "needs haproxy and wrk"},
            "notes": ["tlsplice was not measured: not built"],
            "summary": report.summarize(RUNS, ["haproxy", "stunnel"]),
        }

    def test_svg_is_well_formed(self):
        with tempfile.TemporaryDirectory() as directory:
            path = os.path.join(directory, "chart.svg")
            report.write_svg(path, self.result())
            root = ElementTree.parse(path).getroot()
        self.assertTrue(root.tag.endswith("svg"))
        texts = [element.text for element in root.iter() if element.tag.endswith("text")]
        self.assertIn("0.50", texts)

    def test_markdown_has_ratio_column(self):
        with tempfile.TemporaryDirectory() as directory:
            path = os.path.join(directory, "table.md")
            report.write_markdown(path, self.result())
            with open(path) as table:
                text = table.read()
        self.assertIn("| metric | haproxy | stunnel | stunnel / haproxy |", text)
        self.assertIn("| 0.50 |", text)
        self.assertIn("tlsplice was not measured", text)


    def test_privsep_ratios_pair_rounds(self):
        runs = [
            dict(run("handshake", "tlsplice", 2.0, handshakes=1800), round=0),
            dict(run("handshake", "tlsplice-noprivsep", 2.0, handshakes=2000), round=0),
            dict(run("handshake", "tlsplice", 1.0, handshakes=1000), round=1),
            dict(run("handshake", "tlsplice-noprivsep", 1.0, handshakes=1250), round=1),
            dict(run("handshake", "tlsplice", 1.0, handshakes=1000), round=2),
        ]
        ratios = report.privsep_ratios(runs)
        self.assertEqual([round(ratio, 3) for ratio in ratios], [0.9, 0.8])
        result = self.result()
        result["runs"] = runs
        with tempfile.TemporaryDirectory() as directory:
            path = os.path.join(directory, "table.md")
            report.write_markdown(path, result)
            with open(path) as table:
                text = table.read()
        self.assertIn("in each round: 0.900, 0.800 (median 0.850)", text)

    def test_privsep_ratios_need_both_proxies(self):
        self.assertEqual(report.privsep_ratios(RUNS), [])


class ProcTest(unittest.TestCase):
    def test_own_process_readings(self):
        self.assertGreater(system.rss_bytes(os.getpid()), 0)
        self.assertGreaterEqual(system.cpu_seconds(os.getpid()), 0.0)
        self.assertIn(os.getpid(), system.process_tree(os.getpid()))


if __name__ == "__main__":
    unittest.main()
