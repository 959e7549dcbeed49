"""The stage configs and the stage recipes: `swift <cmd> recipes/qwen25vl_7b/<stage>.yaml` is the paper's
8-GPU run (App. E.4, read from the file as ms-swift reads it); on other machines the stage adds only what
differs (the GPUs found, the effective batch kept, vLLM or not). Checked on the commands the stages build
(`mcr-swift stage --dry-run`) and on the arguments ms-swift itself resolves from them (args.json, built
without training by tests/_swift_args.py)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from mcr_swift.pipeline.commands import Executor, read_config, swift_exe
from mcr_swift.pipeline.recipe_args import BatchError, newest_checkpoint, split_batch, write_last_checkpoint
from mcr_swift.pipeline.stage import build
from tests.conftest import REPO

VENV_BIN = str(Path(sys.executable).parent)
#: variables of the stage recipes a test must not inherit
STAGE_VARS = ("NPROC_PER_NODE", "NNODES", "MAX_PIXELS", "SWIFT", "MODEL", "TEMPLATE", "DATASET", "ADAPTERS",
              "OUTPUT_DIR", "MCR_DATA_DIR", "DEEPSPEED", "USE_VLLM", "BATCH_SIZE", "PER_DEVICE_BATCH_SIZE")


def fake_gpus(folder: Path, n: int) -> str:
    """A folder with an ``nvidia-smi`` that lists ``n`` GPUs (0: lists none), to put first on PATH."""
    folder.mkdir(parents=True, exist_ok=True)
    exe = folder / "nvidia-smi"
    exe.write_text("#!/bin/sh\n" + "".join(f"echo 'GPU {i}: NVIDIA L20 (UUID: GPU-{i})'\n" for i in range(n)))
    exe.chmod(0o755)
    return str(folder)


def run_recipe(recipe: str, gpu_dir: str = None, **env) -> subprocess.CompletedProcess:
    """``bash recipes/<recipe>.sh --dry-run`` (the commands it would run, printed)."""
    path = os.pathsep.join(([gpu_dir] if gpu_dir else []) + [VENV_BIN, os.environ["PATH"]])
    base = {k: v for k, v in os.environ.items() if k not in STAGE_VARS}
    return subprocess.run(["bash", str(REPO / "recipes" / f"{recipe}.sh"), "--dry-run"],
                          env={**base, "PATH": path, "PYTHONPATH": str(REPO), **env}, capture_output=True, text=True,
                          cwd=REPO)


def commands(stage: str, gpus: int = 0, **env):
    """The commands ``mcr-swift stage <stage>`` builds on a machine with ``gpus`` GPUs."""
    ex = Executor(dry_run=True, log=lambda m: None)
    build(stage, {**{k: v for k, v in os.environ.items() if k not in STAGE_VARS}, **env}, gpus, [], ex)
    return ex.commands


def resolved(cmd) -> dict:
    """--flag -> value of a swift command as ms-swift reads it: the stage config's keys, then the flags;
    ``env``: the config's ENV with the command's variables over it."""
    argv = cmd.argv[len(swift_exe()):]
    words, env = [argv[0]], {}
    if len(argv) > 1 and argv[1].endswith(".yaml"):
        cfg = dict(read_config(Path(argv[1])))   # a no-vLLM config is derived (and written only for real)
        env = {k: str(v) for k, v in (cfg.pop("ENV", None) or {}).items()}
        word = lambda v: str(v).lower() if isinstance(v, bool) else str(v)  # noqa: E731 (ms-swift: "True")
        for k, v in cfg.items():
            words += [f"--{k}", *([word(x) for x in v] if isinstance(v, list) else [word(v)])]
        argv = argv[1:]
    words += argv[1:]
    args, key = {"_cmd": words[0], "_env": {**env, **getattr(cmd, "child_env", cmd.env)}}, None
    for w in words[1:]:
        if w.startswith("--"):
            key = w[2:]
            args[key] = ""
        else:
            args[key] = w if not args[key] else args[key] + " " + w
    return args


def recipe_args(stage: str = "mrsi-sft", gpus: int = 0, **env):
    found = [c for c in commands(stage, gpus, **env) if c.argv[len(swift_exe()):][:1] in (["sft"], ["rlhf"],
                                                                                            ["infer"])]
    return resolved(found[-1])


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
    assert a["deepspeed"] == ("zero2" if gpus != "1" else "")   # ZeRO-2 only with several processes
    # one process: a plain python launch, NPROC_PER_NODE removed (issue 20; tests/test_stage_launch.py)
    assert a["_env"]["NPROC_PER_NODE"] == (gpus if gpus != "1" else None) and a["_env"]["MAX_PIXELS"] == "1003520"


def test_the_paper_run_is_the_config_itself():
    """On 8 GPUs the stages add nothing the file does not say: `swift sft recipes/qwen25vl_7b/mrsi_sft.yaml`."""
    for stage, sub in (("mrsi-sft", "sft"), ("cvo-grpo", "rlhf")):
        cmd = commands(stage, 8, DATASET="mcr-mrsi:d1" if sub == "sft" else "")[-1]
        assert cmd.argv[len(swift_exe()):] == [sub, str(REPO / "recipes" / "qwen25vl_7b" /
                                                        f"{stage.replace('-', '_')}.yaml")], cmd.argv
        assert cmd.env == {}                                       # NPROC_PER_NODE=8 and MAX_PIXELS: the file's


def test_mimo_trains_five_epochs():
    assert recipe_args(TEMPLATE="mimo_vl", MODEL="XiaomiMiMo/MiMo-VL-7B-RL")["num_train_epochs"] == "5"


def test_bad_batch_is_refused():
    out = run_recipe("mrsi_sft", NPROC_PER_NODE="3")
    assert out.returncode == 2 and "not a multiple" in out.stderr and "Traceback" not in out.stderr


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


# --- the stage recipes' commands (--dry-run) ---------------------------------------------------------

def test_mrsi_dataset_is_d1_and_falls_back_with_a_notice(tmp_path):
    out = run_recipe("mrsi_sft", NPROC_PER_NODE="1", MCR_DATA_DIR=str(tmp_path))
    assert out.returncode == 0, out.stderr
    assert "mrsi/d1.jsonl not found" in out.stderr and "--dataset mcr-gmner:train" in out.stdout
    (tmp_path / "mrsi").mkdir()
    (tmp_path / "mrsi" / "d1.jsonl").write_text("")
    out = run_recipe("mrsi_sft", NPROC_PER_NODE="1", MCR_DATA_DIR=str(tmp_path))
    assert "not found" not in out.stderr and "--dataset" not in out.stdout   # the config's mcr-mrsi:d1
    assert recipe_args(NPROC_PER_NODE="1", MCR_DATA_DIR=str(tmp_path))["dataset"] == "mcr-mrsi:d1"


@pytest.mark.parametrize("gpus,per_device,accum", [(8, "4", "2"), (4, "4", "4"), (16, "4", "1")])
def test_grpo_defaults_are_the_papers(tmp_path, gpus, per_device, accum):
    a = recipe_args("cvo-grpo", gpus)   # GPUs found by nvidia-smi, nothing else set
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
    # the recipe finds the GPUs with nvidia-smi
    out = run_recipe("cvo_grpo", fake_gpus(tmp_path, gpus))
    assert out.returncode == 0 and ("--gradient_accumulation_steps" in out.stdout) == (gpus != 8), out.stdout


def test_grpo_from_an_adapter_uses_it_as_kl_reference(tmp_path):
    a = recipe_args("cvo-grpo", 0, ADAPTERS="runs/mrsi_sft/v0-1/checkpoint-9")
    assert a["adapters"] == a["ref_adapters"] == "runs/mrsi_sft/v0-1/checkpoint-9"
    assert a["use_vllm"] == "false" and a["deepspeed"] == ""   # no GPU found: no vLLM, one process, no ZeRO
    assert not any(k.startswith(("vllm_", "sleep_level")) for k in a)   # ms-swift refuses vllm_mode without vLLM


def test_grpo_reward_terms_are_logged_with_weight_zero(tmp_path):
    a = recipe_args("cvo-grpo", 0, LOG_REWARD_TERMS="true")
    assert a["reward_funcs"].split() == ["gmner_orm", "gmner_count", "gmner_span", "gmner_type", "gmner_iou",
                                         "gmner_entail", "gmner_format", "gmner_f1"]
    assert [float(w) for w in a["reward_weights"].split()] == [1, 0, 0, 0, 0, 0, 0, 0]
    assert "val_dataset" not in a                      # no evaluation unless asked (paper silent)
    a = recipe_args("cvo-grpo", 0, VAL_DATASET="mcr-gmner:dev", SAVE_STEPS="50")
    assert (a["val_dataset"], a["eval_strategy"], a["eval_steps"]) == ("mcr-gmner:dev", "steps", "50")
    assert a["per_device_eval_batch_size"] == a["per_device_train_batch_size"]


def test_grpo_server_mode_and_refusals(tmp_path):
    gpus = fake_gpus(tmp_path, 4)
    a = recipe_args("cvo-grpo", 4, VLLM_MODE="server", VLLM_SERVER_HOST="10.0.0.2")
    assert (a["vllm_mode"], a["vllm_server_host"], a["vllm_server_port"]) == ("server", "10.0.0.2", "8000")
    assert a["sleep_level"] == "0"                    # nothing to sleep: the rollouts run elsewhere
    out = run_recipe("cvo_grpo", gpus, VLLM_MODE="server")
    assert out.returncode != 0 and "VLLM_SERVER_HOST" in out.stderr
    out = run_recipe("cvo_grpo", gpus, BATCH_SIZE="36", NPROC_PER_NODE="1", PER_DEVICE_BATCH_SIZE="4")
    assert out.returncode == 2 and "NUM_GENERATIONS=8" in out.stderr


def test_merge_and_infer_commands(tmp_path):
    m = resolved(commands("merge", ADAPTERS="ck/checkpoint-5", OUTPUT_DIR="runs/m")[0])
    assert (m["adapters"], m["merge_lora"], m["output_dir"]) == ("ck/checkpoint-5", "true", "runs/m/merged")
    out = run_recipe("merge_lora")
    assert out.returncode == 2 and "ADAPTERS" in out.stderr        # ADAPTERS is required
    gpu_cmds = commands("infer-eval", 8, ADAPTERS="ck/checkpoint-5", MCR_DATA_DIR="d")
    # vLLM: the adapter is merged first (one process), then vLLM serves the merged model
    export, infer, ev = resolved(gpu_cmds[0]), resolved(gpu_cmds[1]), gpu_cmds[2]
    assert (export["_cmd"], export["model"], export["adapters"]) == ("export", "Qwen/Qwen2.5-VL-7B-Instruct",
                                                                      "ck/checkpoint-5")
    assert infer["_env"]["NPROC_PER_NODE"] == "8"         # one vLLM engine per GPU found (data parallel)
    assert (infer["model"], infer["infer_backend"], infer["val_dataset"]) == ("runs/eval/policy/merged", "vllm",
                                                                              "mcr-gmner:test")
    assert "adapters" not in infer and infer["result_path"] == "runs/eval/infer.jsonl" and infer["temperature"] == "0"
    assert ev.argv[3:6] == ["evaluate", "runs/eval/infer.jsonl", "--gold"] and ev.argv[6] == "d/twitter_gmner/test.jsonl"
    cpu = recipe_args("infer-eval", 0, ADAPTERS="ck/checkpoint-5")
    assert (cpu["infer_backend"], cpu["adapters"], cpu["_env"]["NPROC_PER_NODE"]) == ("transformers",
                                                                                      "ck/checkpoint-5", None)
    out = run_recipe("infer_eval", fake_gpus(tmp_path / "g", 8), ADAPTERS="ck/checkpoint-5")
    assert out.returncode == 0 and "swift export recipes/qwen25vl_7b/merge_lora.yaml --adapters ck/checkpoint-5" in out.stdout


# --- args.json: ms-swift's own resolution of the stage configs (no training) -------------------------

def swift_args_json(stage: str, tmp_path: Path, model: Path, gpus: int, **env) -> dict:
    """The args.json ms-swift's argument classes resolve from the stage's command (its config file read by
    ms-swift's parse_yaml_args, then the overrides) on a machine with ``gpus`` GPUs."""
    from tests._swift_args import dry_run
    cmd = commands(stage, gpus, MODEL=str(model), OUTPUT_DIR=str(tmp_path / "out"), **env)[-1]
    argv = cmd.argv[len(swift_exe()):]
    world = int(cmd.child_env["NPROC_PER_NODE"]) * int(cmd.child_env.get("NNODES", 1))
    dry_run(argv[0], argv[1:], world)
    files = list((tmp_path / "out").glob("v*-*/args.json"))
    assert len(files) == 1
    assert (files[0].parent / Path(argv[1]).name).is_file()   # ms-swift copies the config it read beside it
    return json.loads(files[0].read_text())


@pytest.mark.swift
@pytest.mark.parametrize("template,epochs", [("qwen2_5_vl", 2), ("mimo_vl", 5)])
def test_sft_args_json_is_app_e4(tiny_model, tmp_path, template, epochs):
    a = swift_args_json("mrsi-sft", tmp_path, tiny_model, 8, TEMPLATE=template)
    assert a["global_world_size"] == a["mcr_resolved"]["world_size"] == 8
    assert (a["tuner_type"], a["learning_rate"], a["lr_scheduler_type"]) == ("lora", 1e-4, "cosine")
    assert (a["num_train_epochs"], a["max_steps"], a["template"]) == (epochs, -1, template)
    assert a["per_device_train_batch_size"] * a["gradient_accumulation_steps"] * a["global_world_size"] == 16
    assert a["deepspeed"] == "zero2" and a["dataset"] == ["mcr-gmner:train"]
    assert [Path(f).name for f in a["external_plugins"]] == ["mcr_swift_plugin.py"]


@pytest.mark.swift
@pytest.mark.parametrize("gpus", [8, 4])
def test_grpo_args_json_is_app_e4(tiny_model, tmp_path, gpus):
    a = swift_args_json("cvo-grpo", tmp_path, tiny_model, gpus)
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
    g = recipe_args("cvo-grpo", 8, **env)
    assert int(nnodes) * 8 * int(g["per_device_train_batch_size"]) * int(g["gradient_accumulation_steps"]) == 64
    assert g["deepspeed"] == "zero2"
    out = run_recipe("mrsi_sft", gpus, **env)
    if nnodes == "4":
        assert out.returncode == 2 and "BATCH_SIZE=16 is not a multiple of NNODES*NPROC_PER_NODE" in out.stderr
        assert "32 processes" in out.stderr and "Traceback" not in out.stderr
        return
    s = recipe_args("mrsi-sft", 8, **env)
    assert int(nnodes) * 8 * int(s["per_device_train_batch_size"]) * int(s["gradient_accumulation_steps"]) == 16
    assert out.returncode == 0 and s["_env"].get("NNODES", "1") == nnodes


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
    a = swift_args_json("mrsi-sft", tmp_path / "sft", tiny_model, 8, **env)
    assert a["global_world_size"] == a["mcr_resolved"]["world_size"] == 16
    assert a["per_device_train_batch_size"] * a["gradient_accumulation_steps"] * 16 == 16
    g = swift_args_json("cvo-grpo", tmp_path / "grpo", tiny_model, 8, **env)
    assert g["global_world_size"] == 16 and g["mcr_resolved"]["generation_batch_size"] == 64
    assert g["per_device_train_batch_size"] * g["gradient_accumulation_steps"] * 16 == 64
