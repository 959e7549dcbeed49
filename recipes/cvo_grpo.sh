#!/usr/bin/env bash
# CVO stage (paper Sec. 4.2, App. D, E.4) on its own: `swift rlhf recipes/qwen25vl_7b/cvo_grpo.yaml` with what
# differs here (the GPUs found: batch 64 kept, vLLM only with a GPU; MODEL, ADAPTERS, VLLM_MODE, ... of
# docs/pipeline.md); flags given here are appended. --dry-run prints it.
cd "$(dirname "$0")/.." && { [ -x .venv/bin/python ] && PATH="$PWD/.venv/bin:$PATH"; exec python -m mcr_swift.cli stage cvo-grpo "$@"; }
