"""The recipes: the CPU demo runs the very script the GPU run uses; the GPU defaults are the paper's."""
from __future__ import annotations

import json
import os
import shlex
import subprocess

import pytest

from tests.conftest import REPO, SHARED


def recipe_args(**env):
    """The swift command a recipe would run (SWIFT=echo), as a dict of --flag -> value."""
    out = subprocess.run(["bash", str(REPO / "recipes" / "mrsi_sft.sh")], env={**os.environ, "SWIFT": "echo", **env},
                         capture_output=True, text=True, cwd=REPO)
    assert out.returncode == 0, out.stderr
    words = shlex.split(out.stdout.strip().splitlines()[-1])
    assert words[0] == "sft"
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
    assert a["custom_register_path"].endswith("mcr_swift_plugin.py")
    assert ("deepspeed" in a) == (gpus != "1")


def test_mimo_trains_five_epochs():
    assert recipe_args(TEMPLATE="mimo_vl", MODEL="XiaomiMiMo/MiMo-VL-7B-RL")["num_train_epochs"] == "5"


def test_bad_batch_is_refused():
    out = subprocess.run(["bash", str(REPO / "recipes" / "mrsi_sft.sh")],
                         env={**os.environ, "SWIFT": "echo", "NPROC_PER_NODE": "3"}, capture_output=True, text=True)
    assert out.returncode == 2 and "not a multiple" in out.stderr


@pytest.mark.swift
def test_cpu_demo_runs_the_gpu_recipe(tmp_path):
    env = {**os.environ, "RUN_DIR": str(tmp_path / "run"), "MCR_SHARED_DIR": str(SHARED), "LIMIT": "12"}
    out = subprocess.run(["bash", str(REPO / "recipes" / "cpu_demo.sh")], env=env, capture_output=True, text=True,
                         cwd=REPO, timeout=900)
    assert out.returncode == 0, out.stderr[-5000:]
    run = tmp_path / "run" / "mrsi_sft"
    ckpt = list(run.glob("v*/checkpoint-5"))
    assert len(ckpt) == 1 and (ckpt[0] / "adapter_model.safetensors").is_file()
    saved = json.loads((ckpt[0].parent / "args.json").read_text())
    assert saved["learning_rate"] == 1e-4 and saved["lr_scheduler_type"] == "cosine"
    assert saved["tuner_type"] == "lora" and saved["max_steps"] == 5
