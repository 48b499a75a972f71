#!/usr/bin/env bash
# The course on a real Gemma 2 architecture, ready for a GPU machine with no network:
#   benchmarks/gpu_course.sh                 # CUDA: Gemma 2 2B's shape, random weights, built here
#   benchmarks/gpu_course.sh --device cpu    # the same code path on the tiny random Gemma 2 (CI runs this)
# Runs all seven notebooks under nbval with GEMMA_MODEL set to that model (one summary line per
# notebook: minutes and peak memory), then `bench` for bf16, fp16, bnb-int8, bnb-nf4 and bf16+compile,
# saved as gemma_widgets/data/reference-gpu.json, which `bench.reference_run("reference-gpu.json")`
# loads beside a learner's run (the CPU check saves it under artifacts/: a tiny random model is no
# reference; Gemma 2 2B's shape with random weights is a reference for speed and memory, not quality).
set -euo pipefail
cd "$(dirname "$0")/.."
device=cuda
while [ $# -gt 0 ]; do
    case $1 in
        --device) device=$2; shift 2 ;;
        *) echo "usage: $0 [--device cuda|cpu]" >&2; exit 2 ;;
    esac
done
case $device in
    cuda) model=random-gemma2-2b; out=gemma_widgets/data/reference-gpu.json ;;
    cpu) model=tiny-random-gemma2; out=artifacts/reference-cpu.json ;;
    *) echo "--device must be cuda or cpu, not $device" >&2; exit 2 ;;
esac
PY=${PY:-.venv/bin/python}
export GEMMA_MODEL=$model HF_HUB_OFFLINE=1
if [ "$device" = cuda ]; then
    "$PY" -c 'import torch, sys; sys.exit(0 if torch.cuda.is_available() else "no CUDA device: use --device cpu")'
else
    export CUDA_VISIBLE_DEVICES=""
fi
"$PY" -m gemma_widgets prepare --model "$model"
mkdir -p artifacts
# The real 2B shape does not fit Binder's 2 GB: on CUDA, no Binder memory limit (conftest.py).
[ "$device" = cuda ] && export NOTEBOOK_MEMORY_LIMIT_MB=0
log=artifacts/gpu_course_$device.log
status=0
"$PY" -m pytest -p no:cacheprovider notebooks -q > "$log" 2>&1 || status=$?
grep -E "MB anonymous|[0-9]+ (passed|failed)" "$log" || true
[ "$status" = 0 ] || { echo "notebooks failed on $model: see $log" >&2; exit "$status"; }
"$PY" -m gemma_widgets bench --model "$model" --precisions bf16,fp16,bnb-int8,bnb-nf4,bf16+compile \
    --new-tokens 32 --repeats 3 --out "$out"
