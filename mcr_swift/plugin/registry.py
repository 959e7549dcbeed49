"""Registration with ms-swift: datasets (and rewards, when that module is present).

Registered dataset names (read from ``$MCR_DATA_DIR``, default ``./mcr_data``, written by
``mcr-swift prepare``):

=================  ===========================================  =========================
``--dataset``      file                                         subsets
=================  ===========================================  =========================
``mcr-gmner``      ``$MCR_DATA_DIR/twitter_gmner/<subset>.jsonl``  train (default), dev, test,
                                                               train_answer_only, dev_answer_only,
                                                               test_answer_only
``mcr-mrsi``       ``$MCR_DATA_DIR/mrsi/<subset>.jsonl``           d1 (default), d2, d2_filtered, d2_kept
``mcr-mner-mi``    ``$MCR_DATA_DIR/mner_mi/<subset>.jsonl``        train (default), dev, test
``mcr-grec``       ``$MCR_DATA_DIR/grec/<subset>.jsonl``           train (default), val, testA, testB
=================  ===========================================  =========================

``mcr-mrsi`` holds the multi-style CoT set D_R after ``mcr-swift split`` (d1: MRSI SFT, d2: CVO) and
``mcr-swift cvo-filter`` (d2_filtered: the D2 queries kept by the App. D.3 filter); d2_kept holds the D2
rows, with their chains, of those kept queries (written by the full pipeline for VARIANT=no_cvo, which
continues MRSI by SFT on them).
``mcr-mner-mi`` (multi-image MNER, ``mcr_task`` ``mner_mi``) and ``mcr-grec`` (gRefCOCO visual
grounding, ``mcr_task`` ``grec``) are written by ``mcr-swift prepare --dataset mner_mi|grec`` (Sec. 5.3).

ms-swift's dataset syntax applies: ``mcr-gmner:dev``, ``mcr-gmner:train#64`` (sample 64 rows).
``mcr-gmner:<split>_answer_only`` (Table 1 "+SFT": plain fine-tuning, no reasoning) is derived from
``<split>.jsonl`` each time it is loaded (`mcr_swift.data.rows.answer_only_row`: the answer-only instruction,
the ``<answer>`` part alone as target) and written beside it as ``<split>_answer_only.jsonl``, so that
``mcr-swift evaluate --gold`` can join the inference output to the very prompts it saw.

Train through these names only: a ``.jsonl`` file passed directly as ``--dataset path/to/train.jsonl`` is
read by ms-swift alone, without the checks below (a missing image or an image-tag mismatch then trains on
other rows and exits 0).

Every line is checked before ms-swift sees it; a bad line raises an error naming the file and line.
Every image a registered dataset names must exist and be an image (its header is read): otherwise
the loader stops with ``<file>:<line>: missing image <path>`` (or ``unreadable image``) before
training starts -- ms-swift itself would log the error and silently train on another row.
``MCR_VERIFY_IMAGES=full`` decodes every image instead (finds truncated files; slower).
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Dict, List

from ..jsonl import iter_jsonl, write_jsonl_atomic

#: Subset suffix of the answer-only rows (kept equal to mcr_swift.data.rows.ANSWER_ONLY_SUFFIX, which
#: this module does not import at load time: rows pulls the prompt files).
ANSWER_ONLY_SUFFIX = "_answer_only"

#: dataset name -> (sub-folder of $MCR_DATA_DIR, subsets, default subset)
DATASETS: Dict[str, tuple] = {
    "mcr-gmner": ("twitter_gmner", ("train", "dev", "test", "train_answer_only", "dev_answer_only",
                                    "test_answer_only"), "train"),
    "mcr-mrsi": ("mrsi", ("d1", "d2", "d2_filtered", "d2_kept"), "d1"),
    "mcr-mner-mi": ("mner_mi", ("train", "dev", "test"), "train"),
    "mcr-grec": ("grec", ("train", "val", "testA", "testB"), "train"),
}

_REGISTERED = False


def data_dir() -> Path:
    return Path(os.environ.get("MCR_DATA_DIR") or "mcr_data").expanduser().resolve()


def verify_images_full() -> bool:
    """``MCR_VERIFY_IMAGES``: ``header`` (default) or ``full``; another value raises ValueError naming it."""
    from ..files import VERIFY_MODES
    raw = (os.environ.get("MCR_VERIFY_IMAGES") or "header").strip().lower()
    if raw not in VERIFY_MODES:
        raise ValueError(f"MCR_VERIFY_IMAGES={raw!r}: choose one of {', '.join(VERIFY_MODES)}")
    return raw == "full"


def plugin_path() -> str:
    """Absolute path of the plugin file to give ``--external_plugins``."""
    return str(Path(__file__).resolve().parent / "_file" / "mcr_swift_plugin.py")


def _image_path(im) -> str:
    return str(im.get("path") or "") if isinstance(im, dict) else str(im)


def validate_jsonl(path: Path, check_images: bool = False, full: bool = False) -> int:
    """Check that every line of a prepared file is a row ms-swift can train on; returns the count.
    With ``check_images`` every local image must exist and be an image (``full``: decode it all);
    relative paths are taken from the current folder, as ms-swift does; URLs are not checked.

    Raises ValueError naming ``file:line`` and the field (or image) at fault.
    """
    from ..files import BadImage, check_image
    n = 0
    checked: Dict[str, None] = {}
    for no, row, _ in iter_jsonl(path):
        msgs = row.get("messages")
        if not isinstance(msgs, list) or not msgs or not all(
                isinstance(m, dict) and "role" in m and "content" in m for m in msgs):
            raise ValueError(f"{path}:{no}: field 'messages' must be a non-empty list of "
                             f"{{role, content}} objects")
        images = row.get("images", [])
        if not isinstance(images, list):
            raise ValueError(f"{path}:{no}: field 'images' must be a list of paths")
        n_tags = sum(str(m["content"]).count("<image>") for m in msgs)
        if n_tags != len(images):
            raise ValueError(f"{path}:{no}: {n_tags} <image> tags but {len(images)} images")
        for im in images if check_images else ():
            p = _image_path(im)
            if p.startswith(("http://", "https://", "data:")) or p in checked:
                continue
            try:
                check_image(p, full=full)
            except BadImage as e:
                raise ValueError(f"{path}:{no}: {e}") from None
            checked[p] = None
        objects = row.get("objects")
        if objects:
            n_box = sum(str(m["content"]).count("<bbox>") for m in msgs)
            if n_box > len(objects.get("bbox") or []):
                raise ValueError(f"{path}:{no}: {n_box} <bbox> placeholders but "
                                 f"{len(objects.get('bbox') or [])} boxes in 'objects'")
        if "mcr_gold" in row:
            try:
                gold = json.loads(row["mcr_gold"]) if isinstance(row["mcr_gold"], str) else row["mcr_gold"]
                assert isinstance(gold, list)
            except Exception:
                raise ValueError(f"{path}:{no}: field 'mcr_gold' must be a JSON list of entities") from None
        n += 1
    return n


def derive_answer_only(source: Path) -> Path:
    """Write ``<split>_answer_only.jsonl`` beside a prepared ``<split>.jsonl`` (`answer_only_row` on
    every line) and return its path; a missing source returns the (absent) target path, for the
    loader's "not prepared" message. Raises ValueError naming ``file:line`` for a row it cannot convert.
    Written atomically (`jsonl.write_jsonl_atomic`)."""
    from ..data.rows import answer_only_row
    target = source.with_name(source.stem + ANSWER_ONLY_SUFFIX + ".jsonl")
    if not source.is_file():
        return target
    out = []
    for no, row, _ in iter_jsonl(source):
        try:
            out.append(answer_only_row(row))
        except ValueError as e:
            raise ValueError(f"{source}:{no}: {e}") from None
    write_jsonl_atomic(target, out)  # a unique temporary file: ranks loading at once never see half a file
    return target


def _make_loader_class():
    from swift.dataset.loader import DatasetLoader

    class MCRLocalLoader(DatasetLoader):
        """Loads a registered mcr-swift dataset from $MCR_DATA_DIR (no hub access)."""

        def load(self, dataset_syntax=None, dataset_meta=None, *, use_hf=None):
            name = next(k for k, v in DATASETS.items() if _meta_id(k) == dataset_syntax.dataset)
            folder, subsets, default = DATASETS[name]
            chosen: List[str] = list(dataset_syntax.subsets) or [default]
            datasets = []
            for subset in chosen:
                if subset not in subsets:
                    raise ValueError(f"dataset {name!r} has no subset {subset!r}; choose from {subsets}")
                path = data_dir() / folder / f"{subset}.jsonl"
                if subset.endswith(ANSWER_ONLY_SUFFIX):
                    path = derive_answer_only(data_dir() / folder / f"{subset[:-len(ANSWER_ONLY_SUFFIX)]}.jsonl")
                if not path.is_file():
                    raise FileNotFoundError(
                        f"{path}: not prepared. Run `mcr-swift prepare` (or set MCR_DATA_DIR to the "
                        f"folder it wrote) before using --dataset {name}:{subset}")
                validate_jsonl(path, check_images=True, full=verify_images_full())
                datasets.append(self._load_dataset_path(str(path), dataset_meta=dataset_meta))
            return self.concat_datasets(datasets)

    return MCRLocalLoader


def _meta_id(name: str) -> str:
    return f"mcr-swift/{name}"


def register() -> None:
    """Register mcr-swift's datasets and rewards with ms-swift (idempotent)."""
    global _REGISTERED
    if _REGISTERED:
        return
    # The canonical answer writes boxes as JSON lists: make ms-swift's Qwen templates render the
    # <bbox> placeholder as "[x1, y1, x2, y2]" instead of the legacy <|box_start|>..<|box_end|>
    # (a user's explicit setting wins; the parser reads both).
    os.environ.setdefault("QWENVL_BBOX_FORMAT", "plain")
    from swift.dataset import DatasetMeta, SubsetDataset, register_dataset
    loader = _make_loader_class()
    for name, (_folder, subsets, _default) in DATASETS.items():
        register_dataset(DatasetMeta(
            dataset_name=name, ms_dataset_id=_meta_id(name), loader=loader,
            subsets=[SubsetDataset(name=s, subset=s) for s in subsets],
            help=f"mcr-swift: prepared {name} from $MCR_DATA_DIR"), exist_ok=True)
    try:
        from .orms import register_rewards
    except ImportError as e:  # rewards module not importable: datasets still work
        if "swift_rewards" not in str(e):
            raise
    else:
        register_rewards()
    _REGISTERED = True
