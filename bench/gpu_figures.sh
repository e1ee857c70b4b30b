#!/usr/bin/env bash
# The GPU figures of README's performance section (issue 21, item 5), in one go, on a machine
# with CUDA and python3 holding torch, diffusers, transformers and open-clip-torch:
#     bash bench/gpu_figures.sh 2>&1 | tee gpu.log        (about 5 minutes on an H200)
# Each bench has a time limit of its own, so one that fails or hangs leaves the others' figures.
set -u
cd "$(dirname "$0")/.."
export BENCH_SD15_FILE="${BENCH_SD15_FILE:-/tmp/atelier-sd15-random.safetensors}"  # written once
export PYTHONUNBUFFERED=1
PY="${PYTHON:-python3}"

run() {
    local limit=$1
    shift
    echo "=== $* (at most ${limit} s)"
    timeout "$limit" env "$@" || echo "=== exit status $?"
}

"$PY" -c 'import torch; print("torch", torch.__version__, torch.cuda.get_device_name())'
run 150 "$PY" bench/bench_gpu_model_switch.py
run 150 BENCH_FAMILIES=sd15 BENCH_SIZE=512 BENCH_RUNS=3 "$PY" bench/bench_batching.py
run 360 BENCH_RUNS=5 BENCH_VARIANTS="${BENCH_VARIANTS:-eager,channels_last,cudagraphs}" \
    "$PY" bench/bench_engine_gpu_unet.py
