#!/usr/bin/env bash
# Measures what the stats listener costs the data path: bulk download bytes per
# tlsplice CPU-second with `stats` set and without, in alternating rounds.
#
# Usage: perf/stats-overhead.sh [ROUNDS] [SECONDS]
# Needs nginx, openssl and a release build (cargo build --release).
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-4}
seconds=${2:-6}
work=$(mktemp -d)
pids=()
cleanup() {
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

mkdir -p "$work/www" "$work/logs"
head -c $((64 * 1024 * 1024)) /dev/urandom > "$work/www/big"
backend_port=$(free_port)
cat > "$work/nginx.conf" <<CONF
daemon off; master_process off; worker_processes 1; pid $work/nginx.pid;
error_log $work/logs/error.log;
events { worker_connections 256; }
http { access_log off; sendfile on; client_body_temp_path $work/b; proxy_temp_path $work/p;
  fastcgi_temp_path $work/f; uwsgi_temp_path $work/u; scgi_temp_path $work/s;
  server { listen 127.0.0.1:$backend_port; root $work/www; } }
CONF
taskset -c 1 nginx -c "$work/nginx.conf" -p "$work" &
pids+=($!)
openssl req -x509 -nodes -newkey ec -pkeyopt ec_paramgen_curve:P-256 -keyout "$work/key.pem" \
    -out "$work/cert.pem" -subj /CN=localhost -days 2 2>/dev/null

cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }

run_once() { # $1: extra global option line; prints bytes per CPU-second
    local port conf pid before after bytes
    port=$(free_port)
    conf="$work/tlsplice.conf"
    printf 'foreground = yes\ndebug = warning\nsyslog = no\nthreads = 1\nprivsep = no\n%s\n[bench]\naccept = 127.0.0.1:%s\nconnect = 127.0.0.1:%s\ncert = %s\nkey = %s\nciphersuites = TLS_AES_128_GCM_SHA256\n' \
        "$1" "$port" "$backend_port" "$work/cert.pem" "$work/key.pem" > "$conf"
    taskset -c 0 ./target/release/tlsplice "$conf" 2>"$work/tlsplice.log" &
    pid=$!
    for _ in $(seq 1 100); do (echo > "/dev/tcp/127.0.0.1/$port") 2>/dev/null && break; sleep 0.05; done
    before=$(cpu_ticks "$pid")
    taskset -c 1 ./target/release/tlsplice-load bulk --connect "127.0.0.1:$port" --insecure \
        --path /big --connections 4 --duration "$seconds" > "$work/load.json" 2>/dev/null
    after=$(cpu_ticks "$pid")
    kill "$pid"; wait "$pid" 2>/dev/null || true
    bytes=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["bytes_received"])' "$work/load.json")
    python3 -c 'import sys; b,t=int(sys.argv[1]),int(sys.argv[2]); print(b / (t / 100) / 1e6)' "$bytes" $((after - before))
}

off=(); on=()
for round in $(seq 1 "$rounds"); do
    off+=("$(run_once "")")
    on+=("$(run_once "stats = 127.0.0.1:0")")
    echo "round $round: without stats ${off[-1]} MB per CPU-second, with stats ${on[-1]}"
done
python3 - "${off[*]}" "${on[*]}" <<'PY'
import statistics, sys
off = [float(x) for x in sys.argv[1].split()]
on = [float(x) for x in sys.argv[2].split()]
m_off, m_on = statistics.median(off), statistics.median(on)
print(f"median without stats {m_off:.1f} MB per CPU-second, with stats {m_on:.1f}: "
      f"{(m_on / m_off - 1) * 100:+.1f} %")
spread = (max(off) - min(off)) / m_off * 100
print(f"spread of the runs without stats: {spread:.1f} % of the median")
PY
