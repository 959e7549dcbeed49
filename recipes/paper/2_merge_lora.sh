#!/usr/bin/env bash
# Stage 2: merge the MRSI LoRA into the base model; CVO trains a new LoRA on it (KL reference = MRSI policy).
# The same command: recipes/merge_lora.sh (tests/test_paper_recipes.py pins the two).
set -euo pipefail
swift export \
  --model Qwen/Qwen2.5-VL-7B-Instruct --adapters "$(cat runs/mrsi_sft/last_checkpoint.txt)" \
  --template qwen2_5_vl --merge_lora true \
  --output_dir runs/mrsi_merged/merged
