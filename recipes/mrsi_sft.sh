#!/usr/bin/env bash
# MRSI stage (paper Sec. 4.1, App. E.4): LoRA SFT on D1 with the task instruction.
# Defaults are the paper's: lr 1e-4, cosine schedule, effective batch 16, 2 epochs for Qwen2.5-VL
# (5 for MiMo-VL, TEMPLATE=mimo_vl), on 8 GPUs with DeepSpeed ZeRO-2. The effective (global) batch is
# kept whatever the GPU and node count: BATCH_SIZE = NNODES x NPROC_PER_NODE x PER_DEVICE_BATCH_SIZE x
# gradient accumulation. Several nodes: run the same command on each with NNODES, NODE_RANK (0..NNODES-1),
# MASTER_ADDR (the rank-0 node) and MASTER_PORT (ms-swift's torchrun variables; README "Several nodes").
# DATASET defaults to D1 (mcr-mrsi:d1, written by `mcr-swift split`); when $MCR_DATA_DIR/mrsi/d1.jsonl
# does not exist it falls back to the prepared Twitter-GMNER train split (mcr-gmner:train) and says so.
# Every value is an environment variable; EXTRA_ARGS is appended verbatim. SWIFT=echo prints the
# command; SWIFT="python -m mcr_swift.cli swift-args" resolves it into args.json without training.
# Writes the newest checkpoint folder to $OUTPUT_DIR/last_checkpoint.txt (real swift only).
set -euo pipefail
MODEL=${MODEL:-Qwen/Qwen2.5-VL-7B-Instruct}
TEMPLATE=${TEMPLATE:-qwen2_5_vl}
if [ -z "${DATASET:-}" ]; then
  DATASET=mcr-mrsi:d1                       # Sec. 4.1: MRSI trains on D1
  if [ ! -f "${MCR_DATA_DIR:-mcr_data}/mrsi/d1.jsonl" ]; then
    echo "[mrsi_sft] notice: ${MCR_DATA_DIR:-mcr_data}/mrsi/d1.jsonl not found (run mcr-swift synth + split);" \
         "training on mcr-gmner:train instead" >&2
    DATASET=mcr-gmner:train
  fi
fi
if [ "$TEMPLATE" = mimo_vl ]; then NUM_EPOCHS=${NUM_EPOCHS:-5}; else NUM_EPOCHS=${NUM_EPOCHS:-2}; fi  # App. E.4
LEARNING_RATE=${LEARNING_RATE:-1e-4}        # App. E.4
LR_SCHEDULER=${LR_SCHEDULER:-cosine}        # App. E.4
BATCH_SIZE=${BATCH_SIZE:-16}                # App. E.4, effective (global) batch
SPLIT=$(python -m mcr_swift.cli recipe-args batch --batch "$BATCH_SIZE" --nproc "${NPROC_PER_NODE:-}" --nnodes "${NNODES:-}" \
        --per-device "${PER_DEVICE_BATCH_SIZE:-}" --max-per-device 2) || exit $?
eval "$SPLIT"                               # GPUS, NPROC_PER_NODE (default: GPUS), NNODES, WORLD_PROCS, PER_DEVICE_BATCH_SIZE, GRAD_ACC
MAX_STEPS=${MAX_STEPS:--1}                  # -1: train NUM_EPOCHS epochs
LORA_RANK=${LORA_RANK:-8}                   # paper silent: ms-swift's default LoRA (rank 8, alpha 32)
LORA_ALPHA=${LORA_ALPHA:-32}
MAX_LENGTH=${MAX_LENGTH:-4096}
export MAX_PIXELS=${MAX_PIXELS:-1003520}    # paper silent: 1280 image tokens (Qwen2.5-VL processor default)
OUTPUT_DIR=${OUTPUT_DIR:-runs/mrsi_sft}
SWIFT=${SWIFT:-swift}
PLUGIN=$(python -m mcr_swift.cli plugin)
if [ -z "${DEEPSPEED+x}" ]; then DEEPSPEED=$([ "$WORLD_PROCS" -gt 1 ] && echo zero2 || echo ""); fi

# One process in all, without DeepSpeed: run it without torchrun (ms-swift starts torchrun whenever
# NPROC_PER_NODE or NNODES is set). A torchrun worker gets a process group (gloo on a CPU) that nothing
# destroys; its teardown at interpreter exit can abort a finished stage with SIGABRT (issue 20, docs/pipeline.md
# "Exit of a stage"). Several processes (or DeepSpeed) keep torchrun.
LAUNCH=torchrun
if [ "$WORLD_PROCS" -eq 1 ] && [ -z "$DEEPSPEED" ]; then LAUNCH=python; fi
export NPROC_PER_NODE
echo "[mrsi_sft] model=$MODEL template=$TEMPLATE dataset=$DATASET epochs=$NUM_EPOCHS lr=$LEARNING_RATE" \
     "batch=$BATCH_SIZE (= $NNODES nodes x $NPROC_PER_NODE procs x $PER_DEVICE_BATCH_SIZE x $GRAD_ACC accumulation)" \
     "max_steps=$MAX_STEPS deepspeed=${DEEPSPEED:-none} max_pixels=$MAX_PIXELS launch=$LAUNCH output=$OUTPUT_DIR"
[ "$LAUNCH" = python ] && unset NPROC_PER_NODE NNODES
# shellcheck disable=SC2086
$SWIFT sft \
  --model "$MODEL" --template "$TEMPLATE" --check_model false \
  --external_plugins "$PLUGIN" --dataset $DATASET \
  --tuner_type lora --lora_rank "$LORA_RANK" --lora_alpha "$LORA_ALPHA" --target_modules all-linear \
  --num_train_epochs "$NUM_EPOCHS" --max_steps "$MAX_STEPS" \
  --learning_rate "$LEARNING_RATE" --lr_scheduler_type "$LR_SCHEDULER" \
  --per_device_train_batch_size "$PER_DEVICE_BATCH_SIZE" --gradient_accumulation_steps "$GRAD_ACC" \
  --max_length "$MAX_LENGTH" --logging_steps "${LOGGING_STEPS:-5}" --save_steps "${SAVE_STEPS:-500}" \
  --save_total_limit "${SAVE_TOTAL_LIMIT:-2}" --dataloader_num_workers "${DATALOADER_WORKERS:-4}" \
  --report_to "${REPORT_TO:-tensorboard}" --output_dir "$OUTPUT_DIR" \
  ${DEEPSPEED:+--deepspeed "$DEEPSPEED"} ${EXTRA_ARGS:-}
if [ "$(basename "${SWIFT%% *}")" = swift ]; then python -m mcr_swift.cli recipe-args last-checkpoint "$OUTPUT_DIR"; fi
