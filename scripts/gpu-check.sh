#!/usr/bin/env bash
# On a machine with an NVIDIA GPU (CUDA 13, cuDNN 9): a short MovieLens-1M training on the CUDA execution provider
# and the same on the CPU, then examples/s and the final validation metrics of both.
#   scripts/gpu-check.sh [EPOCHS]            (default 2)
# What it uses, each overridable:
#   EDGEREC_BIN     the edgerec binary (default: the workspace's build, `cargo build -p edgerec`; for a machine
#                   without Open MPI, `cargo build -p edgerec --no-default-features`)
#   ORT_GPU_DIR     a folder with libonnxruntime.so.$ORT_VERSION, libonnxruntime_providers_shared.so and
#                   libonnxruntime_providers_cuda.so from the onnxruntime-gpu wheel (fetched from PyPI when absent)
#   EDGEREC_DATA_DIR  where MovieLens-1M is (fetched on first use)
#   GPU_CHECK_OUT   where the two runs go (default a temporary folder)
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
source "$here/env.sh"
epochs="${1:-2}"
bin="${EDGEREC_BIN:-$CARGO_TARGET_DIR/debug/edgerec}"
out="${GPU_CHECK_OUT:-$(mktemp -d)}"
mkdir -p "$out"
ort="${ORT_GPU_DIR:-$EDGEREC_CACHE/onnxruntime-gpu-$ORT_VERSION}"

command -v nvidia-smi >/dev/null || { echo "no nvidia-smi: this check needs an NVIDIA GPU" >&2; exit 1; }
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
[ -x "$bin" ] || { echo "no edgerec binary at $bin (cargo build -p edgerec, or set EDGEREC_BIN)" >&2; exit 1; }
if ldd "$bin" | grep -q 'libmpi.* not found'; then
  echo "$bin needs Open MPI's library, which this machine lacks: install openmpi-bin, or build a binary without MPI" \
    "(cargo build -p edgerec --no-default-features)" >&2
  exit 1
fi
if [ ! -f "$ort/libonnxruntime_providers_cuda.so" ]; then
  echo "==> onnxruntime-gpu $ORT_VERSION from PyPI into $ort"
  ort_wheel_libs onnxruntime-gpu "$ort" "libonnxruntime.so.$ORT_VERSION" \
    libonnxruntime_providers_shared.so libonnxruntime_providers_cuda.so
fi
export ORT_DYLIB_PATH="$ort/libonnxruntime.so.$ORT_VERSION"
# The CUDA provider finds cuDNN and cuBLAS through the loader's path.
export LD_LIBRARY_PATH="$ort:/usr/local/cuda/lib64:/usr/local/cuda/targets/x86_64-linux/lib:${LD_LIBRARY_PATH:-}"

for device in cuda cpu; do
  echo "==> $epochs epochs of MovieLens-1M on $device"
  "$bin" train movielens-1m --device "$device" --max-epochs "$epochs" --patience-steps 1000000 --evaluate-every-steps 1 --out "$out/$device" \
    2>&1 | tee "$out/$device.log"
done

echo "==> summary (examples/s: mean over epochs after the first)"
python3 - "$out" <<'PY'
import json, sys
out = sys.argv[1]
for device in ("cuda", "cpu"):
    report = json.load(open(f"{out}/{device}/report.json"))
    epochs = report["epochs"]
    steady = epochs[1:] or epochs
    rate = sum(e["examples_per_second"] for e in steady) / len(steady)
    host = sum(e.get("host_seconds", 0) for e in steady) / len(steady)
    epoch = sum(e["seconds"] for e in steady) / len(steady)
    v = report["validation"]
    print(f"{device:5} {rate:10.0f} examples/s  {report['training_seconds']:7.1f} s in all  "
          f"validation HR@10 {v['hr@10']:.4f}  NDCG@10 {v['ndcg@10']:.4f}  ({len(epochs)} epochs)  "
          f"host preparing inputs {host:.1f} s of {epoch:.1f} s per epoch")
PY
