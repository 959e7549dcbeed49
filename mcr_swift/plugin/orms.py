"""The CVO rewards as ms-swift ORMs (``--reward_funcs gmner_orm`` or the separate terms).

Thin glue: GRPO calls ``reward(completions, **columns)`` with every dataset column as a list aligned
with ``completions``; each ORM scores row by row with the pure `mcr_swift.core.scoring.score_row` (tasks,
gold in the model's box space, terms, Eq. 10, F1 and the settings of `mcr_swift.core.scoring.RewardConfig`,
read from the environment once, when the ORM is built) and returns one field of the `Score`.

Registered names (`REWARD_NAMES`, `register_rewards`): ``gmner_orm`` (`GMNERReward`, R of Eq. 10 with
the task-rescaled lambdas), ``gmner_count``, ``gmner_span``, ``gmner_type``, ``gmner_iou``,
``gmner_entail`` (one term each, None for a row whose task does not use it, so that ms-swift's
``nansum`` leaves it out; combining them with ``--reward_weights`` does not rescale per task),
``gmner_format`` (1.0 iff `mcr_swift.core.parser.format_ok`) and ``gmner_f1`` (`GMNERF1Reward`,
the completion's F1, a logged metric for Fig. 4, not a term).

A row that cannot be scored gets 0.0 (never an exception in the training loop); the first such row is
logged as a warning and all are counted in `malformed_rows()`. ``gmner_orm`` appends one JSON line per
completion to ``MCR_REWARD_LOG`` when it is set (``mcr_id``, ``mcr_task``, ``completion``, ``reward``,
``terms``, ``parse_ok`` (= answered), ``n_pred``, ``n_gold``).
"""
from __future__ import annotations

import json
import logging
import threading
from typing import Any, Dict, List, Optional, Sequence

from swift.rewards import ORM

from ..core.parser import completion_text
from ..core.rewards import TASK_TERMS, TERMS, task_weights
from ..core.scoring import (RewardConfig, Score, score_row, sigma_from_env, space_mode_from_env, unmatched_from_env,
                       weights_from_env)

__all__ = ["GMNERReward", "GMNERCountReward", "GMNERSpanReward", "GMNERTypeReward", "GMNERIoUReward",
           "GMNEREntailReward", "GMNERFormatReward", "GMNERF1Reward", "REWARD_NAMES", "register_rewards",
           "weights_from_env", "sigma_from_env", "unmatched_from_env", "space_mode_from_env", "malformed_rows",
           "completion_text", "TASK_TERMS", "task_weights"]

logger = logging.getLogger("mcr_swift.core.rewards")

_lock = threading.Lock()
_malformed = 0


def malformed_rows() -> int:
    """How many completions got 0.0 because their row could not be scored (this process)."""
    return _malformed


def _note_malformed(reason: str) -> None:
    global _malformed
    with _lock:
        _malformed += 1
        first = _malformed == 1
    if first:
        logger.warning("mcr-swift reward: %s; such completions score 0.0 (counted in "
                       "mcr_swift.plugin.orms.malformed_rows(), warned once)", reason)


def _columns(completions: Sequence[Any], kwargs: Dict[str, Any]) -> List[Dict[str, Any]]:
    """One dict of the ``mcr_*`` columns per completion (a missing or short column reads None)."""
    n = len(completions)
    cols = {}
    for name, col in kwargs.items():
        if not name.startswith("mcr_") or col is None:
            continue
        try:
            col = list(col)
        except TypeError:
            continue
        cols[name] = col
    return [{k: (v[i] if i < len(v) else None) for k, v in cols.items()} for i in range(n)]


def _log(path: str, scores: Sequence[Score], rewards: Sequence[float], rows: Sequence[Dict[str, Any]]) -> None:
    """Append one JSON line per scored completion to ``MCR_REWARD_LOG``."""
    lines = []
    for s, rew, row in zip(scores, rewards, rows):
        ok = s.skipped is None
        rec = {"mcr_id": row.get("mcr_id"), "mcr_task": s.task if ok else None, "completion": s.text,
               "reward": rew, "terms": s.terms, "parse_ok": s.answered if ok else None,
               "n_pred": s.n_pred if ok else None, "n_gold": s.n_gold if ok else None}
        lines.append(json.dumps(rec, ensure_ascii=False, default=str))
    try:
        with _lock, open(path, "a", encoding="utf-8") as f:
            f.write("\n".join(lines) + "\n")
    except OSError as e:  # logging must never stop training
        logger.warning("mcr-swift reward: cannot append to MCR_REWARD_LOG=%s: %s", path, e)


class _ScoreORM(ORM):
    """Scores every completion with `score_row`; a subclass says which value it returns (`value`)."""

    def __init__(self, args=None, **kwargs):
        super().__init__(args, **kwargs)
        self.config = RewardConfig.from_env()

    def value(self, s: Score) -> Optional[float]:
        raise NotImplementedError

    def uses(self, s: Score) -> bool:
        """Whether this reward needs the row (an unusable row it does not need is not counted)."""
        return True

    def scores(self, completions, kwargs) -> tuple:
        rows = _columns(completions, kwargs)
        scores = [score_row(c, row, self.config) for c, row in zip(completions, rows)]
        for s in scores:
            if s.skipped is not None and self.uses(s):
                _note_malformed(s.skipped)
        return scores, rows

    def __call__(self, completions, **kwargs) -> List[Optional[float]]:
        scores, _ = self.scores(completions, kwargs)
        return [self.value(s) for s in scores]


class GMNERReward(_ScoreORM):
    """R = sum_j lambda_j R_j (Eq. 10), task-rescaled lambdas from ``MCR_REWARD_WEIGHTS``; logs to
    ``MCR_REWARD_LOG``."""

    def __init__(self, args=None, **kwargs):
        super().__init__(args, **kwargs)
        zero = self.config.zero_weight_tasks()
        if zero:
            logger.warning("mcr-swift reward: MCR_REWARD_WEIGHTS gives weight 0 to every term of "
                           "task(s) %s; their rows score 0.0", ", ".join(zero))

    def value(self, s: Score) -> float:
        return s.reward

    def __call__(self, completions, **kwargs) -> List[Optional[float]]:
        scores, rows = self.scores(completions, kwargs)
        rewards = [s.reward for s in scores]
        if self.config.log_path:
            _log(self.config.log_path, scores, rewards, rows)
        return rewards


class _TermORM(_ScoreORM):
    term: str = ""

    def value(self, s: Score) -> Optional[float]:
        return 0.0 if s.skipped is not None else s.term(self.term)


class GMNERCountReward(_TermORM):
    """R_c (Eq. 15)."""
    term = "count"


class GMNERSpanReward(_TermORM):
    """R_s (Eq. 6)."""
    term = "span"


class GMNERTypeReward(_TermORM):
    """R_t (Eq. 7)."""
    term = "type"


class GMNERIoUReward(_TermORM):
    """R_u (Eq. 8)."""
    term = "iou"


class GMNEREntailReward(_TermORM):
    """R_e (Eq. 9)."""
    term = "entail"


class GMNERF1Reward(_ScoreORM):
    """The completion's F1 (`Score.f1`, Eq. 19-24 for one post): not a term of Eq. 10 but the quantity of
    the paper's Fig. 4 F1 curve; use it with weight 0 (``LOG_REWARD_TERMS=true`` in recipes/cvo_grpo.sh)
    so that ms-swift logs it (``eval_rewards/GMNERF1Reward/mean`` on a validation set)."""

    def value(self, s: Score) -> Optional[float]:
        return s.f1

    def uses(self, s: Score) -> bool:
        return s.task != "grec"  # Table 2 scores GREC by N-acc / precision: no F1, row not needed


class GMNERFormatReward(ORM):
    """1.0 iff the completion has exactly the canonical think/answer shape (`format_ok`)."""

    def __call__(self, completions, **kwargs) -> List[float]:
        from ..core.parser import format_ok
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
