"""``mcr-swift evaluate``: the paper's metrics over ``swift infer`` output or a predictions file.

Inputs (JSON lines), each result file scored against its gold:

* ``swift infer --result_path`` output: rows with ``response``, ``messages`` and ``images``. ms-swift
  drops unknown columns at inference, so the gold comes from the prepared dataset given with
  ``--gold`` (e.g. ``mcr_data/twitter_gmner/test.jsonl``); rows are joined on (image paths, user prompt).
* rows that carry ``mcr_gold`` themselves (prepared rows plus a ``response``; what the mcr-swift tools
  write), optionally with ``mcr_image_sizes``.
* plain predictions ``{"id": "<IMGID>", "response": "..."}`` or ``{"id": ..., "entities": [{"entity",
  "type", "bbox"}, ...]}`` joined to ``--gold`` by ``mcr_id``.

A ``response`` is parsed with `mcr_swift.parser.parse_answer`; its boxes are in the model's
coordinate space and are mapped back to original pixels with `mcr_swift.coords.CoordinateSpace`
(``--family``, ``--max-pixels``, ``--min-pixels``, ``--template-max-pixels``: the resize settings the
run used; defaults from the environment like ms-swift) and each post's real image size. ``entities``
given directly are in original pixels unless ``--entities-space model``. Metrics compare in original
pixels (App. E.3). Responses that yield no structured answer are counted as parse failures and score
as no prediction.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

from .coords import CoordinateSpace
from .jsonl import iter_jsonl
from .rows import GOLD_COLUMN, SIZES_COLUMN, gold_from_row
from .types import Entity


def _read_jsonl(path: Path, progress: bool) -> List[Dict[str, Any]]:
    from tqdm import tqdm
    rows = []
    with tqdm(total=path.stat().st_size, unit="B", unit_scale=True, disable=not progress,
              desc=f"read {path.name}") as bar:
        for no, row, nbytes in iter_jsonl(path):
            bar.update(nbytes)
            row["_line"] = no
            rows.append(row)
    return rows


def _image_paths(row: Dict[str, Any]) -> Tuple[str, ...]:
    out = []
    for im in row.get("images") or []:
        out.append(im.get("path") if isinstance(im, dict) else str(im))
    return tuple(os.path.abspath(p) if p else "" for p in out)


def _user_text(row: Dict[str, Any]) -> str:
    for m in row.get("messages") or []:
        if isinstance(m, dict) and m.get("role") == "user":
            c = m.get("content")
            return c if isinstance(c, str) else json.dumps(c, sort_keys=True)
    return ""


def join_key(row: Dict[str, Any]) -> Tuple:
    return (_image_paths(row), _user_text(row))


class GoldIndex:
    """Gold rows of a prepared dataset, by mcr_id and by (image paths, user prompt)."""

    def __init__(self, rows: Sequence[Dict[str, Any]], source: str):
        self.source, self.by_id, self.by_key = source, {}, {}
        for r in rows:
            if GOLD_COLUMN not in r:
                raise ValueError(f"{source}:{r['_line']}: gold row has no {GOLD_COLUMN!r}")
            self.by_id[str(r.get("mcr_id"))] = r
            self.by_key[join_key(r)] = r

    def find(self, row: Dict[str, Any]) -> Optional[Dict[str, Any]]:
        if "id" in row and str(row["id"]) in self.by_id:
            return self.by_id[str(row["id"])]
        if "mcr_id" in row and str(row["mcr_id"]) in self.by_id:
            return self.by_id[str(row["mcr_id"])]
        return self.by_key.get(join_key(row))


def collect(rows, gold: Optional[GoldIndex], space: CoordinateSpace, source: str,
            entities_space: str = "original") -> Dict[str, Any]:
    """Per-post predictions and golds (original pixels), plus the parse-failure count."""
    from .parser import completion_text, parse_answer
    preds, golds, sentences = [], [], []
    n_fail = n_dropped = n_unmatched = 0
    for row in rows:
        where = f"{source}:{row['_line']}"
        grow = row if GOLD_COLUMN in row else (gold.find(row) if gold else None)
        if grow is None:
            if gold is None:
                raise ValueError(f"{where}: row has no {GOLD_COLUMN!r}; pass the prepared dataset with --gold")
            n_unmatched += 1
            continue
        g = gold_from_row(grow)
        sizes = grow.get(SIZES_COLUMN) or row.get(SIZES_COLUMN)
        size = tuple(sizes[0]) if sizes else None
        if "entities" in row and row.get("response") is None:
            pred = [Entity.from_dict(d) for d in row["entities"]]
            if entities_space == "model":
                if size is None:
                    raise ValueError(f"{where}: no image size to map model-space boxes back")
                pred = [Entity(e.text, e.type, tuple(space.from_model(b, size) for b in e.boxes[:1]))
                        for e in pred]
        else:
            res = parse_answer(completion_text(row.get("response")),
                               extent=space.model_extent(size) if size else None)
            n_fail += not res.ok
            n_dropped += res.dropped
            pred = []
            for e in res.entities:
                if e.boxes and size is None:
                    raise ValueError(f"{where}: no image size ({SIZES_COLUMN}) to map boxes back")
                pred.append(Entity(e.text, e.type, tuple(space.from_model(b, size) for b in e.boxes[:1])))
        preds.append(pred)
        golds.append(g)
        sentences.append(grow.get("mcr_sentence"))  # None: post left out of N-Count
    return {"preds": preds, "golds": golds, "sentences": sentences, "parse_failures": n_fail,
            "dropped_items": n_dropped, "unmatched_rows": n_unmatched}


def evaluate_file(path, gold: Optional[GoldIndex] = None, space: Optional[CoordinateSpace] = None,
                  entities_space: str = "original", progress: bool = False) -> Dict[str, Any]:
    from .metrics import gmner_metrics
    path = Path(path)
    space = space or CoordinateSpace.from_env()
    rows = _read_jsonl(path, progress)
    c = collect(rows, gold, space, str(path), entities_space)
    m = gmner_metrics(c["preds"], c["golds"], c["sentences"])
    return {"file": str(path), "posts": len(c["golds"]), "rows": len(rows),
            "parse_failures": c["parse_failures"], "dropped_items": c["dropped_items"],
            "unmatched_rows": c["unmatched_rows"],
            "space": {"family": space.family, "min_pixels": space.min_pixels, "max_pixels": space.max_pixels,
                      "template_max_pixels": space.template_max_pixels},
            "metrics": m}


def format_table(reports: Sequence[Dict[str, Any]]) -> str:
    """A Table 1-style row per file (percent), plus the bias metrics (Sec. 5.5)."""
    head = (f"{'run':<28} | {'GMNER Pre':>9} {'Rec':>5} {'F1':>5} | {'MNER Pre':>8} {'Rec':>5} {'F1':>5} | "
            f"{'EEG Pre':>7} {'Rec':>5} {'F1':>5} | {'N-Pre':>5} {'N-Rec':>5} {'N-F1':>5} | "
            f"{'N-Count':>7} {'N-Rate':>6} | {'posts':>5} {'unparsed':>8}")
    lines = [head, "-" * len(head)]
    for r in reports:
        m = r["metrics"]
        name = Path(r["file"]).name
        name = name if len(name) <= 28 else "…" + name[-27:]

        def prf(k, w=9):
            return (f"{100 * m[k]['precision']:>{w}.1f} {100 * m[k]['recall']:>5.1f} "
                    f"{100 * m[k]['f1']:>5.1f}")
        lines.append(f"{name:<28} | {prf('gmner')} | {prf('mner', 8)} | {prf('eeg', 7)} | {prf('n', 5)} | "
                     f"{m.get('n_count', 0):>7d} {100 * m.get('n_rate', 0.0):>5.1f}% | {r['posts']:>5d} "
                     f"{r['parse_failures']:>8d}")
    return "\n".join(lines)


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="mcr-swift evaluate", description=__doc__.splitlines()[0])
    p.add_argument("results", nargs="+", help="swift infer result files or prediction JSONL files")
    p.add_argument("--gold", help="prepared dataset JSONL with mcr_gold (needed for swift infer output)")
    p.add_argument("--family", default=None, help="model family (default $MCR_MODEL_FAMILY or qwen2_5_vl)")
    p.add_argument("--max-pixels", type=int, default=None, help="smart-resize max pixels of the run "
                                                                "(default $MAX_PIXELS or qwen-vl-utils')")
    p.add_argument("--min-pixels", type=int, default=None)
    p.add_argument("--template-max-pixels", type=int, default=None, help="the run's --max_pixels, if any")
    p.add_argument("--entities-space", choices=["original", "model"], default="original",
                   help="space of boxes given as 'entities' (responses are always model space)")
    p.add_argument("--json-out", default=None, help="write the report here (default: <first result>.metrics.json)")
    p.add_argument("--no-progress", action="store_true")
    a = p.parse_args(argv)
    env_space = CoordinateSpace.from_env(a.family)
    space = CoordinateSpace(env_space.family,
                            a.min_pixels if a.min_pixels is not None else env_space.min_pixels,
                            a.max_pixels if a.max_pixels is not None else env_space.max_pixels,
                            a.template_max_pixels if a.template_max_pixels is not None
                            else env_space.template_max_pixels)
    gold = None
    if a.gold:
        gold = GoldIndex(_read_jsonl(Path(a.gold), not a.no_progress), a.gold)
    reports = [evaluate_file(r, gold, space, a.entities_space, progress=not a.no_progress) for r in a.results]
    print(format_table(reports))
    for r in reports:
        extra = []
        if r["unmatched_rows"]:
            extra.append(f"{r['unmatched_rows']} rows had no gold row and were not scored")
        extra.append(f"{r['parse_failures']} of {r['posts']} responses failed to parse")
        if r["dropped_items"]:
            extra.append(f"{r['dropped_items']} answer items dropped by the parser")
        print(f"{Path(r['file']).name}: " + "; ".join(extra))
    out = Path(a.json_out or (str(a.results[0]) + ".metrics.json"))
    out.write_text(json.dumps(reports if len(reports) > 1 else reports[0], indent=1))
    print(f"report: {out}", file=sys.stderr)
    return 0
