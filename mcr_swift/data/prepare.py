"""``mcr-swift prepare``: a raw release -> the JSONL files the registered datasets read.

``--dataset`` twitter_gmner (default), mner_mi or grec; writes ``<out>/<dataset>/<split>.jsonl`` and
``summary.json``, atomically and all or nothing (`Staging`). Flags and outputs: docs/data.md.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

from . import grec as grec_mod
from . import mner_mi as mner_mod
from ..core.argtypes import non_negative_int, positive_int
from ..files import VERIFY_MODES, plain_name
from ..jsonl import iter_jsonl, write_json_atomic, write_jsonl_atomic
from ..prompts import task_instruction
from .rows import ANSWER_ONLY_SUFFIX, answer_only_row, sample_to_row
from .standin import DEFAULT_SIZE, standin_images, write_standin_images
from .twitter import SPLITS, load_twitter_gmner
from ..core.coords import CoordinateSpace, apply_image_budget, budget_from_env
from ..core.entities import Box, Entity, Sample

#: ``--dataset`` -> (output sub-folder, default splits)
DATASETS = {"twitter_gmner": ("twitter_gmner", SPLITS), "mner_mi": ("mner_mi", mner_mod.SPLITS),
            "grec": ("grec", grec_mod.SPLITS)}


#: ``image_budget``: (the run's `CoordinateSpace`, tokens per post) or None (docs/decisions.md).
ImageBudget = Optional[Tuple[CoordinateSpace, int]]


def _write_rows(path: Path, rows: Iterable[Dict], total: int, desc: str, progress: bool,
                image_budget: ImageBudget = None) -> None:
    """Write JSON lines atomically (`jsonl.write_jsonl_atomic`); with ``image_budget`` every row whose
    images exceed the post budget carries its per-image ``chat_template_kwargs.max_pixels``
    (`coords.apply_image_budget`)."""
    from tqdm import tqdm
    if image_budget is not None:
        space, tokens = image_budget
        rows = (apply_image_budget(r, space, tokens) for r in rows)
    write_jsonl_atomic(path, tqdm(rows, total=total, desc=desc, disable=not progress, unit="row"))


class Staging:
    """All or nothing: a prepare writes every split and its summary, or leaves nothing new.

    ``with Staging(out_dir, name, standin_dir) as st``: the split files and ``summary.json`` are written
    into ``st.dir``, a temporary folder beside the output ``st.final`` (``<out_dir>/<name>``), and
    moved into ``st.final`` (one ``os.replace`` each, the same file system) only when the block ends
    without an exception; other files already in ``st.final`` (other splits) stay. On failure the
    temporary folder, the stand-in images this run drew (``st.standins``) and the folders it created
    (output, stand-in folder) are removed, so a broken later split or a missing root leaves nothing.
    """

    def __init__(self, out_dir, name: str, standin_dir=None):
        self.final = Path(out_dir) / name
        self.standin_dir = None if standin_dir is None else Path(standin_dir)
        self.standins: List[Path] = []
        self.messages: List[str] = []
        self._created: List[Path] = []

    def note(self, message: str) -> None:
        """A line for stderr, printed once the files are in place (never for a split that is not)."""
        self.messages.append(message)

    def _mkdirs(self, folder: Path) -> None:
        missing = []
        while not folder.exists():
            missing.append(folder)
            folder = folder.parent
        for d in reversed(missing):
            d.mkdir()
            self._created.append(d)

    def path(self, file_name: str) -> Path:
        """Where ``file_name`` ends up (for messages and the summary)."""
        return self.final / file_name

    def __enter__(self) -> "Staging":
        self._mkdirs(self.final.parent)
        if self.standin_dir is not None:
            self._mkdirs(self.standin_dir)
        self.dir = Path(tempfile.mkdtemp(dir=self.final.parent, prefix=f".{self.final.name}.staging-"))
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        if exc_type is None:
            try:
                self._mkdirs(self.final)
                for f in sorted(self.dir.iterdir()):
                    os.replace(f, self.final / f.name)
                self.dir.rmdir()
            except BaseException:
                self._rollback()
                raise
            for m in self.messages:
                print(m, file=sys.stderr)
            return False
        self._rollback()
        return False

    def _rollback(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)
        for f in self.standins:
            try:
                f.unlink()
            except OSError:
                pass
        for d in reversed(self._created):
            try:
                d.rmdir()  # only when empty: never anything this run did not write
            except OSError:
                pass


def write_named_standins(images: Mapping[str, Tuple[Tuple[int, int], Sequence[Box]]], out_dir,
                         progress: bool = True, created: Optional[List[Path]] = None) -> int:
    """Stand-in JPEGs named as the release names them (``name -> (size, boxes to outline)``), for
    datasets whose images are shared by several samples (MNER-MI posts, COCO images of GREC)."""
    samples = []
    for name, (size, boxes) in images.items():
        if not name.lower().endswith(".jpg") or Path(name).name != name:
            raise ValueError(f"cannot draw a stand-in for {name!r}: stand-ins are <name>.jpg files in one folder")
        samples.append(Sample(id=name[:-4], tokens=(), entities=(Entity(name, "OTHER", tuple(boxes)),),
                              images=(name,), image_sizes=(size,)))
    return write_standin_images(samples, out_dir, progress=progress, created=created)


def _with_standins(pre, placed):
    """The samples of ``pre`` with their stand-in images (`standin_images`' (path, size) per sample),
    or None when a kept stand-in's size is not the xml's (then the split is read again with the images,
    which rescales the boxes to them)."""
    from dataclasses import replace
    out = type(pre)()
    for s, (path, size) in zip(pre, placed):
        if s.image_size is not None and tuple(size) != tuple(s.image_size):
            return None
        out.append(replace(s, images=(str(path.resolve()),), image_sizes=(tuple(size),)))
    out.report = pre.report
    return out


def _summary(stage: Staging, summary: Dict[str, Dict]) -> Dict[str, Dict]:
    write_json_atomic(stage.dir / "summary.json", summary)
    return summary


def write_answer_only(source: Path) -> Path:
    """Write ``<split>_answer_only.jsonl`` beside a prepared Twitter-GMNER ``<split>.jsonl``
    (`answer_only_row` on every line: the Table 1 "+SFT" rows, dataset ``mcr-gmner:<split>_answer_only``)
    and return its path. Raises ValueError naming ``file:line`` for a row it cannot convert, and then
    writes nothing (`jsonl.write_jsonl_atomic`)."""
    target = source.with_name(source.stem + ANSWER_ONLY_SUFFIX + ".jsonl")
    out = []
    for no, row, _ in iter_jsonl(source):
        try:
            out.append(answer_only_row(row))
        except ValueError as e:
            raise ValueError(f"{source}:{no}: {e}") from None
    write_jsonl_atomic(target, out)
    return target


def prepare_twitter_gmner(root, out_dir, *, splits: Sequence[str] = SPLITS, image_dir=None,
                          standin_dir=None, limit: Optional[int] = None, on_error: str = "raise",
                          family: str = "qwen2_5_vl", multi_box: str = "largest", tags: str = "conlleval",
                          verify_images: str = "full", progress: bool = True,
                          image_budget: ImageBudget = None) -> Dict[str, Dict]:
    """Prepare ``splits`` of the release at ``root``; returns the per-split summary.

    ``tags``: how BIO tags are read (`twitter.TAG_MODES`); ``verify_images``: "full" decodes every
    image (a truncated JPEG is refused; about 5 ms an image) or "header". Refused images (missing or
    unreadable) stop the run, or with ``on_error="skip"`` are skipped and counted in the summary's
    ``refused_images``."""
    if verify_images not in VERIFY_MODES:
        raise ValueError(f"verify_images must be one of {VERIFY_MODES}, got {verify_images!r}")
    for split in splits:
        plain_name(split, "split")  # names <out>/twitter_gmner/<split>.jsonl
    if image_dir is None and standin_dir is None:
        raise ValueError("give the folder of the tweet images (image_dir) or a folder for "
                         "stand-in images (standin_dir)")
    with Staging(out_dir, "twitter_gmner", standin_dir) as stage:
        summary: Dict[str, Dict] = {}
        instruction = task_instruction(family)  # once, not per row
        for split in splits:
            samples = None
            if standin_dir is not None:
                # Sizes from the xml; then the stand-ins are the images. Read once: the images just drawn
                # have the xml's sizes, a kept one is checked by its header (`standin_images`)
                pre = load_twitter_gmner(root, split, on_error=on_error, limit=limit, tags=tags)
                samples = _with_standins(pre, standin_images(pre, standin_dir, progress=progress,
                                                             created=stage.standins))
                images = standin_dir
            else:
                images = image_dir
            if samples is None:  # real images (verified as --verify-images says), or kept files of other sizes
                samples = load_twitter_gmner(root, split, Path(images).resolve(), on_error=on_error, limit=limit,
                                             tags=tags, verify_images=verify_images == "full")
            path = stage.path(f"{split}.jsonl")
            _write_rows(stage.dir / path.name,
                        (sample_to_row(s, family=family, instruction=instruction, multi_box=multi_box)
                         for s in samples), len(samples), f"prepare {split}", progress, image_budget)
            write_answer_only(stage.dir / path.name)  # mcr-gmner:<split>_answer_only (Table 1 "+SFT")
            rep = samples.report
            summary[split] = {**rep.as_dict(), "rows": len(samples), "file": str(path),
                              "unmatched_names": len(rep.unmatched_names), "verify_images": verify_images,
                              "refused_images": rep.skipped["posts with a missing image"]
                              + rep.skipped["posts with an unreadable image"]}
            stage.note(f"[prepare] {rep.summary()} -> {path}")
        return _summary(stage, summary)


def _loud(stage: Staging, warnings: Sequence[str]) -> None:
    """Note each warning so that it stands out in a run's log (missing images, counts off)."""
    for w in warnings:
        stage.note(f"[prepare] !!! WARNING: {w}")


def prepare_mner_mi(root, out_dir, *, splits: Sequence[str] = mner_mod.SPLITS, image_dir=None,
                    twitter2017_dir=None, standin_dir=None, variant: str = "mi", limit: Optional[int] = None,
                    on_error: str = "raise", tags: str = "conlleval", verify_images: str = "full",
                    progress: bool = True, image_budget: ImageBudget = None) -> Dict[str, Dict]:
    """Prepare MNER-MI (``variant="plus"``: MNER-MI-Plus) into ``<out_dir>/mner_mi/<split>.jsonl``
    (split names train, dev, test; the release's ``val`` is written as dev). Missing images and a
    complete split's counts that differ from the published ones are printed loudly and recorded in
    the summary's ``warnings``; ``published`` holds the published counts next to the read ones."""
    if verify_images not in VERIFY_MODES:
        raise ValueError(f"verify_images must be one of {VERIFY_MODES}, got {verify_images!r}")
    if image_dir is None and standin_dir is None:
        raise ValueError("give the folder of the MNER-MI images (image_dir) or a folder for stand-in "
                         "images (standin_dir)")
    with Staging(out_dir, "mner_mi", standin_dir) as stage:
        summary: Dict[str, Dict] = {}
        for split in splits:
            name = "dev" if split == "val" else split
            if standin_dir is not None:
                pre = mner_mod.load_mner_mi(root, split, variant=variant, on_error=on_error, limit=limit,
                                            tags=tags)
                write_named_standins({n: (DEFAULT_SIZE, ()) for s in pre for n in s.images}, standin_dir, progress,
                                     created=stage.standins)
                images, t17 = standin_dir, None
            else:
                images, t17 = image_dir, twitter2017_dir
            samples = mner_mod.load_mner_mi(root, split, Path(images).resolve(),
                                            twitter2017_dir=None if t17 is None else Path(t17).resolve(),
                                            variant=variant, on_error=on_error, limit=limit, tags=tags,
                                            verify_images=verify_images == "full")
            path = stage.path(f"{name}.jsonl")
            _write_rows(stage.dir / path.name, (mner_mod.mner_mi_row(s, name) for s in samples), len(samples),
                        f"prepare mner_mi {name}", progress, image_budget)
            rep = samples.report
            warnings = [rep.image_warning()] if rep.image_warning() else []
            line, off = mner_mod.published_check(rep, variant, name) if limit is None else ("", [])
            warnings += off
            summary[name] = {**rep.as_dict(), "rows": len(samples), "file": str(path), "variant": variant,
                             "verify_images": verify_images, "tags": tags, "warnings": warnings,
                             "published": mner_mod.PUBLISHED.get(variant, {}).get(name) if limit is None else None}
            stage.note(f"[prepare] mner_mi {rep.summary()} -> {path}")
            if line:
                stage.note(f"[prepare] {line}")
            _loud(stage, warnings)
        return _summary(stage, summary)


def prepare_grec(root, out_dir, *, splits: Optional[Sequence[str]] = None, image_dir=None, standin_dir=None,
                 refs_file=None, instances_file=None, train_size: Optional[int] = grec_mod.DEFAULT_TRAIN_SIZE,
                 seed: int = 0, text_field: str = "sent", entity_type: str = grec_mod.DEFAULT_TYPE,
                 limit: Optional[int] = None, on_error: str = "raise", family: str = "qwen2_5_vl",
                 multi_target: str = "remove", progress: bool = True, image_budget: ImageBudget = None
                 ) -> Dict[str, Dict]:
    """Prepare gRefCOCO as GREC into ``<out_dir>/grec/<split>.jsonl``: one row per referring
    sentence, multi-target refs removed (App. E.1), train reduced to ``train_size`` sentences
    (None: all). ``splits`` None: those of train, val, testA, testB the refs file has (an older
    download has train and val only). Every split's summary holds ``release`` (`GRefCOCO.release_info`:
    split names, counts, the refs file's SHA-256, which release it looks like); a complete release's
    val and testA + testB counts are printed next to Table 5's, with a warning when they differ.
    ``multi_target="keep"`` keeps the multi-target expressions of the evaluation splits (every target
    box in the gold; for ``mcr-swift evaluate --protocol grec``); train always removes them (App. E.1)."""
    if image_dir is None and standin_dir is None:
        raise ValueError("give the folder of the COCO train2014 images (image_dir) or a folder for "
                         "stand-in images (standin_dir)")
    data = grec_mod.GRefCOCO.load(root, refs_file, instances_file)
    release = data.release_info()
    opts = dict(on_error=on_error, limit=limit, text_field=text_field, entity_type=entity_type)
    with Staging(out_dir, "grec", standin_dir) as stage:
        stage.note(f"[prepare] grec: {release['refs_file']} (sha256 {release['sha256'][:16]}...) has splits "
                   f"{', '.join(release['splits'])}: looks like {release['looks_like']}")
        if splits is None:
            splits = data.present_splits()
            if not release["complete"]:
                _loud(stage, [f"GREC: {release['refs_file']} has no "
                              f"{', '.join(s for s in grec_mod.SPLITS if s not in splits)} split; read "
                              f"{', '.join(splits)} only ({release['looks_like']})"])
        summary: Dict[str, Dict] = {}
        for split in splits:
            multi = "remove" if split == "train" else multi_target
            if standin_dir is not None:
                drawn: Dict[str, Tuple[Tuple[int, int], List[Box]]] = {}
                for s in data.samples(split, None, **opts, multi_target=multi):
                    drawn.setdefault(s.image, (s.image_size, []))[1].extend(s.entities[0].boxes)
                write_named_standins(drawn, standin_dir, progress, created=stage.standins)
                images = standin_dir
            else:
                images = image_dir
            samples = data.samples(split, Path(images).resolve(), **opts, multi_target=multi)
            chosen = grec_mod.select_train(samples, train_size, seed) if split == "train" else list(samples)
            path = stage.path(f"{split}.jsonl")
            _write_rows(stage.dir / path.name, (grec_mod.grec_row(s, split, family=family) for s in chosen),
                        len(chosen), f"prepare grec {split}", progress, image_budget)
            rep = samples.report
            summary[split] = {**rep.as_dict(), "rows": len(chosen), "file": str(path), "release": release,
                              "warnings": []}
            if split == "train":
                summary[split].update(train_size=train_size, seed=seed)
            stage.note(f"[prepare] grec {rep.summary()}; {len(chosen)} rows -> {path}")
        if release["complete"] and limit is None:
            read = {"val": summary["val"]["posts"] if "val" in summary else None,
                    "testA+testB": (summary["testA"]["posts"] + summary["testB"]["posts"]
                                    if "testA" in summary and "testB" in summary else None)}
            for key, paper in grec_mod.PAPER_COUNTS.items():
                if read[key] is None:
                    continue
                stage.note(f"[prepare] GREC {key}: {read[key]:,} one-/no-target sentences (paper Table 5: "
                           f"{paper:,})")
                if read[key] != paper:
                    w = f"GREC {key}: {read[key]:,} one-/no-target sentences, Table 5 gives {paper:,}"
                    summary["val" if key == "val" else "testA"]["warnings"].append(w)
                    _loud(stage, [w])
        return _summary(stage, summary)


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="mcr-swift prepare", description=__doc__.splitlines()[0])
    p.add_argument("--dataset", choices=sorted(DATASETS), default="twitter_gmner",
                   help="which release --root holds (default twitter_gmner)")
    p.add_argument("--root", required=True, help="release folder: Twitter-GMNER (txt/, xml/), MNER-MI "
                                                 "(text/), or gRefCOCO (grefs(unc).json, instances.json)")
    p.add_argument("--out", default=os.environ.get("MCR_DATA_DIR", "mcr_data"),
                   help="output folder (what MCR_DATA_DIR must point to; default $MCR_DATA_DIR or ./mcr_data)")
    img = p.add_mutually_exclusive_group(required=True)
    img.add_argument("--image-dir", help="folder of the images: tweet images <IMGID>.jpg, MNER-MI images, "
                                         "or COCO train2014")
    img.add_argument("--standin-images", metavar="DIR",
                     help="draw stand-in images of the annotated sizes into DIR and use them")
    p.add_argument("--splits", nargs="+", default=None,
                   help="default: train dev test (twitter_gmner, mner_mi), train val testA testB (grec)")
    p.add_argument("--limit", type=positive_int, default=None, help="first N posts of each split")
    p.add_argument("--on-error", choices=["raise", "skip"], default="raise",
                   help="malformed input: stop with an error (default) or skip and count it")
    p.add_argument("--family", default="qwen2_5_vl",
                   help="model family whose box format the instruction describes")
    p.add_argument("--multi-box", choices=["largest", "first"], default="largest",
                   help="which gold box a multi-box entity's training target writes")
    tw = p.add_argument_group("twitter_gmner and mner_mi")
    tw.add_argument("--tags", choices=["conlleval", "strict"], default="conlleval",
                    help="conlleval (default): an I- tag after O or another type begins an entity (counted "
                         "as a repair); strict: such a tag is malformed input (see --on-error)")
    tw.add_argument("--verify-images", choices=list(VERIFY_MODES), default="full",
                    help="full (default): decode every image, refusing truncated ones; header: read the "
                         "header only (faster)")
    mm = p.add_argument_group("mner_mi")
    mm.add_argument("--variant", choices=sorted(mner_mod.VARIANTS), default="mi",
                    help="mi: MNER-MI (MNER-MI_*.txt), plus: MNER-MI-Plus (MNER-UNI_*.txt)")
    mm.add_argument("--twitter2017-image-dir", default=None,
                    help="MNER-MI-Plus: folder of the Twitter-2017 images (default: --image-dir)")
    gr = p.add_argument_group("grec")
    gr.add_argument("--refs", default=None, help="refs file (default: <root>/grefs(unc).json, else .p)")
    gr.add_argument("--instances", default=None, help="COCO instances file (default: <root>/instances.json)")
    gr.add_argument("--train-size", type=non_negative_int, default=grec_mod.DEFAULT_TRAIN_SIZE,
                    help="train sentences kept by a seeded sample (App. E.1: 14000; 0 = all)")
    gr.add_argument("--seed", type=int, default=0, help="seed of the train sample")
    gr.add_argument("--text-field", choices=grec_mod.TEXT_FIELDS, default="sent",
                    help="sentence field used as the expression")
    gr.add_argument("--grec-type", default=grec_mod.DEFAULT_TYPE,
                    help="the answer's type for an expression (default OTHER)")
    gr.add_argument("--grec-multi-target", choices=grec_mod.MULTI_TARGET, default="remove",
                    help="remove (default, App. E.1): drop multi-target expressions; keep: keep them in val / "
                         "testA / testB with every target box, to score with evaluate --protocol grec "
                         "(train always removes them)")
    bud = p.add_argument_group("per-post image budget (docs/decisions.md)")
    bud.add_argument("--image-token-budget", type=non_negative_int, default=None,
                     help="image tokens one post's images may take together (default $MCR_IMAGE_TOKEN_BUDGET, "
                          "else 2048; 0: off); a row over it gets its per-image chat_template_kwargs.max_pixels")
    bud.add_argument("--max-pixels", type=positive_int, default=None,
                     help="the run's smart-resize max pixels the budget starts from (default $MAX_PIXELS or "
                          "IMAGE_MAX_TOKEN_NUM, as ms-swift reads them)")
    p.add_argument("--no-progress", action="store_true")
    a = p.parse_args(argv)
    splits = a.splits or (None if a.dataset == "grec" else list(DATASETS[a.dataset][1]))
    for split in splits or ():
        plain_name(split, "--splits value")  # each names <out>/<dataset>/<split>.jsonl
    env_space = CoordinateSpace.from_env(a.family)
    space = env_space if a.max_pixels is None else CoordinateSpace(
        env_space.family, env_space.min_pixels, a.max_pixels, env_space.template_max_pixels)
    tokens = budget_from_env() if a.image_token_budget is None else a.image_token_budget
    common = dict(splits=splits, image_dir=a.image_dir, standin_dir=a.standin_images, limit=a.limit,
                  on_error=a.on_error, progress=not a.no_progress,
                  image_budget=(space, tokens) if tokens else None)
    if a.dataset == "mner_mi":
        summary = prepare_mner_mi(a.root, a.out, twitter2017_dir=a.twitter2017_image_dir, variant=a.variant,
                                  tags=a.tags, verify_images=a.verify_images, **common)
    elif a.dataset == "grec":
        summary = prepare_grec(a.root, a.out, refs_file=a.refs, instances_file=a.instances,
                               train_size=a.train_size or None, seed=a.seed, text_field=a.text_field,
                               entity_type=a.grec_type, family=a.family, multi_target=a.grec_multi_target,
                               **common)
    else:
        summary = prepare_twitter_gmner(a.root, a.out, family=a.family, multi_box=a.multi_box, tags=a.tags,
                                        verify_images=a.verify_images, **common)
    keys = ("rows", "entities", "located_entities", "skipped", "repaired", "refused_images", "unmatched_names",
            "images", "missing_images", "posts_without_images", "warnings", "no_target",
            "one_target", "multi_target", "removed_multi_target_refs", "removed_multi_target_sentences")
    print(json.dumps({k: {kk: v[kk] for kk in keys if kk in v} for k, v in summary.items()}))
    return 0
