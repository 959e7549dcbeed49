"""Stand-in images for posts whose tweet image is not at hand (tests, CPU demo): a JPEG of the xml's
size with each gold box outlined; existing files are kept. See docs/data.md (prepare).
"""
from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Iterable, List, Optional, Tuple

from ..files import plain_name
from ..jsonl import atomic_open
from ..core.entities import Sample

DEFAULT_SIZE: Tuple[int, int] = (640, 480)


def _colour(key: str, salt: str = "") -> Tuple[int, int, int]:
    h = hashlib.sha1((key + salt).encode()).digest()
    return h[0], h[1], h[2]


def write_standin_image(sample: Sample, out_dir: Path, default_size=DEFAULT_SIZE,
                        created: Optional[List[Path]] = None) -> Path:
    """Draw the stand-in of ``sample`` into ``out_dir`` unless it exists; a file drawn now is appended
    to ``created`` (so that a failed ``prepare`` can remove what it added)."""
    from PIL import Image, ImageDraw
    path = Path(out_dir) / f"{plain_name(sample.id, 'post id')}.jpg"  # never outside out_dir
    if path.is_file():
        return path
    size = sample.image_size or default_size
    img = Image.new("RGB", size, _colour(sample.id))
    draw = ImageDraw.Draw(img)
    for e in sample.entities:
        for b in e.boxes:
            draw.rectangle(b, outline=_colour(e.text, "box"), width=max(1, min(size) // 100))
    with atomic_open(path, "wb") as f:
        img.save(f, format="JPEG", quality=85)
    if created is not None:
        created.append(path)
    return path


def write_standin_images(samples: Iterable[Sample], out_dir, default_size=DEFAULT_SIZE, progress=True,
                         created: Optional[List[Path]] = None) -> int:
    from tqdm import tqdm
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    samples = list(samples)
    for s in tqdm(samples, desc="stand-in images", disable=not progress, unit="img"):
        write_standin_image(s, out, default_size, created)
    return len(samples)
