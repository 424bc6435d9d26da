#!/usr/bin/env bash
# Browser figures of the web demo in headless Chromium: cold and warm start, ranking time per click, bytes.
# Start the demo first (./scripts/run.sh, or edgerec edge serve --web-demo web-demo --anonymous-sessions), then:
#   ./scripts/bench-browser.sh [URL] [--loads N] [--clicks N]     (default URL http://127.0.0.1:8080)
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
source "$here/env.sh"
url="${1:-http://127.0.0.1:8080}"
shift || true
exec node "$here/../web-demo/tests/bench.mjs" "$url" "$@"
