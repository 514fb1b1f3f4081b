#!/usr/bin/env bash
# Opaque TCP bulk throughput: iperf3 direct, then through two sidecars in explicit mode
# (sidecar A `--outbound L=B` → sidecar B `--inbound L=server` → iperf3 server), both ports in
# `opaquePorts` so the bytes are copied without protocol detection, the path a database or any
# non-HTTP protocol takes.
#
# Usage: benches/tcp_bulk.sh [--proxy target/release/mesh-proxy] [--bytes 4G] [--streams 1,4]
#                            [--rounds 3] [--time-limit 60]
#
# Every transfer is bounded twice: by bytes (`iperf3 -n`) and by time (`timeout`). The sidecars
# and the iperf3 server listen on loopback only and are stopped at the end. Rounds alternate
# direct and sidecars (A B A B) so drift on a shared machine hits both alike; the medians are
# printed with the ratio to direct and the CPU seconds per GB of both sidecars (utime + stime
# from /proc, every thread).
set -euo pipefail

proxy=target/release/mesh-proxy
bytes=4G
streams=1,4
rounds=3
limit=60
threads=2
while [ $# -gt 0 ]; do
    case "$1" in
        --proxy) proxy=$2; shift 2 ;;
        --bytes) bytes=$2; shift 2 ;;
        --streams) streams=$2; shift 2 ;;
        --rounds) rounds=$2; shift 2 ;;
        --time-limit) limit=$2; shift 2 ;;
        --threads) threads=$2; shift 2 ;;
        *) echo "unknown argument: $1" >&2; exit 2 ;;
    esac
done
[ -x "$proxy" ] || { echo "no proxy binary at $proxy (cargo build --release -p mesh-proxy)" >&2; exit 2; }
command -v iperf3 >/dev/null || { echo "iperf3 is not installed" >&2; exit 2; }

dir=$(mktemp -d)
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    # A sidecar drains before it exits: give it a few seconds, then SIGKILL what is left.
    for _ in $(seq 50); do
        alive=0
        for p in "${pids[@]}"; do kill -0 "$p" 2>/dev/null && alive=1; done
        [ $alive = 0 ] && break
        sleep 0.1
    done
    for p in "${pids[@]}"; do kill -9 "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$dir"
}
trap cleanup EXIT

# Nine free loopback ports: asked of the kernel, not guessed.
mapfile -t ports < <(python3 -c '
import socket
ss = [socket.socket() for _ in range(9)]
for s in ss: s.bind(("127.0.0.1", 0))
for s in ss: print(s.getsockname()[1])
')
server=${ports[0]} b_in=${ports[1]} a_out=${ports[2]}

cat > "$dir/mesh.yaml" <<EOF
apiVersion: config.tracemesh.dev/v1alpha1
kind: MeshConfig
metadata: {name: mesh-config, namespace: mesh-system}
spec:
  traffic:
    opaquePorts: [$server, $b_in]
  sidecar:
    logLevel: warn
EOF

iperf3 -s -B 127.0.0.1 -p "$server" >"$dir/server.log" 2>&1 &
pids+=($!)
"$proxy" run --mesh-config "$dir/mesh.yaml" --bind 127.0.0.1 --threads "$threads" \
    --inbound-port "${ports[3]}" --outbound-port "${ports[4]}" --admin-port "${ports[5]}" \
    --inbound "127.0.0.1:$b_in=127.0.0.1:$server" >"$dir/b.log" 2>&1 &
b_pid=$!; pids+=($b_pid)
"$proxy" run --mesh-config "$dir/mesh.yaml" --bind 127.0.0.1 --threads "$threads" \
    --inbound-port "${ports[6]}" --outbound-port "${ports[7]}" --admin-port "${ports[8]}" \
    --outbound "127.0.0.1:$a_out=127.0.0.1:$b_in" >"$dir/a.log" 2>&1 &
a_pid=$!; pids+=($a_pid)

ready() { # port
    for _ in $(seq 100); do
        if (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; then return 0; fi
        sleep 0.05
    done
    echo "nothing listens on $1" >&2; return 1
}
ready "$server"; ready "$b_in"; ready "$a_out"

ticks() { # pid: utime + stime of every thread, in clock ticks
    awk '{print $14 + $15}' "/proc/$1/stat"
}
hz=$(getconf CLK_TCK)

# One transfer: prints Gbit/s (receiver side) and, through the sidecars, their CPU seconds.
run() { # port streams
    local before_a before_b json
    before_a=$(ticks "$a_pid"); before_b=$(ticks "$b_pid")
    json=$(timeout "$limit" iperf3 -c 127.0.0.1 -p "$1" -P "$2" -n "$bytes" -J) || {
        echo "iperf3 to port $1 failed or ran over ${limit}s" >&2; return 1; }
    local cpu
    cpu=$(( $(ticks "$a_pid") - before_a + $(ticks "$b_pid") - before_b ))
    python3 -c '
import json, sys
r = json.loads(sys.argv[1])["end"]["sum_received"]
print(r["bits_per_second"] / 1e9, r["bytes"] / 1e9, int(sys.argv[2]) / int(sys.argv[3]))
' "$json" "$cpu" "$hz"
}

median() { sort -g | awk '{a[NR]=$1} END {print (NR % 2) ? a[(NR+1)/2] : (a[NR/2] + a[NR/2+1]) / 2}'; }

echo "opaque TCP bulk, $bytes per transfer, $rounds rounds, sidecars with $threads threads ($proxy)"
printf '%-8s %12s %12s %8s %14s\n' streams direct sidecars ratio "CPU s/GB"
IFS=, read -ra levels <<<"$streams"
for p in "${levels[@]}"; do
    : >"$dir/direct" ; : >"$dir/mesh" ; : >"$dir/cpu"
    for _ in $(seq "$rounds"); do
        run "$server" "$p" | awk '{print $1}' >>"$dir/direct"
        read -r gbps gb cpu < <(run "$a_out" "$p")
        echo "$gbps" >>"$dir/mesh"
        awk -v c="$cpu" -v g="$gb" 'BEGIN {print c / g}' >>"$dir/cpu"
    done
    d=$(median <"$dir/direct"); m=$(median <"$dir/mesh"); c=$(median <"$dir/cpu")
    printf '%-8s %9.2f Gb/s %7.2f Gb/s %7.2fx %14.2f\n' "$p" "$d" "$m" \
        "$(awk -v m="$m" -v d="$d" 'BEGIN {print m / d}')" "$c"
done
# The transfers through the sidecars must have taken the opaque path (no detection at all).
skipped=$(curl -s "http://127.0.0.1:${ports[8]}/metrics" \
    | awk -F'} ' '/protocol_detections_total\{direction="outbound",outcome="skipped"\}/ {print $2}')
[ "${skipped:-0}" -gt 0 ] || { echo "sidecar A detected protocols: the route was not opaque" >&2; exit 1; }
echo "sidecar A: $skipped connections proxied as opaque (detection skipped)"
