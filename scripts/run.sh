#!/usr/bin/env bash
# The main job, on the embedded defaults (no cloud account, no external server): build everything, then
# `edgerec demo`: train the sequence model on MovieLens-1M (quick setting; --full for the full one), start a model
# registry and an edge node on 127.0.0.1, publish, sign and deploy the model, replay the data set's held-out
# interactions as live traffic through /v1/events and /v1/recommend with live figures, and serve the web demo
# page at http://127.0.0.1:8080/ until Ctrl-C. Arguments go to `edgerec demo` (see `edgerec demo --help`).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
source "$here/env.sh"
"$here/setup.sh"
"$here/build-wasm.sh"
cd "$here/.."
cargo build --locked -p edgerec
exec "$CARGO_TARGET_DIR/debug/edgerec" demo "$@"
