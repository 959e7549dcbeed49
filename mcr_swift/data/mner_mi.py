"""Reader for the MNER-MI release (Huang et al., LREC-COLING 2024), the multi-image MNER data of
paper Sec. 5.3 / Table 2 / App. E.1 (Table 5: 6856 / 860 / 860 posts).

Entities carry no box; a row holds all of the post's images; MIS and MISC become OTHER; dict-literal lines
are read with `ast.literal_eval` (never ``eval``). Release layout and errors: docs/data.md.
"""
from __future__ import annotations

import ast
import json
import os
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple, Union

from ..prompts import load_prompt
from .rows import sample_to_row
from .twitter import ON_ERROR, ReadReport, SampleList
from ..core.entities import Entity, Sample

#: Output split names and the release's file suffix for each (the release says "val").
SPLITS = ("train", "dev", "test")
RELEASE_SPLIT = {"train": "train", "dev": "val", "val": "val", "test": "test"}
#: Release variants: MNER-MI, and MNER-MI-Plus (files named MNER-UNI_*).
VARIANTS = {"mi": "MNER-MI", "plus": "MNER-UNI"}
#: Release entity types -> the project's four types (ENTITY_TYPES).
TYPE_MAP = {"PER": "PER", "LOC": "LOC", "ORG": "ORG", "MIS": "OTHER", "MISC": "OTHER", "OTHER": "OTHER"}
#: Image-name prefix of the Twitter-2017 posts of MNER-MI-Plus.
TWITTER2017_PREFIX = "twitter2017-"
TASK = "mner_mi"


class MNERMIFormatError(ValueError):
    """Malformed MNER-MI input; the message names ``file:line`` and the field."""


@dataclass
class MNERMIReport(ReadReport):
    """`ReadReport` plus image counts (``located_entities`` and ``boxes`` stay 0: no locations)."""

    images: int = 0
    multi_image_posts: int = 0
    string_ids: int = 0

    def summary(self) -> str:
        return (super().summary() + f"; {self.images} images, {self.multi_image_posts} posts with "
                                    f"several images, {self.string_ids} string ids")

    def as_dict(self) -> Dict:
        return {**super().as_dict(), "images": self.images, "multi_image_posts": self.multi_image_posts,
                "string_ids": self.string_ids}


def split_file(root: Union[str, os.PathLike], split: str, variant: str = "mi") -> Path:
    """The release file of ``split`` (train, dev/val, test) for ``variant`` (mi or plus)."""
    if variant not in VARIANTS:
        raise ValueError(f"unknown MNER-MI variant {variant!r}; choose one of {sorted(VARIANTS)}")
    if split not in RELEASE_SPLIT:
        raise ValueError(f"unknown MNER-MI split {split!r}; choose one of {SPLITS}")
    root = Path(root)
    text = root / "text" if (root / "text").is_dir() else root
    path = text / f"{VARIANTS[variant]}_{RELEASE_SPLIT[split]}.txt"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such MNER-MI file (expected {root}/text/"
                                f"{VARIANTS[variant]}_{{train,val,test}}.txt of the release)")
    return path


def parse_line(line: str) -> Any:
    """A release line: JSON, or a Python dict literal (the Twitter-2017 part). ValueError if neither."""
    try:
        return json.loads(line)
    except json.JSONDecodeError as e:
        json_error = f"{e.msg} at column {e.colno}"
    try:
        return ast.literal_eval(line.strip())
    except (ValueError, SyntaxError, MemoryError, RecursionError):
        raise ValueError(f"not a JSON object or Python dict literal ({json_error})") from None


def _str_list(obj: Dict[str, Any], key: str, allow_empty: bool = False) -> List[str]:
    value = obj.get(key)
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ValueError(f"field {key!r} must be a list of strings, got {type(value).__name__}")
    if not value and not allow_empty:
        raise ValueError(f"field {key!r} is empty")
    return value


def check_post(obj: Any) -> Tuple[Union[int, str], List[str], List[str], List[str]]:
    """(id as given, tokens, image names, tags) of one decoded line; ValueError naming the field at fault."""
    if not isinstance(obj, dict):
        raise ValueError(f"a line must be one object, got {type(obj).__name__}")
    pid = obj.get("id")
    if isinstance(pid, bool) or not isinstance(pid, (int, str)) or (isinstance(pid, str) and not pid.strip()):
        raise ValueError(f"field 'id' must be an integer or a non-empty string, got {pid!r:.40}")
    tokens = _str_list(obj, "text")
    empty = next((k for k, t in enumerate(tokens) if not t.strip()), None)
    if empty is not None:  # an entity over it would have an empty text no answer could match
        raise ValueError(f"field 'text' has an empty token at position {empty}")
    images = _str_list(obj, "images")
    tags = _str_list(obj, "label")
    if len(tags) != len(tokens):
        raise ValueError(f"field 'label' has {len(tags)} tags for {len(tokens)} tokens in 'text'")
    return pid, tokens, images, tags


def bio_entities(tokens: List[str], tags: List[str], problem: Callable[[str, str], None]
                 ) -> Tuple[List[str], List[Entity]]:
    """Decode BIO ``tags`` into (project tags, entities without boxes). ``problem(kind, message)``
    raises or counts; the offending token then becomes O."""
    labels: List[str] = []
    spans: List[List] = []
    cur: Optional[List] = None
    for k, (token, tag) in enumerate(zip(tokens, tags)):
        if tag == "O":
            labels.append("O")
            cur = None
            continue
        prefix, _, raw_type = tag.partition("-")
        etype = TYPE_MAP.get(raw_type)
        if prefix not in ("B", "I") or etype is None:
            problem("unknown tags", f"token {k} ({token!r}): unknown tag {tag!r} (expected O, B-/I- of "
                                    f"{', '.join(TYPE_MAP)})")
            labels.append("O")
            cur = None
            continue
        if prefix == "B":
            cur = [[token], etype]
            spans.append(cur)
        elif cur is None or cur[1] != etype:
            after = "after O" if cur is None else f"after {cur[1]}"
            problem("I- tags with no B-", f"token {k} ({token!r}): tag {tag} {after} has no B- tag")
            labels.append("O")
            cur = None
            continue
        else:
            cur[0].append(token)
        labels.append(f"{prefix}-{etype}")
    return labels, [Entity(" ".join(t), ty) for t, ty in spans]


def image_path(name: str, image_dir: Path, twitter2017_dir: Optional[Path]) -> Path:
    """Where an image of the release lies: ``twitter2017-X.jpg`` is ``X.jpg`` in the Twitter-2017
    folder (as the release's loader resolves it) when that folder is given, else ``image_dir/name``."""
    from ..files import plain_name
    try:  # a name from the release must not lead outside the image folders
        plain_name(name, "image name")
    except ValueError as e:
        raise FileNotFoundError(str(e)) from None
    if twitter2017_dir is not None and name.startswith(TWITTER2017_PREFIX):
        return twitter2017_dir / name[len(TWITTER2017_PREFIX):]
    return image_dir / name


def image_size(path: Path) -> Tuple[int, int]:
    """(width, height) from the image header (PIL reads no pixels). OSError if unreadable."""
    from PIL import Image
    with Image.open(path) as im:
        return im.size


def load_mner_mi(root: Union[str, os.PathLike], split: str, image_dir=None, *, twitter2017_dir=None,
                 variant: str = "mi", on_error: str = "raise", limit: Optional[int] = None) -> SampleList:
    """Read one split (train, dev or test; ``val`` is accepted for dev) of MNER-MI into `Sample`s.

    Each sample has every image of its post in order and entities without boxes. With ``image_dir``
    every image must exist (its real size is used); ``twitter2017_dir`` is the Twitter-2017 image
    folder of MNER-MI-Plus (default: those images are looked up in ``image_dir`` under their release
    name). Without ``image_dir`` ``images`` holds the release's names and the sizes are None.
    Returns a list with an `MNERMIReport` in ``.report``.
    """
    if on_error not in ON_ERROR:
        raise ValueError(f"on_error must be one of {ON_ERROR}, got {on_error!r}")
    path = split_file(root, split, variant)
    image_dir = None if image_dir is None else Path(image_dir)
    twitter2017_dir = None if twitter2017_dir is None else Path(twitter2017_dir)
    report = MNERMIReport(split=split)
    where = ""

    def problem(kind: str, message: str) -> None:
        if on_error == "raise":
            raise MNERMIFormatError(f"{where}: {message}")
        report.skipped[kind] += 1
        report.note(f"{where}: {message}")

    out = SampleList()
    seen = Counter()
    with open(path, encoding="utf-8") as f:
        for no, line in enumerate(f, 1):
            if limit is not None and len(out) >= limit:
                break
            if not line.strip():
                continue
            where = f"{path}:{no}"
            try:
                raw_id, tokens, names, tags = check_post(parse_line(line))
            except ValueError as e:
                problem("malformed posts", str(e))
                continue
            pid = str(raw_id)
            labels, entities = bio_entities(tokens, tags, problem)
            images, sizes = list(names), [None] * len(names)
            if image_dir is not None:
                try:
                    for k, name in enumerate(names):
                        p = image_path(name, image_dir, twitter2017_dir)
                        if not p.is_file():
                            raise FileNotFoundError(f"image {k} of post {pid}: {p} not found")
                        try:
                            sizes[k] = image_size(p)
                        except OSError as e:
                            raise FileNotFoundError(f"image {k} of post {pid}: {p} unreadable: {e}") from None
                        images[k] = str(p)
                except FileNotFoundError as e:
                    problem("posts with a missing or unreadable image", str(e))
                    continue
            if seen[pid]:
                report.repaired["duplicate post ids (kept both)"] += 1
            seen[pid] += 1
            report.posts += 1
            report.entities += len(entities)
            report.images += len(names)
            report.multi_image_posts += len(names) > 1
            report.string_ids += isinstance(raw_id, str)
            out.append(Sample(id=pid, tokens=tokens, entities=entities, images=images, image_sizes=sizes,
                              labels=labels))
    out.report = report
    return out


def mner_mi_reasoning(sample: Sample) -> str:
    """A short target reasoning for MNER-MI rows: recognition and typing only (no location is asked;
    MRSI chains replace it)."""
    if not sample.entities:
        return ("Entity recognition (text): the sentence mentions no person, location, organization or "
                "other named entity.\nNo entity, so there is nothing to type; locations are not asked.")
    names = ", ".join(f'"{e.text}"' for e in sample.entities)
    return "\n".join([
        f"Entity recognition (text): the sentence mentions {names}.",
        "Type classification (text semantics and knowledge, the images only as support): "
        + "; ".join(f'"{e.text}" is {e.type}' for e in sample.entities) + ".",
        "Locations are not asked for this task, so every bbox is null."])


def mner_mi_instruction() -> str:
    """The MNER-MI task instruction (``prompts/task_instruction_mner_mi.txt``)."""
    return load_prompt("task_instruction_mner_mi")


def mner_mi_row(sample: Sample, split: str, *, with_answer: bool = True) -> Dict[str, Any]:
    """The ms-swift row of one MNER-MI post: every image of the post, ``mcr_task`` ``mner_mi``,
    ``mcr_split`` the split. No box is written, so the row is the same for every model family."""
    return sample_to_row(sample, instruction=mner_mi_instruction(), reasoning=mner_mi_reasoning(sample),
                         with_answer=with_answer, task=TASK, extra={"mcr_split": split})
