#!/usr/bin/env bash
# MCR on Qwen2.5-VL-7B-Instruct, the whole pipeline (recipes/full_pipeline.sh; paper Sec. 4, App. E.4).
#   bash recipes/qwen25vl_7b_full.sh                 # 8 GPUs, the paper's values (set IMAGE_DIR and the
#                                                    # synthesis endpoints, see README)
#   PROFILE=tiny bash recipes/qwen25vl_7b_full.sh    # the same stages on a CPU with the tiny model
set -euo pipefail
export PROFILE=${PROFILE:-paper}
export TEMPLATE=${TEMPLATE:-qwen2_5_vl}
[ "$PROFILE" = paper ] && export MODEL=${MODEL:-Qwen/Qwen2.5-VL-7B-Instruct}
export RUN_DIR=${RUN_DIR:-runs/qwen25vl_7b_$PROFILE$([ "${VARIANT:-mcr}" = mcr ] || echo "_$VARIANT")}   # VARIANT: a Table 1 / 3 row (full_pipeline.sh)
exec bash "$(dirname "$0")/full_pipeline.sh"
