"""The answer grammar: every well-formed style the parser reads, turned into entities.

* Structured values (a decoded JSON or Python literal): the canonical ``{"entity", "type", "bbox"}``
  objects (fast path), other key names, wrappers, dicts keyed by entity or by type, lists of lists,
  tuple strings (`answer_items`, `convert_items`).
* Text styles: Qwen grounding tokens, ``(entity, type, box)`` tuples, ``entity | type | box`` lines
  and ``key: value`` records (`parse_qwen_tokens`, `parse_tuples`, `parse_lines`).

Decoding and salvaging the JSON itself is in `salvage`, box repairs in `boxes`; the public face and
the full description of the grammar is `mcr_swift.core.parser`."""

from __future__ import annotations

import math
import re
from typing import Any, List, Optional, Sequence

from ..entities import Entity
from .boxes import _entity, _fix_box, _make_entity
from .vocab import (MAX_GROUP, MAX_LINES, REF_CLOSE, REF_OPEN, TYPE_SYNONYMS, _BOX_KEYS, _CODES,
                    _CONTAINER_KEYS, _ENTITY_KEYS, _HAS_DIGIT_RE, _NULL_WORDS, NUM, _NUM_RE, _QUOTE_PAIRS,
                    _TYPE_KEYS, ParseState, _strip_quotes, _type_rank, clean_entity_text, is_damaged,
                    normalize_type)

# A top-level parenthesised group with at most one level of inner parentheses ("unrolled loop":
# every repetition starts with a distinct character class, so matching is linear).
_TUPLE_RE = re.compile(r"\(([^()]*(?:\([^()]*\)[^()]*)*)\)")
_BULLET_RE = re.compile(r"^\s*(?:[-*\u2022+>]+|\d{1,4}[.)\]:]|\(\d{1,4}\))\s+")
_BOXISH_RE = re.compile(r"[\s\d.,+\-eE()\[\]]*")  # a field made only of number/box characters
_TYPE_WORD_RE = re.compile(
    r"\b(" + "|".join(sorted(TYPE_SYNONYMS, key=len, reverse=True)) + r")\b", re.IGNORECASE)
_BOXLIST_RE = re.compile(r"\[\s*(%s)\s*,\s*(%s)\s*,\s*(%s)\s*,\s*(%s)\s*\]" % (NUM, NUM, NUM, NUM))
_NAME_TYPE_RE = re.compile(r"(.*?)\s*[(\[]\s*([A-Za-z]{2,20})\s*[)\]]\s*[:,\-]?\s*(.*)")



_CANON = frozenset(("entity", "type", "bbox"))
_NUMBER_TYPES = (int, float)


def _canonical_entity(d: dict, acc: ParseState) -> Optional[Entity]:
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


def _entity_from_fields(fields: Sequence[Any], acc: ParseState, need_marker: bool) -> Optional[Entity]:
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


def _entity_from_mapping(d: dict, acc: ParseState) -> Optional[Entity]:
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


def _entity_from_keyed(key: Any, value: Any, acc: ParseState) -> Optional[Entity]:
    """``{"Kevin Durant": <form>}``: the key is the entity, the value its type/box/form."""
    if isinstance(value, dict):
        low = {str(k).strip().lower(): v for k, v in value.items()}
        etype = next((low[k] for k in _TYPE_KEYS if k in low), None)
        box = next((low[k] for k in _BOX_KEYS if k in low), None)
        return _make_entity(key, etype, box, acc)
    if isinstance(value, (list, tuple)):
        return _fields_or_drop([key, *value[:8]], acc)
    if isinstance(value, str) or value is None:
        return _fields_or_drop([key, value], acc)
    acc.dropped += 1
    return None


def _fields_or_drop(fields: Sequence[Any], acc: ParseState) -> Optional[Entity]:
    """`_entity_from_fields` for an item known to be one: a failure is dropped and counted once."""
    before = acc.dropped
    e = _entity_from_fields(fields, acc, need_marker=False)
    if e is None and acc.dropped == before:
        acc.dropped += 1
    return e




def _entity_from_item(item: Any, acc: ParseState) -> Optional[Entity]:
    if is_damaged(item) or (type(item) is Keyed and (is_damaged(item.key) or is_damaged(item.value))):
        acc.dropped += 1  # an item a cut or an unreadable token touched: lost, in every form
        return None
    if isinstance(item, dict):
        return _entity_from_mapping(item, acc)
    if isinstance(item, (list, tuple)):
        if not item or len(item) > 8:
            acc.dropped += 1
            return None
        return _fields_or_drop(item, acc)
    if isinstance(item, Keyed):
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


class Keyed:
    """An item of a dict keyed by entity (``{"Kevin Durant": {...}}``) or by type (``{"PER": [..]}``)."""
    __slots__ = ("key", "value")

    def __init__(self, key, value):
        self.key, self.value = key, value


def is_number(v: Any) -> bool:
    """An int or a float, not a bool."""
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def answer_items(v: Any, depth: int = 0) -> Optional[list]:
    """The raw items of an answer-like JSON/Python value, or None if it is not an answer."""
    if type(v) is list and v and type(v[0]) is dict:
        return v  # the common case: a list of objects
    if isinstance(v, (list, tuple)):
        if not v:
            return []
        if all(is_number(x) for x in v):
            return None  # a box, not an answer
        if all(isinstance(x, (list, tuple)) and x and all(is_number(y) for y in x) for x in v):
            return None  # a list of boxes/points
        if not any(isinstance(x, dict) for x in v) and any(
                x is None or (isinstance(x, (list, tuple)) and x and all(is_number(y) for y in x))
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
                    inner = answer_items(low[k], depth + 1)
                    if inner is not None:
                        return inner
        keys = list(v.keys())
        if keys and all(isinstance(k, str) and _type_rank(k) for k in keys) and all(
                isinstance(x, (list, str)) for x in v.values()):
            # {"PER": ["Kevin Durant"], "ORG": ["NBA"]}: grouped by type
            items = []
            for k, vals in v.items():
                for x in (vals if isinstance(vals, list) else [vals]):
                    if is_damaged(x):
                        items.append(x)  # dropped and counted by convert_items
                    elif isinstance(x, dict):
                        x = dict(x)
                        x.setdefault("type", k)
                        items.append(x)
                    elif isinstance(x, (list, tuple)):
                        items.append([*x, k] if not any(_type_rank(y) for y in x) else x)
                    else:
                        items.append(Keyed(x, k))
            return items
        if all(isinstance(k, str) for k in keys) and any(
                isinstance(x, (dict, str, list, tuple)) or x is None for x in v.values()):
            if any(k.strip().lower() in ("x1", "xmin", "left", "x") for k in keys):
                return None  # a box
            return [Keyed(k, val) for k, val in v.items()]
        return None
    return None


def convert_items(items: list, acc: ParseState, max_entities: int) -> List[Entity]:
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


def _read_record(fields: Sequence[Any], acc: ParseState, out: List[Entity], max_entities: int
                 ) -> Optional[bool]:
    """One text record (a tuple's or a line's fields) into ``out``: True if it is an entity (kept, or
    dropped beyond ``max_entities``), False if it is an entity record that was dropped (e.g. no text),
    None if the fields are not an entity record at all (nothing counted)."""
    if len(fields) < 2 or len(fields) > 8:
        return None
    before = acc.dropped
    e = _entity_from_fields(fields, acc, need_marker=True)
    if e is None:
        return False if acc.dropped > before else None
    _keep(e, acc, out, max_entities)
    return True


def _keep(e: Optional[Entity], acc: ParseState, out: List[Entity], max_entities: int) -> None:
    """Append ``e`` to ``out``; beyond ``max_entities`` it is dropped and counted."""
    if e is None:
        return
    if len(out) >= max_entities:
        acc.dropped += 1
    else:
        out.append(e)


def _lose_cut_record(acc: ParseState) -> None:
    """A record cut by the end of a cut answer: lost and counted (as the cut item of a JSON list)."""
    acc.dropped += 1
    acc.repaired += 1


def parse_tuples(body: str, acc: ParseState, max_entities: int) -> Optional[List[Entity]]:
    out: List[Entity] = []
    found = False
    end = 0
    for m in _TUPLE_RE.finditer(body):
        inner = m.group(1)
        end = m.end()
        if len(inner) > MAX_GROUP or "," not in inner:
            continue
        if _read_record(_split_fields(inner), acc, out, max_entities) is not None:
            found = True
    if found and acc.cut and "(" in body[end:]:  # "(..), (..), (Kevin Dur": the unclosed group was cut
        _lose_cut_record(acc)
    return out if found else None


_LINE_SEPS = ("|", "\t", " - ", " \u2013 ", " \u2014 ", ";")


def parse_lines(body: str, acc: ParseState, max_entities: int) -> Optional[List[Entity]]:
    out: List[Entity] = []
    found = False
    block: dict = {}

    def flush() -> None:
        nonlocal found
        if any(k in _ENTITY_KEYS or k == "label" for k in block):
            found = True
            _keep(_entity_from_mapping(dict(block), acc), acc, out, max_entities)
        block.clear()

    if "}," in body:  # one object per line: [{entity: A, type: PER}, {entity: B, ...}]
        body = body.replace("},", "},\n")
    lines = body.splitlines()
    if acc.head_cut and len(lines) > 1:
        lines = lines[1:]  # begins before the scan window: its first line is partial (not counted)
    cut_line = ""
    if acc.last_open and lines:  # a cut answer: its last line may be cut, it is not read
        cut_line = lines.pop()
    for line in lines[:MAX_LINES]:
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
            if not any(_type_rank(f) for f in fields):
                continue
            r = _read_record(fields, acc, out, max_entities)
            if r is not None:
                found = True
                if r:
                    break
    cut_line = _BULLET_RE.sub("", cut_line.strip(), count=1)
    if cut_line and (found or block):
        _lose_cut_record(acc)
        kv = _kv_parts(cut_line)
        if block and kv is not None and not any(k in _ENTITY_KEYS for k in kv):
            block.clear()  # the cut line continued the open key: value record: it is the one cut
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


def parse_qwen_tokens(body: str, acc: ParseState, max_entities: int) -> Optional[List[Entity]]:
    parts = body.split(REF_OPEN)
    if len(parts) < 2:
        return None
    out: List[Entity] = []
    records = parts[1:]
    if acc.last_open:  # a cut answer: its last record is whole only if a line break ended it
        head, nl, rest = records[-1].rpartition("\n")
        rest = rest.strip()
        if nl and (not rest or REF_OPEN.startswith(rest)):
            records[-1] = head
            if rest:
                _lose_cut_record(acc)  # the cut beginning of the next record
        else:
            records.pop()
            _lose_cut_record(acc)
    for part in records:
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
