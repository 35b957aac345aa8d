#!/usr/bin/env bash
# The GPU half of the speed benchmarks in one go, for a machine with a CUDA GPU:
# MNIST s/epoch and CelebA-64 images/s, (a) bare vs (c) vaelab, in fp32 and bf16, eager and
# compiled; (b) the classic pipeline once, in fp32; vaelab with the split in pinned host memory
# instead of on the GPU; and the CUDA-only tests (pinned staging, the NaN check without a sync).
# Usage: benchmarks/gpu_check.sh [OUT_DIR]     (default outputs/bench/gpu; PYTHON=... to pick python)
# vaelab is imported from src/, so no install is needed. On the device tool's GPU machine (it has
# torch, Lightning and TensorBoard, not Hydra), build the pure-Python wheels here once:
#   echo /.whl/ >> .git/info/exclude
#   .venv/bin/pip wheel --no-deps -w .whl hydra-core==1.3.8 omegaconf==2.3.1 antlr4-python3-runtime==4.9.3
# then run there, carrying .whl (about 5 minutes):
#   python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl &&
#   PYTHONPATH=/tmp/site PYTHON=python3 bash benchmarks/gpu_check.sh $OUT
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
out=${1:-outputs/bench/gpu}
py=${PYTHON:-.venv/bin/python}
synthetic=${TMPDIR:-/tmp}/vaelab-bench-synthetic # written once when real data is absent, then reused
mkdir -p "$out"
bench() { "$py" benchmarks/bench_training.py --device cuda --rounds 1 --epochs 3 --synthetic-dir "$synthetic" "$@"; }

"$py" -m pytest -q tests/test_speed_options.py tests/test_bad_input.py -k gpu
bench --only mnist,celeba --out "$out/fp32.json"
bench --only mnist,celeba --pipelines bare,vaelab --precision bf16-mixed --out "$out/bf16.json"
bench --only mnist,celeba --pipelines bare,vaelab --compile --out "$out/fp32-compile.json"
bench --only mnist,celeba --pipelines bare,vaelab --precision bf16-mixed --compile --channels-last \
    --out "$out/bf16-compile-nhwc.json"
bench --only mnist --pipelines vaelab --on-device false --out "$out/fp32-host-pinned.json"
