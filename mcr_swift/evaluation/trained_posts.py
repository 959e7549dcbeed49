"""``mcr-swift trained-posts D1 OUT``: the GMNER posts MRSI trained on, one row per post.

The memorisation check of a full-pipeline run (recipes/full_pipeline.sh, stage ``trained-eval``):
``swift infer`` + ``mcr-swift evaluate`` over the posts of D1 (the MRSI SFT set, Sec. 4.1), exactly as
on the test split. D1 holds several rows per post (one per reasoning style) and, with the three
sources, MNER-MI and GREC rows too; this keeps the first row of each GMNER post (``mcr_task``
``gmner``, or no ``mcr_task``) in file order. Its user turn is the post's GMNER instruction, the same
prompt as the prepared splits, so the row joins to ``twitter_gmner/train.jsonl`` for the gold.

Writes ``OUT`` (JSON lines, atomically) and ``OUT.summary.json``: ``rows_in``, ``posts`` (rows
written), ``duplicates`` (further style rows of a kept post) and ``skipped_by_task`` (rows of other
tasks), so every input row is accounted for. A bad input file: one line naming it, exit status 2.
"""
from __future__ import annotations

import argparse
import sys
from collections import Counter
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional, Tuple

from ..jsonl import iter_jsonl, write_json_atomic, write_jsonl_atomic
from ..core.columns import row_task
from ..files import refuse_overwriting_inputs

__all__ = ["select_trained_posts", "main"]


def select_trained_posts(rows: Iterable[Dict[str, Any]]) -> Tuple[List[Dict[str, Any]], Dict[str, Any]]:
    """First row per GMNER post (by ``mcr_id``), in order; returns (rows, counts)."""
    kept: List[Dict[str, Any]] = []
    seen = set()
    skipped: Counter = Counter()
    n = dup = 0
    for r in rows:
        n += 1
        task = row_task(r)
        if task != "gmner":
            skipped[task] += 1
            continue
        key = str(r.get("mcr_id"))
        if key in seen:
            dup += 1
            continue
        seen.add(key)
        kept.append(r)
    return kept, {"rows_in": n, "posts": len(kept), "duplicates": dup,
                  "skipped_by_task": dict(sorted(skipped.items()))}


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="mcr-swift trained-posts", description=__doc__.splitlines()[0])
    p.add_argument("d1", help="the MRSI SFT set (e.g. RUN_DIR/data/mrsi/d1.jsonl)")
    p.add_argument("out", help="the GMNER posts, one row each (JSON lines)")
    a = p.parse_args(argv)
    refuse_overwriting_inputs([("d1", a.d1)], [("out", a.out), ("out's summary", Path(a.out).with_name(
        Path(a.out).name + ".summary.json"))])
    try:
        rows, counts = select_trained_posts(r for _, r, _ in iter_jsonl(a.d1))
    except (OSError, ValueError) as e:
        print(f"trained_posts: {e}", file=sys.stderr)
        return 2
    if not rows:
        print(f"trained_posts: {a.d1}: no GMNER row (mcr_task gmner or none) to evaluate", file=sys.stderr)
        return 2
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    summary = out.with_name(out.name + ".summary.json")
    write_json_atomic(summary, {"input": str(a.d1), **counts})
    write_jsonl_atomic(out, rows)
    print(f"trained posts: {counts['posts']} GMNER posts of {counts['rows_in']} D1 rows "
          f"({counts['duplicates']} further style rows, other tasks {counts['skipped_by_task'] or 'none'}) -> {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
