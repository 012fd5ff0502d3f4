"""Hook for callgrind instruction counts of deterministic tlsplice paths."""

import os
import subprocess

# TODO: list deterministic tlsplice micro paths here as (name, argv) pairs, such as
# a config parse or one handshake against a local peer. run_callgrind() records
# their instruction counts, which do not depend on machine noise.
CALLGRIND_MICRO_PATHS = []


def run_callgrind(workdir):
    """Run each entry of CALLGRIND_MICRO_PATHS under callgrind and return {name: instructions}."""
    counts = {}
    for name, argv in CALLGRIND_MICRO_PATHS:
        out_file = os.path.join(workdir, f"callgrind.{name}.out")
        subprocess.run(["valgrind", "--tool=callgrind", f"--callgrind-out-file={out_file}", *argv],
                       check=True, capture_output=True, timeout=600)
        with open(out_file) as data:
            for line in data:
                if line.startswith("summary:") or line.startswith("totals:"):
                    counts[name] = int(line.split()[1])
    return counts
