#!/usr/bin/env bash
# SR at scale on one GPU (issue 13): under 5 minutes on one recent GPU.
#
#   benchmarks/gpu_check.sh              # needs CUDA: writes benchmarks/out/gpu_check.json
#   benchmarks/gpu_check.sh --dry-run    # the same Python and options at tiny sizes on CPU (a minute or two)
#
# Synthetic ERA5 at 256 x 256, 6 channels (t, u, v at 850 and 500 hPa), 512 times, streamed
# from zarr (one time per chunk, max_memory_mb 64, prefetch 8); trains the default U-Net 300 steps of 16 fields
# in bf16 autocast and channels-last, then samples 16 members with SDA guidance on the 4x
# coarse field, 25 sampler steps (49 forward + 49 backward passes); the JSON holds the
# samples/s, the waiting-for-data share, peak GPU memory and peak RSS, with the latest CPU
# figures (benchmarks/sr_scale_cpu.json, from benchmarks/sr_scale.py) beside them.
# PYTHON picks the interpreter (default .venv/bin/python), OUT the JSON, EXTRA more
# arguments of benchmarks/sr_scale.py (e.g. EXTRA=--compile).
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-.venv/bin/python}"
OUT="${OUT:-benchmarks/out/gpu_check.json}"
if [[ "${1:-}" == "--dry-run" ]]; then
  ARGS=(--dry-run --chunk-time 1 --prefetch 8 --precision bf16 --channels-last)  # bf16 autocast is CUDA's: fp32 on CPU
else
  "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'no CUDA device: run with --dry-run on CPU')"
  ARGS=(--device cuda --sizes 256x256 --times 512 --chunk-time 1 --train-steps 300 --batch 16 --max-memory-mb 64 --prefetch 8 --in-memory-upto-mb 0
        --members 16 --sample-steps 25 --sample-batch 16 --precision bf16 --channels-last --threads 4 --seam-steps 0)
fi
start=$(date +%s)
# shellcheck disable=SC2086
timeout 290 "$PY" benchmarks/sr_scale.py "${ARGS[@]}" ${EXTRA:-} --cpu-reference benchmarks/sr_scale_cpu.json --out "$OUT"
echo "gpu_check: $(( $(date +%s) - start )) s -> $OUT"
