#!/usr/bin/env bash
# Stage 5 (paper Sec. 5, App. E.3): merge the CVO LoRA (vLLM serves merged weights), infer the test split
# with vLLM on 8 GPUs (data parallel, greedy), then GMNER / MNER / EEG Pre-Rec-F1 against the gold rows.
# The same commands: recipes/infer_eval.sh (tests/test_paper_recipes.py pins the two).
set -euo pipefail
rm -rf runs/eval/policy
swift export \
  --model runs/mrsi_merged/merged --adapters "$(cat runs/cvo_grpo/last_checkpoint.txt)" \
  --template qwen2_5_vl --merge_lora true \
  --output_dir runs/eval/policy/merged
mkdir -p runs/eval && rm -f runs/eval/infer.jsonl     # swift infer appends to an existing file
MAX_PIXELS=1003520 NPROC_PER_NODE=8 \
swift infer \
  --model runs/eval/policy/merged --template qwen2_5_vl \
  --external_plugins "$(mcr-swift plugin)" --val_dataset mcr-gmner:test --result_path runs/eval/infer.jsonl \
  --infer_backend vllm --vllm_max_model_len 8192 --vllm_gpu_memory_utilization 0.9 \
  --max_new_tokens 2048 --temperature 0 --stream false
MAX_PIXELS=1003520 \
mcr-swift evaluate runs/eval/infer.jsonl --gold mcr_data/twitter_gmner/test.jsonl --family qwen2_5_vl \
  --json-out runs/eval/metrics.json
