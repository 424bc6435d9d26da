#!/usr/bin/env bash
# Installs what building, testing and benchmarking EdgeRec needs. Idempotent: a second run checks and skips.
#   scripts/setup.sh            what the main job needs (scripts/run.sh)
#   scripts/setup.sh --tests    and what only the tests need (wasmtime-cli), for scripts/test.sh
# Needs network access to the package registries only (crates.io, PyPI, Debian).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
source "$here/env.sh"
step() { printf '\n==> %s\n' "$*"; }

step "Rust targets for the Wasm rankers"
installed="$(rustup target list --installed)"
for target in wasm32-unknown-unknown wasm32-wasip2; do
  grep -qx "$target" <<<"$installed" || rustup target add "$target"
done

apt_install() {
  if [ "$(id -u)" = 0 ]; then
    [ -n "${EDGEREC_APT_UPDATED:-}" ] || { apt-get update -qq; export EDGEREC_APT_UPDATED=1; }
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >/dev/null
  else
    sudo apt-get update -qq && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >/dev/null
  fi
}

step "Debian packages: Node.js, unzip, Open MPI (data-parallel training) and what building against it needs"
missing=()
command -v node >/dev/null || missing+=(nodejs)
command -v unzip >/dev/null || missing+=(unzip)
for package in openmpi-bin libopenmpi-dev libclang-dev pkg-config; do
  dpkg -s "$package" >/dev/null 2>&1 || missing+=("$package")
done
if [ ${#missing[@]} -gt 0 ]; then apt_install "${missing[@]}"; fi
node_major="$(node -p 'process.versions.node.split(".")[0]')"
[ "$node_major" -ge 18 ] || { echo "Node.js 18 or newer is needed (found $(node --version))" >&2; exit 1; }

step "Chromium (Debian) and playwright-core $PLAYWRIGHT_CORE_VERSION (npm), for the web demo's browser test"
[ -x "$CHROMIUM" ] || apt_install chromium fonts-dejavu-core
command -v npm >/dev/null || apt_install npm
if [ "$(node -p "require('$EDGEREC_PLAYWRIGHT/node_modules/playwright-core/package.json').version" 2>/dev/null)" != "$PLAYWRIGHT_CORE_VERSION" ]; then
  mkdir -p "$EDGEREC_PLAYWRIGHT"
  (cd "$EDGEREC_PLAYWRIGHT" && npm install --no-audit --no-fund --silent "playwright-core@$PLAYWRIGHT_CORE_VERSION")
fi
"$CHROMIUM" --version 2>/dev/null | grep -v '^\[' || true

step "ONNX Runtime $ORT_VERSION (from the onnxruntime wheel on PyPI)"
if [ ! -f "$ORT_DYLIB_PATH" ]; then
  ort_wheel_libs onnxruntime "$(dirname "$ORT_DYLIB_PATH")" "libonnxruntime.so.$ORT_VERSION"
fi
echo "ORT_DYLIB_PATH=$ORT_DYLIB_PATH"

step "wasm-bindgen-cli $WASM_BINDGEN_VERSION"
if [ "$(wasm-bindgen --version 2>/dev/null | awk '{print $2}')" != "$WASM_BINDGEN_VERSION" ]; then
  cargo install --quiet wasm-bindgen-cli --version "$WASM_BINDGEN_VERSION" --root "$EDGEREC_TOOLS"
fi
wasm-bindgen --version

# Only the tests run the worker under `wasmtime serve`: the main job (scripts/run.sh) does not build it.
if [ "${1:-}" = "--tests" ]; then
step "wasmtime-cli $WASMTIME_VERSION (run and serve only), for the wasi:http worker's tests"
if [ "$(wasmtime --version 2>/dev/null | awk '{print $2}')" != "$WASMTIME_VERSION" ]; then
  # Built once (about 11 minutes on 2 cores) with only what `wasmtime serve` needs; its build folder is in the
  # tools cache, so an interrupted build resumes, and is removed once the binary is installed.
  CARGO_TARGET_DIR="$EDGEREC_TOOLS/wasmtime-build" cargo install --quiet --locked wasmtime-cli \
    --version "$WASMTIME_VERSION" --no-default-features \
    --features run,serve,cranelift,component-model,component-model-async,parallel-compilation,pooling-allocator \
    --root "$EDGEREC_TOOLS"
  rm -rf "$EDGEREC_TOOLS/wasmtime-build"
fi
wasmtime --version
fi
