"""Instruction texts, kept as plain files in ``prompts/`` (App. B/C).

Looked up in ``$MCR_PROMPTS_DIR`` first, then in the package's ``prompts`` folder (a link to the
repository's top-level ``prompts/``).
"""
from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path

from .coords import FAMILIES


def prompts_dir() -> Path:
    env = os.environ.get("MCR_PROMPTS_DIR")
    return Path(env) if env else Path(__file__).resolve().parent / "prompts"


@lru_cache(maxsize=None)
def _read(path: str) -> str:
    return Path(path).read_text(encoding="utf-8").strip()


def load_prompt(name: str) -> str:
    """The text of ``prompts/<name>.txt`` (FileNotFoundError naming the path if absent)."""
    path = prompts_dir() / f"{name}.txt"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: prompt file not found (set MCR_PROMPTS_DIR to override)")
    return _read(str(path))


def task_instruction(family: str = "qwen2_5_vl", name: str = "task_instruction") -> str:
    """The task-introduction instruction (App. C.1; ``name`` picks the task's file) with the
    box-format line for ``family``."""
    kind = FAMILIES[family][0] if family in FAMILIES else "pixels"
    return load_prompt(name).replace("{box_format}", load_prompt(f"box_format_{kind}"))
