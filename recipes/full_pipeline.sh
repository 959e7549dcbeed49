#!/usr/bin/env bash
# The whole MCR pipeline (paper Sec. 4, App. D.3, App. E.4), one stage after the other, all outputs
# under RUN_DIR; a stage whose output exists is skipped, so re-running after a failure resumes:
#   prepare -> synthesise D_R -> split D1/D2 -> MRSI SFT -> merge -> [trained-posts check] -> sample &
#   filter D2 -> CVO GRPO -> infer on test -> evaluate -> curves -> report (RUN_DIR/report.md, report.json)
# Called by the model wrappers (recipes/qwen25vl_7b_full.sh, recipes/mimovl_7b_full.sh).
#
# PROFILE=paper (default): the paper's values on the GPUs found (recipes/mrsi_sft.sh, cvo_grpo.sh,
#   infer_eval.sh carry the App. E.4 defaults). Synthesis needs OpenAI-compatible endpoints for the
#   LLM/MLLM styles: SYNTH_LLM_BASE_URL/SYNTH_LLM_MODEL (the paper: DeepSeek) and
#   SYNTH_MLLM_BASE_URL/SYNTH_MLLM_MODEL (the paper: Qwen2.5-VL-72B), or OPENAI_BASE_URL/OPENAI_MODEL
#   for both, or SYNTH_STYLES=formatted_a,formatted_b for the offline template styles only.
# PROFILE=tiny: the same stages on a CPU with the tiny random Qwen2.5-VL built offline, a handful of
#   posts with stand-in images, no vLLM, and a local `swift deploy` of the tiny model as the synthesis
#   endpoint. MRSI fully fine-tunes the tiny model until it memorises its D1 posts (checked by the
#   trained-eval stage, issue 16); it earns ~nothing on unseen D2 posts, so the tiny profile opens the
#   App. D.3 filter thresholds (else D2 would be empty); everything else is the paper's code path.
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x .venv/bin/python ] && export PATH="$PWD/.venv/bin:$PATH"
PROFILE=${PROFILE:-paper}
RUN_DIR=${RUN_DIR:-runs/full_${PROFILE}}
mkdir -p "$RUN_DIR"
RUN_DIR=$(cd "$RUN_DIR" && pwd)
SHARED=${MCR_SHARED_DIR:-$(cd .. && pwd)/shared}
GMNER_ROOT=${GMNER_ROOT:-$SHARED/data/twitter_gmner_v2}
TEMPLATE=${TEMPLATE:-qwen2_5_vl}
export MCR_MODEL_FAMILY=${MCR_MODEL_FAMILY:-$TEMPLATE}
export MCR_DATA_DIR="$RUN_DIR/data"
SEED=${SEED:-0}
D1_RATIO=${D1_RATIO:-0.5}                       # paper silent (README): half of D_R for MRSI
SYNTH_STYLES=${SYNTH_STYLES:-formatted_a,formatted_b,llm_qa,llm_conclusions,mllm_distill}
SWIFT=${SWIFT:-swift}

case "$PROFILE" in
  tiny)
    export MAX_PIXELS=${MAX_PIXELS:-50176}
    LIMIT=${LIMIT:-8}; STANDIN=${STANDIN:-1}
    export NPROC_PER_NODE=1 DEEPSPEED="" DATALOADER_WORKERS=0 REPORT_TO=none LOGGING_STEPS=1
    # issue 16, a run that learns: MRSI memorises its D1 posts (full fine-tuning of the tiny model, a high
    # learning rate with warmup, 50 passes over D1), checked by the trained-eval stage;
    # generation lengths cover a whole D_R chain (<think>...</think><answer>[...]</answer>, <= ~270 tokens)
    SFT_TUNER=${SFT_TUNER:-full}; SFT_LEARNING_RATE=${SFT_LEARNING_RATE:-1e-2}
    SFT_EXTRA_ARGS=${SFT_EXTRA_ARGS:---warmup_ratio 0.1}; TRAINED_EVAL=${TRAINED_EVAL:-true}
    export LOG_REWARD_TERMS=${LOG_REWARD_TERMS:-true}   # the reward terms and per-completion F1 curves (weight 0)
    SFT_EPOCHS=${SFT_EPOCHS:-50}; SFT_BATCH_SIZE=${SFT_BATCH_SIZE:-2}   # 8 D1 rows today: 200 steps (160 memorised 1 of 5)
    GRPO_MAX_STEPS=${GRPO_MAX_STEPS:-2}; GRPO_BATCH_SIZE=${GRPO_BATCH_SIZE:-4}; NUM_GENERATIONS=${NUM_GENERATIONS:-4}
    USE_VLLM=${USE_VLLM:-false}; INFER_BACKEND=${INFER_BACKEND:-transformers}
    MAX_COMPLETION_LENGTH=${MAX_COMPLETION_LENGTH:-320}; MAX_NEW_TOKENS=${MAX_NEW_TOKENS:-320}
    SYNTH_TEMPERATURE=${SYNTH_TEMPERATURE:-0}; SYNTH_MAX_TOKENS=${SYNTH_MAX_TOKENS:-32}; SYNTH_CONCURRENCY=${SYNTH_CONCURRENCY:-2}
    FILTER_G=${FILTER_G:-4}; FILTER_MAX_TOKENS=${FILTER_MAX_TOKENS:-32}
    FILTER_MIN_STD=${FILTER_MIN_STD:-0}; FILTER_MIN_MAX=${FILTER_MIN_MAX:-0}
    FILTER_MIN_MEDIAN=${FILTER_MIN_MEDIAN:-0}; FILTER_MAX_MEDIAN=${FILTER_MAX_MEDIAN:-1}
    MODEL=${MODEL:-$RUN_DIR/tiny-qwen2_5_vl}
    ;;
  paper)
    LIMIT=${LIMIT:-}; STANDIN=${STANDIN:-0}
    USE_VLLM=${USE_VLLM:-true}; INFER_BACKEND=${INFER_BACKEND:-vllm}
    MODEL=${MODEL:?set MODEL (the wrappers do)}
    # the filter's policy server: one vLLM engine per GPU found (data parallel), like the training run
    GPUS=$(python -m mcr_swift.recipe_args gpus)
    if [ "$INFER_BACKEND" = vllm ] && [ "$GPUS" -gt 1 ]; then
      SERVE_EXTRA_ARGS=${SERVE_EXTRA_ARGS:---vllm_data_parallel_size $GPUS}; fi
    ;;
  *) echo "PROFILE must be paper or tiny, got '$PROFILE'" >&2; exit 2 ;;
esac
# App. D.3 filter and App. E.4 sampling (the filter samples like GRPO's rollouts)
FILTER_G=${FILTER_G:-8}; FILTER_TEMPERATURE=${FILTER_TEMPERATURE:-1.5}; FILTER_TOP_K=${FILTER_TOP_K:-200}
FILTER_TOP_P=${FILTER_TOP_P:-0.95}; FILTER_MAX_TOKENS=${FILTER_MAX_TOKENS:-1024}
FILTER_MIN_STD=${FILTER_MIN_STD:-0.1}; FILTER_MIN_MAX=${FILTER_MIN_MAX:-0.8}
FILTER_MIN_MEDIAN=${FILTER_MIN_MEDIAN:-0.08}; FILTER_MAX_MEDIAN=${FILTER_MAX_MEDIAN:-0.6}
SYNTH_TEMPERATURE=${SYNTH_TEMPERATURE:-0.7}; SYNTH_MAX_TOKENS=${SYNTH_MAX_TOKENS:-2048}
SYNTH_CONCURRENCY=${SYNTH_CONCURRENCY:-8}
MERGE=${MERGE:-true}
TIMES="$RUN_DIR/times.tsv"
SERVER_PID="$RUN_DIR/.server.pid"
trap 'python -m mcr_swift.serve stop --pid-file "$SERVER_PID" || true' EXIT

log() { echo "[full $(date +%H:%M:%S)] $*"; }
# stage NAME OUTPUT FUNCTION: run FUNCTION unless OUTPUT exists; record its wall time
stage() {
  if [ -e "$2" ]; then log "$1: skipped ($2 exists)"; printf '%s\tskipped\n' "$1" >> "$TIMES"; return; fi
  log "$1 ..."
  local t0; t0=$(date +%s)
  "$3"
  printf '%s\t%s\n' "$1" "$(( $(date +%s) - t0 ))" >> "$TIMES"
  [ -e "$2" ] || { echo "stage $1 finished without writing $2" >&2; exit 1; }
}
serve() {  # serve MODEL [ADAPTERS]: background swift deploy; sets BASE_URL
  BASE_URL=$(python -m mcr_swift.serve start --log "$RUN_DIR/logs/deploy_$(date +%s).log" --pid-file "$SERVER_PID" -- \
    --model "$1" ${2:+--adapters "$2"} --template "$TEMPLATE" --infer_backend "$INFER_BACKEND" \
    --served_model_name policy --max_new_tokens "${SERVE_MAX_NEW_TOKENS:-2048}" ${SERVE_EXTRA_ARGS:-})
  log "server up at $BASE_URL"
}
unserve() { python -m mcr_swift.serve stop --pid-file "$SERVER_PID"; }
mkdir -p "$RUN_DIR/logs"

do_tiny() { python -m mcr_swift.cli tiny-model "$MODEL"; }
do_prepare() {
  local extra=()
  [ -n "$LIMIT" ] && extra+=(--limit "$LIMIT")
  [ "$STANDIN" = 1 ] && extra+=(--standin-images "$RUN_DIR/images")
  [ -n "${IMAGE_DIR:-}" ] && extra+=(--image-dir "$IMAGE_DIR")
  python -m mcr_swift.cli prepare --root "$GMNER_ROOT" --out "$MCR_DATA_DIR" --family "$MCR_MODEL_FAMILY" \
    --no-progress "${extra[@]}"
}
do_synth() {
  local ep=()
  if [ "$PROFILE" = tiny ] && [ -z "${SYNTH_BASE_URL:-}" ]; then
    serve "$MODEL"; ep=(--base-url "$BASE_URL")        # the tiny model stands in for DeepSeek / Qwen2.5-VL-72B
  else
    [ -n "${SYNTH_BASE_URL:-}" ] && ep+=(--base-url "$SYNTH_BASE_URL")
    [ -n "${SYNTH_MODEL:-}" ] && ep+=(--model "$SYNTH_MODEL")
    [ -n "${SYNTH_LLM_BASE_URL:-}" ] && ep+=(--llm-base-url "$SYNTH_LLM_BASE_URL")
    [ -n "${SYNTH_LLM_MODEL:-}" ] && ep+=(--llm-model "$SYNTH_LLM_MODEL")
    [ -n "${SYNTH_MLLM_BASE_URL:-}" ] && ep+=(--mllm-base-url "$SYNTH_MLLM_BASE_URL")
    [ -n "${SYNTH_MLLM_MODEL:-}" ] && ep+=(--mllm-model "$SYNTH_MLLM_MODEL")
  fi
  python -m mcr_swift.cli synth --input "$MCR_DATA_DIR/twitter_gmner/train.jsonl" --out "$MCR_DATA_DIR/mrsi/d_r.jsonl" \
    --styles "$SYNTH_STYLES" --seed "$SEED" --temperature "$SYNTH_TEMPERATURE" --max-tokens "$SYNTH_MAX_TOKENS" \
    --concurrency "$SYNTH_CONCURRENCY" --no-progress "${ep[@]}"
  [ "$PROFILE" = tiny ] && [ -z "${SYNTH_BASE_URL:-}" ] && unserve
  return 0
}
do_split() {
  python -m mcr_swift.cli split --input "$MCR_DATA_DIR/mrsi/d_r.jsonl" --out-dir "$MCR_DATA_DIR/mrsi.tmp" \
    --d1-ratio "$D1_RATIO" --seed "$SEED"
  mv "$MCR_DATA_DIR/mrsi.tmp/d2.jsonl" "$MCR_DATA_DIR/mrsi/d2.jsonl"
  mv "$MCR_DATA_DIR/mrsi.tmp/d1.jsonl" "$MCR_DATA_DIR/mrsi/d1.jsonl"; rmdir "$MCR_DATA_DIR/mrsi.tmp"
}
do_sft() {
  # SFT_TUNER=full (tiny profile, issue 16): full fine-tuning, the checkpoint is the MRSI policy (no merge)
  local extra=${SFT_EXTRA_ARGS:-}
  [ "${SFT_TUNER:-lora}" = full ] && extra="--tuner_type full --save_only_model true $extra"
  local steps=${SFT_MAX_STEPS:-}
  if [ -z "$steps" ] && [ -n "${SFT_EPOCHS:-}" ]; then   # tiny profile: SFT_EPOCHS passes over D1, whatever its size
    steps=$(( ($(grep -c . "$MCR_DATA_DIR/mrsi/d1.jsonl") * SFT_EPOCHS + SFT_BATCH_SIZE - 1) / SFT_BATCH_SIZE ))
  fi
  LEARNING_RATE=${SFT_LEARNING_RATE:-${LEARNING_RATE:-}} EXTRA_ARGS="$extra" \
  MODEL="$MODEL" TEMPLATE="$TEMPLATE" DATASET=mcr-mrsi:d1 OUTPUT_DIR="$RUN_DIR/mrsi_sft" \
  MAX_STEPS=${steps:--1} BATCH_SIZE=${SFT_BATCH_SIZE:-16} SAVE_STEPS=${steps:-500} \
  ${SFT_PER_DEVICE_BATCH_SIZE:+PER_DEVICE_BATCH_SIZE=$SFT_PER_DEVICE_BATCH_SIZE} bash recipes/mrsi_sft.sh
}
do_merge() {
  MODEL="$MODEL" TEMPLATE="$TEMPLATE" ADAPTERS="$(cat "$RUN_DIR/mrsi_sft/last_checkpoint.txt")" \
  OUTPUT_DIR="$RUN_DIR/mrsi_merged" bash recipes/merge_lora.sh
}
policy() {  # the MRSI policy: "MODEL ADAPTERS" (merged model, or base + the MRSI adapter, or the full-FT checkpoint)
  if [ "${SFT_TUNER:-lora}" = full ]; then cat "$RUN_DIR/mrsi_sft/last_checkpoint.txt"
  elif [ "$MERGE" = true ]; then echo "$(cat "$RUN_DIR/mrsi_merged/last_checkpoint.txt")"; else
    echo "$MODEL $(cat "$RUN_DIR/mrsi_sft/last_checkpoint.txt")"; fi
}
do_filter() {
  # shellcheck disable=SC2046
  serve $(policy)
  python -m mcr_swift.cli cvo-filter --input "$MCR_DATA_DIR/mrsi/d2.jsonl" --out "$MCR_DATA_DIR/mrsi/d2_filtered.jsonl" \
    --base-url "$BASE_URL" -G "$FILTER_G" --temperature "$FILTER_TEMPERATURE" --top-k "$FILTER_TOP_K" \
    --top-p "$FILTER_TOP_P" --max-tokens "$FILTER_MAX_TOKENS" --seed "$SEED" --min-std "$FILTER_MIN_STD" \
    --min-max "$FILTER_MIN_MAX" --min-median "$FILTER_MIN_MEDIAN" --max-median "$FILTER_MAX_MEDIAN" --no-progress
  unserve
}
do_grpo() {
  read -r pm pa <<< "$(policy)"
  MODEL="$pm" ADAPTERS="${pa:-}" TEMPLATE="$TEMPLATE" DATASET=mcr-mrsi:d2_filtered OUTPUT_DIR="$RUN_DIR/cvo_grpo" \
  USE_VLLM="$USE_VLLM" MAX_STEPS=${GRPO_MAX_STEPS:--1} BATCH_SIZE=${GRPO_BATCH_SIZE:-64} \
  NUM_GENERATIONS=${NUM_GENERATIONS:-8} MAX_COMPLETION_LENGTH=${MAX_COMPLETION_LENGTH:-1024} \
  SAVE_STEPS=${GRPO_MAX_STEPS:-500} bash recipes/cvo_grpo.sh
}
# --- trained-posts memorisation check (issue 16): after MRSI, infer + evaluate on the GMNER posts of D1
# (one row per post, other tasks left out; python -m mcr_swift.trained_posts), exactly like the test
# split. On by default in the tiny profile only (TRAINED_EVAL=true|false).
do_trained_eval() {
  read -r pm pa <<< "$(policy)"
  python -m mcr_swift.trained_posts "$MCR_DATA_DIR/mrsi/d1.jsonl" "$RUN_DIR/trained_eval/posts.jsonl"
  MODEL="$pm" ADAPTERS="${pa:-}" TEMPLATE="$TEMPLATE" DATASET="$RUN_DIR/trained_eval/posts.jsonl" \
  GOLD="$RUN_DIR/trained_eval/posts.jsonl" INFER_BACKEND="$INFER_BACKEND" MAX_NEW_TOKENS=${MAX_NEW_TOKENS:-2048} \
  OUTPUT_DIR="$RUN_DIR/trained_eval" bash recipes/infer_eval.sh
}
# the run's training curves (reward, its terms, F1 when logged, loss) for the report (mcr-swift curves)
do_curves() {
  python -m mcr_swift.cli curves "$RUN_DIR/mrsi_sft" "$RUN_DIR/cvo_grpo" --labels mrsi-sft cvo-grpo --out "$RUN_DIR/curves"
}
# --- end trained-posts check
do_eval() {
  read -r pm _ <<< "$(policy)"
  MODEL="$pm" ADAPTERS="$(cat "$RUN_DIR/cvo_grpo/last_checkpoint.txt")" TEMPLATE="$TEMPLATE" \
  DATASET=mcr-gmner:test GOLD="$MCR_DATA_DIR/twitter_gmner/test.jsonl" INFER_BACKEND="$INFER_BACKEND" \
  MAX_NEW_TOKENS=${MAX_NEW_TOKENS:-2048} OUTPUT_DIR="$RUN_DIR/eval" bash recipes/infer_eval.sh
}

log "profile $PROFILE, model $MODEL, template $TEMPLATE, run dir $RUN_DIR"
[ "$PROFILE" = tiny ] && stage tiny-model "$MODEL/config.json" do_tiny
stage prepare "$MCR_DATA_DIR/twitter_gmner/summary.json" do_prepare
stage synth "$MCR_DATA_DIR/mrsi/d_r.jsonl" do_synth
stage split "$MCR_DATA_DIR/mrsi/d2.jsonl" do_split
stage mrsi-sft "$RUN_DIR/mrsi_sft/last_checkpoint.txt" do_sft
[ "$MERGE" = true ] && [ "${SFT_TUNER:-lora}" != full ] && stage merge "$RUN_DIR/mrsi_merged/last_checkpoint.txt" do_merge
[ "${TRAINED_EVAL:-false}" = true ] && stage trained-eval "$RUN_DIR/trained_eval/metrics.json" do_trained_eval
stage cvo-filter "$MCR_DATA_DIR/mrsi/d2_filtered.jsonl" do_filter
stage cvo-grpo "$RUN_DIR/cvo_grpo/last_checkpoint.txt" do_grpo
stage infer-eval "$RUN_DIR/eval/metrics.json" do_eval
stage curves "$RUN_DIR/curves/reward.png" do_curves
python -m mcr_swift.cli report "$RUN_DIR"
