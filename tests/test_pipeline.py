"""`mcr-swift pipeline` itself: the run configuration (overlays, the documented variables, --set), the
dry run (every command, nothing written), the run-folder lock with two real processes (issue 20, 2.1),
and a stage done only from its own evidence."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from mcr_swift.pipeline.config import ENV_VARS, resolve
from tests.conftest import REPO, SHARED

BASE = {k: v for k, v in os.environ.items() if k not in ENV_VARS and k not in ("PROFILE", "VARIANT", "SWIFT")}


def pipeline(*args, **env) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "mcr_swift.cli", "pipeline", *args], cwd=REPO, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True,
                            env={**BASE, "PYTHONPATH": str(REPO), "MCR_SHARED_DIR": str(SHARED), **env})


def test_overlays_environment_and_set():
    paper = resolve("paper", "qwen25vl_7b", "mcr", env={})
    assert (paper.model, paper.template, paper.filter.G, paper.filter.min_std, paper.synth.per_post) == \
        ("Qwen/Qwen2.5-VL-7B-Instruct", "qwen2_5_vl", 8, 0.1, 2)   # App. D.3 / E.1
    tiny = resolve("tiny", "mimovl_7b", "no_dr", env={"FILTER_G": "2", "NO_DR_STYLE": "formatted_b"},
                   sets=["grpo.max_steps=7"])
    assert tiny.model is None and tiny.template == "mimo_vl" and tiny.stage_args["mrsi_sft"] == {"num_train_epochs": 5}
    assert (tiny.filter.G, tiny.synth.styles, tiny.grpo.max_steps, tiny.sft.tuner) == (2, ["formatted_b"], 7, "full")
    assert resolve("tiny", env={"TINY_MEMORISE": "false"}).sft.max_steps == 5
    assert resolve("paper", env={"MNER_MI_ROOT": ""}).sources.mner_mi_root == ""   # ${MNER_MI_ROOT-...}: left out
    for env, message in (({"FILTER_G": "x"}, "FILTER_G: 'x' is not an integer"),
                         ({"LIMIT": "-1"}, "LIMIT must be positive, got -1"),
                         ({"PROFILE": "huge"}, "PROFILE must be paper or tiny, got 'huge'")):
        with pytest.raises(ValueError, match=message):
            resolve(env=env)
    with pytest.raises(ValueError, match="unknown setting 'filter.g'"):
        resolve(env={}, sets=["filter.g=3"])


def test_dry_run_prints_every_command_and_writes_nothing(tmp_path):
    run = tmp_path / "run"
    p = pipeline("--dry-run", RUN_DIR=str(run), NPROC_PER_NODE="8")
    out, err = p.communicate(timeout=120)
    assert p.returncode == 0, err
    stages = [l[2:].split(" ")[0] for l in out.splitlines() if l.startswith("# ")]
    assert stages == ["prepare", "synth", "split", "preflight", "mrsi-sft", "merge", "cvo-filter", "cvo-grpo",
                      "infer-eval", "report"]
    # on 8 GPUs the training stages are their configs, as the paper runs them
    assert f"  $ swift sft recipes/qwen25vl_7b/mrsi_sft.yaml --output_dir {run}/mrsi_sft" in out
    assert f"--model \"$(cat {run}/mrsi_merged/last_checkpoint.txt)\"" in out
    assert not run.exists()


def _fake_swift(folder: Path) -> str:
    exe = folder / "swift"
    exe.write_text("#!/bin/sh\nsleep 60\n")     # a training stage that takes its time
    exe.chmod(0o755)
    return str(exe)


@pytest.mark.shared
def test_a_second_run_on_a_locked_folder_stops_at_once(tmp_path):
    run = tmp_path / "run"
    env = {"RUN_DIR": str(run), "MODEL": str(tmp_path / "model"), "LIMIT": "2", "STANDIN": "1",
           "SOURCES": "gmner", "SYNTH_STYLES": "formatted_a", "SWIFT": _fake_swift(tmp_path),
           "PREFLIGHT": "false", "SYNTH_MAX_COMPLETION_LENGTH": "0"}   # no tokenizer in the fake model folder
    first = pipeline(**env)
    try:
        deadline = time.time() + 120
        while not (run / "data" / "mrsi" / "d2.jsonl").exists() and time.time() < deadline:
            time.sleep(0.5)          # the first run is in its mrsi-sft stage (the fake swift sleeps)
        assert first.poll() is None
        t = time.time()
        second = pipeline(**env)
        _, err = second.communicate(timeout=60)
        assert second.returncode == 2 and time.time() - t < 30
        assert f"this run folder is in use by pid {first.pid} (started " in err, err
        assert (run / "data" / "sources.tsv").read_text().count("\n") == 3     # untouched by the second run
    finally:
        os.killpg(first.pid, signal.SIGKILL)                  # a killed run leaves its lock file behind
        first.wait(timeout=30)
    assert f"pid {first.pid}" in (run / ".lock").read_text()
    third = pipeline("--stop-after", "split", **env)
    out, err = third.communicate(timeout=120)
    assert third.returncode == 0, err
    assert f"took over the stale lock of pid {first.pid}" in out
    assert "prepare: skipped" in out and "split: skipped" in out
    assert (run / ".lock").read_text() == ""                 # a clean end leaves no holder
    resolved = yaml.safe_load((run / "run_config.yaml").read_text())
    assert resolved["sources"]["use"] == ["gmner"] and resolved["resolved"]["stages"][3] == "mrsi-sft"


@pytest.mark.shared
def test_a_stage_is_done_only_from_its_own_evidence(tmp_path):
    """The fake swift exits 0 without a checkpoint: the stage fails (exit 1), nothing is recorded as done."""
    exe = tmp_path / "swift"
    exe.write_text("#!/bin/sh\nexit 0\n")
    exe.chmod(0o755)
    run = tmp_path / "run"
    p = pipeline(RUN_DIR=str(run), MODEL=str(tmp_path / "model"), LIMIT="2", STANDIN="1", SOURCES="gmner",
                 SYNTH_STYLES="formatted_a", SWIFT=str(exe), PREFLIGHT="false", SYNTH_MAX_COMPLETION_LENGTH="0")
    out, err = p.communicate(timeout=300)
    assert p.returncode == 1, err
    assert "stage mrsi-sft failed: exited 0 but left no checkpoint" in err and "mrsi-sft: FAILED, not done" in out
    assert [l.split("\t")[0] for l in (run / "times.tsv").read_text().splitlines()] == ["prepare", "synth", "split"]
    exe.write_text("#!/bin/sh\nexit 3\n")
    p = pipeline(RUN_DIR=str(run), MODEL=str(tmp_path / "model"), LIMIT="2", STANDIN="1", SOURCES="gmner",
                 SYNTH_STYLES="formatted_a", SWIFT=str(exe), PREFLIGHT="false", SYNTH_MAX_COMPLETION_LENGTH="0")
    out, err = p.communicate(timeout=300)
    assert p.returncode == 1 and "stage mrsi-sft failed: command exited 3" in err
    assert "mrsi-sft: FAILED, not done" in out
    assert not (run / "mrsi_sft" / "last_checkpoint.txt").exists()
