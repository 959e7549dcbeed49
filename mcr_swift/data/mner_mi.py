"""Reader for the MNER-MI release (Huang et al., LREC-COLING 2024), the multi-image MNER data of
paper Sec. 5.3 / Table 2 / App. E.1 (Table 5: 6856 / 860 / 860 posts).

Entities carry no box; a row holds all of the post's readable images; MIS and MISC become OTHER;
dict-literal lines are read with `ast.literal_eval` (never ``eval``); a stray I- tag is read the conlleval
way (`twitter.TAG_MODES`); a missing or unreadable image is left out of its post and counted, and only a
post with no readable image is dropped; a Twitter-2017 image is found under its prefixed or its stripped
name. Release layout, published counts and each quirk's handling: docs/data.md.
"""
from __future__ import annotations

import ast
import json
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple, Union

from ..prompts import load_prompt
from .rows import sample_to_row
from ..files import BadImage, check_image
from .twitter import CONLLEVAL_REPAIR, ON_ERROR, TAG_MODES, ReadReport, SampleList
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
#: The published counts (posts, images, entities, entities by release type) per split and variant,
#: as tabulated by the release's authors; `published_check` compares a complete read with them.
PUBLISHED = {
    "mi": {"train": {"posts": 6856, "images": 19188, "entities": 9734,
                     "types": {"PER": 4529, "LOC": 1878, "ORG": 1273, "MISC": 2054}},
           "dev": {"posts": 860, "images": 2438, "entities": 1208,
                   "types": {"PER": 573, "LOC": 210, "ORG": 165, "MISC": 260}},
           "test": {"posts": 860, "images": 2395, "entities": 920,
                    "types": {"PER": 439, "LOC": 156, "ORG": 92, "MISC": 233}}},
    "plus": {"train": {"posts": 10229, "entities": 15783}, "dev": {"posts": 1583, "entities": 2532},
             "test": {"posts": 1583, "entities": 2271}},
}
#: Report keys of the two spellings under which a Twitter-2017 image was found.
T17_NAMES = ("prefixed", "stripped")


class MNERMIFormatError(ValueError):
    """Malformed MNER-MI input; the message names ``file:line`` and the field."""


@dataclass
class MNERMIReport(ReadReport):
    """`ReadReport` plus image counts (``located_entities`` and ``boxes`` stay 0: no locations)."""

    images: int = 0
    multi_image_posts: int = 0
    string_ids: int = 0
    dict_literal_lines: int = 0
    #: images named by the kept posts that are missing or unreadable (left out of their post)
    missing_images: int = 0
    #: kept posts that lost some (not all) of their images
    posts_with_missing_images: int = 0
    #: posts dropped because none of their images is readable
    posts_without_images: int = 0
    #: Twitter-2017 images found under their prefixed / stripped name
    twitter2017_names: Counter = field(default_factory=Counter)
    #: entities by the release's type name (MISC and MIS both counted as MISC)
    types: Counter = field(default_factory=Counter)

    def image_warning(self) -> str:
        """The loud line about missing images ("" when every image was read)."""
        if not (self.missing_images or self.posts_without_images):
            return ""
        return (f"MNER-MI {self.split}: {self.missing_images} images missing or unreadable; "
                f"{self.posts_with_missing_images} posts kept with their readable images, "
                f"{self.posts_without_images} posts dropped (no readable image)")

    def summary(self) -> str:
        out = (super().summary() + f"; {self.images} images, {self.multi_image_posts} posts with "
                                   f"several images, {self.string_ids} string ids")
        if self.dict_literal_lines:
            out += f", {self.dict_literal_lines} dict-literal lines"
        if self.twitter2017_names:
            out += ", Twitter-2017 images found under the " + " and ".join(
                f"{k} name ({v})" for k, v in sorted(self.twitter2017_names.items()))
        if self.image_warning():
            out += "; " + self.image_warning()
        return out

    def as_dict(self) -> Dict:
        return {**super().as_dict(), "images": self.images, "multi_image_posts": self.multi_image_posts,
                "string_ids": self.string_ids, "dict_literal_lines": self.dict_literal_lines,
                "missing_images": self.missing_images,
                "posts_with_missing_images": self.posts_with_missing_images,
                "posts_without_images": self.posts_without_images,
                "twitter2017_names": dict(self.twitter2017_names), "types": dict(self.types)}


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
    """A release line: JSON (the current README), or a Python dict literal with single quotes (an
    earlier revision; read by `ast.literal_eval`, never ``eval``). ValueError if neither."""
    return parse_line_form(line)[0]


def parse_line_form(line: str) -> Tuple[Any, str]:
    """(decoded line, "json" or "literal"); ValueError if it is neither."""
    try:
        return json.loads(line), "json"
    except json.JSONDecodeError as e:
        json_error = f"{e.msg} at column {e.colno}"
    try:
        return ast.literal_eval(line.strip()), "literal"
    except (ValueError, SyntaxError, MemoryError, RecursionError, TypeError):
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


def bio_entities(tokens: List[str], tags: List[str], problem: Callable[[str, str], None],
                 tag_mode: str = "conlleval", repaired: Optional[Callable[[str], None]] = None
                 ) -> Tuple[List[str], List[Entity]]:
    """Decode BIO ``tags`` into (project tags, entities without boxes). ``problem(kind, message)``
    raises or counts; the offending token then becomes O. ``tag_mode`` "conlleval" (default, as the
    Twitter-GMNER reader): an I- tag after O or after another type begins an entity, reported through
    ``repaired(message)``; "strict": such a tag is a problem."""
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
        if prefix == "I" and (cur is None or cur[1] != etype) and tag_mode == "conlleval":
            # conlleval: an I- after O or after another type begins a new entity.
            after = "after O" if cur is None else f"after {cur[1]}"
            if repaired is not None:
                repaired(f"token {k} ({token!r}): tag {tag} {after} read as B-{raw_type}")
            prefix = "B"
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


def image_candidates(name: str, image_dir: Path, twitter2017_dir: Optional[Path]) -> List[Tuple[Path, str]]:
    """Where an image of the release may lie, in the order tried, each with how it was named ("" for
    an ordinary image, else `T17_NAMES`). A ``twitter2017-X.jpg`` image is ``X.jpg`` (as the release's
    loader strips the prefix) or ``twitter2017-X.jpg`` (copies in circulation use both), in the
    Twitter-2017 folder when it is given, then in ``image_dir``. FileNotFoundError when ``name`` is not
    one plain file name (it must not lead outside the image folders)."""
    from ..files import plain_name
    try:
        plain_name(name, "image name")
    except ValueError as e:
        raise FileNotFoundError(str(e)) from None
    if not name.startswith(TWITTER2017_PREFIX) or name == TWITTER2017_PREFIX:
        return [(image_dir / name, "")]
    stripped = name[len(TWITTER2017_PREFIX):]
    folders = [d for d in (twitter2017_dir, image_dir) if d is not None]
    out: List[Tuple[Path, str]] = []
    for d in folders:
        for n, kind in ((stripped, "stripped"), (name, "prefixed")):
            if (d / n, kind) not in out:
                out.append((d / n, kind))
    return out


def load_mner_mi(root: Union[str, os.PathLike], split: str, image_dir=None, *, twitter2017_dir=None,
                 variant: str = "mi", on_error: str = "raise", limit: Optional[int] = None,
                 tags: str = "conlleval", verify_images: bool = True) -> SampleList:
    """Read one split (train, dev or test; ``val`` is accepted for dev) of MNER-MI into `Sample`s.

    Each sample has the readable images of its post in order and entities without boxes. With
    ``image_dir`` each image is looked up (`image_candidates`) and checked (``verify_images``: decode
    it fully, so a truncated JPEG counts as unreadable; else the header only); a missing or unreadable
    image is left out of its post and counted (``report.missing_images``), and a post none of whose
    images is readable is dropped and counted (``report.posts_without_images``), whatever
    ``on_error``. ``twitter2017_dir`` is the Twitter-2017 image folder of MNER-MI-Plus (default:
    ``image_dir``). Without ``image_dir`` ``images`` holds the release's names and the sizes are None.
    ``tags``: "conlleval" (default) or "strict", how a stray I- tag is read (`bio_entities`).
    Returns a list with an `MNERMIReport` in ``.report``.
    """
    if on_error not in ON_ERROR:
        raise ValueError(f"on_error must be one of {ON_ERROR}, got {on_error!r}")
    if tags not in TAG_MODES:
        raise ValueError(f"tags must be one of {TAG_MODES}, got {tags!r}")
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

    def repaired(message: str) -> None:
        report.repaired[CONLLEVAL_REPAIR] += 1
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
                obj, form = parse_line_form(line)
                raw_id, tokens, names, tags_ = check_post(obj)
            except ValueError as e:
                problem("malformed posts", str(e))
                continue
            pid = str(raw_id)
            labels, entities = bio_entities(tokens, tags_, problem, tags, repaired)
            images, sizes = list(names), [None] * len(names)
            if image_dir is not None:
                images, sizes = [], []
                for k, name in enumerate(names):
                    found = _locate(name, image_dir, twitter2017_dir, verify_images)
                    if isinstance(found, str):
                        report.missing_images += 1
                        report.note(f"{where}: image {k} of post {pid}: {found}")
                        continue
                    p, size, kind = found
                    if kind:
                        report.twitter2017_names[kind] += 1
                    images.append(str(p))
                    sizes.append(size)
                if not images:
                    report.posts_without_images += 1
                    report.skipped["posts with no readable image"] += 1
                    continue
                report.posts_with_missing_images += len(images) < len(names)
            if seen[pid]:
                report.repaired["duplicate post ids (kept both)"] += 1
            seen[pid] += 1
            report.posts += 1
            report.entities += len(entities)
            report.types.update("MISC" if e.type == "OTHER" else e.type for e in entities)
            report.images += len(images)
            report.multi_image_posts += len(images) > 1
            report.string_ids += isinstance(raw_id, str)
            report.dict_literal_lines += form == "literal"
            out.append(Sample(id=pid, tokens=tokens, entities=entities, images=images, image_sizes=sizes,
                              labels=labels))
    out.report = report
    return out


def _locate(name: str, image_dir: Path, twitter2017_dir: Optional[Path], full: bool):
    """(path, size, how it was named) of a release image, or why it cannot be used (a message)."""
    try:
        cands = image_candidates(name, image_dir, twitter2017_dir)
    except FileNotFoundError as e:
        return str(e)
    for p, kind in cands:
        if p.is_file():
            try:
                return p, check_image(p, full=full), kind
            except BadImage as e:
                return str(e)
    return f"{name} not found (looked for {', '.join(str(p) for p, _ in cands)})"


def published_check(report: MNERMIReport, variant: str, split: str) -> Tuple[str, List[str]]:
    """(a line with the read counts next to the published ones, warnings where they differ). Meant for
    a complete read (no limit). ("", []) for a split without published counts."""
    pub = PUBLISHED.get(variant, {}).get("dev" if split == "val" else split)
    if not pub:
        return "", []
    name = f"{VARIANTS[variant] if variant == 'mi' else 'MNER-MI-Plus'} {split}"
    got = {"posts": report.posts, "images": report.images, "entities": report.entities}
    parts, off = [], []
    for key in ("posts", "images", "entities"):
        if key in pub:
            parts.append(f"{got[key]:,} {key} (published {pub[key]:,})")
            if got[key] != pub[key]:
                off.append(f"{got[key]:,} {key}, published {pub[key]:,}")
    for t, n in pub.get("types", {}).items():
        if report.types.get(t, 0) != n:
            off.append(f"{report.types.get(t, 0):,} {t}, published {n:,}")
    warnings = [f"{name} differs from the published counts: " + "; ".join(off)] if off else []
    return f"{name}: " + ", ".join(parts), warnings


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
