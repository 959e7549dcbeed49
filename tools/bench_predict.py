#!/usr/bin/env python
"""Posts per second of ``mcr-swift predict``'s local engine, one post per engine call vs batches.

Builds (or reuses) the tiny random Qwen2.5-VL (`mcr_swift.plugin.tiny`, what ``mcr-swift tiny-model``
writes), prepares the first ``-n`` posts of the Twitter-GMNER test split with stand-in images, and
times `mcr_swift.evaluation.predict.predict_posts` through ms-swift's ``TransformersEngine`` (CPU)
for each ``--batch-sizes`` value, after one untimed warm-up post. The tiny model is random: its
answers are junk, the timing is of the plumbing (prompt, image processing, padded generation).

    python tools/bench_predict.py [-n 16] [--batch-sizes 1 8] [--max-tokens 16] [--repeat 3] [--threads 1]
        [--work runs/bench-predict]
"""
from __future__ import annotations

import os

# One torch thread by default: on a shared 2-core machine two threads spin against the other jobs
# and the timings swing by 10x (measured); --threads overrides.
if "--threads" not in " ".join(__import__("sys").argv):
    os.environ.setdefault("OMP_NUM_THREADS", "1")

import argparse
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
DEFAULT_ROOT = Path(os.environ.get("MCR_SHARED_DIR", REPO.parent / "shared")) / "data" / "twitter_gmner_v2"
TINY_MAX_PIXELS = 28 * 28 * 64  # what the tests use: stand-in images are seen as at most 64 patches


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("-n", type=int, default=16, help="posts (default 16)")
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8])
    p.add_argument("--max-tokens", type=int, default=16)
    p.add_argument("--repeat", type=int, default=3, help="timed runs per batch size, interleaved; best is shown")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default 1)")
    p.add_argument("--root", default=str(DEFAULT_ROOT))
    p.add_argument("--work", default=str(REPO / "runs" / "bench-predict"),
                   help="folder for the tiny model and the prepared posts (reused)")
    a = p.parse_args(argv)
    os.environ.setdefault("MAX_PIXELS", str(TINY_MAX_PIXELS))
    import torch
    torch.set_num_threads(a.threads or 1)

    from mcr_swift.core.coords import CoordinateSpace
    from mcr_swift.data.prepare import prepare_twitter_gmner
    from mcr_swift.evaluation.predict import LocalBackend, Post, predict_posts
    from mcr_swift.jsonl import iter_jsonl
    from mcr_swift.plugin.tiny import build_tiny_qwen25vl
    from mcr_swift.prompts import task_instruction

    if not Path(a.root).is_dir():
        print(f"bench_predict: {a.root}: data not found (set MCR_SHARED_DIR)", file=sys.stderr)
        return 2
    work = Path(a.work)
    model = build_tiny_qwen25vl(work / "tiny-qwen2_5_vl")
    data = work / f"data-{a.n}"
    if not (data / "twitter_gmner" / "test.jsonl").is_file():
        prepare_twitter_gmner(a.root, data, splits=["test"], standin_dir=work / "images", limit=a.n, progress=False)
    rows = [r for _, r, _ in iter_jsonl(data / "twitter_gmner" / "test.jsonl")][:a.n]
    posts = [Post(r["mcr_id"], r["mcr_sentence"], r["images"], "test", list(r["images"]),
                  [tuple(r["mcr_image_sizes"][0])]) for r in rows]
    space = CoordinateSpace("qwen2_5_vl", max_pixels=int(os.environ["MAX_PIXELS"]))
    instr = task_instruction()

    backend = LocalBackend(str(model), template="qwen2_5_vl", max_tokens=a.max_tokens, batch_size=1)
    predict_posts(posts[:1], backend, instr, space, progress=False)  # warm-up
    load = os.getloadavg()
    print(f"{len(posts)} posts, max_tokens {a.max_tokens}, torch threads {torch.get_num_threads()}, "
          f"load average before {load[0]:.2f}")
    print("| batch size | posts | best s | posts/s (best) | all runs s | answered |")
    print("|---:|---:|---:|---:|---|---:|")
    answers, times, done = {}, {bs: [] for bs in a.batch_sizes}, {}
    for _ in range(max(1, a.repeat)):
        for bs in a.batch_sizes:
            backend.batch_size = backend.engine.max_batch_size = bs
            with tempfile.TemporaryDirectory() as tmp:  # a fresh cache: every post is sent
                t = time.perf_counter()
                recs, counts = predict_posts(posts, backend, instr, space, cache_path=Path(tmp) / "c.jsonl",
                                             progress=False)
                times[bs].append(time.perf_counter() - t)
            answers[bs], done[bs] = [r["raw"] for r in recs], counts["answered"]
    for bs in a.batch_sizes:
        best = min(times[bs])
        print(f"| {bs} | {len(posts)} | {best:.2f} | {len(posts) / best:.2f} | "
              f"{' '.join(f'{x:.2f}' for x in times[bs])} | {done[bs]} |")
    same = len({tuple(v) for v in answers.values()}) == 1
    print(f"answers identical across batch sizes (greedy): {same}; load average after "
          f"{os.getloadavg()[0]:.2f}")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
