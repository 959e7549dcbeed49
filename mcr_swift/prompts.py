"""Instruction texts, kept as plain files in ``prompts/`` (App. B/C).

Looked up in ``$MCR_PROMPTS_DIR`` first, then in the package's ``prompts`` folder (a link to the
repository's top-level ``prompts/``).
"""
from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path

from .core.coords import FAMILIES


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


#: The Twitter-GMNER instruction file and the variable that swaps it for a whole run (Table 3 ablations).
GMNER_INSTRUCTION = "task_instruction"
INSTRUCTION_ENV = "MCR_INSTRUCTION"
#: Table 3 "w/o Inst": the instruction without the stepwise cross-modal verification and the cautionary
#: guidelines (Sec. 5.4); still asks for <think> reasoning, as the ablation trains MCR the same way.
NOINST_INSTRUCTION = "task_instruction_noinst"
#: Table 1 "+SFT": the same task wording without any reasoning request; the answer alone is the target.
ANSWER_ONLY_INSTRUCTION = "task_instruction_answer_only"


def gmner_instruction_name() -> str:
    """The Twitter-GMNER instruction file in use: ``$MCR_INSTRUCTION`` (a file name under ``prompts/``,
    without ``.txt``; set by ``VARIANT=no_inst`` of recipes/full_pipeline.sh) or ``task_instruction``."""
    name = (os.environ.get(INSTRUCTION_ENV) or "").strip() or GMNER_INSTRUCTION
    if "/" in name or name.endswith(".txt"):
        raise ValueError(f"{INSTRUCTION_ENV}={name!r}: give a prompt name under prompts/, "
                         f"without folder or .txt (e.g. {NOINST_INSTRUCTION})")
    return name


def box_format_line(family: str = "qwen2_5_vl") -> str:
    """The box-format line the instruction carries for ``family`` (its coordinate space)."""
    kind = FAMILIES[family][0] if family in FAMILIES else "pixels"
    return load_prompt(f"box_format_{kind}")


def task_instruction(family: str = "qwen2_5_vl", name: str = "task_instruction") -> str:
    """The task-introduction instruction (App. C.1; ``name`` picks the task's file) with the
    box-format line for ``family``. The Twitter-GMNER instruction (``task_instruction``) follows
    ``$MCR_INSTRUCTION`` when it is set, so that one run prepares, trains, filters and infers with the
    same instruction (`gmner_instruction_name`)."""
    if name == GMNER_INSTRUCTION:
        name = gmner_instruction_name()
        if name != GMNER_INSTRUCTION and not (prompts_dir() / f"{name}.txt").is_file():
            raise FileNotFoundError(f"{INSTRUCTION_ENV}={name!r}: no prompt file {prompts_dir() / (name + '.txt')}")
    return load_prompt(name).replace("{box_format}", box_format_line(family))
