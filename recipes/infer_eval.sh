#!/usr/bin/env bash
# Inference on the test split and evaluation (paper Sec. 5, App. E.3): `swift infer` over the registered
# dataset (vLLM on GPUs, App. E.4; transformers without a GPU), then `mcr-swift evaluate` against the
# prepared gold rows (GMNER / MNER / EEG Pre-Rec-F1, N-metrics). Decoding is greedy (TEMPERATURE=0,
# paper silent). Outputs: $OUTPUT_DIR/infer.jsonl (rewritten on every run), $OUTPUT_DIR/metrics.json.
# With vLLM and ADAPTERS, the adapter is first merged into $OUTPUT_DIR/policy/merged (recipes/merge_lora.sh).
#   MODEL=runs/mrsi_merged/merged ADAPTERS=runs/cvo_grpo/v0-.../checkpoint-N bash recipes/infer_eval.sh
set -euo pipefail
MODEL=${MODEL:-Qwen/Qwen2.5-VL-7B-Instruct}
ADAPTERS=${ADAPTERS:-}
TEMPLATE=${TEMPLATE:-qwen2_5_vl}
export MCR_MODEL_FAMILY=${MCR_MODEL_FAMILY:-$TEMPLATE}   # evaluate maps boxes from this family's space
DATASET=${DATASET:-mcr-gmner:test}
GOLD=${GOLD:-${MCR_DATA_DIR:-mcr_data}/twitter_gmner/test.jsonl}
GPUS=$(python -m mcr_swift.cli recipe-args gpus)
INFER_BACKEND=${INFER_BACKEND:-$([ "$GPUS" -gt 0 ] && echo vllm || echo transformers)}
MAX_NEW_TOKENS=${MAX_NEW_TOKENS:-2048}      # paper silent
TEMPERATURE=${TEMPERATURE:-0}
MAX_BATCH_SIZE=${MAX_BATCH_SIZE:-8}         # transformers backend only
export MAX_PIXELS=${MAX_PIXELS:-1003520}    # the training value; evaluate reads it too
OUTPUT_DIR=${OUTPUT_DIR:-runs/eval}
SWIFT=${SWIFT:-swift}
REAL=$([ "$(basename "${SWIFT%% *}")" = swift ] && echo true || echo false)   # false: a dry run, touch nothing
PLUGIN=$(python -m mcr_swift.cli plugin)
BACKEND=(--infer_backend "$INFER_BACKEND")
if [ "$INFER_BACKEND" = vllm ]; then
  BACKEND+=(--vllm_max_model_len "${VLLM_MAX_MODEL_LEN:-8192}" --vllm_gpu_memory_utilization "${VLLM_GPU_MEMORY_UTILIZATION:-0.9}")
  # data parallel over the GPUs found (one vLLM engine per GPU)
  if [ "${NPROC_PER_NODE:-$GPUS}" -gt 1 ]; then export NPROC_PER_NODE=${NPROC_PER_NODE:-$GPUS}; fi
else
  BACKEND+=(--max_batch_size "$MAX_BATCH_SIZE")
fi
if [ "$INFER_BACKEND" = vllm ] && [ -n "$ADAPTERS" ]; then
  # vLLM runs the merged weights; merged once, in one process, before the data-parallel launch
  if [ "$REAL" = true ]; then rm -rf "$OUTPUT_DIR/policy"; fi
  MODEL="$MODEL" ADAPTERS="$ADAPTERS" TEMPLATE="$TEMPLATE" OUTPUT_DIR="$OUTPUT_DIR/policy" SWIFT="$SWIFT" \
    NPROC_PER_NODE=1 bash "$(dirname "$0")/merge_lora.sh"
  MODEL="$OUTPUT_DIR/policy/merged"; ADAPTERS=""
fi
RESULT="$OUTPUT_DIR/infer.jsonl"
if [ "$REAL" = true ]; then mkdir -p "$OUTPUT_DIR"; rm -f "$RESULT"; fi   # swift infer appends to an existing file
echo "[infer_eval] model=$MODEL adapters=${ADAPTERS:-none} template=$TEMPLATE dataset=$DATASET" \
     "backend=$INFER_BACKEND nproc=${NPROC_PER_NODE:-1} max_new_tokens=$MAX_NEW_TOKENS temperature=$TEMPERATURE gold=$GOLD output=$OUTPUT_DIR"
# shellcheck disable=SC2086
$SWIFT infer --model "$MODEL" ${ADAPTERS:+--adapters "$ADAPTERS"} --template "$TEMPLATE" \
  --external_plugins "$PLUGIN" --val_dataset $DATASET --result_path "$RESULT" "${BACKEND[@]}" \
  --max_new_tokens "$MAX_NEW_TOKENS" --temperature "$TEMPERATURE" --stream false ${EXTRA_ARGS:-}
if [ "$REAL" = true ]; then
  # the resize settings come from the environment swift infer saw (MAX_PIXELS, MIN_PIXELS, IMAGE_*_TOKEN_NUM,
  # MCR_TEMPLATE_MAX_PIXELS), resolved as ms-swift does; a --max-pixels flag would override a token count
  python -m mcr_swift.cli evaluate "$RESULT" --gold "$GOLD" --family "$MCR_MODEL_FAMILY" \
    --json-out "$OUTPUT_DIR/metrics.json"
fi
