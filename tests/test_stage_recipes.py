"""Each stage recipe really runs on a CPU with the tiny model, chained the way the full pipeline chains
them (through $OUTPUT_DIR/last_checkpoint.txt): MRSI SFT 2 steps -> merge -> CVO GRPO 2 steps from the
merged model (and from the SFT adapter) -> inference + evaluation on a few test posts -> curves.
The scripts are the GPU ones with small numbers (no vLLM, one process, no DeepSpeed)."""
from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import pytest
from safetensors import safe_open

from tests.conftest import REPO, TINY_MAX_PIXELS

pytestmark = pytest.mark.swift

CPU = {"NPROC_PER_NODE": "1", "DEEPSPEED": "", "USE_VLLM": "false", "MAX_PIXELS": str(TINY_MAX_PIXELS),
       "DATALOADER_WORKERS": "0", "REPORT_TO": "none", "LOGGING_STEPS": "1"}
TERMS = ["gmner_orm", "gmner_count", "gmner_span", "gmner_type", "gmner_iou", "gmner_entail", "gmner_format",
         "gmner_f1"]


def stage(recipe: str, prepared: Path, **env) -> subprocess.CompletedProcess:
    path = os.pathsep.join([str(Path(sys.executable).parent), os.environ["PATH"]])   # the venv's swift
    t = time.time()
    p = subprocess.run(["bash", str(REPO / "recipes" / f"{recipe}.sh")], cwd=REPO, capture_output=True, text=True,
                       env={**os.environ, "PATH": path, "MCR_DATA_DIR": str(prepared), **CPU, **env}, timeout=900)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-6000:]
    print(f"\n[{recipe}] wall {time.time() - t:.1f} s, peak RSS so far "
          f"{resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024:.0f} MB")
    return p


def last(out: Path) -> Path:
    return Path((out / "last_checkpoint.txt").read_text().strip())


def logs(checkpoint: Path):
    return [json.loads(l) for l in (checkpoint.parent / "logging.jsonl").read_text().splitlines()]


def tensor(folder: Path, suffix: str):
    with safe_open(str(folder / "model.safetensors"), "pt") as f:
        name = next(k for k in f.keys() if k.endswith(suffix))
        return f.get_tensor(name)


@pytest.fixture(scope="module")
def sft(tiny_model, prepared, tmp_path_factory):
    out = tmp_path_factory.mktemp("stages") / "mrsi_sft"
    p = stage("mrsi_sft", prepared, MODEL=str(tiny_model), MAX_STEPS="2", BATCH_SIZE="2", SAVE_STEPS="2",
              OUTPUT_DIR=str(out))
    return out, p


@pytest.fixture(scope="module")
def merged(tiny_model, prepared, sft):
    out = sft[0].parent / "mrsi_merged"
    stage("merge_lora", prepared, MODEL=str(tiny_model), ADAPTERS=str(last(sft[0])), OUTPUT_DIR=str(out))
    return out


@pytest.fixture(scope="module")
def grpo(prepared, merged):
    out = merged.parent / "cvo_grpo"
    stage("cvo_grpo", prepared, MODEL=str(last(merged)), DATASET="mcr-gmner:train#8", MAX_STEPS="2",
          BATCH_SIZE="4", NUM_GENERATIONS="4", MAX_COMPLETION_LENGTH="32", SAVE_STEPS="2", LOG_REWARD_TERMS="true",
          VAL_DATASET="mcr-gmner:dev#4", EVAL_STEPS="2", OUTPUT_DIR=str(out))
    return out


def test_sft_trains_on_the_fallback_dataset_and_records_its_checkpoint(sft):
    out, p = sft
    ckpt = last(out)
    assert ckpt.name == "checkpoint-2" and ckpt.parent.parent == out.resolve()
    assert (ckpt / "adapter_model.safetensors").stat().st_size > 0
    assert "mrsi/d1.jsonl not found" in p.stderr   # no D1 in the prepared data: mcr-gmner:train, said so
    args = json.loads((ckpt.parent / "args.json").read_text())
    assert args["dataset"] == ["mcr-gmner:train"] and args["max_steps"] == 2
    assert (args["learning_rate"], args["lr_scheduler_type"], args["tuner_type"]) == (1e-4, "cosine", "lora")
    assert len([l for l in logs(ckpt) if "loss" in l]) == 2
    # the plugin came in through --external_plugins (ms-swift 4.6's flag), not --custom_register_path
    assert [Path(f).name for f in args["external_plugins"]] == ["mcr_swift_plugin.py"]
    assert not args["custom_register_path"] and "Successfully imported external_plugins" in p.stdout + p.stderr


def test_merge_writes_a_model_that_differs_from_the_base(tiny_model, merged):
    folder = last(merged)
    assert folder == (merged / "merged").resolve() and (folder / "config.json").is_file()
    # LoRA B starts at zero; after 2 steps the merged q_proj must differ from the base, same shape
    base, new = tensor(tiny_model, "layers.0.self_attn.q_proj.weight"), tensor(folder, "layers.0.self_attn.q_proj.weight")
    assert base.shape == new.shape and (base - new).abs().max() > 0


def test_grpo_from_the_merged_model_logs_every_reward_term(grpo, merged):
    ckpt = last(grpo)
    assert ckpt.name == "checkpoint-2" and (ckpt / "adapter_model.safetensors").is_file()
    args = json.loads((ckpt.parent / "args.json").read_text())
    assert args["model"] == str(last(merged)) and args["adapters"] == []
    assert args["reward_funcs"] == TERMS and args["reward_weights"] == [1, 0, 0, 0, 0, 0, 0, 0]
    assert (args["temperature"], args["top_k"], args["top_p"], args["beta"], args["epsilon"],
            args["epsilon_high"]) == (1.5, 200, 0.95, 0.005, 0.15, 0.25)
    steps = [l for l in logs(ckpt) if "reward" in l]
    assert len(steps) == 2
    for s in steps:
        assert {"completions/mean_length", "entropy/mean", "kl"} <= set(s)
        assert len([k for k in s if k.startswith("rewards/") and k.endswith("/mean")]) == len(TERMS)
        # the weight-0 terms do not change the reward: it is gmner_orm's mean
        assert s["reward"] == pytest.approx(s["rewards/GMNERReward/mean"])
    # the dev evaluation at step 2 logs the rewards on dev, F1 among them (Fig. 4's F1 curve)
    ev = [l for l in logs(ckpt) if "eval_rewards/GMNERF1Reward/mean" in l]
    assert len(ev) == 1 and 0.0 <= ev[0]["eval_rewards/GMNERF1Reward/mean"] <= 1.0


def test_grpo_from_the_sft_adapter(tiny_model, prepared, sft):
    out = sft[0].parent / "cvo_grpo_adapter"
    adapter = str(last(sft[0]))
    stage("cvo_grpo", prepared, MODEL=str(tiny_model), ADAPTERS=adapter, DATASET="mcr-gmner:train#8",
          MAX_STEPS="2", BATCH_SIZE="4", NUM_GENERATIONS="4", MAX_COMPLETION_LENGTH="32", SAVE_STEPS="2",
          OUTPUT_DIR=str(out))
    args = json.loads((last(out).parent / "args.json").read_text())
    assert args["adapters"] == args["ref_adapters"] == [adapter] and args["reward_funcs"] == ["gmner_orm"]


def test_infer_and_evaluate_the_cvo_policy(prepared, merged, grpo):
    out = grpo.parent / "eval"
    stage("infer_eval", prepared, MODEL=str(last(merged)), ADAPTERS=str(last(grpo)), DATASET="mcr-gmner:test#6",
          MAX_NEW_TOKENS="32", OUTPUT_DIR=str(out))
    results = [json.loads(l) for l in (out / "infer.jsonl").read_text().splitlines()]
    assert len(results) == 6
    gold = {tuple(r["images"]): r for r in map(json.loads, (prepared / "twitter_gmner/test.jsonl").read_text().splitlines())}
    posts = [gold[tuple(i["path"] if isinstance(i, dict) else i for i in r["images"])] for r in results]
    report = json.loads((out / "metrics.json").read_text())
    # every gold post of the gold file is scored: the 18 not inferred count as all-missed
    assert report["posts"] == len(gold) == 24 and report["missing_posts"] == 18 and report["unmatched_rows"] == 0
    assert len({p["mcr_id"] for p in posts}) == 6
    assert report["metrics"]["gmner"]["gold"] == sum(len(json.loads(p["mcr_gold"])) for p in gold.values())


def test_curves_of_the_real_grpo_run(grpo, tmp_path):
    p = subprocess.run([sys.executable, "-m", "mcr_swift.cli", "curves", str(grpo), "--out", str(tmp_path)],
                       capture_output=True, text=True, cwd=REPO)
    assert p.returncode == 0, p.stdout + p.stderr
    assert sorted(f.name for f in tmp_path.glob("*.png")) == [
        "completion_length.png", "entropy_kl.png", "f1.png", "loss.png", "reward.png", "reward_terms.png"]
    assert "f1: no series" not in p.stdout
