"""recipes/paper/: one literal command per stage for 8 GPUs, pinned to the wrapped recipes.

Both run with the same inputs (8 GPUs listed by a fake ``nvidia-smi``, the same checkpoint files) and a
recording ``swift``: every call is logged as NPROC_PER_NODE, MAX_PIXELS and its argv. The wrapped recipe's
command and the paper script's must give the same flag -> value map, so the two cannot drift."""
from __future__ import annotations

import os
import re
import shlex
import subprocess
from pathlib import Path

import pytest

from tests.conftest import REPO
from tests.test_recipes import VENV_BIN, fake_gpus

PAPER = REPO / "recipes" / "paper"
RECORD = ('#!/usr/bin/env bash\nline=$(printf "CALL %q %q" "${NPROC_PER_NODE:-}" "${MAX_PIXELS:-}"; '
          'printf " %q" "$(basename "$0" | sed s/-echo//)" "$@")\necho "$line" >> "$RECORD_LOG"\n')   # one write: calls may overlap


@pytest.fixture
def bench(tmp_path):
    """A working folder with D1, two checkpoint pointers, and a bin/ with 8 fake GPUs, a recording
    ``swift`` (and ``swift-echo``, which the wrapped recipes do not take for the real one), a recording
    ``mcr-swift`` (except ``mcr-swift plugin``, which answers for real) and a ``curl`` that succeeds once ``swift deploy`` was called; calls are logged in calls.log."""
    work = tmp_path / "work"
    (work / "mcr_data" / "mrsi").mkdir(parents=True)
    (work / "mcr_data" / "mrsi" / "d1.jsonl").write_text("")
    for stage in ("mrsi_sft", "cvo_grpo"):
        (work / "runs" / stage).mkdir(parents=True)
        (work / "runs" / stage / "last_checkpoint.txt").write_text(f"runs/{stage}/v0-1/checkpoint-9\n")
    bin_dir = Path(fake_gpus(tmp_path / "bin", 8))
    for name, text in {"swift": RECORD, "swift-echo": RECORD, "curl": '#!/bin/sh\ngrep -q " swift deploy " "$RECORD_LOG"\n',   # the server is up once deployed
                       "mcr-swift": ('#!/usr/bin/env bash\nif [ "$1" = plugin ]; then exec '
                                     f'{shlex.quote(str(Path(VENV_BIN) / "mcr-swift"))} "$@"; fi\n'
                                     + RECORD.split("\n", 1)[1])}.items():
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)
    env = {k: v for k, v in os.environ.items() if k not in ("NPROC_PER_NODE", "NNODES", "MAX_PIXELS", "SWIFT")}
    env["PATH"] = os.pathsep.join([str(bin_dir), VENV_BIN, os.environ["PATH"]])
    env.setdefault("PYTHONPATH", str(REPO))
    env["RECORD_LOG"] = str(tmp_path / "calls.log")
    return work, bin_dir, env


def calls(script: Path, bench, **env) -> list:
    """Run ``script`` in the bench; the recorded calls as (tool, env, flags) with flags as --flag -> value."""
    work, _, base = bench
    out = subprocess.run(["bash", str(script)], cwd=work, env={**base, **env}, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    log = Path(base["RECORD_LOG"])
    lines = log.read_text().splitlines() if log.exists() else []
    log.unlink(missing_ok=True)
    found = []
    for line in lines:
        if not line.startswith("CALL "):
            continue
        _, nproc, pixels, tool, *words = shlex.split(line)
        flags, key, pos = {}, None, []
        for w in words:
            if w.startswith("-") and not re.fullmatch(r"-?[0-9.e-]+", w):
                key = w.lstrip("-")
                flags[key] = ""
            elif key is None:
                pos.append(w)
            else:
                flags[key] = w if not flags[key] else flags[key] + " " + w
        found.append({"tool": tool, "cmd": " ".join(pos), "env": (nproc, pixels), "flags": flags})
    return found, out.stdout


def wrapped(recipe: str, bench, **env):
    return calls(REPO / "recipes" / f"{recipe}.sh", bench, SWIFT=str(bench[1] / "swift-echo"), **env)


def one(found, cmd):
    hits = [c for c in found if c["tool"] == "swift" and c["cmd"].startswith(cmd)]
    assert len(hits) == 1, found
    return hits[0]


def test_mrsi_sft_is_the_wrapped_recipe(bench):
    paper, _ = calls(PAPER / "1_mrsi_sft.sh", bench)
    wrap, _ = wrapped("mrsi_sft", bench)
    p, w = one(paper, "sft"), one(wrap, "sft")
    assert p == w
    # the values the paper gives (App. E.4), read from the literal command
    f = p["flags"]
    assert p["env"] == ("8", "1003520") and f["external_plugins"].endswith("mcr_swift_plugin.py")
    assert (f["learning_rate"], f["lr_scheduler_type"], f["num_train_epochs"], f["dataset"]) == \
        ("1e-4", "cosine", "2", "mcr-mrsi:d1")
    assert 8 * int(f["per_device_train_batch_size"]) * int(f["gradient_accumulation_steps"]) == 16
    assert "custom_register_path" not in f
    # the script writes last_checkpoint.txt as the wrapped recipe does with the real swift
    assert [c["cmd"] for c in paper if c["tool"] == "mcr-swift"] == ["recipe-args last-checkpoint runs/mrsi_sft"]


def test_mimo_comment_is_the_wrapped_recipe(bench):
    """The header's MiMo-VL line (App. E.4: 5 epochs) is what the wrapped recipe runs for MiMo-VL."""
    paper, _ = calls(PAPER / "1_mrsi_sft.sh", bench)
    wrap, _ = wrapped("mrsi_sft", bench, TEMPLATE="mimo_vl", MODEL="XiaomiMiMo/MiMo-VL-7B-RL")
    line = next(l for l in (PAPER / "1_mrsi_sft.sh").read_text().splitlines() if "MiMo-VL" in l and "--model" in l)
    changes = dict(re.findall(r"--(\w+) (\S+)", line))
    assert changes == {"model": "XiaomiMiMo/MiMo-VL-7B-RL", "template": "mimo_vl", "num_train_epochs": "5"}
    assert {**one(paper, "sft")["flags"], **changes} == one(wrap, "sft")["flags"]


def test_merge_is_the_wrapped_recipe(bench):
    paper, _ = calls(PAPER / "2_merge_lora.sh", bench)
    wrap, _ = wrapped("merge_lora", bench, ADAPTERS="runs/mrsi_sft/v0-1/checkpoint-9")
    assert one(paper, "export")["flags"] == one(wrap, "export")["flags"]
    assert one(paper, "export")["flags"]["adapters"] == "runs/mrsi_sft/v0-1/checkpoint-9"


def test_cvo_grpo_is_the_wrapped_recipe(bench):
    paper, _ = calls(PAPER / "4_cvo_grpo.sh", bench)
    wrap, _ = wrapped("cvo_grpo", bench, MODEL="runs/mrsi_merged/merged")
    p, w = one(paper, "rlhf"), one(wrap, "rlhf")
    assert p == w
    f = p["flags"]   # App. E.4, read from the literal command
    expected = {"rlhf_type": "grpo", "learning_rate": "5e-6", "num_train_epochs": "2", "warmup_ratio": "0.05",
                "num_generations": "8", "temperature": "1.5", "top_k": "200", "top_p": "0.95", "beta": "0.005",
                "epsilon": "0.15", "epsilon_high": "0.25", "reward_funcs": "gmner_orm", "use_vllm": "true",
                "vllm_mode": "colocate", "dataset": "mcr-mrsi:d2_filtered"}
    assert {k: f[k] for k in expected} == expected and p["env"] == ("8", "1003520")
    assert 8 * int(f["per_device_train_batch_size"]) * int(f["gradient_accumulation_steps"]) == 64


def test_infer_eval_is_the_wrapped_recipe(bench):
    paper, _ = calls(PAPER / "5_infer_eval.sh", bench)
    wrap, log = wrapped("infer_eval", bench, MODEL="runs/mrsi_merged/merged",
                        ADAPTERS="runs/cvo_grpo/v0-1/checkpoint-9")
    assert one(paper, "export")["flags"] == one(wrap, "export")["flags"]
    assert one(paper, "infer") == one(wrap, "infer") and one(paper, "infer")["env"] == ("8", "1003520")
    ev = [c for c in paper if c["tool"] == "mcr-swift"]
    assert len(ev) == 1 and ev[0]["cmd"] == "evaluate runs/eval/infer.jsonl"
    gold = re.search(r"gold=(\S+) output=(\S+)", log)
    assert ev[0]["flags"] == {"gold": gold.group(1), "family": "qwen2_5_vl",
                              "json-out": f"{gold.group(2)}/metrics.json"}


def test_filter_uses_the_pipelines_app_d3_values(bench):
    """3_cvo_filter.sh's sampling and thresholds are full_pipeline.sh's paper-profile defaults."""
    paper, _ = calls(PAPER / "3_cvo_filter.sh", bench)
    text = (REPO / "recipes" / "full_pipeline.sh").read_text()
    default = dict(re.findall(r"\b(FILTER_\w+|SEED)=\$\{\1:-([^}]+)\}", text.split("# App. D.3 filter", 1)[1]))
    default["SEED"] = re.search(r"^SEED=\$\{SEED:-(\w+)\}", text, re.M).group(1)
    ev = [c for c in paper if c["tool"] == "mcr-swift"]
    assert len(ev) == 1 and ev[0]["cmd"] == "cvo-filter" and ev[0]["env"][1] == "1003520"
    f = ev[0]["flags"]
    assert {"G": default["FILTER_G"], "temperature": default["FILTER_TEMPERATURE"],
            "top-k": default["FILTER_TOP_K"], "top-p": default["FILTER_TOP_P"],
            "max-tokens": default["FILTER_MAX_TOKENS"], "seed": default["SEED"],
            "min-std": default["FILTER_MIN_STD"], "min-max": default["FILTER_MIN_MAX"],
            "min-median": default["FILTER_MIN_MEDIAN"], "max-median": default["FILTER_MAX_MEDIAN"]} == \
        {k: f[k] for k in ("G", "temperature", "top-k", "top-p", "max-tokens", "seed", "min-std", "min-max",
                           "min-median", "max-median")}
    # App. D.3 / E.4 values themselves
    assert (f["G"], f["min-std"], f["min-max"], f["min-median"], f["max-median"]) == ("8", "0.1", "0.8", "0.08", "0.6")
    d = one(paper, "deploy")["flags"]
    assert (d["model"], d["infer_backend"], d["served_model_name"], d["vllm_data_parallel_size"]) == \
        ("runs/mrsi_merged/merged", "vllm", "policy", "8") and f["model"] == "policy"


def test_every_recipe_uses_external_plugins():
    for sh in sorted((REPO / "recipes").rglob("*.sh")):
        text = sh.read_text()
        assert "--custom_register_path" not in text, sh   # ms-swift 4.6 keeps it only for compatibility
        if re.search(r"(swift|\$SWIFT) (sft|rlhf|infer)\b", text):
            assert "--external_plugins" in text, sh
