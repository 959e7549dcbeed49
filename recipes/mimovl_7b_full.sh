#!/usr/bin/env bash
# MCR on MiMo-VL-7B (template mimo_vl, MRSI 5 epochs: recipes/runs/models/mimovl_7b.yaml), the whole pipeline.
#   bash recipes/mimovl_7b_full.sh  |  PROFILE=tiny bash recipes/mimovl_7b_full.sh
cd "$(dirname "$0")/.." && { [ -x .venv/bin/python ] && PATH="$PWD/.venv/bin:$PATH"; exec python -m mcr_swift.cli pipeline --model mimovl_7b "$@"; }
