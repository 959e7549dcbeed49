"""The recipes: the CPU demo runs the very script the GPU run uses; the GPU defaults are the paper's
(App. E.4), checked on the printed command (SWIFT=echo) and on the arguments ms-swift itself resolves
from the recipe's real command line (args.json, built without training by `mcr-swift swift-args`)."""
from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from mcr_swift.pipeline.recipe_args import BatchError, newest_checkpoint, split_batch, write_last_checkpoint
from tests.conftest import REPO

VENV_BIN = str(Path(sys.executable).parent)


def fake_gpus(folder: Path, n: int) -> str:
    """A folder with an ``nvidia-smi`` that lists ``n`` GPUs (0: lists none), to put first on PATH."""
    folder.mkdir(parents=True, exist_ok=True)
    exe = folder / "nvidia-smi"
    exe.write_text("#!/bin/sh\n" + "".join(f"echo 'GPU {i}: NVIDIA L20 (UUID: GPU-{i})'\n" for i in range(n)))
    exe.chmod(0o755)
    return str(folder)


def run_recipe(recipe: str, gpu_dir: str = None, **env) -> subprocess.CompletedProcess:
    path = os.pathsep.join(([gpu_dir] if gpu_dir else []) + [VENV_BIN, os.environ["PATH"]])
    return subprocess.run(["bash", str(REPO / "recipes" / f"{recipe}.sh")],
                          env={**os.environ, "SWIFT": "echo", "PATH": path, **env},
                          capture_output=True, text=True, cwd=REPO)


def recipe_args(recipe: str = "mrsi_sft", gpu_dir: str = None, **env):
    """The swift command a recipe would run (SWIFT=echo), as a dict of --flag -> value."""
    out = run_recipe(recipe, gpu_dir, **env)
    assert out.returncode == 0, out.stderr
    words = shlex.split(out.stdout.strip().splitlines()[-1])
    assert words[0] == {"mrsi_sft": "sft", "cvo_grpo": "rlhf", "merge_lora": "export", "infer_eval": "infer"}[recipe]
    args, key = {}, None
    for w in words[1:]:
        if w.startswith("--"):
            key = w[2:]
            args[key] = ""
        else:
            args[key] = w if not args[key] else args[key] + " " + w
    return args


@pytest.mark.parametrize("gpus,per_device,accum", [("8", "2", "1"), ("4", "2", "2"), ("1", "2", "8")])
def test_mrsi_defaults_are_the_papers(gpus, per_device, accum):
    a = recipe_args(NPROC_PER_NODE=gpus)
    # App. E.4: LoRA, lr 1e-4, cosine, batch 16, 2 epochs for Qwen2.5-VL
    assert a["model"] == "Qwen/Qwen2.5-VL-7B-Instruct" and a["tuner_type"] == "lora"
    assert a["learning_rate"] == "1e-4" and a["lr_scheduler_type"] == "cosine"
    assert a["num_train_epochs"] == "2" and a["max_steps"] == "-1"
    assert int(gpus) * int(a["per_device_train_batch_size"]) * int(a["gradient_accumulation_steps"]) == 16
    assert (a["per_device_train_batch_size"], a["gradient_accumulation_steps"]) == (per_device, accum)
    assert a["external_plugins"].endswith("mcr_swift_plugin.py")
    assert ("deepspeed" in a) == (gpus != "1")


def test_mimo_trains_five_epochs():
    assert recipe_args(TEMPLATE="mimo_vl", MODEL="XiaomiMiMo/MiMo-VL-7B-RL")["num_train_epochs"] == "5"


def test_bad_batch_is_refused():
    out = subprocess.run(["bash", str(REPO / "recipes" / "mrsi_sft.sh")],
                         env={**os.environ, "SWIFT": "echo", "NPROC_PER_NODE": "3"}, capture_output=True, text=True)
    assert out.returncode == 2 and "not a multiple" in out.stderr


# --- batch arithmetic and checkpoint discovery (mcr_swift.pipeline.recipe_args) -----------------------------

@pytest.mark.parametrize("batch,nproc,max_pd,gens,expected", [
    (16, 8, 2, None, (2, 1)), (16, 4, 2, None, (2, 2)), (16, 16, 2, None, (1, 1)), (16, 1, 2, None, (2, 8)),
    (64, 8, 4, 8, (4, 2)), (64, 4, 4, 8, (4, 4)), (64, 16, 4, 8, (4, 1)), (64, 1, 4, 8, (4, 16)),
])
def test_split_batch_keeps_the_effective_batch(batch, nproc, max_pd, gens, expected):
    per_device, accum = split_batch(batch, nproc, max_per_device=max_pd, num_generations=gens)
    assert (per_device, accum) == expected and nproc * per_device * accum == batch


def test_split_batch_refusals():
    with pytest.raises(BatchError, match="not a multiple of NPROC_PER_NODE"):
        split_batch(16, 3)
    with pytest.raises(BatchError, match="not a multiple of NPROC_PER_NODE"):
        split_batch(64, 8, per_device=3)
    with pytest.raises(BatchError, match="NUM_GENERATIONS=8"):
        split_batch(36, 1, per_device=4, num_generations=8)   # 36 completions: no groups of 8


def test_newest_checkpoint_orders_versions_then_steps(tmp_path):
    for d in ["v0-20260101-000000/checkpoint-900", "v1-20260102-000000/checkpoint-10",
              "v1-20260102-000000/checkpoint-200", "v1-20260102-000000/checkpoint-200-merged",
              "v1-20260102-000000/runs"]:
        (tmp_path / d).mkdir(parents=True)
    assert newest_checkpoint(tmp_path) == (tmp_path / "v1-20260102-000000/checkpoint-200").resolve()
    target = write_last_checkpoint(tmp_path)
    assert target.read_text().strip() == str((tmp_path / "v1-20260102-000000/checkpoint-200").resolve())
    with pytest.raises(FileNotFoundError, match="no v\\*-\\*/checkpoint-\\* folder"):
        newest_checkpoint(tmp_path / "v0-20260101-000000")


# --- the stage recipes' printed commands (SWIFT=echo) ---------------------------------------------

def test_mrsi_dataset_is_d1_and_falls_back_with_a_notice(tmp_path):
    out = run_recipe("mrsi_sft", NPROC_PER_NODE="1", MCR_DATA_DIR=str(tmp_path))
    assert "mrsi/d1.jsonl not found" in out.stderr and "--dataset mcr-gmner:train" in out.stdout
    (tmp_path / "mrsi").mkdir()
    (tmp_path / "mrsi" / "d1.jsonl").write_text("")
    out = run_recipe("mrsi_sft", NPROC_PER_NODE="1", MCR_DATA_DIR=str(tmp_path))
    assert "not found" not in out.stderr and "--dataset mcr-mrsi:d1" in out.stdout


@pytest.mark.parametrize("gpus,per_device,accum", [(8, "4", "2"), (4, "4", "4"), (16, "4", "1")])
def test_grpo_defaults_are_the_papers(tmp_path, gpus, per_device, accum):
    a = recipe_args("cvo_grpo", fake_gpus(tmp_path, gpus))   # GPUs found by nvidia-smi, nothing else set
    # App. E.4: 2 epochs, lr 5e-6, batch 64, warmup 0.05, G = 8, T 1.5, top-k 200, top-p 0.95,
    # beta 0.005, clip 0.15 / 0.25, LoRA, vLLM rollouts; the filtered D2 (App. D.3); gmner_orm (Eq. 10)
    expected = {"rlhf_type": "grpo", "dataset": "mcr-mrsi:d2_filtered", "num_train_epochs": "2",
                "learning_rate": "5e-6", "warmup_ratio": "0.05", "num_generations": "8", "temperature": "1.5",
                "top_k": "200", "top_p": "0.95", "beta": "0.005", "epsilon": "0.15", "epsilon_high": "0.25",
                "reward_funcs": "gmner_orm", "tuner_type": "lora", "use_vllm": "true", "vllm_mode": "colocate",
                "max_steps": "-1", "deepspeed": "zero2", "per_device_train_batch_size": per_device,
                "gradient_accumulation_steps": accum}
    assert {k: a.get(k) for k in expected} == expected
    assert gpus * int(per_device) * int(accum) == 64 and "adapters" not in a and "reward_weights" not in a


def test_grpo_from_an_adapter_uses_it_as_kl_reference(tmp_path):
    a = recipe_args("cvo_grpo", fake_gpus(tmp_path, 0), ADAPTERS="runs/mrsi_sft/v0-1/checkpoint-9")
    assert a["adapters"] == a["ref_adapters"] == "runs/mrsi_sft/v0-1/checkpoint-9"
    assert a["use_vllm"] == "false" and "deepspeed" not in a and "vllm_mode" not in a   # no GPU found


def test_grpo_reward_terms_are_logged_with_weight_zero(tmp_path):
    a = recipe_args("cvo_grpo", fake_gpus(tmp_path, 0), LOG_REWARD_TERMS="true")
    assert a["reward_funcs"].split() == ["gmner_orm", "gmner_count", "gmner_span", "gmner_type", "gmner_iou",
                                         "gmner_entail", "gmner_format", "gmner_f1"]
    assert [float(w) for w in a["reward_weights"].split()] == [1, 0, 0, 0, 0, 0, 0, 0]
    assert "val_dataset" not in a                      # no evaluation unless asked (paper silent)
    a = recipe_args("cvo_grpo", fake_gpus(tmp_path, 0), VAL_DATASET="mcr-gmner:dev", SAVE_STEPS="50")
    assert (a["val_dataset"], a["eval_strategy"], a["eval_steps"]) == ("mcr-gmner:dev", "steps", "50")
    assert a["per_device_eval_batch_size"] == a["per_device_train_batch_size"]


def test_grpo_server_mode_and_refusals(tmp_path):
    gpus = fake_gpus(tmp_path, 4)
    a = recipe_args("cvo_grpo", gpus, VLLM_MODE="server", VLLM_SERVER_HOST="10.0.0.2")
    assert (a["vllm_mode"], a["vllm_server_host"], a["vllm_server_port"]) == ("server", "10.0.0.2", "8000")
    assert "sleep_level" not in a
    out = run_recipe("cvo_grpo", gpus, VLLM_MODE="server")
    assert out.returncode != 0 and "VLLM_SERVER_HOST" in out.stderr
    out = run_recipe("cvo_grpo", gpus, BATCH_SIZE="36", NPROC_PER_NODE="1", PER_DEVICE_BATCH_SIZE="4")
    assert out.returncode == 2 and "NUM_GENERATIONS=8" in out.stderr


def test_merge_and_infer_commands(tmp_path):
    m = recipe_args("merge_lora", ADAPTERS="ck/checkpoint-5", OUTPUT_DIR="runs/m")
    assert (m["adapters"], m["merge_lora"], m["output_dir"]) == ("ck/checkpoint-5", "true", "runs/m/merged")
    assert run_recipe("merge_lora").returncode != 0   # ADAPTERS is required
    gpus = fake_gpus(tmp_path / "g", 8)
    gpu = recipe_args("infer_eval", gpus, ADAPTERS="ck/checkpoint-5", MCR_DATA_DIR="d")
    # vLLM: the adapter is merged first (one process), then vLLM serves the merged model
    out = run_recipe("infer_eval", gpus, ADAPTERS="ck/checkpoint-5").stdout
    assert "export --model Qwen/Qwen2.5-VL-7B-Instruct --adapters ck/checkpoint-5" in out
    assert "nproc=8" in out                              # one vLLM engine per GPU found (data parallel)
    assert (gpu["model"], gpu["infer_backend"], gpu["val_dataset"]) == ("runs/eval/policy/merged", "vllm",
                                                                        "mcr-gmner:test")
    assert "adapters" not in gpu and gpu["result_path"] == "runs/eval/infer.jsonl" and gpu["temperature"] == "0"
    assert "nproc=1" in run_recipe("infer_eval", fake_gpus(tmp_path / "c", 0)).stdout
    cpu = recipe_args("infer_eval", fake_gpus(tmp_path / "c", 0), ADAPTERS="ck/checkpoint-5")
    assert (cpu["infer_backend"], cpu["adapters"]) == ("transformers", "ck/checkpoint-5")


# --- args.json: ms-swift's own resolution of the recipes' GPU defaults (no training) --------------

def swift_args_json(recipe: str, tmp_path: Path, model: Path, gpus: int, **env) -> dict:
    """Run a recipe with SWIFT="python -m mcr_swift.cli swift-args" as on a machine with ``gpus`` GPUs and
    return the args.json ms-swift's argument classes resolved from its command line."""
    out = run_recipe(recipe, fake_gpus(tmp_path / "bin", gpus), SWIFT=f"{sys.executable} -m mcr_swift.cli swift-args",
                     MODEL=str(model), OUTPUT_DIR=str(tmp_path / "out"), **env)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-4000:]
    files = list((tmp_path / "out").glob("v*-*/args.json"))
    assert len(files) == 1
    assert not (tmp_path / "out" / "last_checkpoint.txt").exists()   # not the real swift: nothing trained
    return json.loads(files[0].read_text())


@pytest.mark.swift
@pytest.mark.parametrize("template,epochs", [("qwen2_5_vl", 2), ("mimo_vl", 5)])
def test_sft_args_json_is_app_e4(tiny_model, tmp_path, template, epochs):
    a = swift_args_json("mrsi_sft", tmp_path, tiny_model, 8, TEMPLATE=template)
    assert a["global_world_size"] == a["mcr_resolved"]["world_size"] == 8
    assert (a["tuner_type"], a["learning_rate"], a["lr_scheduler_type"]) == ("lora", 1e-4, "cosine")
    assert (a["num_train_epochs"], a["max_steps"], a["template"]) == (epochs, -1, template)
    assert a["per_device_train_batch_size"] * a["gradient_accumulation_steps"] * a["global_world_size"] == 16
    assert a["deepspeed"] == "zero2" and a["dataset"] == ["mcr-gmner:train"]


@pytest.mark.swift
@pytest.mark.parametrize("gpus", [8, 4])
def test_grpo_args_json_is_app_e4(tiny_model, tmp_path, gpus):
    a = swift_args_json("cvo_grpo", tmp_path, tiny_model, gpus)
    r = a["mcr_resolved"]
    assert a["global_world_size"] == r["world_size"] == gpus
    expected = {"rlhf_type": "grpo", "tuner_type": "lora", "num_train_epochs": 2, "max_steps": -1,
                "learning_rate": 5e-6, "warmup_ratio": 0.05, "num_generations": 8, "temperature": 1.5,
                "top_k": 200, "top_p": 0.95, "beta": 0.005, "epsilon": 0.15, "epsilon_high": 0.25,
                "reward_funcs": ["gmner_orm"], "reward_weights": None, "loss_type": "grpo",
                "use_vllm": True, "vllm_mode": "colocate", "deepspeed": "zero2",
                "dataset": ["mcr-mrsi:d2_filtered"], "adapters": [], "log_entropy": True}
    assert {k: a[k] for k in expected} == expected
    assert a["per_device_train_batch_size"] * a["gradient_accumulation_steps"] * gpus == 64
    # ms-swift's GRPO batch: one generation batch of 64 completions (8 prompts x G) per optimizer step
    assert r["generation_batch_size"] == 64 and r["generation_batch_size"] % a["num_generations"] == 0
    assert r["steps_per_generation"] == a["gradient_accumulation_steps"]


# --- several nodes (ms-swift's torchrun variables NNODES, NODE_RANK, MASTER_ADDR, MASTER_PORT) ------

@pytest.mark.parametrize("batch,nproc,nnodes,max_pd,gens,expected", [
    (16, 8, 1, 2, None, (2, 1)), (16, 8, 2, 2, None, (1, 1)), (16, 4, 2, 2, None, (2, 1)),
    (64, 8, 1, 4, 8, (4, 2)), (64, 8, 2, 4, 8, (4, 1)), (64, 8, 4, 4, 8, (2, 1)), (64, 1, 2, 4, 8, (4, 8)),
])
def test_split_batch_over_nodes_keeps_the_global_batch(batch, nproc, nnodes, max_pd, gens, expected):
    per_device, accum = split_batch(batch, nproc, max_per_device=max_pd, num_generations=gens, nnodes=nnodes)
    assert (per_device, accum) == expected and nnodes * nproc * per_device * accum == batch


def test_split_batch_over_nodes_refusals():
    with pytest.raises(BatchError, match=r"NNODES\*NPROC_PER_NODE\*PER_DEVICE_BATCH_SIZE \(4\*8\*1\)=32"):
        split_batch(16, 8, nnodes=4)       # App. E.4's 16 cannot be spread over 32 processes
    with pytest.raises(BatchError, match="must be positive"):
        split_batch(16, 8, nnodes=0)


MULTI = {"NODE_RANK": "1", "MASTER_ADDR": "10.0.0.1", "MASTER_PORT": "29500"}


@pytest.mark.parametrize("nnodes", ["1", "2", "4"])
def test_recipes_keep_app_e4_batches_on_any_node_count(tmp_path, nnodes):
    """NNODES=1/2/4 with NPROC_PER_NODE=8: the global batch stays 16 (SFT) and 64 completions (GRPO);
    before, every node kept its own 16/64 and two nodes doubled them. Four nodes (32 processes)
    cannot split 16: the SFT recipe stops with exit 2 and the reason."""
    gpus = fake_gpus(tmp_path, 8)
    env = {"NNODES": nnodes, "NPROC_PER_NODE": "8", **MULTI}
    g = recipe_args("cvo_grpo", gpus, **env)
    assert int(nnodes) * 8 * int(g["per_device_train_batch_size"]) * int(g["gradient_accumulation_steps"]) == 64
    assert g["deepspeed"] == "zero2"
    out = run_recipe("mrsi_sft", gpus, **env)
    if nnodes == "4":
        assert out.returncode == 2 and "BATCH_SIZE=16 is not a multiple of NNODES*NPROC_PER_NODE" in out.stderr
        assert "32 processes" in out.stderr and "Traceback" not in out.stderr
        return
    s = recipe_args("mrsi_sft", gpus, **env)
    assert int(nnodes) * 8 * int(s["per_device_train_batch_size"]) * int(s["gradient_accumulation_steps"]) == 16
    assert f"batch=16 (= {nnodes} nodes x 8 procs" in out.stdout


def test_two_nodes_need_the_rendezvous(tmp_path):
    gpus = fake_gpus(tmp_path, 8)
    out = run_recipe("mrsi_sft", gpus, NNODES="2", NPROC_PER_NODE="8", MASTER_ADDR="10.0.0.1")
    assert out.returncode == 2 and "NNODES=2 needs NODE_RANK" in out.stderr
    out = run_recipe("cvo_grpo", gpus, NNODES="2", NPROC_PER_NODE="8", NODE_RANK="2", MASTER_ADDR="10.0.0.1")
    assert out.returncode == 2 and "NODE_RANK='2' must be an integer in 0..1" in out.stderr
    out = run_recipe("cvo_grpo", gpus, NNODES="two", NPROC_PER_NODE="8")
    assert out.returncode == 2 and "NNODES='two' is not an integer" in out.stderr


@pytest.mark.swift
def test_two_node_args_json_keep_the_global_batch(tiny_model, tmp_path):
    """ms-swift's own resolution with a world of 2 nodes x 8: 16 for SFT, one generation batch of 64."""
    env = {"NNODES": "2", "NPROC_PER_NODE": "8", **MULTI}
    a = swift_args_json("mrsi_sft", tmp_path / "sft", tiny_model, 8, **env)
    assert a["global_world_size"] == a["mcr_resolved"]["world_size"] == 16
    assert a["per_device_train_batch_size"] * a["gradient_accumulation_steps"] * 16 == 16
    g = swift_args_json("cvo_grpo", tmp_path / "grpo", tiny_model, 8, **env)
    assert g["global_world_size"] == 16 and g["mcr_resolved"]["generation_batch_size"] == 64
    assert g["per_device_train_batch_size"] * g["gradient_accumulation_steps"] * 16 == 64
