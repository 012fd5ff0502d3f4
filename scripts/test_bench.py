"""Unit tests for the summary, baseline and output code of scripts/bench.

Run with: python3 -m unittest discover -s scripts -p 'test_*.py'
"""

import importlib.machinery
import importlib.util
import json
import os
import tempfile
import unittest
import xml.etree.ElementTree as ElementTree

HERE = os.path.dirname(os.path.abspath(__file__))
_loader = importlib.machinery.SourceFileLoader("bench", os.path.join(HERE, "bench"))
_spec = importlib.util.spec_from_loader("bench", _loader)
bench = importlib.util.module_from_spec(_spec)
_loader.exec_module(bench)


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
        summary = bench.summarize(RUNS, ["haproxy", "stunnel"])
        entry = summary["full_handshakes_per_cpu_s"]
        self.assertEqual(entry["haproxy"]["value"], 2000.0)
        self.assertEqual(entry["stunnel"]["value"], 1000.0)
        self.assertEqual(entry["stunnel"]["ratio"], 0.5)
        self.assertEqual(entry["haproxy"]["ratio"], 1.0)

    def test_median_over_rounds(self):
        runs = [run("keepalive", "haproxy", 1.0, requests=n) for n in (100, 300, 200)]
        summary = bench.summarize(runs, ["haproxy"])
        self.assertEqual(summary["keepalive_requests_per_cpu_s"]["haproxy"]["value"], 200.0)
        self.assertEqual(summary["keepalive_requests_per_cpu_s"]["haproxy"]["rounds"], 3)

    def test_zero_cpu_skipped(self):
        summary = bench.summarize([run("handshake", "haproxy", 0.0, handshakes=10)], ["haproxy"])
        self.assertNotIn("haproxy", summary["full_handshakes_per_cpu_s"])

    def test_failed_run_ignored(self):
        summary = bench.summarize(RUNS, ["haproxy", "stunnel"])
        self.assertEqual(summary["download_bytes_per_cpu_s"], {})


class BaselineTest(unittest.TestCase):
    def setUp(self):
        self.dir = tempfile.TemporaryDirectory()
        self.path = os.path.join(self.dir.name, "baseline.json")

    def tearDown(self):
        self.dir.cleanup()

    def write(self, ratios, tolerance=0.25):
        with open(self.path, "w") as out:
            json.dump({"tolerance": tolerance, "ratios": ratios}, out)

    def test_throughput_drop_regresses(self):
        self.write({"full_handshakes_per_cpu_s": {"stunnel": 0.8}})
        summary = bench.summarize(RUNS, ["haproxy", "stunnel"])
        regressions = bench.compare_with_baseline(summary, self.path, 0.25)
        self.assertEqual(len(regressions), 1)
        self.assertIn("full_handshakes_per_cpu_s", regressions[0])

    def test_throughput_within_tolerance(self):
        self.write({"full_handshakes_per_cpu_s": {"stunnel": 0.6}})
        summary = bench.summarize(RUNS, ["haproxy", "stunnel"])
        self.assertEqual(bench.compare_with_baseline(summary, self.path, 0.25), [])

    def test_latency_rise_regresses(self):
        self.write({"latency_p99_us": {"stunnel": 2.0}})
        summary = bench.summarize(RUNS, ["haproxy", "stunnel"])
        self.assertEqual(len(bench.compare_with_baseline(summary, self.path, 0.25)), 1)

    def test_latency_drop_passes(self):
        self.write({"latency_p99_us": {"stunnel": 5.0}})
        summary = bench.summarize(RUNS, ["haproxy", "stunnel"])
        self.assertEqual(bench.compare_with_baseline(summary, self.path, 0.25), [])

    def test_missing_proxy_passes(self):
        self.write({"full_handshakes_per_cpu_s": {"tlsplice": 1.5}})
        summary = bench.summarize(RUNS, ["haproxy", "stunnel"])
        self.assertEqual(bench.compare_with_baseline(summary, self.path, 0.25), [])

    def test_missing_baseline_passes(self):
        summary = bench.summarize(RUNS, ["haproxy", "stunnel"])
        self.assertEqual(bench.compare_with_baseline(summary, self.path + ".none", 0.25), [])

    def test_written_baseline_round_trips(self):
        summary = bench.summarize(RUNS, ["haproxy", "stunnel"])
        bench.write_baseline(summary, self.path, 0.2, "test.json")
        with open(self.path) as baseline_file:
            baseline = json.load(baseline_file)
        self.assertEqual(baseline["tolerance"], 0.2)
        self.assertEqual(baseline["ratios"]["full_handshakes_per_cpu_s"], {"stunnel": 0.5})
        self.assertNotIn("haproxy", baseline["ratios"]["full_handshakes_per_cpu_s"])
        self.assertEqual(bench.compare_with_baseline(summary, self.path, 0.2), [])


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
            "summary": bench.summarize(RUNS, ["haproxy", "stunnel"]),
        }

    def test_svg_is_well_formed(self):
        with tempfile.TemporaryDirectory() as directory:
            path = os.path.join(directory, "chart.svg")
            bench.write_svg(path, self.result())
            root = ElementTree.parse(path).getroot()
        self.assertTrue(root.tag.endswith("svg"))
        texts = [element.text for element in root.iter() if element.tag.endswith("text")]
        self.assertIn("0.50", texts)

    def test_markdown_has_ratio_column(self):
        with tempfile.TemporaryDirectory() as directory:
            path = os.path.join(directory, "table.md")
            bench.write_markdown(path, self.result())
            with open(path) as table:
                text = table.read()
        self.assertIn("| metric | haproxy | stunnel | stunnel / haproxy |", text)
        self.assertIn("| 0.50 |", text)
        self.assertIn("tlsplice was not measured", text)


class ProcTest(unittest.TestCase):
    def test_own_process_readings(self):
        self.assertGreater(bench.rss_bytes(os.getpid()), 0)
        self.assertGreaterEqual(bench.cpu_seconds(os.getpid()), 0.0)
        self.assertIn(os.getpid(), bench.process_tree(os.getpid()))


if __name__ == "__main__":
    unittest.main()
