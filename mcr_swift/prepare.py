"""``mcr-swift prepare``: raw Twitter-GMNER release -> the JSONL files the registered datasets read.

Writes ``<out>/twitter_gmner/<split>.jsonl`` (rows of `mcr_swift.rows`) and
``<out>/twitter_gmner/summary.json`` (counts, skips, repairs per split). Each file is written to a
temporary name and renamed when complete, so an interrupted run leaves no half file; a re-run
rewrites (preparing is seconds) and existing stand-in images are kept.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Dict, List, Optional, Sequence

from .rows import sample_to_row
from .standin import write_standin_images
from .twitter import SPLITS, load_twitter_gmner


def prepare_twitter_gmner(root, out_dir, *, splits: Sequence[str] = SPLITS, image_dir=None,
                          standin_dir=None, limit: Optional[int] = None, on_error: str = "raise",
                          family: str = "qwen2_5_vl", multi_box: str = "largest",
                          progress: bool = True) -> Dict[str, Dict]:
    """Prepare ``splits`` of the release at ``root``; returns the per-split summary."""
    from tqdm import tqdm
    if image_dir is None and standin_dir is None:
        raise ValueError("give the folder of the tweet images (image_dir) or a folder for "
                         "stand-in images (standin_dir)")
    out = Path(out_dir) / "twitter_gmner"
    out.mkdir(parents=True, exist_ok=True)
    summary: Dict[str, Dict] = {}
    for split in splits:
        if standin_dir is not None:
            # Sizes from the xml; then the stand-ins are the images.
            pre = load_twitter_gmner(root, split, on_error=on_error, limit=limit)
            write_standin_images(pre, standin_dir, progress=progress)
            images = standin_dir
        else:
            images = image_dir
        samples = load_twitter_gmner(root, split, Path(images).resolve(), on_error=on_error, limit=limit)
        path = out / f"{split}.jsonl"
        tmp = path.with_suffix(".jsonl.tmp")
        with open(tmp, "w", encoding="utf-8") as f:
            for s in tqdm(samples, desc=f"prepare {split}", disable=not progress, unit="post"):
                f.write(json.dumps(sample_to_row(s, family=family, multi_box=multi_box),
                                   ensure_ascii=False) + "\n")
        tmp.replace(path)
        rep = samples.report
        summary[split] = {**rep.as_dict(), "rows": len(samples), "file": str(path),
                          "unmatched_names": len(rep.unmatched_names)}
        print(f"[prepare] {rep.summary()} -> {path}", file=sys.stderr)
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    return summary


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="mcr-swift prepare", description=__doc__.splitlines()[0])
    p.add_argument("--root", required=True, help="release folder with txt/ and xml/")
    p.add_argument("--out", default=os.environ.get("MCR_DATA_DIR", "mcr_data"),
                   help="output folder (what MCR_DATA_DIR must point to; default $MCR_DATA_DIR or ./mcr_data)")
    img = p.add_mutually_exclusive_group(required=True)
    img.add_argument("--image-dir", help="folder of the tweet images <IMGID>.jpg")
    img.add_argument("--standin-images", metavar="DIR",
                     help="draw stand-in images of the xml sizes into DIR and use them")
    p.add_argument("--splits", nargs="+", default=list(SPLITS))
    p.add_argument("--limit", type=int, default=None, help="first N posts of each split")
    p.add_argument("--on-error", choices=["raise", "skip"], default="raise",
                   help="malformed input: stop with an error (default) or skip and count it")
    p.add_argument("--family", default="qwen2_5_vl",
                   help="model family whose box format the instruction describes")
    p.add_argument("--multi-box", choices=["largest", "first"], default="largest",
                   help="which gold box a multi-box entity's training target writes")
    p.add_argument("--no-progress", action="store_true")
    a = p.parse_args(argv)
    summary = prepare_twitter_gmner(a.root, a.out, splits=a.splits, image_dir=a.image_dir,
                                    standin_dir=a.standin_images, limit=a.limit, on_error=a.on_error,
                                    family=a.family, multi_box=a.multi_box, progress=not a.no_progress)
    print(json.dumps({k: {kk: v[kk] for kk in ("rows", "entities", "located_entities", "skipped",
                                                "unmatched_names")} for k, v in summary.items()}))
    return 0
