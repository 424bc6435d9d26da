#!/usr/bin/env bash
# The main job, for now: build everything, rank for a user with the golden SASRec-shaped model in every ranker
# build, and benchmark ranking latency on every runtime. (The full demo arrives with the edge node.)
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
source "$here/env.sh"
"$here/setup.sh"
"$here/build-wasm.sh" --no-simd-too
cd "$here/.."
cargo build --locked -p edgerec
edgerec="$CARGO_TARGET_DIR/debug/edgerec"
bundle=testdata/golden/bundle
history="m12,m408,m77,m1999,m3021"

echo; echo "==> ranking natively (tract) for a user who just watched $history"
"$edgerec" rank --bundle "$bundle" --recent "$history" --k 5 --context hour=20
echo; echo "==> the same in the WASI ranker under wasmtime, as an edge node runs it"
"$edgerec" rank --bundle "$bundle" --recent "$history" --k 5 --context hour=20 --runtime wasmtime
echo; echo "==> ranking latency on every runtime"
"$edgerec" bench rank --bundle "$bundle" "$@"
