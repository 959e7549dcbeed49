"""Reader for gRefCOCO, the data of GREC (generalized referring expression comprehension, He et al.
2023), used by the paper for visual grounding (Sec. 5.3, Table 2; App. E.1, E.3 "VG").

One sample per referring sentence; its one entity is the expression with the target box or None;
multi-target refs removed (App. E.1); the pickle is read by an unpickler that refuses every class.
An older download (train and val only) reads the splits present; an empty sentence or a referenced box
of no area is skipped and counted; `release_info` records what identifies the release. Release layout,
published counts and each quirk's handling: docs/data.md.
"""
from __future__ import annotations

import hashlib
import json
import os
import pickle
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

from ..prompts import task_instruction
from .rows import sample_to_row
from .twitter import ON_ERROR, ReadReport, SampleList
from ..core.entities import Box, Entity, Sample

SPLITS = ("train", "val", "testA", "testB")
#: Report keys of the two skips the release needs (not malformed input: never raised).
EMPTY_SENTENCE = "sentences with an empty text"
NO_AREA = "refs whose target box has no area"
#: What `GRefCOCO.samples` does with a multi-target ref: remove it (App. E.1) or keep every box.
MULTI_TARGET = ("remove", "keep")
#: Looked up in this order under ``root`` (JSON first: it cannot carry code).
REFS_FILES = ("grefs(unc).json", "grefs(unc).p")
INSTANCES_FILE = "instances.json"
#: The answer schema's type for a referring expression (not a named entity; the paper is silent).
DEFAULT_TYPE = "OTHER"
#: Which sentence field is the expression: ``sent`` (the cleaned text the GREC loaders use) or ``raw``.
TEXT_FIELDS = ("sent", "raw")
#: Training samples drawn from the one-/no-target train sentences (App. E.1, Table 5).
DEFAULT_TRAIN_SIZE = 14000
TASK = "grec"
#: The splits of the 2023-08-29 release; earlier downloads have train and val only.
OLD_SPLITS = ("train", "val")
#: Table 5 of the paper: one-/no-target sentences after App. E.1's filter (val; testA + testB).
PAPER_COUNTS = {"val": 5309, "testA+testB": 19066}
#: RefCOCO's ref ``file_name``: the COCO image name with ``_<n>`` before ``.jpg``.
SUFFIXED_NAME = re.compile(r"^(COCO_[a-z]+\d{4}_\d{12})_\d+(\.jpg)$")


class GRECFormatError(ValueError):
    """Malformed gRefCOCO input; the message names the file, ref id and field."""


class _NoArea(ValueError):
    """A referenced box of no area (w or h not > 0): the release holds such boxes; skipped and counted."""


def coco_file_name(name: str) -> str:
    """The COCO image a ref's ``file_name`` names: ``COCO_train2014_<12 digits>_<n>.jpg`` (RefCOCO's
    suffixed form) -> ``COCO_train2014_<12 digits>.jpg``; any other name unchanged."""
    m = SUFFIXED_NAME.match(str(name))
    return m.group(1) + m.group(2) if m else str(name)


@dataclass
class GRECReport(ReadReport):
    """`ReadReport` for GREC: ``posts`` counts samples (sentences), ``entities`` too."""

    refs: int = 0
    no_target: int = 0
    one_target: int = 0
    multi_target: int = 0
    removed_multi_target_refs: int = 0
    removed_multi_target_sentences: int = 0
    #: sentences not read because their text is empty or their ref's box has no area
    skipped_sentences: int = 0

    def summary(self) -> str:
        kept = f", {self.multi_target} multi-target samples kept" if self.multi_target else ""
        return (super().summary() + f"; {self.refs} refs read, {self.no_target} no-target and "
                f"{self.one_target} one-target samples{kept}; removed {self.removed_multi_target_refs} "
                f"multi-target refs ({self.removed_multi_target_sentences} sentences, App. E.1)")

    def as_dict(self) -> Dict:
        return {**super().as_dict(), "refs": self.refs, "no_target": self.no_target,
                "one_target": self.one_target, "multi_target": self.multi_target,
                "removed_multi_target_refs": self.removed_multi_target_refs,
                "removed_multi_target_sentences": self.removed_multi_target_sentences,
                "skipped_sentences": self.skipped_sentences}


class _PlainUnpickler(pickle.Unpickler):
    """Loads only pickle's built-in containers and scalars; any class reference is refused."""

    def find_class(self, module: str, name: str):  # also called by `_check_pickle` (self None)
        raise pickle.UnpicklingError(f"the pickle refers to {module}.{name}; only plain lists, dicts, "
                                     f"strings and numbers are read (use grefs(unc).json instead)")


#: The pickle opcodes of plain data (lists, dicts, tuples, sets, strings, bytes, numbers, memo): all a
#: refs file needs. Anything else (BUILD, REDUCE, NEWOBJ, GLOBAL, PERSID, out-of-band buffers...) is
#: refused by `_check_pickle` before anything is built.
_PLAIN_OPCODES = frozenset(
    "PROTO FRAME STOP MARK POP POP_MARK DUP NONE NEWTRUE NEWFALSE INT BININT BININT1 BININT2 LONG LONG1 "
    "LONG4 FLOAT BINFLOAT STRING BINSTRING SHORT_BINSTRING BINBYTES SHORT_BINBYTES BINBYTES8 BYTEARRAY8 "
    "UNICODE SHORT_BINUNICODE BINUNICODE BINUNICODE8 EMPTY_LIST APPEND APPENDS LIST EMPTY_TUPLE TUPLE "
    "TUPLE1 TUPLE2 TUPLE3 EMPTY_DICT DICT SETITEM SETITEMS EMPTY_SET ADDITEMS FROZENSET GET BINGET "
    "LONG_BINGET PUT BINPUT LONG_BINPUT MEMOIZE".split())


def _check_pickle(data: bytes) -> None:
    """Walk the opcodes of ``data`` without building anything: every counted length (a string's,
    bytes', a long's) must fit in the bytes that are left -- a huge length is refused here instead of
    being allocated -- and every opcode must be plain data (`_PLAIN_OPCODES`). ValueError otherwise."""
    import io
    import pickletools
    strings: List[str] = []  # the last two strings: STACK_GLOBAL's module and name
    for op, arg, pos in pickletools.genops(io.BytesIO(data)):
        if isinstance(arg, str):
            strings = (strings + [arg])[-2:]
        if op.name in ("GLOBAL", "STACK_GLOBAL"):  # refused, naming the class
            module, name = (arg.split(" ", 1) if op.name == "GLOBAL" else (["?", "?"] + strings)[-2:])
            _PlainUnpickler.find_class(None, module, name)  # type: ignore[arg-type]
        if op.name not in _PLAIN_OPCODES:
            raise pickle.UnpicklingError(f"opcode {op.name} at byte {pos} is not plain data; only lists, "
                                         f"dicts, strings and numbers are read (use grefs(unc).json instead)")


def read_refs(path: Union[str, os.PathLike]) -> List[Dict[str, Any]]:
    """The list of refs from ``grefs(unc).json`` or the pickle ``grefs(unc).p`` (checked by
    `_check_pickle` first, then read by an unpickler that refuses every class)."""
    import io
    path = Path(path)
    try:
        if path.suffix == ".json":
            with open(path, encoding="utf-8") as f:
                refs = json.load(f)
        else:
            data = path.read_bytes()
            _check_pickle(data)
            refs = _PlainUnpickler(io.BytesIO(data), fix_imports=True, encoding="utf-8").load()
    except (ValueError, pickle.UnpicklingError, EOFError, AttributeError, TypeError, IndexError, KeyError,
            OverflowError, MemoryError, RecursionError) as e:  # bad bytes, whatever the opcode that hit them
        raise GRECFormatError(f"{path}: unreadable refs file: {e}") from None
    if not isinstance(refs, list):
        raise GRECFormatError(f"{path}: the refs file must hold a list of refs, got {type(refs).__name__}")
    return refs


def find_refs_file(root: Union[str, os.PathLike]) -> Path:
    root = Path(root)
    for name in REFS_FILES:
        if (root / name).is_file():
            return root / name
    raise FileNotFoundError(f"{root}: no {' or '.join(REFS_FILES)} (the gRefCOCO release folder)")


def _index(items: Any, path: Path, key: str, fields: Sequence[str]) -> Dict[Any, Dict[str, Any]]:
    if not isinstance(items, list):
        raise GRECFormatError(f"{path}: field {key!r} must be a list")
    out = {}
    for i, it in enumerate(items):
        if not isinstance(it, dict) or any(f not in it for f in fields):
            raise GRECFormatError(f"{path}: {key}[{i}] must be an object with {', '.join(fields)}")
        out[it["id"]] = it
    return out


def _box(ann: Mapping[str, Any]) -> Box:
    """COCO [x, y, w, h] -> (x1, y1, x2, y2); ValueError if it is not 4 numbers with w, h > 0."""
    b = ann.get("bbox")
    if (not isinstance(b, (list, tuple)) or len(b) != 4
            or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in b)):
        raise ValueError(f"bbox must be [x, y, w, h], got {b!r:.60}")
    x, y, w, h = (float(v) for v in b)
    if not (w > 0 and h > 0):
        raise _NoArea(f"bbox {list(b)} has no area (w, h must be > 0)")
    return (x, y, x + w, y + h)


class GRefCOCO:
    """gRefCOCO's refs and COCO instances, read once; `samples` gives one split's `Sample`s."""

    def __init__(self, refs: List[Dict[str, Any]], instances: Mapping[str, Any], refs_path: Path,
                 instances_path: Path):
        self.refs, self.refs_path, self.instances_path = refs, Path(refs_path), Path(instances_path)
        if not isinstance(instances, dict):
            raise GRECFormatError(f"{instances_path}: must be a COCO object with 'images' and 'annotations'")
        for key in ("images", "annotations"):
            if key not in instances:
                raise GRECFormatError(f"{instances_path}: no {key!r} list")
        self.images = _index(instances["images"], self.instances_path, "images",
                             ("id", "file_name", "width", "height"))
        self.anns = _index(instances["annotations"], self.instances_path, "annotations",
                           ("id", "image_id", "bbox"))

    @classmethod
    def load(cls, root: Union[str, os.PathLike], refs_file=None, instances_file=None) -> "GRefCOCO":
        """Read ``root/grefs(unc).json`` (or ``.p``) and ``root/instances.json``; either can be given."""
        root = Path(root)
        refs_path = Path(refs_file) if refs_file else find_refs_file(root)
        instances_path = Path(instances_file) if instances_file else root / INSTANCES_FILE
        if not instances_path.is_file():
            raise FileNotFoundError(f"{instances_path}: COCO instances file not found (gRefCOCO's "
                                    f"{INSTANCES_FILE})")
        try:
            with open(instances_path, encoding="utf-8") as f:
                instances = json.load(f)
        except ValueError as e:
            raise GRECFormatError(f"{instances_path}: not valid JSON: {e}") from None
        return cls(read_refs(refs_path), instances, refs_path, instances_path)

    def splits(self) -> List[str]:
        return sorted({str(r.get("split")) for r in self.refs if isinstance(r, dict)})

    def present_splits(self, wanted: Sequence[str] = SPLITS) -> List[str]:
        """The splits of ``wanted`` that the refs file has, in ``wanted``'s order."""
        have = set(self.splits())
        return [s for s in wanted if s in have]

    def release_info(self) -> Dict[str, Any]:
        """What identifies the download (ids do not join across versions): split names, refs and
        sentences per split, the refs file's name and SHA-256, and which release it looks like."""
        refs, sents = Counter(), Counter()
        for r in self.refs:
            if isinstance(r, dict):
                refs[str(r.get("split"))] += 1
                sents[str(r.get("split"))] += len(r["sentences"]) if isinstance(r.get("sentences"), list) else 0
        h = hashlib.sha256()
        with open(self.refs_path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
        splits = self.splits()
        if set(SPLITS) <= set(splits):
            looks = "the 2023-08-29 release (train, val, testA, testB)"
        elif set(splits) == set(OLD_SPLITS):
            looks = ("a download from before 2023-08-29 (train and val only; that release renumbered some "
                     "ref_id / sent_id values and added testA / testB)")
        else:
            looks = f"not a known release layout (splits {', '.join(splits)})"
        return {"refs_file": self.refs_path.name, "sha256": h.hexdigest(), "splits": splits,
                "refs": dict(refs), "sentences": dict(sents), "looks_like": looks,
                "complete": set(SPLITS) <= set(splits)}

    def samples(self, split: str, image_dir=None, *, on_error: str = "raise", limit: Optional[int] = None,
                text_field: str = "sent", entity_type: str = DEFAULT_TYPE, multi_target: str = "remove"
                ) -> SampleList:
        """One sample per referring sentence of ``split`` (train, val, testA, testB).

        With ``image_dir`` (COCO train2014) every image must exist and its real size is used;
        without it ``images`` holds the COCO file name and the size comes from instances.json.
        ``limit`` stops after that many samples. ``multi_target``: "remove" (default, App. E.1) or
        "keep" (the expression's entity has every target box: for scoring with gRefCOCO's protocol,
        `metrics.grec_benchmark_metrics`). The list carries a `GRECReport` in ``.report``.
        """
        if multi_target not in MULTI_TARGET:
            raise ValueError(f"multi_target must be one of {MULTI_TARGET}, got {multi_target!r}")
        if on_error not in ON_ERROR:
            raise ValueError(f"on_error must be one of {ON_ERROR}, got {on_error!r}")
        if text_field not in TEXT_FIELDS:
            raise ValueError(f"text_field must be one of {TEXT_FIELDS}, got {text_field!r}")
        if split not in self.splits():
            raise GRECFormatError(f"{self.refs_path}: no ref of split {split!r}; splits present: "
                                  f"{', '.join(self.splits())} ({self.release_info()['looks_like']})")
        image_dir = None if image_dir is None else Path(image_dir)
        report = GRECReport(split=split)
        sizes: Dict[str, Any] = {}  # file name -> (path, real size) or an error message
        out = SampleList()

        def problem(kind: str, message: str) -> None:
            if on_error == "raise":
                raise GRECFormatError(message)
            report.skipped[kind] += 1
            report.note(message)

        for idx, ref in enumerate(self.refs):
            if limit is not None and len(out) >= limit:
                break
            if not isinstance(ref, dict):
                problem("malformed refs", f"{self.refs_path}: ref #{idx} is not an object")
                continue
            if ref.get("split") != split:
                continue
            where = f"{self.refs_path}: ref {ref.get('ref_id', f'#{idx}')}"
            try:
                target = self._target(ref, where, keep_multi=multi_target == "keep")
            except _NoArea as e:  # the release has such boxes: skipped and counted, whatever on_error
                report.skipped[NO_AREA] += 1
                report.skipped_sentences += len(ref["sentences"])
                report.note(f"{where}: {e}")
                continue
            except ValueError as e:
                problem("malformed refs", f"{where}: {e}")
                continue
            sentences = ref["sentences"]
            report.refs += 1
            if target == "multi":
                report.removed_multi_target_refs += 1
                report.removed_multi_target_sentences += len(sentences)
                continue
            image, boxes = target
            located = self._image(image, image_dir, sizes)
            if isinstance(located, str):
                problem("refs with a missing or unreadable image", f"{where}: {located}")
                continue
            path, size = located
            boxes = tuple(self._fit(b, image, size, report) for b in boxes)
            for k, sent in enumerate(sentences):
                if limit is not None and len(out) >= limit:
                    break
                text = sent.get(text_field) if isinstance(sent, dict) else None
                if isinstance(text, str) and not text.split() and "sent_id" in sent:
                    # the release has sentences whose text is empty: skipped and counted, whatever on_error
                    report.skipped[EMPTY_SENTENCE] += 1
                    report.skipped_sentences += 1
                    report.note(f"{where}: sentences[{k}] (sent_id {sent['sent_id']}) has an empty {text_field!r}")
                    continue
                if not isinstance(text, str) or "sent_id" not in sent:
                    problem("sentences without text or sent_id",
                            f"{where}: sentences[{k}] needs a string {text_field!r} and a 'sent_id'")
                    continue
                entity = Entity(" ".join(text.split()), entity_type, boxes)
                out.append(Sample(id=f"{ref['ref_id']}_{sent['sent_id']}", tokens=text.split(),
                                  entities=(entity,), images=(path,), image_sizes=(size,)))
                report.posts += 1
                report.entities += 1
                report.no_target += not boxes
                report.one_target += len(boxes) == 1
                report.multi_target += len(boxes) > 1
                report.located_entities += bool(boxes)
                report.boxes += len(boxes)
        out.report = report
        return out

    def _target(self, ref: Dict[str, Any], where: str, keep_multi: bool = False):
        """"multi" for a multi-target ref (unless ``keep_multi``), else (image record, its target
        boxes: none for a no-target ref). ValueError if malformed (`_NoArea` for a box of no area)."""
        for key in ("ref_id", "image_id", "ann_id", "sentences"):
            if key not in ref:
                raise ValueError(f"no field {key!r}")
        sentences = ref["sentences"]
        if not isinstance(sentences, list) or not sentences:
            raise ValueError("field 'sentences' must be a non-empty list")
        raw = ref["ann_id"]
        ann_ids = raw if isinstance(raw, list) else [raw]
        if not ann_ids or not all(isinstance(a, int) and not isinstance(a, bool) for a in ann_ids):
            raise ValueError(f"field 'ann_id' must be an integer or a list of integers, got {raw!r:.60}")
        ann_ids = list(dict.fromkeys(ann_ids))
        no_target = ann_ids == [-1]
        if -1 in ann_ids and not no_target:
            raise ValueError(f"field 'ann_id' mixes -1 (no target) with targets: {raw!r:.60}")
        if "no_target" in ref and bool(ref["no_target"]) != no_target:
            raise ValueError(f"field 'no_target' is {ref['no_target']!r} but 'ann_id' is {raw!r:.60}")
        if len(ann_ids) > 1 and not keep_multi:
            return "multi"
        image = self.images.get(ref["image_id"])
        if image is None:
            raise ValueError(f"field 'image_id' {ref['image_id']!r} is not in {self.instances_path.name}")
        if "file_name" in ref and coco_file_name(ref["file_name"]) != str(image["file_name"]):
            raise ValueError(f"field 'file_name' {ref['file_name']!r} names COCO image "
                             f"{coco_file_name(ref['file_name'])!r}, but image_id {ref['image_id']} is "
                             f"{image['file_name']!r}")
        if no_target:
            return image, ()
        boxes = []
        for ann_id in ann_ids:
            ann = self.anns.get(ann_id)
            if ann is None:
                raise ValueError(f"field 'ann_id' {ann_id} is not in {self.instances_path.name}")
            if ann["image_id"] != ref["image_id"]:
                raise ValueError(f"annotation {ann_id} belongs to image {ann['image_id']}, not to the ref's "
                                 f"image_id {ref['image_id']}")
            try:
                boxes.append(_box(ann))
            except ValueError as e:  # keeps _NoArea (skipped and counted) apart from a malformed bbox
                raise type(e)(f"annotation {ann_id}: {e}") from None
        return image, tuple(boxes)

    @staticmethod
    def _image(image: Mapping[str, Any], image_dir: Optional[Path], cache: Dict[str, Any]):
        """(path, size) of a COCO image, or an error message. Real size when ``image_dir`` is given."""
        name = str(image["file_name"])
        if name not in cache:
            if image_dir is None:
                cache[name] = (name, (int(image["width"]), int(image["height"])))
            else:
                p = image_dir / name
                if Path(name).name != name or name in ("", ".", ".."):  # must not leave image_dir
                    cache[name] = f"image file_name {name!r} is not a plain file name"
                elif not p.is_file():
                    cache[name] = f"image {p} not found"
                else:
                    from PIL import Image
                    try:
                        with Image.open(p) as im:
                            cache[name] = (str(p), im.size)
                    except OSError as e:
                        cache[name] = f"image {p} unreadable: {e}"
        return cache[name]

    @staticmethod
    def _fit(box: Box, image: Mapping[str, Any], size: Tuple[int, int], report: GRECReport) -> Box:
        """Clamp to instances.json's image size, then rescale to the real size if it differs."""
        w, h = float(image["width"]), float(image["height"])
        clamped = (max(box[0], 0.0), max(box[1], 0.0), min(box[2], w), min(box[3], h))
        if clamped != box:
            report.repaired["boxes clamped to the image"] += 1
        if (int(w), int(h)) != tuple(size):
            report.repaired["boxes rescaled to the real image size"] += 1
            sx, sy = size[0] / w, size[1] / h
            clamped = (clamped[0] * sx, clamped[1] * sy, clamped[2] * sx, clamped[3] * sy)
        return clamped


def load_grec(root: Union[str, os.PathLike], split: str, image_dir=None, *, refs_file=None,
              instances_file=None, **kwargs) -> SampleList:
    """Read one split of gRefCOCO as GREC samples (see `GRefCOCO.samples` for the keywords)."""
    return GRefCOCO.load(root, refs_file, instances_file).samples(split, image_dir, **kwargs)


def select_train(samples: Sequence[Sample], size: Optional[int] = DEFAULT_TRAIN_SIZE, seed: int = 0
                 ) -> List[Sample]:
    """App. E.1: "select 14,000 samples from the remaining data for training". How is not said: a
    seeded uniform sample of ``size`` sentences, kept in file order (all when ``size`` is None or
    not smaller than the data)."""
    import random
    if size is None or size >= len(samples):
        return list(samples)
    keep = set(random.Random(seed).sample(range(len(samples)), size))
    return [s for i, s in enumerate(samples) if i in keep]


# --------------------------------------------------------------------------- answers
# (the GREC reward terms, R_u and R_e of Eq. 8-9: `mcr_swift.core.rewards.grec_reward_terms`)
def answer_boxes(entities: Sequence[Entity]) -> List[Box]:
    """The boxes a parsed GREC answer gives (the first box of each item, in order)."""
    return [e.box for e in entities if e.boxes]


# --------------------------------------------------------------------------- rows
def grec_reasoning(sample: Sample) -> str:
    """A short target reasoning for GREC rows (entailment, then grounding; MRSI chains replace it)."""
    e = sample.entities[0]
    if e.boxes:
        return (f'Visual entailment (image): one object in the image matches every part of "{e.text}".\n'
                "Visual grounding (image): locate that object with one box.")
    return (f'Visual entailment (image): no object in the image matches every part of "{e.text}", so '
            "the expression refers to nothing here.\nVisual grounding (image): nothing to locate, so the "
            "location is null.")


def grec_instruction(family: str = "qwen2_5_vl", entity_type: str = DEFAULT_TYPE) -> str:
    """``prompts/task_instruction_grec.txt`` with the family's box-format line and the answer type."""
    return task_instruction(family, "task_instruction_grec").replace("{entity_type}", entity_type)


def grec_row(sample: Sample, split: str, *, family: str = "qwen2_5_vl", with_answer: bool = True
             ) -> Dict[str, Any]:
    """The ms-swift row of one GREC sample: ``Expression: ...`` in the user turn, the target box (if
    any) in ``objects``, ``mcr_task`` ``grec`` and ``mcr_split`` the split."""
    return sample_to_row(sample, family=family,
                         instruction=grec_instruction(family, sample.entities[0].type),
                         reasoning=grec_reasoning(sample), with_answer=with_answer, task=TASK,
                         text_label="Expression", extra={"mcr_split": split})
