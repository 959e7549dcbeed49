"""The CVO rewards as ms-swift ORMs (``--reward_funcs gmner_orm`` or the separate terms).

GRPO calls ``reward(completions, **columns)``: every dataset column arrives as a list aligned with
``completions`` (plus ``trainer_state``, ``images``, ``messages``, ... which are ignored). mcr-swift rows
carry ``mcr_gold`` (JSON text: ``[{"entity", "type", "boxes": [[x1, y1, x2, y2], ..]}, ..]`` in
original-image pixels) and ``mcr_image_sizes`` (``[[width, height], ..]``).

Per completion:

1. The text is the completion itself, or the last assistant ``content`` of a list of messages
   (a content given as a list of parts is joined from its text parts).
2. It is parsed with `mcr_swift.evaluation.parser.parse_answer`, boxes clamped to the model extent of the row's
   first image (`CoordinateSpace.model_extent`).
3. The comparison happens in the **model's coordinate space**: the gold boxes are mapped with
   `CoordinateSpace.to_model` (the same rounding ms-swift applies when it writes the training labels)
   and clamped to the model extent. IoU is invariant to the per-axis scaling between the two spaces,
   so this equals comparing in original pixels up to ms-swift's integer rounding, and an answer that
   reproduces the label exactly scores exactly 1.0. ``MCR_REWARD_SPACE=original`` instead maps the
   predicted boxes back with `CoordinateSpace.from_model` and compares with the original-pixel gold
   (then the rounding of the model's integer output costs a little IoU even on a perfect answer).
   The space is read from the environment (``MCR_MODEL_FAMILY``, ``MAX_PIXELS``, ``MIN_PIXELS``,
   ``IMAGE_MAX_TOKEN_NUM``, ``IMAGE_MIN_TOKEN_NUM``, ``MCR_TEMPLATE_MAX_PIXELS``; see
   `CoordinateSpace.from_env`) once per call.
4. The terms of `mcr_swift.rewards.reward_terms` are computed, for the row's task (below).
   A completion with no parseable answer (`mcr_swift.evaluation.parser.ParseResult.answered` False: no text,
   prose, junk, ``<answer></answer>``, a structure with no entity in it) scores 0 on every term of
   every task and 0 F1 (``gmner_f1``), also on a row with no gold entity or a GREC no-target row;
   a well-formed empty answer (``<answer>[]</answer>``, ``None``, ...) on such a row earns 1.

Tasks (the row column ``mcr_task``; rows without it are ``gmner``, so
``GMNERReward()(completions, mcr_gold=[...], mcr_image_sizes=[...])`` scores GMNER exactly as before):

==========  ==========================  ===================================================
task        terms                        what is compared
==========  ==========================  ===================================================
``gmner``   count, span, type, iou,     all gold triples (Eq. 6-10)
            entail
``mner_mi`` count, span, type           span and type only: MNER-MI asks for no location
                                         (Sec. 5.3), so predicted boxes are ignored
``grec``    iou, entail                 the answer's location (its box, None, or several
                                         boxes = wrong) against the one gold expression's
                                         (`mcr_swift.data.grec.grec_reward_terms`)
==========  ==========================  ===================================================

Weights of ``gmner_orm`` per task (`task_weights`): the lambdas of the task's terms, rescaled so that
they sum to the same total as all five lambdas (1.0 by default). So every task's R lies in the same
range [0, sum lambda] that App. D.3's filter thresholds assume: by default 1/3 each for MNER-MI and
0.5 each for GREC. A task whose terms all have weight 0 scores 0.0 (warned once at start).
The single-term rewards return None (ms-swift turns it into NaN and leaves it out of its
``nansum``) for a row whose task does not use that term; combining them with ``--reward_weights``
therefore does not rescale per task as ``gmner_orm`` does.

Configuration (environment, read when the reward object is built; bad values raise ValueError then):

* ``MCR_REWARD_WEIGHTS``: the 5 lambdas of Eq. 10 for ``gmner_orm``, ``"0.2,0.2,0.2,0.2,0.2"`` (order
  count, span, type, iou, entail) or ``"count=0.3,span=0.2,..."`` (missing terms weigh 0). Default 0.2 each.
* ``MCR_IOU_SIGMA``: sigma of Eq. 8, in [0, 1). Default 0.5.
* ``MCR_REWARD_SPACE``: ``model`` (default) or ``original``, see 3.
* ``MCR_UNMATCHED``: ``drop`` (default) or ``zero``, the reading of "the k matched pairs" of
  Eq. 6-9 (`mcr_swift.rewards`): ``drop`` averages over the assigned pairs with F > 0, ``zero``
  over max(p, q) pairs (F = 0 pairs and unpartnered entities count as 0). GMNER and MNER-MI rows.
* ``MCR_REWARD_LOG``: a file to which ``gmner_orm`` appends one JSON line per scored completion
  (``mcr_id``, ``completion``, ``reward``, ``terms``, ``parse_ok`` (= answered, see 4.), ``n_pred``,
  ``n_gold``).

A row whose ``mcr_gold`` is missing or malformed, or whose image size is unusable while gold boxes
need it, gets 0.0 (never an exception in the training loop); the first such row is logged as a
warning and all are counted in `malformed_rows()`.

Registered names (`register_rewards`): ``gmner_orm`` (`GMNERReward`, the weighted sum), ``gmner_count``,
``gmner_span``, ``gmner_type``, ``gmner_iou``, ``gmner_entail`` (one term each, to combine with
ms-swift's ``--reward_weights``), ``gmner_format`` (1.0 iff `mcr_swift.evaluation.parser.format_ok`) and
``gmner_f1`` (`GMNERF1Reward`: the completion's GMNER F1, a logged metric for Fig. 4, not a term).
"""
from __future__ import annotations

import json
import logging
import math
import os
import threading
from functools import lru_cache
from typing import Any, Dict, List, Optional, Sequence, Tuple

from swift.rewards import ORM

from ..coords import CoordinateSpace, clamp_box
from ..evaluation.parser import completion_text, format_ok, parse_answer
from ..data.grec import grec_reward_terms
from ..data.rows import GOLD_COLUMN, SIZES_COLUMN, TASK_COLUMN, TASKS, parse_gold
from ..rewards import (DEFAULT_SIGMA, DEFAULT_UNMATCHED, TERMS, _check_sigma, check_unmatched, normalize_weights,
                      reward_terms, weighted_sum)
from ..entities import Entity

__all__ = ["GMNERReward", "GMNERCountReward", "GMNERSpanReward", "GMNERTypeReward", "GMNERIoUReward",
           "GMNEREntailReward", "GMNERFormatReward", "GMNERF1Reward", "REWARD_NAMES", "register_rewards",
           "weights_from_env", "sigma_from_env", "unmatched_from_env", "malformed_rows", "completion_text", "TASK_TERMS",
           "task_weights"]

logger = logging.getLogger("mcr_swift.rewards")

SPACES = ("model", "original")
#: The reward terms each row task uses (module docstring).
TASK_TERMS: Dict[str, Tuple[str, ...]] = {"gmner": TERMS, "mner_mi": ("count", "span", "type"),
                                          "grec": ("iou", "entail")}
assert set(TASK_TERMS) == set(TASKS)

_lock = threading.Lock()
_malformed = 0


def malformed_rows() -> int:
    """How many completions got 0.0 because their row's gold/size was unusable (this process)."""
    return _malformed


def _note_malformed(reason: str) -> None:
    global _malformed
    with _lock:
        _malformed += 1
        first = _malformed == 1
    if first:
        logger.warning("mcr-swift reward: %s; such completions score 0.0 (counted in "
                       "mcr_swift.plugin.orms.malformed_rows(), warned once)", reason)


# --------------------------------------------------------------------------- configuration
def weights_from_env(env=None) -> Tuple[float, ...]:
    """The lambdas from ``MCR_REWARD_WEIGHTS`` (module docstring); defaults when unset/empty."""
    env = os.environ if env is None else env
    raw = (env.get("MCR_REWARD_WEIGHTS") or "").strip()
    if not raw:
        return normalize_weights(None)
    parts = [p.strip() for p in raw.replace(";", ",").split(",") if p.strip()]
    try:
        if any("=" in p for p in parts):
            d = {}
            for p in parts:
                k, sep, v = p.partition("=")
                if not sep:
                    raise ValueError(f"MCR_REWARD_WEIGHTS={raw!r}: mix of name=value and bare values")
                d[k.strip()] = float(v)
            return normalize_weights(d)
        return normalize_weights([float(p) for p in parts])
    except ValueError as e:
        raise ValueError(f"MCR_REWARD_WEIGHTS={raw!r}: {e}") from None


def task_weights(weights: Tuple[float, ...], task: str) -> Dict[str, float]:
    """The lambdas ``gmner_orm`` uses for ``task``: those of its terms (`TASK_TERMS`), rescaled to
    the total of all five; all 0 when every term of the task weighs 0."""
    active = TASK_TERMS[task]
    if active == TERMS:
        return dict(zip(TERMS, weights))
    sub = {t: w for t, w in zip(TERMS, weights) if t in active}
    part = math.fsum(sub.values())
    if part == 0:
        return {t: 0.0 for t in active}
    total = math.fsum(weights)
    return {t: w * total / part for t, w in sub.items()}


def sigma_from_env(env=None) -> float:
    env = os.environ if env is None else env
    raw = (env.get("MCR_IOU_SIGMA") or "").strip()
    if not raw:
        return DEFAULT_SIGMA
    try:
        return _check_sigma(float(raw))
    except ValueError as e:
        raise ValueError(f"MCR_IOU_SIGMA={raw!r}: {e}") from None


def unmatched_from_env(env=None) -> str:
    """``MCR_UNMATCHED`` (``drop`` or ``zero``; default ``drop``)."""
    env = os.environ if env is None else env
    raw = (env.get("MCR_UNMATCHED") or "").strip()
    if not raw:
        return DEFAULT_UNMATCHED
    try:
        return check_unmatched(raw)
    except ValueError as e:
        raise ValueError(f"MCR_UNMATCHED={raw!r}: {e}") from None


def space_mode_from_env(env=None) -> str:
    env = os.environ if env is None else env
    raw = (env.get("MCR_REWARD_SPACE") or "model").strip().lower()
    if raw not in SPACES:
        raise ValueError(f"MCR_REWARD_SPACE={raw!r}: choose one of {SPACES}")
    return raw


# --------------------------------------------------------------------------- inputs
def _column(kwargs: Dict[str, Any], name: str, n: int) -> List[Any]:
    col = kwargs.get(name)
    if col is None:
        return [None] * n
    try:
        col = list(col)
    except TypeError:
        return [None] * n
    return col + [None] * (n - len(col)) if len(col) < n else col


def _rows(completions: Sequence[Any], kwargs: Dict[str, Any]):
    """(completion, gold, sizes, task) per completion, from the columns GRPO passes."""
    n = len(completions)
    return zip(completions, _column(kwargs, GOLD_COLUMN, n), _column(kwargs, SIZES_COLUMN, n),
               _column(kwargs, TASK_COLUMN, n))


def _first_size(sizes: Any) -> Optional[Tuple[int, int]]:
    """(w, h) of the row's first image, or None."""
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
def _gold_cached(raw: str, size: Optional[Tuple[int, int]], space: CoordinateSpace, mode: str
                 ) -> Tuple[Entity, ...]:
    return tuple(_gold_in_space(parse_gold(raw), size, space, mode))


@lru_cache(maxsize=4096)
def _extent(space: CoordinateSpace, size: Tuple[int, int]) -> Tuple[float, float]:
    return space.model_extent(size)


def _gold_in_space(gold: List[Entity], size, space: CoordinateSpace, mode: str) -> List[Entity]:
    if mode == "original" or not any(e.boxes for e in gold):
        return gold
    if size is None:
        raise ValueError(f"no usable image size ({SIZES_COLUMN}) to map the gold boxes")
    ext = _extent(space, size)
    return [Entity(e.text, e.type, tuple(clamp_box(space.to_model(b, size), *ext) for b in e.boxes))
            for e in gold]


def _gold_for(raw: Any, size, space: CoordinateSpace, mode: str) -> List[Entity]:
    if isinstance(raw, str):
        return list(_gold_cached(raw, size, space, mode))
    return _gold_in_space(parse_gold(raw), size, space, mode)


#: Completions longer than this are scored without the cache (which shares work between the
#: separate-term rewards of one step).
_CACHE_MAX_TEXT = 16384


def _decode(text: str, raw: Any, size, space: CoordinateSpace, mode: str):
    """(predicted entities, gold entities, answered), both in the comparison space (module doc, 3.),
    or ("malformed", why) when the row's gold or size cannot be used. ``answered`` is
    `ParseResult.answered` (module doc, 4.)."""
    try:
        gold = _gold_for(raw, size, space, mode)
        extent = _extent(space, size) if size is not None else None
    except Exception as e:  # malformed gold or size: the caller scores 0.0
        return ("malformed", f"{type(e).__name__}: {e}")
    res = parse_answer(text, extent=extent)
    pred = res.entities
    if mode == "original" and size is not None:
        pred = [Entity(e.text, e.type, tuple(space.from_model(b, size) for b in e.boxes[:1])) for e in pred]
    elif mode == "original" and any(e.boxes for e in pred) and any(e.boxes for e in gold):
        return ("malformed", f"no usable image size ({SIZES_COLUMN}) to map the predicted boxes")
    return (tuple(pred), tuple(gold), res.answered)


#: Completions longer than this are scored without the caches (which share the parsing and the
#: scoring between the separate-term rewards, ``gmner_orm`` and ``gmner_f1`` of one step).
_CACHE_MAX_TEXT = 16384


@lru_cache(maxsize=4096)
def _decode_cached(text: str, raw: str, size, space: CoordinateSpace, mode: str):
    return _decode(text, raw, size, space, mode)


def _decoded(text: str, raw: Any, size, space: CoordinateSpace, mode: str):
    """`_decode`, through the cache when the row allows it."""
    if isinstance(raw, str) and len(text) <= _CACHE_MAX_TEXT:
        return _decode_cached(text, raw, size, space, mode)
    return _decode(text, raw, size, space, mode)


@lru_cache(maxsize=4096)
def _terms_cached(text: str, raw: str, size, space: CoordinateSpace, mode: str, sigma: float,
                  task: str = "gmner", unmatched: str = DEFAULT_UNMATCHED):
    return _terms_uncached(text, raw, size, space, mode, sigma, task, unmatched)


def _terms_uncached(text: str, raw: Any, size, space: CoordinateSpace, mode: str, sigma: float,
                    task: str = "gmner", unmatched: str = DEFAULT_UNMATCHED):
    """(terms dict of the task's terms, answered, n_pred, n_gold), or ("malformed", why)."""
    d = _decoded(text, raw, size, space, mode)
    if d[0] == "malformed":
        return d
    pred, gold, ok = d
    if task == "grec" and len(gold) != 1:
        return ("malformed", f"a GREC row has exactly one gold expression, got {len(gold)}")
    if not ok:  # no parseable answer: 0 on every term of every task (module doc, 4.)
        return ({t: 0.0 for t in TASK_TERMS[task]}, ok, len(pred), len(gold))
    if task == "grec":
        try:
            terms = grec_reward_terms(pred, gold, sigma)
        except ValueError as e:  # not exactly one gold expression
            return ("malformed", str(e))
    else:
        terms = reward_terms(pred, gold, sigma, unmatched=unmatched)
        terms = {t: terms[t] for t in TASK_TERMS[task]}
    return (terms, ok, len(pred), len(gold))


def _post_f1(pred: Sequence[Entity], gold: Sequence[Entity], task: str) -> float:
    """F1 of one decoded completion against its row's gold, as the evaluation counts it (Eq. 19-24,
    one post): GMNER F1 (span, type and location) for ``gmner`` rows, MNER F1 (span, type) for
    ``mner_mi`` rows. No prediction and no gold is 1.0 (nothing to find, nothing invented)."""
    from ..evaluation.metrics import post_counts
    if task == "mner_mi":
        pred, gold = [Entity(e.text, e.type) for e in pred], [Entity(e.text, e.type) for e in gold]
    if not pred and not gold:
        return 1.0
    c = post_counts(pred, gold, pairs=False)["mner" if task == "mner_mi" else "gmner"]
    return 2.0 * c["correct"] / (c["predicted"] + c["gold"])


def _usable_rows(completions: Sequence[Any], kwargs: Dict[str, Any]):
    """Per completion: (text, gold, first image size, task), or None (counted as malformed) for a row
    with no gold or an unknown task."""
    for c, raw, sz, task in _rows(completions, kwargs):
        if raw is None:
            _note_malformed(f"a row has no {GOLD_COLUMN!r} column (is the dataset an mcr-swift one?)")
            yield None
            continue
        task = task or "gmner"
        if task not in TASK_TERMS:
            _note_malformed(f"unknown {TASK_COLUMN} {task!r} (known: {', '.join(TASK_TERMS)})")
            yield None
            continue
        yield completion_text(c), raw, _first_size(sz), task


# --------------------------------------------------------------------------- ORMs
class _GMNERBase(ORM):
    """Shared machinery: parse, map spaces, score; subclasses pick what to return."""

    #: The term returned by a single-term reward (None: the weighted sum).
    term: Optional[str] = None

    def __init__(self, args=None, **kwargs):
        super().__init__(args, **kwargs)
        self.weights = weights_from_env()
        self.task_weights = {t: task_weights(self.weights, t) for t in TASK_TERMS}
        self.sigma = sigma_from_env()
        self.unmatched = unmatched_from_env()
        self.space_mode = space_mode_from_env()
        if self.term is None and not isinstance(self, GMNERF1Reward):  # the weighted sum only
            zero = [t for t, w in self.task_weights.items() if not any(w.values())]
            if zero:
                logger.warning("mcr-swift reward: MCR_REWARD_WEIGHTS gives weight 0 to every term of "
                               "task(s) %s; their rows score 0.0", ", ".join(zero))

    def score(self, completions: Sequence[Any], **kwargs) -> List[Optional[tuple]]:
        """Per completion: (terms, answered, n_pred, n_gold, task), or None for an unusable row."""
        space = CoordinateSpace.from_env()
        out: List[Optional[tuple]] = []
        for row in _usable_rows(completions, kwargs):
            if row is None:
                out.append(None)
                continue
            text, raw, size, task = row
            if isinstance(raw, str) and len(text) <= _CACHE_MAX_TEXT:
                r = _terms_cached(text, raw, size, space, self.space_mode, self.sigma, task, self.unmatched)
            else:
                r = _terms_uncached(text, raw, size, space, self.space_mode, self.sigma, task, self.unmatched)
            if r[0] == "malformed":
                _note_malformed(f"unusable row ({r[1]})")
                out.append(None)
            else:
                out.append((*r, task))
        return out

    def _value(self, terms: Dict[str, float], task: str) -> Optional[float]:
        """The reward of one scored row: the task-weighted sum (``gmner_orm``), or the single term
        (None when the task does not use it)."""
        if self.term is not None:
            return terms.get(self.term)
        if task == "gmner":
            return weighted_sum(terms, self.weights)
        w = self.task_weights[task]
        return min(max(math.fsum(w[t] * terms[t] for t in w), 0.0), math.fsum(w.values()))

    def __call__(self, completions, **kwargs) -> List[Optional[float]]:
        scored = self.score(completions, **kwargs)
        rewards = []
        for r in scored:
            v = 0.0 if r is None else self._value(r[0], r[4])
            rewards.append(None if v is None else float(v))
        log_path = os.environ.get("MCR_REWARD_LOG")
        if log_path and self.term is None:  # only gmner_orm logs (module docstring)
            self._log(log_path, completions, scored, rewards, kwargs)
        return rewards

    @staticmethod
    def _log(path, completions, scored, rewards, kwargs) -> None:
        """Append one JSON line per scored completion to ``MCR_REWARD_LOG``."""
        ids = _column(kwargs, "mcr_id", len(completions))
        lines = []
        for c, r, rew, i in zip(completions, scored, rewards, ids):
            rec = {"mcr_id": i, "mcr_task": None if r is None else r[4], "completion": completion_text(c),
                   "reward": rew,
                   "terms": None if r is None else r[0], "parse_ok": None if r is None else r[1],
                   "n_pred": None if r is None else r[2], "n_gold": None if r is None else r[3]}
            lines.append(json.dumps(rec, ensure_ascii=False, default=str))
        try:
            with _lock, open(path, "a", encoding="utf-8") as f:
                f.write("\n".join(lines) + "\n")
        except OSError as e:  # logging must never stop training
            logger.warning("mcr-swift reward: cannot append to MCR_REWARD_LOG=%s: %s", path, e)


class GMNERReward(_GMNERBase):
    """R = sum_j lambda_j R_j (Eq. 10); lambdas from ``MCR_REWARD_WEIGHTS``."""
    term = None


class GMNERCountReward(_GMNERBase):
    """R_c (Eq. 15)."""
    term = "count"


class GMNERSpanReward(_GMNERBase):
    """R_s (Eq. 6)."""
    term = "span"


class GMNERTypeReward(_GMNERBase):
    """R_t (Eq. 7)."""
    term = "type"


class GMNERIoUReward(_GMNERBase):
    """R_u (Eq. 8)."""
    term = "iou"


class GMNEREntailReward(_GMNERBase):
    """R_e (Eq. 9)."""
    term = "entail"


class GMNERF1Reward(_GMNERBase):
    """Per-completion F1 (`_post_f1`): not a term of Eq. 10 but the quantity of the paper's Fig. 4 F1
    curve; use it with weight 0 (``LOG_REWARD_TERMS=true`` in recipes/cvo_grpo.sh) so that ms-swift logs
    it, and on the validation set when one is given (``eval_rewards/GMNERF1Reward/mean``)."""

    def __call__(self, completions, **kwargs) -> List[Optional[float]]:
        space = CoordinateSpace.from_env()
        out: List[Optional[float]] = []
        for row in _usable_rows(completions, kwargs):
            if row is None:
                out.append(0.0)
                continue
            text, raw, size, task = row
            if task == "grec":  # Table 2 scores GREC by N-acc / precision, not F1
                out.append(None)
                continue
            d = _decoded(text, raw, size, space, self.space_mode)
            if d[0] == "malformed":
                _note_malformed(f"unusable row ({d[1]})")
                out.append(0.0)
                continue
            if not d[2]:  # no parseable answer: F1 0, also on a post with no gold entity
                out.append(0.0)
                continue
            try:
                out.append(_post_f1(d[0], d[1], task))
            except Exception as e:  # adversarial output never stops training
                _note_malformed(f"F1 not computable ({type(e).__name__}: {e})")
                out.append(0.0)
        return out


class GMNERFormatReward(ORM):
    """1.0 iff the completion has exactly the canonical think/answer shape (`format_ok`)."""

    def __call__(self, completions, **kwargs) -> List[float]:
        return [1.0 if format_ok(completion_text(c)) else 0.0 for c in completions]


REWARD_NAMES: Dict[str, type] = {
    "gmner_orm": GMNERReward,
    "gmner_count": GMNERCountReward,
    "gmner_span": GMNERSpanReward,
    "gmner_type": GMNERTypeReward,
    "gmner_iou": GMNERIoUReward,
    "gmner_entail": GMNEREntailReward,
    "gmner_format": GMNERFormatReward,
    "gmner_f1": GMNERF1Reward,
}
assert set(TERMS) == {c.term for c in REWARD_NAMES.values() if getattr(c, "term", None)}


def register_rewards() -> Dict[str, type]:
    """Put the rewards into ``swift.rewards.orms`` under `REWARD_NAMES` (idempotent)."""
    from swift.rewards import orms
    orms.update(REWARD_NAMES)
    return dict(REWARD_NAMES)
