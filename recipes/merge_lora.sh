#!/usr/bin/env bash
# Merge the MRSI LoRA into its base model (`swift export --merge_lora true`), so that CVO trains a new
# LoRA on the MRSI policy and uses it as the KL reference (recipes/cvo_grpo.sh). The merged model is
# written to $OUTPUT_DIR/merged (MERGED_DIR) and that folder to $OUTPUT_DIR/last_checkpoint.txt
# (real swift only). ms-swift refuses an existing MERGED_DIR: remove it to merge again.
#   MODEL=Qwen/Qwen2.5-VL-7B-Instruct ADAPTERS=runs/mrsi_sft/v0-.../checkpoint-N bash recipes/merge_lora.sh
set -euo pipefail
MODEL=${MODEL:-Qwen/Qwen2.5-VL-7B-Instruct}
ADAPTERS=${ADAPTERS:?set ADAPTERS to the MRSI LoRA checkpoint (runs/mrsi_sft/last_checkpoint.txt)}
TEMPLATE=${TEMPLATE:-qwen2_5_vl}
OUTPUT_DIR=${OUTPUT_DIR:-runs/mrsi_merged}
MERGED_DIR=${MERGED_DIR:-$OUTPUT_DIR/merged}
SWIFT=${SWIFT:-swift}
echo "[merge_lora] model=$MODEL adapters=$ADAPTERS template=$TEMPLATE -> $MERGED_DIR"
# shellcheck disable=SC2086
$SWIFT export --model "$MODEL" --adapters "$ADAPTERS" --template "$TEMPLATE" --merge_lora true \
  --output_dir "$MERGED_DIR" ${EXTRA_ARGS:-}
if [ "$(basename "${SWIFT%% *}")" = swift ]; then
  python -m mcr_swift.cli recipe-args last-checkpoint "$OUTPUT_DIR" --checkpoint "$MERGED_DIR"
fi
