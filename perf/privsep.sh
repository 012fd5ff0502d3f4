#!/usr/bin/env bash
# Handshakes per CPU-second of tlsplice with privsep on and off, on loopback.
# Usage: perf/privsep.sh [COUNT] [CLIENT_THREADS]; run as root from the repository.
# Every run is bounded by COUNT handshakes and 60 seconds.
set -euo pipefail
count=${1:-3000}
threads=${2:-2}
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

for kind in ec rsa; do
  for privsep in no yes; do
    printf 'foreground = yes\nsyslog = no\ndebug = notice\nthreads = 1\nprivsep = %s\naccept = 127.0.0.1:0\nconnect = 127.0.0.1:%s\ncert = %s\nkey = %s\n' \
      "$privsep" "$backend" "$dir/$kind.crt" "$dir/$kind.key" > "$dir/t.conf"
    target/release/tlsplice "$dir/t.conf" 2> "$dir/log" &
    pid=$!
    until grep -q "listening on" "$dir/log"; do sleep 0.1; done
    addr=$(grep -o "listening on [^ ]*" "$dir/log" | cut -d' ' -f3)
    printf '%s key, privsep=%s: ' "$kind" "$privsep"
    target/release/examples/handshake_load "$addr" localhost "$dir/ca.crt" "$pid" "$count" "$threads"
    kill -TERM $pid; wait $pid || true
  done
done
