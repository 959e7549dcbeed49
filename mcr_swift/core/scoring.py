"""One completion against one dataset row: `score_row` (pure core, no ms-swift).

The ms-swift ORMs (`mcr_swift.plugin.orms`) and the D2 filter (`mcr_swift.synth.cvo_filter`) both score
through `score_row`; settings come from one `RewardConfig`, read from the environment once.

Per completion (the row's columns ``mcr_task`` (missing = ``gmner``), ``mcr_gold`` (JSON text or a list:
``[{"entity", "type", "boxes": [[x1, y1, x2, y2], ..]}, ..]`` in original-image pixels) and
``mcr_image_sizes`` (``[[width, height], ..]``; the first image counts)):

1. The text is the completion itself, or the last assistant ``content`` of a list of messages
   (`mcr_swift.core.parser.completion_text`).
2. It is parsed with `mcr_swift.core.parser.parse_answer`, boxes clamped to the model extent of the
   row's first image (`CoordinateSpace.model_extent`).
3. The comparison happens in the **model's coordinate space**: gold boxes are mapped with
   `CoordinateSpace.to_model` (the rounding ms-swift applies to the training labels) and clamped to the
   model extent, so an answer that reproduces the label scores exactly 1.0 (IoU is invariant to the
   per-axis scaling, so this equals comparing in original pixels up to that rounding).
   ``MCR_REWARD_SPACE=original`` maps the predicted boxes back with `CoordinateSpace.from_model` instead.
4. The terms of the row's task (`mcr_swift.core.rewards.TASK_TERMS`): ``gmner`` count, span, type, iou, entail
   (Eq. 6-9, 15); ``mner_mi`` count, span, type (no location asked, Sec. 5.3); ``grec`` iou, entail
   (`mcr_swift.core.rewards.grec_reward_terms`). R is Eq. 10 with the task-rescaled lambdas
   (`mcr_swift.core.rewards.task_weights`). A completion with no parseable answer (``answered`` False) scores 0
   on every term and 0 F1, also on a row with no gold; a well-formed empty answer on such a row earns 1.
5. F1: the post's GMNER F1 (Eq. 19-24) on ``gmner`` rows, MNER F1 on ``mner_mi`` rows, None on ``grec``.

A row that cannot be scored (no gold column, malformed gold, unknown task, unusable image size while
boxes need it, a GREC row without exactly one expression) gives a `Score` with ``skipped`` set to the
reason and R = 0.0; the caller counts it.

Configuration (`RewardConfig.from_env`; bad values raise ValueError naming the variable):

* ``MCR_REWARD_WEIGHTS``: the 5 lambdas of Eq. 10, ``"0.2,0.2,0.2,0.2,0.2"`` (order count, span, type,
  iou, entail) or ``"count=0.3,span=0.2,..."`` (missing terms weigh 0). Default 0.2 each.
* ``MCR_IOU_SIGMA``: sigma of Eq. 8, in [0, 1). Default 0.5.
* ``MCR_UNMATCHED``: ``drop`` (default) or ``zero``, the reading of "the k matched pairs" of Eq. 6-9.
* ``MCR_COUNT_READING``: ``literal`` (default) or ``true_count``, the reading of Eq. 14-15 (R_c).
* ``MCR_REWARD_SPACE``: ``model`` (default) or ``original``, see 3.
* ``MCR_REWARD_LOG``: a file to which ``gmner_orm`` appends one JSON line per scored completion.
* the image resize (``MCR_MODEL_FAMILY``, ``MAX_PIXELS``, ``MIN_PIXELS``, ``IMAGE_MAX_TOKEN_NUM``,
  ``IMAGE_MIN_TOKEN_NUM``, ``MCR_TEMPLATE_MAX_PIXELS``): `CoordinateSpace.from_env`.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field, replace
from functools import cached_property, lru_cache
from typing import Any, Dict, Mapping, Optional, Tuple

from .coords import CoordinateSpace, clamp_box
from .columns import GOLD_COLUMN, SIZES_COLUMN, TASK_COLUMN, TASKS, parse_gold
from .entities import Entity
from .parser import completion_text, format_ok, parse_answer
from .rewards import (DEFAULT_COUNT_READING, DEFAULT_SIGMA, DEFAULT_UNMATCHED, TASK_TERMS, TERMS, check_sigma,
                      check_count_reading, check_unmatched,
                      grec_reward_terms, normalize_weights, reward_terms, task_reward, task_weights)

__all__ = ["RewardConfig", "Score", "score_row", "weights_from_env", "sigma_from_env", "unmatched_from_env",
           "count_reading_from_env",
           "space_mode_from_env", "SPACES", "first_size"]

assert set(TASK_TERMS) == set(TASKS)

SPACES = ("model", "original")

#: Completions longer than this are scored without the caches (which share the parsing and the
#: scoring between the separate-term rewards, ``gmner_orm`` and ``gmner_f1`` of one step).
CACHE_MAX_TEXT = 16384


# --------------------------------------------------------------------------- configuration
def _from_env(env, name: str, default, parse):
    """The setting ``name`` of ``env`` (default os.environ) read by ``parse``; ``default`` when unset or
    empty; a bad value raises ValueError naming ``name=value``."""
    env = os.environ if env is None else env
    raw = (env.get(name) or "").strip()
    if not raw:
        return default
    try:
        return parse(raw)
    except ValueError as e:
        raise ValueError(f"{name}={raw!r}: {e}") from None


def _parse_weights(raw: str) -> Tuple[float, ...]:
    parts = [p.strip() for p in raw.replace(";", ",").split(",") if p.strip()]
    if any("=" in p for p in parts):
        d = {}
        for p in parts:
            k, sep, v = p.partition("=")
            if not sep:
                raise ValueError(f"MCR_REWARD_WEIGHTS={raw!r}: mix of name=value and bare values")
            d[k.strip()] = float(v)
        return normalize_weights(d)
    return normalize_weights([float(p) for p in parts])


def weights_from_env(env=None) -> Tuple[float, ...]:
    """The lambdas from ``MCR_REWARD_WEIGHTS`` (module docstring); defaults when unset/empty."""
    return _from_env(env, "MCR_REWARD_WEIGHTS", normalize_weights(None), _parse_weights)


def sigma_from_env(env=None) -> float:
    """``MCR_IOU_SIGMA`` (sigma of Eq. 8; default 0.5)."""
    return _from_env(env, "MCR_IOU_SIGMA", DEFAULT_SIGMA, lambda raw: check_sigma(float(raw)))


def unmatched_from_env(env=None) -> str:
    """``MCR_UNMATCHED`` (``drop`` or ``zero``; default ``drop``)."""
    return _from_env(env, "MCR_UNMATCHED", DEFAULT_UNMATCHED, check_unmatched)


def count_reading_from_env(env=None) -> str:
    """``MCR_COUNT_READING`` (``literal`` or ``true_count``; default ``literal``)."""
    return _from_env(env, "MCR_COUNT_READING", DEFAULT_COUNT_READING, check_count_reading)


def space_mode_from_env(env=None) -> str:
    """``MCR_REWARD_SPACE`` (``model`` or ``original``; default ``model``)."""
    env = os.environ if env is None else env
    raw = (env.get("MCR_REWARD_SPACE") or "model").strip().lower()
    if raw not in SPACES:
        raise ValueError(f"MCR_REWARD_SPACE={raw!r}: choose one of {SPACES}")
    return raw


@dataclass(frozen=True)
class RewardConfig:
    """Every reward setting (module docstring); `from_env` reads them once."""
    weights: Tuple[float, ...] = normalize_weights(None)
    sigma: float = DEFAULT_SIGMA
    unmatched: str = DEFAULT_UNMATCHED
    count_reading: str = DEFAULT_COUNT_READING
    space_mode: str = "model"
    space: CoordinateSpace = field(default_factory=CoordinateSpace.from_env)
    log_path: Optional[str] = None

    @classmethod
    def from_env(cls, env: Optional[Mapping[str, str]] = None) -> "RewardConfig":
        env = os.environ if env is None else env
        return cls(weights=weights_from_env(env), sigma=sigma_from_env(env), unmatched=unmatched_from_env(env),
                   count_reading=count_reading_from_env(env), space_mode=space_mode_from_env(env),
                   space=CoordinateSpace.from_env(env=env),
                   log_path=(env.get("MCR_REWARD_LOG") or "").strip() or None)

    def task_weights(self, task: str) -> Dict[str, float]:
        return task_weights(self.weights, task)

    def zero_weight_tasks(self) -> Tuple[str, ...]:
        """Tasks whose terms all weigh 0 (their rows score 0.0)."""
        return tuple(t for t in TASK_TERMS if not any(self.task_weights(t).values()))


# --------------------------------------------------------------------------- result
@dataclass(frozen=True)
class Score:
    """One completion scored against one row. A term is None when the task does not use it (or the
    row was skipped); ``reward`` is R of Eq. 10 (0.0 for a skipped row); ``skipped`` the reason a row
    could not be scored, else None. ``f1`` and ``format_ok`` are computed on first access."""
    task: str
    text: str
    reward: float = 0.0
    answered: Optional[bool] = None
    n_pred: Optional[int] = None
    n_gold: Optional[int] = None
    count: Optional[float] = None
    span: Optional[float] = None
    type: Optional[float] = None
    iou: Optional[float] = None
    entail: Optional[float] = None
    skipped: Optional[str] = None
    pred: Tuple[Entity, ...] = field(default=(), repr=False, compare=False)
    gold: Tuple[Entity, ...] = field(default=(), repr=False, compare=False)

    @property
    def terms(self) -> Optional[Dict[str, float]]:
        """The task's terms by name (None for a skipped row)."""
        if self.skipped is not None:
            return None
        return {t: getattr(self, t) for t in TASK_TERMS[self.task]}

    def term(self, name: str) -> Optional[float]:
        if name not in TERMS:
            raise KeyError(name)
        return getattr(self, name)

    @cached_property
    def f1(self) -> Optional[float]:
        """The post's F1 as the evaluation counts it (Eq. 19-24, one post): GMNER F1 (span, type and
        location) for ``gmner`` rows, MNER F1 (span, type) for ``mner_mi``, None for ``grec`` (Table 2
        scores GREC by N-acc / precision, also on a skipped GREC row). 0.0 for a skipped row or no parseable
        answer; no prediction
        and no gold is 1.0."""
        if self.task == "grec":
            return None
        if self.skipped is not None or not self.answered:
            return 0.0
        return _post_f1(self.pred, self.gold, self.task)

    @cached_property
    def format_ok(self) -> bool:
        """The canonical think/answer shape (`mcr_swift.core.parser.format_ok`)."""
        return format_ok(self.text)


def _post_f1(pred, gold, task: str) -> float:
    from .metrics import post_counts
    if task == "mner_mi":
        pred, gold = [Entity(e.text, e.type) for e in pred], [Entity(e.text, e.type) for e in gold]
    if not pred and not gold:
        return 1.0
    try:
        c = post_counts(list(pred), list(gold), pairs=False)["mner" if task == "mner_mi" else "gmner"]
    except Exception:  # adversarial output never raises
        return 0.0
    return 2.0 * c["correct"] / (c["predicted"] + c["gold"])


# --------------------------------------------------------------------------- inputs
def first_size(sizes: Any) -> Optional[Tuple[int, int]]:
    """(w, h) of the row's first image (``mcr_image_sizes``), or None."""
    if isinstance(sizes, str):
        try:
            sizes = json.loads(sizes)
        except ValueError:
            return None
    try:
        first = sizes[0]
        if isinstance(first, (int, float)):  # a bare [w, h]
            first = sizes
        w, h = int(first[0]), int(first[1])
    except (TypeError, ValueError, IndexError, KeyError, OverflowError):
        return None
    return (w, h) if w > 0 and h > 0 else None


@lru_cache(maxsize=4096)
def _extent(space: CoordinateSpace, size: Tuple[int, int]) -> Tuple[float, float]:
    return space.model_extent(size)


def _gold_in_space(gold, size, space: CoordinateSpace, mode: str) -> Tuple[Entity, ...]:
    """The gold entities in the comparison space (module doc, 3.)."""
    if mode == "original" or not any(e.boxes for e in gold):
        return tuple(gold)
    if size is None:
        raise ValueError(f"no usable image size ({SIZES_COLUMN}) to map the gold boxes")
    ext = _extent(space, size)
    return tuple(Entity(e.text, e.type, tuple(clamp_box(space.to_model(b, size), *ext) for b in e.boxes))
                 for e in gold)


@lru_cache(maxsize=4096)
def _gold_cached(raw: str, size, space: CoordinateSpace, mode: str) -> Tuple[Entity, ...]:
    return _gold_in_space(parse_gold(raw), size, space, mode)


def _decode(text: str, raw: Any, size, space: CoordinateSpace, mode: str):
    """(pred, gold, answered) in the comparison space, or ("malformed", why)."""
    try:
        gold = _gold_cached(raw, size, space, mode) if isinstance(raw, str) else \
            _gold_in_space(parse_gold(raw), size, space, mode)
        extent = _extent(space, size) if size is not None else None
    except Exception as e:  # malformed gold or size: skipped
        return ("malformed", f"{type(e).__name__}: {e}")
    res = parse_answer(text, extent=extent)
    pred = res.entities
    if mode == "original" and size is not None:
        pred = [Entity(e.text, e.type, tuple(space.from_model(b, size) for b in e.boxes[:1])) for e in pred]
    elif mode == "original" and any(e.boxes for e in pred) and any(e.boxes for e in gold):
        return ("malformed", f"no usable image size ({SIZES_COLUMN}) to map the predicted boxes")
    return (tuple(pred), gold, res.answered)


@lru_cache(maxsize=4096)
def _decode_cached(text: str, raw: str, size, space: CoordinateSpace, mode: str):
    return _decode(text, raw, size, space, mode)


def _score(text: str, raw: Any, size, task: str, cfg: RewardConfig) -> Score:
    if isinstance(raw, str) and len(text) <= CACHE_MAX_TEXT:
        d = _decode_cached(text, raw, size, cfg.space, cfg.space_mode)
    else:
        d = _decode(text, raw, size, cfg.space, cfg.space_mode)
    if d[0] == "malformed":
        return Score(task, text, skipped=f"unusable row ({d[1]})")
    pred, gold, ok = d
    if task == "grec" and len(gold) != 1:
        return Score(task, text, skipped=f"unusable row (a GREC row has exactly one gold expression, got {len(gold)})")
    if not ok:  # no parseable answer: 0 on every term of every task (module doc, 4.)
        terms = {t: 0.0 for t in TASK_TERMS[task]}
    elif task == "grec":
        terms = grec_reward_terms(pred, gold, cfg.sigma)
    else:
        terms = reward_terms(pred, gold, cfg.sigma, unmatched=cfg.unmatched, count_reading=cfg.count_reading)
        terms = {t: terms[t] for t in TASK_TERMS[task]}
    return Score(task, text, reward=float(task_reward(terms, cfg.weights, task)), answered=ok, n_pred=len(pred),
                 n_gold=len(gold), pred=pred, gold=gold, **terms)


@lru_cache(maxsize=4096)
def _score_cached(text: str, raw: str, size, task: str, cfg: RewardConfig) -> Score:
    return _score(text, raw, size, task, cfg)


def score_row(completion: Any, row: Mapping[str, Any], config: Optional[RewardConfig] = None) -> Score:
    """Score one completion (text, or a list of chat messages) against one dataset row's
    ``mcr_task``/``mcr_gold``/``mcr_image_sizes`` (module docstring). Never raises on model output or a
    malformed row (the `Score` says ``skipped``); repeated calls with the same completion and row are
    served from a cache (the separate-term ORMs of one GRPO step share the work)."""
    cfg = RewardConfig.from_env() if config is None else config
    text = completion_text(completion)
    task = row.get(TASK_COLUMN) or "gmner"
    if not isinstance(task, str) or task not in TASK_TERMS:
        return Score("gmner", text, skipped=f"unknown {TASK_COLUMN} {task!r} (known: {', '.join(TASK_TERMS)})")
    raw = row.get(GOLD_COLUMN)
    if raw is None:
        return Score(task, text, skipped=f"a row has no {GOLD_COLUMN!r} column (is the dataset an mcr-swift one?)")
    size = first_size(row.get(SIZES_COLUMN))
    row_space = cfg.space.for_row(row)  # a per-post image budget resizes this row's images (coords)
    if row_space is not cfg.space:
        cfg = replace(cfg, space=row_space)
    if isinstance(raw, str) and len(text) <= CACHE_MAX_TEXT:
        return _score_cached(text, raw, size, task, cfg)
    return _score(text, raw, size, task, cfg)


def clear_caches() -> None:
    """Empty the scoring caches (benchmarks time real work with it)."""
    for f in (_score_cached, _decode_cached, _gold_cached, _extent):
        f.cache_clear()
