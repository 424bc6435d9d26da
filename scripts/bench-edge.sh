#!/usr/bin/env bash
# Load test of an edge node with wrk (installed from Debian if missing): a registry and two nodes on 127.0.0.1 with
# the embedded feature store, serving the ML-1M-sized golden model, one checking visitor tokens (HS256, as a site's
# backend signs them) and one run with --insecure-no-auth, so the cost of verification is a ratio from one run;
# POST /v1/recommend for 1,000 users (each with recent items, so every request reads features and ranks the whole
# catalogue) at concurrency 16 and 64 on each; then a model swap under load: failed requests and the time until the
# node serves the new plan.
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

registry_port="$(free_port)"; node_port="$(free_port)"; admin_port="$(free_port)"; open_port="$(free_port)"
export EDGEREC_TOKEN="$("$edgerec" registry token create --name bench --scope admin --root "$work/registry" 2>&1 | grep -o 'erk_[A-Za-z0-9_]*' | head -1)"
export EDGEREC_REGISTRY="http://127.0.0.1:$registry_port"
"$edgerec" registry serve --root "$work/registry" --listen "127.0.0.1:$registry_port" 2>"$work/registry.log" & pids+=($!)
until curl -sf "$EDGEREC_REGISTRY/healthz" >/dev/null; do sleep 0.1; done
registry_key="$(curl -sf "$EDGEREC_REGISTRY/v1/signing-key" | python3 -c 'import json, sys; print(json.load(sys.stdin)["public_key"])')"

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

# The site's secret, and a visitor token for each of the 1,000 users signed with it as a site's backend would.
python3 -c 'import secrets; print(secrets.token_hex(32))' > "$work/site.secret"
# shellcheck disable=SC2046
"$edgerec" edge mint-token --secret-file "$work/site.secret" --kid bench-site --ttl-s 3600 \
  $(for n in $(seq 0 999); do printf -- '--user bench-%d ' "$n"; done) > "$work/tokens.txt"
# wrk is one client address: no per-address limit (each of the 1,000 visitors keeps the default one).
cat > "$work/node.json" <<JSON
{ "auth": { "visitor_tokens": { "hs256": [{ "kid": "bench-site", "secret_file": "$work/site.secret" }] } },
  "rate_limits": { "per_address": { "per_second": 0, "burst": 0 } } }
JSON
echo '{ "rate_limits": { "per_address": { "per_second": 0, "burst": 0 } } }' > "$work/open-node.json"
"$edgerec" edge serve --config "$work/node.json" --public-key "$registry_key" --listen "127.0.0.1:$node_port" --admin-listen "127.0.0.1:$admin_port" \
  --data "$work/node" --poll-ms 1000 --workers 2 >/dev/null 2>"$work/node.log" & pids+=($!)
"$edgerec" edge serve --config "$work/open-node.json" --public-key "$registry_key" --insecure-no-auth --listen "127.0.0.1:$open_port" --admin-listen none \
  --data "$work/open-node" --poll-ms 1000 --workers 2 >/dev/null 2>"$work/open-node.log" & pids+=($!)
node="http://127.0.0.1:$node_port"; admin="http://127.0.0.1:$admin_port"; open_node="http://127.0.0.1:$open_port"
until curl -sf "$node/readyz" >/dev/null && curl -sf "$open_node/readyz" >/dev/null; do sleep 0.1; done

# The same requests to both nodes; the authenticating one gets each user's token.
cat > "$work/recommend.lua" <<LUA
local tokens = {}
if os.getenv("BENCH_TOKENS") == "1" then
  for line in io.lines("$work/tokens.txt") do tokens[#tokens + 1] = line end
end
local n = 0
request = function()
  n = n + 1
  local user = n % 1000
  local body = string.format(
    '{"user_id":"bench-%d","recent_items":["m%d","m%d","m%d"],"k":10,"surface":"home"}',
    user, n % 3000 + 1, (n * 7) % 3000 + 1, (n * 13) % 3000 + 1)
  local headers = {["Content-Type"] = "application/json"}
  if tokens[user + 1] then headers["Authorization"] = "Bearer " .. tokens[user + 1] end
  return wrk.format("POST", "/v1/recommend", headers, body)
end
LUA
# The same requests paced: each connection waits 7 ms after an answer, so 16 connections offer about 2,000
# requests/s (wrk is closed-loop; unpaced runs measure the most the node sustains, where latency is queueing).
{ cat "$work/recommend.lua"; echo 'delay = function() return 7 end'; } > "$work/paced.lua"
# Warm the feature caches and the instances.
BENCH_TOKENS=1 wrk -t1 -c4 -d3s -s "$work/recommend.lua" "$node" >/dev/null
wrk -t1 -c4 -d3s -s "$work/recommend.lua" "$open_node" >/dev/null

run() {
  local connections="$1" label="$2" url="$3" tokens="$4"
  echo "==> concurrency $connections, ${seconds} s, $label"
  BENCH_TOKENS="$tokens" wrk -t2 -c"$connections" -d"${seconds}s" --latency -s "$work/recommend.lua" "$url" |
    tee "$work/run-$connections-$tokens.txt" | grep -E 'Requests/sec|50%|90%|99%|Non-2xx|Socket errors|requests in'
}
rps() { awk '/Requests\/sec/ { print $2 }' "$work/run-$1-$2.txt"; }
for connections in 16 64; do
  run "$connections" "visitor tokens verified" "$node" 1
  run "$connections" "no auth (--insecure-no-auth)" "$open_node" 0
  awk -v a="$(rps "$connections" 1)" -v b="$(rps "$connections" 0)" -v c="$connections" \
    'BEGIN { printf "concurrency %d: with tokens %.0f requests/s, without %.0f: ratio %.3f\n", c, a, b, a / b }'
done
echo "==> concurrency 16 paced to about 2,000 requests/s, ${seconds} s, visitor tokens verified"
BENCH_TOKENS=1 wrk -t2 -c16 -d"${seconds}s" --latency -s "$work/paced.lua" "$node" |
  grep -E 'Requests/sec|50%|90%|99%|Non-2xx|Socket errors|requests in'
curl -s "$admin/metrics" | awk '
  /^edgerec_node_rank_seconds_sum/ { rs += $2 } /^edgerec_node_rank_seconds_count/ { rc += $2 }
  /^edgerec_node_request_seconds_sum\{route="\/v1\/recommend"/ { qs += $2 }
  /^edgerec_node_request_seconds_count\{route="\/v1\/recommend"/ { qc += $2 }
  /^edgerec_node_fallbacks_total\{reason="busy"\}/ { busy += $2 }
  END { printf "inside the node: ranking %.3f ms, whole request %.3f ms (means over %d requests); %d answered by popularity because no instance was free\n", 1e3*rs/rc, 1e3*qs/qc, qc, busy }'

echo "==> model swap under load (concurrency 16): deploy 2.0.0 while wrk runs"
BENCH_TOKENS=1 wrk -t2 -c16 -d10s --latency -s "$work/recommend.lua" "$node" > "$work/swap.txt" &
wrk_pid=$!
sleep 3
revision="$("$edgerec" model deploy home --variant control=golden-sasrec@2.0.0:100 --reason swap | grep -o 'revision [0-9]*' | grep -o '[0-9]*')"
started="$(date +%s%N)"
until curl -sf "$admin/v1/deployments" | grep -q "\"revision\":$revision"; do sleep 0.01; done
echo "node serves revision $revision $(( ($(date +%s%N) - started) / 1000000 )) ms after the deployment (poll interval 1000 ms)"
wait "$wrk_pid"
grep -E 'Requests/sec|99%|Non-2xx|Socket errors|requests in' "$work/swap.txt" || true
grep -q 'Non-2xx' "$work/swap.txt" && echo "FAILED REQUESTS DURING THE SWAP" || echo "failed requests during the swap: 0"
grep -o '"rollout_ms":[0-9]*' "$work/node.log" | tail -1 | sed 's/"rollout_ms":/model load and warm-up (ms): /'
