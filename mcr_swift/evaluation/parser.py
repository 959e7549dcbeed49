"""Robust parser of a model's GMNER answer into `Entity` triples (boxes left in the answer's space).

`parse_answer(text)` never raises: any input (None, bytes, junk, megabytes, truncated JSON, NaN)
gives a `ParseResult`. It is on the GRPO hot path (every rollout of every step), so the common case
(the canonical answer of `mcr_swift.answer`) is one ``rfind`` plus one ``json.loads``.

Where the answer is looked for
------------------------------
* If the text has ``<answer>``: the part after the **last** ``<answer>`` up to the next
  ``</answer>`` (or the end, if the answer was truncated).
* Otherwise: the text after the last ``</think>`` (all of it if there is none); there the **last**
  JSON list/object that looks like an answer is taken.
* Only ``MAX_SCAN`` characters (64 KiB) are ever scanned: the first 64 KiB after ``<answer>``, or the
  last 64 KiB of an untagged text. Items beyond that window are neither parsed nor counted. Every
  regular expression used is linear (no nested unbounded repetition), tuple groups longer than
  ``MAX_GROUP`` characters are skipped and JSON recovery gives up after ``MAX_JSON_FAILS`` failed
  attempts, so the worst case on 5 MB of adversarial text is a few milliseconds.

Formats read, tried in this order (``ParseResult.format`` names the branch that succeeded)
-----------------------------------------------------------------------------------------
``json``
    The canonical ``[{"entity": .., "type": .., "bbox": ..}, ..]``, also with other key names and
    orders (entity: entity|name|span|text|entity_name|entity_text|mention, or label when the type
    is under another key; type: type|entity_type|category|class|ner_type|tag|label; box:
    bbox|bbox_2d|box|location|loc|region|coordinates|coords|bounding_box|position), a single object,
    ``{"entities": [..]}``-style wrappers, ``{"Kevin Durant": {"type": .., "bbox": ..}}`` (a dict keyed
    by entity), ``{"PER": ["Kevin Durant", ..]}`` (a dict keyed by type), lists of lists
    ``[["Kevin Durant", "PER", [..]], ..]`` and lists of tuple strings. Repairs: trailing commas,
    Qwen box tokens as values (``"bbox": <|box_start|>(10,11),(37,38)<|box_end|>`` — ms-swift's
    ``QWENVL_BBOX_FORMAT=legacy``), and a truncated list (the complete objects are kept, the cut one is
    lost; counted once in ``repaired``).
``python``
    The same structures as a Python literal (single quotes, ``None``, tuples), via
    ``ast.literal_eval`` (never ``eval``).
``qwen_tokens``
    ``<|object_ref_start|>Kevin Durant<|object_ref_end|><|box_start|>(10,11),(37,38)<|box_end|>``, the
    type (if any) being the first type word between this reference and the next.
``tuple``
    ``(Kevin Durant, PER, [x1, y1, x2, y2])``, ``("NBA", "ORG", None)``, in any field order: the type
    field is the one in the type vocabulary below, the box field the one that reads as a box or as
    None; a group counts only if it has a type-vocabulary field or a box/None field (so that prose in
    parentheses is not read as entities).
``lines``
    ``Kevin Durant | PER | [1,2,3,4]``, ``Kevin Durant - PER - None``, tab/semicolon/comma separated,
    ``Kevin Durant: PER, None``, ``Kevin Durant (PER): [..]``, markdown table rows, with or without
    bullets/numbering; a line counts only if one field is in the type vocabulary. Also ``key: value``
    records with the JSON key names above, on one line (``Entity: Kevin Durant, Type: PER, Box: [..]``,
    ``{entity: NBA, type: ORG, bbox: null}``) or over consecutive lines (YAML-like blocks).
``empty``
    An explicit no-entity answer: ``None``, ``null``, ``N/A``, ``no entities`` (also ``[]`` and ``{}``,
    which report ``json``). ``ok`` is True with no entities.
``none``
    Nothing structured found (including an empty ``<answer></answer>``): ``ok`` is False.

Normalisation
-------------
* Type (case-insensitive, surrounding quotes/space stripped): PER/LOC/ORG/OTHER; person, people,
  human -> PER; location, place, gpe -> LOC; organization, organisation, company, team -> ORG;
  misc, miscellaneous, others -> OTHER. Anything else keeps its text upper-cased (so it scores as a
  wrong type; it is never silently remapped). A missing type is ``""``.
* Entity text: surrounding whitespace and matching quote pairs stripped, Qwen reference tokens
  removed, inner whitespace collapsed to single spaces. An item with no entity text is dropped.
  Duplicated entities are *kept* (the count reward and the one-to-one matching deal with them).
* Boxes (at most one per entity; a list of several boxes keeps the first, counted in ``repaired``):
  4 numbers, 2 points ``[[x1, y1], [x2, y2]]``, strings ``"[1,2,3,4]"`` / ``"(1,2),(3,4)"``, dicts with
  x1/y1/x2/y2, xmin/.., left/top/right/bottom or x/y/w(idth)/h(eight). ``null``, ``None``, ``""``,
  ``[]``, ``"N/A"`` and any string without digits mean "not in the image" (unlocated, no repair).
  Repairs, each counted once per box in ``repaired``: swapped corners (x2 < x1 or y2 < y1) are
  reordered; negative coordinates are clamped to 0; with ``extent=(max_x, max_y)`` coordinates are
  also clamped to it. A box that is non-finite (NaN/inf), has the wrong number of values, or has
  zero area after the repairs is removed and the **entity is kept as unlocated** (``repaired``).

Counters
--------
``dropped``: items found but discarded (no entity text, not an entity at all, beyond
``max_entities``, the object cut off by a truncation). ``repaired``: boxes fixed or removed as
above, plus 1 for a recovered truncated or malformed (trailing-comma) JSON answer. Both count only
what lies inside the scanned window.

Parseable
---------
``ParseResult.answered`` is what the rewards (`mcr_swift.plugin.orms`, the App. D.3 filter) pay
for; a completion that is not answered scores 0 on every term of every task, also on a post with
no gold entity. It is True iff ``ok`` and

* at least one entity was read (also from a repaired or truncated answer: the entities it kept are
  scored as they are, and a garbled one costs through the count and span terms), or
* the answer is an explicit empty one with nothing dropped or repaired: ``[]``, ``{}``, a wrapper
  such as ``{"entities": []}``, ``None`` / ``null`` / ``N/A`` / ``nothing`` / ``no entities``
  (inside ``<answer>`` or, untagged, after the last ``</think>``).

Not answered: ``ok`` False (no text, ``<answer></answer>``, ``<answer>[``, prose, ``[1, 2, 3]``, a
page of x's), and a structure whose items were all discarded (``[{}]``, ``[null]``, ``[{"foo": 1}]``).
A truncated answer is answered when an entity was salvaged from it (a cut single object is often
still read by the ``key: value`` reader).

`format_ok(text)` is the strict check behind the format reward: exactly one ``<think>..</think>``
followed by exactly one ``<answer>..</answer>`` (only whitespace around them) whose content is a JSON
list of objects with exactly the keys entity (string), type (string) and bbox (null or 4 finite
numbers). A bbox written as Qwen box tokens (``QWENVL_BBOX_FORMAT=legacy``) also passes.
"""
from __future__ import annotations

import ast
import dataclasses
import json
import math
import re
import sys
from dataclasses import dataclass, field
from typing import Any, List, Optional, Sequence, Tuple

from ..entities import Entity

__all__ = ["ParseResult", "parse_answer", "format_ok", "completion_text", "normalize_type", "clean_entity_text",
           "MAX_SCAN", "TYPE_SYNONYMS"]

#: Characters of text examined (first 64 KiB after the last <answer>, or last 64 KiB otherwise).
MAX_SCAN = 64 * 1024
#: Parenthesised groups longer than this are not read as tuples.
MAX_GROUP = 2000
#: Failed JSON decode attempts after which recovery gives up.
MAX_JSON_FAILS = 200
#: Lines examined by the line-format branch.
MAX_LINES = 2000

ANSWER_OPEN, ANSWER_CLOSE = "<answer>", "</answer>"
THINK_OPEN, THINK_CLOSE = "<think>", "</think>"
REF_OPEN, REF_CLOSE = "<|object_ref_start|>", "<|object_ref_end|>"
BOX_OPEN, BOX_CLOSE = "<|box_start|>", "<|box_end|>"

#: Lower-cased type word -> canonical type. Only these mappings are made.
TYPE_SYNONYMS = {
    "per": "PER", "person": "PER", "people": "PER", "human": "PER",
    "loc": "LOC", "location": "LOC", "place": "LOC", "gpe": "LOC",
    "org": "ORG", "organization": "ORG", "organisation": "ORG", "company": "ORG", "team": "ORG",
    "other": "OTHER", "misc": "OTHER", "miscellaneous": "OTHER", "others": "OTHER",
}
_CODES = frozenset(("PER", "LOC", "ORG", "OTHER"))
_QUOTE_PAIRS = {'"': '"', "'": "'", "`": "`", "\u201c": "\u201d", "\u2018": "\u2019", "\u00ab": "\u00bb",
                "\u201d": "\u201d", "\u2019": "\u2019"}
_NULL_WORDS = frozenset(("", "none", "null", "nil", "n/a", "na", "n.a.", "[]", "{}", "()", "-", "--",
                         "\u2014", "nothing", "no", "false", "undefined", "unlocated", "no box", "none."))
_ENTITY_KEYS = ("entity", "name", "span", "text", "entity_name", "entity_text", "mention", "word")
_TYPE_KEYS = ("type", "entity_type", "category", "class", "ner_type", "tag", "label")
_BOX_KEYS = ("bbox", "bbox_2d", "box", "location", "loc", "region", "coordinates", "coords",
             "bounding_box", "position", "bbox2d", "boxes")
_CONTAINER_KEYS = ("entities", "entity_list", "answer", "answers", "result", "results", "triples",
                   "predictions", "prediction", "output", "outputs", "items", "data", "ner")

# ---------------------------------------------------------------- regular expressions (all linear)
_NUM = r"[-+]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d+)?"
_NUM_RE = re.compile(_NUM + r"|[-+]?(?:nan|inf(?:inity)?)\b", re.IGNORECASE)
_HAS_DIGIT_RE = re.compile(r"\d|\bnan\b|\binf(?:inity)?\b", re.IGNORECASE)
# <|box_start|>(x1,y1),(x2,y2)<|box_end|>; a malformed body (bounded length) becomes null.
_QWEN_BOX_RE = re.compile(
    r"<\|box_start\|>\s*\(\s*(%s)\s*,\s*(%s)\s*\)\s*,\s*\(\s*(%s)\s*,\s*(%s)\s*\)\s*<\|box_end\|>"
    % (_NUM, _NUM, _NUM, _NUM))
_QWEN_BOX_BAD_RE = re.compile(r"<\|box_start\|>[^<]{0,200}?<\|box_end\|>")
_QWEN_TOKEN_RE = re.compile(r"<\|(?:object_ref_start|object_ref_end|box_start|box_end|quad_start|quad_end)\|>")
_TRAILING_COMMA_RE = re.compile(r",\s*(?=[\]}])")
_OPEN_RE = re.compile(r"[\[{]")
# A top-level parenthesised group with at most one level of inner parentheses ("unrolled loop":
# every repetition starts with a distinct character class, so matching is linear).
_TUPLE_RE = re.compile(r"\(([^()]*(?:\([^()]*\)[^()]*)*)\)")
_FENCE_RE = re.compile(r"^```[a-zA-Z]*[ \t]*\n?|\n?```\s*$")
_BULLET_RE = re.compile(r"^\s*(?:[-*\u2022+>]+|\d{1,4}[.)\]:]|\(\d{1,4}\))\s+")
_EMPTY_ANSWER_RE = re.compile(
    r"(?:none|null|nil|n/?a|nothing|empty|\[\s*\]|\{\s*\}|"
    r"(?:there (?:are|is) )?no (?:named )?entit(?:y|ies)(?: (?:found|detected|mentioned|present))?)"
    r"\s*[.!]?", re.IGNORECASE)
_BOXISH_RE = re.compile(r"[\s\d.,+\-eE()\[\]]*")  # a field made only of number/box characters
_TYPE_WORD_RE = re.compile(
    r"\b(" + "|".join(sorted(TYPE_SYNONYMS, key=len, reverse=True)) + r")\b", re.IGNORECASE)
_BOXLIST_RE = re.compile(r"\[\s*(%s)\s*,\s*(%s)\s*,\s*(%s)\s*,\s*(%s)\s*\]" % (_NUM, _NUM, _NUM, _NUM))
_NONE_RE = re.compile(r"\bNone\b")
_NAME_TYPE_RE = re.compile(r"(.*?)\s*[(\[]\s*([A-Za-z]{2,20})\s*[)\]]\s*[:,\-]?\s*(.*)")

_DECODER = json.JSONDecoder()


@dataclass(**({"slots": True} if sys.version_info >= (3, 10) else {}))
class ParseResult:
    """What `parse_answer` found. ``entities`` carry at most one box each, in the answer's space."""

    entities: List[Entity] = field(default_factory=list)
    ok: bool = False
    dropped: int = 0
    repaired: int = 0
    format: str = "none"

    @property
    def answered(self) -> bool:
        """True iff the completion holds a parseable answer, what the rewards pay for (module
        docstring, "Parseable"): ``ok`` and either at least one entity, or an explicit empty answer
        with nothing dropped or repaired."""
        return self.ok and (bool(self.entities) or (self.dropped == 0 and self.repaired == 0))


class _Acc:
    """Mutable counters threaded through one parse."""

    __slots__ = ("dropped", "repaired", "extent")

    def __init__(self, extent):
        self.dropped = 0
        self.repaired = 0
        self.extent = extent


# ---------------------------------------------------------------- small normalisers
def normalize_type(value: Any) -> str:
    """Canonical type for ``value`` (see the module docstring); ``""`` for a missing type."""
    if value is None:
        return ""
    if not isinstance(value, str):
        if isinstance(value, (list, tuple)) and len(value) == 1:
            return normalize_type(value[0])
        value = str(value)
    s = value.strip()
    if s in _CODES:
        return s
    s = _strip_quotes(s)
    mapped = TYPE_SYNONYMS.get(s.lower())
    if mapped is not None:
        return mapped
    return " ".join(s.split()).upper()


def _type_rank(value: Any) -> int:
    """2: an exact code (PER), 1: another vocabulary word (person, per), 0: not a type word."""
    if not isinstance(value, str):
        return 0
    s = _strip_quotes(value.strip())
    if s in _CODES:
        return 2
    return 1 if s.lower() in TYPE_SYNONYMS else 0


def _strip_quotes(s: str) -> str:
    while len(s) >= 2 and _QUOTE_PAIRS.get(s[0]) == s[-1]:
        s = s[1:-1].strip()
    return s


def clean_entity_text(value: Any) -> Optional[str]:
    """Entity text normalised as in the module docstring, or None when there is none."""
    if isinstance(value, str):
        s = value
    elif isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
        s = str(int(value)) if float(value).is_integer() else str(value)
    else:
        return None
    if "<|" in s:
        s = _QWEN_TOKEN_RE.sub(" ", s)
    s = _strip_quotes(s.strip())
    s = " ".join(s.split())
    return s or None


# ---------------------------------------------------------------- boxes
def _num(v: Any) -> Optional[float]:
    if isinstance(v, bool):
        return None
    if isinstance(v, (int, float)):
        try:
            return float(v)
        except OverflowError:  # a huge int
            return math.inf
    if isinstance(v, str) and len(v) < 64:
        try:
            return float(v.strip())
        except ValueError:
            return None
    return None


def _nums4(seq: Sequence[Any]) -> Optional[List[float]]:
    out = []
    for v in seq:
        f = _num(v)
        if f is None:
            return None
        out.append(f)
    return out


_NULL, _BOX, _BAD = 0, 1, 2


def _box_value(v: Any, depth: int = 0) -> Tuple[int, Any]:
    """Classify a box value: (_NULL, None) | (_BOX, [4 floats], several?) | (_BAD, None)."""
    if v is None:
        return _NULL, None
    if isinstance(v, str):
        s = v.strip()
        if s.lower() in _NULL_WORDS:
            return _NULL, None
        if len(s) > 400:
            return _BAD, None
        if BOX_OPEN in s:
            s = s.replace(BOX_OPEN, " ").replace(BOX_CLOSE, " ")
        if not _HAS_DIGIT_RE.search(s):
            return _NULL, None  # a word such as "not visible": no location
        nums = _NUM_RE.findall(s)
        if len(nums) == 4:
            return _BOX, [float(x) for x in nums]
        if len(nums) > 4 and len(nums) % 4 == 0:  # several boxes written out: keep the first
            return _BOX, [float(x) for x in nums[:4]] + [None]
        return _BAD, None
    if isinstance(v, (list, tuple)):
        n = len(v)
        if n == 0:
            return _NULL, None
        if n == 4:
            nums = _nums4(v)
            if nums is not None:
                return _BOX, nums
        if depth >= 3:
            return _BAD, None
        if n == 2 and all(isinstance(p, (list, tuple)) and len(p) == 2 for p in v):
            nums = _nums4((v[0][0], v[0][1], v[1][0], v[1][1]))
            if nums is not None:
                return _BOX, nums
            return _BAD, None
        if n == 1:
            return _box_value(v[0], depth + 1)
        if isinstance(v[0], (list, tuple, dict, str)):  # several boxes: the first one
            kind, box = _box_value(v[0], depth + 1)
            if kind == _BOX:
                return _BOX, box[:4] + [None]
            return kind, box
        return _BAD, None
    if isinstance(v, dict):
        if not v:
            return _NULL, None
        low = {str(k).strip().lower(): val for k, val in v.items()} if len(v) <= 16 else {}
        for keys in (("x1", "y1", "x2", "y2"), ("xmin", "ymin", "xmax", "ymax"),
                     ("left", "top", "right", "bottom")):
            if all(k in low for k in keys):
                nums = _nums4([low[k] for k in keys])
                return (_BOX, nums) if nums is not None else (_BAD, None)
        for wk, hk in (("w", "h"), ("width", "height")):
            if all(k in low for k in ("x", "y", wk, hk)):
                nums = _nums4([low["x"], low["y"], low[wk], low[hk]])
                if nums is None:
                    return _BAD, None
                return _BOX, [nums[0], nums[1], nums[0] + nums[2], nums[1] + nums[3]]
        if depth < 3:
            for k in _BOX_KEYS:
                if k in low:
                    return _box_value(low[k], depth + 1)
        return _BAD, None
    return _BAD, None


def _fix_box(nums: List[Any], acc: _Acc) -> Optional[Tuple[float, float, float, float]]:
    """Validate/repair 4 numbers (a 5th None marks 'first of several'); None removes the box."""
    several = len(nums) > 4
    x1, y1, x2, y2 = nums[0], nums[1], nums[2], nums[3]
    if not (math.isfinite(x1) and math.isfinite(y1) and math.isfinite(x2) and math.isfinite(y2)):
        acc.repaired += 1
        return None
    rep = several
    if x2 < x1:
        x1, x2 = x2, x1
        rep = True
    if y2 < y1:
        y1, y2 = y2, y1
        rep = True
    if x1 < 0 or y1 < 0 or x2 < 0 or y2 < 0:
        x1, y1, x2, y2 = max(x1, 0.0), max(y1, 0.0), max(x2, 0.0), max(y2, 0.0)
        rep = True
    ext = acc.extent
    if ext is not None:
        w, h = ext
        if x1 > w or x2 > w or y1 > h or y2 > h:
            x1, x2, y1, y2 = min(x1, w), min(x2, w), min(y1, h), min(y2, h)
            rep = True
    if x2 <= x1 or y2 <= y1:
        acc.repaired += 1
        return None
    if rep:
        acc.repaired += 1
    return (float(x1), float(y1), float(x2), float(y2))


if tuple(f.name for f in dataclasses.fields(Entity)) == ("text", "type", "boxes"):
    _new, _set = object.__new__, object.__setattr__

    def _entity(text: str, etype: str, boxes: tuple) -> Entity:
        """`Entity` without re-validation: ``boxes`` is () or one already checked float 4-tuple."""
        e = _new(Entity)
        _set(e, "text", text)
        _set(e, "type", etype)
        _set(e, "boxes", boxes)
        return e
else:  # pragma: no cover - Entity gained fields: use its constructor
    def _entity(text: str, etype: str, boxes: tuple) -> Entity:
        return Entity(text, etype, boxes)


def _make_entity(text: Any, etype: Any, box_val: Any, acc: _Acc, has_box: bool = True) -> Optional[Entity]:
    t = clean_entity_text(text)
    if t is None:
        acc.dropped += 1
        return None
    box = None
    if has_box and box_val is not None:
        kind, nums = _box_value(box_val)
        if kind == _BOX:
            box = _fix_box(nums, acc)
        elif kind == _BAD:
            acc.repaired += 1
    if type(etype) is not str or etype not in _CODES:
        etype = normalize_type(etype)
    return _entity(t, etype, (box,) if box is not None else ())


_CANON = frozenset(("entity", "type", "bbox"))
_NUMBER_TYPES = (int, float)


def _canonical_entity(d: dict, acc: _Acc) -> Optional[Entity]:
    """Fast path for the canonical ``{"entity": str, "type": str, "bbox": null | [4 numbers]}``."""
    text = d["entity"]
    if type(text) is not str:
        return _make_entity(text, d["type"], d["bbox"], acc)
    t = " ".join(text.split())
    if not t or t[0] in _QUOTE_PAIRS or "<|" in t:
        t = clean_entity_text(t)
        if t is None:
            acc.dropped += 1
            return None
    etype = d["type"]
    if type(etype) is not str or etype not in _CODES:
        etype = normalize_type(etype)
    b = d["bbox"]
    if b is None:
        return _entity(t, etype, ())
    if type(b) is list and len(b) == 4:
        x1, y1, x2, y2 = b
        if (type(x1) in _NUMBER_TYPES and type(y1) in _NUMBER_TYPES and type(x2) in _NUMBER_TYPES
                and type(y2) in _NUMBER_TYPES):
            try:
                ext = acc.extent
                if (0 <= x1 < x2 < _INF and 0 <= y1 < y2 < _INF
                        and (ext is None or (x2 <= ext[0] and y2 <= ext[1]))):
                    box = (float(x1), float(y1), float(x2), float(y2))  # valid as written
                else:
                    box = _fix_box([float(x1), float(y1), float(x2), float(y2)], acc)
            except OverflowError:  # an int too large for a float
                box = None
                acc.repaired += 1
            return _entity(t, etype, (box,) if box is not None else ())
    return _make_entity(t, etype, b, acc)


_INF = math.inf


# ---------------------------------------------------------------- item conversion
def _field_kind(v: Any) -> int:
    """0 text, 1 type word, 2 box/null, 3 bare number."""
    if v is None:
        return 2
    if isinstance(v, bool):
        return 0
    if isinstance(v, (int, float)):
        return 3
    if isinstance(v, (list, tuple, dict)):
        return 2
    if isinstance(v, str):
        s = v.strip()
        if s.lower() in _NULL_WORDS or _strip_quotes(s).lower() in _NULL_WORDS:
            return 2
        if _type_rank(s):
            return 1
        if len(s) <= 400 and _HAS_DIGIT_RE.search(s) and _BOXISH_RE.fullmatch(s):
            return 3 if _NUM_RE.fullmatch(s.strip()) else 2
        return 0
    return 0


def _entity_from_fields(fields: Sequence[Any], acc: _Acc, need_marker: bool) -> Optional[Entity]:
    """An entity from unordered fields: which is the type, which the box, which the text.

    Returns None without counting when the fields do not look like an entity at all (and
    ``need_marker`` asks for a type word or a box/None field)."""
    texts, types, boxes, numbers = [], [], [], []
    for i, f in enumerate(fields):
        k = _field_kind(f)
        if k == 0:
            texts.append(f)
        elif k == 1:
            types.append((i, f))
        elif k == 2:
            boxes.append(f)
        else:
            numbers.append(f)
    if need_marker and not types and not boxes:
        return None
    if not texts and len(numbers) == 1 and types:  # a numeric entity text: ("2016", "OTHER", None)
        texts.append(numbers.pop())
    if not texts and not types:
        return None
    etype: Any = None
    if types:
        if texts:
            best = max(types, key=lambda it: (_type_rank(it[1]), -it[0]))
            etype = best[1]
            texts.extend(f for i, f in types if i != best[0])
        elif len(types) >= 2:
            # e.g. ("People", "ORG"): the best-ranked word is the type, the other the entity;
            # equal ranks: positional (entity first).
            ranked = sorted(types, key=lambda it: (-_type_rank(it[1]), -it[0]))
            etype = ranked[0][1]
            texts = [f for i, f in sorted(types) if i != ranked[0][0]]
        else:
            acc.dropped += 1  # only a type word: no entity text
            return None
    elif len(texts) >= 2:
        etype = texts.pop(1)  # (entity, unknown-type, ...): positional
    entity_text = texts[0] if len(texts) == 1 else ", ".join(
        str(t).strip() for t in texts if isinstance(t, str))
    box_val: Any = None
    if boxes:
        if len(boxes) == 1:
            box_val = boxes[0]
        elif all(isinstance(b, str) for b in boxes):  # "(x1,y1)", "(x2,y2)" split into two fields
            box_val = " ".join(boxes)
        else:
            box_val = boxes[0]
    elif numbers:  # x1, y1, x2, y2 as separate fields (4 of them, else a bad box)
        box_val = list(numbers) if len(numbers) == 4 else " ".join(str(n) for n in numbers)
    return _make_entity(entity_text, etype, box_val, acc)


def _entity_from_mapping(d: dict, acc: _Acc) -> Optional[Entity]:
    if len(d) == 3 and d.keys() == _CANON:
        return _canonical_entity(d, acc)
    low = {}
    for k, v in d.items():
        if isinstance(k, str):
            low.setdefault(k.strip().lower(), v)
    ekey = next((k for k in _ENTITY_KEYS if k in low), None)
    tkey = next((k for k in _TYPE_KEYS if k in low and k != "label"), None)
    if "label" in low:
        if ekey is None and tkey is not None:
            ekey = "label"  # {"label": "Kevin Durant", "category": "PER"}
        elif tkey is None:
            tkey = "label"  # {"entity": "Kevin Durant", "label": "PER"}
    if ekey is None:
        if len(d) == 1:  # {"Kevin Durant": "PER"} / {"Kevin Durant": {...}} / {"Kevin Durant": [..]}
            (k, v), = d.items()
            return _entity_from_keyed(k, v, acc)
        acc.dropped += 1
        return None
    etype = low[tkey] if tkey is not None else None
    for k in _BOX_KEYS:
        if k in low:
            return _make_entity(low[ekey], etype, low[k], acc)
    return _make_entity(low[ekey], etype, None, acc)


def _entity_from_keyed(key: Any, value: Any, acc: _Acc) -> Optional[Entity]:
    """``{"Kevin Durant": <form>}``: the key is the entity, the value its type/box/form."""
    if isinstance(value, dict):
        low = {str(k).strip().lower(): v for k, v in value.items()}
        etype = next((low[k] for k in _TYPE_KEYS if k in low), None)
        box = next((low[k] for k in _BOX_KEYS if k in low), None)
        return _make_entity(key, etype, box, acc)
    if isinstance(value, (list, tuple)):
        return _entity_from_fields([key, *value[:8]], acc, need_marker=False) or _drop(acc)
    if isinstance(value, str) or value is None:
        return _entity_from_fields([key, value], acc, need_marker=False) or _drop(acc)
    acc.dropped += 1
    return None


def _drop(acc: _Acc) -> None:
    acc.dropped += 1
    return None


_MISSING = object()


def _entity_from_item(item: Any, acc: _Acc) -> Optional[Entity]:
    if isinstance(item, dict):
        return _entity_from_mapping(item, acc)
    if isinstance(item, (list, tuple)):
        if not item or len(item) > 8:
            acc.dropped += 1
            return None
        return _entity_from_fields(item, acc, need_marker=False) or _drop(acc)
    if isinstance(item, _Keyed):
        return _entity_from_keyed(item.key, item.value, acc)
    if isinstance(item, str):
        s = item.strip()
        if len(s) > MAX_GROUP:
            acc.dropped += 1
            return None
        if s.startswith("(") and s.endswith(")"):
            s = s[1:-1]
        fields = _split_fields(s)
        if len(fields) >= 2:
            e = _entity_from_fields(fields, acc, need_marker=True)
            if e is not None:
                return e
        for sep in ("|", "\t", " - "):
            if sep in s:
                e = _entity_from_fields([f for f in s.split(sep) if f.strip()], acc, need_marker=True)
                if e is not None:
                    return e
        return _make_entity(s, None, None, acc, has_box=False)  # a bare entity name
    acc.dropped += 1
    return None


class _Keyed:
    __slots__ = ("key", "value")

    def __init__(self, key, value):
        self.key, self.value = key, value


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _answer_items(v: Any, depth: int = 0) -> Optional[list]:
    """The raw items of an answer-like JSON/Python value, or None if it is not an answer."""
    if type(v) is list and v and type(v[0]) is dict:
        return v  # the common case: a list of objects
    if isinstance(v, (list, tuple)):
        if not v:
            return []
        if all(_is_number(x) for x in v):
            return None  # a box, not an answer
        if all(isinstance(x, (list, tuple)) and x and all(_is_number(y) for y in x) for x in v):
            return None  # a list of boxes/points
        if not any(isinstance(x, dict) for x in v) and any(
                x is None or (isinstance(x, (list, tuple)) and x and all(_is_number(y) for y in x))
                for x in v) and any(isinstance(x, str) for x in v) and len(v) <= 8:
            return [v]  # one bare triple: ["Kevin Durant", "PER", [..]]
        return list(v)
    if isinstance(v, dict):
        if not v:
            return []
        low = {}
        for k, val in v.items():
            if isinstance(k, str):
                low.setdefault(k.strip().lower(), val)
        if any(k in low for k in _ENTITY_KEYS) or ("label" in low and len(low) > 1):
            return [v]
        if depth < 3:
            for k in _CONTAINER_KEYS:
                if k in low and isinstance(low[k], (list, dict)):
                    inner = _answer_items(low[k], depth + 1)
                    if inner is not None:
                        return inner
        keys = list(v.keys())
        if keys and all(isinstance(k, str) and _type_rank(k) for k in keys) and all(
                isinstance(x, (list, str)) for x in v.values()):
            # {"PER": ["Kevin Durant"], "ORG": ["NBA"]}: grouped by type
            items = []
            for k, vals in v.items():
                for x in (vals if isinstance(vals, list) else [vals]):
                    if isinstance(x, dict):
                        x = dict(x)
                        x.setdefault("type", k)
                        items.append(x)
                    elif isinstance(x, (list, tuple)):
                        items.append([*x, k] if not any(_type_rank(y) for y in x) else x)
                    else:
                        items.append(_Keyed(x, k))
            return items
        if all(isinstance(k, str) for k in keys) and any(
                isinstance(x, (dict, str, list, tuple)) or x is None for x in v.values()):
            if any(k.strip().lower() in ("x1", "xmin", "left", "x") for k in keys):
                return None  # a box
            return [_Keyed(k, val) for k, val in v.items()]
        return None
    return None


def _convert_items(items: list, acc: _Acc, max_entities: int) -> List[Entity]:
    out: List[Entity] = []
    n = len(items)
    for idx, item in enumerate(items):
        if len(out) >= max_entities:
            acc.dropped += n - idx
            break
        if type(item) is dict and len(item) == 3 and item.keys() == _CANON:
            e = _canonical_entity(item, acc)
        else:
            e = _entity_from_item(item, acc)
        if e is not None:
            out.append(e)
    return out


# ---------------------------------------------------------------- JSON branch
def _json_value(body: str, acc: _Acc) -> Tuple[Any, str]:
    """(value, format) of the answer's JSON/Python structure, or (_MISSING, "")."""
    if body[:1] in ("[", "{"):
        try:
            return json.loads(body), "json"
        except (ValueError, RecursionError):
            pass
        fixed = _TRAILING_COMMA_RE.sub("", body)
        if fixed != body:
            try:
                v = json.loads(fixed)
                acc.repaired += 1
                return v, "json"
            except (ValueError, RecursionError):
                pass
    # Python literal (single quotes, None, tuples)
    if "'" in body or "None" in body or "(" in body:
        a = _first_of(body, "[{(")
        b = max(body.rfind("]"), body.rfind("}"), body.rfind(")"))
        if 0 <= a < b:
            try:
                v = ast.literal_eval(body[a:b + 1])
            except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError, OverflowError):
                v = _MISSING
            if v is not _MISSING and _answer_items(v) is not None:
                return v, "python"
    body = _TRAILING_COMMA_RE.sub("", body)
    if "None" in body:
        body = _NONE_RE.sub("null", body)
    return _scan_json(body, acc)


def _first_of(s: str, chars: str) -> int:
    best = -1
    for c in chars:
        i = s.find(c)
        if i >= 0 and (best < 0 or i < best):
            best = i
    return best


def _scan_json(body: str, acc: _Acc) -> Tuple[Any, str]:
    """Decode every top-level JSON value in ``body``; keep the last answer-like one, or recover the
    complete entity objects of a truncated list."""
    found = []
    pos, fails, n, last_end = 0, 0, len(body), 0
    while pos < n and fails < MAX_JSON_FAILS:
        m = _OPEN_RE.search(body, pos)
        if m is None:
            break
        i = m.start()
        try:
            val, end = _DECODER.raw_decode(body, i)
        except (ValueError, RecursionError):
            fails += 1
            pos = i + 1
            continue
        found.append(val)
        pos = last_end = end
    last_answer = -1
    for idx, val in enumerate(found):
        if isinstance(val, list) and _answer_items(val) is not None:
            last_answer = idx
        elif isinstance(val, dict) and not _is_entity_dict(val) and _answer_items(val) is not None:
            last_answer = idx
    tail = [v for v in found[last_answer + 1:] if isinstance(v, dict) and _is_entity_dict(v)]
    if tail:
        if body.count("[") > body.count("]") or body.count("{") > body.count("}"):
            acc.repaired += 1  # a truncated list: its complete objects are kept
            if "{" in body[last_end:]:
                acc.dropped += 1  # ... and the object cut off is lost
        return tail, "json"
    if last_answer >= 0:
        return found[last_answer], "json"
    return _MISSING, ""


def _is_entity_dict(v: dict) -> bool:
    for k in v:
        if isinstance(k, str) and k.strip().lower() in _ENTITY_KEYS:
            return True
    return False


# ---------------------------------------------------------------- text branches
def _split_fields(s: str) -> List[str]:
    """Split at commas outside brackets and quotes."""
    if not any(c in s for c in "[({\"'"):
        return [f for f in (x.strip() for x in s.split(",")) if f]
    out, depth, quote, start = [], 0, "", 0
    for i, c in enumerate(s):
        if quote:
            if c == quote:
                quote = ""
        elif c in "\"":
            quote = c
        elif c == "'" and (i == 0 or not s[i - 1].isalnum()):  # an apostrophe inside a word is text
            quote = c
        elif c in "[({":
            depth += 1
        elif c in "])}":
            depth = max(0, depth - 1)
        elif c == "," and depth == 0:
            out.append(s[start:i])
            start = i + 1
    out.append(s[start:])
    return [f for f in (x.strip() for x in out) if f]


def _parse_tuples(body: str, acc: _Acc, max_entities: int) -> Optional[List[Entity]]:
    out: List[Entity] = []
    found = False
    for m in _TUPLE_RE.finditer(body):
        inner = m.group(1)
        if len(inner) > MAX_GROUP or "," not in inner:
            continue
        fields = _split_fields(inner)
        if len(fields) < 2 or len(fields) > 8:
            continue
        before = acc.dropped
        e = _entity_from_fields(fields, acc, need_marker=True)
        if e is None:
            if acc.dropped > before:
                found = True
            continue
        found = True
        if len(out) >= max_entities:
            acc.dropped += 1
            continue
        out.append(e)
    return out if found else None


_LINE_SEPS = ("|", "\t", " - ", " \u2013 ", " \u2014 ", ";")


def _parse_lines(body: str, acc: _Acc, max_entities: int) -> Optional[List[Entity]]:
    out: List[Entity] = []
    found = False
    block: dict = {}

    def add(e: Optional[Entity]) -> None:
        if e is None:
            return
        if len(out) >= max_entities:
            acc.dropped += 1
        else:
            out.append(e)

    def flush() -> None:
        nonlocal found
        if any(k in _ENTITY_KEYS or k == "label" for k in block):
            found = True
            add(_entity_from_mapping(dict(block), acc))
        block.clear()

    if "}," in body:  # one object per line: [{entity: A, type: PER}, {entity: B, ...}]
        body = body.replace("},", "},\n")
    for line in body.splitlines()[:MAX_LINES]:
        line = line.strip()
        if not line or len(line) > MAX_GROUP:
            continue
        line = _BULLET_RE.sub("", line, count=1)
        kv = _kv_parts(line)
        if kv is not None:  # "Entity: Kevin Durant, Type: PER, Box: [..]" (also over several lines)
            if any(k in _ENTITY_KEYS for k in kv) and any(k in _ENTITY_KEYS for k in block):
                flush()
            block.update(kv)
            continue
        flush()
        for fields in _line_splits(line):
            if len(fields) < 2 or len(fields) > 8 or not any(_type_rank(f) for f in fields):
                continue
            before = acc.dropped
            e = _entity_from_fields(fields, acc, need_marker=True)
            if e is None:
                if acc.dropped > before:
                    found = True
                continue
            found = True
            add(e)
            break
    flush()
    return out if found else None


_KV_RE = re.compile(r"[\"']?([A-Za-z][A-Za-z_ ]{0,24}?)[\"']?\s*[:=]\s*(.*)", re.DOTALL)
_KV_KEYS = frozenset(_ENTITY_KEYS + _TYPE_KEYS + _BOX_KEYS)
_KV_SPLIT_RE = re.compile(r"[;|]")


def _kv_parts(line: str) -> Optional[dict]:
    """``{"entity": .., "type": .., "bbox": ..}`` from ``key: value`` parts, or None."""
    if ":" not in line and "=" not in line:
        return None
    line = line.lstrip("[{ \t").rstrip("]}, \t")  # an object written without JSON quoting
    parts = []
    for sub in _KV_SPLIT_RE.split(line):
        parts.extend(_split_fields(sub))
    d: dict = {}
    last = None
    for part in parts:
        m = _KV_RE.fullmatch(part)
        key = "_".join(m.group(1).lower().split()) if m else None
        if key is None or key not in _KV_KEYS:
            if last is None:
                return None
            d[last] = d[last] + ", " + part  # a comma inside a value: "Washington, D.C."
            continue
        d[key] = m.group(2).strip()
        last = key
    return d or None


def _line_splits(line: str):
    for sep in _LINE_SEPS:
        if sep in line:
            yield [f.strip() for f in line.split(sep) if f.strip()]
    yield _split_fields(line)
    if ":" in line:
        head, _, rest = line.partition(":")
        yield [head.strip(), *_split_fields(rest)]
    m = _NAME_TYPE_RE.fullmatch(line)  # Kevin Durant (PER): [1, 2, 3, 4]
    if m:
        yield [f for f in (m.group(1).strip(), m.group(2), m.group(3).strip()) if f]


def _parse_qwen_tokens(body: str, acc: _Acc, max_entities: int) -> Optional[List[Entity]]:
    parts = body.split(REF_OPEN)
    if len(parts) < 2:
        return None
    out: List[Entity] = []
    for part in parts[1:]:
        name, sep, rest = part.partition(REF_CLOSE)
        if not sep:
            acc.dropped += 1
            continue
        if len(out) >= max_entities:
            acc.dropped += 1
            continue
        rest = rest[:MAX_GROUP]
        m = _BOXLIST_RE.search(rest)
        box_val = [m.group(1), m.group(2), m.group(3), m.group(4)] if m else None
        t = _TYPE_WORD_RE.search(rest)
        e = _make_entity(name, t.group(1) if t else None, box_val, acc)
        if e is not None:
            out.append(e)
    return out


# ---------------------------------------------------------------- entry points
def _coerce(text: Any) -> Optional[str]:
    if text is None:
        return None
    if isinstance(text, str):
        return text
    if isinstance(text, (bytes, bytearray, memoryview)):
        return bytes(text).decode("utf-8", errors="replace")
    if isinstance(text, (list, tuple)):  # a list of messages: the last assistant content
        for m in reversed(text):
            if isinstance(m, dict) and m.get("role", "assistant") == "assistant":
                c = m.get("content")
                if isinstance(c, list):
                    c = "".join(p.get("text", "") for p in c if isinstance(p, dict)
                                and isinstance(p.get("text"), str))
                return c if isinstance(c, str) else None
        return None
    try:
        return str(text)
    except Exception:
        return None


def _answer_region(s: str) -> str:
    i = s.rfind(ANSWER_OPEN)
    if i >= 0:
        chunk = s[i + len(ANSWER_OPEN):i + len(ANSWER_OPEN) + MAX_SCAN]
        j = chunk.find(ANSWER_CLOSE)
        return chunk[:j] if j >= 0 else chunk
    k = s.rfind(THINK_CLOSE)
    if k >= 0:
        s = s[k + len(THINK_CLOSE):]
    return s[-MAX_SCAN:]


def _qwen_box_sub(m: "re.Match") -> str:
    return "[%s, %s, %s, %s]" % m.groups()


def parse_answer(text: Any, *, max_entities: int = 200,
                 extent: Optional[Tuple[float, float]] = None) -> ParseResult:
    """Parse a completion into entities (see the module docstring). Never raises.

    ``extent``: (max x, max y) of the answer's coordinate space; when given, boxes are also clamped
    to it (`CoordinateSpace.model_extent`). ``max_entities``: entities kept; more are dropped.
    """
    try:
        return _parse(text, max_entities, extent)
    except Exception:  # pragma: no cover - a last guard: the parser must never break training
        return ParseResult([], False, 0, 0, "none")


def _parse(text: Any, max_entities: int, extent) -> ParseResult:
    s = _coerce(text)
    if not s:
        return ParseResult([], False, 0, 0, "none")
    if type(max_entities) is not int or max_entities < 0:
        try:
            max_entities = max(0, int(max_entities))
        except (TypeError, ValueError, OverflowError):
            max_entities = 200
    if extent is not None:
        try:
            ex, ey = float(extent[0]), float(extent[1])
            extent = (ex, ey) if (math.isfinite(ex) and math.isfinite(ey) and ex > 0 and ey > 0) else None
        except (TypeError, ValueError, IndexError, OverflowError):
            extent = None
    body = _answer_region(s).strip()
    if body.startswith("```"):
        body = _FENCE_RE.sub("", body).strip()
    if not body:
        return ParseResult([], False, 0, 0, "none")
    if len(body) <= 80 and _EMPTY_ANSWER_RE.fullmatch(body):
        return ParseResult([], True, 0, 0, "json" if body[:1] in "[{" else "empty")
    if BOX_OPEN in body:
        body = _QWEN_BOX_RE.sub(_qwen_box_sub, body)
        if BOX_OPEN in body:
            body = _QWEN_BOX_BAD_RE.sub("null", body)

    # 1. JSON / Python literal
    if "[" in body or "{" in body:
        acc = _Acc(extent)
        value, fmt = _json_value(body, acc)
        if value is not _MISSING:
            items = _answer_items(value)
            if items is not None:
                ents = _convert_items(items, acc, max_entities)
                return ParseResult(ents, True, acc.dropped, acc.repaired, fmt)
    # 2. Qwen grounding tokens, 3. tuples, 4. lines
    for name, fn, needed in (("qwen_tokens", _parse_qwen_tokens, REF_OPEN), ("tuple", _parse_tuples, "("),
                             ("lines", _parse_lines, "")):
        if needed in body:
            acc = _Acc(extent)
            ents = fn(body, acc, max_entities)
            if ents is not None:
                return ParseResult(ents, True, acc.dropped, acc.repaired, name)
    return ParseResult([], False, 0, 0, "none")


# ---------------------------------------------------------------- strict format check
_FORMAT_RE = re.compile(r"\s*<think>(.*?)</think>\s*<answer>(.*?)</answer>\s*", re.DOTALL)
_CANONICAL_KEYS = frozenset(("entity", "type", "bbox"))


def format_ok(text: Any) -> bool:
    """True iff ``text`` has exactly the canonical shape (module docstring). Never raises."""
    try:
        s = _coerce(text)
        if not s or len(s) > 16 * MAX_SCAN:
            return False
        if (s.count(THINK_OPEN) != 1 or s.count(THINK_CLOSE) != 1 or s.count(ANSWER_OPEN) != 1
                or s.count(ANSWER_CLOSE) != 1):
            return False
        m = _FORMAT_RE.fullmatch(s)
        if m is None:
            return False
        body = m.group(2).strip()
        if BOX_OPEN in body:
            body = _QWEN_BOX_RE.sub(_qwen_box_sub, body)
        value = json.loads(body)
        if not isinstance(value, list):
            return False
        for item in value:
            if not isinstance(item, dict) or item.keys() != _CANONICAL_KEYS:
                return False
            if not isinstance(item["entity"], str) or not item["entity"].strip():
                return False
            if not isinstance(item["type"], str):
                return False
            b = item["bbox"]
            if b is None:
                continue
            if not isinstance(b, list) or len(b) != 4 or not all(
                    _is_number(v) and math.isfinite(v) for v in b):
                return False
        return True
    except Exception:
        return False


def completion_text(c: Any) -> str:
    """The answer text of one completion: a string, or the last assistant content of messages."""
    if isinstance(c, str):
        return c
    if isinstance(c, dict):
        c = [c]
    if isinstance(c, (list, tuple)):
        for m in reversed(c):
            if isinstance(m, dict) and m.get("role", "assistant") == "assistant":
                content = m.get("content")
                if isinstance(content, list):
                    return "".join(p.get("text", "") for p in content
                                   if isinstance(p, dict) and isinstance(p.get("text"), str))
                return content if isinstance(content, str) else ""
        return ""
    if isinstance(c, bytes):
        return c.decode("utf-8", errors="replace")
    return "" if c is None else str(c)
