"""Recovery of boxes: every box form the parser reads (4 numbers, 2 points, strings, dicts, Qwen
tokens, several boxes), the repairs (swapped corners, negative or out-of-extent values clamped, a
non-finite or zero-area box removed, each counted in ``repaired``), and `_make_entity`, which builds an
`Entity` from a text, a type and a raw box value.

Part of the parser (`mcr_swift.core.parser` documents the rules)."""

from __future__ import annotations

import dataclasses
import math
from typing import Any, List, Optional, Sequence, Tuple

from ..entities import Entity
from .vocab import (BOX_CLOSE, BOX_OPEN, _BOX_KEYS, _CODES, _HAS_DIGIT_RE, _NULL_WORDS, _NUM_RE, ParseState,
                    clean_entity_text, normalize_type)


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


def _fix_box(nums: List[Any], acc: ParseState) -> Optional[Tuple[float, float, float, float]]:
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


def _make_entity(text: Any, etype: Any, box_val: Any, acc: ParseState, has_box: bool = True) -> Optional[Entity]:
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
