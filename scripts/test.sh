#!/usr/bin/env bash
# The whole test suite: installs what it needs, builds the Wasm rankers, checks formatting and runs every test,
# the conformance suite on all four runtimes included.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
source "$here/env.sh"
"$here/setup.sh"
"$here/build-wasm.sh"
cd "$here/.."
echo "==> cargo fmt --check"
cargo fmt --all -- --check
echo "==> cargo test"
cargo test --locked --workspace
