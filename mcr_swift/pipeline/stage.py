"""``mcr-swift stage mrsi-sft|merge|cvo-grpo|infer-eval [--dry-run] [SWIFT FLAGS...]``: one stage on its own,
as the stage recipes (recipes/mrsi_sft.sh, merge_lora.sh, cvo_grpo.sh, infer_eval.sh) run it: the stage
config (recipes/qwen25vl_7b/<stage>.yaml) plus what differs on this machine (the GPUs found, the effective
batch kept for their count, vLLM or not) and the stage recipes' environment variables (`ENV_FLAGS`,
docs/pipeline.md), then the given flags. Writes OUTPUT_DIR/last_checkpoint.txt after a training run."""
from __future__ import annotations

import argparse
import os
import shlex
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional

from .commands import Executor, grpo_overrides, infer_eval, read_config, stage_config, swift, train
from .config import RUNS, read_yaml
from .recipe_args import check_nodes, count_gpus, positive_setting, split_batch

#: stage-recipe environment variable -> flag of the stage config (as in the recipes before the configs)
TRAIN_FLAGS = {"MODEL": "model", "TEMPLATE": "template", "DATASET": "dataset", "NUM_EPOCHS": "num_train_epochs",
               "LEARNING_RATE": "learning_rate", "LR_SCHEDULER": "lr_scheduler_type", "MAX_STEPS": "max_steps",
               "LORA_RANK": "lora_rank", "LORA_ALPHA": "lora_alpha", "MAX_LENGTH": "max_length",
               "SAVE_STEPS": "save_steps", "SAVE_TOTAL_LIMIT": "save_total_limit", "LOGGING_STEPS": "logging_steps",
               "DATALOADER_WORKERS": "dataloader_num_workers", "REPORT_TO": "report_to", "OUTPUT_DIR": "output_dir"}
GRPO_FLAGS = {**TRAIN_FLAGS, "WARMUP_RATIO": "warmup_ratio", "NUM_GENERATIONS": "num_generations",
              "TEMPERATURE": "temperature", "TOP_K": "top_k", "TOP_P": "top_p", "BETA": "beta", "EPSILON": "epsilon",
              "EPSILON_HIGH": "epsilon_high", "REWARD_FUNCS": "reward_funcs", "REWARD_WEIGHTS": "reward_weights",
              "MAX_COMPLETION_LENGTH": "max_completion_length",
              "VLLM_GPU_MEMORY_UTILIZATION": "vllm_gpu_memory_utilization", "SLEEP_LEVEL": "sleep_level",
              "VLLM_MAX_MODEL_LEN": "vllm_max_model_len"}
INFER_FLAGS = {"TEMPERATURE": "temperature", "MAX_BATCH_SIZE": "max_batch_size",
               "VLLM_MAX_MODEL_LEN": "vllm_max_model_len", "VLLM_GPU_MEMORY_UTILIZATION": "vllm_gpu_memory_utilization"}
LISTS = {"dataset", "reward_funcs", "reward_weights"}
ENV_FLAGS = {"mrsi-sft": TRAIN_FLAGS, "cvo-grpo": GRPO_FLAGS, "infer-eval": INFER_FLAGS}


def _from_env(table: Dict[str, str], env) -> Dict[str, Any]:
    return {flag: (env[var].split() if flag in LISTS else env[var]) for var, flag in table.items() if env.get(var)}


def _int(env, name: str) -> Optional[int]:
    """A positive integer variable, or None when unset or empty."""
    return positive_setting(name, env[name]) if env.get(name) else None


def model_stage_args(template: str, stage: str) -> Dict[str, Any]:
    """A model overlay's per-stage flags (MiMo-VL: 5 MRSI epochs) for TEMPLATE."""
    for f in sorted((RUNS / "models").glob("*.yaml")):
        o = read_yaml(f)
        if o.get("template") == template:
            return dict((o.get("stage_args") or {}).get(stage, {}))
    return {}


def build(stage: str, env, gpus: int, extra: List[str], ex: Executor) -> None:
    nproc = _int(env, "NPROC_PER_NODE") or max(1, gpus)
    nnodes = _int(env, "NNODES") or 1
    check_nodes(nnodes, env)
    extra = shlex.split(env.get("EXTRA_ARGS", "")) + list(extra)
    template = env.get("TEMPLATE") or "qwen2_5_vl"
    if stage == "merge":
        adapters = env.get("ADAPTERS")
        if not adapters:
            raise ValueError("set ADAPTERS to the MRSI LoRA checkpoint (runs/mrsi_sft/last_checkpoint.txt)")
        out = Path(env.get("OUTPUT_DIR") or "runs/mrsi_merged")
        merged = Path(env.get("MERGED_DIR") or out / "merged")
        o = {"model": env.get("MODEL"), "adapters": adapters, "template": template, "output_dir": merged}
        ex.run(swift(["export"], stage_config("merge_lora"), o, extra=extra))
        ex.last_checkpoint(out, merged)
        return
    if stage == "infer-eval":
        data = env.get("MCR_DATA_DIR") or "mcr_data"
        backend = env.get("INFER_BACKEND") or ("vllm" if gpus > 0 else "transformers")
        infer_eval(ex, model=env.get("MODEL") or "Qwen/Qwen2.5-VL-7B-Instruct", adapters=env.get("ADAPTERS"),
                   template=template, dataset=env.get("DATASET") or "mcr-gmner:test",
                   gold=env.get("GOLD") or f"{data}/twitter_gmner/test.jsonl", backend=backend,
                   max_new_tokens=int(env.get("MAX_NEW_TOKENS") or 2048),
                   output_dir=Path(env.get("OUTPUT_DIR") or "runs/eval"),
                   nproc=nproc if backend == "vllm" else _int(env, "NPROC_PER_NODE") or 1,
                   family=env.get("MCR_MODEL_FAMILY") or template, env={},
                   model_args={**model_stage_args(template, "infer"), **_from_env(INFER_FLAGS, env)}, extra=extra)
        return
    name = {"mrsi-sft": "mrsi_sft", "cvo-grpo": "cvo_grpo"}[stage]
    cfg = stage_config(name)
    o: Dict[str, Any] = {**model_stage_args(template, name), **_from_env(ENV_FLAGS[stage], env)}
    if "DEEPSPEED" in env:
        o["deepspeed"] = env["DEEPSPEED"]
    if stage == "mrsi-sft" and not env.get("DATASET"):
        d1 = Path(env.get("MCR_DATA_DIR") or "mcr_data") / "mrsi" / "d1.jsonl"
        if not d1.is_file():   # D1 comes from `mcr-swift synth` + `split`
            print(f"[mrsi_sft] notice: {d1} not found (run mcr-swift synth + split); training on mcr-gmner:train "
                  f"instead", file=sys.stderr)
            o["dataset"] = ["mcr-gmner:train"]
    gens, batch, per_device = None, _int(env, "BATCH_SIZE"), _int(env, "PER_DEVICE_BATCH_SIZE")
    if stage == "cvo-grpo":
        c = read_config(cfg)
        gens = _int(env, "NUM_GENERATIONS") or int(c["num_generations"])
        use_vllm = (env.get("USE_VLLM") or ("true" if gpus > 0 else "false")).lower() == "true"
        eval_pd = None
        if env.get("VAL_DATASET"):   # ms-swift: the eval batch divisible by G, as the train batch
            eval_pd = split_batch(batch or int(c["ENV"]["NPROC_PER_NODE"]) * int(c["per_device_train_batch_size"])
                                  * int(c["gradient_accumulation_steps"]), nproc, per_device,
                                  max_per_device=int(c["per_device_train_batch_size"]), nnodes=nnodes)[0]
        o.update(grpo_overrides(use_vllm=use_vllm, vllm_mode=env.get("VLLM_MODE") or "colocate",
                                server_host=env.get("VLLM_SERVER_HOST"), server_port=env.get("VLLM_SERVER_PORT"),
                                log_reward_terms=(env.get("LOG_REWARD_TERMS") or "").lower() == "true",
                                adapters=env.get("ADAPTERS"), val_dataset=env.get("VAL_DATASET"),
                                eval_steps=env.get("EVAL_STEPS") or env.get("SAVE_STEPS") or "100",
                                per_device_eval=eval_pd, reward_funcs=o.pop("reward_funcs", None),
                                reward_weights=o.pop("reward_weights", None)))
    cmd = train(["sft"] if stage == "mrsi-sft" else ["rlhf"], cfg, o, nproc=nproc, nnodes=nnodes, batch=batch,
                per_device=per_device, num_generations=gens, extra=extra, dry_run=ex.dry_run)
    ex.run(cmd)
    ex.last_checkpoint(Path(o.get("output_dir") or read_config(cfg)["output_dir"]))


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="mcr-swift stage", description=__doc__.split("\n")[0])
    p.add_argument("stage", choices=["mrsi-sft", "merge", "cvo-grpo", "infer-eval"])
    p.add_argument("--dry-run", action="store_true", help="print the commands, run nothing")
    a, extra = p.parse_known_args(argv)
    ex = Executor(a.dry_run)
    build(a.stage, os.environ, count_gpus(), extra, ex)
    return 0


if __name__ == "__main__":
    sys.exit(main())
