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
#   D_R is built from three sources (App. E.1): Twitter-GMNER (GMNER_ROOT, IMAGE_DIR), MNER-MI
#   (MNER_MI_ROOT, MNER_MI_IMAGE_DIR) and GREC (GREC_ROOT = gRefCOCO, GREC_IMAGE_DIR = COCO
#   train2014), SYNTH_PER_POST=2 styles per sample (2 x 27,856 = 55,712). A missing MNER-MI or GREC
#   release is reported once and left out; SOURCES=gmner,mner_mi,grec picks the sources.
# PROFILE=tiny: the same stages on a CPU with the tiny random Qwen2.5-VL built offline, a handful of
#   posts with stand-in images, no vLLM, and a local `swift deploy` of the tiny model as the synthesis
#   endpoint; MNER-MI and GREC come from the package's sample files (mcr_swift/data/samples). MRSI fully
#   fine-tunes the tiny model until it memorises its D1 posts (checked by the trained-eval stage,
#   issue 16); it earns ~nothing on unseen D2 posts, so the tiny profile opens the App. D.3 filter
#   thresholds (else D2 would be empty); everything else is the paper's code path.
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x .venv/bin/python ] && export PATH="$PWD/.venv/bin:$PATH"
PROFILE=${PROFILE:-paper}
# ---- VARIANT: which row of Table 1 / Table 3 the run produces (README "Baselines and ablations") ----
#   mcr        Table 1 "+MRSI+CVO" = Table 3 "Ours": every stage below (the default)
#   sft        Table 1 "+SFT": LoRA SFT (MRSI's settings) on mcr-gmner:train_answer_only, the answer-only
#              instruction and targets (no <think>); inference on mcr-gmner:test_answer_only
#   mrsi_only  Table 1 "+MRSI": no CVO; inference with the MRSI policy (base model + MRSI adapter)
#   no_cvo     Table 3 "w/o CVO": "the CVO data continues MRSI" (Sec. 5.4): the filter runs as for CVO, then
#              SFT (MRSI's settings) of the merged MRSI model on the D2 rows, with their chains, of the kept
#              queries (data/mrsi/d2_kept.jsonl), instead of GRPO
#   no_dr      Table 3 "w/o D_R": D_R with one reasoning style, NO_DR_STYLE (default formatted_a)
#   no_inst    Table 3 "w/o Inst": MCR_INSTRUCTION=task_instruction_noinst for prepare (hence D_R, D1, D2,
#              the filter, GRPO) and inference: no stepwise verification, no cautionary guidelines
#   cvo_only   Table 3 "w/o MRSI": CVO straight from the base model (no MRSI stage); the App. D.3 filter
#              samples from the base model; CVO_QUERIES=d2 (default: the full method's CVO data) or d_r
# Every variant gets its own run folder (the default RUN_DIR ends in _<variant>, except mcr) and writes
# RUN_DIR/variant.txt; a folder made by another variant is refused, as its finished stages would be reused.
VARIANT=${VARIANT:-mcr}
RUN_MRSI=true; RUN_SYNTH=true; RUN_CVO=true; CVO_BY_SFT=false; SFT_DIR=mrsi_sft
SFT_DATASET=mcr-mrsi:d1; EVAL_DATASET=mcr-gmner:test; EVAL_GOLD_SPLIT=test; CVO_QUERIES=${CVO_QUERIES:-d2}
case "$VARIANT" in
  mcr) ;;
  sft) RUN_SYNTH=false; RUN_CVO=false; SFT_DIR=sft
       SFT_DATASET=mcr-gmner:train_answer_only; EVAL_DATASET=mcr-gmner:test_answer_only
       EVAL_GOLD_SPLIT=test_answer_only ;;
  mrsi_only) RUN_CVO=false ;;
  no_cvo) CVO_BY_SFT=true; MERGE=true ;;
  no_dr) SYNTH_STYLES=${NO_DR_STYLE:-formatted_a}
         case "$SYNTH_STYLES" in *,*|"") echo "NO_DR_STYLE must name one style, got '$SYNTH_STYLES'" >&2; exit 2 ;; esac ;;
  no_inst) export MCR_INSTRUCTION=${NO_INST_INSTRUCTION:-task_instruction_noinst} ;;
  cvo_only) RUN_MRSI=false ;;
  *) echo "VARIANT must be mcr, sft, mrsi_only, no_cvo, no_dr, no_inst or cvo_only, got '$VARIANT'" >&2; exit 2 ;;
esac
case "$CVO_QUERIES" in d2|d_r) ;; *) echo "CVO_QUERIES must be d2 or d_r, got '$CVO_QUERIES'" >&2; exit 2 ;; esac
[ "$VARIANT" = mcr ] && VARIANT_SUFFIX="" || VARIANT_SUFFIX="_$VARIANT"
variant_check() {  # the run folder belongs to this variant (variant.txt), or is new
  local f="$RUN_DIR/variant.txt" prev=""
  if [ -f "$f" ]; then prev=$(cat "$f"); elif [ -f "$RUN_DIR/times.tsv" ]; then prev=mcr; fi  # older runs: mcr
  if [ -n "$prev" ] && [ "$prev" != "$VARIANT" ]; then
    echo "$f: this run folder was made by VARIANT=$prev, not $VARIANT; use another RUN_DIR" >&2; exit 2; fi
  echo "$VARIANT" > "$f"
}
do_cvo_data() {  # VARIANT=no_cvo: the D2 rows (reasoning chains included) of the queries the filter kept
  python - "$MCR_DATA_DIR/mrsi" <<'PY'
import sys
from pathlib import Path
from mcr_swift.jsonl import iter_jsonl, write_jsonl_atomic
d = Path(sys.argv[1])
key = lambda r: (str(r.get("mcr_task") or "gmner"), str(r.get("mcr_id")))  # a sample: (task, id), as the filter
kept = {key(r) for _, r, _ in iter_jsonl(d / "d2_filtered.jsonl")}
rows = [r for _, r, _ in iter_jsonl(d / "d2.jsonl") if key(r) in kept]
write_jsonl_atomic(d / "d2_kept.jsonl", rows)
print(f"[cvo-data] {len(rows)} D2 rows of {len(kept)} kept queries -> {d / 'd2_kept.jsonl'}")
PY
}
do_cvo_sft() {  # VARIANT=no_cvo: continue MRSI by SFT on the CVO data, from the MRSI policy (merged)
  local pm; read -r pm _ <<< "$(policy)"
  MODEL="$pm" TEMPLATE="$TEMPLATE" DATASET="$MCR_DATA_DIR/mrsi/d2_kept.jsonl" \
  OUTPUT_DIR="$RUN_DIR/cvo_sft" MAX_STEPS=${SFT_MAX_STEPS:--1} BATCH_SIZE=${SFT_BATCH_SIZE:-16} SAVE_STEPS=${SFT_MAX_STEPS:-500} \
  PER_DEVICE_BATCH_SIZE=${SFT_PER_DEVICE_BATCH_SIZE:-${PER_DEVICE_BATCH_SIZE:-}} bash recipes/mrsi_sft.sh
}
# ---- end VARIANT ----
RUN_DIR=${RUN_DIR:-runs/full_${PROFILE}${VARIANT_SUFFIX}}
mkdir -p "$RUN_DIR"
RUN_DIR=$(cd "$RUN_DIR" && pwd)
variant_check
SHARED=${MCR_SHARED_DIR:-$(cd .. && pwd)/shared}
GMNER_ROOT=${GMNER_ROOT:-$SHARED/data/twitter_gmner_v2}
TEMPLATE=${TEMPLATE:-qwen2_5_vl}
export MCR_MODEL_FAMILY=${MCR_MODEL_FAMILY:-$TEMPLATE}
export MCR_DATA_DIR="$RUN_DIR/data"
SEED=${SEED:-0}
D1_RATIO=${D1_RATIO:-0.5}                       # paper silent (README): half of D_R for MRSI
SYNTH_STYLES=${SYNTH_STYLES:-formatted_a,formatted_b,llm_qa,llm_conclusions,mllm_distill}
SWIFT=${SWIFT:-swift}
# --- D_R sources (App. E.1, Table 5: 7000 Twitter-GMNER + 6856 MNER-MI + 14000 GREC train samples) ---
SOURCES=${SOURCES:-gmner,mner_mi,grec}
SYNTH_PER_POST=${SYNTH_PER_POST:-2}             # styles per sample: 2 x 27,856 = 55,712 (App. E.1)
GREC_TRAIN_SIZE=${GREC_TRAIN_SIZE:-14000}       # App. E.1: 14,000 one-/no-target train expressions
if [ "$PROFILE" = tiny ]; then                  # hand-made samples in the released formats
  SAMPLES_DIR=$(python -c 'import mcr_swift, pathlib; print(pathlib.Path(mcr_swift.__file__).parent / "data" / "samples")')
  MNER_MI_ROOT=${MNER_MI_ROOT-$SAMPLES_DIR/mner_mi}; GREC_ROOT=${GREC_ROOT-$SAMPLES_DIR/grec}
else
  MNER_MI_ROOT=${MNER_MI_ROOT-$SHARED/data/mner_mi}; GREC_ROOT=${GREC_ROOT-$SHARED/data/grefcoco}
fi
MNER_MI_IMAGE_DIR=${MNER_MI_IMAGE_DIR:-${MNER_MI_ROOT:+$MNER_MI_ROOT/images}}
GREC_IMAGE_DIR=${GREC_IMAGE_DIR:-}

case "$PROFILE" in
  tiny)
    export MAX_PIXELS=${MAX_PIXELS:-50176}
    LIMIT=${LIMIT:-8}; STANDIN=${STANDIN:-1}
    export NPROC_PER_NODE=1 DEEPSPEED="" DATALOADER_WORKERS=0 REPORT_TO=none LOGGING_STEPS=1
    # issue 16, a run that learns (TINY_MEMORISE=true, the default): MRSI memorises its D1 posts (full
    # fine-tuning of the tiny model, a high learning rate with warmup, 50 passes over D1), checked by the
    # trained-eval stage, with the curves of the run; TINY_MEMORISE=false keeps the paper's MRSI path
    # (LoRA, lr 1e-4, merge) for 5 steps, for tests of the wiring
    if [ "${TINY_MEMORISE:-true}" = true ]; then
      SFT_TUNER=${SFT_TUNER:-full}; SFT_LEARNING_RATE=${SFT_LEARNING_RATE:-1e-2}
      SFT_EXTRA_ARGS=${SFT_EXTRA_ARGS:---warmup_ratio 0.1}; TRAINED_EVAL=${TRAINED_EVAL:-true}; CURVES=${CURVES:-true}
      export LOG_REWARD_TERMS=${LOG_REWARD_TERMS:-true}   # the reward terms and per-completion F1 curves (weight 0)
      SFT_EPOCHS=${SFT_EPOCHS:-50}   # 50 passes over D1 (40 memorised too little: 1 of 5 entities)
    else
      SFT_MAX_STEPS=${SFT_MAX_STEPS:-5}
    fi
    SFT_BATCH_SIZE=${SFT_BATCH_SIZE:-2}
    # generation lengths cover a whole D_R chain (<think>...</think><answer>[...]</answer>, <= ~270 tokens)
    # GRPO: 3 steps of 2 prompts x 4 generations: 6 of D2's queries, so some are GMNER / MNER-MI rows,
    # whose F1 the curves show (a GREC row has none), whatever the shuffle
    GRPO_MAX_STEPS=${GRPO_MAX_STEPS:-3}; GRPO_BATCH_SIZE=${GRPO_BATCH_SIZE:-8}; NUM_GENERATIONS=${NUM_GENERATIONS:-4}
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
    GPUS=$(python -m mcr_swift.cli recipe-args gpus)
    if [ "$INFER_BACKEND" = vllm ] && [ "$GPUS" -gt 1 ]; then
      SERVE_EXTRA_ARGS=${SERVE_EXTRA_ARGS:---vllm_data_parallel_size $GPUS}; fi
    ;;
  *) echo "PROFILE must be paper or tiny, got '$PROFILE'" >&2; exit 2 ;;
esac
# --- one resolution everywhere: SFT, the filter's server and its reward, GRPO and its reward, inference
# and evaluation all read the resize settings from this environment (MAX_PIXELS, MIN_PIXELS,
# IMAGE_MAX_TOKEN_NUM, IMAGE_MIN_TOKEN_NUM, MCR_TEMPLATE_MAX_PIXELS, MCR_MODEL_FAMILY); the paper profile's
# default is the stage recipes' (1003520 = 1280 image tokens), exported so `swift deploy` sees it too.
export MAX_PIXELS=${MAX_PIXELS:-1003520}
RESIZE_VARS="MCR_MODEL_FAMILY MAX_PIXELS MIN_PIXELS IMAGE_MAX_TOKEN_NUM IMAGE_MIN_TOKEN_NUM MCR_TEMPLATE_MAX_PIXELS"
resize_env() { local v; for v in $RESIZE_VARS; do [ -n "${!v:-}" ] && printf '%s=%s ' "$v" "${!v}"; done; return 0; }
# --- end of the resolution block
# App. D.3 filter and App. E.4 sampling (the filter samples like GRPO's rollouts)
FILTER_G=${FILTER_G:-8}; FILTER_TEMPERATURE=${FILTER_TEMPERATURE:-1.5}; FILTER_TOP_K=${FILTER_TOP_K:-200}
FILTER_TOP_P=${FILTER_TOP_P:-0.95}; FILTER_MAX_TOKENS=${FILTER_MAX_TOKENS:-1024}
FILTER_MIN_STD=${FILTER_MIN_STD:-0.1}; FILTER_MIN_MAX=${FILTER_MIN_MAX:-0.8}
FILTER_MIN_MEDIAN=${FILTER_MIN_MEDIAN:-0.08}; FILTER_MAX_MEDIAN=${FILTER_MAX_MEDIAN:-0.6}
SYNTH_TEMPERATURE=${SYNTH_TEMPERATURE:-0.7}; SYNTH_MAX_TOKENS=${SYNTH_MAX_TOKENS:-2048}
SYNTH_CONCURRENCY=${SYNTH_CONCURRENCY:-}   # empty: adaptive requests in flight (docs/pipeline.md#requests-in-flight)
# the sequences the filter's policy server batches at once (engines x sequences an engine batches: vLLM
# data parallel x ms-swift's vllm_max_num_seqs 256; transformers: max_batch_size 1); the filter's
# requests in flight start at what fills it
if [ "$INFER_BACKEND" = vllm ]; then FILTER_SERVER_BATCH=${FILTER_SERVER_BATCH:-$(( ${GPUS:-1} * 256 ))}
else FILTER_SERVER_BATCH=${FILTER_SERVER_BATCH:-1}; fi
MERGE=${MERGE:-true}
TIMES="$RUN_DIR/times.tsv"
SERVER_PID="$RUN_DIR/.server.pid"
trap 'python -m mcr_swift.cli serve stop --pid-file "$SERVER_PID" || true' EXIT

log() { echo "[full $(date +%H:%M:%S)] $*"; }
# stage NAME OUTPUT FUNCTION: run FUNCTION unless OUTPUT exists; record its wall time
stage() {
  if [ -e "$2" ]; then log "$1: skipped ($2 exists)"; printf '%s\tskipped\n' "$1" >> "$TIMES"; stop_after "$1"; return; fi
  log "$1 ..."
  local t0; t0=$(date +%s)
  "$3"
  printf '%s\t%s\n' "$1" "$(( $(date +%s) - t0 ))" >> "$TIMES"
  [ -e "$2" ] || { echo "stage $1 finished without writing $2" >&2; exit 1; }
  stop_after "$1"
}
stop_after() {  # STOP_AFTER=STAGE: end the run (with its report so far) after that stage
  if [ "${STOP_AFTER:-}" = "$1" ]; then
    log "stopping after $1 (STOP_AFTER)"; python -m mcr_swift.cli report "$RUN_DIR" > /dev/null; exit 0; fi
}
serve() {  # serve MODEL [ADAPTERS]: background swift deploy; sets BASE_URL
  BASE_URL=$(python -m mcr_swift.cli serve start --log "$RUN_DIR/logs/deploy_$(date +%s).log" --pid-file "$SERVER_PID" -- \
    --model "$1" ${2:+--adapters "$2"} --template "$TEMPLATE" --infer_backend "$INFER_BACKEND" \
    --served_model_name policy --max_new_tokens "${SERVE_MAX_NEW_TOKENS:-2048}" ${SERVE_EXTRA_ARGS:-})
  log "server up at $BASE_URL ($(resize_env))"
}
unserve() { python -m mcr_swift.cli serve stop --pid-file "$SERVER_PID"; }
mkdir -p "$RUN_DIR/logs"

do_tiny() { python -m mcr_swift.cli tiny-model "$MODEL"; }
do_prepare() {
  local extra=()
  [ -n "$LIMIT" ] && extra+=(--limit "$LIMIT")
  [ "$STANDIN" = 1 ] && extra+=(--standin-images "$RUN_DIR/images")
  [ -n "${IMAGE_DIR:-}" ] && extra+=(--image-dir "$IMAGE_DIR")
  python -m mcr_swift.cli prepare --root "$GMNER_ROOT" --out "$MCR_DATA_DIR" --family "$MCR_MODEL_FAMILY" \
    --no-progress "${extra[@]}"
  prepare_sources
}
# --- the MNER-MI and GREC sources of D_R (App. E.1); $MCR_DATA_DIR/sources.tsv: task, status, root ---
source_missing() {  # TASK NAME ROOT VAR: said once (the prepare stage), loudly; the run goes on
  printf '\n!!! SOURCE MISSING: %s (%s=%s is not a folder).\n!!! D_R, D1 and D2 are built WITHOUT it; the paper trains on Twitter-GMNER, MNER-MI and GREC (App. E.1).\n!!! Set %s to the release folder to include it (see README, "Three-source D_R").\n\n' \
    "$2" "$4" "$3" "$4" >&2
  printf '%s\tmissing\t%s\n' "$1" "$3" >> "$MCR_DATA_DIR/sources.tsv.tmp"
}
prepare_source() {  # TASK NAME ROOT ROOT_VAR IMAGES IMAGES_VAR [prepare args...]
  local task=$1 name=$2 root=$3 rvar=$4 images=$5 ivar=$6; shift 6
  if [[ ",$SOURCES," != *",$task,"* ]]; then
    printf '%s\tnot selected\t%s\n' "$task" "$root" >> "$MCR_DATA_DIR/sources.tsv.tmp"; return 0; fi
  if [ -z "$root" ] || [ ! -d "$root" ]; then source_missing "$task" "$name" "$root" "$rvar"; return 0; fi
  local img=()
  if [ "$STANDIN" = 1 ]; then img=(--standin-images "$RUN_DIR/images/$task")
  elif [ -n "$images" ] && [ -d "$images" ]; then img=(--image-dir "$images")
  else echo "full_pipeline: $name at $root has no images: $ivar='$images' is not a folder (set it, or STANDIN=1)" >&2; exit 2; fi
  python -m mcr_swift.cli prepare --dataset "$task" --root "$root" --out "$MCR_DATA_DIR" --no-progress \
    ${LIMIT:+--limit "$LIMIT"} "${img[@]}" "$@"
  printf '%s\tprepared\t%s\n' "$task" "$root" >> "$MCR_DATA_DIR/sources.tsv.tmp"
}
prepare_sources() {
  local g=prepared  # Twitter-GMNER is always prepared (its test split is evaluated); SOURCES puts it in D_R
  [[ ",$SOURCES," == *",gmner,"* ]] || g="not selected"
  printf 'gmner\t%s\t%s\n' "$g" "$GMNER_ROOT" > "$MCR_DATA_DIR/sources.tsv.tmp"
  prepare_source mner_mi MNER-MI "$MNER_MI_ROOT" MNER_MI_ROOT "$MNER_MI_IMAGE_DIR" MNER_MI_IMAGE_DIR
  prepare_source grec GREC "$GREC_ROOT" GREC_ROOT "$GREC_IMAGE_DIR" GREC_IMAGE_DIR \
    --family "$MCR_MODEL_FAMILY" --train-size "$GREC_TRAIN_SIZE" --seed "$SEED"
  mv "$MCR_DATA_DIR/sources.tsv.tmp" "$MCR_DATA_DIR/sources.tsv"
}
synth_inputs() {  # the train file of every prepared source
  local task status _root
  while IFS=$'\t' read -r task status _root; do
    if [ "$status" = prepared ]; then echo "$MCR_DATA_DIR/${task/#gmner/twitter_gmner}/train.jsonl"; fi
  done < "$MCR_DATA_DIR/sources.tsv"
}
do_synth() {
  local ep=() inputs=() served=0
  mapfile -t inputs < <(synth_inputs)
  [ ${#inputs[@]} -gt 0 ] || { echo "full_pipeline: no source of D_R was prepared (SOURCES=$SOURCES)" >&2; exit 2; }
  if [ "$PROFILE" = tiny ] && [ -z "${SYNTH_BASE_URL:-}" ]; then
    # the tiny model stands in for DeepSeek / Qwen2.5-VL-72B (only when an API style is asked for)
    if [[ ",$SYNTH_STYLES," =~ ,(llm_qa|llm_conclusions|mllm_distill), ]]; then
      serve "$MODEL"; ep=(--base-url "$BASE_URL"); served=1; fi
  else
    [ -n "${SYNTH_BASE_URL:-}" ] && ep+=(--base-url "$SYNTH_BASE_URL")
    [ -n "${SYNTH_MODEL:-}" ] && ep+=(--model "$SYNTH_MODEL")
    [ -n "${SYNTH_LLM_BASE_URL:-}" ] && ep+=(--llm-base-url "$SYNTH_LLM_BASE_URL")
    [ -n "${SYNTH_LLM_MODEL:-}" ] && ep+=(--llm-model "$SYNTH_LLM_MODEL")
    [ -n "${SYNTH_MLLM_BASE_URL:-}" ] && ep+=(--mllm-base-url "$SYNTH_MLLM_BASE_URL")
    [ -n "${SYNTH_MLLM_MODEL:-}" ] && ep+=(--mllm-model "$SYNTH_MLLM_MODEL")
  fi
  python -m mcr_swift.cli synth --input "${inputs[@]}" --out "$MCR_DATA_DIR/mrsi/d_r.jsonl" \
    --styles "$SYNTH_STYLES" --per-post "$SYNTH_PER_POST" --seed "$SEED" --temperature "$SYNTH_TEMPERATURE" \
    --max-tokens "$SYNTH_MAX_TOKENS" ${SYNTH_CONCURRENCY:+--concurrency "$SYNTH_CONCURRENCY"} --no-progress "${ep[@]}"
  [ "$served" = 1 ] && unserve
  return 0
}
do_split() {
  python -m mcr_swift.cli split --input "$MCR_DATA_DIR/mrsi/d_r.jsonl" --out-dir "$MCR_DATA_DIR/mrsi.tmp" \
    --d1-ratio "$D1_RATIO" --seed "$SEED"
  mv "$MCR_DATA_DIR/mrsi.tmp/d2.jsonl" "$MCR_DATA_DIR/mrsi/d2.jsonl"
  mv "$MCR_DATA_DIR/mrsi.tmp/d1.jsonl" "$MCR_DATA_DIR/mrsi/d1.jsonl"; rmdir "$MCR_DATA_DIR/mrsi.tmp"
}
sft_data_file() {  # the rows the SFT stage trains on (for SFT_EPOCHS)
  if [ "$VARIANT" = sft ]; then echo "$MCR_DATA_DIR/twitter_gmner/train.jsonl"; else echo "$MCR_DATA_DIR/mrsi/d1.jsonl"; fi
}
do_sft() {
  # SFT_TUNER=full (tiny profile, issue 16): full fine-tuning, the checkpoint is the MRSI policy (no merge)
  local extra=${SFT_EXTRA_ARGS:-}
  [ "${SFT_TUNER:-lora}" = full ] && extra="--tuner_type full --save_only_model true $extra"
  local steps=${SFT_MAX_STEPS:-}
  if [ -z "$steps" ] && [ -n "${SFT_EPOCHS:-}" ]; then   # tiny profile: SFT_EPOCHS passes over the data, whatever its size
    steps=$(( ($(grep -c . "$(sft_data_file)") * SFT_EPOCHS + SFT_BATCH_SIZE - 1) / SFT_BATCH_SIZE ))
  fi
  LEARNING_RATE=${SFT_LEARNING_RATE:-${LEARNING_RATE:-}} EXTRA_ARGS="$extra" \
  MODEL="$MODEL" TEMPLATE="$TEMPLATE" DATASET="$SFT_DATASET" OUTPUT_DIR="$RUN_DIR/$SFT_DIR" \
  MAX_STEPS=${steps:--1} BATCH_SIZE=${SFT_BATCH_SIZE:-16} SAVE_STEPS=${steps:-500} \
  PER_DEVICE_BATCH_SIZE=${SFT_PER_DEVICE_BATCH_SIZE:-${PER_DEVICE_BATCH_SIZE:-}} bash recipes/mrsi_sft.sh
}
do_merge() {
  MODEL="$MODEL" TEMPLATE="$TEMPLATE" ADAPTERS="$(cat "$RUN_DIR/mrsi_sft/last_checkpoint.txt")" \
  OUTPUT_DIR="$RUN_DIR/mrsi_merged" bash recipes/merge_lora.sh
}
sft_policy() {  # what the SFT stage trained: the full-FT checkpoint, or "base adapter"
  if [ "${SFT_TUNER:-lora}" = full ]; then cat "$RUN_DIR/$SFT_DIR/last_checkpoint.txt"
  else echo "$MODEL $(cat "$RUN_DIR/$SFT_DIR/last_checkpoint.txt")"; fi
}
policy() {  # the MRSI policy CVO starts from: "MODEL ADAPTERS" (merged model, base + the MRSI adapter, or the full-FT checkpoint)
  if [ "$RUN_MRSI" = false ]; then echo "$MODEL"; return; fi   # VARIANT=cvo_only: the base model
  if [ "${SFT_TUNER:-lora}" = full ]; then cat "$RUN_DIR/mrsi_sft/last_checkpoint.txt"
  elif [ "$MERGE" = true ]; then echo "$(cat "$RUN_DIR/mrsi_merged/last_checkpoint.txt")"; else
    echo "$MODEL $(cat "$RUN_DIR/mrsi_sft/last_checkpoint.txt")"; fi
}
do_filter() {
  # shellcheck disable=SC2046
  serve $(policy)
  python -m mcr_swift.cli cvo-filter --input "$MCR_DATA_DIR/mrsi/$CVO_QUERIES.jsonl" --out "$MCR_DATA_DIR/mrsi/d2_filtered.jsonl" \
    --base-url "$BASE_URL" -G "$FILTER_G" --temperature "$FILTER_TEMPERATURE" --top-k "$FILTER_TOP_K" \
    --top-p "$FILTER_TOP_P" --max-tokens "$FILTER_MAX_TOKENS" --seed "$SEED" --min-std "$FILTER_MIN_STD" \
    --min-max "$FILTER_MIN_MAX" --min-median "$FILTER_MIN_MEDIAN" --max-median "$FILTER_MAX_MEDIAN" \
    --server-batch "$FILTER_SERVER_BATCH" --no-progress
  unserve
}
do_grpo() {
  read -r pm pa <<< "$(policy)"
  MODEL="$pm" ADAPTERS="${pa:-}" TEMPLATE="$TEMPLATE" DATASET=mcr-mrsi:d2_filtered OUTPUT_DIR="$RUN_DIR/cvo_grpo" \
  USE_VLLM="$USE_VLLM" MAX_STEPS=${GRPO_MAX_STEPS:--1} BATCH_SIZE=${GRPO_BATCH_SIZE:-64} \
  NUM_GENERATIONS=${NUM_GENERATIONS:-8} MAX_COMPLETION_LENGTH=${MAX_COMPLETION_LENGTH:-1024} \
  SAVE_STEPS=${GRPO_MAX_STEPS:-500} bash recipes/cvo_grpo.sh
}
eval_policy() {  # what infer-eval runs, per VARIANT: "MODEL ADAPTERS"
  local pm
  if [ "$CVO_BY_SFT" = true ]; then read -r pm _ <<< "$(policy)"; echo "$pm $(cat "$RUN_DIR/cvo_sft/last_checkpoint.txt")"
  elif [ "$RUN_CVO" = true ]; then read -r pm _ <<< "$(policy)"; echo "$pm $(cat "$RUN_DIR/cvo_grpo/last_checkpoint.txt")"
  else sft_policy; fi   # sft, mrsi_only: what the SFT stage trained
}
# --- trained-posts memorisation check (issue 16): after MRSI, infer + evaluate on the GMNER posts of D1
# (one row per post, other tasks left out; mcr-swift trained-posts), exactly like the test
# split. On by default in the tiny profile only (TRAINED_EVAL=true|false).
do_trained_eval() {
  read -r pm pa <<< "$(sft_policy)"
  python -m mcr_swift.cli trained-posts "$MCR_DATA_DIR/mrsi/d1.jsonl" "$RUN_DIR/trained_eval/posts.jsonl"
  MODEL="$pm" ADAPTERS="${pa:-}" TEMPLATE="$TEMPLATE" DATASET="$RUN_DIR/trained_eval/posts.jsonl" \
  GOLD="$RUN_DIR/trained_eval/posts.jsonl" INFER_BACKEND="$INFER_BACKEND" MAX_NEW_TOKENS=${MAX_NEW_TOKENS:-2048} \
  OUTPUT_DIR="$RUN_DIR/trained_eval" bash recipes/infer_eval.sh
}
# the run's training curves (reward, its terms, F1 when logged, loss) for the report (mcr-swift curves)
do_curves() {  # the training stages this variant ran
  local dirs=() labels=() d
  for d in "$SFT_DIR" cvo_grpo cvo_sft; do
    if [ -d "$RUN_DIR/$d" ]; then dirs+=("$RUN_DIR/$d"); labels+=("${d//_/-}"); fi
  done
  python -m mcr_swift.cli curves "${dirs[@]}" --labels "${labels[@]}" --out "$RUN_DIR/curves"
}
# --- end trained-posts check
do_eval() {
  read -r pm pa <<< "$(eval_policy)"
  MODEL="$pm" ADAPTERS="$pa" TEMPLATE="$TEMPLATE" \
  DATASET="$EVAL_DATASET" GOLD="$MCR_DATA_DIR/twitter_gmner/$EVAL_GOLD_SPLIT.jsonl" INFER_BACKEND="$INFER_BACKEND" \
  MAX_NEW_TOKENS=${MAX_NEW_TOKENS:-2048} OUTPUT_DIR="$RUN_DIR/eval" bash recipes/infer_eval.sh
}

log "profile $PROFILE, variant $VARIANT, model $MODEL, template $TEMPLATE, run dir $RUN_DIR; resolution $(resize_env)"
[ "$PROFILE" = tiny ] && stage tiny-model "$MODEL/config.json" do_tiny
stage prepare "$MCR_DATA_DIR/sources.tsv" do_prepare
if [ "$RUN_SYNTH" = true ]; then
  stage synth "$MCR_DATA_DIR/mrsi/d_r.jsonl" do_synth
  stage split "$MCR_DATA_DIR/mrsi/d2.jsonl" do_split
fi
if [ "$RUN_MRSI" = true ]; then
  stage "$([ "$VARIANT" = sft ] && echo sft || echo mrsi-sft)" "$RUN_DIR/$SFT_DIR/last_checkpoint.txt" do_sft
  [ "$MERGE" = true ] && [ "$RUN_CVO" = true ] && [ "${SFT_TUNER:-lora}" != full ] &&
    stage merge "$RUN_DIR/mrsi_merged/last_checkpoint.txt" do_merge
  [ "${TRAINED_EVAL:-false}" = true ] && [ "$RUN_SYNTH" = true ] &&
    stage trained-eval "$RUN_DIR/trained_eval/metrics.json" do_trained_eval
fi
if [ "$RUN_CVO" = true ]; then
  stage cvo-filter "$MCR_DATA_DIR/mrsi/d2_filtered.jsonl" do_filter
  if [ "$CVO_BY_SFT" = true ]; then
    stage cvo-data "$MCR_DATA_DIR/mrsi/d2_kept.jsonl" do_cvo_data
    stage cvo-data-sft "$RUN_DIR/cvo_sft/last_checkpoint.txt" do_cvo_sft
  else
    stage cvo-grpo "$RUN_DIR/cvo_grpo/last_checkpoint.txt" do_grpo
  fi
fi
stage infer-eval "$RUN_DIR/eval/metrics.json" do_eval
[ "${CURVES:-false}" = true ] && stage curves "$RUN_DIR/curves/reward.png" do_curves
python -m mcr_swift.cli report "$RUN_DIR"
