"""tools/gpu_check.sh (issue 16): no GPU here, so CI checks its syntax and the commands its dry run
resolves through the real recipes (their --dry-run; a stage config read as ms-swift reads it): vLLM colocate with sleep for GRPO, vLLM inference,
the filter's `swift deploy` with vLLM, DeepSpeed ZeRO-2 SFT, each small enough for the tiny model."""
from __future__ import annotations

import os
import shlex
import subprocess
import sys
from pathlib import Path

from tests.conftest import REPO

SCRIPT = REPO / "tools" / "gpu_check.sh"
PATHS = ["sft-deepspeed-zero2", "grpo-vllm-colocate", "infer-eval-vllm", "filter-deploy-vllm"]


def _env(**extra):
    path = os.pathsep.join([str(Path(sys.executable).parent), os.environ["PATH"]])
    return {**os.environ, "PATH": path, "PYTHON": sys.executable, **extra}


def test_syntax():
    assert subprocess.run(["bash", "-n", str(SCRIPT)]).returncode == 0


def _flags(line: str) -> dict:
    words = shlex.split(line)
    if len(words) > 1 and words[1].endswith(".yaml"):   # swift <cmd> <stage config> <flags>
        import yaml
        cfg = yaml.safe_load((REPO / words[1]).read_text())
        cfg.pop("ENV", None)
        word = lambda v: str(v).lower() if isinstance(v, bool) else str(v)  # noqa: E731
        expanded = [words[0]]
        for k, v in cfg.items():
            expanded += [f"--{k}", *([word(x) for x in v] if isinstance(v, list) else [word(v)])]
        words = expanded + words[2:]
    out, key = {}, None
    for w in words:
        if w.startswith("--"):
            key = w[2:]
            out[key] = ""
        elif key is not None:
            out[key] = w if not out[key] else out[key] + " " + w
    return out


def _command(stdout: str, prefix: str) -> dict:
    """The one printed command starting with ``prefix`` (a recipe's ``$ [VAR=v ...] swift <prefix>...``)."""
    lines = [l.split("$ ", 1)[1] if l.startswith("  $ ") else l for l in stdout.splitlines()]
    lines = [" ".join(w for w in l.split(" ") if not (w.split("=")[0].isupper() and "=" in w)) if l.startswith(
        tuple(f"{v}=" for v in ("NPROC_PER_NODE", "MAX_PIXELS", "NNODES"))) else l for l in lines]
    hits = [l[len("swift "):] if l.startswith("swift " + prefix) else l for l in lines
            if l.startswith(prefix) or l.startswith("swift " + prefix)]
    assert len(hits) == 1, (prefix, stdout[-3000:])
    return _flags(hits[0])


def test_dry_run_resolves_every_gpu_path(tmp_path):
    work = tmp_path / "work"
    p = subprocess.run(["bash", str(SCRIPT), "--dry-run", str(work)], cwd=tmp_path, env=_env(), capture_output=True,
                       text=True, timeout=300)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    out = p.stdout
    assert [l.split(":")[0] for l in out.splitlines() if l.startswith("DRY ")] == [f"DRY {n}" for n in PATHS]
    tiny = str(work.resolve() / "tiny-qwen2_5_vl")
    sft = _command(out, "sft ")
    assert sft["deepspeed"] == "zero2" and sft["model"] == tiny and sft["max_steps"] == "2"
    grpo = _command(out, "rlhf ")
    assert (grpo["rlhf_type"], grpo["use_vllm"], grpo["vllm_mode"], grpo["sleep_level"]) == \
        ("grpo", "true", "colocate", "1")
    assert (grpo["vllm_gpu_memory_utilization"], grpo["vllm_max_model_len"]) == ("0.2", "2048")
    assert grpo["num_generations"] == "4" and grpo["deepspeed"] == "" and grpo["model"] == tiny
    infer = _command(out, "infer ")
    assert (infer["infer_backend"], infer["vllm_max_model_len"], infer["vllm_gpu_memory_utilization"]) == \
        ("vllm", "2048", "0.2")
    assert infer["val_dataset"] == "mcr-gmner:test" and infer["model"] == tiny
    deploy = _command(out, "swift deploy ")
    assert (deploy["infer_backend"], deploy["vllm_max_model_len"], deploy["served_model_name"]) == \
        ("vllm", "2048", "policy")
    filt = _command(out, "python -m mcr_swift.cli cvo-filter ")
    assert filt["input"].endswith("data/twitter_gmner/train.jsonl") and filt["out"].startswith(str(work.resolve()))
    assert "mcr-swift tiny-model " + tiny in out
    # every output is inside the work folder; the dry run builds and installs nothing
    for flags in (sft, grpo):
        assert flags["output_dir"].startswith(str(work.resolve()))
    assert infer["result_path"].startswith(str(work.resolve()))
    assert not (work / "tiny-qwen2_5_vl").exists() and not (work / "data").exists()
    assert "MAX_PIXELS=50176 swift sft " in out        # the environment wins over the config's ENV
    # bf16 on the GPU for every path, eager vLLM engines (no CUDA-graph capture for a 10 M model)
    for flags in (sft, grpo, infer, deploy):
        assert flags["torch_dtype"] == "bfloat16"
    for flags in (grpo, infer, deploy):
        assert flags["vllm_enforce_eager"] == "true"


def test_dry_run_from_the_environment_and_bad_options(tmp_path):
    p = subprocess.run(["bash", str(SCRIPT), str(tmp_path / "w")], env=_env(DRY_RUN="1"), capture_output=True,
                       text=True, timeout=300)
    assert p.returncode == 0 and "--infer_backend vllm" in p.stdout and "DRY filter-deploy-vllm" in p.stdout
    p = subprocess.run(["bash", str(SCRIPT), "--gpu"], env=_env(), capture_output=True, text=True)
    assert p.returncode == 2 and "unknown option --gpu" in p.stderr
