#!/usr/bin/env python
"""Time the answer parser and the CVO reward on realistic completions, on one CPU core.

Completions are built from real Twitter-GMNER posts (``<shared>/data/twitter_gmner_v2``) shaped like
one GRPO step (default 64 posts x 8 rollouts = 512): each rollout is the post's gold triples,
perturbed (dropped entities, wrong types, shifted boxes, cut spans, box/None flips) and padded with
perturbed copies to 3-10 entities, rendered in the canonical format with a reasoning part; ~5% are
junk (truncated, tuple format, prose). Rows:

* ``json.loads``      bare ``json.loads`` of the answer bodies (the reference),
* ``parse_answer``    `mcr_swift.core.parser.parse_answer` on the full completions,
* ``parse+reward``    parse + `mcr_swift.core.rewards.reward_terms` + Eq. 10 against the gold,
* ``gmner_orm``       the ms-swift ORM called as GRPO calls it (gold JSON column, image sizes,
                      coordinate mapping through `mcr_swift.core.scoring.score_row`; its caches are
                      cleared before every timed call, as in a new step), skipped with ``--no-orm`` or when ms-swift is missing.

Usage: ``python tools/bench_rewards.py [--data DIR] [--n 512] [--repeat 7] [--no-orm]``
"""
from __future__ import annotations

import os

for _v in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_v, "1")

import argparse  # noqa: E402
import json  # noqa: E402
import random  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from mcr_swift import load_twitter_gmner  # noqa: E402
from mcr_swift.core.answer import default_reasoning, render_answer  # noqa: E402
from mcr_swift.core.parser import parse_answer  # noqa: E402
from mcr_swift.core.rewards import gmner_reward  # noqa: E402
from mcr_swift.core.entities import ENTITY_TYPES, Entity  # noqa: E402

DEFAULT_DATA = REPO.parent / "shared" / "data" / "twitter_gmner_v2"


def perturb(e: Entity, rng: random.Random, size) -> Entity:
    text, etype, box = e.text, e.type, e.box
    r = rng.random()
    if r < 0.15:
        etype = rng.choice(ENTITY_TYPES)
    elif r < 0.3 and len(text.split()) > 1:
        text = " ".join(text.split()[:-1])
    elif r < 0.45 and box is not None:
        dx, dy = rng.uniform(-20, 20), rng.uniform(-20, 20)
        box = (max(0.0, box[0] + dx), max(0.0, box[1] + dy), box[2] + dx + 5, box[3] + dy + 5)
    elif r < 0.55:
        w, h = size or (500, 500)
        box = None if box is not None else (w * 0.1, h * 0.1, w * 0.5, h * 0.6)
    return Entity(text, etype, box)


def build(data: Path, n: int, generations: int = 8, seed: int = 0):
    """``n`` completions: ``n // generations`` posts with ``generations`` rollouts each (a GRPO step)."""
    rng = random.Random(seed)
    n_posts = max(1, n // generations)
    samples = [s for s in load_twitter_gmner(data, "train", limit=8 * n_posts + 200) if s.entities]
    rng.shuffle(samples)
    comps, golds, bodies, rows = [], [], [], []
    for s in samples[:n_posts]:
        gold = list(s.entities)
        row = (json.dumps([e.to_dict() for e in gold]), [list(s.image_size or (500, 500))])
        for _ in range(generations):
            k = rng.randint(3, 10)  # entities in the completion
            pred = [perturb(e, rng, s.image_size) for e in gold if rng.random() > 0.1][:k]
            while len(pred) < k:  # pad with perturbed copies
                pred.append(perturb(rng.choice(gold), rng, s.image_size))
            pred = [Entity(e.text, e.type, e.boxes[:1]) for e in pred]
            text, _ = render_answer(pred, default_reasoning(s.sentence, pred))
            r = rng.random()
            if r < 0.02:
                text = text[: len(text) * 3 // 4]                                  # truncated
            elif r < 0.035:
                text = "<think>x</think>\n<answer>\n" + "\n".join(
                    f"({e.text}, {e.type}, {list(e.box) if e.box else None})" for e in pred) + "\n</answer>"
            elif r < 0.05:
                text = "I think the entities are " + ", ".join(e.text for e in pred) + "."
            comps.append(text)
            golds.append(gold)
            i = text.rfind("<answer>")
            j = text.find("</answer>", i)
            bodies.append(text[i + 8:j].strip() if i >= 0 and j > i else "[]")
            rows.append(row)
    return comps, golds, bodies, rows


def best_of(fn, repeat: int) -> float:
    best = float("inf")
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA)
    ap.add_argument("--n", type=int, default=512, help="completions (one GRPO step's rollouts)")
    ap.add_argument("--generations", type=int, default=8, help="rollouts per post (GRPO group size)")
    ap.add_argument("--repeat", type=int, default=7, help="timing repeats (the best is kept)")
    ap.add_argument("--no-orm", action="store_true", help="skip the ms-swift ORM row")
    args = ap.parse_args(argv)
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})

    t0 = time.perf_counter()
    comps, golds, bodies, rows = build(args.data, args.n, args.generations)
    n = len(comps)
    n_ent = sum(len(parse_answer(c).entities) for c in comps)
    print(f"{n} completions = {n // args.generations} posts x {args.generations} rollouts from "
          f"{args.data.name}/train ({n_ent / n:.1f} predicted entities each, "
          f"{sum(map(len, comps)) / n:.0f} chars each), built in {time.perf_counter() - t0:.1f} s; "
          f"best of {args.repeat}, one core")

    def loads():
        for b in bodies:
            try:
                json.loads(b)
            except ValueError:
                pass

    timings = [("json.loads", best_of(loads, args.repeat)),
               ("parse_answer", best_of(lambda: [parse_answer(c) for c in comps], args.repeat)),
               ("parse+reward", best_of(lambda: [gmner_reward(parse_answer(c).entities, g)
                                                 for c, g in zip(comps, golds)], args.repeat))]
    if not args.no_orm:
        try:
            import swift.rewards  # noqa: F401  (slow: imports torch/transformers)
            from mcr_swift.plugin.orms import GMNERReward
            from mcr_swift.core.scoring import clear_caches
        except ImportError as e:
            print(f"(gmner_orm row skipped: {e})")
        else:
            orm = GMNERReward()
            kwargs = {"mcr_gold": [r[0] for r in rows], "mcr_image_sizes": [r[1] for r in rows],
                      "trainer_state": None}

            def call():
                clear_caches()  # time real work, not the cache
                orm(comps, **kwargs)
            timings.append(("gmner_orm", best_of(call, args.repeat)))

    ref = timings[0][1]
    print(f"{'what':<14}{'completions/s':>15}{'x json.loads':>14}{'ms / 512':>11}")
    for name, t in timings:
        print(f"{name:<14}{n / t:>15,.0f}{t / ref:>14.1f}{t / n * 512 * 1e3:>11.2f}")


if __name__ == "__main__":
    main()
