"""``mcr-swift pictures``: draw chosen posts of a result file -- the image with the gold and the
predicted boxes in two colours, labelled "entity (TYPE)", and the sentence underneath with the gold
and predicted spans underlined -- into one PNG per post and one self-contained HTML page that shows
each picture beside the post's metrics.

"A result file" is whatever ``mcr-swift evaluate`` accepts (swift infer output joined to ``--gold``,
rows carrying ``mcr_gold``, or ``{"id", "entities"}`` / ``{"id", "response"}`` files): rows are read
and scored by `mcr_swift.evaluation.reading.collect` with the same coordinate-space options.

The error kinds a post is filtered on are defined in `mcr_swift.reports.posts` (App. E.3); the
page and the post cards are `mcr_swift.reports.page`.
"""
from __future__ import annotations

import argparse
import functools
import hashlib
import html
import json
import re
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

from ..jsonl import atomic_open, write_json_atomic, write_text_atomic
from ..core.metrics import normalize_text
from ..core.entities import Entity
from .page import html_page, post_card
from ..core.argtypes import positive_int
from ..files import refuse_overwriting_inputs
from .posts import (DEFAULT_WIDTH, FILTERS, Post, add_input_args, entity_label, matches, read_and_analyse,
                    select_posts)

#: Box/underline colours (Okabe-Ito bluish green and vermilion: distinct for colour-blind readers).
GOLD_RGB: Tuple[int, int, int] = (0, 158, 115)
PRED_RGB: Tuple[int, int, int] = (213, 94, 0)
PLACEHOLDER_SIZE = (640, 480)


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
    lists = (("gold", GOLD_RGB, [f"{entity_label(e)} {'box' if e.boxes else 'no box'}"
                                 f"{'' if j in found else ' - not predicted correctly'}"
                                 for j, e in enumerate(post.gold)]),
             ("pred", PRED_RGB, [f"{entity_label(e)} {'box' if e.boxes else 'no box'} - {status[i]}"
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
                labels.append(((x1, y1 if above else y2), entity_label(e), colour, above))
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
    refuse_overwriting_inputs([("result", a.result), ("--gold", a.gold)],
                              [("--out's pictures.json", out / "pictures.json"), ("--out's index.html", out / "index.html")])
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
