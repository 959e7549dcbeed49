#!/usr/bin/env bash
# Stage 3, the App. D.3 filter of D2: the MRSI policy served by `swift deploy` (vLLM, one engine per GPU),
# G = 8 samples per query with the App. E.4 rollout sampling (T 1.5, top-k 200, top-p 0.95), scored by
# gmner_orm (Eq. 10); a query is kept when std >= 0.1, max >= 0.8 and 0.08 <= median <= 0.6 (App. D.3).
# The same stage inside the pipeline: do_filter in recipes/full_pipeline.sh (tests/test_paper_recipes.py
# pins the values).
set -euo pipefail
MAX_PIXELS=1003520 \
swift deploy \
  --model runs/mrsi_merged/merged --template qwen2_5_vl --infer_backend vllm \
  --served_model_name policy --max_new_tokens 2048 --vllm_data_parallel_size 8 --port 8000 &
SERVER=$!
trap 'kill $SERVER 2>/dev/null || true' EXIT
until curl -sf http://127.0.0.1:8000/v1/models > /dev/null; do sleep 10; done
MAX_PIXELS=1003520 \
mcr-swift cvo-filter \
  --input mcr_data/mrsi/d2.jsonl --out mcr_data/mrsi/d2_filtered.jsonl \
  --base-url http://127.0.0.1:8000/v1 --model policy -G 8 --temperature 1.5 --top-k 200 --top-p 0.95 \
  --max-tokens 1024 --seed 0 --min-std 0.1 --min-max 0.8 --min-median 0.08 --max-median 0.6
