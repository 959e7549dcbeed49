#!/usr/bin/env python
"""Time `mcr_swift.core.metrics.gmner_metrics` on a full Twitter-GMNER split, on one core.

Predictions of about the gold size come from `mcr_swift.core.metrics.perturb` (10 % dropped, 10 %
retyped, 10 % of the boxes shifted, 10 % spurious unlocated entities added, seed 0 by default).
Prints posts, gold and predicted triples, the best of ``--repeat`` timings and the metrics table.

    python tools/bench_metrics.py [--root DATA] [--split test] [--repeat 5] [--seed 0]
"""
from __future__ import annotations

import os

# One core: keep any BLAS/OpenMP pool (numpy/scipy, used for large matching groups) single-threaded.
for _v in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_v, "1")

import argparse  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from mcr_swift.core.metrics import gmner_metrics, metrics_table, perturb  # noqa: E402
from mcr_swift.data.twitter import load_twitter_gmner  # noqa: E402

DEFAULT_ROOT = Path(os.environ.get("MCR_SHARED_DIR", REPO.parent / "shared")) / "data" / "twitter_gmner_v2"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--root", default=str(DEFAULT_ROOT), help="Twitter-GMNER folder with txt/ and xml/")
    p.add_argument("--split", default="test")
    p.add_argument("--repeat", type=int, default=5)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})

    samples = load_twitter_gmner(a.root, a.split)
    golds = [list(s.entities) for s in samples]
    sentences = [s.sentence for s in samples]
    preds = perturb(golds, seed=a.seed, drop=0.1, shift=0.1, retype=0.1, spurious=0.1)

    times = []
    for _ in range(max(1, a.repeat)):
        t0 = time.perf_counter()
        m = gmner_metrics(preds, golds, sentences)
        times.append(time.perf_counter() - t0)
    t0 = time.perf_counter()
    gmner_metrics(preds, golds, sentences, per_post=True)
    t_per_post = time.perf_counter() - t0

    print(f"split {a.split}: posts {len(golds)}, gold {sum(map(len, golds))}, "
          f"predicted {sum(map(len, preds))} (perturb seed {a.seed})")
    print(f"gmner_metrics: best of {len(times)} = {min(times):.4f} s "
          f"(all: {', '.join(f'{t:.4f}' for t in times)}); with per_post=True {t_per_post:.4f} s; "
          f"target < 1 s: {'OK' if min(times) < 1.0 else 'TOO SLOW'}")
    print(metrics_table(m))
    return 0


if __name__ == "__main__":
    sys.exit(main())
