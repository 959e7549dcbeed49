#!/usr/bin/env bash
# GPU check (issue 16): on one GPU, with the tiny random Qwen2.5-VL built offline (`mcr-swift tiny-model`)
# and no hub access, run the GPU-only code paths that the CPU tests cannot reach, each through the real
# recipe or command, each independent of the others (a failure does not stop the rest):
#
#   sft-deepspeed-zero2   recipes/mrsi_sft.sh with DEEPSPEED=zero2 (LoRA SFT, 2 steps)
#   grpo-vllm-colocate    recipes/cvo_grpo.sh with USE_VLLM=true VLLM_MODE=colocate (vLLM engine in the
#                         training process, sleeping between rollouts: --sleep_level 1), 2 steps
#   infer-eval-vllm       recipes/infer_eval.sh with INFER_BACKEND=vllm, then mcr-swift evaluate
#   filter-deploy-vllm    the App. D.3 filter's server: mcr-swift serve -> `swift deploy --infer_backend vllm`,
#                         then mcr-swift cvo-filter against it (G = 4 samples per query)
#
# It prints one line per path, `PASS <path>` or `FAIL <path>: <error line>` (full logs under
# WORK_DIR/logs), and exits 1 if any path failed. Meant to take under 8 minutes on one GPU after the
# install (each path is stopped after PATH_TIMEOUT seconds, default 200).
#
#   bash tools/gpu_check.sh [--dry-run] [--no-install] [WORK_DIR]      (or DRY_RUN=1)
#
# WORK_DIR (default: a new temporary folder) receives everything: the tiny model, a mini Twitter-GMNER
# release in the release format (or GMNER_ROOT=<release folder> to use real posts, LIMIT per split,
# default 8) with stand-in images, every run folder and log. Nothing is written elsewhere, except the
# install below.
# Install: vLLM (the project's `vllm` extra) and DeepSpeed are installed into the Python that runs the
# check (PYTHON, default .venv/bin/python, else python3) when they are missing and --no-install is not
# given; on a machine without the repo's venv that Python should already hold a CUDA torch
# (like `MCR_TORCH="" MCR_EXTRAS=test,vllm bash tools/setup.sh`, which keeps the image's torch).
# --dry-run prints the resolved command of every path (the recipes' --dry-run) and runs nothing.
# Small-model settings: vLLM gets max_model_len 2048 (the tiny model's positions: 4096),
# gpu_memory_utilization 0.2 (VLLM_GPU_MEMORY_UTILIZATION) and eager mode (VLLM_ARGS), weights in bf16
# (DTYPE_ARGS), images at most 64 tokens (MAX_PIXELS 50176); no path downloads anything.
set -uo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD
SELF="$REPO/tools/gpu_check.sh"
PATHS=(sft-deepspeed-zero2 grpo-vllm-colocate infer-eval-vllm filter-deploy-vllm)

# ------------------------------------------------------------------ one path (internal: __path NAME)
run_path() {
  local name=$1 out
  out="$WORK/runs/$name"
  case "$name" in
    sft-deepspeed-zero2)
      MODEL="$TINY" DATASET=mcr-gmner:train DEEPSPEED=zero2 NPROC_PER_NODE=1 MAX_STEPS=2 BATCH_SIZE=2 \
        PER_DEVICE_BATCH_SIZE=1 SAVE_STEPS=2 OUTPUT_DIR="$out" EXTRA_ARGS="$DTYPE_ARGS" bash recipes/mrsi_sft.sh $DRY_FLAG || return 1
      [ "$DRY" = 1 ] && return 0
      [ -s "$out/last_checkpoint.txt" ] || { echo "ERROR: no checkpoint written under $out"; return 1; }
      grep -q 'zero_optimization' "$out"/v*/args.json || { echo "ERROR: args.json has no DeepSpeed ZeRO config"; return 1; }
      ;;
    grpo-vllm-colocate)
      MODEL="$TINY" DATASET="mcr-gmner:train#8" USE_VLLM=true VLLM_MODE=colocate SLEEP_LEVEL=1 \
        VLLM_MAX_MODEL_LEN=2048 NPROC_PER_NODE=1 DEEPSPEED="" MAX_STEPS=2 BATCH_SIZE=4 NUM_GENERATIONS=4 \
        MAX_COMPLETION_LENGTH=32 SAVE_STEPS=2 LOG_REWARD_TERMS=true OUTPUT_DIR="$out" \
        EXTRA_ARGS="$DTYPE_ARGS $VLLM_ARGS" bash recipes/cvo_grpo.sh $DRY_FLAG || return 1
      [ "$DRY" = 1 ] && return 0
      [ -s "$out/last_checkpoint.txt" ] || { echo "ERROR: no checkpoint written under $out"; return 1; }
      grep -q '"use_vllm": true' "$out"/v*/args.json || { echo "ERROR: args.json says use_vllm false"; return 1; }
      grep -q '"reward"' "$out"/v*/logging.jsonl || { echo "ERROR: no reward logged in logging.jsonl"; return 1; }
      ;;
    infer-eval-vllm)
      # one engine on the one visible GPU: a plain process (torchrun only if nvidia-smi lists several GPUs)
      env ${ONE_PROC_IF_MULTI_GPU} MODEL="$TINY" DATASET=mcr-gmner:test GOLD="$MCR_DATA_DIR/twitter_gmner/test.jsonl" \
        INFER_BACKEND=vllm VLLM_MAX_MODEL_LEN=2048 MAX_NEW_TOKENS=32 OUTPUT_DIR="$out" \
        EXTRA_ARGS="$DTYPE_ARGS $VLLM_ARGS" bash recipes/infer_eval.sh $DRY_FLAG || return 1
      [ "$DRY" = 1 ] && return 0
      local want got
      want=$(wc -l < "$MCR_DATA_DIR/twitter_gmner/test.jsonl"); got=$(wc -l < "$out/infer.jsonl")
      [ "$want" = "$got" ] || { echo "ERROR: $got inference rows for $want test posts"; return 1; }
      [ -s "$out/metrics.json" ] || { echo "ERROR: no metrics.json"; return 1; }
      ;;
    filter-deploy-vllm)
      local deploy=(--model "$TINY" --template qwen2_5_vl --infer_backend vllm --served_model_name policy
                    --max_new_tokens 32 --vllm_max_model_len 2048
                    --vllm_gpu_memory_utilization "$VLLM_GPU_MEMORY_UTILIZATION" $DTYPE_ARGS $VLLM_ARGS)
      local filter=(--input "$MCR_DATA_DIR/twitter_gmner/train.jsonl" --out "$out/d2_filtered.jsonl" -G 4
                    --max-tokens 32 --min-std 0 --min-max 0 --min-median 0 --max-median 1 --no-progress)
      if [ "$DRY" = 1 ]; then
        echo "swift deploy ${deploy[*]} --host 127.0.0.1 --port <free port>"
        echo "python -m mcr_swift.cli cvo-filter ${filter[*]} --base-url <server>"
        return 0
      fi
      mkdir -p "$out"
      local url rc
      url=$(python -m mcr_swift.cli serve start --log "$out/deploy.log" --pid-file "$out/server.pid" --timeout 300 \
            -- "${deploy[@]}") || { tail -n 40 "$out/deploy.log"; return 1; }
      echo "server up at $url"
      python -m mcr_swift.cli cvo-filter "${filter[@]}" --base-url "$url"; rc=$?
      python -m mcr_swift.cli serve stop --pid-file "$out/server.pid"
      [ "$rc" = 0 ] || return 1
      python - "$out/d2_filtered.jsonl.summary.json" <<'PY' || return 1
import json, sys
s = json.load(open(sys.argv[1]))
if not (s["complete"] and s["scored"] == s["queries"] > 0 and s["requests"]["failed"] == 0):
    sys.exit(f"ERROR: filter incomplete: scored {s['scored']} of {s['queries']}, requests {s['requests']}")
print(f"filter scored {s['scored']} queries, kept {s['kept']}")
PY
      ;;
    *) echo "unknown path $name"; return 2 ;;
  esac
}

if [ "${1:-}" = __path ]; then   # internal: one path, in its own process group (see below)
  run_path "$2"
  exit $?
fi

# ------------------------------------------------------------------ arguments and environment
DRY=${DRY_RUN:-0}; INSTALL=1; WORK=""
for a in "$@"; do
  case "$a" in
    --dry-run) DRY=1 ;;
    --no-install) INSTALL=0 ;;
    -h|--help) sed -n '2,30p' "$SELF"; exit 0 ;;
    -*) echo "gpu_check: unknown option $a (see --help)" >&2; exit 2 ;;
    *) WORK=$a ;;
  esac
done
[ "$DRY" = 1 ] || [ "$DRY" = 0 ] || DRY=1
WORK=${WORK:-$(mktemp -d "${TMPDIR:-/tmp}/mcr_gpu_check.XXXXXX")}
mkdir -p "$WORK/logs" "$WORK/runs" "$WORK/bin" || { echo "gpu_check: cannot create $WORK" >&2; exit 2; }
WORK=$(cd "$WORK" && pwd)
if [ -z "${PYTHON:-}" ]; then
  if [ -x .venv/bin/python ]; then PYTHON="$REPO/.venv/bin/python"; else PYTHON=$(command -v python3); fi
fi
# `python` and the console scripts (swift, mcr-swift) of that interpreter come first on PATH
printf '#!/bin/sh\nexec "%s" "$@"\n' "$PYTHON" > "$WORK/bin/python"; chmod +x "$WORK/bin/python"
SCRIPTS=$("$PYTHON" -c 'import sysconfig; print(sysconfig.get_path("scripts"))')
export PATH="$WORK/bin:$SCRIPTS:$(dirname "$PYTHON"):$PATH"
export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
export MCR_DATA_DIR="$WORK/data" MCR_MODEL_FAMILY=qwen2_5_vl MAX_PIXELS=${MAX_PIXELS:-50176}
export VLLM_GPU_MEMORY_UTILIZATION=${VLLM_GPU_MEMORY_UTILIZATION:-0.2} MAX_LENGTH=${MAX_LENGTH:-2048}
export DATALOADER_WORKERS=0 REPORT_TO=none LOGGING_STEPS=1 CUDA_VISIBLE_DEVICES=${CUDA_VISIBLE_DEVICES:-0}
export TINY="$WORK/tiny-qwen2_5_vl" WORK DRY
# bf16 weights on the GPU (the tiny model is saved in fp32, which vLLM's FlashAttention does not take);
# eager vLLM (no CUDA-graph capture / compile: minutes saved on a 10 M-parameter model). The tiny model's
# head size is 16: vLLM picks an attention backend that supports it (set VLLM_ATTENTION_BACKEND to force one).
export DTYPE_ARGS=${DTYPE_ARGS:---torch_dtype bfloat16} VLLM_ARGS=${VLLM_ARGS:---vllm_enforce_eager true}
# the check uses one GPU (CUDA_VISIBLE_DEVICES); recipes that count GPUs with nvidia-smi get told so
ONE_PROC_IF_MULTI_GPU=""
[ "$(python -m mcr_swift.cli recipe-args gpus 2>/dev/null || echo 0)" -gt 1 ] && ONE_PROC_IF_MULTI_GPU="NPROC_PER_NODE=1"
export ONE_PROC_IF_MULTI_GPU
DRY_FLAG=""; [ "$DRY" = 1 ] && DRY_FLAG=--dry-run; export DRY_FLAG   # the stage recipes print their commands
PATH_TIMEOUT=${PATH_TIMEOUT:-200}
log() { echo "[gpu_check $(date +%H:%M:%S)] $*" >&2; }
log "work dir $WORK, python $PYTHON$([ "$DRY" = 1 ] && echo ', dry run')"

# ------------------------------------------------------------------ install (vLLM extra, DeepSpeed)
has() { "$PYTHON" -c "import $1" >/dev/null 2>&1; }
SETUP_ERR=""
if [ "$DRY" = 0 ]; then
  if ! has swift || ! has mcr_swift; then
    SETUP_ERR="ms-swift / mcr-swift not importable by $PYTHON (run tools/setup.sh first)"
  fi
  if [ "$INSTALL" = 1 ]; then
    t0=$(date +%s)
    if ! has vllm; then
      log "installing the vllm extra into $PYTHON"
      "$PYTHON" -m pip install -q -e ".[vllm]" > "$WORK/logs/install_vllm.log" 2>&1 || log "vLLM install failed (logs/install_vllm.log)"
    fi
    if ! has deepspeed; then
      log "installing deepspeed into $PYTHON"
      "$PYTHON" -m pip install -q deepspeed > "$WORK/logs/install_deepspeed.log" 2>&1 || log "DeepSpeed install failed (logs/install_deepspeed.log)"
    fi
    log "install: $(( $(date +%s) - t0 )) s"
  fi
  "$PYTHON" - > "$WORK/logs/versions.txt" 2>&1 <<'PY'
import importlib
for m in ("torch", "swift", "transformers", "vllm", "deepspeed"):
    try:
        print(m, getattr(importlib.import_module(m), "__version__", "?"))
    except Exception as e:
        print(m, "missing:", type(e).__name__, e)
import torch
print("cuda", torch.cuda.is_available(), torch.cuda.device_count(), torch.cuda.get_device_name(0) if torch.cuda.is_available() else "-")
PY
  log "$(tr '\n' ';' < "$WORK/logs/versions.txt")"
fi

# ------------------------------------------------------------------ tiny model and data (shared by all paths)
t_start=$(date +%s)
prepare_inputs() {
  if [ "$DRY" = 1 ]; then
    echo "mcr-swift tiny-model $TINY"
    echo "mcr-swift prepare --root ${GMNER_ROOT:-$WORK/gmner} --out $MCR_DATA_DIR --standin-images $WORK/images --limit ${LIMIT:-8}"
    return 0
  fi
  python -m mcr_swift.cli tiny-model "$TINY" || return 1
  if [ -z "${GMNER_ROOT:-}" ]; then
    GMNER_ROOT="$WORK/gmner"
    python - "$GMNER_ROOT" <<'PY' || return 1
# a mini release in the Twitter-GMNER format (txt/ CoNLL with IMGID lines, xml/ Pascal-VOC boxes):
# invented posts, one to three entities each, located and unlocated ones, for every split
import os, sys
root = sys.argv[1]
os.makedirs(f"{root}/txt", exist_ok=True); os.makedirs(f"{root}/xml", exist_ok=True)
posts = [("Kevin Durant joins the Warriors in Oakland", [("Kevin Durant", "PER", (40, 30, 200, 220)), ("Warriors", "ORG", None), ("Oakland", "LOC", None)]),
         ("Taylor Swift sings at Wembley tonight", [("Taylor Swift", "PER", (100, 20, 260, 230)), ("Wembley", "LOC", None)]),
         ("NASA shows a new photo of Mars", [("NASA", "ORG", None), ("Mars", "LOC", (60, 60, 180, 180))]),
         ("Great match for Real Madrid today", [("Real Madrid", "ORG", (10, 10, 300, 120))]),
         ("Obama meets Merkel in Berlin", [("Obama", "PER", (20, 40, 140, 230)), ("Merkel", "PER", (170, 40, 300, 230)), ("Berlin", "LOC", None)]),
         ("Nothing beats a sunny Sunday", []),
         ("Apple unveils the iPhone in California", [("Apple", "ORG", None), ("iPhone", "OTHER", (120, 60, 200, 200)), ("California", "LOC", None)]),
         ("Messi scores again for Barcelona", [("Messi", "PER", (90, 30, 230, 235)), ("Barcelona", "ORG", None)])]
for split, offset in (("train", 1000), ("dev", 2000), ("test", 3000)):
    with open(f"{root}/txt/{split}.txt", "w") as f:
        for i, (text, ents) in enumerate(posts):
            pid = str(offset + i)
            tokens, tags = text.split(), ["O"] * len(text.split())
            for name, etype, _ in ents:
                n = name.split()
                for k in range(len(tokens) - len(n) + 1):
                    if tokens[k:k + len(n)] == n:
                        tags[k] = f"B-{etype}"
                        for j in range(1, len(n)):
                            tags[k + j] = f"I-{etype}"
                        break
            f.write(f"IMGID:{pid}\n" + "".join(f"{t}\t{g}\n" for t, g in zip(tokens, tags)) + "\n")
            boxes = [(name, b) for name, _, b in ents if b]
            if boxes:
                objs = "".join(f"<object><name>{name}</name><bndbox><xmin>{b[0]}</xmin><ymin>{b[1]}</ymin>"
                               f"<xmax>{b[2]}</xmax><ymax>{b[3]}</ymax></bndbox></object>" for name, b in boxes)
                with open(f"{root}/xml/{pid}.xml", "w") as x:
                    x.write(f"<annotation><filename>{pid}.jpg</filename><size><width>320</width>"
                            f"<height>240</height><depth>3</depth></size>{objs}</annotation>")
PY
  fi
  python -m mcr_swift.cli prepare --root "$GMNER_ROOT" --out "$MCR_DATA_DIR" --standin-images "$WORK/images" \
    --limit "${LIMIT:-8}" --family qwen2_5_vl --no-progress
}
if ! prepare_inputs > "$WORK/logs/inputs.log" 2>&1; then
  SETUP_ERR=${SETUP_ERR:-"tiny model / data: $(grep -E 'Error|error' "$WORK/logs/inputs.log" | tail -n 1)"}
fi
[ "$DRY" = 1 ] && cat "$WORK/logs/inputs.log"

# ------------------------------------------------------------------ the paths, one process group each
error_line() {  # the most telling line of a failed path's log: the last exception that is not torchrun's wrapper
  local line
  line=$(sed -E 's/^\[rank[0-9]+\]:? *//' "$1" | grep -E '^(ERROR|[A-Za-z_.]*(Error|Exception))(:| )|CUDA out of memory' \
         | grep -v -E 'ChildFailedError|^ERROR:torch.distributed' | tail -n 1)
  [ -n "$line" ] || line=$(grep -v '^[[:space:]]*$' "$1" | tail -n 1)
  echo "${line:0:300}"
}
RESULTS=()
FAILED=0
for name in "${PATHS[@]}"; do
  plog="$WORK/logs/$name.log"
  if [ -n "$SETUP_ERR" ]; then
    RESULTS+=("FAIL $name: $SETUP_ERR"); FAILED=1; continue
  fi
  log "$name ..."
  t0=$(date +%s)
  setsid bash "$SELF" __path "$name" > "$plog" 2>&1 &
  pid=$!
  timed_out=0
  while kill -0 "$pid" 2>/dev/null; do
    if [ $(( $(date +%s) - t0 )) -ge "$PATH_TIMEOUT" ]; then
      timed_out=1
      kill -TERM -- "-$pid" 2>/dev/null; sleep 5; kill -KILL -- "-$pid" 2>/dev/null
      break
    fi
    sleep 2
  done
  wait "$pid" 2>/dev/null; rc=$?
  kill -KILL -- "-$pid" 2>/dev/null   # leftovers of this path only (vLLM workers, a deploy server)
  secs=$(( $(date +%s) - t0 ))
  if [ "$DRY" = 1 ]; then
    echo "# $name"; cat "$plog"
  fi
  if [ "$timed_out" = 1 ]; then
    RESULTS+=("FAIL $name: timed out after ${PATH_TIMEOUT} s (last line: $(error_line "$plog"))"); FAILED=1
  elif [ "$rc" = 0 ]; then
    if [ "$DRY" = 1 ]; then RESULTS+=("DRY $name: commands printed above, nothing run"); else RESULTS+=("PASS $name [${secs} s]"); fi
  else
    RESULTS+=("FAIL $name: $(error_line "$plog") [${secs} s, log $plog]"); FAILED=1
  fi
done
printf '%s\n' "${RESULTS[@]}"
log "done in $(( $(date +%s) - t_start )) s after the install; logs in $WORK/logs"
exit "$FAILED"
