"""Reading prediction and gold rows for the metrics: `read_rows` (a JSONL file with line numbers),
`GoldIndex` (gold rows of prepared datasets, joined by mcr_id or by image paths and prompt), `collect`
(per-post predictions and golds, original pixels, by task) and `missing_gold_rows` (the one-row-per-post
rule, and the gold posts no row joins to). Used by ``mcr-swift evaluate`` (`mcr_swift.evaluation.evaluate`)
and the reports (`mcr_swift.reports.posts`); the rules are in docs/metrics.md."""
from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

from ..core.columns import GOLD_COLUMN, SIZES_COLUMN, TASK_COLUMN, TASKS, gold_from_row, row_task
from ..core.coords import CoordinateSpace
from ..core.entities import Entity
from ..jsonl import iter_jsonl


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
    One post (task, split, mcr_id) in two gold files -- the same file given twice, or a copy -- would be
    scored twice: ValueError naming both files and lines.
    """

    def __init__(self, rows: Sequence[Dict[str, Any]], source: str):
        self.source, self.by_id, self.by_key = source, {}, {}
        self._id_source: Dict[str, str] = {}
        self.rows_by_source: Dict[str, List[Dict[str, Any]]] = {}
        self.ambiguous: set = set()
        self._post_at: Dict[Tuple[str, str, str], Tuple[int, str, Any]] = {}
        self._files = 0
        self.add(rows, source)

    def add(self, rows: Sequence[Dict[str, Any]], source: str) -> None:
        self._files += 1  # one gold file given twice is two files here
        for r in rows:
            if GOLD_COLUMN not in r:
                raise ValueError(f"{source}:{r['_line']}: gold row has no {GOLD_COLUMN!r}")
            rid = str(r.get("mcr_id"))
            post = (row_task(r), str(r.get("mcr_split") or ""), rid)
            first = self._post_at.setdefault(post, (self._files, source, r["_line"]))
            if first[0] != self._files:
                raise ValueError(f"{source}:{r['_line']}: {post[0]} post {rid} is also in gold file "
                                 f"{first[1]}:{first[2]}; a post may be in one --gold file only (it would "
                                 f"be scored twice)")
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
    ``{split: {"pred_boxes", "gold_boxes" (first box or None), "gold_sets" (all boxes)}}``;
    ``parse_failures_by_task``.
    """
    from ..data.grec import answer_boxes
    from ..core.parser import completion_text, parse_answer
    preds, golds, sentences = [], [], []
    mner: Dict[str, List] = {"preds": [], "golds": []}
    grec: Dict[str, Dict[str, List]] = {}
    fails_by_task = {t: 0 for t in TASKS}
    n_fail = n_dropped = n_unmatched = 0
    run_space = space
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
        space = run_space.for_row(grow)  # the row's own per-post image budget, as ms-swift resized it
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
            part = grec.setdefault(str(grow.get("mcr_split") or "unknown"),
                                   {"pred_boxes": [], "gold_boxes": [], "gold_sets": []})
            part["pred_boxes"].append(None if row.get("_missing") else answer_boxes(pred))
            part["gold_boxes"].append(g[0].box)
            part["gold_sets"].append([tuple(b) for b in g[0].boxes])  # several: a multi-target sample
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
