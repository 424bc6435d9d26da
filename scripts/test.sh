#!/usr/bin/env bash
# The whole test suite: installs what it needs, builds the Wasm rankers, starts the S3 and DynamoDB test servers
# on 127.0.0.1, checks formatting and runs every test, the conformance suite on all four runtimes included.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
source "$here/env.sh"
"$here/setup.sh" --tests
"$here/build-wasm.sh"
cd "$here/.."
echo "==> cargo fmt --check"
cargo fmt --all -- --check
echo "==> S3 (s3s-fs) and DynamoDB Local on 127.0.0.1, for the registry's production backend"
# A folder of its own, so a test run never touches the servers of another.
export EDGEREC_AWS_LOCAL_DIR="$(mktemp -d)"
trap '"$here/aws-local.sh" stop; rm -rf "$EDGEREC_AWS_LOCAL_DIR"' EXIT
eval "$("$here/aws-local.sh" start)"
echo "==> cargo test"
cargo test --locked --workspace
