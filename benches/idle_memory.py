#!/usr/bin/env python3
"""Memory of idle keep-alive HTTP/1.1 connections, per sidecar.

client -> A (`--outbound L=B`) -> B (`--inbound L=app`) -> app, tracing off. Warms up with 200
requests on 8 connections, takes the RSS of A and B, opens `--conns` connections through A,
50 at a time, each carrying one 1 KiB POST that is answered, leaves them idle for a second and
takes the RSS again: the growth per held connection, of A (the downstream HTTP/1 connection of
each client connection, plus its share of the pooled upstream ones) and of B (the pooled
connections only: 50 in flight at most, so about 50 connections each way) apart. The
Envoy comparison is `scripts/bench-envoy --workloads idle`; this one says where it goes.

  benches/idle_memory.py [--proxy PATH] [--conns 1000] [--heaptrack OUT]

`--heaptrack OUT` runs A under heaptrack and kills it with SIGKILL while the connections are
held, so what is live at that moment is reported as leaked; then prints the live bytes per
allocation site (`heaptrack_print -f OUT.zst` for the full report).
"""
import argparse
import collections
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
import http.server

target = os.environ.get("CARGO_TARGET_DIR", "target")
ap = argparse.ArgumentParser()
ap.add_argument("--proxy", default=os.path.join(target, "release", "mesh-proxy"))
ap.add_argument("--conns", type=int, default=1000)
ap.add_argument("--threads", type=int, default=2)
ap.add_argument("--heaptrack", metavar="OUT", default="")
args = ap.parse_args()


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


class Echo(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_POST(self):
        n = int(self.headers.get("content-length") or 0)
        body = self.rfile.read(n) if n else b""
        self.send_response(200)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *a):
        pass


http.server.ThreadingHTTPServer.request_queue_size = 1024
app = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Echo)
app.daemon_threads = True
threading.Thread(target=app.serve_forever, daemon=True).start()

work = tempfile.mkdtemp()
config = os.path.join(work, "mesh.yaml")
with open(config, "w") as f:
    f.write("apiVersion: config.tracemesh.dev/v1alpha1\nkind: MeshConfig\n"
            "metadata: {name: mesh-config, namespace: mesh-system}\n"
            "spec:\n  sidecar: {logLevel: warn}\n")
procs = []


def start(name, route, listen, target_port, wrap):
    cmd = wrap + [args.proxy, "run", "--mesh-config", config, "--bind", "127.0.0.1",
                  "--threads", str(args.threads), "--service", name, "--pod-ip", "127.0.0.1",
                  "--inbound-port", str(free_port()), "--outbound-port", str(free_port()),
                  "--admin-port", str(free_port()),
                  route, f"127.0.0.1:{listen}=127.0.0.1:{target_port}"]
    env = dict(os.environ, TERMINATION_DRAIN_DURATION="0s", RUST_LOG="warn")
    log = open(os.path.join(work, name + ".log"), "w")
    p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=log, env=env)
    procs.append(p)
    for _ in range(600):
        try:
            socket.create_connection(("127.0.0.1", listen)).close()
            return p
        except OSError:
            time.sleep(0.1)
    sys.exit(f"{name} did not listen; see {log.name}")


def proxy_pid(p):
    """The proxy itself, below a wrapper such as heaptrack."""
    out = subprocess.run(["pgrep", "-P", str(p.pid)], capture_output=True, text=True).stdout
    for child in out.split():
        with open(f"/proc/{child}/cmdline", "rb") as f:
            if b"mesh-proxy" in f.read():
                return int(child)
    return p.pid


def rss_kib(p):
    with open(f"/proc/{proxy_pid(p)}/status") as f:
        for line in f:
            if line.startswith("VmRSS"):
                return int(line.split()[1])


b_listen, a_listen = free_port(), free_port()
b = start("b", "--inbound", b_listen, app.server_address[1], [])
wrap = ["heaptrack", "-o", args.heaptrack] if args.heaptrack else []
a = start("a", "--outbound", a_listen, b_listen, wrap)

body = b"x" * 1024
request = (f"POST /echo HTTP/1.1\r\nhost: svc\r\ncontent-length: {len(body)}\r\n\r\n").encode() + body


def answered(s):
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = s.recv(65536)
        if not chunk:
            raise RuntimeError("closed before the answer")
        data += chunk
    head, rest = data.split(b"\r\n\r\n", 1)
    if not head.startswith(b"HTTP/1.1 200"):
        raise RuntimeError(head.split(b"\r\n")[0].decode())
    length = [int(line.split(b":")[1]) for line in head.split(b"\r\n")
              if line.lower().startswith(b"content-length")][0]
    while len(rest) < length:
        rest += s.recv(65536)


def exchange(conns):
    for s in conns:
        s.sendall(request)
    for s in conns:
        answered(s)


warm = [socket.create_connection(("127.0.0.1", a_listen)) for _ in range(8)]
for _ in range(25):
    exchange(warm)
for s in warm:
    s.close()
time.sleep(1)
a0, b0 = rss_kib(a), rss_kib(b)
held = []
while len(held) < args.conns:
    batch = [socket.create_connection(("127.0.0.1", a_listen))
             for _ in range(min(50, args.conns - len(held)))]
    exchange(batch)
    held += batch
time.sleep(1)
a1, b1 = rss_kib(a), rss_kib(b)
n = len(held)
print(f"{n} idle connections: RSS A {a0} -> {a1} KiB ({(a1 - a0) / n:.2f} per connection), "
      f"B {b0} -> {b1} KiB ({(b1 - b0) / n:.2f}), A+B {(a1 - a0 + b1 - b0) / n:.2f} KiB per connection",
      flush=True)
if args.heaptrack:
    os.kill(proxy_pid(a), 9)
for p in procs:
    if p.poll() is None:
        p.terminate()
    p.wait()
for s in held:
    s.close()
if not args.heaptrack:
    sys.exit(0)

# Live bytes per allocation site: the first frames below the allocator, of the stacks
# heaptrack saw live when A was killed.
time.sleep(1)
folded = os.path.join(work, "live.folded")
subprocess.run(["heaptrack_print", "-f", args.heaptrack + ".zst", "--print-leaks", "0",
                "--print-peaks", "0", "--print-allocators", "0", "--print-temporary", "0",
                "--flamegraph-cost-type", "leaked", "-F", folded],
               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)
noise = ("alloc", "malloc", "rdl_", "grow", "reserve", "with_capacity", "new<>", "new (", "box_new",
         "pin<>", "from_elem", "call_once", "catch_unwind", "do_call", "poll_future", "with_mut",
         "harness", "closure", "lib.rs", "future.rs", "map.rs", "core.rs", "unsafe_cell")
sites = collections.Counter()
total = 0
with open(folded) as f:
    for line in f:
        stack, cost = line.rsplit(" ", 1)
        frames = [fr for fr in reversed(stack.split(";")) if not any(x in fr for x in noise)]
        sites[" <- ".join(frames[:3])] += int(cost)
        total += int(cost)
print(f"A live at the kill: {total / 1024:.0f} KiB; per site (KiB, per held connection):")
for site, cost in sites.most_common(12):
    print(f"{cost / 1024:9.0f} {cost / 1024 / n:7.2f}  {site[:160]}")
