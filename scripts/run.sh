#!/usr/bin/env bash
# The main job: build everything, train the sequence model on MovieLens-100k and export it as a bundle, rank for a
# user with it natively and in the WASI ranker under wasmtime, and benchmark ranking latency on every runtime.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
source "$here/env.sh"
"$here/setup.sh"
"$here/build-wasm.sh" --no-simd-too
cd "$here/.."
cargo build --locked -p edgerec
edgerec="$CARGO_TARGET_DIR/debug/edgerec"
run=runs/movielens-100k

echo; echo "==> training the sequence model on MovieLens-100k (about a minute on 2 cores)"
rm -rf "$run"
"$edgerec" train movielens-100k --out "$run"

# Star Wars, The Empire Strikes Back, Return of the Jedi, Raiders of the Lost Ark, Independence Day.
history="50,172,181,174,121"
echo; echo "==> ranking natively (tract) for a user who just watched $history"
"$edgerec" rank --bundle "$run/bundle" --recent "$history" --k 5
echo; echo "==> the same in the WASI ranker under wasmtime, as an edge node runs it"
"$edgerec" rank --bundle "$run/bundle" --recent "$history" --k 5 --runtime wasmtime
echo; echo "==> ranking latency on every runtime (the ML-1M-sized golden model)"
"$edgerec" bench rank --bundle testdata/golden/bundle "$@"
