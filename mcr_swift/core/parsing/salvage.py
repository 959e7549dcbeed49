"""Recovery of the answer's JSON: the structure decoded as JSON, repaired (trailing commas, Python's
``None``), read as a Python literal (``ast.literal_eval``, never ``eval``), or salvaged from a cut or
malformed structure, whatever its items are (objects, lists, tuples, strings).

Salvage keeps every item that was read whole and drops (and counts) every item the damage touched, the
same way in every structure (`read_json`):

* `lenient_value` closes a cut structure and reads past unreadable tokens: a container left open by
  the cut, or holding an unreadable token, becomes a `DamagedList` / `DamagedDict`, a cut or unreadable
  scalar becomes `CUT`; an answer item that is one of these is dropped and counted;
* `scan_json` decodes every complete top-level JSON value of a text (an answer after prose, or the tail
  of a list whose opening lies before the scan window): the last answer-like one, or the run of items
  (entity objects, entity lists) after it.

With at most ``MAX_JSON_FAILS`` failed decode attempts and ``MAX_TOKENS`` tokens. Part of the parser
(`mcr_swift.core.parser` documents the rules)."""

from __future__ import annotations

import ast
import json
import math
import re
from typing import Any, List, Optional, Tuple

from ..entities import Entity
from .grammar import Keyed, answer_items, convert_items
from .vocab import CUT, MAX_JSON_FAILS, MISSING, _ENTITY_KEYS, DamagedDict, DamagedList, ParseState

_TRAILING_COMMA_RE = re.compile(r",\s*(?=[\]}])")
_OPEN_RE = re.compile(r"[\[{]")
_NONE_RE = re.compile(r"\bNone\b")

_DECODER = json.JSONDecoder()
_LAX = json.JSONDecoder(strict=False)

#: Tokens `lenient_value` reads one by one before it treats the rest as cut, like the end of the scan
#: window (a complete sub-value decoded by ``json`` is one token; 200 Python tuples with boxes are
#: ~3200). Bounds the cost of 64 KiB of one-character tokens to ~50 ms.
MAX_TOKENS = 5000
#: Nesting depth `lenient_value` follows; deeper is treated as cut.
MAX_DEPTH = 64

# ---------------------------------------------------------------- lenient reading
_WS_RE = re.compile(r"[ \t\r\n]*")
_DQ_RE = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"?', re.DOTALL)  # "unrolled loop": linear and fast
_SQ_RE = re.compile(r"'[^'\\\n]*(?:\\.[^'\\\n]*)*'?")
_WORD_RE = re.compile(r"[^\s\[\]{}(),:\"']+")
_INT_RE = re.compile(r"[-+]?\d+")
_LITERALS = {"true": True, "True": True, "false": False, "False": False, "null": None, "None": None,
             "NaN": math.nan, "Infinity": math.inf, "-Infinity": -math.inf}
_CLOSER = {"[": "]", "{": "}", "(": ")"}
_NOKEY = object()


class _Frame:
    __slots__ = ("obj", "closer", "key", "colon", "damaged")

    def __init__(self, opener: str):
        self.obj: Any = {} if opener == "{" else []
        self.closer = _CLOSER[opener]
        self.key: Any = _NOKEY
        self.colon = False
        self.damaged = False


def _word(tok: str) -> Any:
    v = _LITERALS.get(tok, MISSING)
    if v is not MISSING:
        return v
    try:
        return int(tok) if _INT_RE.fullmatch(tok) else float(tok)
    except (ValueError, OverflowError):
        return CUT


def lenient_value(body: str, start: int) -> Tuple[Any, int, bool, bool]:
    """(value, end, cut, malformed) of the structure that opens at ``body[start]`` (``[`` or ``{``).

    Complete sub-values are decoded by ``json`` (C speed); the rest token by token: JSON and Python
    literals (single quotes, ``None``/``True``, tuples as lists), missing commas and trailing commas
    tolerated. The end of the text (``cut``) closes every open container; an unreadable token, a
    mismatched closer or a key without value (``malformed``) marks every container it lies in. Marked
    containers become `DamagedList` / `DamagedDict`, a cut or unreadable scalar `CUT`."""
    n = len(body)
    stack: List[_Frame] = []
    pos = start
    fails = tokens = 0
    malformed = False
    root: Any = MISSING

    def damage(bad: bool = True) -> None:
        nonlocal malformed
        malformed = malformed or bad
        for f in stack:
            f.damaged = True

    def put(v: Any) -> bool:
        """Store ``v`` in the open container; True when it completes the root."""
        nonlocal root
        if not stack:
            root = v
            return True
        f = stack[-1]
        if type(f.obj) is list:
            f.obj.append(v)
        elif f.key is _NOKEY:
            try:
                hash(v)
            except TypeError:
                v = CUT
                damage()
            f.key, f.colon = v, False
        else:
            if not f.colon:
                damage()
            f.obj[f.key] = v
            f.key = _NOKEY
        return False

    def close() -> bool:
        f = stack.pop()
        if f.key is not _NOKEY:  # a key without its value
            f.damaged = True
        obj = f.obj
        if f.damaged:
            obj = DamagedList(obj) if type(obj) is list else DamagedDict(obj)
        return put(obj)

    done = False
    while not done:
        pos = _WS_RE.match(body, pos).end()
        if pos >= n or tokens >= MAX_TOKENS:
            break
        tokens += 1
        c = body[pos]
        if c in "[{(":
            if c != "(" and fails < MAX_JSON_FAILS:
                try:
                    v, end = _DECODER.raw_decode(body, pos)
                except (ValueError, RecursionError):
                    fails += 1
                else:
                    done = put(v)
                    pos = end
                    continue
            if len(stack) >= MAX_DEPTH:
                break
            stack.append(_Frame(c))
            pos += 1
        elif c in "]})":
            pos += 1
            if stack and stack[-1].closer == c:
                done = close()
                continue
            if any(f.closer == c for f in stack):
                damage()
                while stack[-1].closer != c:
                    close()
                done = close()
            else:
                damage()  # a closer with nothing to close
        elif c == ",":
            pos += 1
            if stack and type(stack[-1].obj) is dict and stack[-1].key is not _NOKEY:
                damage()  # {"a", ...}: a key without value
                stack[-1].key = _NOKEY
        elif c == ":":
            pos += 1
            f = stack[-1] if stack else None
            if f is not None and type(f.obj) is dict and f.key is not _NOKEY and not f.colon:
                f.colon = True
            else:
                damage()
        elif c == '"' or c == "'":
            m = (_DQ_RE if c == '"' else _SQ_RE).match(body, pos)
            tok = m.group()
            pos = m.end()
            if len(tok) < 2 or tok[-1] != c:  # an unterminated string: cut (or broken by a newline)
                damage(pos < n)
                done = put(CUT)
                continue
            if c == '"':
                try:
                    v = _LAX.decode(tok)
                except ValueError:
                    v = tok[1:-1]
            else:
                v = tok[1:-1]
                if "\\" in v:
                    try:
                        v = ast.literal_eval(tok)
                    except (ValueError, SyntaxError, MemoryError, RecursionError):
                        pass
            done = put(v)
        else:
            m = _WORD_RE.match(body, pos)
            if m is None:  # pragma: no cover - every other character starts a word
                pos += 1
                continue
            pos = m.end()
            v = CUT if pos >= n else _word(m.group())  # a word at the very end may be cut
            if v is CUT:
                damage(pos < n)
            done = put(v)
    cut = not done
    if cut:
        for f in stack:
            f.damaged = True
        while stack:
            close()
    return root, pos, cut, malformed


# ---------------------------------------------------------------- strategies
def _first_of(s: str, chars: str) -> int:
    best = -1
    for c in chars:
        i = s.find(c)
        if i >= 0 and (best < 0 or i < best):
            best = i
    return best


def clean_json(body: str, state: ParseState) -> Tuple[Any, str]:
    """(value, format) of an answer that decodes whole: JSON, JSON with trailing commas (repaired),
    or a Python literal; (MISSING, "") otherwise."""
    if body[:1] in ("[", "{"):
        try:
            return json.loads(body), "json"
        except (ValueError, RecursionError):
            pass
        fixed = _TRAILING_COMMA_RE.sub("", body)
        if fixed != body:
            try:
                v = json.loads(fixed)
                state.repaired += 1
                return v, "json"
            except (ValueError, RecursionError):
                pass
    if "'" in body or "None" in body or "(" in body:  # Python literal (single quotes, None, tuples)
        a = _first_of(body, "[{(")
        b = max(body.rfind("]"), body.rfind("}"), body.rfind(")"))
        if 0 <= a < b:
            try:
                v = ast.literal_eval(body[a:b + 1])
            except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError, OverflowError):
                v = MISSING
            if v is not MISSING and answer_items(v) is not None:
                return v, "python"
    return MISSING, ""


def read_json(body: str, extent, max_entities: int
              ) -> Optional[Tuple[List[Entity], ParseState, str, bool]]:
    """The entities of the answer's JSON/Python structure: (entities, state, format, final), or None
    when no answer-like structure is there.

    A structure that decodes whole is read as it is (`clean_json`). Otherwise two salvages are read
    and the one keeping more entities wins (ties: the first): `lenient_value` from the first opening
    bracket (a cut or malformed answer, ``repaired`` + 1), and `scan_json` (complete values only).
    A salvage counts only if it has entity-like items (objects, lists, strings). ``final`` is False
    for a malformed one (the text readers may read it better when it gave no entity); a cut structure
    whose items were all cut is final: its items are lost, whatever reads the text."""
    state = ParseState(extent)
    value, fmt = clean_json(body, state)
    if value is not MISSING:
        items = answer_items(value)
        if items is None:
            return None
        return convert_items(items, state, max_entities), state, fmt, True
    best = None
    a = _first_of(body, "[{")
    if a >= 0:
        value, _, cut, malformed = lenient_value(body, a)
        if cut or malformed:
            items = answer_items(value)
            if items and any(isinstance(it, (dict, list, str, Keyed)) for it in items):  # entity-like
                state.repaired += 1
                best = (convert_items(items, state, max_entities), state, "json", not malformed)
    if best is not None and len(best[0]) >= max_entities:
        return best  # the scan cannot keep more
    scan_state = ParseState(extent)
    value = scan_json(_NONE_RE.sub("null", _TRAILING_COMMA_RE.sub("", body)) if "None" in body
                      else _TRAILING_COMMA_RE.sub("", body), scan_state)
    if value is not MISSING:
        items = answer_items(value)
        if items is not None:
            ents = convert_items(items, scan_state, max_entities)
            if best is None or len(ents) > len(best[0]):
                best = (ents, scan_state, "json", True)
    return best


def _is_item(v: Any) -> bool:
    """An answer item standing alone: an entity object, or a list read as one entity."""
    if isinstance(v, dict):
        for k in v:
            if isinstance(k, str) and k.strip().lower() in _ENTITY_KEYS:
                return True
        return False
    if isinstance(v, list):
        items = answer_items(v)
        return items is not None and len(items) == 1 and items[0] is v
    return False


def scan_json(body: str, state: ParseState) -> Any:
    """Decode every complete top-level JSON value in ``body``; the last answer-like one, or the run of
    items (entity objects or lists) after it (the complete items of a cut list: ``repaired`` + 1 when
    the brackets do not balance, ``dropped`` + 1 for an item cut after the last one); MISSING if none."""
    found = []
    pos, fails, n = 0, 0, len(body)
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
        found.append((val, end, _is_item(val)))
        pos = end
    last_answer = -1
    for idx, (val, _, item) in enumerate(found):
        if not item and answer_items(val) is not None:
            last_answer = idx
    tail = [(v, end) for v, end, item in found[last_answer + 1:] if item]
    if tail:
        if body.count("[") != body.count("]") or body.count("{") != body.count("}"):
            state.repaired += 1  # a cut list: its complete items are kept
            if _OPEN_RE.search(body, tail[-1][1]):
                state.dropped += 1  # ... and the item cut off is lost
        return [v for v, _ in tail]
    if last_answer >= 0:
        return found[last_answer][0]
    return MISSING
