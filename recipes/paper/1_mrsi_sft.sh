#!/usr/bin/env bash
# Stage 1, MRSI (paper Sec. 4.1): LoRA SFT of Qwen2.5-VL-7B on D1, 8 GPUs, DeepSpeed ZeRO-2.
# App. E.4: lr 1e-4, cosine, batch 16 = 8 GPUs x 2 per device x 1 accumulation, 2 epochs.
# MiMo-VL (App. E.4: 5 epochs): --model XiaomiMiMo/MiMo-VL-7B-RL --template mimo_vl --num_train_epochs 5
# D1 (mcr-mrsi:d1) is mcr_data/mrsi/d1.jsonl, written by `mcr-swift synth` + `mcr-swift split`.
# The same command, every value configurable: recipes/mrsi_sft.sh (tests/test_paper_recipes.py pins the two).
set -euo pipefail
MAX_PIXELS=1003520 NPROC_PER_NODE=8 \
swift sft \
  --model Qwen/Qwen2.5-VL-7B-Instruct --template qwen2_5_vl --check_model false \
  --external_plugins "$(mcr-swift plugin)" --dataset mcr-mrsi:d1 \
  --tuner_type lora --lora_rank 8 --lora_alpha 32 --target_modules all-linear \
  --num_train_epochs 2 --max_steps -1 \
  --learning_rate 1e-4 --lr_scheduler_type cosine \
  --per_device_train_batch_size 2 --gradient_accumulation_steps 1 \
  --max_length 4096 --logging_steps 5 --save_steps 500 \
  --save_total_limit 2 --dataloader_num_workers 4 \
  --report_to tensorboard --output_dir runs/mrsi_sft \
  --deepspeed zero2
mcr-swift recipe-args last-checkpoint runs/mrsi_sft    # -> runs/mrsi_sft/last_checkpoint.txt
