# Shared settings of the set-up, build and test scripts. Source it; it changes nothing on disk.
# Builds and tools live outside the checkout so every clone on this machine (CI's included) reuses them.
export EDGEREC_CACHE="${EDGEREC_CACHE:-$HOME/.cache/edgerec}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$EDGEREC_CACHE/target}"
export EDGEREC_TOOLS="$EDGEREC_CACHE/tools"
export EDGEREC_WASM_DIR="${EDGEREC_WASM_DIR:-$CARGO_TARGET_DIR/edgerec-wasm}"
export ORT_VERSION="1.31.1"
export ORT_DYLIB_PATH="${ORT_DYLIB_PATH:-$EDGEREC_CACHE/onnxruntime-$ORT_VERSION/libonnxruntime.so.$ORT_VERSION}"
# Must equal the wasm-bindgen crate version in Cargo.lock.
export WASM_BINDGEN_VERSION="0.2.130"
# wasmtime-cli runs the wasi:http worker under `wasmtime serve`; the same version as the workspace's wasmtime.
export WASMTIME_VERSION="48.0.8"
# playwright-core (npm) drives Debian's Chromium in the web demo's end-to-end test.
export EDGEREC_PLAYWRIGHT="$EDGEREC_TOOLS/playwright"
export PLAYWRIGHT_CORE_VERSION="1.65.1"
export CHROMIUM="${CHROMIUM:-/usr/bin/chromium}"
# ort_wheel_libs PACKAGE DIR FILE...: the named libraries of ONNX Runtime's PyPI wheel PACKAGE (onnxruntime or
# onnxruntime-gpu) at $ORT_VERSION, extracted into DIR (the only way to get ONNX Runtime from the registries).
ort_wheel_libs() {
  local package="$1" dir="$2" wheel
  shift 2
  wheel="$(mktemp -d)"
  python3 -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.11 \
    --platform manylinux_2_28_x86_64 "$package==$ORT_VERSION" -d "$wheel"
  mkdir -p "$dir"
  unzip -q -j -o "$wheel"/*.whl "${@/#/onnxruntime/capi/}" -d "$dir"
  rm -rf "$wheel"
}
export PATH="$EDGEREC_TOOLS/bin:$HOME/.cargo/bin:$PATH"
