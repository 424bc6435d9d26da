#!/usr/bin/env bash
# The edge node's ranking call before and after a change of the ranker's boundary, in one run: `edgerec bench rank
# --runtimes wasmtime` of a saved build (binary and Wasm folder) and of the current one, alternated three times.
#   scripts/bench-component.sh BEFORE_DIR [iterations, default 3000]
# BEFORE_DIR holds `edgerec` and `wasm/` (a copy of $EDGEREC_WASM_DIR) of the build to compare with.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
source "$here/env.sh"
before="${1:?usage: scripts/bench-component.sh BEFORE_DIR [iterations]}"
iterations="${2:-3000}"
cd "$here/.."
[ -f "$EDGEREC_WASM_DIR/ranker-wasi.wasm" ] || "$here/build-wasm.sh"
cargo build --locked -q -p edgerec
for round in 1 2 3; do
  echo "==> round $round: before"
  EDGEREC_WASM_DIR="$before/wasm" "$before/edgerec" bench rank --runtimes wasmtime --iterations "$iterations"
  echo "==> round $round: after"
  "$CARGO_TARGET_DIR/debug/edgerec" bench rank --runtimes wasmtime --iterations "$iterations"
done
