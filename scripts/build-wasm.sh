#!/usr/bin/env bash
# Builds the Wasm rankers and the CDN worker once each and leaves them in $EDGEREC_WASM_DIR:
#   ranker-wasi.wasm          the ranker component (wit/ranker.wit, WASI 0.2) edge nodes run in wasmtime (wasm SIMD,
#                             speed-optimised)
#   edgerec-worker.wasm       the CDN worker (wasi:http/proxy component, size-optimised), before `edgerec worker build`
#   browser/                  the browser package: edgerec.js over the wasm-bindgen module (wasm SIMD, size-optimised)
#   ranker-wasi-nosimd.wasm   only with --no-simd-too: the ranker component without SIMD, for the benchmark
# Prints raw and gzip sizes.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
source "$here/env.sh"
cd "$here/.."
mkdir -p "$EDGEREC_WASM_DIR/browser"

# rustc links wasm32-wasip2 libraries as components itself (wasm-component-ld ships with the target).
echo "==> ranker component (wasm32-wasip2, profile wasm-speed)"
cargo build --locked -p edgerec-ranker --target wasm32-wasip2 --profile wasm-speed
cp "$CARGO_TARGET_DIR/wasm32-wasip2/wasm-speed/edgerec_ranker.wasm" "$EDGEREC_WASM_DIR/ranker-wasi.wasm"

# The CDN worker: a wasi:http/proxy component, size-optimised (platforms limit the upload). `edgerec worker build`
# embeds a deployment into it.
echo "==> wasi:http worker (wasm32-wasip2, profile wasm-size)"
cargo build --locked -p edgerec-worker --target wasm32-wasip2 --profile wasm-size
cp "$CARGO_TARGET_DIR/wasm32-wasip2/wasm-size/edgerec_worker.wasm" "$EDGEREC_WASM_DIR/edgerec-worker.wasm"

echo "==> browser ranker (wasm32-unknown-unknown, profile wasm-size)"
cargo build --locked -p edgerec-ranker --target wasm32-unknown-unknown --profile wasm-size
raw="$CARGO_TARGET_DIR/wasm32-unknown-unknown/wasm-size/edgerec_ranker.wasm"
# No wasm-opt pass: Debian's binaryen (108) breaks the externref table wasm-bindgen emits, and its -Oz made the
# gzip download larger, not smaller (docs/benchmarks.md).
wasm-bindgen --target web --remove-name-section --remove-producers-section \
  --out-dir "$EDGEREC_WASM_DIR/browser" "$raw"
# The package a website embeds: our module over wasm-bindgen's, its types and package.json.
cp edge/browser/edgerec.js edge/browser/plan.js edge/browser/edgerec.d.ts edge/browser/package.json "$EDGEREC_WASM_DIR/browser/"
# Served as is to browsers that accept gzip (edge nodes compress other files on the fly, at a fast level).
gzip -9 -k -f "$EDGEREC_WASM_DIR/browser/edgerec_ranker_bg.wasm"
# Subresource Integrity hashes of the files a page loads, for sites that pin the package (README, "Pinning the
# package"); written next to them as integrity.json.
python3 - "$EDGEREC_WASM_DIR/browser" <<'PY'
import base64, hashlib, json, pathlib, sys
folder = pathlib.Path(sys.argv[1])
names = ["edgerec.js", "plan.js", "edgerec_ranker.js", "edgerec_ranker_bg.wasm"]
hashes = {n: "sha384-" + base64.b64encode(hashlib.sha384((folder / n).read_bytes()).digest()).decode() for n in names}
(folder / "integrity.json").write_text(json.dumps(hashes, indent=2) + "\n")
print("==> Subresource Integrity (browser/integrity.json)")
for name, value in hashes.items():
    print(f"{name:28} {value}")
PY

if [ "${1:-}" = "--no-simd-too" ]; then
  echo "==> ranker component without SIMD (benchmark only)"
  CARGO_TARGET_WASM32_WASIP2_RUSTFLAGS="-C target-feature=-simd128" \
    cargo build --locked -p edgerec-ranker --target wasm32-wasip2 --profile wasm-speed \
    --target-dir "$CARGO_TARGET_DIR/nosimd"
  cp "$CARGO_TARGET_DIR/nosimd/wasm32-wasip2/wasm-speed/edgerec_ranker.wasm" "$EDGEREC_WASM_DIR/ranker-wasi-nosimd.wasm"
fi

echo "==> sizes (bytes, raw / gzip -9)"
for f in "$EDGEREC_WASM_DIR"/ranker-wasi*.wasm "$EDGEREC_WASM_DIR/edgerec-worker.wasm" "$EDGEREC_WASM_DIR/browser/edgerec_ranker_bg.wasm"; do
  printf '%-60s %10d %10d\n' "${f#"$EDGEREC_WASM_DIR"/}" "$(stat -c %s "$f")" "$(gzip -9 -c "$f" | wc -c)"
done
