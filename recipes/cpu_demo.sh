#!/usr/bin/env bash
# The main job on the built-in tiny default, on a CPU: build the tiny Qwen2.5-VL, prepare the first
# posts of the shared Twitter-GMNER release with stand-in images, and run the MRSI SFT recipe
# (the same script the GPU run uses) for a few steps.
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x .venv/bin/python ] && export PATH="$PWD/.venv/bin:$PATH"
RUN_DIR=${RUN_DIR:-runs/cpu_demo}
SHARED=${MCR_SHARED_DIR:-../shared}
python -m mcr_swift.cli tiny-model "$RUN_DIR/tiny-qwen2_5_vl"
python -m mcr_swift.cli prepare --root "$SHARED/data/twitter_gmner_v2" --out "$RUN_DIR/data" \
  --standin-images "$RUN_DIR/images" --limit "${LIMIT:-32}" --no-progress
MODEL="$RUN_DIR/tiny-qwen2_5_vl" MCR_DATA_DIR="$RUN_DIR/data" MAX_PIXELS=${MAX_PIXELS:-50176} \
MAX_STEPS=${MAX_STEPS:-5} BATCH_SIZE=${BATCH_SIZE:-2} NPROC_PER_NODE=1 PER_DEVICE_BATCH_SIZE=1 \
DATALOADER_WORKERS=0 REPORT_TO=none LOGGING_STEPS=1 SAVE_STEPS=${MAX_STEPS:-5} DEEPSPEED="" \
OUTPUT_DIR="$RUN_DIR/mrsi_sft" bash recipes/mrsi_sft.sh
echo "[cpu_demo] done: adapter under $RUN_DIR/mrsi_sft"
