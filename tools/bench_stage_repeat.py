#!/usr/bin/env python
"""How often the tiny pipeline's CVO GRPO stage exits non-zero: runs the stage N times, counts failures.

Each repetition runs the tiny pipeline (``PROFILE=tiny bash recipes/qwen25vl_7b_full.sh``) on one run
folder with ``STOP_AFTER=cvo-grpo`` after deleting that folder's ``cvo_grpo/``: every earlier stage is
skipped (its output exists), so what runs is exactly the ``swift rlhf --rlhf_type grpo`` command the
tiny pipeline runs (recipes/cvo_grpo.sh with the tiny profile's settings). The run folder is built once
(``STOP_AFTER=cvo-filter``, a few minutes) unless ``--run-dir`` names one that has its
``data/mrsi/d2_filtered.jsonl``. Prints, per run, the exit status, the seconds, and for a failure the
signal torchrun reported and the last stderr lines; then the count of failed runs.

    python tools/bench_stage_repeat.py [-n 10] [--run-dir DIR] [--repo REPO] [--env K=V ...]
        [--keep-logs DIR]

``--repo`` runs another checkout's recipes and package (e.g. an export of an older commit, to measure
before and after a change); ``--env K=V`` adds settings (e.g. ``--env GRPO_MAX_STEPS=6``) to every run.
The tiny model is random: this measures the plumbing's exits, not learning.
"""
from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SIGNAL_RE = re.compile(r"exitcode\s*:\s*(-?\d+)(?:\s*\((\w+)\))?")


def _env(repo: Path, run_dir: Path, extra: list, stop_after: str) -> dict:
    env = dict(os.environ)
    env.update(PROFILE="tiny", RUN_DIR=str(run_dir), STOP_AFTER=stop_after, PYTHONPATH=str(repo))
    env.setdefault("MCR_SHARED_DIR", str(Path(os.environ.get("MCR_SHARED_DIR", REPO.parent / "shared"))))
    for kv in extra:
        k, sep, v = kv.partition("=")
        if not sep or not k:
            raise SystemExit(f"bench_stage_repeat: --env {kv!r}: expected NAME=VALUE")
        env[k] = v
    return env


def _pipeline(repo: Path, env: dict, log: Path) -> tuple:
    t0 = time.monotonic()
    with open(log, "wb") as f:
        rc = subprocess.run(["bash", str(repo / "recipes" / "qwen25vl_7b_full.sh")], cwd=repo, env=env,
                            stdout=f, stderr=subprocess.STDOUT).returncode
    return rc, time.monotonic() - t0


def _failure(log: Path) -> str:
    text = log.read_text(errors="replace")
    sig = [f"{m.group(1)}{' ' + m.group(2) if m.group(2) else ''}" for m in SIGNAL_RE.finditer(text)]
    hints = [line for line in text.splitlines()
             if "terminate called" in line or "Fatal Python error" in line or "Traceback" in line]
    tail = "\n".join("      " + line for line in text.splitlines()[-12:])
    return (f"    torchrun exitcode: {', '.join(sig) or 'none reported'}; "
            f"{len(hints)} abort/traceback line(s): {hints[:3]}\n{tail}")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("-n", type=int, default=10, help="repetitions (default 10)")
    p.add_argument("--run-dir", help="a tiny run folder that has finished cvo-filter (default: built once "
                   "under /tmp/bench_stage_repeat)")
    p.add_argument("--repo", default=str(REPO), help="the checkout whose recipes and package run")
    p.add_argument("--env", action="append", default=[], metavar="K=V", help="an extra setting, repeatable")
    p.add_argument("--keep-logs", help="folder for each run's log (default: the run folder's logs/)")
    a = p.parse_args(argv)
    if a.n < 1:
        p.error(f"-n must be at least 1, got {a.n}")
    repo = Path(a.repo).resolve()
    if not (repo / "recipes" / "qwen25vl_7b_full.sh").is_file():
        p.error(f"--repo {repo}: no recipes/qwen25vl_7b_full.sh there")
    run_dir = Path(a.run_dir or "/tmp/bench_stage_repeat/run").resolve()
    logs = Path(a.keep_logs or run_dir / "logs" / "bench_stage_repeat")
    if not (run_dir / "data" / "mrsi" / "d2_filtered.jsonl").is_file():
        if a.run_dir:
            p.error(f"--run-dir {run_dir}: no data/mrsi/d2_filtered.jsonl (run the tiny pipeline with "
                    f"STOP_AFTER=cvo-filter first, or leave --run-dir out)")
        run_dir.mkdir(parents=True, exist_ok=True)
        logs.mkdir(parents=True, exist_ok=True)
        print(f"[bench] building the tiny run folder {run_dir} (up to cvo-filter) ...", flush=True)
        rc, sec = _pipeline(repo, _env(repo, run_dir, a.env, "cvo-filter"), logs / "build.log")
        if rc != 0:
            print(f"[bench] building the run folder failed (exit {rc}, {sec:.0f} s):\n{_failure(logs / 'build.log')}",
                  file=sys.stderr)
            return 1
    logs.mkdir(parents=True, exist_ok=True)
    env = _env(repo, run_dir, a.env, "cvo-grpo")
    failed, times = [], []
    print(f"[bench] {a.n} x cvo-grpo on {run_dir} with {repo}; logs in {logs}", flush=True)
    for i in range(1, a.n + 1):
        shutil.rmtree(run_dir / "cvo_grpo", ignore_errors=True)
        log = logs / f"run_{i:02d}.log"
        rc, sec = _pipeline(repo, env, log)
        times.append(sec)
        done = (run_dir / "cvo_grpo" / "last_checkpoint.txt").is_file()
        print(f"run {i:2d}/{a.n}: exit {rc}  {sec:6.1f} s  last_checkpoint.txt {'written' if done else 'missing'}",
              flush=True)
        if rc != 0:
            failed.append(i)
            print(_failure(log), flush=True)
    print(f"failed: {len(failed)} of {a.n}{' (runs ' + ', '.join(map(str, failed)) + ')' if failed else ''}; "
          f"seconds per run: min {min(times):.1f}, median {sorted(times)[len(times) // 2]:.1f}, "
          f"max {max(times):.1f}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
