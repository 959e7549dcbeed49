"""JSON-lines reading with errors that name the file and line."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict, Iterator, Tuple


def iter_jsonl(path) -> Iterator[Tuple[int, Dict[str, Any], int]]:
    """Yield (line number, row object, line length in bytes) for each non-blank line of ``path``.

    Raises ValueError naming ``file:line`` for invalid JSON or a line that is not a JSON object.
    """
    path = Path(path)
    with open(path, encoding="utf-8") as f:
        for no, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{no}: not valid JSON ({e.msg} at column {e.colno})") from None
            if not isinstance(row, dict):
                raise ValueError(f"{path}:{no}: a row must be a JSON object")
            yield no, row, len(line.encode("utf-8"))


def write_jsonl_atomic(path, rows) -> None:
    """Write ``rows`` as JSON lines through a temporary file renamed into place, so a reader (or a
    pipeline's "skip when the output exists") never sees a half-written file."""
    import os
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
    os.replace(tmp, path)

