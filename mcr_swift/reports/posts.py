"""The posts of a result file, read, scored and analysed for the paper's biases: what
``mcr-swift pictures`` (`mcr_swift.reports.pictures`) draws and ``mcr-swift bias-report``
(`mcr_swift.reports.bias_report`) summarises, with the result-file options both commands share.

Error kinds of a post (what ``--only`` filters on; the paper's definitions, App. E.3):

* ``errors`` -- the post is not perfect under GMNER (Eq. 19-24): a prediction is not a correct
  triple, or a gold triple is not predicted correctly.
* ``textual`` -- textual bias (Sec. 1, Fig. 1a; Eq. 26-29): a post with an N-Pre or N-Rec error.
  Predictions and gold triples are paired one-to-one by span (type ignored, as in Eq. 26; among
  same-span candidates located pairs with located and unlocated with unlocated first, so the number
  of unlocated-unlocated pairs is exactly N's #n-correct). The four kinds are
  ``box_for_text_only`` (a gold text-only entity, location None, predicted with a box -- the
  paper's "assigns bounding boxes to entities absent from the image"), ``text_only_missed`` (a gold
  text-only entity whose span is not predicted), ``no_box_for_located`` (a predicted None for a
  gold entity that has a box) and ``unlocated_not_gold`` (a predicted None whose span is no gold
  entity). Their sum is (#n-predict - #n-correct) + (#n-gold - #n-correct).
* ``visual`` -- visual bias (Eq. 30-31, Table 4): a predicted entity whose span does not occur in
  the sentence (`mcr_swift.core.metrics.post_counts`' ``absent``; N-Count counts them).
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

from ..core.coords import CoordinateSpace, add_space_args, space_from_args
from ..core.metrics import location_correct, normalize_text, post_counts
from ..core.entities import Entity
from ..core.argtypes import positive_int

#: Picture width in pixels (images are scaled to it); configurable with ``--width``.
DEFAULT_WIDTH = 640
FILTERS = ("all", "errors", "textual", "visual")
TEXTUAL_KINDS = ("box_for_text_only", "text_only_missed", "no_box_for_located", "unlocated_not_gold")

Pair = Tuple[int, int]


# --------------------------------------------------------------------------- reading a result file
@dataclass
class Post:
    """One scored post of a result file: boxes in original pixels of ``size`` (the image size the
    gold row records; None when unknown)."""
    index: int
    id: str
    where: str                     # "file:line" of the result row
    image: Optional[str]
    size: Optional[Tuple[int, int]]
    sentence: Optional[str]
    gold: List[Entity]
    pred: List[Entity]
    parse_failed: bool = False
    analysis: Dict[str, Any] = field(default_factory=dict)


def add_input_args(p: argparse.ArgumentParser) -> None:
    """The result-file options shared by ``pictures`` and ``bias-report`` (those of ``evaluate``)."""
    p.add_argument("result", help="swift infer result file or predictions JSONL (as for mcr-swift evaluate)")
    p.add_argument("--gold", help="prepared dataset JSONL with mcr_gold (needed for swift infer output)")
    add_space_args(p)
    p.add_argument("--entities-space", choices=["original", "model"], default="original",
                   help="space of boxes given as 'entities' (responses are always model space)")
    p.add_argument("--image-dir", default=None,
                   help="look images up here (by the row's image file name, or <id>.jpg when a row names none)")
    p.add_argument("--allow-missing-images", action="store_true",
                   help="draw a placeholder (counted) instead of stopping when an image is missing")
    p.add_argument("--width", type=positive_int, default=DEFAULT_WIDTH, help="picture width in pixels")
    p.add_argument("--no-progress", action="store_true")


def load_posts(path, gold_path=None, space: Optional[CoordinateSpace] = None,
               entities_space: str = "original", image_dir=None, progress: bool = False
               ) -> Tuple[List[Post], Dict[str, int]]:
    """The posts of a result file, each with its gold row's image, size, sentence, gold and prediction.

    Each row goes through `mcr_swift.evaluation.reading.collect` (so predictions are parsed and mapped exactly
    as ``mcr-swift evaluate`` does); rows with no gold row are counted in ``unmatched_rows``. As in
    ``evaluate``, a second row for a post is an error, and each gold post of ``gold_path`` without a
    row is a post with no prediction (counted in ``missing_posts``).
    """
    from tqdm import tqdm

    from ..evaluation.reading import GoldIndex, collect, image_paths, missing_gold_rows, read_rows
    from ..core.columns import GOLD_COLUMN, SIZES_COLUMN
    path = Path(path)
    space = space or CoordinateSpace.from_env()
    gold = GoldIndex(read_rows(Path(gold_path), progress), str(gold_path)) if gold_path else None
    rows = read_rows(path, progress)
    missing = missing_gold_rows(rows, gold, str(path))
    posts: List[Post] = []
    info = {"rows": len(rows), "unmatched_rows": 0, "parse_failures": 0, "dropped_items": 0,
            "missing_posts": len(missing)}
    for row in tqdm(rows + missing, desc="score posts", unit="post", disable=not progress):
        c = collect([row], gold, space, str(path), entities_space)
        if not c["golds"]:
            info["unmatched_rows"] += 1
            continue
        info["parse_failures"] += c["parse_failures"]
        info["dropped_items"] += c["dropped_items"]
        grow = row if GOLD_COLUMN in row else gold.find(row)
        pid = str(grow.get("mcr_id", row.get("id", row.get("mcr_id", f"line{row['_line']}"))))
        images = image_paths(grow) or image_paths(row)
        image = images[0] if images else None
        if image_dir is not None:
            image = str(Path(image_dir) / (Path(image).name if image else f"{pid}.jpg"))
        sizes = grow.get(SIZES_COLUMN) or row.get(SIZES_COLUMN)
        where = (f"{row['_source']}:{row['_line']} (no prediction row)" if row.get("_missing")
                 else f"{path}:{row['_line']}")
        posts.append(Post(index=len(posts), id=pid, where=where, image=image,
                          size=tuple(sizes[0]) if sizes else None, sentence=c["sentences"][0],
                          gold=c["golds"][0], pred=c["preds"][0], parse_failed=bool(c["parse_failures"])))
    return posts, info


# --------------------------------------------------------------------------- per-post analysis
def span_pairs(pred: Sequence[Entity], gold: Sequence[Entity]) -> List[Pair]:
    """One-to-one pairs (pred index, gold index) with equal normalised spans (type ignored).

    Within a span, located predictions pair with located golds and unlocated with unlocated first,
    then the rest pair off in order: a maximum matching that maximises location-state agreement
    (so the unlocated-unlocated pairs are exactly N's #n-correct, Eq. 26-27).
    """
    by_text: Dict[str, Tuple[List[int], List[int]]] = {}
    for i, p in enumerate(pred):
        by_text.setdefault(normalize_text(p.text), ([], []))[0].append(i)
    for j, g in enumerate(gold):
        by_text.setdefault(normalize_text(g.text), ([], []))[1].append(j)
    out: List[Pair] = []
    for pis, gis in by_text.values():
        pl, pu = [i for i in pis if pred[i].boxes], [i for i in pis if not pred[i].boxes]
        gl, gu = [j for j in gis if gold[j].boxes], [j for j in gis if not gold[j].boxes]
        same = list(zip(pl, gl)) + list(zip(pu, gu))
        rest_p = pl[len(gl):] + pu[len(gu):]
        rest_g = gl[len(pl):] + gu[len(pu):]
        out.extend(same + list(zip(rest_p, rest_g)))
    return sorted(out)


def analyse(pred: Sequence[Entity], gold: Sequence[Entity], sentence: Optional[str]) -> Dict[str, Any]:
    """Counts (`post_counts`), error flags, textual-bias errors, visual-bias errors and the
    located/unlocated confusion of one post (see the module docstring for the definitions)."""
    c = post_counts(pred, gold, sentence)
    pairs = span_pairs(pred, gold)
    conf = {"located_located": 0, "located_unlocated": 0, "unlocated_located": 0, "unlocated_unlocated": 0}
    textual: List[Dict[str, Any]] = []
    problems: List[List[str]] = [[] for _ in pred]
    box_right = 0
    for i, j in pairs:
        p, g = pred[i], gold[j]
        key = f"{'located' if g.boxes else 'unlocated'}_{'located' if p.boxes else 'unlocated'}"
        conf[key] += 1
        if key == "unlocated_located":
            textual.append({"kind": "box_for_text_only", "entity": g.text, "pred": i, "gold": j})
            problems[i].append("box for a text-only entity")
        elif key == "located_unlocated":
            textual.append({"kind": "no_box_for_located", "entity": g.text, "pred": i, "gold": j})
            problems[i].append("no box for a located entity")
        elif key == "located_located":
            if location_correct(p, g):
                box_right += 1
            else:
                problems[i].append("box off (IoU < 0.5)")
        if p.type != g.type:
            problems[i].append(f"wrong type (gold {g.type})")
    matched_p = {i for i, _ in pairs}
    matched_g = {j for _, j in pairs}
    for j, g in enumerate(gold):
        if j not in matched_g and not g.boxes:
            textual.append({"kind": "text_only_missed", "entity": g.text, "pred": None, "gold": j})
    for i, p in enumerate(pred):
        if i not in matched_p and not p.boxes:
            textual.append({"kind": "unlocated_not_gold", "entity": p.text, "pred": i, "gold": None})
    absent = c.get("absent", [])
    for i in absent:
        problems[i].insert(0, "not in the sentence")
    correct = {i for i, _ in c["pairs"]["gmner"]}
    pred_status = []
    for i in range(len(pred)):
        if i in correct:
            pred_status.append("correct")
        elif problems[i]:
            pred_status.append("; ".join(problems[i]))
        else:
            pred_status.append("not a gold entity" if i not in matched_p else "duplicate (not credited)")
    g_counts = c["gmner"]
    return {
        "counts": {t: c[t] for t in ("gmner", "mner", "eeg", "n")},
        "n_count": c.get("n_count"),
        "error": g_counts["correct"] < g_counts["predicted"] or g_counts["correct"] < g_counts["gold"],
        "textual": textual,
        "visual": [{"entity": pred[i].text, "type": pred[i].type, "pred": i} for i in absent],
        "confusion": conf,
        "located_box_right": box_right,
        "unmatched_gold": {"located": sum(1 for j, g in enumerate(gold) if j not in matched_g and g.boxes),
                           "unlocated": sum(1 for j, g in enumerate(gold) if j not in matched_g and not g.boxes)},
        "unmatched_pred": {"located": sum(1 for i, p in enumerate(pred) if i not in matched_p and p.boxes),
                           "unlocated": sum(1 for i, p in enumerate(pred) if i not in matched_p and not p.boxes)},
        "pred_status": pred_status,
        "gold_found": sorted({j for _, j in c["pairs"]["gmner"]}),
    }


def matches(post: Post, only: str) -> bool:
    """Whether ``post`` (analysed) passes the ``--only`` filter."""
    a = post.analysis
    return {"all": True, "errors": a["error"], "textual": bool(a["textual"]), "visual": bool(a["visual"])}[only]


def select_posts(posts: Sequence[Post], only: str = "all", ids: Optional[Sequence[str]] = None,
                 limit: Optional[int] = None) -> List[Post]:
    """Posts passing ``only``, restricted to ``ids`` (each must exist in the file), first ``limit``."""
    if only not in FILTERS:
        raise ValueError(f"--only must be one of {', '.join(FILTERS)}, got {only!r}")
    chosen = [p for p in posts if matches(p, only)]
    if ids:
        known = {p.id for p in posts}
        unknown = [i for i in ids if i not in known]
        if unknown:
            raise ValueError(f"--posts: no post with id {', '.join(unknown)} in the result file")
        wanted = set(ids)
        chosen = [p for p in chosen if p.id in wanted]
    return chosen[:limit] if limit is not None else chosen


def entity_label(e: Entity) -> str:
    """How a picture and a page name an entity: ``text (TYPE)``."""
    return f"{e.text} ({e.type})"


def read_and_analyse(a: argparse.Namespace) -> Tuple[List[Post], Dict[str, int]]:
    """Load the result file named by the parsed shared options and analyse every post."""
    posts, info = load_posts(a.result, a.gold, space_from_args(a), a.entities_space, a.image_dir,
                             progress=not a.no_progress)
    for p in posts:
        p.analysis = analyse(p.pred, p.gold, p.sentence)
    return posts, info

