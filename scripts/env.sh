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
# playwright-core (npm) drives Debian's Chromium in the web demo's end-to-end test.
export EDGEREC_PLAYWRIGHT="$EDGEREC_TOOLS/playwright"
export PLAYWRIGHT_CORE_VERSION="1.65.1"
export CHROMIUM="${CHROMIUM:-/usr/bin/chromium}"
export PATH="$EDGEREC_TOOLS/bin:$HOME/.cargo/bin:$PATH"
