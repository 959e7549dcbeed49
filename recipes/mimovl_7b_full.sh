#!/usr/bin/env bash
# MCR on MiMo-VL-7B, the whole pipeline (recipes/full_pipeline.sh). MiMo-VL uses ms-swift's mimo_vl
# template; MRSI trains 5 epochs instead of 2 (App. E.4, applied by recipes/mrsi_sft.sh).
#   bash recipes/mimovl_7b_full.sh                   # 8 GPUs, the paper's values
#   PROFILE=tiny bash recipes/mimovl_7b_full.sh      # CPU, tiny model (a Qwen2.5-VL, MiMo-VL's architecture)
set -euo pipefail
export PROFILE=${PROFILE:-paper}
export TEMPLATE=${TEMPLATE:-mimo_vl}
[ "$PROFILE" = paper ] && export MODEL=${MODEL:-XiaomiMiMo/MiMo-VL-7B-RL}
export RUN_DIR=${RUN_DIR:-runs/mimovl_7b_$PROFILE$([ "${VARIANT:-mcr}" = mcr ] || echo "_$VARIANT")}   # VARIANT: a Table 1 / 3 row (full_pipeline.sh)
exec bash "$(dirname "$0")/full_pipeline.sh"
