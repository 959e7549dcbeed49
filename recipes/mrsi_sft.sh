#!/usr/bin/env bash
# MRSI stage (paper Sec. 4.1, App. E.4) on its own: `swift sft recipes/qwen25vl_7b/mrsi_sft.yaml` (the paper's
# values, 8 GPUs) with what differs here: the GPUs found (effective batch 16 kept), the stage recipe variables
# of docs/pipeline.md (MODEL, DATASET, BATCH_SIZE, NNODES, ...); flags given here are appended. --dry-run prints it.
cd "$(dirname "$0")/.." && { [ -x .venv/bin/python ] && PATH="$PWD/.venv/bin:$PATH"; exec python -m mcr_swift.cli stage mrsi-sft "$@"; }
