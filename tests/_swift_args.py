"""Test scaffolding: resolve a stage's ``swift sft|rlhf`` command -- its stage config read by ms-swift's own
``parse_yaml_args`` (swift/cli/main.py), then the flags -- with ms-swift's ``SftArguments`` /
``RLHFArguments`` (whose ``__post_init__`` resolves every default as ``swift sft|rlhf`` does) and save
args.json where ms-swift would (``<output_dir>/v<N>-<time>/args.json``), without loading weights or
training. The launch's world size (``NPROC_PER_NODE x NNODES``) is simulated in one process."""
from __future__ import annotations

import contextlib
import importlib.util
import json
import os
from pathlib import Path
from typing import Iterator, List, Optional, Sequence, Tuple

#: swift sub-command -> ms-swift argument class that `swift <cmd>` parses (swift/pipelines).
ARG_CLASSES = {"sft": "SftArguments", "rlhf": "RLHFArguments"}


@contextlib.contextmanager
def as_if_launched(world_size: int) -> Iterator[None]:
    """Make ms-swift resolve its arguments as in a ``torchrun`` launch of ``world_size`` processes,
    inside this one process, without starting a process group: ms-swift's own fallback
    ``_PATCH_WORLD_SIZE`` (``WORLD_SIZE`` would make accelerate start a process group), transformers'
    ``TrainingArguments.world_size`` (ms-swift's GRPO batch checks), and ``set_default_ddp_config``
    (a no-op under torchrun, which is what is simulated)."""
    from transformers import TrainingArguments
    import swift.arguments.rlhf_args as rlhf_args
    saved_env = os.environ.get("_PATCH_WORLD_SIZE")
    saved_prop, saved_ddp = TrainingArguments.world_size, rlhf_args.set_default_ddp_config
    os.environ["_PATCH_WORLD_SIZE"] = str(world_size)
    TrainingArguments.world_size = property(lambda self: world_size)
    rlhf_args.set_default_ddp_config = lambda: None
    try:
        yield
    finally:
        TrainingArguments.world_size, rlhf_args.set_default_ddp_config = saved_prop, saved_ddp
        if saved_env is None:
            os.environ.pop("_PATCH_WORLD_SIZE", None)
        else:
            os.environ["_PATCH_WORLD_SIZE"] = saved_env


def _pop_option(argv: List[str], name: str) -> Tuple[List[str], Optional[str]]:
    if name not in argv:
        return argv, None
    i = argv.index(name)
    return argv[:i] + argv[i + 2:], argv[i + 1]


def dry_run(command: str, argv: Sequence[str], world_size: int) -> Path:
    """Resolve ``swift <command> argv`` (argv[0] may be a stage config) and save its args.json; returns it.
    ``--deepspeed NAME`` is resolved by ms-swift only with the deepspeed package (GPU-only); without it
    it is taken out before parsing and recorded as given."""
    from swift.cli.main import parse_yaml_args
    import swift.arguments
    from swift.utils import parse_args
    from mcr_swift.jsonl import write_json_atomic
    argv = list(argv)
    parse_yaml_args(argv)                      # ms-swift's own reading of the config file (and its ENV)
    deepspeed = None
    if importlib.util.find_spec("deepspeed") is None:
        argv, deepspeed = _pop_option(argv, "--deepspeed")
    cls = getattr(swift.arguments, ARG_CLASSES[command])
    with as_if_launched(world_size):
        args, rest = parse_args(cls, argv)
        assert not rest, f"swift {command} does not accept {rest}"
        if deepspeed is not None:
            args.deepspeed = deepspeed or None
        args.save_args()
        resolved = {"world_size": args.training_args.world_size,
                    "generation_batch_size": getattr(args.training_args, "generation_batch_size", None),
                    "steps_per_generation": getattr(args.training_args, "steps_per_generation", None)}
    path = Path(args.output_dir) / "args.json"
    saved = json.loads(path.read_text())
    saved["mcr_resolved"] = resolved           # the launch-dependent values the trainer derives
    write_json_atomic(path, saved, indent=2, ensure_ascii=False)
    return path
