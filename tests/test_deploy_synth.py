"""Synthesis and the CVO filter against a real OpenAI-compatible server: ``swift deploy`` of the tiny
model on localhost. The server is killed in the middle of a synthesis run and started again, and a
filter run is interrupted with Ctrl-C: the resumed runs end with exactly the records of uninterrupted
ones, none duplicated, none lost, nothing paid twice."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from mcr_swift.jsonl import iter_jsonl
from tests._deploy import SwiftDeploy
from tests.conftest import REPO, TINY_MAX_PIXELS

pytestmark = pytest.mark.swift

STYLES = "formatted_a,llm_qa,llm_conclusions,mllm_distill"


@pytest.fixture(scope="module")
def server(tiny_model, tmp_path_factory):
    with SwiftDeploy(tiny_model, tmp_path_factory.mktemp("deploy"), max_new_tokens=24) as s:
        yield s


def _cmd(*args):
    return [sys.executable, "-m", "mcr_swift.cli", *args, "--no-progress"]


def _synth(inp, out, base_url, *extra):
    return _cmd("synth", "--input", str(inp), "--out", str(out), "--styles", STYLES, "--base-url", base_url,
                "--temperature", "0", "--max-tokens", "24", "--concurrency", "1", "--per-post", "0", "--chain-retries", "0",
                *extra)


def _lines(path):
    return path.read_text().splitlines() if path.exists() else []


def _wait_lines(path, n, proc, timeout=300):
    t = time.time()
    while len(_lines(path)) < n:
        assert proc.poll() is None, "the run ended before it could be interrupted"
        assert time.time() - t < timeout
        time.sleep(0.05)


def test_synthesis_survives_a_server_crash(server, prepared, tmp_path):
    inp = tmp_path / "train8.jsonl"
    inp.write_text("".join(l + "\n" for l in _lines(prepared / "twitter_gmner" / "train.jsonl")[:8]))
    env = {**os.environ}
    t = time.time()
    ref = subprocess.run(_synth(inp, tmp_path / "ref" / "dr.jsonl", server.base_url), cwd=REPO, env=env,
                         capture_output=True, text=True, timeout=600)
    ref_wall = time.time() - t
    assert ref.returncode == 0, ref.stderr[-3000:]
    s = json.loads((tmp_path / "ref" / "dr.jsonl.summary.json").read_text())
    for st in ("llm_qa", "llm_conclusions", "mllm_distill"):
        d = s["per_style"][st]
        assert d["requests"]["done"] == 8 and d["requests"]["failed"] == 0
        # a random model writes no valid chain: every answer is counted as rejected, none lost
        assert d.get("produced", 0) + d["rejected"] == 8 and d["prompt_tokens"] > 0
    # the MLLM prompt carries the image: its requests count more prompt tokens than the text-only style
    # of similar length (the instructions differ by under 64 tokens, the image is 64 tokens here)
    assert s["per_style"]["mllm_distill"]["prompt_tokens"] > s["per_style"]["llm_qa"]["prompt_tokens"]

    run = tmp_path / "run" / "dr.jsonl"
    cache = run.with_name("dr.jsonl.cache.jsonl")
    proc = subprocess.Popen(_synth(inp, run, server.base_url, "--retries", "0"), cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _wait_lines(cache, 5, proc)
    server.kill()  # the server dies in the middle of the run
    out, err = proc.communicate(timeout=300)
    done_before = len(_lines(cache))
    assert proc.returncode == 3, err[-3000:]  # incomplete: told to re-run
    assert 5 <= done_before < 24 and not run.exists()
    assert "re-run the same command to resume" in err
    t = time.time()
    restart = server.start()
    again = subprocess.run(_synth(inp, run, server.base_url), cwd=REPO, env=env, capture_output=True, text=True,
                           timeout=600)
    resume_wall = time.time() - t
    assert again.returncode == 0, again.stderr[-3000:]
    s2 = json.loads(run.with_name("dr.jsonl.summary.json").read_text())
    sent = sum(s2["per_style"][st]["requests"]["done"] for st in ("llm_qa", "llm_conclusions", "mllm_distill"))
    cached = sum(s2["per_style"][st]["requests"]["cached"] for st in ("llm_qa", "llm_conclusions", "mllm_distill"))
    assert (cached, sent) == (done_before, 24 - done_before)  # nothing paid twice
    keys = [json.loads(l)["key"] for l in _lines(cache)]
    assert len(keys) == len(set(keys)) == 24
    assert run.read_text() == (tmp_path / "ref" / "dr.jsonl").read_text()
    assert _lines(run.with_name("dr.rejected.jsonl")) == _lines(tmp_path / "ref" / "dr.rejected.jsonl")
    print(f"\n[synth on swift deploy] 8 posts x 3 API styles (24 requests): {ref_wall:.1f} s uninterrupted; "
          f"server killed after {done_before}, restarted in {restart:.1f} s, resumed run {resume_wall:.1f} s "
          f"(incl. restart)")


def test_filter_on_swift_deploy_and_ctrl_c_resume(server, prepared, tmp_path):
    if server.proc is None:
        server.start()
    rows = [r for _, r, _ in iter_jsonl(prepared / "twitter_gmner" / "train.jsonl")][:6]
    d2 = tmp_path / "d2.jsonl"
    d2.write_text("".join(json.dumps({**r, "mcr_style": "formatted_a"}) + "\n" for r in rows))
    base = ["cvo-filter", "--input", str(d2), "--base-url", server.base_url, "-G", "4", "--max-tokens", "24",
            "--max-pixels", str(TINY_MAX_PIXELS), "--concurrency", "1"]
    # the paper's sampling (temperature 1.5, top-k 200, top-p 0.95) on the real server
    t = time.time()
    sampled = subprocess.run(_cmd(*base, "--out", str(tmp_path / "s" / "f.jsonl"), "--limit", "2"), cwd=REPO,
                             capture_output=True, text=True, timeout=600)
    wall = time.time() - t
    assert sampled.returncode == 0, sampled.stderr[-3000:]
    stats = [json.loads(l) for l in _lines(tmp_path / "s" / "f.jsonl.stats.jsonl")]
    assert len(stats) == 2 and all(len(r["rewards"]) == 4 for r in stats)
    # a random policy earns nothing: every group has std 0 and max 0, so App. D.3 drops it
    assert all(r["failed_tests"] == ["std", "max", "median_low"] for r in stats)
    summary = json.loads((tmp_path / "s" / "f.jsonl.summary.json").read_text())
    assert summary["kept"] == 0 and summary["sampling"]["temperature"] == 1.5

    greedy = [*base, "--temperature", "0"]  # deterministic, so two runs can be compared record by record
    ref = subprocess.run(_cmd(*greedy, "--out", str(tmp_path / "ref" / "f.jsonl")), cwd=REPO, capture_output=True,
                         text=True, timeout=600)
    assert ref.returncode == 0, ref.stderr[-3000:]
    out = tmp_path / "run" / "f.jsonl"
    cache = out.with_name("f.jsonl.cache.jsonl")
    proc = subprocess.Popen(_cmd(*greedy, "--out", str(out)), cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    _wait_lines(cache, 2, proc)
    proc.send_signal(signal.SIGINT)  # Ctrl-C
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 130, err[-3000:]
    done_before = len(_lines(cache))
    assert 2 <= done_before < 6 and not out.exists()
    again = subprocess.run(_cmd(*greedy, "--out", str(out)), cwd=REPO, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    s2 = json.loads(out.with_name("f.jsonl.summary.json").read_text())
    assert (s2["requests"]["cached"], s2["requests"]["done"]) == (done_before, 6 - done_before)
    keys = [json.loads(l)["key"] for l in _lines(cache)]
    assert len(keys) == len(set(keys)) == 6
    assert _lines(out.with_name("f.jsonl.stats.jsonl")) == _lines(tmp_path / "ref" / "f.jsonl.stats.jsonl")
    assert _lines(out) == _lines(tmp_path / "ref" / "f.jsonl")
    print(f"\n[cvo-filter on swift deploy] 2 queries x G=4 at temperature 1.5: {wall:.1f} s")
