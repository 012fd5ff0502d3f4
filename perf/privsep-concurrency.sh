#!/usr/bin/env bash
# CPU time per full handshake of tlsplice with privsep off and on, at several
# numbers of handshakes in flight, on loopback.
# Usage: perf/privsep-concurrency.sh [ROUNDS] [SECONDS] [IN_FLIGHT...]
# Run as root from the repository. Defaults: 3 rounds of 4 seconds at 4, 16 and
# 32 handshakes in flight. tlsplice (one worker) runs on CPU 0, and the load
# generator and its backend on CPU 1, as in the benchmark suite. Each run is
# bounded by SECONDS of load; the summary gives medians of the rounds.
set -euo pipefail
rounds=${1:-3}
seconds=${2:-4}
shift $(( $# < 2 ? $# : 2 ))
in_flight=("$@")
[ ${#in_flight[@]} -gt 0 ] || in_flight=(4 16 32)

cargo build --release --quiet --bin tlsplice --bin tlsplice-load
dir=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$dir"' EXIT

openssl req -x509 -nodes -days 2 -newkey ec -pkeyopt ec_paramgen_curve:P-256 \
  -keyout "$dir/key.pem" -out "$dir/cert.pem" -subj /CN=localhost \
  -addext subjectAltName=DNS:localhost 2>/dev/null

# The backend: tlsplice-load's HTTP sink, for 30 minutes at most.
backend=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
timeout 1800 taskset -c 1 target/release/tlsplice-load sink --listen "127.0.0.1:$backend" \
  > /dev/null 2>&1 &
until python3 -c "import socket; socket.create_connection(('127.0.0.1', $backend)).close()" 2>/dev/null; do
  sleep 0.1
done

# The CPU ticks (utime + stime) of every thread of process $1 and its children.
ticks() {
  local total=0 task fields
  for task in /proc/"$1"/task/* $(for child in $(pgrep -P "$1"); do echo /proc/"$child"/task/*; done); do
    fields=$(cut -d' ' -f14,15 "$task/stat" 2>/dev/null) || continue
    total=$(( total + ${fields% *} + ${fields#* } ))
  done
  echo "$total"
}

: > "$dir/results"
for round in $(seq 1 "$rounds"); do
for flight in "${in_flight[@]}"; do
  for privsep in no yes; do
    printf 'foreground = yes\nthreads = 1\nprivsep = %s\n[bench]\naccept = 127.0.0.1:0\nconnect = 127.0.0.1:%s\ncert = %s\nkey = %s\nciphersuites = TLS_AES_128_GCM_SHA256\n' \
      "$privsep" "$backend" "$dir/cert.pem" "$dir/key.pem" > "$dir/t.conf"
    : > "$dir/log"
    taskset -c 0 target/release/tlsplice "$dir/t.conf" 2>> "$dir/log" &
    pid=$!
    until grep -q "listening on" "$dir/log"; do
      kill -0 $pid || { cat "$dir/log"; exit 1; }
      sleep 0.05
    done
    addr=$(grep -o "listening on [^ ]*" "$dir/log" | cut -d' ' -f3)
    before=$(ticks $pid)
    count=$(taskset -c 1 target/release/tlsplice-load handshake --connect "$addr" --insecure \
      --duration "$seconds" --path /tiny --concurrency "$flight" \
      | python3 -c 'import json, sys; print(json.load(sys.stdin)["handshakes"])')
    after=$(ticks $pid)
    kill -TERM $pid; wait $pid || true
    hz=$(getconf CLK_TCK)
    echo "round $round: in_flight=$flight privsep=$privsep handshakes=$count ticks=$(( after - before )) hz=$hz" \
      | tee -a "$dir/results"
  done
done
done

python3 - "$dir/results" <<'PY'
import re, statistics, sys
runs = {}
for line in open(sys.argv[1]):
    m = re.search(r"in_flight=(\d+) privsep=(\w+) handshakes=(\d+) ticks=(\d+) hz=(\d+)", line)
    flight, privsep, count, ticks, hz = int(m[1]), m[2], int(m[3]), int(m[4]), int(m[5])
    runs.setdefault((flight, privsep), []).append(ticks / hz / count * 1e6)
print("median CPU time per handshake (us), privsep off and on, and off/on")
for flight in sorted({flight for flight, _ in runs}):
    off = statistics.median(runs[(flight, "no")])
    on = statistics.median(runs[(flight, "yes")])
    print("%3d in flight: off %6.1f  on %6.1f  off/on %.3f" % (flight, off, on, off / on))
PY
