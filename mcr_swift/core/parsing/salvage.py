"""Recovery of the answer's JSON: the structure decoded as JSON, repaired (trailing commas, Python's
``None``), read as a Python literal (``ast.literal_eval``, never ``eval``), or salvaged from a truncated
list (its complete objects kept, the cut one counted as dropped), with at most ``MAX_JSON_FAILS``
failed decode attempts.

Part of the parser (`mcr_swift.core.parser` documents the rules)."""

from __future__ import annotations

import ast
import json
import re
from typing import Any, Tuple

from .grammar import _answer_items
from .vocab import MAX_JSON_FAILS, _ENTITY_KEYS, _Acc

_TRAILING_COMMA_RE = re.compile(r",\s*(?=[\]}])")
_OPEN_RE = re.compile(r"[\[{]")
_NONE_RE = re.compile(r"\bNone\b")

_DECODER = json.JSONDecoder()

_MISSING = object()


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
