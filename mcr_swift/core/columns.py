"""The columns an mcr-swift row carries besides ms-swift's own (messages, images, objects), and the
gold they hold: ``mcr_task``, ``mcr_gold`` (JSON text, original pixels), ``mcr_image_sizes``. The row
format itself (messages, images, objects): `mcr_swift.data.rows`."""
from __future__ import annotations

import json
from typing import Any, List, Mapping, Sequence

from .entities import Entity

#: Columns every mcr-swift row carries besides ms-swift's own (messages, images, objects).
GOLD_COLUMN = "mcr_gold"
SIZES_COLUMN = "mcr_image_sizes"
TASK_COLUMN = "mcr_task"
#: Row tasks: Twitter-GMNER, MNER-MI (span/type only, Sec. 5.3) and GREC (visual grounding, Sec. 5.3).
TASKS = ("gmner", "mner_mi", "grec")


def row_task(row: Mapping[str, Any]) -> str:
    """The row's ``mcr_task`` (``gmner`` when absent, as in rows written before it existed)."""
    return str(row.get(TASK_COLUMN) or "gmner")


def gold_json(entities: Sequence[Entity]) -> str:
    return json.dumps([e.to_dict() for e in entities], ensure_ascii=False)


def parse_gold(raw: Any) -> List[Entity]:
    """Decode a ``mcr_gold`` value (JSON text or an already decoded list). Raises ValueError if malformed."""
    items = json.loads(raw) if isinstance(raw, (str, bytes)) else raw
    if not isinstance(items, list):
        raise ValueError(f"{GOLD_COLUMN} must be a JSON list, got {type(items).__name__}")
    out = []
    for d in items:
        if not isinstance(d, dict):
            raise ValueError(f"{GOLD_COLUMN} item is not an object: {d!r:.80}")
        out.append(Entity.from_dict(d))
    return out


def gold_from_row(row: Mapping[str, Any]) -> List[Entity]:
    """The gold entities of a row (``mcr_gold``), original pixels. Raises ValueError if malformed."""
    raw = row.get(GOLD_COLUMN)
    if raw is None:
        raise ValueError(f"row has no {GOLD_COLUMN!r} column")
    return parse_gold(raw)
