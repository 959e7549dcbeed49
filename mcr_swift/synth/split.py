"""Split the multi-style CoT set D_R into D1 (MRSI SFT) and D2 = D_R \\ D1 (CVO), App. D.3 / Sec. 4.2.2.

``--split-unit row`` (default; Eq. 5 and D2 = D_R \\ D1 are sets of rows (x, v, z, y)): of each sample's
rows (one per style), a share goes to D1 and the rest to D2, so MRSI sees every sample once and CVO
queries every sample once. ``--split-unit post``: whole samples (every style of a sample on one side).
Both stratified by task, grounding (a gold box or not) and style mix with a systematic cut; D1 ratio 0.5
by default (the paper is silent). Details: docs/pipeline.md (D1/D2 split).
"""
from __future__ import annotations

import argparse
import json
import math
import random
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

from ..jsonl import iter_jsonl, write_jsonl_atomic
from ..core.columns import row_task
from ..core.argtypes import float_range
from ..files import refuse_overwriting_inputs

__all__ = ["DEFAULT_D1_RATIO", "SPLIT_UNITS", "DEFAULT_SPLIT_UNIT", "split_rows", "split_by_post", "split_by_row", "style_counts", "task_style_counts", "main"]

#: Fraction of posts that go to D1 (MRSI); the paper is silent, so half.
DEFAULT_D1_RATIO = 0.5
#: What the split cuts (docs/decisions.md): "row", the closer reading of Eq. 5 / D2 = D_R \\ D1, or "post".
SPLIT_UNITS = ("row", "post")
DEFAULT_SPLIT_UNIT = "row"


def _style(row: Mapping[str, Any]) -> str:
    s = row.get("mcr_style")
    return "" if s is None else str(s)


def _ratio(d1_ratio: Any) -> float:
    try:
        ratio = float(d1_ratio)
    except (TypeError, ValueError):
        raise ValueError(f"d1_ratio must be a number in (0, 1), got {d1_ratio!r}") from None
    if not 0.0 < ratio < 1.0:
        raise ValueError(f"d1_ratio must be strictly between 0 and 1, got {d1_ratio!r}")
    return ratio


def _cut(k: int, ratio: float) -> bool:
    """The systematic cut: item k of an ordered list goes to D1 (every stratum gets its share +-1)."""
    return math.floor((k + 1) * ratio + 0.5) > math.floor(k * ratio + 0.5)


def _ordered_samples(rows: Sequence[Mapping[str, Any]], seed: int
                     ) -> Tuple[List[Tuple[Tuple[str, str], Tuple[str, ...]]], Dict[Tuple[str, str], List[int]]]:
    """The samples in stratum order (task, then grounded samples first, then style mix; seeded shuffle
    within a stratum) with their style mix, and each sample's row indices in input order."""
    index: Dict[Tuple[str, str], List[int]] = defaultdict(list)
    located: Dict[Tuple[str, str], bool] = {}
    for i, row in enumerate(rows):
        if row.get("mcr_id") is None:
            raise ValueError(f"row {i} has no 'mcr_id'")
        index[_sample(row)].append(i)
        located[_sample(row)] = located.get(_sample(row), False) or _located(row)
    strata: Dict[Tuple[str, bool, Tuple[str, ...]], List[Tuple[str, str]]] = defaultdict(list)
    for key, idx in index.items():
        strata[(key[0], not located[key], tuple(sorted(_style(rows[i]) for i in idx)))].append(key)
    ordered = []
    for task, ungrounded, mix in sorted(strata):
        samples = sorted(strata[(task, ungrounded, mix)])
        random.Random(f"{seed}:{'|'.join(mix)}" if task == "gmner" else f"{seed}:{task}:{'|'.join(mix)}"
                      ).shuffle(samples)
        ordered += [(key, mix) for key in samples]
    return ordered, index


def split_by_post(rows: Sequence[Mapping[str, Any]], d1_ratio: float = DEFAULT_D1_RATIO,
                  seed: int = 0) -> Tuple[List[Mapping[str, Any]], List[Mapping[str, Any]]]:
    """``(d1, d2)``: the rows split by sample, stratified by task, grounding and style mix, deterministic
    per ``seed``.

    Rows keep their input order on each side. Raises ValueError if ``d1_ratio`` is not strictly
    between 0 and 1 or a row has no ``mcr_id``.
    """
    ratio = _ratio(d1_ratio)
    ordered, _ = _ordered_samples(rows, seed)
    # the systematic cut alternates over the stratum order, so each half gets its share of every
    # stratum, grounded samples included (the first grounded sample of the first task always goes to D1)
    in_d1 = {key for k, (key, _) in enumerate(ordered) if _cut(k, ratio)}
    d1 = [r for r in rows if _sample(r) in in_d1]
    d2 = [r for r in rows if _sample(r) not in in_d1]
    return d1, d2


def split_by_row(rows: Sequence[Mapping[str, Any]], d1_ratio: float = DEFAULT_D1_RATIO,
                 seed: int = 0) -> Tuple[List[Mapping[str, Any]], List[Mapping[str, Any]]]:
    """``(d1, d2)``: the rows split within each sample: the samples in the same stratum order as
    `split_by_post`, each sample's rows in style order rotated by the sample's rank in its stratum (so
    each style goes to D1 as often as to D2), and the systematic cut over that row sequence. With two
    rows per sample and ratio 0.5, every sample has exactly one row in D1 and one in D2; a sample with
    one row goes to one side, alternating. Rows keep their input order on each side."""
    ratio = _ratio(d1_ratio)
    ordered, index = _ordered_samples(rows, seed)
    rank: Counter = Counter()
    sequence: List[int] = []
    for key, mix in ordered:
        idx = sorted(index[key], key=lambda i: (_style(rows[i]), i))
        r = rank[(key[0], mix)] % len(idx)
        rank[(key[0], mix)] += 1
        sequence += idx[r:] + idx[:r]
    in_d1 = {i for k, i in enumerate(sequence) if _cut(k, ratio)}
    d1 = [r for i, r in enumerate(rows) if i in in_d1]
    d2 = [r for i, r in enumerate(rows) if i not in in_d1]
    return d1, d2


def split_rows(rows: Sequence[Mapping[str, Any]], d1_ratio: float = DEFAULT_D1_RATIO, seed: int = 0,
               unit: str = DEFAULT_SPLIT_UNIT) -> Tuple[List[Mapping[str, Any]], List[Mapping[str, Any]]]:
    """`split_by_row` (``unit="row"``) or `split_by_post` (``"post"``)."""
    if unit not in SPLIT_UNITS:
        raise ValueError(f"split unit must be one of {', '.join(SPLIT_UNITS)}, got {unit!r}")
    return (split_by_row if unit == "row" else split_by_post)(rows, d1_ratio, seed)


def _located(row: Mapping[str, Any]) -> bool:
    """True when the row's gold (``mcr_gold``) has a box: a grounded sample."""
    try:
        gold = json.loads(row.get("mcr_gold") or "[]")
        return any(isinstance(e, dict) and e.get("boxes") for e in gold)
    except (TypeError, ValueError):
        return False


def _sample(row: Mapping[str, Any]) -> Tuple[str, str]:
    return row_task(row), str(row["mcr_id"])


def style_counts(rows: Sequence[Mapping[str, Any]]) -> Dict[str, int]:
    return dict(sorted(Counter(_style(r) for r in rows).items()))


def task_style_counts(rows: Sequence[Mapping[str, Any]]) -> Dict[str, Dict[str, int]]:
    """Rows per task and style (``{task: {style: rows}}``)."""
    out: Dict[str, Counter] = defaultdict(Counter)
    for r in rows:
        out[row_task(r)][_style(r)] += 1
    return {t: dict(sorted(c.items())) for t, c in sorted(out.items())}


def main(argv: Optional[Sequence[str]] = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m mcr_swift.synth.split",
                                 description="Split D_R into D1 (MRSI) and D2 (CVO), by row or by post.")
    ap.add_argument("--input", required=True, help="D_R rows (.jsonl) with mcr_id and mcr_style")
    ap.add_argument("--out-dir", required=True, help="folder for d1.jsonl and d2.jsonl")
    ap.add_argument("--d1-ratio", type=float_range(0.0, 1.0, lo_open=True, hi_open=True), default=DEFAULT_D1_RATIO,
                    help="fraction of rows (--split-unit row) or samples (post) in D1 (default 0.5; the paper "
                         "gives none)")
    ap.add_argument("--split-unit", choices=SPLIT_UNITS, default=DEFAULT_SPLIT_UNIT,
                    help="row (default): each sample's style rows are shared out between D1 and D2, so MRSI "
                         "and CVO each see every sample; post: every row of a sample on one side")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    refuse_overwriting_inputs([("--input", args.input)], [("--out-dir's d1.jsonl", Path(args.out_dir) / "d1.jsonl"),
                                                          ("--out-dir's d2.jsonl", Path(args.out_dir) / "d2.jsonl")])
    rows = []
    first_at: Dict[Tuple[str, str, str, str, str], int] = {}
    for no, row, _ in iter_jsonl(args.input):
        rows.append(row)
        if row.get("mcr_id") is None:
            continue  # split_rows names it
        # the same sample, style and turns twice: a D_R written twice (e.g. synth given one input twice)
        # (a row of --repeat-styles, w/o D_R, carries its mcr_variant: a repeat on purpose, not a copy)
        key = (*_sample(row), _style(row), json.dumps(row.get("messages"), sort_keys=True, ensure_ascii=False),
               str(row.get("mcr_variant", 0)))
        first = first_at.setdefault(key, no)
        if first != no:
            raise ValueError(f"{args.input}:{no}: duplicated row: {key[0]} sample {key[1]} style "
                             f"{key[2] or '(none)'} repeats line {first} (same turns); D1 would train on it twice")
    d1, d2 = split_rows(rows, args.d1_ratio, args.seed, args.split_unit)
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    write_jsonl_atomic(out / "d1.jsonl", d1)
    write_jsonl_atomic(out / "d2.jsonl", d2)
    c1, c2 = style_counts(d1), style_counts(d2)
    n1 = len({_sample(r) for r in d1})
    n2 = len({_sample(r) for r in d2})
    print(f"split unit: {args.split_unit}")
    print(f"D1: {len(d1)} rows, {n1} samples -> {out / 'd1.jsonl'}")
    print(f"D2: {len(d2)} rows, {n2} samples -> {out / 'd2.jsonl'}")
    print(f"{'style':<24}{'D1':>8}{'D2':>8}")
    for s in sorted(set(c1) | set(c2)):
        print(f"{s or '(none)':<24}{c1.get(s, 0):>8}{c2.get(s, 0):>8}")
    t1, t2 = task_style_counts(d1), task_style_counts(d2)
    if len(set(t1) | set(t2)) > 1:
        print(f"{'task / style':<32}{'D1':>8}{'D2':>8}")
        for t in sorted(set(t1) | set(t2)):
            for s in sorted(set(t1.get(t, {})) | set(t2.get(t, {}))):
                print(f"{t + ' / ' + (s or '(none)'):<32}{t1.get(t, {}).get(s, 0):>8}{t2.get(t, {}).get(s, 0):>8}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
