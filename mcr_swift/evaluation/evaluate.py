"""``mcr-swift evaluate``: the paper's metrics over ``swift infer`` output or a predictions file.

Rows are joined to their gold and scored by task (GMNER: Table 1; MNER-MI, GREC: Table 2); every gold
post is scored, one row per post. Inputs, joins, coordinate spaces and the report: docs/metrics.md.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

from ..coords import CoordinateSpace, add_space_args, space_from_args
from ..jsonl import iter_jsonl, write_json_atomic
from ..data.rows import GOLD_COLUMN, SIZES_COLUMN, TASK_COLUMN, TASKS, gold_from_row, row_task
from ..entities import Entity


def read_rows(path: Path, progress: bool) -> List[Dict[str, Any]]:
    """Every row of a JSONL file, each with its line number in ``_line`` (a progress bar by bytes)."""
    from tqdm import tqdm
    rows = []
    with tqdm(total=path.stat().st_size, unit="B", unit_scale=True, disable=not progress,
              desc=f"read {path.name}") as bar:
        for no, row, nbytes in iter_jsonl(path):
            bar.update(nbytes)
            row["_line"] = no
            rows.append(row)
    return rows


def image_paths(row: Dict[str, Any]) -> Tuple[str, ...]:
    """The absolute paths of a row's ``images`` (``""`` for an image with no path)."""
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
    return (image_paths(row), _user_text(row))


class DuplicateRows:
    """The one-row-per-post rule (module docstring): `seen` raises ValueError naming both lines when
    a post gets a second row."""

    def __init__(self, source: str):
        self.source = source
        self.first_line: Dict[Any, Any] = {}

    def seen(self, row: Dict[str, Any], grow: Dict[str, Any]) -> None:
        if grow is not row:
            key: Any = id(grow)
        elif "mcr_id" in row:
            key = (row_task(row), str(row.get("mcr_split")), str(row["mcr_id"]), _user_text(row))
        else:
            return
        first = self.first_line.setdefault(key, row["_line"])
        if first != row["_line"]:
            pid = grow.get("mcr_id", "?")
            raise ValueError(f"{self.source}:{row['_line']}: duplicated row: post {pid} already has a row at line "
                             f"{first} (one row per post)")


class GoldIndex:
    """Gold rows of prepared datasets, by mcr_id and by (image paths, user prompt).

    Several gold files may be added (`add`); an mcr_id found in two of them (e.g. a Twitter-GMNER
    and an MNER-MI post with the same number) is ambiguous and only joins by image paths and prompt.
    """

    def __init__(self, rows: Sequence[Dict[str, Any]], source: str):
        self.source, self.by_id, self.by_key = source, {}, {}
        self._id_source: Dict[str, str] = {}
        self.rows_by_source: Dict[str, List[Dict[str, Any]]] = {}
        self.ambiguous: set = set()
        self.add(rows, source)

    def add(self, rows: Sequence[Dict[str, Any]], source: str) -> None:
        for r in rows:
            if GOLD_COLUMN not in r:
                raise ValueError(f"{source}:{r['_line']}: gold row has no {GOLD_COLUMN!r}")
            rid = str(r.get("mcr_id"))
            if self._id_source.setdefault(rid, source) != source:
                self.ambiguous.add(rid)
            self.by_id[rid] = r
            self.by_key[join_key(r)] = r
            r["_source"] = source
            self.rows_by_source.setdefault(source, []).append(r)

    def find(self, row: Dict[str, Any]) -> Optional[Dict[str, Any]]:
        for key in ("id", "mcr_id"):
            rid = str(row[key]) if key in row else None
            if rid in self.by_id and rid not in self.ambiguous:
                return self.by_id[rid]
        return self.by_key.get(join_key(row))


def _box(value: Any, what: str) -> Tuple[float, float, float, float]:
    """4 finite numbers (not booleans), or ValueError saying what ``value`` is."""
    if (not isinstance(value, (list, tuple)) or len(value) != 4
            or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value)):
        raise ValueError(f"{what} must be 4 numbers [x1, y1, x2, y2], got {_short(value)}")
    if not all(math.isfinite(v) for v in value):
        raise ValueError(f"{what} has a non-finite coordinate: {_short(value)}")
    return tuple(float(v) for v in value)  # type: ignore[return-value]


def _short(value: Any, limit: int = 80) -> str:
    text = json.dumps(value, ensure_ascii=False, default=repr)
    return text if len(text) <= limit else text[:limit] + "..."


def row_entities(value: Any, where: str) -> List[Entity]:
    """A prediction row's ``entities`` (what predict/baselines write: a list of ``{"entity", "type",
    "boxes": [[x1, y1, x2, y2], ...]}``, or ``"bbox": null | [x1, y1, x2, y2]``) as Entities; a bad
    shape raises ValueError naming ``where`` (file:line), the item and what is wrong."""
    if not isinstance(value, list):
        raise ValueError(f"{where}: 'entities' must be a list of entity objects, got {_short(value)}")
    out = []
    for i, d in enumerate(value):
        at = f"{where}: entities[{i}]"
        if not isinstance(d, dict):
            raise ValueError(f"{at} must be an object with 'entity' and 'type', got {_short(d)}")
        for key in ("entity", "type"):
            if not isinstance(d.get(key), str):
                raise ValueError(f"{at}: {key!r} must be a string, got {_short(d.get(key))}")
        if "boxes" in d:
            boxes = d["boxes"]
            if boxes is None:
                boxes = []
            if not isinstance(boxes, list):
                raise ValueError(f"{at}: 'boxes' must be a list of boxes, got {_short(boxes)}")
            boxes = [_box(b, f"{at}: boxes[{j}]") for j, b in enumerate(boxes)]
        else:
            b = d.get("bbox")
            boxes = [] if b is None else [_box(b, f"{at}: 'bbox'")]
        out.append(Entity(d["entity"], d["type"], tuple(boxes)))
    return out


def collect(rows, gold: Optional[GoldIndex], space: CoordinateSpace, source: str,
            entities_space: str = "original") -> Dict[str, Any]:
    """Per-post predictions and golds (original pixels) by task, plus the parse-failure counts.

    ``preds``/``golds``/``sentences``: the GMNER rows; ``mner_mi``: ``{"preds", "golds"}``; ``grec``:
    ``{split: {"pred_boxes", "gold_boxes"}}``; ``parse_failures_by_task``.
    """
    from ..data.grec import answer_boxes
    from .parser import completion_text, parse_answer
    preds, golds, sentences = [], [], []
    mner: Dict[str, List] = {"preds": [], "golds": []}
    grec: Dict[str, Dict[str, List]] = {}
    fails_by_task = {t: 0 for t in TASKS}
    n_fail = n_dropped = n_unmatched = 0
    for row in rows:
        where = f"{source}:{row['_line']}"
        grow = row if GOLD_COLUMN in row else (gold.find(row) if gold else None)
        if grow is None:
            if gold is None:
                raise ValueError(f"{where}: row has no {GOLD_COLUMN!r}; pass the prepared dataset with --gold")
            n_unmatched += 1
            continue
        task = row_task(grow)
        if task not in TASKS:
            raise ValueError(f"{where}: unknown {TASK_COLUMN} {task!r} (known: {', '.join(TASKS)})")
        try:
            g = gold_from_row(grow)
        except (ValueError, KeyError, TypeError) as e:  # a malformed gold row: name its file and line
            at = f"{grow['_source']}:{grow['_line']}" if "_source" in grow else where
            raise ValueError(f"{at}: bad {GOLD_COLUMN}: {e}") from None
        sizes = grow.get(SIZES_COLUMN) or row.get(SIZES_COLUMN)
        size = tuple(sizes[0]) if sizes else None
        if row.get("_missing"):  # a gold post without a row: all-missed
            pred = []
        elif "entities" in row and row.get("response") is None:
            pred = row_entities(row["entities"], where)
            if row.get("parse_ok") is False:  # predict/baselines rows keep the raw answer and this flag
                n_fail += 1
                fails_by_task[task] += 1
            if task == "mner_mi":  # no location is asked: boxes are ignored
                pred = [Entity(e.text, e.type) for e in pred]
            elif entities_space == "model":
                if size is None:
                    raise ValueError(f"{where}: no image size to map model-space boxes back")
                pred = [Entity(e.text, e.type, tuple(space.from_model(b, size) for b in e.boxes[:1]))
                        for e in pred]
        else:
            res = parse_answer(completion_text(row.get("response")),
                               extent=space.model_extent(size) if size else None)
            n_fail += not res.ok
            fails_by_task[task] += not res.ok
            n_dropped += res.dropped
            pred = []
            for e in res.entities:
                if task == "mner_mi":  # no location is asked: boxes are ignored
                    pred.append(Entity(e.text, e.type))
                    continue
                if e.boxes and size is None:
                    raise ValueError(f"{where}: no image size ({SIZES_COLUMN}) to map boxes back")
                pred.append(Entity(e.text, e.type, tuple(space.from_model(b, size) for b in e.boxes[:1])))
        if task == "mner_mi":
            mner["preds"].append(pred)
            mner["golds"].append(g)
        elif task == "grec":
            if len(g) != 1:
                raise ValueError(f"{where}: a GREC row needs exactly one gold expression, got {len(g)}")
            part = grec.setdefault(str(grow.get("mcr_split") or "unknown"), {"pred_boxes": [], "gold_boxes": []})
            part["pred_boxes"].append(None if row.get("_missing") else answer_boxes(pred))
            part["gold_boxes"].append(g[0].box)
        else:
            preds.append(pred)
            golds.append(g)
            sentences.append(grow.get("mcr_sentence"))  # None: post left out of N-Count
    return {"preds": preds, "golds": golds, "sentences": sentences, "mner_mi": mner, "grec": grec,
            "parse_failures": n_fail, "parse_failures_by_task": fails_by_task,
            "dropped_items": n_dropped, "unmatched_rows": n_unmatched}


def missing_gold_rows(rows: Sequence[Dict[str, Any]], gold: Optional[GoldIndex], source: str
                      ) -> List[Dict[str, Any]]:
    """The one-row-per-post check over ``rows`` (`DuplicateRows`, raises on a second row of a post),
    then the gold rows no row joins to, as rows `collect` scores as all-missed (module docstring)."""
    dup = DuplicateRows(source)
    used, sources = set(), set()
    for row in rows:
        # a row carrying mcr_gold is scored against it, and also stands for the gold row it joins
        joined = gold.find(row) if gold else None
        grow = joined if joined is not None else (row if GOLD_COLUMN in row else None)
        if grow is None:
            continue
        dup.seen(row, grow)
        if joined is not None:
            used.add(id(joined))
            sources.add(joined["_source"])
    if gold is None:
        return []
    charged = sources or set(gold.rows_by_source)
    return [{**g, "_missing": True} for src in gold.rows_by_source if src in charged
            for g in gold.rows_by_source[src] if id(g) not in used]


def evaluate_file(path, gold: Optional[GoldIndex] = None, space: Optional[CoordinateSpace] = None,
                  entities_space: str = "original", progress: bool = False, protocol: str = "mcr"
                  ) -> Dict[str, Any]:
    from .metrics import gmner_metrics, grec_metrics, mner_mi_metrics
    path = Path(path)
    space = space or CoordinateSpace.from_env()
    rows = read_rows(path, progress)
    missing = missing_gold_rows(rows, gold, str(path))
    c = collect(rows + missing, gold, space, str(path), entities_space)
    m = gmner_metrics(c["preds"], c["golds"], c["sentences"], protocol=protocol)
    report = {"file": str(path), "protocol": protocol, "posts": len(c["golds"]), "rows": len(rows),
              "missing_posts": len(missing),
              "parse_failures": c["parse_failures"], "dropped_items": c["dropped_items"],
              "unmatched_rows": c["unmatched_rows"],
              "space": {"family": space.family, "min_pixels": space.min_pixels, "max_pixels": space.max_pixels,
                        "template_max_pixels": space.template_max_pixels},
              "metrics": m}
    table2: Dict[str, Any] = {}
    if c["mner_mi"]["golds"]:
        table2["mner_mi"] = mner_mi_metrics(c["mner_mi"]["preds"], c["mner_mi"]["golds"])
    if c["grec"]:
        table2["grec"] = {split: grec_metrics(d["pred_boxes"], d["gold_boxes"]) for split, d in c["grec"].items()}
    if table2:
        by_task = c["parse_failures_by_task"]
        table2["parse_failures"] = by_task["mner_mi"] + by_task["grec"]
        table2["samples"] = (table2.get("mner_mi", {}).get("posts", 0)
                             + sum(g["samples"] for g in table2.get("grec", {}).values()))
        report["parse_failures_by_task"] = by_task
        report["table2"] = table2
    return report


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


#: The GREC splits Table 2 shows as columns; other splits (val, train) are printed below it.
TABLE2_GREC_SPLITS = ("testA", "testB")


def format_table2(reports: Sequence[Dict[str, Any]]) -> str:
    """A Table 2-style row per file (percent): MNER-MI Pre Rec F1 | GREC-testA N-acc Pre |
    GREC-testB N-acc Pre, "-" where the file has no such rows; then GREC's other splits."""
    head = (f"{'run':<28} | {'MNER-MI Pre':>11} {'Rec':>5} {'F1':>5} | {'GREC-testA N-acc':>16} {'Pre':>5} | "
            f"{'GREC-testB N-acc':>16} {'Pre':>5} | {'samples':>7} {'unparsed':>8}")
    lines, extra = [head, "-" * len(head)], []
    for r in reports:
        t = r["table2"]
        name = Path(r["file"]).name
        name = name if len(name) <= 28 else "…" + name[-27:]
        mm = t.get("mner_mi")
        mner = (f"{100 * mm['precision']:>11.1f} {100 * mm['recall']:>5.1f} {100 * mm['f1']:>5.1f}" if mm
                else f"{'-':>11} {'-':>5} {'-':>5}")
        cols = []
        for split in TABLE2_GREC_SPLITS:
            g = t.get("grec", {}).get(split)
            cols.append(f"{100 * g['n_acc']:>16.1f} {100 * g['precision']:>5.1f}" if g else f"{'-':>16} {'-':>5}")
        lines.append(f"{name:<28} | {mner} | {cols[0]} | {cols[1]} | {t['samples']:>7d} {t['parse_failures']:>8d}")
        for split, g in t.get("grec", {}).items():
            if split not in TABLE2_GREC_SPLITS:
                extra.append(f"{name}: GREC-{split} N-acc {100 * g['n_acc']:.1f} Pre {100 * g['precision']:.1f} "
                             f"({g['samples']} samples)")
    return "\n".join(lines + extra)


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="mcr-swift evaluate", description=__doc__.splitlines()[0])
    p.add_argument("results", nargs="+", help="swift infer result files or prediction JSONL files")
    p.add_argument("--gold", action="append", default=None,
                   help="prepared dataset JSONL with mcr_gold (needed for swift infer output); repeat it for "
                        "several datasets (e.g. mner_mi/test.jsonl and grec/testA.jsonl)")
    add_space_args(p)
    p.add_argument("--entities-space", choices=["original", "model"], default="original",
                   help="space of boxes given as 'entities' (responses are always model space)")
    p.add_argument("--protocol", choices=["mcr", "hindex"], default="mcr",
                   help="mcr (default): the paper's metrics (IoU >= 0.5, one-to-one matching); hindex: the "
                        "dataset authors' evaluator (IoU > 0.5, a repeated prediction of a text replaces the "
                        "earlier one)")
    p.add_argument("--json-out", default=None, help="write the report here (default: <first result>.metrics.json)")
    p.add_argument("--no-progress", action="store_true")
    a = p.parse_args(argv)
    space = space_from_args(a)
    gold = None
    for g in a.gold or []:
        rows = read_rows(Path(g), not a.no_progress)
        if gold is None:
            gold = GoldIndex(rows, g)
        else:
            gold.add(rows, g)
    reports = [evaluate_file(r, gold, space, a.entities_space, progress=not a.no_progress, protocol=a.protocol)
               for r in a.results]
    table1 = [r for r in reports if r["posts"] or "table2" not in r]
    table2 = [r for r in reports if "table2" in r]
    if a.protocol != "mcr":
        print(f"protocol {a.protocol}: the dataset authors' evaluator (IoU > 0.5; a text predicted more often "
              f"than it occurs keeps its first c-1 and last predictions)")
    if table1:
        print(format_table(table1))
    if table2:
        print(("\n" if table1 else "") + format_table2(table2))
    for r in reports:
        extra = []
        if r["missing_posts"]:
            extra.append(f"{r['missing_posts']} of {r['posts'] + r.get('table2', {}).get('samples', 0)} gold posts "
                         f"had no prediction row (scored as all-missed)")
        if r["unmatched_rows"]:
            extra.append(f"{r['unmatched_rows']} rows had no gold row and were not scored")
        scored = r["posts"] + r.get("table2", {}).get("samples", 0) - r["missing_posts"]
        extra.append(f"{r['parse_failures']} of {scored} responses failed to parse")
        if r["dropped_items"]:
            extra.append(f"{r['dropped_items']} answer items dropped by the parser")
        print(f"{Path(r['file']).name}: " + "; ".join(extra))
    out = Path(a.json_out or (str(a.results[0]) + ".metrics.json"))
    write_json_atomic(out, reports if len(reports) > 1 else reports[0])
    print(f"report: {out}", file=sys.stderr)
    return 0
