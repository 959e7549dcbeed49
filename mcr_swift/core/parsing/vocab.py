"""The answer grammar's vocabulary: scan limits, tags, type words, key names, the shared
regular expressions, the per-parse counters and the two normalisers (type, entity text).

Part of the parser (`mcr_swift.core.parser` is the public face and documents the grammar)."""

from __future__ import annotations

import math
import re
from typing import Any, Optional

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
NUM = r"[-+]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d+)?"
_NUM_RE = re.compile(NUM + r"|[-+]?(?:nan|inf(?:inity)?)\b", re.IGNORECASE)
_HAS_DIGIT_RE = re.compile(r"\d|\bnan\b|\binf(?:inity)?\b", re.IGNORECASE)
_QWEN_TOKEN_RE = re.compile(r"<\|(?:object_ref_start|object_ref_end|box_start|box_end|quad_start|quad_end)\|>")



class ParseState:
    """What one parse threads through its readers: the counters (``dropped``, ``repaired``), the
    ``extent`` boxes are clamped to, and whether the answer was cut (``cut``: ``<answer>`` without
    ``</answer>`` in the scan window; ``last_open``: cut with no line break after its last record;
    ``head_cut``: an untagged text whose start lies before the scan window)."""

    __slots__ = ("dropped", "repaired", "extent", "cut", "last_open", "head_cut")

    def __init__(self, extent, cut: bool = False, last_open: bool = False, head_cut: bool = False):
        self.dropped = 0
        self.repaired = 0
        self.extent = extent
        self.cut = cut
        self.last_open = last_open
        self.head_cut = head_cut


# ---------------------------------------------------------------- salvage markers
#: "No value" (distinct from None, a JSON null).
MISSING = object()


class _Cut:
    __slots__ = ()

    def __repr__(self) -> str:
        return "CUT"


#: A scalar lost to a cut or unreadable (an answer item that is CUT is dropped and counted).
CUT = _Cut()


class DamagedList(list):
    """A list the salvage closed after a cut, or that holds an unreadable token."""
    __slots__ = ()


class DamagedDict(dict):
    """An object the salvage closed after a cut, or that holds an unreadable token."""
    __slots__ = ()


def is_damaged(v: Any) -> bool:
    """True iff ``v`` is a value a cut or an unreadable token touched (an answer item that is one is
    dropped and counted, in every answer form)."""
    return v is CUT or type(v) is DamagedList or type(v) is DamagedDict


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
