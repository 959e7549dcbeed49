"""``mcr-swift pictures``: draw chosen posts of a result file -- the image with the gold and the
predicted boxes in two colours, labelled "entity (TYPE)", and the sentence underneath with the gold
and predicted spans underlined -- into one PNG per post and one self-contained HTML page that shows
each picture beside the post's metrics.

"A result file" is whatever ``mcr-swift evaluate`` accepts (swift infer output joined to ``--gold``,
rows carrying ``mcr_gold``, or ``{"id", "entities"}`` / ``{"id", "response"}`` files): rows are read
and scored by `mcr_swift.evaluation.evaluate.collect` with the same coordinate-space options.

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
  the sentence (`mcr_swift.evaluation.metrics.post_counts`' ``absent``; N-Count counts them).
"""
from __future__ import annotations

import argparse
import functools
import hashlib
import html
import json
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

from ..coords import CoordinateSpace, add_space_args, space_from_args
from ..jsonl import atomic_open, write_json_atomic, write_text_atomic
from ..evaluation.metrics import location_correct, normalize_text, post_counts
from ..entities import Entity

#: Box/underline colours (Okabe-Ito bluish green and vermilion: distinct for colour-blind readers).
GOLD_RGB: Tuple[int, int, int] = (0, 158, 115)
PRED_RGB: Tuple[int, int, int] = (213, 94, 0)
#: Picture width in pixels (images are scaled to it); configurable with ``--width``.
DEFAULT_WIDTH = 640
FILTERS = ("all", "errors", "textual", "visual")
TEXTUAL_KINDS = ("box_for_text_only", "text_only_missed", "no_box_for_located", "unlocated_not_gold")
PLACEHOLDER_SIZE = (640, 480)

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


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1."""
    v = int(text)
    if v < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {v}")
    return v


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

    Each row goes through `mcr_swift.evaluation.evaluate.collect` (so predictions are parsed and mapped exactly
    as ``mcr-swift evaluate`` does); rows with no gold row are counted in ``unmatched_rows``. As in
    ``evaluate``, a second row for a post is an error, and each gold post of ``gold_path`` without a
    row is a post with no prediction (counted in ``missing_posts``).
    """
    from tqdm import tqdm

    from ..evaluation.evaluate import GoldIndex, _image_paths, _read_jsonl, collect, missing_gold_rows
    from ..data.rows import GOLD_COLUMN, SIZES_COLUMN
    path = Path(path)
    space = space or CoordinateSpace.from_env()
    gold = GoldIndex(_read_jsonl(Path(gold_path), progress), str(gold_path)) if gold_path else None
    rows = _read_jsonl(path, progress)
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
        images = _image_paths(grow) or _image_paths(row)
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


# --------------------------------------------------------------------------- drawing
@functools.lru_cache(maxsize=None)
def _font(size: int):
    from matplotlib import font_manager
    from PIL import ImageFont
    return ImageFont.truetype(font_manager.findfont(font_manager.FontProperties(family="DejaVu Sans")), size)


def open_image(post: Post, allow_missing: bool):
    """The post's image as RGB; returns (image, problem): problem is None, "missing" (with
    ``allow_missing``: a grey placeholder) or "unreadable: <reason>" (a file that is not a decodable
    image: always a placeholder saying so, so one bad file does not stop the other posts). Raises
    FileNotFoundError naming the result row for a missing image without ``allow_missing``."""
    from PIL import Image, ImageDraw
    what = None
    if post.image and Path(post.image).is_file():
        try:
            with Image.open(post.image) as im:
                return im.convert("RGB"), None
        except Exception as e:  # not an image, truncated, unsupported format
            what = f"unreadable: {' '.join(str(e).split())}"
    elif not allow_missing:
        what = f"image {post.image} not found" if post.image else "the row names no image"
        raise FileNotFoundError(f"{post.where}: post {post.id}: {what}; pass --image-dir DIR or "
                                f"--allow-missing-images (draws a placeholder)")
    im = Image.new("RGB", tuple(post.size or PLACEHOLDER_SIZE), (200, 200, 200))
    label = f"image {what}" if what else f"image missing: {post.image or '(none named)'}"
    ImageDraw.Draw(im).text((10, 10), label[:120], fill=(60, 60, 60), font=_font(max(12, im.width // 40)))
    return im, what or "missing"


def _char_spans(sentence: str, entities: Sequence[Entity]) -> List[Tuple[int, int]]:
    """Character ranges of the entities in ``sentence`` (first unused occurrence; absent ones skipped)."""
    used: List[Tuple[int, int]] = []
    for e in entities:
        t = normalize_text(e.text)
        if not t:
            continue
        starts = [m.start() for m in re.finditer(re.escape(t), sentence)]
        free = [s for s in starts if all(s + len(t) <= a or s >= b for a, b in used)]
        if free or starts:
            s = (free or starts)[0]
            used.append((s, s + len(t)))
    return used


def _label(draw, xy: Tuple[float, float], text: str, colour, font, extent: Tuple[int, int], above: bool,
           placed: List[Tuple[float, float, float, float]]) -> None:
    """A filled label with white text anchored at a box corner ``xy`` (above or below it), kept inside
    ``extent`` (the drawn image's width and height) and moved away from the ``placed`` labels."""
    x, y = xy
    l, t, r, b = draw.textbbox((0, 0), text, font=font)
    w, h = r - l + 6, b - t + 4
    x = min(max(0, x), max(0, extent[0] - w))
    step = -h if above else h
    y0 = y - h if above else y
    for k in range(8):  # the first free slot stepping away from the box, else the first slot
        yk = min(max(0, y0 + k * step), max(0, extent[1] - h))
        if not any(x < px2 and px < x + w and yk < py2 and py < yk + h for px, py, px2, py2 in placed):
            break
    else:
        yk = min(max(0, y0), max(0, extent[1] - h))
    placed.append((x, yk, x + w, yk + h))
    draw.rectangle((x, yk, x + w, yk + h), fill=colour)
    draw.text((x + 3 - l, yk + 2 - t), text, fill=(255, 255, 255), font=font)


def _wrap(draw, words: Sequence[Tuple[str, Any]], x0: int, y: int, width: int, font, line_h: int):
    """Lay words out left to right with wrapping; yields (word, payload, x, y)."""
    space = draw.textlength(" ", font=font)
    x = x0
    for word, payload in words:
        w = draw.textlength(word, font=font)
        if x > x0 and x + w > width - x0:
            x, y = x0, y + line_h
        yield word, payload, x, y
        x += w + space


def _draw_sentence(draw, sentence: str, gold: Sequence[Entity], pred: Sequence[Entity], y: int,
                   width: int, font) -> int:
    """The sentence, gold spans underlined in GOLD_RGB and predicted spans (lower) in PRED_RGB."""
    size = font.size
    line_h = int(size * 1.9)
    sides = ((_char_spans(sentence, gold), GOLD_RGB, 2), (_char_spans(sentence, pred), PRED_RGB, 7))
    words = [(m.group(), (m.start(), m.end())) for m in re.finditer(r"\S+", sentence)]
    space = draw.textlength(" ", font=font)
    placed = list(_wrap(draw, words, 12, y, width, font, line_h))
    for k, (word, (ws, we), x, yy) in enumerate(placed):
        draw.text((x, yy), word, fill=(20, 20, 20), font=font)
        next_same_line = k + 1 < len(placed) and placed[k + 1][3] == yy
        for spans, colour, off in sides:
            for a, b in spans:
                s, e = max(a, ws), min(b, we)
                if s >= e:
                    continue
                x0 = x + draw.textlength(word[:s - ws], font=font)
                x1 = x + draw.textlength(word[:e - ws], font=font)
                if b > we and next_same_line:
                    x1 += space
                ub = yy + size + off
                draw.rectangle((x0, ub, x1, ub + 2), fill=colour)
    return (placed[-1][3] + line_h) if placed else y


def _entity_text(e: Entity) -> str:
    return f"{e.text} ({e.type})"


def draw_post(post: Post, image, width: int = DEFAULT_WIDTH):
    """The picture of one analysed post: ``image`` (PIL, original size) scaled to ``width`` with gold
    boxes (thick, labels above) and predicted boxes (thin, labels below), then the sentence with
    marked spans and the two entity lists. Returns a PIL RGB image."""
    from PIL import Image, ImageDraw
    h = max(1, round(image.height * width / image.width))
    ref_w, ref_h = post.size or image.size
    sx, sy = width / ref_w, h / ref_h
    status = post.analysis.get("pred_status") or [""] * len(post.pred)
    found = set(post.analysis.get("gold_found", []))
    lists = (("gold", GOLD_RGB, [f"{_entity_text(e)} {'box' if e.boxes else 'no box'}"
                                 f"{'' if j in found else ' - not predicted correctly'}"
                                 for j, e in enumerate(post.gold)]),
             ("pred", PRED_RGB, [f"{_entity_text(e)} {'box' if e.boxes else 'no box'} - {status[i]}"
                                 for i, e in enumerate(post.pred)]))
    texts = [f"{name}: " + (" | ".join(items) if items else "(none)")
             + ("  [response could not be parsed]" if name == "pred" and post.parse_failed else "")
             for name, _, items in lists]
    sentence = normalize_text(post.sentence or "")
    # at most one line per word: a bound on the panel's height (cropped to what is used)
    bound = 80 + 31 * (len(sentence.split()) + 1) + sum(18 * (len(t.split()) + 1) + 24 for t in texts)
    canvas = Image.new("RGB", (width, h + bound), (255, 255, 255))
    canvas.paste(image.resize((width, h)), (0, 0))
    draw = ImageDraw.Draw(canvas)
    labels = []
    for entities, colour, thick, above, n_boxes in ((post.gold, GOLD_RGB, 4, True, None),
                                                    (post.pred, PRED_RGB, 2, False, 1)):
        for e in entities:
            for b in e.boxes[:n_boxes]:  # a prediction's location is its first box (metrics)
                x1, y1, x2, y2 = b[0] * sx, b[1] * sy, b[2] * sx, b[3] * sy
                draw.rectangle((x1, y1, x2, y2), outline=colour, width=thick)
                labels.append(((x1, y1 if above else y2), _entity_text(e), colour, above))
    placed: List[Tuple[float, float, float, float]] = []
    for xy, text, colour, above in labels:  # labels after all boxes, so no box hides a label
        _label(draw, xy, text, colour, _font(13), (width, h), above, placed)
    font, small = _font(16), _font(13)
    y = h + 10
    x = 12
    for name, colour in (("gold", GOLD_RGB), ("prediction", PRED_RGB)):
        draw.rectangle((x, y + 3, x + 12, y + 15), fill=colour)
        draw.text((x + 17, y), name, fill=(20, 20, 20), font=small)
        x += 30 + int(draw.textlength(name, font=small))
    draw.text((x + 10, y), f"post {post.id}", fill=(90, 90, 90), font=small)
    y = _draw_sentence(draw, sentence, post.gold, post.pred, y + 26, width, font)
    for (_, colour, _), text in zip(lists, texts):
        last = y
        for word, _, wx, wy in _wrap(draw, [(w, None) for w in text.split()], 12, y, width, small, 18):
            draw.text((wx, wy), word, fill=colour, font=small)
            last = wy
        y = last + 24
    return canvas.crop((0, 0, width, y + 4))


def _digest(post: Post, width: int, missing: bool) -> str:
    """Digest of what a picture is drawn from ("v": bump it when the drawing changes)."""
    st = Path(post.image).stat() if post.image and not missing else None
    key = {"v": 2, "id": post.id, "image": post.image, "image_stat": [st.st_size, st.st_mtime_ns] if st else None,
           "size": post.size, "sentence": post.sentence, "gold": [e.to_dict() for e in post.gold],
           "pred": [e.to_dict() for e in post.pred], "parse_failed": post.parse_failed, "width": width}
    return hashlib.sha1(json.dumps(key, sort_keys=True).encode()).hexdigest()[:10]


def render_pictures(posts: Sequence[Post], out_dir, width: int = DEFAULT_WIDTH, allow_missing: bool = False,
                    progress: bool = False) -> Tuple[Dict[int, str], Dict[str, int]]:
    """Write one PNG per post under ``out_dir/posts``; returns ({post index: path relative to
    out_dir}, {"drawn", "reused", "missing_images", "unreadable_images"}). A picture whose inputs are
    unchanged is reused (its name carries a digest of them), so an interrupted run resumes. Missing
    images raise before anything is drawn unless ``allow_missing``; an image file that cannot be
    decoded is reported on stderr, drawn as a placeholder and counted, and the other posts go on.
    Each PNG is written atomically (`jsonl.atomic_open`)."""
    from tqdm import tqdm
    out_dir = Path(out_dir)
    missing = {p.index for p in posts if not (p.image and Path(p.image).is_file())}
    if missing and not allow_missing:
        first = next(p for p in posts if p.index in missing)
        open_image(first, False)  # raises with the row named
    (out_dir / "posts").mkdir(parents=True, exist_ok=True)
    rel: Dict[int, str] = {}
    counts = {"drawn": 0, "reused": 0, "missing_images": len(missing), "unreadable_images": 0}
    for post in tqdm(posts, desc="pictures", unit="post", disable=not progress):
        safe = re.sub(r"[^A-Za-z0-9_.-]", "_", post.id)[:60]
        name = f"posts/{post.index:05d}_{safe}_{_digest(post, width, post.index in missing)}.png"
        rel[post.index] = name
        target = out_dir / name
        if target.is_file():
            counts["reused"] += 1
            continue
        image, problem = open_image(post, allow_missing)
        if problem and problem.startswith("unreadable"):
            counts["unreadable_images"] += 1
            print(f"{post.where}: post {post.id}: image {post.image} {problem}; drawn as a placeholder",
                  file=sys.stderr)
        with atomic_open(target, "wb") as f:
            draw_post(post, image, width).save(f, format="PNG")
        counts["drawn"] += 1
    return rel, counts


# --------------------------------------------------------------------------- HTML
CSS = """
body{font-family:system-ui,-apple-system,'DejaVu Sans',sans-serif;margin:16px;color:#222;background:#fff}
h1{font-size:22px;margin:4px 0 8px}h2{font-size:18px;margin:20px 0 8px;border-bottom:1px solid #ccc}
h3{font-size:15px;margin:0 0 6px}.where{color:#777;font-weight:normal;font-size:12px}
.post{display:flex;gap:16px;align-items:flex-start;margin:0 0 18px;padding:10px;border:1px solid #ddd;border-radius:6px}
.post img{flex:none;border:1px solid #ccc}.info{font-size:13px;min-width:300px}
table{border-collapse:collapse;margin:4px 0 8px}td,th{border:1px solid #ccc;padding:2px 7px;text-align:right}
th:first-child,td:first-child{text-align:left}.gold{color:rgb(0,120,88)}.pred{color:rgb(180,75,0)}
.bad{color:#b00}.note{color:#555;font-size:13px}#broken{background:#fdd;padding:6px;border:1px solid #b00}
ul{margin:2px 0 6px;padding-left:18px}
"""

#: Inline script: marks on <body> how many pictures loaded and shows a banner for broken ones.
CHECK_IMAGES_JS = """
window.addEventListener('load', function () {
  var imgs = document.images, ok = 0, bad = [];
  for (var i = 0; i < imgs.length; i++) {
    if (imgs[i].complete && imgs[i].naturalWidth > 0) ok++; else bad.push(imgs[i].getAttribute('src'));
  }
  document.body.setAttribute('data-images', String(imgs.length));
  document.body.setAttribute('data-images-ok', String(ok));
  if (bad.length) {
    var d = document.getElementById('broken');
    d.textContent = bad.length + ' picture(s) could not be loaded (keep the posts/ folder next to this page): '
      + bad.join(', ');
    d.hidden = false;
  }
});
"""


def html_page(title: str, body: str) -> str:
    """A self-contained page: inline CSS and script, no external resources."""
    return (f"<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>{html.escape(title)}</title>"
            f"<style>{CSS}</style></head>\n<body>\n<div id=\"broken\" hidden></div>\n{body}\n"
            f"<script>{CHECK_IMAGES_JS}</script>\n</body></html>\n")


def _pct(x: float) -> str:
    return f"{100 * x:.1f}"


def post_card(post: Post, picture: Optional[str], width: int = DEFAULT_WIDTH) -> str:
    """One post's picture beside its metrics (counts and P/R/F1 of GMNER, MNER, EEG, N; N-Count;
    the textual- and visual-bias errors; the entity lists)."""
    from ..evaluation.metrics import prf
    a, esc = post.analysis, html.escape
    rows = []
    for key, name in (("gmner", "GMNER"), ("mner", "MNER"), ("eeg", "EEG"), ("n", "N (textual)")):
        c = a["counts"][key]
        r = prf(c["correct"], c["predicted"], c["gold"])
        rows.append(f"<tr><td>{name}</td><td>{c['correct']}</td><td>{c['predicted']}</td><td>{c['gold']}</td>"
                    f"<td>{_pct(r['f1'])}</td></tr>")
    parts = [f"<h3>post {esc(post.id)} <span class=\"where\">{esc(post.where)}</span></h3>",
             "<table><tr><th></th><th>correct</th><th>pred</th><th>gold</th><th>F1 %</th></tr>"
             + "".join(rows) + "</table>"]
    if a["n_count"] is not None:
        parts.append(f"<div>N-Count (visual bias): <b>{a['n_count']}</b> of {len(post.pred)} predictions "
                     f"not in the sentence</div>")
    if post.parse_failed:
        parts.append("<div class=\"bad\">the response could not be parsed (scored as no prediction)</div>")
    if a["textual"]:
        items = "".join(f"<li>{esc(t['kind'].replace('_', ' '))}: {esc(t['entity'])}</li>" for t in a["textual"])
        parts.append(f"<div>textual-bias errors ({len(a['textual'])}):<ul>{items}</ul></div>")
    if a["visual"]:
        items = "".join(f"<li>{esc(v['entity'])} ({esc(v['type'])})</li>" for v in a["visual"])
        parts.append(f"<div>visual-bias errors ({len(a['visual'])}), not in the sentence:<ul>{items}</ul></div>")
    gold = "".join(f"<li>{esc(_entity_text(e))} {'box' if e.boxes else 'no box'}</li>" for e in post.gold)
    pred = "".join(f"<li>{esc(_entity_text(e))} {'box' if e.boxes else 'no box'}: {esc(s)}</li>"
                   for e, s in zip(post.pred, a["pred_status"]))
    parts.append(f"<div class=\"gold\">gold<ul>{gold or '<li>(none)</li>'}</ul></div>"
                 f"<div class=\"pred\">prediction<ul>{pred or '<li>(none)</li>'}</ul></div>")
    img = (f"<img src=\"{esc(picture)}\" alt=\"post {esc(post.id)}\" width=\"{width}\">" if picture
           else "")
    return (f"<section class=\"post\" id=\"post-{esc(post.id)}\">{img}"
            f"<div class=\"info\">{''.join(parts)}</div></section>")


# --------------------------------------------------------------------------- command
def read_and_analyse(a: argparse.Namespace) -> Tuple[List[Post], Dict[str, int]]:
    """Load the result file named by the parsed shared options and analyse every post."""
    posts, info = load_posts(a.result, a.gold, space_from_args(a), a.entities_space, a.image_dir,
                             progress=not a.no_progress)
    for p in posts:
        p.analysis = analyse(p.pred, p.gold, p.sentence)
    return posts, info


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="mcr-swift pictures", description=__doc__.splitlines()[0])
    add_input_args(p)
    p.add_argument("--out", default=None, help="output folder (default <result>.pictures)")
    p.add_argument("--only", choices=FILTERS, default="all",
                   help="errors: not GMNER-perfect; textual: an N-Pre/N-Rec error; visual: a prediction "
                        "not in the sentence")
    p.add_argument("--posts", default=None, help="comma-separated post ids")
    p.add_argument("--limit", type=positive_int, default=None, help="at most this many posts (file order)")
    a = p.parse_args(argv)
    out = Path(a.out or f"{a.result}.pictures")
    try:
        posts, info = read_and_analyse(a)
        ids = [i.strip() for i in a.posts.split(",") if i.strip()] if a.posts else None
        chosen = select_posts(posts, a.only, ids, a.limit)
        rel, counts = render_pictures(chosen, out, a.width, a.allow_missing_images, progress=not a.no_progress)
    except (ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    n_match = {f: sum(1 for q in posts if matches(q, f)) for f in FILTERS[1:]}
    head = (f"<h1>{html.escape(Path(a.result).name)}: {len(chosen)} post(s), filter {a.only}</h1>"
            f"<p class=\"note\">{len(posts)} posts in the file; {n_match['errors']} with errors, "
            f"{n_match['textual']} with textual-bias errors, {n_match['visual']} with visual-bias errors. "
            f"Boxes and underlines: <span class=\"gold\">gold</span> (thick, labels above), "
            f"<span class=\"pred\">prediction</span> (thin, labels below).</p>")
    cards = "\n".join(post_card(q, rel[q.index], a.width) for q in chosen)
    write_text_atomic(out / "index.html", html_page(f"pictures: {Path(a.result).name}", head + cards))
    summary = {"file": str(a.result), "out": str(out), "filter": a.only, "posts": len(posts),
               "selected": len(chosen), "matching": n_match, **counts, **info,
               "pictures": [{"id": q.id, "where": q.where, "picture": rel[q.index], "error": q.analysis["error"],
                             "textual": len(q.analysis["textual"]), "visual": len(q.analysis["visual"])}
                            for q in chosen]}
    write_json_atomic(out / "pictures.json", summary)
    print(f"{len(chosen)} of {len(posts)} posts ({a.only}): {counts['drawn']} drawn, {counts['reused']} reused, "
          f"{counts['missing_images']} missing and {counts['unreadable_images']} unreadable images (placeholders); "
          f"{info['missing_posts']} gold posts without a row; {info['unmatched_rows']} rows without gold, "
          f"{info['parse_failures']} unparsed responses\npage: {out / 'index.html'}")
    return 0
