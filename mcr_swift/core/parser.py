"""Robust parser of a model's GMNER answer into `Entity` triples (boxes left in the answer's space).

`parse_answer(text)` never raises: any input (None, bytes, junk, megabytes, truncated JSON, NaN)
gives a `ParseResult`. It is on the GRPO hot path (every rollout of every step), so the common case
(the canonical answer of `mcr_swift.core.answer`) is one ``rfind`` plus one ``json.loads``.

Where the answer is looked for
------------------------------
* If the text has ``<answer>``: the part after the **last** ``<answer>`` up to the next
  ``</answer>`` (or the end, if the answer was truncated).
* Otherwise: the text after the last ``</think>`` (all of it if there is none); there the **last**
  JSON list/object that looks like an answer is taken.
* Only ``MAX_SCAN`` characters (64 KiB) are ever scanned: the first 64 KiB after ``<answer>``, or the
  last 64 KiB of an untagged text. Items beyond that window are neither parsed nor counted; an answer
  that runs past it is read as cut there (below). Every regular expression used is linear (no nested
  unbounded repetition), tuple groups longer than ``MAX_GROUP`` characters are skipped, JSON recovery
  gives up after ``MAX_JSON_FAILS`` failed attempts and reads at most ``MAX_TOKENS`` tokens one by one,
  so the worst case on 5 MB of adversarial text is bounded (~0.3 s, typically far less).

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
    ``QWENVL_BBOX_FORMAT=legacy``), and a cut or malformed structure (see "Cut and malformed answers").
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

Cut and malformed answers (the same rule in every form)
-------------------------------------------------------
An answer is cut when ``<answer>`` has no ``</answer>`` within the scan window (generation stopped, or
the answer is longer than the window). Every form keeps the records that ended before the cut and
loses the one the cut runs through, counted once in ``dropped``:

* JSON / Python structures (objects, lists of lists, tuples, strings, wrappers, dicts keyed by entity
  or by type): the structure is closed where it was cut; an item the cut runs through (an open
  object or list, a cut string or number) is dropped, the whole items before it are kept
  (``repaired`` + 1 for the closing). The same for a malformed structure: an item holding an
  unreadable token (``PER`` unquoted, a stray bracket) is dropped and counted, the others kept; when
  nothing is read from a malformed structure, the text readers below try it.
  ``[["A","PER",null],["B","ORG",[1,2,3,4]],["C"`` reads as A and B, 1 dropped, 1 repaired, as its
  object and tuple forms do.
* tuples: the complete ``(..)`` groups; an unclosed ``(`` after them is the cut record.
* lines and Qwen tokens: a record is whole once its line break is written (Qwen: or the next
  reference token); the text after the last line break is the cut record (not read).
* An untagged text longer than the window begins inside the answer: its first partial line is not
  read (not counted either), and a JSON list whose opening lies before the window is read from its
  complete items.

A cut record is never half-read: a cut answer never yields more entities than the records it holds
whole (property-tested for every form).

Counters
--------
``dropped``: items found but discarded (no entity text, not an entity at all, beyond
``max_entities``, the record a cut runs through, an item holding an unreadable token).
``repaired``: boxes fixed or removed as above, plus 1 for a recovered cut or malformed answer (a
closed JSON structure, trailing commas, a cut text record). Both count only what lies inside the
scanned window (and, in a salvaged structure, its first ``MAX_TOKENS`` tokens).

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
A cut answer is answered when a whole record was read from it; a cut single object is lost (it
may have lost its box), so ``<answer>[{"entity": "NBA", "type": "ORG"`` is not answered.

`format_ok(text)` is the strict check behind the format reward: exactly one ``<think>..</think>``
followed by exactly one ``<answer>..</answer>`` (only whitespace around them) whose content is a JSON
list of objects with exactly the keys entity (string), type (string) and bbox (null or 4 finite
numbers). A bbox written as Qwen box tokens (``QWENVL_BBOX_FORMAT=legacy``) also passes.

The code: this module holds the entry points and the strict format check; it uses the public names
of `mcr_swift.core.parsing` (its ``__init__``): the grammar's vocabulary, the per-parse
`ParseState` and the normalisers are in `.parsing.vocab`, the well-formed styles in `.parsing.grammar`,
recovery in `.parsing.boxes` (box repairs) and `.parsing.salvage` (cut and malformed structures).
"""

from __future__ import annotations

import json
import math
import re
import sys
from dataclasses import dataclass, field
from typing import Any, List, Optional, Tuple

from .entities import Entity
from .parsing import (ANSWER_CLOSE, ANSWER_OPEN, BOX_OPEN, MAX_SCAN, NUM, REF_OPEN, THINK_CLOSE, THINK_OPEN,
                      TYPE_SYNONYMS, ParseState, clean_entity_text, is_number, normalize_type, parse_lines,
                      parse_qwen_tokens, parse_tuples, read_json)

__all__ = ["ParseResult", "parse_answer", "format_ok", "completion_text", "normalize_type", "clean_entity_text",
           "MAX_SCAN", "TYPE_SYNONYMS"]

# <|box_start|>(x1,y1),(x2,y2)<|box_end|>; a malformed body (bounded length) becomes null.
_QWEN_BOX_RE = re.compile(
    r"<\|box_start\|>\s*\(\s*(%s)\s*,\s*(%s)\s*\)\s*,\s*\(\s*(%s)\s*,\s*(%s)\s*\)\s*<\|box_end\|>"
    % (NUM, NUM, NUM, NUM))
_QWEN_BOX_BAD_RE = re.compile(r"<\|box_start\|>[^<]{0,200}?<\|box_end\|>")
_FENCE_RE = re.compile(r"^```[a-zA-Z]*[ \t]*\n?|\n?```\s*$")
_EMPTY_ANSWER_RE = re.compile(
    r"(?:none|null|nil|n/?a|nothing|empty|\[\s*\]|\{\s*\}|"
    r"(?:there (?:are|is) )?no (?:named )?entit(?:y|ies)(?: (?:found|detected|mentioned|present))?)"
    r"\s*[.!]?", re.IGNORECASE)


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

# ---------------------------------------------------------------- entry points
def completion_text(c: Any) -> str:
    """The answer text of one completion: a string, bytes (UTF-8, bad bytes replaced), or the last
    assistant content of a message or a list of messages (``""`` when there is none). Never raises."""
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
    if isinstance(c, (bytes, bytearray, memoryview)):
        return bytes(c).decode("utf-8", errors="replace")
    if c is None:
        return ""
    try:
        return str(c)
    except Exception:
        return ""


def _answer_region(s: str) -> Tuple[str, bool, bool]:
    """(region, cut, head_cut): ``cut`` when ``<answer>`` has no ``</answer>`` within the window,
    ``head_cut`` when an untagged text begins before the window."""
    i = s.rfind(ANSWER_OPEN)
    if i >= 0:
        chunk = s[i + len(ANSWER_OPEN):i + len(ANSWER_OPEN) + MAX_SCAN]
        j = chunk.find(ANSWER_CLOSE)
        return (chunk[:j], False, False) if j >= 0 else (chunk, True, False)
    k = s.rfind(THINK_CLOSE)
    if k >= 0:
        s = s[k + len(THINK_CLOSE):]
    return s[-MAX_SCAN:], False, len(s) > MAX_SCAN


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
    s = completion_text(text)
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
    region, cut, head_cut = _answer_region(s)
    last_open = cut and not region.rstrip(" \t").endswith("\n")
    body = region.strip()
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
    salvaged = None
    if "[" in body or "{" in body:
        r = read_json(body, extent, max_entities)
        if r is not None:
            ents, st, fmt, final = r
            res = ParseResult(ents, True, st.dropped, st.repaired, fmt)
            if ents or final:
                return res
            salvaged = res  # nothing read from a malformed structure: the text readers may do better
    # 2. Qwen grounding tokens, 3. tuples, 4. lines
    for name, fn, needed in (("qwen_tokens", parse_qwen_tokens, REF_OPEN), ("tuple", parse_tuples, "("),
                             ("lines", parse_lines, "")):
        if needed in body:
            st = ParseState(extent, cut, last_open, head_cut)
            ents = fn(body, st, max_entities)
            if ents is not None and (ents or salvaged is None):
                return ParseResult(ents, True, st.dropped, st.repaired, name)
    return salvaged or ParseResult([], False, 0, 0, "none")


# ---------------------------------------------------------------- strict format check
_FORMAT_RE = re.compile(r"\s*<think>(.*?)</think>\s*<answer>(.*?)</answer>\s*", re.DOTALL)
_CANONICAL_KEYS = frozenset(("entity", "type", "bbox"))


def format_ok(text: Any) -> bool:
    """True iff ``text`` has exactly the canonical shape (module docstring). Never raises."""
    try:
        s = completion_text(text)
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
                    is_number(v) and math.isfinite(v) for v in b):
                return False
        return True
    except Exception:
        return False

