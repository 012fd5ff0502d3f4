"""Callgrind instruction counts of fixed work on tlsplice's hot paths.

The paths live in examples/callgrind_paths.rs. Instruction counts repeat across
runs within about 0.2 % on the development machine, whatever else it is doing,
so the --quick check compares them with a tight tolerance.
"""

import os
import shutil
import subprocess

from benchlib.system import log

# (name in results and baseline, argument of examples/callgrind_paths.rs)
CALLGRIND_MICRO_PATHS = [
    ("config_parse_200x10_services", "config"),
    ("proxy_encode_100k_v1_v2", "proxy"),
    ("records_16mib_each_way", "records"),
]

# Relative growth of an instruction count that counts as a regression.
CALLGRIND_TOLERANCE = 0.02


def build_driver(repo):
    """Build the callgrind driver in release mode; return its path."""
    subprocess.run(["cargo", "build", "--release", "--example", "callgrind_paths"],
                   cwd=repo, check=True, capture_output=True, timeout=1800)
    return os.path.join(repo, "target", "release", "examples", "callgrind_paths")


def run_callgrind(workdir, repo):
    """Run each micro path under callgrind and return {name: instructions}.

    Returns an empty dict, with a log line, when valgrind is not installed.
    """
    if shutil.which("valgrind") is None:
        log("callgrind: valgrind is not installed; skipping instruction counts")
        return {}
    driver = build_driver(repo)
    counts = {}
    for name, path in CALLGRIND_MICRO_PATHS:
        out_file = os.path.join(workdir, f"callgrind.{name}.out")
        subprocess.run(["valgrind", "--tool=callgrind", f"--callgrind-out-file={out_file}", driver, path],
                       check=True, capture_output=True, timeout=600)
        with open(out_file) as data:
            for line in data:
                if line.startswith("totals:"):
                    counts[name] = int(line.split()[1])
        log(f"callgrind: {name}: {counts.get(name)} instructions")
    return counts


def compare_counts(counts, expected, tolerance=CALLGRIND_TOLERANCE):
    """Compare instruction counts with the baseline's; return regression messages."""
    regressions = []
    for name, baseline in expected.items():
        actual = counts.get(name)
        if actual is None:
            log(f"baseline check: callgrind {name} was not measured in this run")
            continue
        regressed = actual > baseline * (1 + tolerance)
        status = "REGRESSION" if regressed else "ok"
        log(f"baseline check: callgrind {name} {actual} instructions (baseline {baseline}, "
            f"tolerance {tolerance:.0%}): {status}")
        if regressed:
            regressions.append(f"callgrind {name}: {actual} instructions, baseline {baseline}, "
                               f"tolerance {tolerance:.0%}")
    return regressions
