"""Helpers of the stages (`mcr_swift.pipeline.commands`): batch arithmetic, GPU count, checkpoint discovery.

``mcr-swift recipe-args batch --batch 16 --nproc "" --nnodes "" --max-per-device 2``
    prints ``GPUS=8 NPROC_PER_NODE=8 NNODES=1 WORLD_PROCS=8 PER_DEVICE_BATCH_SIZE=2 GRAD_ACC=1`` for
    ``eval``: the effective (global) batch of App. E.4 is kept for any GPU and node count
    (``BATCH = NNODES × NPROC_PER_NODE × PER_DEVICE × GRAD_ACC``; the world size is NNODES ×
    NPROC_PER_NODE, ms-swift's torchrun variables). GPUS is the count of ``nvidia-smi -L`` on this
    node; an empty ``--nproc`` uses it (1 without a GPU); an empty ``--nnodes`` reads ``NNODES`` (1 when
    unset). With ``--num-generations G`` the GRPO constraint is checked too: ms-swift generates
    ``PER_DEVICE × WORLD × GRAD_ACC`` completions per optimizer step (``steps_per_generation`` =
    GRAD_ACC), which must be a multiple of G. A batch that cannot be split exits 2 with the reason.
    (``WORLD_PROCS``, not ``WORLD_SIZE``: that name would make torch/accelerate start a process group.)
``mcr-swift recipe-args gpus``
    prints the GPU count alone (`count_gpus`), for scripts that split no batch.
``mcr-swift recipe-args last-checkpoint OUTPUT_DIR``
    writes the absolute path of the newest ``v*-*/checkpoint-*`` folder ms-swift wrote under
    OUTPUT_DIR to ``OUTPUT_DIR/last_checkpoint.txt`` (what the full pipeline chains stages with).
"""
from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import List, Mapping, Optional, Tuple

from ..jsonl import write_text_atomic
from ..runs import version_number
from ..core.argtypes import positive_int


class BatchError(ValueError):
    """An effective batch that cannot be split over the processes."""


def count_gpus() -> int:
    """GPUs listed by ``nvidia-smi -L`` (0 when there is no nvidia-smi or it fails)."""
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return 0
    try:
        out = subprocess.run([exe, "-L"], capture_output=True, text=True, timeout=60).stdout
    except (OSError, subprocess.SubprocessError):
        return 0
    return sum(1 for line in out.splitlines() if line.startswith("GPU"))


def split_batch(batch: int, nproc: int, per_device: Optional[int] = None, max_per_device: int = 2,
                num_generations: Optional[int] = None, nnodes: int = 1) -> Tuple[int, int]:
    """``(per_device, grad_acc)`` with ``nnodes × nproc × per_device × grad_acc == batch``: ``batch``
    is the global batch (App. E.4: 16 for SFT, 64 completions for GRPO) whatever the node count.

    ``per_device`` defaults to ``min(max_per_device, batch // world)`` (at least 1), world =
    ``nnodes × nproc``. Raises `BatchError` when the batch is not a multiple of ``world × per_device``
    or, for GRPO, when the completions of one step (= ``batch``) are not a multiple of
    ``num_generations``.
    """
    if batch < 1 or nproc < 1 or nnodes < 1:
        raise BatchError(f"BATCH_SIZE={batch}, NPROC_PER_NODE={nproc} and NNODES={nnodes} must be positive")
    world = nnodes * nproc
    if per_device is None:
        per_device = max(1, min(max_per_device, batch // world))
    if per_device < 1:
        raise BatchError(f"PER_DEVICE_BATCH_SIZE={per_device} must be positive")
    if batch % (world * per_device):
        what = "NPROC_PER_NODE*PER_DEVICE_BATCH_SIZE" if nnodes == 1 else \
            f"NNODES*NPROC_PER_NODE*PER_DEVICE_BATCH_SIZE ({nnodes}*{nproc}*{per_device})"
        raise BatchError(f"BATCH_SIZE={batch} is not a multiple of {what}={world * per_device}: the global batch "
                         f"cannot be split over {world} processes (lower NPROC_PER_NODE, NNODES or "
                         f"PER_DEVICE_BATCH_SIZE, or set BATCH_SIZE)")
    if num_generations is not None and batch % num_generations:
        raise BatchError(f"BATCH_SIZE={batch} completions per step is not a multiple of "
                         f"NUM_GENERATIONS={num_generations} (ms-swift's generation_batch_size constraint)")
    return per_device, batch // (world * per_device)


def _version_key(path: Path) -> Tuple[int, int]:
    """Sort key of ``v<N>-<time>/checkpoint-<step>``: version number, then step."""
    step = re.match(r"checkpoint-(\d+)$", path.name)
    return version_number(path.parent), int(step.group(1)) if step else -1


def newest_checkpoint(output_dir: Path) -> Path:
    """The newest ``v*-*/checkpoint-*`` folder under ``output_dir`` (highest version, then step)."""
    found = [p for p in Path(output_dir).glob("v*-*/checkpoint-*")
             if p.is_dir() and re.fullmatch(r"checkpoint-\d+", p.name)]
    if not found:
        raise FileNotFoundError(f"{output_dir}: no v*-*/checkpoint-* folder (did the run save a checkpoint?)")
    return max(found, key=_version_key).resolve()


def write_last_checkpoint(output_dir: Path, checkpoint: Optional[Path] = None) -> Path:
    """Write ``output_dir/last_checkpoint.txt`` (newest checkpoint unless one is given); returns it."""
    checkpoint = Path(checkpoint).resolve() if checkpoint else newest_checkpoint(output_dir)
    if not checkpoint.is_dir():
        raise FileNotFoundError(f"{checkpoint}: not a folder")
    target = Path(output_dir) / "last_checkpoint.txt"
    target.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(target, f"{checkpoint}\n")
    return target


def check_nodes(nnodes: int, env: Mapping[str, str]) -> None:
    """torchrun on several nodes needs the rendezvous; a missing rank would hang every node."""
    if nnodes > 1:
        missing = [k for k in ("MASTER_ADDR", "NODE_RANK") if not env.get(k)]
        if missing:
            raise ValueError(f"NNODES={nnodes} needs {' and '.join(missing)} on every node (MASTER_ADDR: the address "
                             f"of the NODE_RANK=0 node; NODE_RANK: 0..{nnodes - 1})")
        rank = env["NODE_RANK"].strip()
        if not rank.isdigit() or int(rank) >= nnodes:
            raise ValueError(f"NODE_RANK={rank!r} must be an integer in 0..{nnodes - 1} (NNODES={nnodes})")


def positive_setting(name: str, raw: str) -> int:
    try:
        v = int(raw)
    except ValueError:
        raise BatchError(f"{name}={raw!r} is not an integer") from None
    if v < 1:
        raise BatchError(f"{name}={raw!r} must be positive")
    return v


def _main_batch(ns: argparse.Namespace) -> int:
    gpus = count_gpus()
    try:
        nproc = positive_setting("NPROC_PER_NODE", ns.nproc) if ns.nproc else max(1, gpus)
        raw_nodes = ns.nnodes if ns.nnodes else (os.environ.get("NNODES") or "1")
        nnodes = positive_setting("NNODES", raw_nodes)
        per_device = positive_setting("PER_DEVICE_BATCH_SIZE", ns.per_device) if ns.per_device else None
        per_device, grad_acc = split_batch(ns.batch, nproc, per_device, ns.max_per_device, ns.num_generations,
                                           nnodes=nnodes)
        check_nodes(nnodes, os.environ)
    except ValueError as e:
        print(e, file=sys.stderr)
        return 2
    print(f"GPUS={gpus} NPROC_PER_NODE={nproc} NNODES={nnodes} WORLD_PROCS={nnodes * nproc} "
          f"PER_DEVICE_BATCH_SIZE={per_device} GRAD_ACC={grad_acc}")
    return 0


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="mcr-swift recipe-args", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("batch", help="split an effective batch over processes (shell assignments)")
    b.add_argument("--batch", type=positive_int, required=True)
    b.add_argument("--nproc", default="", help="processes per node; empty: count the GPUs")
    b.add_argument("--nnodes", default="", help="nodes; empty: $NNODES, else 1")
    b.add_argument("--per-device", default="", help="per-device batch; empty: min(max, batch/nproc)")
    b.add_argument("--max-per-device", type=positive_int, default=2)
    b.add_argument("--num-generations", type=positive_int, default=None, help="GRPO: completions per prompt")
    sub.add_parser("gpus", help="print the number of GPUs nvidia-smi lists")
    c = sub.add_parser("last-checkpoint", help="write OUTPUT_DIR/last_checkpoint.txt")
    c.add_argument("output_dir", type=Path)
    c.add_argument("--checkpoint", type=Path, default=None, help="this folder instead of the newest")
    ns = parser.parse_args(argv)
    if ns.cmd == "batch":
        return _main_batch(ns)
    if ns.cmd == "gpus":
        print(count_gpus())
        return 0
    if ns.cmd == "last-checkpoint":
        try:
            print(write_last_checkpoint(ns.output_dir, ns.checkpoint).read_text().strip())
        except FileNotFoundError as e:
            print(e, file=sys.stderr)
            return 1
        return 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
