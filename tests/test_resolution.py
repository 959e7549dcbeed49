"""One resolution everywhere (issue 14, section 4): every stage that sees an image -- MRSI SFT, the
filter's ``swift deploy`` and its reward, GRPO (whose reward reads the same environment), inference
and evaluation -- resolves the same resize settings. ``mcr-swift pipeline`` (recipes/qwen25vl_7b_full.sh) runs for real with
``swift`` replaced by a recording stub (tests/_swift_stub.py): the stub logs the environment each
``swift`` call starts with; the filter and the evaluation record the space they resolved."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from mcr_swift.core.coords import CoordinateSpace
from tests.conftest import REPO, SHARED

#: the full pipeline recipe (paper profile, swift stubbed) on the shared data: an integration test
pytestmark = [pytest.mark.swift, pytest.mark.shared]

#: the stages that see an image and the swift sub-command each one runs
IMAGE_STAGES = {"sft", "deploy", "rlhf", "infer"}


def _stub(folder: Path) -> str:
    folder.mkdir(parents=True, exist_ok=True)
    exe = folder / "swift"
    exe.write_text(f"#!/bin/sh\nexec '{sys.executable}' '{REPO / 'tests' / '_swift_stub.py'}' \"$@\"\n")
    exe.chmod(0o755)
    return str(exe)


def _space(d) -> tuple:
    return (d["family"], d["min_pixels"], d["max_pixels"], d["template_max_pixels"])


def _pipeline(tmp_path: Path, **env) -> tuple:
    run = tmp_path / "run"
    log = tmp_path / "swift_calls.jsonl"
    base = {k: v for k, v in os.environ.items()
            if k not in ("MAX_PIXELS", "MIN_PIXELS", "IMAGE_MAX_TOKEN_NUM", "IMAGE_MIN_TOKEN_NUM",
                         "MCR_TEMPLATE_MAX_PIXELS", "MCR_MODEL_FAMILY", "NPROC_PER_NODE", "NNODES")}
    full = {**base, "PROFILE": "paper", "MODEL": str(tmp_path / "base-model"), "RUN_DIR": str(run),
            "MCR_SHARED_DIR": str(SHARED), "LIMIT": "4", "STANDIN": "1", "SWIFT": _stub(tmp_path / "bin"),
            "SYNTH_STYLES": "formatted_a,formatted_b", "SWIFT_STUB_LOG": str(log), "PYTHONPATH": str(REPO),
            # the stub's server answers [] to every query, so the paper's App. D.3 thresholds would keep
            # nothing and leave GRPO without data; this test is about resolution, not the filter
            "FILTER_MIN_STD": "0", "FILTER_MIN_MAX": "0", "FILTER_MIN_MEDIAN": "0", "FILTER_MAX_MEDIAN": "1",
            # the fake base model has no tokenizer: no chain-length check, no preflight (tests/test_preflight.py)
            "SYNTH_MAX_COMPLETION_LENGTH": "0", "PREFLIGHT": "false",
            "PATH": os.pathsep.join([str(Path(sys.executable).parent), os.environ["PATH"]]), **env}
    p = subprocess.run(["bash", "recipes/qwen25vl_7b_full.sh"], cwd=REPO, env=full, capture_output=True, text=True,
                       timeout=900)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-4000:]
    calls = [json.loads(l) for l in log.read_text().splitlines()]
    return run, calls, p


def _check_one_resolution(run: Path, calls, expected: CoordinateSpace):
    seen = {c["cmd"] for c in calls}
    assert IMAGE_STAGES <= seen, seen
    want = _space(expected.__dict__)
    for c in calls:
        if c["cmd"] in IMAGE_STAGES:  # ms-swift and the reward inside it resolve this environment
            got = CoordinateSpace.from_env(env={k: v for k, v in c["env"].items() if v})
            assert _space(got.__dict__) == want, (c["cmd"], c["env"])
            assert "--max_pixels" not in c["argv"]  # no stage overrides it on its own
    summary = json.loads((run / "data/mrsi/d2_filtered.jsonl.summary.json").read_text())
    assert _space(summary["space"]) == want                          # the filter's reward
    metrics = json.loads((run / "eval/metrics.json").read_text())
    assert _space(metrics["space"]) == want                          # evaluation
    deploy_logs = list((run / "logs").glob("deploy_*.log"))
    assert deploy_logs
    for f in deploy_logs:  # mcr-swift serve writes the resize environment of the server first
        first = f.read_text().splitlines()[0]
        assert first.startswith("[mcr_swift.pipeline.serve] ")
        env = dict(kv.split("=", 1) for kv in first.split()[1:])
        assert _space(CoordinateSpace.from_env(env=env).__dict__) == want


def test_paper_profile_uses_one_resolution_in_every_stage(tmp_path):
    """PROFILE=paper with no MAX_PIXELS set: every image stage gets 1003520 (1280 tokens of 28 x 28);
    before, the filter's server and its reward ran at the processor's default resolution."""
    run, calls, p = _pipeline(tmp_path)
    _check_one_resolution(run, calls, CoordinateSpace("qwen2_5_vl", None, 1003520, None))
    assert "resolution MCR_MODEL_FAMILY=qwen2_5_vl MAX_PIXELS=1003520" in p.stdout
    assert [c["cmd"] for c in calls].count("deploy") == 1             # the filter's server


def test_every_resize_setting_reaches_every_stage(tmp_path):
    """A user's MIN_PIXELS, token limit and template limit travel too; the token count wins over
    MAX_PIXELS exactly as ms-swift resolves it (also in evaluation, which takes no --max-pixels)."""
    env = {"MAX_PIXELS": "401408", "MIN_PIXELS": "12544", "IMAGE_MAX_TOKEN_NUM": "256",
           "MCR_TEMPLATE_MAX_PIXELS": "1000000"}
    run, calls, _ = _pipeline(tmp_path, **env)
    expected = CoordinateSpace("qwen2_5_vl", 12544, 256 * 28 * 28, 1000000)
    assert CoordinateSpace.from_env(env={**env, "MCR_MODEL_FAMILY": "qwen2_5_vl"}) == expected
    _check_one_resolution(run, calls, expected)
    for c in calls:
        if c["cmd"] in IMAGE_STAGES:
            assert {k: c["env"].get(k) for k in env} == env
