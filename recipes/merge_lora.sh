#!/usr/bin/env bash
# Merge the MRSI LoRA into its base model: `swift export recipes/qwen25vl_7b/merge_lora.yaml --adapters ...`
#   MODEL=Qwen/Qwen2.5-VL-7B-Instruct ADAPTERS=runs/mrsi_sft/v0-.../checkpoint-N bash recipes/merge_lora.sh
cd "$(dirname "$0")/.." && { [ -x .venv/bin/python ] && PATH="$PWD/.venv/bin:$PATH"; exec python -m mcr_swift.cli stage merge "$@"; }
