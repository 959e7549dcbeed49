"""JSON-lines reading with errors that name the file and line, and the project's one set of
atomic writers (`atomic_open`, `write_text_atomic`, `write_json_atomic`, `write_jsonl_atomic`).

Atomic write: the content goes to a temporary file in the target's folder, is flushed to disk, and
is renamed over the target with ``os.replace``. A failure at any point (full disk, Ctrl-C, an
exception while producing the rows) removes the temporary file and leaves the old target, or none:
never a 0-byte or half-written file that a rerun would take for a finished stage, and no ``.tmp``
file behind.
"""
from __future__ import annotations

import contextlib
import errno
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Dict, Iterable, Iterator, Tuple


def iter_jsonl(path) -> Iterator[Tuple[int, Dict[str, Any], int]]:
    """Yield (line number, row object, line length in bytes) for each non-blank line of ``path``.

    Raises ValueError naming ``file:line`` for invalid JSON, bytes that are not UTF-8, or a line
    that is not a JSON object.
    """
    path = Path(path)
    with open(path, "rb") as f:
        for no, raw in enumerate(f, 1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise ValueError(f"{path}:{no}: not UTF-8 text (byte 0x{raw[e.start]:02x} at column "
                                 f"{e.start + 1})") from None
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{no}: not valid JSON ({e.msg} at column {e.colno})") from None
            if not isinstance(row, dict):
                raise ValueError(f"{path}:{no}: a row must be a JSON object")
            yield no, row, len(raw)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_open(path, mode: str = "w", encoding: str = "utf-8", fsync: bool = True):
    """``with atomic_open(path) as f: f.write(...)``: ``path`` appears, complete, only when the block
    ends without an exception (see the module docstring). ``mode`` is "w" (text) or "wb".
    ``fsync=False`` leaves the sync to the caller (one sync for many files: stand-in images)."""
    if mode not in ("w", "wb"):
        raise ValueError(f"atomic_open writes whole files: mode 'w' or 'wb', not {mode!r}")
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(errno.EISDIR, "is a folder; give a file name to write", str(path))
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as e:  # e.g. a missing or read-only folder: name the target, not the temporary file
        raise _naming(e, path) from None
    try:
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; give the file the usual permissions
        with os.fdopen(fd, mode, **({} if "b" in mode else {"encoding": encoding})) as f:
            yield f
            f.flush()
            if fsync:
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        if isinstance(e, OSError) and (e.filename == tmp or (e.filename is None and e.errno in _WRITE_ERRNOS)):
            raise _naming(e, path) from None  # "[Errno 28] No space left on device" -> "<path>: ..."
        raise


#: errno values of a failed write (full disk, quota, file too large, I/O error, read-only): an OSError
#: with one of them and no file name, raised while `atomic_open` writes, is about the file it writes.
_WRITE_ERRNOS = frozenset(getattr(errno, n) for n in ("ENOSPC", "EDQUOT", "EFBIG", "EIO", "EROFS")
                          if hasattr(errno, n))


def _naming(e: OSError, path: Path) -> OSError:
    """``e`` as an OSError of the same kind naming ``path`` (the file being written)."""
    return type(e)(e.errno, f"cannot write: {e.strerror or e}", str(path))


def write_text_atomic(path, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    with atomic_open(path) as f:
        f.write(text)


def write_json_atomic(path, obj: Any, indent: int = 1, **kwargs) -> None:
    """Write ``obj`` as JSON to ``path`` atomically (``kwargs`` go to ``json.dumps``)."""
    write_text_atomic(path, json.dumps(obj, indent=indent, **kwargs))


def write_jsonl_atomic(path, rows: Iterable[Dict[str, Any]]) -> None:
    """Write ``rows`` as JSON lines to ``path`` atomically: a reader (or a pipeline's "skip when the
    output exists") never sees a half-written file."""
    with atomic_open(path) as f:
        for r in rows:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
