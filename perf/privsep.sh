#!/usr/bin/env bash
# Handshakes per CPU-second of tlsplice with privsep on and off, on loopback.
# Usage: perf/privsep.sh [COUNT] [CLIENT_THREADS] [ROUNDS]; run as root from the
# repository. Each round runs privsep off and on in turn for both key types, and
# every run is bounded by COUNT handshakes and 60 seconds. The summary gives the
# median of the rounds and the ratio of privsep on to off.
set -euo pipefail
count=${1:-3000}
threads=${2:-2}
rounds=${3:-1}
cargo build --release --quiet --bin tlsplice --example handshake_load
dir=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$dir"' EXIT

openssl req -x509 -nodes -days 2 -newkey ec -pkeyopt ec_paramgen_curve:P-256 \
  -keyout "$dir/ca.key" -out "$dir/ca.crt" -subj "/CN=bench CA" 2>/dev/null
printf 'subjectAltName=DNS:localhost\nbasicConstraints=critical,CA:FALSE\n' > "$dir/ext"
for kind in ec rsa; do
  if [ $kind = ec ]; then newkey=(-newkey ec -pkeyopt ec_paramgen_curve:P-256); else newkey=(-newkey rsa:2048); fi
  openssl req -new -nodes "${newkey[@]}" -keyout "$dir/$kind.key" -out "$dir/$kind.csr" \
    -subj /CN=localhost 2>/dev/null
  openssl x509 -req -days 2 -in "$dir/$kind.csr" -CA "$dir/ca.crt" -CAkey "$dir/ca.key" \
    -CAcreateserial -extfile "$dir/ext" -out "$dir/$kind.crt" 2>/dev/null
done

# A backend that accepts and closes, for 10 minutes at most.
python3 - "$dir/backend.port" <<'PY' &
import socket, sys, time
s = socket.socket(); s.bind(("127.0.0.1", 0)); s.listen(1024); s.settimeout(1)
open(sys.argv[1], "w").write(str(s.getsockname()[1]))
end = time.time() + 600
while time.time() < end:
    try: c, _ = s.accept(); c.close()
    except socket.timeout: pass
PY
while [ ! -s "$dir/backend.port" ]; do sleep 0.1; done
backend=$(cat "$dir/backend.port")

for round in $(seq 1 "$rounds"); do
for kind in ec rsa; do
  for privsep in no yes; do
    printf 'foreground = yes\nsyslog = no\ndebug = notice\nthreads = 1\nprivsep = %s\naccept = 127.0.0.1:0\nconnect = 127.0.0.1:%s\ncert = %s\nkey = %s\n' \
      "$privsep" "$backend" "$dir/$kind.crt" "$dir/$kind.key" > "$dir/t.conf"
    # Empty the log first: the background start truncates it only when it runs,
    # and the readiness check must not see the previous run's line.
    : > "$dir/log"
    target/release/tlsplice "$dir/t.conf" 2>> "$dir/log" &
    pid=$!
    until grep -q "listening on" "$dir/log"; do sleep 0.1; done
    addr=$(grep -o "listening on [^ ]*" "$dir/log" | cut -d' ' -f3)
    result=$(target/release/examples/handshake_load "$addr" localhost "$dir/ca.crt" "$pid" "$count" "$threads")
    echo "round $round: $kind key, privsep=$privsep: $result" | tee -a "$dir/results"
    kill -TERM $pid; wait $pid || true
  done
done
done

python3 - "$dir/results" <<'PY'
import re, statistics, sys
runs = {}
for line in open(sys.argv[1]):
    m = re.search(r": (\w+) key, privsep=(\w+): .*per_cpu_s=(\d+) per_wall_s=(\d+)", line)
    runs.setdefault((m[1], m[2]), []).append((int(m[3]), int(m[4])))
print("median of %d round(s): handshakes per CPU-second (per wall-second)" % len(runs[("ec", "no")]))
for kind in ("ec", "rsa"):
    cpu = {p: statistics.median(r[0] for r in runs[(kind, p)]) for p in ("no", "yes")}
    wall = {p: statistics.median(r[1] for r in runs[(kind, p)]) for p in ("no", "yes")}
    # Each round's on/off ratio pairs two runs made one after the other.
    paired = statistics.median(
        on[0] / off[0] for off, on in zip(runs[(kind, "no")], runs[(kind, "yes")]))
    print("%-3s privsep=no %6.0f (%5.0f)  privsep=yes %6.0f (%5.0f)  on/off %.3f, paired %.3f" % (
        kind, cpu["no"], wall["no"], cpu["yes"], wall["yes"], cpu["yes"] / cpu["no"], paired))
PY
