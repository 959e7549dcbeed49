"""Stand-in images for posts whose tweet image is not at hand (tests, CPU demo): a JPEG of the xml's
size with each gold box outlined; existing files are kept. See docs/data.md (prepare).

Each file is written atomically (a temporary file renamed into place), and the folder is synced to
disk once per batch instead of once per file (`sync_folder`): a crash mid-batch leaves whole files
or none under their names, and a kept file whose header cannot be read is drawn again.
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Iterable, List, Optional, Tuple

from ..files import BadImage, check_image, plain_name
from ..jsonl import atomic_open
from ..core.entities import Sample

DEFAULT_SIZE: Tuple[int, int] = (640, 480)


def _colour(key: str, salt: str = "") -> Tuple[int, int, int]:
    h = hashlib.sha1((key + salt).encode()).digest()
    return h[0], h[1], h[2]


def standin_image(sample: Sample, out_dir: Path, default_size=DEFAULT_SIZE,
                  created: Optional[List[Path]] = None) -> Tuple[Path, Tuple[int, int], bool]:
    """(path, size, drawn) of the sample's stand-in: a kept file's size from its header (it is drawn
    again when the header is unreadable), a new one drawn at the sample's size (not synced: see
    `sync_folder`) and appended to ``created`` (so that a failed ``prepare`` can remove what it
    added)."""
    from PIL import Image, ImageDraw
    path = Path(out_dir) / f"{plain_name(sample.id, 'post id')}.jpg"  # never outside out_dir
    if path.is_file():
        try:
            return path, check_image(path, full=False), False
        except BadImage:
            pass  # e.g. an empty file left by a machine crash before the folder's sync: draw it again
    size = tuple(sample.image_size or default_size)
    img = Image.new("RGB", size, _colour(sample.id))
    draw = ImageDraw.Draw(img)
    for e in sample.entities:
        for b in e.boxes:
            draw.rectangle(b, outline=_colour(e.text, "box"), width=max(1, min(size) // 100))
    with atomic_open(path, "wb", fsync=False) as f:
        img.save(f, format="JPEG", quality=85)
    if created is not None:
        created.append(path)
    return path, size, True


def write_standin_image(sample: Sample, out_dir: Path, default_size=DEFAULT_SIZE,
                        created: Optional[List[Path]] = None) -> Path:
    """Draw the stand-in of ``sample`` into ``out_dir`` unless it exists (`standin_image`), synced."""
    path, _, drawn = standin_image(sample, out_dir, default_size, created)
    if drawn:
        sync_folder(Path(out_dir))
    return path


def sync_folder(folder: Path) -> None:
    """Everything written under ``folder`` to disk: ``syncfs`` of its file system on Linux, else
    ``os.sync``."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        try:
            import ctypes
            libc = ctypes.CDLL(None, use_errno=True)
            if libc.syncfs(fd) == 0:
                return
        except (OSError, AttributeError):
            pass
        os.sync()
    finally:
        os.close(fd)


def standin_images(samples: Iterable[Sample], out_dir, default_size=DEFAULT_SIZE, progress=True,
                   created: Optional[List[Path]] = None) -> List[Tuple[Path, Tuple[int, int]]]:
    """The stand-in of every sample, (path, size) in order; one folder sync after the new ones."""
    from tqdm import tqdm
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    placed, drawn = [], 0
    for s in tqdm(list(samples), desc="stand-in images", disable=not progress, unit="img"):
        path, size, new = standin_image(s, out, default_size, created)
        placed.append((path, size))
        drawn += new
    if drawn:
        sync_folder(out)
    return placed


def write_standin_images(samples: Iterable[Sample], out_dir, default_size=DEFAULT_SIZE, progress=True,
                         created: Optional[List[Path]] = None) -> int:
    return len(standin_images(samples, out_dir, default_size, progress, created))
