"""Scenario sizes, and the tlsplice-load runs against each proxy."""

import json
import os
import queue
import shutil
import signal
import statistics
import subprocess
import threading
import time

from benchlib.system import LOAD_CPU, cpu_seconds, log, rss_bytes

# Scenario sizes. "quick" must finish within 3 minutes on 2 cores with 3 proxies.
PROFILES = {
    "full": {
        "rounds": 3,
        "seconds": 8.0,
        "handshake_concurrency": 32,
        "keepalive_connections": 32,
        "bulk_connections": 4,
        "bulk_bytes": 256 * 1024 * 1024,
        "latency_connections": 64,
        "rss_connections": 5000,
        "hold_connections": 10000,
        "hold_seconds": 20.0,
        "hold_interval": 2.0,
        "wrk_seconds": 5.0,
    },
    "quick": {
        "rounds": 1,
        "seconds": 3.0,
        "handshake_concurrency": 32,
        "keepalive_connections": 32,
        "bulk_connections": 4,
        "bulk_bytes": 64 * 1024 * 1024,
        "latency_connections": 64,
        "rss_connections": 1000,
        "hold_connections": 2000,
        "hold_seconds": 6.0,
        "hold_interval": 2.0,
        "wrk_seconds": 3.0,
    },
}


class LoadRun:
    """One tlsplice-load process pinned to the load CPU, with its stderr read by a thread."""

    def __init__(self, load_bin, mode, args):
        self.argv = ["taskset", "-c", LOAD_CPU, load_bin, mode, *args]
        self.lines = queue.Queue()
        self.stderr_lines = []
        self.process = subprocess.Popen(self.argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                        stderr=subprocess.PIPE, text=True, start_new_session=True)
        self.reader = threading.Thread(target=self._read_stderr, daemon=True)
        self.reader.start()

    def _read_stderr(self):
        # finish() calls communicate(), which reads and then closes stderr too;
        # the loop ends there instead of raising in this thread.
        try:
            for line in self.process.stderr:
                self.stderr_lines.append(line.rstrip())
                self.lines.put(line)
        except ValueError:
            pass

    def wait_for_line(self, text, timeout):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                line = self.lines.get(timeout=0.2)
            except queue.Empty:
                if self.process.poll() is not None and self.lines.empty():
                    return None
                continue
            if text in line:
                return line
        return None

    def finish(self, timeout):
        try:
            stdout, _ = self.process.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            stdout, _ = self.process.communicate()
        self.reader.join(timeout=5)
        try:
            return json.loads(stdout)
        except json.JSONDecodeError:
            detail = " | ".join(self.stderr_lines[-3:])
            raise RuntimeError(f"tlsplice-load printed no report (exit {self.process.returncode}): {detail}")


class Bench:
    def __init__(self, options, profile, load_bin, workdir, proxies, nginx, hold_connections):
        self.options = options
        self.profile = profile
        self.load_bin = load_bin
        self.workdir = workdir
        self.proxies = proxies
        self.nginx = nginx
        self.hold_connections = hold_connections
        self.runs = []
        self.bulk_path = None
        self.wrk_result = None

    def client_args(self, proxy, seconds, path="/tiny"):
        return ["--connect", f"127.0.0.1:{proxy.port}", "--insecure", "--duration", f"{seconds:g}",
                "--path", path]

    def measure(self, proxy, mode, args, seconds):
        """Run tlsplice-load once and add the proxy's CPU time over the run."""
        cpu_before = cpu_seconds(proxy.pid)
        run = LoadRun(self.load_bin, mode, args)
        report = run.finish(timeout=seconds + 60)
        proxy_cpu = cpu_seconds(proxy.pid) - cpu_before
        return report, proxy_cpu

    def record(self, scenario, proxy, round_index, report, proxy_cpu, extra=None):
        entry = {
            "scenario": scenario,
            "proxy": proxy.name,
            "round": round_index,
            "proxy_cpu_s": proxy_cpu,
            "load": report,
        }
        entry.update(extra or {})
        self.runs.append(entry)
        errors = report.get("errors", 0) if report else None
        log(f"{scenario:9} {proxy.name:8} round {round_index}: proxy CPU {proxy_cpu:.2f} s, errors {errors}")

    def each_round(self, scenario, body):
        """Run body(proxy, round) for every proxy in turn, round after round."""
        for round_index in range(self.profile["rounds"]):
            for proxy in self.proxies:
                if not proxy.running():
                    log(f"{proxy.name} is not running; restarting it before {scenario}")
                    try:
                        proxy.start()
                    except RuntimeError as error:
                        self.runs.append({"scenario": scenario, "proxy": proxy.name, "round": round_index,
                                          "error": str(error)})
                        continue
                try:
                    body(proxy, round_index)
                except RuntimeError as error:
                    log(f"{scenario} on {proxy.name} failed: {error}")
                    self.runs.append({"scenario": scenario, "proxy": proxy.name, "round": round_index,
                                      "error": str(error)})

    def run_handshake(self, resume):
        scenario = "resumed" if resume else "handshake"
        seconds = self.profile["seconds"]

        def body(proxy, round_index):
            args = self.client_args(proxy, seconds) + ["--concurrency", str(self.profile["handshake_concurrency"])]
            if resume:
                args.append("--resume")
            report, cpu = self.measure(proxy, "handshake", args, seconds)
            self.record(scenario, proxy, round_index, report, cpu)

        self.each_round(scenario, body)

    def run_keepalive(self):
        seconds = self.profile["seconds"]

        def body(proxy, round_index):
            args = self.client_args(proxy, seconds) + ["--connections", str(self.profile["keepalive_connections"])]
            report, cpu = self.measure(proxy, "keepalive", args, seconds)
            self.record("keepalive", proxy, round_index, report, cpu)

        self.each_round("keepalive", body)

    def run_keepalive_and_wrk_check(self):
        """Run the keep-alive scenario, then the wrk check under the same conditions."""
        self.run_keepalive()
        self.wrk_result = self.wrk_check()

    def run_bulk(self, direction):
        seconds = self.profile["seconds"]
        size = self.profile["bulk_bytes"]
        scenario = direction

        def body(proxy, round_index):
            path = self.bulk_path if direction == "download" else "/upload"
            args = self.client_args(proxy, seconds, path) + [
                "--connections", str(self.profile["bulk_connections"]), "--direction", direction,
                "--bytes", str(size), "--timeout", "60"]
            report, cpu = self.measure(proxy, "bulk", args, seconds + 60)
            self.record(scenario, proxy, round_index, report, cpu)

        self.each_round(scenario, body)

    def latency_rate(self):
        """Return half of the slowest proxy's keep-alive capacity measured in this run."""
        capacities = {}
        for run in self.runs:
            if run["scenario"] == "keepalive" and run.get("load"):
                rate = run["load"]["requests_per_s"]
                per_cpu = run["load"]["requests"] / run["proxy_cpu_s"] if run["proxy_cpu_s"] > 0 else rate
                # A proxy limited to one CPU cannot serve more than its per-CPU-second figure.
                capacities.setdefault(run["proxy"], []).append(min(rate, per_cpu))
        if not capacities:
            return None
        slowest = min(statistics.median(values) for values in capacities.values())
        return max(1.0, round(slowest / 2))

    def run_latency(self):
        seconds = self.profile["seconds"]
        rate = self.latency_rate()
        if rate is None:
            log("skipping latency: no keep-alive capacity was measured")
            return
        log(f"latency: offered rate {rate:.0f} requests/s (half of the slowest keep-alive capacity)")

        def body(proxy, round_index):
            args = self.client_args(proxy, seconds) + [
                "--rate", f"{rate:g}", "--connections", str(self.profile["latency_connections"])]
            report, cpu = self.measure(proxy, "latency", args, seconds)
            self.record("latency", proxy, round_index, report, cpu, {"offered_rate": rate})

        self.each_round("latency", body)

    def hold(self, proxy, connections, hold_seconds, interval):
        """Open connections through the proxy and keep them for hold_seconds once all are established.

        Returns (report, proxy CPU seconds, RSS before, RSS once established or None).
        """
        ramp_rate = 2000.0
        # The ramp slows down when the proxy handshakes slower than ramp_rate, so the
        # duration only caps a run that is stuck.
        cap = connections / ramp_rate * 4 + hold_seconds + 60
        args = self.client_args(proxy, cap) + [
            "--connections", str(connections), "--interval", f"{interval:g}", "--ramp-rate", f"{ramp_rate:g}",
            "--hold", f"{hold_seconds:g}", "--timeout", "30"]
        rss_before = rss_bytes(proxy.pid)
        cpu_before = cpu_seconds(proxy.pid)
        run = LoadRun(self.load_bin, "hold", args)
        line = run.wait_for_line("hold: established", timeout=cap)
        rss_established = rss_bytes(proxy.pid) if line else None
        report = run.finish(timeout=cap + 30)
        return report, cpu_seconds(proxy.pid) - cpu_before, rss_before, rss_established

    def run_rss(self):
        connections = min(self.profile["rss_connections"], self.hold_connections)

        def body(proxy, round_index):
            # A fresh process, so that memory kept from earlier scenarios or rounds does
            # not absorb the new connections' allocations.
            proxy.stop()
            proxy.start()
            report, cpu, before, established = self.hold(proxy, connections, hold_seconds=2.0, interval=60.0)
            held = report.get("handshakes", 0) - sum(report.get("errors_by_kind", {}).values())
            per_connection = None
            if established is not None and held > 0:
                per_connection = (established - before) / held
            self.record("rss", proxy, round_index, report, cpu, {
                "connections": connections, "rss_before_bytes": before, "rss_established_bytes": established,
                "rss_per_connection_bytes": per_connection})

        self.each_round("rss", body)

    def run_hold(self):
        connections = self.hold_connections

        def body(proxy, round_index):
            report, cpu, before, established = self.hold(
                proxy, connections, self.profile["hold_seconds"], self.profile["hold_interval"])
            self.record("hold", proxy, round_index, report, cpu, {
                "connections": connections, "rss_before_bytes": before, "rss_established_bytes": established})

        # Holding thousands of connections through every proxy takes long, so it runs once.
        saved = self.profile["rounds"]
        self.profile["rounds"] = 1
        try:
            self.each_round("hold", body)
        finally:
            self.profile["rounds"] = saved

    def wrk_check(self):
        """Measure keep-alive requests through haproxy with wrk and with tlsplice-load, back to back.

        Both clients share CPU 1 with nginx and usually limit the wall rate themselves,
        so their wall rates differ with client efficiency. Requests per haproxy
        CPU-second should agree whenever both count requests correctly.
        """
        proxy = next((p for p in self.proxies if p.name == "haproxy"), None)
        if proxy is None or shutil.which("wrk") is None:
            return {"skipped": "needs haproxy and wrk"}
        seconds = self.profile["wrk_seconds"]
        connections = self.profile["keepalive_connections"]
        url = f"https://127.0.0.1:{proxy.port}/tiny"

        cpu_before = cpu_seconds(proxy.pid)
        wrk = subprocess.run(["taskset", "-c", LOAD_CPU, "wrk", "-t1", f"-c{connections}", f"-d{seconds:g}s", url],
                             capture_output=True, text=True, timeout=seconds + 60)
        wrk_cpu = cpu_seconds(proxy.pid) - cpu_before
        wrk_requests = wrk_rate = None
        wrk_errors = []
        for line in wrk.stdout.splitlines():
            words = line.split()
            if line.startswith("Requests/sec:"):
                wrk_rate = float(words[1])
            elif "requests in" in line:
                wrk_requests = int(words[0])
            elif "Socket errors" in line or "Non-2xx" in line:
                wrk_errors.append(line.strip())

        report, ours_cpu = self.measure(proxy, "keepalive", self.client_args(proxy, seconds) + [
            "--connections", str(connections)], seconds)
        result = {
            "proxy": "haproxy", "connections": connections, "seconds": seconds,
            "wrk_requests_per_s": wrk_rate,
            "tlsplice_load_requests_per_s": report["requests_per_s"],
            "wrk_requests_per_proxy_cpu_s": wrk_requests / wrk_cpu if wrk_requests and wrk_cpu > 0 else None,
            "tlsplice_load_requests_per_proxy_cpu_s": report["requests"] / ours_cpu if ours_cpu > 0 else None,
            "wrk_errors": wrk_errors,
            "tlsplice_load_errors": report["errors"],
        }
        if not wrk_requests or result["wrk_requests_per_proxy_cpu_s"] is None:
            result["error"] = f"could not read wrk output: {wrk.stdout.strip()[-200:]} {wrk.stderr.strip()[-200:]}"
        else:
            result["wall_ratio"] = result["tlsplice_load_requests_per_s"] / wrk_rate
            if result["tlsplice_load_requests_per_proxy_cpu_s"]:
                result["per_cpu_ratio"] = (result["tlsplice_load_requests_per_proxy_cpu_s"]
                                           / result["wrk_requests_per_proxy_cpu_s"])
        log(f"wrk check: wall {wrk_rate} vs {report['requests_per_s']:.0f} requests/s, "
            f"per haproxy CPU-second {result['wrk_requests_per_proxy_cpu_s']} vs "
            f"{result['tlsplice_load_requests_per_proxy_cpu_s']}")
        return result
