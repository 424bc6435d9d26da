#!/usr/bin/env bash
# Load test of an edge node with wrk (installed from Debian if missing): a registry and one node on 127.0.0.1 with
# the embedded feature store, serving the ML-1M-sized golden model; POST /v1/recommend for 1,000 users (each with
# recent items, so every request reads features and ranks the whole catalogue) at concurrency 16 and 64; then a
# model swap under load: failed requests and the time until the node serves the new plan.
#   scripts/bench-edge.sh [seconds per run, default 20]
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
source "$here/env.sh"
seconds="${1:-20}"
cd "$here/.."
if ! command -v wrk >/dev/null; then
  echo "==> installing wrk from Debian"
  if [ "$(id -u)" = 0 ]; then apt-get update -qq && apt-get install -y -qq --no-install-recommends wrk >/dev/null
  else sudo apt-get update -qq && sudo apt-get install -y -qq --no-install-recommends wrk >/dev/null; fi
fi
[ -f "$EDGEREC_WASM_DIR/ranker-wasi.wasm" ] || "$here/build-wasm.sh"
cargo build --locked -q -p edgerec
edgerec="$CARGO_TARGET_DIR/debug/edgerec"

work="$(mktemp -d)"
pids=()
cleanup() { for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done; wait 2>/dev/null || true; [ -n "${EDGEREC_BENCH_KEEP:-}" ] || rm -rf "$work"; }
trap cleanup EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

registry_port="$(free_port)"; node_port="$(free_port)"
export EDGEREC_TOKEN="$("$edgerec" registry token create --name bench --scope admin --root "$work/registry" 2>&1 | grep -o 'erk_[A-Za-z0-9_]*' | head -1)"
export EDGEREC_REGISTRY="http://127.0.0.1:$registry_port"
"$edgerec" registry serve --root "$work/registry" --listen "127.0.0.1:$registry_port" 2>"$work/registry.log" & pids+=($!)
until curl -sf "$EDGEREC_REGISTRY/healthz" >/dev/null; do sleep 0.1; done

# Two versions of the golden model (same weights, different labels) for the swap.
for version in 1.0.0 2.0.0; do
  mkdir -p "$work/bundle-$version"
  cp testdata/golden/bundle/model.onnx "$work/bundle-$version/"
  python3 - "$version" > "$work/bundle-$version/manifest.json" <<'PY'
import json, sys
manifest = json.load(open("testdata/golden/bundle/manifest.json"))
manifest["version"] = sys.argv[1]
print(json.dumps(manifest, indent=2))
PY
  "$edgerec" model publish "$work/bundle-$version" >/dev/null
done
"$edgerec" model deploy home --variant control=golden-sasrec@1.0.0:100 --reason bench >/dev/null

"$edgerec" edge serve --listen "127.0.0.1:$node_port" --data "$work/node" --poll-ms 1000 --workers 2 \
  >/dev/null 2>"$work/node.log" & pids+=($!)
node="http://127.0.0.1:$node_port"
until curl -sf "$node/readyz" >/dev/null; do sleep 0.1; done

cat > "$work/recommend.lua" <<'LUA'
local n = 0
request = function()
  n = n + 1
  local body = string.format(
    '{"user_id":"bench-%d","recent_items":["m%d","m%d","m%d"],"k":10,"surface":"home"}',
    n % 1000, n % 3000 + 1, (n * 7) % 3000 + 1, (n * 13) % 3000 + 1)
  return wrk.format("POST", "/v1/recommend", {["Content-Type"] = "application/json"}, body)
end
LUA
# The same requests paced: each connection waits 7 ms after an answer, so 16 connections offer about 2,000
# requests/s (wrk is closed-loop; unpaced runs measure the most the node sustains, where latency is queueing).
{ cat "$work/recommend.lua"; echo 'delay = function() return 7 end'; } > "$work/paced.lua"
# Warm the feature cache and the instances.
wrk -t1 -c4 -d3s -s "$work/recommend.lua" "$node" >/dev/null

run() {
  local connections="$1"
  echo "==> concurrency $connections, ${seconds} s"
  wrk -t2 -c"$connections" -d"${seconds}s" --latency -s "$work/recommend.lua" "$node" |
    grep -E 'Requests/sec|50%|90%|99%|Non-2xx|Socket errors|requests in'
}
run 16
run 64
echo "==> concurrency 16 paced to about 2,000 requests/s, ${seconds} s"
wrk -t2 -c16 -d"${seconds}s" --latency -s "$work/paced.lua" "$node" |
  grep -E 'Requests/sec|50%|90%|99%|Non-2xx|Socket errors|requests in'
curl -s "$node/metrics" | awk '
  /^edgerec_node_rank_seconds_sum/ { rs += $2 } /^edgerec_node_rank_seconds_count/ { rc += $2 }
  /^edgerec_node_request_seconds_sum\{route="\/v1\/recommend"/ { qs += $2 }
  /^edgerec_node_request_seconds_count\{route="\/v1\/recommend"/ { qc += $2 }
  END { printf "inside the node: ranking %.3f ms, whole request %.3f ms (means over %d requests)\n", 1e3*rs/rc, 1e3*qs/qc, qc }'

echo "==> model swap under load (concurrency 16): deploy 2.0.0 while wrk runs"
wrk -t2 -c16 -d10s --latency -s "$work/recommend.lua" "$node" > "$work/swap.txt" &
wrk_pid=$!
sleep 3
revision="$("$edgerec" model deploy home --variant control=golden-sasrec@2.0.0:100 --reason swap | grep -o 'revision [0-9]*' | grep -o '[0-9]*')"
started="$(date +%s%N)"
until curl -sf "$node/v1/deployments" | grep -q "\"revision\":$revision"; do sleep 0.01; done
echo "node serves revision $revision $(( ($(date +%s%N) - started) / 1000000 )) ms after the deployment (poll interval 1000 ms)"
wait "$wrk_pid"
grep -E 'Requests/sec|99%|Non-2xx|Socket errors|requests in' "$work/swap.txt" || true
grep -q 'Non-2xx' "$work/swap.txt" && echo "FAILED REQUESTS DURING THE SWAP" || echo "failed requests during the swap: 0"
grep -o '"rollout_ms":[0-9]*' "$work/node.log" | tail -1 | sed 's/"rollout_ms":/model load and warm-up (ms): /'
