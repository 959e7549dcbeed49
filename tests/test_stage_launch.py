"""Issue 20 section 1: a one-process stage runs without torchrun. ms-swift starts torchrun whenever
NPROC_PER_NODE or NNODES is set (swift/cli/main.py, also to 1, also from the config's ENV), and the
torchrun worker's process group (gloo on a CPU), which nothing destroys, could abort the finished stage
at interpreter exit (SIGABRT; docs/pipeline.md "Exit of a stage"). For one process in all without
DeepSpeed (or vLLM, for GRPO) the stage runs a derived config without the ENV's torchrun variables and
removes them from the child's environment; torchrun otherwise. Checked on the commands the stage builds
and on the environment a child really gets."""
from __future__ import annotations

import subprocess
import sys

import pytest
import yaml

from mcr_swift.pipeline.commands import Executor, read_config
from tests.test_recipes import commands

ONE = {"NPROC_PER_NODE": None, "NNODES": None}


@pytest.mark.parametrize("stage,gpus,env,launch", [
    # the tiny profile: one CPU process -> plain python, no process group
    ("cvo-grpo", 0, {"NPROC_PER_NODE": "1", "BATCH_SIZE": "8", "NUM_GENERATIONS": "4"}, "python"),
    ("mrsi-sft", 0, {"NPROC_PER_NODE": "1", "BATCH_SIZE": "2"}, "python"),
    ("mrsi-sft", 0, {"NPROC_PER_NODE": "1", "NNODES": "1", "BATCH_SIZE": "2"}, "python"),
    # several processes, DeepSpeed or vLLM colocate: torchrun as before
    ("cvo-grpo", 0, {"NPROC_PER_NODE": "2", "BATCH_SIZE": "8", "NUM_GENERATIONS": "4"}, "torchrun"),
    ("cvo-grpo", 1, {"BATCH_SIZE": "8", "NUM_GENERATIONS": "4"}, "torchrun"),
    ("mrsi-sft", 0, {"NPROC_PER_NODE": "1", "BATCH_SIZE": "2", "DEEPSPEED": "zero2"}, "torchrun"),
    ("mrsi-sft", 8, {}, "torchrun"),
])
def test_one_process_runs_without_torchrun(tmp_path, stage, gpus, env, launch):
    cmd = [c for c in commands(stage, gpus, OUTPUT_DIR=str(tmp_path / "out"), **env) if getattr(c, "launch", None)][0]
    assert cmd.launch == launch
    config = read_config(cmd.argv[cmd.argv.index(next(a for a in cmd.argv if a.endswith(".yaml")))])
    if launch == "python":
        assert {k: cmd.child_env.get(k, "kept") for k in ONE} == ONE        # removed from the child
        assert not set(ONE) & set(config.get("ENV") or {})                  # and not filled from the file
    else:
        assert cmd.child_env.get("NPROC_PER_NODE") or config["ENV"]["NPROC_PER_NODE"]


def test_the_child_really_lacks_the_launch_variables(tmp_path):
    """Executor.run removes a None variable from the child, even one the run inherited."""
    probe = [sys.executable, "-c", "import os; print(os.environ.get('NPROC_PER_NODE', 'unset'), "
             "os.environ.get('NNODES', 'unset'))"]
    from mcr_swift.pipeline.commands import Command
    c = Command(probe)
    c.child_env = dict(ONE)
    ex = Executor(env={"NPROC_PER_NODE": "1", "NNODES": "1", "PATH": "/usr/bin:/bin"}, log=lambda m: None)
    out = tmp_path / "o.txt"
    with open(out, "w") as f:
        real = subprocess.run
        try:
            subprocess.run = lambda argv, **kw: real(argv, stdout=f, **kw)
            ex.run(c)
        finally:
            subprocess.run = real
    assert out.read_text().split() == ["unset", "unset"]
    assert Command(probe, ONE).shell().startswith("env -u NPROC_PER_NODE env -u NNODES ")  # shown in --dry-run


def test_derived_one_process_config_keeps_every_other_line(tmp_path):
    from mcr_swift.pipeline.commands import one_process, stage_config
    src = stage_config("mrsi_sft")
    derived, env = one_process(src, tmp_path, {"MAX_PIXELS": "50176"})
    assert derived.name == "mrsi_sft.one_process.yaml" and env == {**ONE, "MAX_PIXELS": "50176"}
    a, b = yaml.safe_load(src.read_text()), yaml.safe_load(derived.read_text())
    assert b["ENV"] == {k: v for k, v in a["ENV"].items() if k not in ONE}
    assert {k: v for k, v in b.items() if k != "ENV"} == {k: v for k, v in a.items() if k != "ENV"}
    # a dry run writes nothing but reads the same derived config
    dry, _ = one_process(src, tmp_path / "dry", None, dry_run=True)
    assert not dry.exists() and read_config(dry) == b
