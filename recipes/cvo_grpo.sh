#!/usr/bin/env bash
# CVO stage (paper Sec. 4.2, App. D, App. E.4): GRPO with the rule-based reward gmner_orm (Eq. 10) on the
# filtered D2 (App. D.3), starting from the MRSI policy. Defaults are the paper's, on 8 GPUs:
#   2 epochs, lr 5e-6, effective batch 64, warmup ratio 0.05, 8 generations per prompt, temperature 1.5,
#   top-k 200, top-p 0.95, beta 0.005, clipping epsilon 0.15 (low) / 0.25 (high), LoRA, vLLM rollouts.
# BATCH_SIZE counts completions per optimizer step (ms-swift's global batch: NNODES x NPROC_PER_NODE x
# PER_DEVICE_BATCH_SIZE x gradient accumulation), i.e. 64 = 8 prompts x 8 generations; it must be a
# multiple of NUM_GENERATIONS (ms-swift's generation_batch_size rule). Kept for any GPU and node count;
# several nodes: NNODES, NODE_RANK, MASTER_ADDR, MASTER_PORT on each (README "Several nodes").
# Starting point: MODEL = the merged MRSI model (recipes/merge_lora.sh; a new LoRA is trained on it and
# the KL reference is the MRSI policy), or MODEL = the base model + ADAPTERS = the MRSI LoRA checkpoint
# (that LoRA keeps training; --ref_adapters makes the KL reference the MRSI policy too, not the base).
# vLLM (USE_VLLM=true, GPU only):
#   VLLM_MODE=colocate (default) - every training process also runs a vLLM engine on its GPU, sleeping
#     between rollouts (VLLM_GPU_MEMORY_UTILIZATION, SLEEP_LEVEL).
#   VLLM_MODE=server - rollouts on separate GPUs served by `swift rollout`, e.g. on GPUs 4-7:
#     CUDA_VISIBLE_DEVICES=4,5,6,7 swift rollout --model $MODEL --vllm_data_parallel_size 4 --port 8000
#     then CUDA_VISIBLE_DEVICES=0,1,2,3 NPROC_PER_NODE=4 VLLM_MODE=server VLLM_SERVER_HOST=127.0.0.1 \
#       VLLM_SERVER_PORT=8000 bash recipes/cvo_grpo.sh      (batch 64 = 4 procs x 4 x 4 accumulation)
# USE_VLLM=false generates with the training model (CPU runs). LOG_REWARD_TERMS=true also logs the five
# reward terms, the format check and the per-completion GMNER F1 (gmner_f1) with weight 0 (curves only;
# the training reward is unchanged). VAL_DATASET=mcr-gmner:dev (paper silent; none by default) evaluates
# the rewards on dev every EVAL_STEPS steps (default SAVE_STEPS): with LOG_REWARD_TERMS=true that gives
# the F1-on-dev curve of Fig. 4 (eval_rewards/GMNERF1Reward/mean; `mcr-swift curves`).
# Every value is an environment variable; EXTRA_ARGS is appended verbatim. SWIFT=echo prints the
# command; SWIFT="python -m mcr_swift.cli swift-args" resolves it into args.json without training.
# Writes the newest checkpoint folder to $OUTPUT_DIR/last_checkpoint.txt (real swift only).
set -euo pipefail
MODEL=${MODEL:-Qwen/Qwen2.5-VL-7B-Instruct}
ADAPTERS=${ADAPTERS:-}
TEMPLATE=${TEMPLATE:-qwen2_5_vl}
DATASET=${DATASET:-mcr-mrsi:d2_filtered}    # App. D.3: the filtered D2
NUM_EPOCHS=${NUM_EPOCHS:-2}                 # App. E.4
LEARNING_RATE=${LEARNING_RATE:-5e-6}        # App. E.4
LR_SCHEDULER=${LR_SCHEDULER:-cosine}        # paper silent: ms-swift's default, as in MRSI
BATCH_SIZE=${BATCH_SIZE:-64}                # App. E.4, completions per optimizer step
WARMUP_RATIO=${WARMUP_RATIO:-0.05}          # App. E.4
NUM_GENERATIONS=${NUM_GENERATIONS:-8}       # App. E.4, G
TEMPERATURE=${TEMPERATURE:-1.5}             # App. E.4 (passed explicitly: never the model's generation_config)
TOP_K=${TOP_K:-200}                         # App. E.4
TOP_P=${TOP_P:-0.95}                        # App. E.4
BETA=${BETA:-0.005}                         # App. E.4, KL coefficient
EPSILON=${EPSILON:-0.15}                    # App. E.4, clipping threshold (low)
EPSILON_HIGH=${EPSILON_HIGH:-0.25}          # App. E.4, clipping threshold (high)
REWARD_FUNCS=${REWARD_FUNCS:-gmner_orm}     # Eq. 10
REWARD_WEIGHTS=${REWARD_WEIGHTS:-}
if [ "${LOG_REWARD_TERMS:-false}" = true ]; then
  REWARD_FUNCS="$REWARD_FUNCS gmner_count gmner_span gmner_type gmner_iou gmner_entail gmner_format gmner_f1"
  REWARD_WEIGHTS="${REWARD_WEIGHTS:-1} 0 0 0 0 0 0 0"
fi
SPLIT=$(python -m mcr_swift.cli recipe-args batch --batch "$BATCH_SIZE" --nproc "${NPROC_PER_NODE:-}" --nnodes "${NNODES:-}" \
        --per-device "${PER_DEVICE_BATCH_SIZE:-}" --max-per-device 4 --num-generations "$NUM_GENERATIONS") || exit $?
eval "$SPLIT"                               # GPUS, NPROC_PER_NODE (default: GPUS), NNODES, WORLD_PROCS, PER_DEVICE_BATCH_SIZE, GRAD_ACC
MAX_STEPS=${MAX_STEPS:--1}                  # -1: train NUM_EPOCHS epochs
MAX_COMPLETION_LENGTH=${MAX_COMPLETION_LENGTH:-1024}  # paper silent
MAX_LENGTH=${MAX_LENGTH:-4096}
LORA_RANK=${LORA_RANK:-8}                   # paper silent: ms-swift's default LoRA (rank 8, alpha 32)
LORA_ALPHA=${LORA_ALPHA:-32}
export MAX_PIXELS=${MAX_PIXELS:-1003520}    # paper silent; rewards read the same value (CoordinateSpace.from_env)
USE_VLLM=${USE_VLLM:-$([ "$GPUS" -gt 0 ] && echo true || echo false)}   # App. E.4: vLLM sampling on GPUs
VLLM_MODE=${VLLM_MODE:-colocate}
OUTPUT_DIR=${OUTPUT_DIR:-runs/cvo_grpo}
SWIFT=${SWIFT:-swift}
PLUGIN=$(python -m mcr_swift.cli plugin)
if [ -z "${DEEPSPEED+x}" ]; then DEEPSPEED=$([ "$WORLD_PROCS" -gt 1 ] && echo zero2 || echo ""); fi
EVAL=()
if [ -n "${VAL_DATASET:-}" ]; then
  # shellcheck disable=SC2206
  EVAL=(--val_dataset $VAL_DATASET --eval_strategy steps --eval_steps "${EVAL_STEPS:-${SAVE_STEPS:-100}}"
        --per_device_eval_batch_size "$PER_DEVICE_BATCH_SIZE")   # ms-swift: eval batch divisible by G
fi
VLLM=()
if [ "$USE_VLLM" = true ]; then
  VLLM=(--use_vllm true --vllm_mode "$VLLM_MODE")
  if [ "$VLLM_MODE" = colocate ]; then   # paper silent: share each GPU between training and rollouts
    VLLM+=(--vllm_gpu_memory_utilization "${VLLM_GPU_MEMORY_UTILIZATION:-0.4}" --sleep_level "${SLEEP_LEVEL:-1}"
           --vllm_max_model_len "${VLLM_MAX_MODEL_LEN:-$MAX_LENGTH}")
  else
    VLLM+=(--vllm_server_host "${VLLM_SERVER_HOST:?VLLM_MODE=server needs VLLM_SERVER_HOST (see the header)}"
           --vllm_server_port "${VLLM_SERVER_PORT:-8000}")
  fi
else
  VLLM=(--use_vllm false)
fi

# One process in all, without DeepSpeed or vLLM: run it without torchrun (ms-swift starts torchrun whenever
# NPROC_PER_NODE or NNODES is set). A torchrun worker gets a process group (gloo on a CPU) that nothing
# destroys; its teardown at interpreter exit can abort a finished stage with SIGABRT (issue 20, docs/pipeline.md
# "Exit of a stage"). Several processes (or DeepSpeed or vLLM) keep torchrun.
LAUNCH=torchrun
if [ "$WORLD_PROCS" -eq 1 ] && [ -z "$DEEPSPEED" ] && [ "$USE_VLLM" != true ]; then LAUNCH=python; fi
export NPROC_PER_NODE
echo "[cvo_grpo] model=$MODEL adapters=${ADAPTERS:-none} template=$TEMPLATE dataset=$DATASET epochs=$NUM_EPOCHS" \
     "lr=$LEARNING_RATE batch=$BATCH_SIZE (= $NNODES nodes x $NPROC_PER_NODE procs x $PER_DEVICE_BATCH_SIZE x $GRAD_ACC accumulation," \
     "$((BATCH_SIZE / NUM_GENERATIONS)) prompts x $NUM_GENERATIONS generations) warmup=$WARMUP_RATIO" \
     "T=$TEMPERATURE top_k=$TOP_K top_p=$TOP_P beta=$BETA eps=$EPSILON/$EPSILON_HIGH rewards=[$REWARD_FUNCS]" \
     "vllm=$USE_VLLM$([ "$USE_VLLM" = true ] && echo "/$VLLM_MODE") max_steps=$MAX_STEPS deepspeed=${DEEPSPEED:-none} launch=$LAUNCH output=$OUTPUT_DIR"
[ "$LAUNCH" = python ] && unset NPROC_PER_NODE NNODES
# shellcheck disable=SC2086
$SWIFT rlhf --rlhf_type grpo \
  --model "$MODEL" ${ADAPTERS:+--adapters "$ADAPTERS" --ref_adapters "$ADAPTERS"} \
  --template "$TEMPLATE" --check_model false --external_plugins "$PLUGIN" --dataset $DATASET "${EVAL[@]}" \
  --tuner_type lora --lora_rank "$LORA_RANK" --lora_alpha "$LORA_ALPHA" --target_modules all-linear \
  --reward_funcs $REWARD_FUNCS ${REWARD_WEIGHTS:+--reward_weights $REWARD_WEIGHTS} \
  --num_generations "$NUM_GENERATIONS" --temperature "$TEMPERATURE" --top_k "$TOP_K" --top_p "$TOP_P" \
  --beta "$BETA" --epsilon "$EPSILON" --epsilon_high "$EPSILON_HIGH" --loss_type grpo \
  --num_train_epochs "$NUM_EPOCHS" --max_steps "$MAX_STEPS" --learning_rate "$LEARNING_RATE" \
  --lr_scheduler_type "$LR_SCHEDULER" --warmup_ratio "$WARMUP_RATIO" \
  --per_device_train_batch_size "$PER_DEVICE_BATCH_SIZE" --gradient_accumulation_steps "$GRAD_ACC" \
  --max_completion_length "$MAX_COMPLETION_LENGTH" --max_length "$MAX_LENGTH" "${VLLM[@]}" --log_entropy true \
  --logging_steps "${LOGGING_STEPS:-1}" --save_steps "${SAVE_STEPS:-100}" --save_total_limit "${SAVE_TOTAL_LIMIT:-2}" \
  --dataloader_num_workers "${DATALOADER_WORKERS:-4}" --report_to "${REPORT_TO:-tensorboard}" \
  --output_dir "$OUTPUT_DIR" ${DEEPSPEED:+--deepspeed "$DEEPSPEED"} ${EXTRA_ARGS:-}
if [ "$(basename "${SWIFT%% *}")" = swift ]; then python -m mcr_swift.cli recipe-args last-checkpoint "$OUTPUT_DIR"; fi
