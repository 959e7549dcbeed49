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
_QWEN_TOKEN_RE = re.compile(r"<\|(?:object_ref_start|object_ref_end|box_start|box_end|quad_start|quad_end)\|>")



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
