#!/usr/bin/env bash
# The GPU-sized suite on one GPU (sized for an H200 in under 10 minutes, never run: no GPU was lent
# so far): cost-model accuracy, predicted vs measured peak across budgets, then the side-by-side
# benchmark. Writes tables, JSON and plots into the directory given as $1 (e.g. $OUT).
set -euo pipefail
out="${1:?usage: benchmarks/gpu.sh OUT_DIR}"
cd "$(dirname "$0")/.."
mkdir -p "$out"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$out/gpu.txt"
python -m benchmarks.cost_model_accuracy --device cuda | tee "$out/cost_model_gpu.md"
python -m benchmarks.peak_accuracy --profile gpu --compiler inductor --models gpt2 llama --json "$out/peak_gpu.json" \
  | tee "$out/peak_gpu.md"
python -m benchmarks.run --profile gpu --device cuda --budgets 0.5 0.1 --steps 20 --timeout 150 --out "$out"
