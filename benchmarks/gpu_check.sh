#!/usr/bin/env bash
# GPU checks of the paths the CPU tests cannot reach (see benchmarks/gpu_check.py): the learner under
# DeepSpeed ZeRO-3 in bf16 (tokens/s, MFU), the CUDA-IPC weight handoff between two processes on one GPU,
# and sdpa vs eager attention in bf16 against an fp32 reference. Needs one CUDA GPU and the GPU stack
# (torch, transformers, deepspeed, pydantic). Results: JSON under ${RESULTS:-benchmarks/results}.
set -euo pipefail
cd "$(dirname "$0")/.."
RESULTS=${RESULTS:-benchmarks/results}
PY=${PYTHON:-python3}
MODEL=${MODEL:-configs/models/qwen2.5-0.5b}
mkdir -p "$RESULTS"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
"$PY" -c "import torch, transformers, deepspeed; print('torch', torch.__version__, '| transformers', transformers.__version__, '| deepspeed', deepspeed.__version__)"
run() { echo "== $*"; "$PY" benchmarks/gpu_check.py "$@"; }
run learner --model "$MODEL" --batch 16 --micro 4 --seq 1024 --out "$RESULTS/gpu_learner.json"
run learner --model "$MODEL" --batch 16 --micro 4 --seq 1024 --zero-stage 2 --out "$RESULTS/gpu_learner_zero2.json"
run learner --model "$MODEL" --batch 16 --micro 8 --seq 2048 --gradient-checkpointing --out "$RESULTS/gpu_learner_ckpt.json"
run ipc --model "$MODEL" --bucket-mb 256 --out "$RESULTS/gpu_ipc.json"
run ipc --model "$MODEL" --bucket-mb 32 --out "$RESULTS/gpu_ipc_32mb.json"
run attention --model "$MODEL" --batch 8 --seq 512 --out "$RESULTS/gpu_attention.json"
