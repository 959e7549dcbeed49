"""Issue 20 section 1: a one-process stage runs without torchrun. ms-swift starts torchrun whenever
NPROC_PER_NODE or NNODES is set, and the torchrun worker's process group (gloo on a CPU), which nothing
destroys, could abort the finished stage at interpreter exit (SIGABRT; docs/pipeline.md "Exit of a
stage"). The recipes unset both for one process in all without DeepSpeed (or vLLM, for GRPO) and keep
torchrun otherwise. Checked on the environment the recipe hands to ``swift`` (a stand-in that prints it)."""
from __future__ import annotations

import pytest

from tests.test_recipes import fake_gpus, run_recipe


def launch_env(tmp_path, recipe, gpus, **env):
    exe = tmp_path / "fake_launch"
    exe.write_text('#!/bin/sh\necho "launch-env NPROC_PER_NODE=${NPROC_PER_NODE-unset} NNODES=${NNODES-unset}"\n')
    exe.chmod(0o755)
    out = run_recipe(recipe, fake_gpus(tmp_path / "bin", gpus), SWIFT=str(exe), **env)
    assert out.returncode == 0, out.stderr[-2000:]
    line = [w for w in out.stdout.splitlines() if w.startswith("launch-env ")][-1]
    shown = [w for w in out.stdout.split() if w.startswith("launch=")]
    return line.split(" ", 1)[1], shown[-1] if shown else None


@pytest.mark.parametrize("recipe,gpus,env,expected", [
    # the tiny profile: one CPU process -> plain python, no process group
    ("cvo_grpo", 0, {"NPROC_PER_NODE": "1", "BATCH_SIZE": "8", "NUM_GENERATIONS": "4"}, "NPROC_PER_NODE=unset NNODES=unset"),
    ("mrsi_sft", 0, {"NPROC_PER_NODE": "1", "BATCH_SIZE": "2"}, "NPROC_PER_NODE=unset NNODES=unset"),
    ("mrsi_sft", 0, {"NPROC_PER_NODE": "1", "NNODES": "1", "BATCH_SIZE": "2"}, "NPROC_PER_NODE=unset NNODES=unset"),
    # several processes, DeepSpeed or vLLM colocate: torchrun as before
    ("cvo_grpo", 0, {"NPROC_PER_NODE": "2", "BATCH_SIZE": "8", "NUM_GENERATIONS": "4"}, "NPROC_PER_NODE=2 NNODES=unset"),
    ("cvo_grpo", 1, {"BATCH_SIZE": "8", "NUM_GENERATIONS": "4"}, "NPROC_PER_NODE=1 NNODES=unset"),
    ("mrsi_sft", 0, {"NPROC_PER_NODE": "1", "BATCH_SIZE": "2", "DEEPSPEED": "zero2"}, "NPROC_PER_NODE=1 NNODES=unset"),
    ("mrsi_sft", 8, {}, "NPROC_PER_NODE=8 NNODES=unset"),
])
def test_one_process_runs_without_torchrun(tmp_path, recipe, gpus, env, expected):
    seen, shown = launch_env(tmp_path, recipe, gpus, **env)
    assert seen == expected
    assert shown == ("launch=python" if "unset NNODES" in expected and "NPROC_PER_NODE=unset" in expected
                     else "launch=torchrun")
