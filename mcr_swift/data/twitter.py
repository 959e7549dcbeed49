"""Reader for the Twitter-GMNER release (Twitter10000 v2.0, Yu et al. 2023; also the v1 release).

`load_twitter_gmner` reads ``txt/<split>.txt`` (CoNLL) and ``xml/<IMGID>.xml`` (Pascal VOC) into `Sample`s with
a `ReadReport`; malformed input raises `GMNERFormatError` naming file and line (``on_error="skip"``: skipped and
counted). Release layout, BIO handling, errors and counts: docs/data.md.
"""
from __future__ import annotations

import os
import warnings
import xml.etree.ElementTree as ET
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Tuple, Union

from ..files import BadImage, check_image, plain_name
from ..core.entities import ENTITY_TYPES, Entity, Sample

SPLITS = ("train", "dev", "test")
ON_ERROR = ("raise", "skip")
#: How an I- tag that does not continue an entity of its type is read: "conlleval" (begins a new
#: entity, counted as a repair; the conlleval script's rule) or "strict" (malformed input).
TAG_MODES = ("conlleval", "strict")
CONLLEVAL_REPAIR = "I- tags beginning an entity (conlleval)"


class GMNERFormatError(ValueError):
    """Malformed Twitter-GMNER input; the message names the file and line or xml object."""


@dataclass
class ReadReport:
    """What a read produced and what it skipped, repaired or could not match."""

    split: str = ""
    posts: int = 0
    entities: int = 0
    located_entities: int = 0
    boxes: int = 0
    skipped: Counter = field(default_factory=Counter)
    repaired: Counter = field(default_factory=Counter)
    unmatched_names: List[Tuple[str, str]] = field(default_factory=list)
    messages: List[str] = field(default_factory=list)

    def note(self, message: str, limit: int = 50) -> None:
        if len(self.messages) < limit:
            self.messages.append(message)

    def summary(self) -> str:
        parts = [f"{self.split}: {self.posts} posts, {self.entities} entities "
                 f"({self.located_entities} with a box, {self.boxes} boxes)"]
        if self.unmatched_names:
            parts.append(f"{len(self.unmatched_names)} xml names matched no entity")
        for k, v in sorted(self.skipped.items()):
            parts.append(f"skipped {v} {k}")
        for k, v in sorted(self.repaired.items()):
            parts.append(f"repaired {v} {k}")
        return "; ".join(parts)

    def as_dict(self) -> Dict:
        return {"split": self.split, "posts": self.posts, "entities": self.entities,
                "located_entities": self.located_entities, "boxes": self.boxes,
                "skipped": dict(self.skipped), "repaired": dict(self.repaired),
                "unmatched_names": [list(x) for x in self.unmatched_names]}


class SampleList(list):
    """A plain list of `Sample` with the read's `ReadReport` attached as ``.report``."""

    report: ReadReport


class _Reader:
    def __init__(self, root: Path, image_dir: Optional[Path], on_error: str, report: ReadReport,
                 tags: str = "conlleval"):
        if on_error not in ON_ERROR:
            raise ValueError(f"on_error must be one of {ON_ERROR}, got {on_error!r}")
        if tags not in TAG_MODES:
            raise ValueError(f"tags must be one of {TAG_MODES}, got {tags!r}")
        self.root, self.image_dir, self.on_error, self.report = root, image_dir, on_error, report
        self.tags, self.verify_images = tags, False

    def problem(self, kind: str, message: str) -> None:
        """Raise, or count the skip (the caller then skips the unit)."""
        if self.on_error == "raise":
            raise GMNERFormatError(message)
        self.report.skipped[kind] += 1
        self.report.note(message)

    # ---------------------------------------------------------------- txt
    def posts(self, txt: Path):
        """Yield (imgid, first line number, [(token, tag, line_no)]) per post."""
        imgid, start, rows = None, 0, []
        bad_post = False
        with open(txt, "rb") as f:
            for no, raw_bytes in enumerate(f, 1):
                try:
                    raw = raw_bytes.decode("utf-8")
                except UnicodeDecodeError as e:  # not a skippable unit: the file is not the release's text
                    raise GMNERFormatError(f"{txt}:{no}: not UTF-8 text (byte 0x{raw_bytes[e.start]:02x} at "
                                           f"column {e.start + 1})") from None
                line = raw.rstrip("\r\n")
                if not line.strip():
                    if imgid is not None and not bad_post:
                        yield imgid, start, rows
                    imgid, rows, bad_post = None, [], False
                    continue
                if line.startswith("IMGID:"):
                    if imgid is not None and not bad_post:
                        yield imgid, start, rows  # tolerate a missing blank line
                    imgid, start, rows, bad_post = line[6:].strip(), no, [], False
                    if not imgid:
                        self.problem("posts without IMGID", f"{txt}:{no}: empty IMGID")
                        bad_post = True
                    else:
                        try:  # the id names <id>.xml and <id>.jpg: it must not leave those folders
                            plain_name(imgid, "IMGID")
                        except ValueError as e:
                            self.problem("posts with an IMGID that is not a plain file name", f"{txt}:{no}: {e}")
                            bad_post = True
                    continue
                if imgid is None:
                    if not bad_post:
                        self.problem("posts without IMGID",
                                     f"{txt}:{no}: token line before any 'IMGID:<id>' line: {line[:60]!r}")
                        bad_post = True
                    continue
                if "\t" not in line:
                    self.problem("lines without a tab",
                                 f"{txt}:{no}: expected 'token<TAB>tag', got {line[:60]!r}")
                    continue
                token, tag = line.rsplit("\t", 1)
                if not token.strip():  # an empty span text no answer could match (and a hole in the sentence)
                    self.problem("lines with an empty token",
                                 f"{txt}:{no}: empty token before the tag {tag.strip()!r}")
                    continue
                rows.append((token, tag.strip(), no))
        if imgid is not None and not bad_post:
            yield imgid, start, rows

    def spans(self, txt: Path, rows) -> Tuple[List[str], List[str], List[Tuple[str, str]]]:
        tokens, labels, entities = [], [], []
        cur: Optional[List] = None
        for token, tag, no in rows:
            tokens.append(token)
            if tag == "O":
                labels.append(tag)
                cur = None
                continue
            prefix, _, etype = tag.partition("-")
            if prefix not in ("B", "I") or etype not in ENTITY_TYPES:
                self.problem("unknown tags", f"{txt}:{no}: unknown tag {tag!r} (expected O, B-/I- "
                                             f"of {', '.join(ENTITY_TYPES)})")
                labels.append("O")
                cur = None
                continue
            if prefix == "I" and (cur is None or cur[1] != etype) and self.tags == "conlleval":
                # conlleval: an I- after O or after another type begins a new entity.
                self.report.repaired[CONLLEVAL_REPAIR] += 1
                after = "after O" if cur is None else f"after {cur[1]}"
                self.report.note(f"{txt}:{no}: tag {tag} {after} read as B-{etype}")
                prefix, tag = "B", f"B-{etype}"
            if prefix == "B":
                cur = [[token], etype]
                entities.append(cur)
            elif cur is None or cur[1] != etype:
                after = "after O" if cur is None else f"after {cur[1]}"
                self.problem("I- tags with no B-", f"{txt}:{no}: tag {tag} {after} has no B-{etype}")
                labels.append("O")
                cur = None
                continue
            else:
                cur[0].append(token)
            labels.append(tag)
        return tokens, labels, [(" ".join(t), ty) for t, ty in entities]

    # ---------------------------------------------------------------- xml
    def xml(self, imgid: str):
        """(size or None, {name: [boxes]}) of a post's xml; (None, {}) when there is none.
        Returns False when the xml is unreadable and skipped."""
        path = self.root / "xml" / f"{imgid}.xml"
        if not path.exists():
            return None, {}
        try:
            root = ET.parse(path).getroot()
            size = root.find("size")
            w = int(float(size.find("width").text))
            h = int(float(size.find("height").text))
            if w <= 0 or h <= 0:
                raise ValueError(f"non-positive image size {w}x{h}")
        except Exception as e:  # ParseError, missing nodes, bad numbers
            self.problem("unreadable xml files", f"{path}: unreadable Pascal-VOC xml: {e}")
            return False
        names: Dict[str, List[Tuple[float, float, float, float]]] = {}
        for i, obj in enumerate(root.findall("object"), 1):
            try:
                name = (obj.find("name").text or "").strip()
                bb = obj.find("bndbox")
                x1, y1, x2, y2 = (float(bb.find(k).text) for k in ("xmin", "ymin", "xmax", "ymax"))
            except Exception as e:
                self.problem("unreadable xml objects", f"{path}: object {i}: unreadable: {e}")
                continue
            if x2 <= x1 or y2 <= y1:
                self.problem("boxes with x2<=x1 or y2<=y1",
                             f"{path}: object {i} ({name!r}): box ({x1}, {y1}, {x2}, {y2}) has "
                             f"x2<=x1 or y2<=y1")
                continue
            cx1, cy1, cx2, cy2 = max(x1, 0.0), max(y1, 0.0), min(x2, float(w)), min(y2, float(h))
            if (cx1, cy1, cx2, cy2) != (x1, y1, x2, y2):
                self.report.repaired["boxes clamped to the image"] += 1
                if cx2 <= cx1 or cy2 <= cy1:
                    self.problem("boxes outside the image", f"{path}: object {i} ({name!r}) lies "
                                                            f"outside the {w}x{h} image")
                    continue
            names.setdefault(name, []).append((cx1, cy1, cx2, cy2))
        return (w, h), names

    # ---------------------------------------------------------------- images
    def image(self, imgid: str, xml_size):
        """(path, size) of the post's image; False when it is missing and skipped."""
        if self.image_dir is None:
            return f"{imgid}.jpg", xml_size
        path = self.image_dir / f"{imgid}.jpg"
        if not path.is_file():
            self.problem("posts with a missing image", f"{path}: image of post {imgid} not found")
            return False
        try:
            size = check_image(path, full=self.verify_images)
        except BadImage as e:
            self.problem("posts with an unreadable image", str(e))
            return False
        return str(path), size


def load_twitter_gmner(root: Union[str, os.PathLike], split: str, image_dir=None, *,
                       on_error: str = "raise", limit: Optional[int] = None, tags: str = "conlleval",
                       verify_images: bool = False) -> SampleList:
    """Read one split of Twitter-GMNER into a list of `Sample` (boxes in original-image pixels).

    ``root`` holds ``txt/`` and ``xml/``; ``split`` is train, dev or test (or the stem of any
    ``txt/<split>.txt``); ``image_dir`` is the folder of ``<IMGID>.jpg`` images: when given, each
    image must exist (its real size is used), otherwise ``images`` holds the bare file name and
    the size comes from the xml (None for posts without xml). ``on_error="skip"`` skips malformed
    units instead of raising; ``limit`` stops after that many posts. ``tags``: "conlleval"
    (default) or "strict", how an I- tag that continues no entity of its type is read (module
    docstring). ``verify_images``: decode every image fully (a truncated JPEG is then refused as
    unreadable), not only its header. The result is a list with a `ReadReport` in ``.report``.
    """
    root = Path(root)
    txt = root / "txt" / f"{plain_name(split, 'split')}.txt"
    if not txt.is_file():
        raise FileNotFoundError(f"{txt}: no such split file (expected {root}/txt/<split>.txt, "
                                f"splits: {', '.join(SPLITS)})")
    report = ReadReport(split=split)
    reader = _Reader(root, None if image_dir is None else Path(image_dir), on_error, report, tags)
    reader.verify_images = verify_images
    out = SampleList()
    seen_ids = set()
    for imgid, start, rows in reader.posts(txt):
        if limit is not None and len(out) >= limit:
            break
        tokens, labels, spans = reader.spans(txt, rows)
        if not tokens:
            reader.problem("posts without tokens", f"{txt}:{start}: post IMGID:{imgid} has no tokens")
            continue
        if imgid in seen_ids:
            report.repaired["duplicate post ids (kept both)"] += 1
        seen_ids.add(imgid)
        xml = reader.xml(imgid)
        if xml is False:
            continue
        xml_size, names = xml
        img = reader.image(imgid, xml_size)
        if img is False:
            continue
        image_path, size = img
        if xml_size is not None and size is not None and tuple(size) != tuple(xml_size):
            # The real image differs from the annotation's size: rescale boxes to the real image.
            report.repaired["boxes rescaled to the real image size"] += sum(map(len, names.values()))
            sx, sy = size[0] / xml_size[0], size[1] / xml_size[1]
            names = {n: [(b[0] * sx, b[1] * sy, b[2] * sx, b[3] * sy) for b in bs]
                     for n, bs in names.items()}
        entity_texts = {t for t, _ in spans}
        for name in names:
            if name not in entity_texts:
                report.unmatched_names.append((imgid, name))
        entities = tuple(Entity(t, ty, tuple(names.get(t, ()))) for t, ty in spans)
        report.posts += 1
        report.entities += len(entities)
        report.located_entities += sum(1 for e in entities if e.boxes)
        report.boxes += sum(len(e.boxes) for e in entities)
        out.append(Sample(id=imgid, tokens=tokens, entities=entities, images=(image_path,),
                          image_sizes=(size,), labels=labels))
    out.report = report
    if report.unmatched_names:
        warnings.warn(f"{txt}: {len(report.unmatched_names)} xml <name>s match no entity of their "
                      f"post (see .report.unmatched_names)", stacklevel=2)
    return out
