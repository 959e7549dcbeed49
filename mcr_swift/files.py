"""File checks shared by the commands: images (``prepare``, registered datasets, ``pictures``) and
names taken from data that must stay inside their folder (`plain_name`, `safe_join`).

`check_image(path, full)` opens an image file and returns its (width, height), or raises
`BadImage` saying what is wrong: missing, not an image, or (``full=True``) not decodable to the
end -- a truncated JPEG has a valid header, so only a full decode finds it.
"""
from __future__ import annotations

from pathlib import Path
from typing import Tuple

#: How much of an image is checked: "full" (decode every pixel) or "header" (read the header only).
VERIFY_MODES = ("full", "header")


class BadImage(ValueError):
    """An image file that is missing or unreadable; ``kind`` is "missing" or "unreadable"."""

    def __init__(self, kind: str, message: str):
        super().__init__(message)
        self.kind = kind


def check_image(path, full: bool = True) -> Tuple[int, int]:
    """(width, height) of the image at ``path``; raises `BadImage` when it is missing, is not an
    image, or (``full``) cannot be decoded completely (e.g. a truncated JPEG)."""
    from PIL import Image, ImageFile
    p = Path(path)
    if not p.is_file():
        raise BadImage("missing", f"missing image {p}")
    lenient = ImageFile.LOAD_TRUNCATED_IMAGES
    try:
        ImageFile.LOAD_TRUNCATED_IMAGES = False  # a library may have set it: a truncated file must fail
        with Image.open(p) as im:
            size = im.size
            if full:
                im.load()
    except Exception as e:  # UnidentifiedImageError, OSError("image file is truncated"), SyntaxError...
        raise BadImage("unreadable", f"unreadable image {p}: {e}") from None
    finally:
        ImageFile.LOAD_TRUNCATED_IMAGES = lenient
    return size


def plain_name(name: str, what: str = "name") -> str:
    """``name`` itself when it is one plain file name (no folder part, not "." or "..", no NUL), so
    that ``folder / name`` stays inside ``folder``; ValueError naming ``what`` otherwise."""
    s = str(name)
    if not s or s in (".", "..") or "/" in s or "\\" in s or "\0" in s:
        raise ValueError(f"{what} {s!r} is not a plain file name (it would leave its folder)")
    return s


def safe_join(folder, relative, what: str = "path") -> Path:
    """``folder / relative`` when it stays inside ``folder`` (sub-folders allowed, no "..", not
    absolute); ValueError naming ``what`` otherwise."""
    r = Path(str(relative))
    if not str(relative) or r.is_absolute() or ".." in r.parts or "\0" in str(relative) or r.anchor:
        raise ValueError(f"{what} {str(relative)!r} leaves its folder {folder} (absolute or with '..')")
    return Path(folder) / r


def _same_file(a, b) -> bool:
    """True when paths ``a`` and ``b`` name one file: the same inode and device (a symlink or a hard
    link to it included), or the same resolved path when one of them does not exist yet."""
    import os
    try:
        return os.path.samefile(a, b)
    except OSError:  # one does not exist (yet): equal only if they resolve to one path
        return os.path.realpath(a) == os.path.realpath(b)


def refuse_overwriting_inputs(inputs, outputs) -> None:
    """The check every command runs before it writes: no output file may be one of its input files.

    ``inputs`` and ``outputs`` are ``(label, path)`` pairs (label: the flag, e.g. ``--input``); paths
    are compared resolved, symlinks and hard links included (`_same_file`). Raises ValueError naming
    both (the CLI handler prints it as one line, exit 2) before anything is read or written."""
    inputs = [(label, p) for label, p in inputs if p is not None and str(p) != ""]
    for out_label, out in outputs:
        if out is None or str(out) == "":
            continue
        for in_label, inp in inputs:
            if _same_file(out, inp):
                raise ValueError(f"{out_label} {out} is the same file as {in_label} {inp}: writing it would "
                                 f"overwrite the input; choose another output")
