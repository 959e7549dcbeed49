"""Helpers of the stage recipes (``recipes/*.sh``): batch arithmetic, checkpoint discovery, and a dry
parse of a recipe's ``swift`` command into ms-swift's own argument objects (args.json, no training).

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
``mcr-swift swift-args sft|rlhf ARGS...`` (= ``mcr-swift recipe-args dry-run sft|rlhf ARGS...``, `dry_run`)
    a stand-in for ``swift``: parses ARGS with ms-swift's ``SftArguments`` / ``RLHFArguments``
    (their ``__post_init__`` resolves every default exactly as ``swift sft|rlhf`` does) and saves
    args.json where ms-swift would (``<output_dir>/v<N>-<time>/args.json``), without loading weights
    or training. Run a recipe with ``SWIFT="python -m mcr_swift.cli swift-args"`` to see what it resolves to.
    The world size of the launch (``NPROC_PER_NODE × NNODES``) is simulated in one process; see
    `simulated_world_size`.
"""
from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Iterator, List, Optional, Sequence, Tuple

from ..jsonl import write_json_atomic, write_text_atomic
from ..runs import version_number
from ..core.argtypes import positive_int

#: swift sub-command -> ms-swift argument class that `swift <cmd>` parses (swift/pipelines).
ARG_CLASSES = {"sft": "SftArguments", "rlhf": "RLHFArguments"}


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


def simulated_world_size(env=None) -> int:
    """The world size a ``swift`` launch would get: ``NPROC_PER_NODE × NNODES`` (1 when unset)."""
    env = os.environ if env is None else env
    return _positive_int("NPROC_PER_NODE", env.get("NPROC_PER_NODE") or "1") * _positive_int(
        "NNODES", env.get("NNODES") or "1")


@contextlib.contextmanager
def _as_if_launched(world_size: int) -> Iterator[None]:
    """Make ms-swift resolve its arguments as in a ``torchrun`` launch of ``world_size`` processes,
    inside this one process, without starting a process group:

    * ms-swift reads the world size with ``get_dist_setting`` (``WORLD_SIZE`` or its own fallback
      ``_PATCH_WORLD_SIZE``); ``WORLD_SIZE`` would make accelerate start a process group, so the
      fallback is set. ``RANK`` stays unset: this process is the master and writes args.json.
    * transformers' ``TrainingArguments.world_size`` (used by ms-swift's GRPO batch checks:
      ``generation_batch_size = per_device × world_size × steps_per_generation``) is patched.
    * ``set_default_ddp_config`` (GRPO + vLLM) fills RANK/WORLD_SIZE=1 for a plain ``python``
      launch and does nothing under torchrun, which is what is simulated: it is made a no-op.
    """
    from transformers import TrainingArguments
    import swift.arguments.rlhf_args as rlhf_args
    saved_env = os.environ.get("_PATCH_WORLD_SIZE")
    saved_prop = TrainingArguments.world_size
    saved_ddp = rlhf_args.set_default_ddp_config
    os.environ["_PATCH_WORLD_SIZE"] = str(world_size)
    TrainingArguments.world_size = property(lambda self: world_size)
    rlhf_args.set_default_ddp_config = lambda: None
    try:
        yield
    finally:
        TrainingArguments.world_size = saved_prop
        rlhf_args.set_default_ddp_config = saved_ddp
        if saved_env is None:
            os.environ.pop("_PATCH_WORLD_SIZE", None)
        else:
            os.environ["_PATCH_WORLD_SIZE"] = saved_env


def _pop_option(argv: List[str], name: str) -> Tuple[List[str], Optional[str]]:
    """Remove ``--name VALUE`` from argv; returns the rest and VALUE (None if absent)."""
    if name not in argv:
        return argv, None
    i = argv.index(name)
    return argv[:i] + argv[i + 2:], argv[i + 1]


def dry_run(command: str, argv: Sequence[str], world_size: Optional[int] = None) -> Path:
    """Resolve ``swift <command> argv`` with ms-swift's argument class and save its args.json.

    ``--deepspeed NAME`` is resolved by ms-swift only when the deepspeed package is installed (it is
    a GPU-only dependency); otherwise it is taken out before parsing and recorded as given. Returns
    the args.json path.
    """
    if command not in ARG_CLASSES:
        raise SystemExit(f"swift_args: only {sorted(ARG_CLASSES)} have an args.json, got '{command}'")
    argv = list(argv)
    deepspeed = None
    if importlib.util.find_spec("deepspeed") is None:
        argv, deepspeed = _pop_option(argv, "--deepspeed")
    import swift.arguments
    from swift.utils import parse_args
    cls = getattr(swift.arguments, ARG_CLASSES[command])
    with _as_if_launched(simulated_world_size() if world_size is None else world_size):
        args, rest = parse_args(cls, argv)
        if rest:
            raise SystemExit(f"swift_args: swift {command} does not accept {rest}")
        if deepspeed is not None:
            args.deepspeed = deepspeed
        args.save_args()
        resolved = {"world_size": args.training_args.world_size,
                    "generation_batch_size": getattr(args.training_args, "generation_batch_size", None),
                    "steps_per_generation": getattr(args.training_args, "steps_per_generation", None)}
    path = Path(args.output_dir) / "args.json"
    # args.json holds the argument object (ms-swift's save_args); the launch-dependent values the
    # trainer derives from it are added under one key so the drift test can check them.
    saved = json.loads(path.read_text())
    saved["mcr_resolved"] = resolved
    write_json_atomic(path, saved, indent=2, ensure_ascii=False)
    print(f"[swift_args] {command}: args.json -> {path}")
    return path


def _positive_int(name: str, raw: str) -> int:
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
        nproc = _positive_int("NPROC_PER_NODE", ns.nproc) if ns.nproc else max(1, gpus)
        raw_nodes = ns.nnodes if ns.nnodes else (os.environ.get("NNODES") or "1")
        nnodes = _positive_int("NNODES", raw_nodes)
        per_device = _positive_int("PER_DEVICE_BATCH_SIZE", ns.per_device) if ns.per_device else None
        per_device, grad_acc = split_batch(ns.batch, nproc, per_device, ns.max_per_device, ns.num_generations,
                                           nnodes=nnodes)
        if nnodes > 1:  # torchrun on every node needs the rendezvous; a missing rank would hang all of them
            missing = [k for k in ("MASTER_ADDR", "NODE_RANK") if not os.environ.get(k)]
            if missing:
                raise BatchError(f"NNODES={nnodes} needs {' and '.join(missing)} on every node (MASTER_ADDR: "
                                 f"the address of the NODE_RANK=0 node; NODE_RANK: 0..{nnodes - 1})")
            rank = os.environ["NODE_RANK"].strip()
            if not rank.isdigit() or int(rank) >= nnodes:
                raise BatchError(f"NODE_RANK={rank!r} must be an integer in 0..{nnodes - 1} (NNODES={nnodes})")
    except BatchError as e:
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
    d = sub.add_parser("dry-run", help="resolve `swift sft|rlhf ARGS` into args.json without training")
    d.add_argument("command", choices=sorted(ARG_CLASSES))
    d.add_argument("swift_args", nargs=argparse.REMAINDER)
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
    dry_run(ns.command, ns.swift_args)
    return 0


def swift_args_main(argv: Optional[List[str]] = None) -> int:
    """``mcr-swift swift-args sft|rlhf ARGS...``: the ``swift`` stand-in (``recipe-args dry-run``)."""
    return main(["dry-run", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    sys.exit(main())
