#!/usr/bin/env bash
# Instructions per request of one sidecar, counted by callgrind: a figure that does not move
# with the load of a shared machine, so a CPU change can be judged build against build.
#
# Usage: benches/callgrind.sh [--proxy target/release/mesh-proxy] [--requests 2000]
#                             [--warmup 200] [--threads 2] [--tracing on|off|FRACTION]
#                             [--per-thread] [--context] [--close] [--cache]
#
# client (curl, one HTTP/1.1 keep-alive connection) → `mesh-proxy run --inbound L=server`
# (under callgrind) → server (1 KiB responses), tracing enabled at sampledFraction 1.0 exporting
# Zipkin v2 JSON to a local sink (`--tracing off`: disabled; a FRACTION: that sampledFraction, so
# `--tracing 0` measures context propagation with nothing recorded). Startup and a warm-up are excluded: the counters are zeroed
# after the warm-up and dumped after the measured requests. Prints instructions per request.
# `--per-thread` counts each thread apart (callgrind's --separate-threads) and prints the
# instructions per request of the `trace-export` thread(s) and of the rest (the request threads).
# `--context` sends every request with the headers an upstream sidecar writes (`x-request-id`,
# B3 multi-header and `traceparent`), so the sidecar does what sidecar B of the load bench does:
# parse a caller's context, rewrite it in place and add `x-b3-parentspanid`; without it, each
# request arrives bare, as at sidecar A, and every trace header is inserted.
# `--close` sends every request on a connection of its own (`connection: close`), so the figure
# includes accepting, detecting and closing a connection: the cost of short connections.
# `--cache` adds callgrind's cache simulation (first-level and last-level, sized like this
# machine's) and prints data reads, writes and misses per request beside the instructions: two
# builds can run the same instructions and differ in the memory they touch.
set -euo pipefail

proxy=target/release/mesh-proxy
requests=2000
warmup=200
threads=2
tracing=on
per_thread=no
context=()
close=()
cache=no
while [ $# -gt 0 ]; do
    case "$1" in
        --proxy) proxy=$2; shift 2 ;;
        --requests) requests=$2; shift 2 ;;
        --warmup) warmup=$2; shift 2 ;;
        --threads) threads=$2; shift 2 ;;
        --tracing) tracing=$2; shift 2 ;;
        --per-thread) per_thread=yes; shift ;;
        --context) context=(-H 'x-request-id: 7b6c2f7e-4a51-4c8e-9d3b-2f1e0a9c8b7d'
                            -H 'x-b3-traceid: 463ac35c9f6413ad48485a3953bb6124'
                            -H 'x-b3-spanid: a2fb4a1d1a96d312' -H 'x-b3-sampled: 1'
                            -H 'traceparent: 00-463ac35c9f6413ad48485a3953bb6124-a2fb4a1d1a96d312-01')
                   shift ;;
        --close) close=(-H 'connection: close'); shift ;;
        --cache) cache=yes; shift ;;
        *) echo "unknown argument: $1" >&2; exit 2 ;;
    esac
done
[ -x "$proxy" ] || { echo "no proxy binary at $proxy" >&2; exit 2; }
case "$tracing" in
    on) enable=true fraction=1.0 ;;
    off) enable=false fraction=1.0 ;;
    *) [[ "$tracing" =~ ^(0(\.[0-9]+)?|1(\.0+)?)$ ]] || {
           echo "--tracing takes on, off or a fraction in 0..1, not $tracing" >&2; exit 2; }
       enable=true fraction=$tracing ;;
esac

dir=$(mktemp -d)
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    for _ in $(seq 50); do
        alive=0
        for p in "${pids[@]}"; do kill -0 "$p" 2>/dev/null && alive=1; done
        [ $alive = 0 ] && break
        sleep 0.1
    done
    for p in "${pids[@]}"; do kill -9 "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    [ -n "${KEEP:-}" ] && [ -f "$dir/callgrind.out.1" ] && cp "$dir/callgrind.out.1" "$KEEP"
    rm -rf "$dir"
}
trap cleanup EXIT

mapfile -t ports < <(python3 -c '
import socket
ss = [socket.socket() for _ in range(6)]
for s in ss: s.bind(("127.0.0.1", 0))
for s in ss: print(s.getsockname()[1])
')
server=${ports[0]} sink=${ports[1]} listen=${ports[2]}

# One small HTTP/1.1 server for both the app (1 KiB answers) and the span sink (202).
cat >"$dir/serve.py" <<'EOF'
import http.server, sys
class H(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def answer(self, status, body):
        n = int(self.headers.get("content-length") or 0)
        if n: self.rfile.read(n)
        self.send_response(status)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def do_GET(self): self.answer(200, b"x" * 1024)
    def do_POST(self): self.answer(202, b"")
    def log_message(self, *a): pass
http.server.ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), H).serve_forever()
EOF
python3 "$dir/serve.py" "$server" & pids+=($!)
python3 "$dir/serve.py" "$sink" & pids+=($!)

cat >"$dir/mesh.yaml" <<EOF
apiVersion: config.tracemesh.dev/v1alpha1
kind: MeshConfig
metadata: {name: mesh-config, namespace: mesh-system}
spec:
  observability:
    tracing: {enable: $enable, address: 127.0.0.1, port: $sink, endpoint: /api/v2/spans,
              protocol: zipkin, sampledFraction: "$fraction"}
  sidecar: {logLevel: warn}
EOF

valgrind --tool=callgrind --separate-threads=$per_thread --cache-sim=$cache --callgrind-out-file="$dir/callgrind.out" \
    "$proxy" run --mesh-config "$dir/mesh.yaml" --bind 127.0.0.1 --threads "$threads" \
    --service bench --inbound-port "${ports[3]}" --outbound-port "${ports[4]}" \
    --admin-port "${ports[5]}" --inbound "127.0.0.1:$listen=127.0.0.1:$server" \
    >"$dir/proxy.log" 2>&1 &
vg=$!; pids+=($vg)

for _ in $(seq 600); do
    (exec 3<>"/dev/tcp/127.0.0.1/$listen") 2>/dev/null && break
    sleep 0.1
done
get() { # n: requests on one keep-alive connection, all must answer 200
    local codes
    codes=$(curl -s ${close[@]+"${close[@]}"} -o /dev/null -w '%{http_code}\n' \
        ${context[@]+"${context[@]}"} "http://127.0.0.1:$listen/r/[1-$1]" \
        | sort | uniq -c)
    [ "$(echo "$codes" | awk '$2 == 200 {print $1}')" = "$1" ] || {
        echo "not every request answered 200: $codes" >&2; exit 1; }
}
get "$warmup"
callgrind_control -z "$vg" >/dev/null
get "$requests"
# Let the batch exporter send what the measured requests recorded before counting stops.
sleep 6
callgrind_control -d "$vg" >/dev/null
sleep 1
kill "$vg"; wait "$vg" 2>/dev/null || true
# The dump taken by callgrind_control -d (the final one, at exit, has the shutdown).
dump="$dir/callgrind.out.1"
count() { awk '/^(summary|totals):/ {print $2; exit}' "$1"; }
if [ $per_thread = yes ]; then
    # One file per thread (callgrind.out.1-NN); the export thread's is the one that ran the
    # batch encoder.
    export_total=0 rest_total=0
    for f in "$dir"/callgrind.out.1-*; do
        n=$(count "$f"); n=${n:-0}
        if grep -q 'trace/batch\.rs' "$f"; then
            export_total=$((export_total + n))
        else
            rest_total=$((rest_total + n))
        fi
    done
    total=$((export_total + rest_total))
    echo "$proxy (tracing $tracing): $total instructions for $requests requests: $((total / requests)) per request"
    echo "  trace-export thread: $((export_total / requests)) per request; other threads: $((rest_total / requests)) per request"
    [ -n "${KEEP:-}" ] && mkdir -p "$KEEP" && cp "$dir"/callgrind.out.1-* "$KEEP"/
    exit 0
fi
total=$(count "$dump")
echo "$proxy (tracing $tracing): $total instructions for $requests requests: $((total / requests)) per request"
if [ $cache = yes ]; then
    # events: Ir Dr Dw I1mr D1mr D1mw ILmr DLmr DLmw, summed over the dump.
    awk -v n="$requests" '
        /^events:/ { for (i = 2; i <= NF; i++) name[i] = $i }
        /^(summary|totals):/ {
            line = "per request:"
            for (i = 2; i <= NF; i++) line = line sprintf(" %s %.0f", name[i], $i / n)
            print line; exit
        }' "$dump"
fi
callgrind_annotate "$dump" 2>/dev/null | grep -A25 "file:function" | tail -n +3 | cut -c1-200
