"""Range-checked numbers for the commands' flags and numeric environment settings.

Every numeric flag of every command uses one of these as its argparse ``type``, so that a value out
of range (``--limit -1``, ``-G 0``, ``--concurrency 0``, ``--top-p 1.5``) stops at parse time, before
any file is read or any request is sent, with argparse's one-line error (exit 2) naming the flag
and the allowed range. `env_number` does the same for a numeric environment variable (a ValueError
naming the variable, printed by the CLI handler as one line, exit 2).
"""
from __future__ import annotations

import math
import os
from typing import Callable, Mapping, Optional


def _bounds(lo, hi, lo_open: bool, hi_open: bool) -> str:
    if lo is not None and hi is not None:
        return f"in {'(' if lo_open else '['}{lo}, {hi}{')' if hi_open else ']'}"
    if lo is not None:
        return f"{'>' if lo_open else '>='} {lo}"
    return f"{'<' if hi_open else '<='} {hi}"


def _check(value, lo, hi, lo_open: bool, hi_open: bool, text: str):
    import argparse
    bad = ((lo is not None and (value < lo or (lo_open and value == lo)))
           or (hi is not None and (value > hi or (hi_open and value == hi))))
    if bad:
        raise argparse.ArgumentTypeError(f"{text!r} is out of range: must be {_bounds(lo, hi, lo_open, hi_open)}")
    return value


def int_range(lo: Optional[int] = None, hi: Optional[int] = None) -> Callable[[str], int]:
    """argparse type: an integer in [lo, hi] (a bound of None is open-ended)."""

    def parse(text: str) -> int:
        value = int(str(text).strip())  # ValueError: argparse says "invalid int value: '<text>'"
        return _check(value, lo, hi, False, False, text)

    parse.__name__ = "int"
    return parse


def float_range(lo: Optional[float] = None, hi: Optional[float] = None, *, lo_open: bool = False,
                hi_open: bool = False) -> Callable[[str], float]:
    """argparse type: a finite number in the range (``lo_open``/``hi_open``: the bound itself is refused)."""
    import argparse

    def parse(text: str) -> float:
        value = float(str(text).strip())  # ValueError: argparse says "invalid float value: '<text>'"
        if not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"{text!r} is not a finite number")
        return _check(value, lo, hi, lo_open, hi_open, text)

    parse.__name__ = "float"
    return parse


#: The common cases.
positive_int = int_range(1)
non_negative_int = int_range(0)
positive_float = float_range(0.0, lo_open=True)
non_negative_float = float_range(0.0)
#: A probability or score in [0, 1].
unit_float = float_range(0.0, 1.0)
#: Nucleus sampling's top-p: (0, 1].
top_p_float = float_range(0.0, 1.0, lo_open=True)


def env_number(name: str, parse: Callable[[str], float], env: Optional[Mapping[str, str]] = None):
    """The value of the environment variable ``name`` read with an argparse type of this module, or
    None when it is unset or blank; ValueError naming the variable when it is out of range."""
    import argparse
    env = os.environ if env is None else env
    raw = env.get(name)
    if raw is None or not str(raw).strip():
        return None
    try:
        return parse(raw)
    except argparse.ArgumentTypeError as e:
        raise ValueError(f"environment variable {name}={raw!r}: {e}") from None
    except ValueError:
        raise ValueError(f"environment variable {name}={raw!r} is not a number") from None


def top_k_int(text: str) -> int:
    """argparse type: top-k sampling, an integer >= 1, or -1 for "off" (vLLM's convention)."""
    import argparse
    value = int_range(-1)(text)
    if value == 0:
        raise argparse.ArgumentTypeError(f"{text!r} is out of range: must be >= 1, or -1 (off)")
    return value
