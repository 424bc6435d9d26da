#!/usr/bin/env bash
# The CDN worker beside an edge node, one run, same model and machine: a registry on 127.0.0.1 with the golden model
# deployed, an edge node (--insecure-no-auth) and the worker built by `edgerec worker build` under `wasmtime serve`.
# For each: cold start (process start to the first answer, and that first answer's latency), then warm p50/p99 per
# request and CPU time per request (the server process's user+system time over the timed requests), for the same
# visitors' histories sent one at a time over a kept-alive connection.
#   scripts/bench-worker.sh [requests per server, default 500]
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
source "$here/env.sh"
requests="${1:-500}"
cd "$here/.."
[ -f "$EDGEREC_WASM_DIR/edgerec-worker.wasm" ] || "$here/build-wasm.sh"
cargo build --locked -q -p edgerec
edgerec="$CARGO_TARGET_DIR/debug/edgerec"
command -v wasmtime >/dev/null || { echo "wasmtime-cli is missing: run scripts/setup.sh --tests" >&2; exit 1; }

work="$(mktemp -d)"
pids=()
cleanup() { for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

registry_port="$(free_port)"
export EDGEREC_TOKEN="$("$edgerec" registry token create --name bench --scope admin --root "$work/registry" 2>&1 | grep -o 'erk_[A-Za-z0-9_]*' | head -1)"
export EDGEREC_REGISTRY="http://127.0.0.1:$registry_port"
"$edgerec" registry serve --root "$work/registry" --listen "127.0.0.1:$registry_port" >/dev/null 2>"$work/registry.log" & pids+=($!)
until curl -sf "$EDGEREC_REGISTRY/healthz" >/dev/null; do sleep 0.1; done
key="$(curl -sf "$EDGEREC_REGISTRY/v1/signing-key" | python3 -c 'import json, sys; print(json.load(sys.stdin)["public_key"])')"
"$edgerec" model publish testdata/golden/bundle >/dev/null
"$edgerec" model deploy home --variant control=golden-sasrec@1.0.0:100 --reason bench >/dev/null
echo "==> edgerec worker build"
"$edgerec" worker build --surface home --public-key "$key" --out "$work/worker"

node_port="$(free_port)"; worker_port="$(free_port)"
cat > "$work/node.json" <<JSON
{ "listen": "127.0.0.1:$node_port", "insecure_no_auth": true, "surfaces": ["home"], "ship_interval_ms": 3600000,
  "rate_limits": { "per_address": { "per_second": 0, "burst": 0 } },
  "registry": { "url": "$EDGEREC_REGISTRY", "token": "$EDGEREC_TOKEN", "public_key": "$key" },
  "features": { "data_dir": "$work/node" } }
JSON

python3 - "$requests" "$work" "$node_port" "$worker_port" "$edgerec" <<'PY'
import http.client, json, os, random, subprocess, sys, time

requests, work, node_port, worker_port, edgerec = int(sys.argv[1]), sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
random.seed(7)
bodies = [json.dumps({"surface": "home", "k": 10, "user_id": f"visitor-{i}",
                      "recent_items": [f"m{random.randint(1, 3706)}" for _ in range(random.randint(1, 50))]})
          for i in range(requests)]
ticks = os.sysconf("SC_CLK_TCK")

def cpu_seconds(pid):
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / ticks

def post(conn, body):
    started = time.perf_counter()
    conn.request("POST", "/v1/recommend", body, {"Content-Type": "application/json"})
    response = conn.getresponse()
    data = response.read()
    elapsed = time.perf_counter() - started
    assert response.status == 200, data
    return elapsed

def measure(name, command, port, ready_path):
    started = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=open(f"{work}/{name}.log", "w"))
    while True:
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
            conn.request("POST", "/v1/recommend", bodies[0], {"Content-Type": "application/json"})
            response = conn.getresponse(); response.read()
            if response.status == 200:
                break
        except OSError:
            pass
        time.sleep(0.05)
    cold = time.perf_counter() - started
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    first = post(conn, bodies[1])
    for body in bodies[:50]:
        post(conn, body)
    cpu_before = cpu_seconds(process.pid)
    times = sorted(post(conn, body) for body in bodies)
    cpu = (cpu_seconds(process.pid) - cpu_before) / len(bodies)
    process.terminate(); process.wait()
    pct = lambda q: times[min(len(times) - 1, int(q * len(times)))] * 1e3
    return name, cold, first * 1e3, pct(0.5), pct(0.99), cpu * 1e3

rows = [
    measure("edge node (wasmtime host, native HTTP)",
            [edgerec, "edge", "serve", "--config", f"{work}/node.json"], node_port, "/v1/recommend"),
    measure("worker under wasmtime serve",
            ["wasmtime", "serve", "--addr", f"127.0.0.1:{worker_port}", "-S", "cli=y", f"{work}/worker/edgerec-worker.wasm"],
            worker_port, "/v1/recommend"),
]
print(f"\n{requests} requests each, one at a time, golden model (3,706 items), k = 10, 1-50 recent items")
print(f"{'server':42} {'cold start s':>12} {'first ms':>9} {'p50 ms':>7} {'p99 ms':>7} {'CPU ms/req':>10}")
for name, cold, first, p50, p99, cpu in rows:
    print(f"{name:42} {cold:12.2f} {first:9.2f} {p50:7.2f} {p99:7.2f} {cpu:10.2f}")
PY
