#!/usr/bin/env bash
# MCR on Qwen2.5-VL-7B-Instruct, the whole pipeline: `mcr-swift pipeline` (docs/pipeline.md; --dry-run prints it).
#   bash recipes/qwen25vl_7b_full.sh  |  PROFILE=tiny bash recipes/qwen25vl_7b_full.sh  |  VARIANT=sft ...
cd "$(dirname "$0")/.." && { [ -x .venv/bin/python ] && PATH="$PWD/.venv/bin:$PATH"; exec python -m mcr_swift.cli pipeline --model qwen25vl_7b "$@"; }
