#!/usr/bin/env bash
# Inference on the test split + evaluation (paper Sec. 5, App. E.3): `swift infer recipes/qwen25vl_7b/infer.yaml`
# (vLLM on GPUs, an adapter merged first; transformers without a GPU), then `mcr-swift evaluate`.
#   MODEL=runs/mrsi_merged/merged ADAPTERS=runs/cvo_grpo/v0-.../checkpoint-N bash recipes/infer_eval.sh
cd "$(dirname "$0")/.." && { [ -x .venv/bin/python ] && PATH="$PWD/.venv/bin:$PATH"; exec python -m mcr_swift.cli stage infer-eval "$@"; }
