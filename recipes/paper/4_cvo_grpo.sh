#!/usr/bin/env bash
# Stage 4, CVO (paper Sec. 4.2): GRPO with gmner_orm (Eq. 10) on the filtered D2, a new LoRA on the merged
# MRSI model, vLLM rollouts colocated with training on each of the 8 GPUs.
# App. E.4: lr 5e-6, 2 epochs, warmup 0.05, batch 64 completions = 8 GPUs x 4 per device x 2 accumulation
# (8 prompts x G 8), temperature 1.5, top-k 200, top-p 0.95, beta 0.005, epsilon 0.15 / epsilon_high 0.25.
# The same command, every value configurable: recipes/cvo_grpo.sh (tests/test_paper_recipes.py pins the two).
set -euo pipefail
MAX_PIXELS=1003520 NPROC_PER_NODE=8 \
swift rlhf --rlhf_type grpo \
  --model runs/mrsi_merged/merged --template qwen2_5_vl --check_model false \
  --external_plugins "$(mcr-swift plugin)" --dataset mcr-mrsi:d2_filtered \
  --tuner_type lora --lora_rank 8 --lora_alpha 32 --target_modules all-linear \
  --reward_funcs gmner_orm \
  --num_generations 8 --temperature 1.5 --top_k 200 --top_p 0.95 \
  --beta 0.005 --epsilon 0.15 --epsilon_high 0.25 --loss_type grpo \
  --num_train_epochs 2 --max_steps -1 --learning_rate 5e-6 \
  --lr_scheduler_type cosine --warmup_ratio 0.05 \
  --per_device_train_batch_size 4 --gradient_accumulation_steps 2 \
  --max_completion_length 1024 --max_length 4096 \
  --use_vllm true --vllm_mode colocate --vllm_gpu_memory_utilization 0.4 --sleep_level 1 --vllm_max_model_len 4096 \
  --log_entropy true \
  --logging_steps 1 --save_steps 100 --save_total_limit 2 \
  --dataloader_num_workers 4 --report_to tensorboard \
  --output_dir runs/cvo_grpo --deepspeed zero2
mcr-swift recipe-args last-checkpoint runs/cvo_grpo    # -> runs/cvo_grpo/last_checkpoint.txt
