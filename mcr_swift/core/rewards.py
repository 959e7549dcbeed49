"""The constraint-guided verifiable rewards of CVO (paper Sec. 4.2.1, Eq. 6-10; App. D.1-D.2, Eq. 13-18).

Plain functions over lists of `Entity` (no ms-swift needed). ``pred`` are the predicted triples
(at most one box each; only the first box is used), ``gold`` the gold triples (any number of boxes).
Both must be in the same coordinate space: these functions do no conversion (the ms-swift rewards in
`mcr_swift.plugin.orms` map spaces before calling them). p = len(pred), q = len(gold).

Terms (all in [0, 1], never NaN):

* ``count``  R_c, Eq. 13-15 (App. D.1), `count_reward`.
* ``span``   R_s, Eq. 6 / 18: mean token-level F1 (Eq. 16-17, `span_f1`) over the matched pairs.
* ``type``   R_t, Eq. 7: share of matched pairs whose types are equal (compared as given, exact
  strings; `mcr_swift.core.parser` already normalises predicted types).
* ``iou``    R_u, Eq. 8: mean over matched pairs of max(0, (IoU - sigma) / (1 - sigma)).
* ``entail`` R_e, Eq. 9: share of matched pairs with 1{pred located} == 1{gold located}.

R = sum_j lambda_j R_j (Eq. 10), `gmner_reward`, lambda = 0.2 each by default so that R is in [0, 1]
(App. D.3's filter thresholds, max >= 0.8 and median in [0.08, 0.6], assume that range).

Matching (App. D.2): the F matrix F_ij = span_f1(pred_i, gold_j) is solved for a maximum-sum
one-to-one assignment with the Hungarian algorithm (``scipy.optimize.linear_sum_assignment``);
assigned pairs with F_ij = 0 are not matched; k = number of matched pairs.

Conventions where the paper is silent (each decided here once):

* Tokens: whitespace split, **case-sensitive** exact tokens (spans are copied from the sentence, so
  "nba" for "NBA" is a different token). A text with no tokens has F = 0 with everything.
* No parseable answer (``pred=None``; `mcr_swift.core.parser.ParseResult.answered` is False): every term
  is 0, R_c included, on every post, also on a post with no gold entity. Junk ("I refuse.", "", a
  page of x's) must never earn more than trying; a well-formed empty answer (``[]``, ``None``, ...)
  is ``pred=[]`` and earns what an empty prediction earns.
* p = q = 0: every term is 1 (nothing to find and nothing predicted is a perfect answer; Eq. 15
  already gives R_c = 1 for p = q).
* Otherwise, when no pair is matched (k = 0, e.g. p = 0 < q, or all F = 0): R_s = R_t = R_u = R_e = 0.
* Unmatched entities (``unmatched=``, env ``MCR_UNMATCHED`` in the ms-swift rewards). Eq. 6-9 average
  "over the k matched pairs" (Sec. 4.2.1) and App. D.2 takes the pairs of the Hungarian assignment,
  which can be read two ways:

  - ``drop`` (default): k = the number of assigned pairs with F > 0; assigned pairs with F = 0 and
    entities left without a partner leave the averages (R_c alone punishes a wrong count).
  - ``zero``: the Hungarian algorithm pads the p x q F matrix to a square max(p, q) x max(p, q) one
    (dummy rows/columns of F = 0), so every predicted and every gold entity belongs to one of
    k = max(p, q) assigned pairs; a pair with F = 0 (or a dummy partner) scores 0 on all four terms.
    So each of R_s, R_t, R_u, R_e = (sum over the F > 0 pairs) / max(p, q).
* R_u for one matched pair: both unlocated -> 1; exactly one unlocated -> 0; both located -> the
  Eq. 8 mapping of the IoU between the predicted box and the **best** of the gold entity's boxes
  (Twitter-GMNER has entities with several boxes). sigma defaults to 0.5, must be in [0, 1).
* Ties: the assignment maximises sum F; among assignments with the same maximal sum F, the one whose
  pairs also agree on type, location and IoU is chosen (a secondary objective weighted 1e-12: F sums
  are multiples of 1/lcm(n+m), so for spans of up to 10 tokens two distinct sums differ by at least
  1/lcm(1..20) ~ 4e-9, far above 3e-12 per pair). So the reward does not depend on the order the
  entities are written in (App. C.2: MRSI styles change the order), e.g. when the same text occurs
  twice with different types.
* Degenerate or non-finite boxes (which the parser never produces) have IoU 0 with everything.

Rows of other tasks (`TASK_TERMS`): MNER-MI uses R_c, R_s, R_t; GREC uses R_u, R_e of its one
expression (`grec_reward_terms`); Eq. 10's lambdas are rescaled per task (`task_weights`,
`task_reward`). One completion against one dataset row (gold mapping, config, F1): `mcr_swift.core.scoring`.
"""
from __future__ import annotations

import math
from typing import Dict, Mapping, Optional, Sequence, Tuple, Union

from .entities import Entity

__all__ = ["TERMS", "DEFAULT_WEIGHTS", "DEFAULT_SIGMA", "UNMATCHED_MODES", "DEFAULT_UNMATCHED", "check_unmatched",
           "check_sigma", "COUNT_READINGS", "DEFAULT_COUNT_READING", "check_count_reading",
           "count_reward", "span_f1", "match_entities",
           "reward_terms", "gmner_reward", "normalize_weights", "weighted_sum"]

#: The reward terms, in the order of Eq. 10 (lambda_1 .. lambda_5).
TERMS: Tuple[str, ...] = ("count", "span", "type", "iou", "entail")
DEFAULT_WEIGHTS: Tuple[float, ...] = (0.2, 0.2, 0.2, 0.2, 0.2)
DEFAULT_SIGMA = 0.5
#: Readings of "the k matched pairs" (module docstring); the first is the default.
UNMATCHED_MODES: Tuple[str, ...] = ("drop", "zero")
DEFAULT_UNMATCHED = "drop"
#: The two readings of App. D.1's under-recall penalty (docs/decisions.md): ``literal`` is Eq. 14-15 as
#: printed (w_u indexed by the predicted count p; p = 0 < q falls to "otherwise", R_c = 0);
#: ``true_count`` follows the sentence "the penalty is scaled by the true count" (w_u indexed by the gold
#: count q, and the under-recall branch covers 0 <= p < q, as w_u's own domain 0 <= p suggests).
COUNT_READINGS: Tuple[str, ...] = ("literal", "true_count")
DEFAULT_COUNT_READING = "literal"
ZEROS: Dict[str, float] = {t: 0.0 for t in ("count", "span", "type", "iou", "entail")}
#: Weight of the tie-breaking secondary objective in the assignment (see the module docstring).
_TIE_EPS = 1e-12

Weights = Union[None, Mapping[str, float], Sequence[float]]


# --------------------------------------------------------------------------- Eq. 13-15
def _w_o(q: int) -> float:
    """Over-recall penalty weight, indexed by the gold count q (Eq. 13)."""
    if 1 <= q <= 2:
        return 0.4
    if 3 <= q <= 4:
        return 0.2
    if q >= 5:
        return 0.1
    return 0.0  # "otherwise" (q <= 0)


def _w_u(p: int) -> float:
    """Under-recall penalty weight, indexed by the predicted count p (Eq. 14)."""
    if 0 <= p <= 2:
        return 0.5
    if 3 <= p <= 4:
        return 0.3
    if p >= 5:
        return 0.2
    return 0.0  # "otherwise" (p < 0)


def check_count_reading(reading: str) -> str:
    """``reading`` lower-cased if it is one of `COUNT_READINGS`, else ValueError."""
    r = str(reading).strip().lower()
    if r not in COUNT_READINGS:
        raise ValueError(f"count reading must be one of {list(COUNT_READINGS)}, got {reading!r}")
    return r


def count_reward(p: int, q: int, reading: str = DEFAULT_COUNT_READING) -> float:
    """R_c (Eq. 15) for p predicted and q gold entities; ``reading`` (`COUNT_READINGS`) picks how the
    under-recall branch reads App. D.1. E.g. (p, q) = (1, 3): literal 1 - 2 w_u(1) = 0.0, true_count
    1 - 2 w_u(3) = 0.4; (0, 1): literal 0.0 ("otherwise"), true_count 1 - 1 w_u(1) = 0.5."""
    if isinstance(p, bool) or isinstance(q, bool) or int(p) != p or int(q) != q or p < 0 or q < 0:
        raise ValueError(f"entity counts must be non-negative integers, got p={p!r}, q={q!r}")
    p, q = int(p), int(q)
    literal = check_count_reading(reading) == "literal"
    if p == q:                                       # Eq. 15, first branch
        return 1.0
    if p > q > 0:                                    # Eq. 15, second branch (over-recall)
        return max(0.0, 1.0 - (p - q) * _w_o(q))
    if literal and 0 < p < q:                        # Eq. 15, third branch (under-recall), w_u(p) of Eq. 14
        return max(0.0, 1.0 - (q - p) * _w_u(p))
    if not literal and 0 <= p < q:                   # the "scaled by the true count" reading: w_u(q)
        return max(0.0, 1.0 - (q - p) * _w_u(q))
    return 0.0                                       # Eq. 15, otherwise: p > 0 = q (literal: or p = 0 < q)


# --------------------------------------------------------------------------- Eq. 16-17
def _longest_run(a: Sequence[str], b: Sequence[str]) -> int:
    """Length w of the longest contiguous run of tokens shared by a and b (App. D.2)."""
    if len(a) > len(b):
        a, b = b, a
    best = 0
    m = len(b)
    prev = [0] * (m + 1)
    for x in a:
        cur = [0] * (m + 1)
        for j in range(m):
            if b[j] == x:
                v = prev[j] + 1
                cur[j + 1] = v
                if v > best:
                    best = v
        prev = cur
    return best


def _f1_tokens(a: Tuple[str, ...], b: Tuple[str, ...]) -> float:
    n, m = len(a), len(b)
    if n == 0 or m == 0:
        return 0.0
    if a == b:
        return 1.0
    w = _longest_run(a, b)
    if w == 0:
        return 0.0
    # P = w/n, R = w/m (Eq. 16); F = 2PR/(P+R) (Eq. 17) = 2w/(n+m).
    return 2.0 * w / (n + m)


def span_f1(pred_text: str, gold_text: str) -> float:
    """Token-level F1 of two spans from their longest contiguous token overlap (Eq. 16-17).

    Tokens are the whitespace-split words, compared case-sensitively. "Kevin Durant" vs "Durant":
    w = 1, P = 1/1, R = 1/2, F = 2/3.
    """
    return _f1_tokens(tuple(str(pred_text).split()), tuple(str(gold_text).split()))


# --------------------------------------------------------------------------- matching
def _iou_boxes(a, b) -> float:
    """IoU of two (x1, y1, x2, y2) boxes (Eq. 22). `Entity` boxes are always finite; a degenerate
    box has IoU 0 (same values as `mcr_swift.core.coords.iou`, without its per-call finiteness checks)."""
    iw = (a[2] if a[2] < b[2] else b[2]) - (a[0] if a[0] > b[0] else b[0])
    if iw <= 0:
        return 0.0
    ih = (a[3] if a[3] < b[3] else b[3]) - (a[1] if a[1] > b[1] else b[1])
    if ih <= 0:
        return 0.0
    inter = iw * ih
    union = max(0.0, a[2] - a[0]) * max(0.0, a[3] - a[1]) + max(0.0, b[2] - b[0]) * max(0.0, b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def _grounding(pred: Entity, gold: Entity, sigma: float) -> float:
    """Eq. 8 summand for one matched pair (conventions in the module docstring)."""
    pb = pred.boxes
    gb = gold.boxes
    if not pb:
        return 0.0 if gb else 1.0
    if not gb:
        return 0.0
    box = pb[0]
    best = 0.0
    for g in gb:
        v = _iou_boxes(box, g)
        if v > best:
            best = v
    if not best > sigma:  # also catches a NaN from non-finite boxes built around `Entity`
        return 0.0
    return min(1.0, (best - sigma) / (1.0 - sigma))


def _pair_agreement(pred: Entity, gold: Entity, sigma: float) -> float:
    """Secondary objective of the assignment: type, entailment and grounding agreement (0..3)."""
    a = 1.0 if pred.type == gold.type else 0.0
    if bool(pred.boxes) != bool(gold.boxes):
        return a
    return a + 1.0 + (1.0 if not pred.boxes else _grounding(pred, gold, sigma))


_TOKENS: Dict[str, Tuple[Tuple[str, ...], frozenset]] = {}


def _tokens(text: str) -> Tuple[Tuple[str, ...], frozenset]:
    """(tokens, token set) of a span, memoised (the same gold texts recur across rollouts)."""
    r = _TOKENS.get(text)
    if r is None:
        if len(_TOKENS) > 65536:
            _TOKENS.clear()
        t = tuple(text.split())
        r = _TOKENS[text] = (t, frozenset(t))
    return r


def match_entities(pred: Sequence[Entity], gold: Sequence[Entity], sigma: float = DEFAULT_SIGMA
                   ) -> list:
    """The matched pairs ``[(i, j, F_ij), ...]`` (App. D.2): maximum-sum one-to-one assignment on F,
    pairs with F = 0 removed. Sorted by i.

    The bipartite graph of positive F entries falls into connected components whose optima are
    independent: an isolated edge is always matched; a star (one pred or one gold with several
    candidates, none shared) is matched by its best edge; everything else goes to
    ``scipy.optimize.linear_sum_assignment``. Ties are broken as the module docstring says.
    """
    p, q = len(pred), len(gold)
    if p == 0 or q == 0:
        return []
    gtok = [_tokens(e.text) for e in gold]
    edges = []
    row_deg = [0] * p
    col_deg = [0] * q
    for i in range(p):
        a, aset = _tokens(pred[i].text)
        if not a:
            continue
        for j in range(q):
            b, bset = gtok[j]
            if a == b:
                f = 1.0
            elif aset.isdisjoint(bset):
                continue
            else:
                f = _f1_tokens(a, b)
                if f <= 0.0:
                    continue
            edges.append((i, j, f))
            row_deg[i] += 1
            col_deg[j] += 1
    if not edges:
        return []
    pairs = []
    rest = []
    for e in edges:
        i, j, f = e
        if row_deg[i] == 1 and col_deg[j] == 1:
            pairs.append(e)  # an isolated edge: always in the optimum
        else:
            rest.append(e)
    if rest:
        by_row: Dict[int, list] = {}
        by_col: Dict[int, list] = {}
        for e in rest:
            by_row.setdefault(e[0], []).append(e)
            by_col.setdefault(e[1], []).append(e)
        star_rows = [i for i, es in by_row.items() if all(col_deg[j] == 1 for _, j, _ in es)]
        star_cols = [j for j, es in by_col.items() if all(row_deg[i] == 1 for i, _, _ in es)]
        for i in star_rows:  # a star around pred i: its golds have no other candidate
            pairs.append(_best_edge(by_row[i], pred, gold, sigma))
        for j in star_cols:  # a star around gold j
            pairs.append(_best_edge(by_col[j], pred, gold, sigma))
        if star_rows or star_cols:
            sr, sc = set(star_rows), set(star_cols)
            general = [e for e in rest if e[0] not in sr and e[1] not in sc]
        else:
            general = rest
        if general:
            pairs.extend(_hungarian(general, pred, gold, sigma))
    pairs.sort()
    return pairs


def _best_edge(es, pred, gold, sigma):
    """The optimum of a star (one pred or one gold): its best edge by F, ties by agreement."""
    if len(es) == 1:
        return es[0]
    top = max(e[2] for e in es)
    tied = [e for e in es if e[2] == top]  # equal rationals 2w/(n+m) give identical floats
    if len(tied) == 1:
        return tied[0]
    return max(tied, key=lambda e: _pair_agreement(pred[e[0]], gold[e[1]], sigma))


def _hungarian(edges, pred, gold, sigma) -> list:
    """Maximum-sum assignment of the non-star part with scipy's Hungarian solver."""
    import numpy as np
    from scipy.optimize import linear_sum_assignment
    rows = sorted({i for i, _, _ in edges})
    cols = sorted({j for _, j, _ in edges})
    ri = {r: k for k, r in enumerate(rows)}
    ci = {c: k for k, c in enumerate(cols)}
    cost = np.zeros((len(rows), len(cols)))
    f_of = {}
    for i, j, f in edges:
        cost[ri[i], ci[j]] = f + _TIE_EPS * _pair_agreement(pred[i], gold[j], sigma)
        f_of[(i, j)] = f
    r_idx, c_idx = linear_sum_assignment(cost, maximize=True)
    out = []
    for a, b in zip(r_idx.tolist(), c_idx.tolist()):
        f = f_of.get((rows[a], cols[b]), 0.0)
        if f > 0.0:
            out.append((rows[a], cols[b], f))
    return out


# --------------------------------------------------------------------------- Eq. 6-9
def check_sigma(sigma: float) -> float:
    """``sigma`` as a float if it is in [0, 1) (Eq. 8 divides by 1 - sigma), else ValueError."""
    try:
        s = float(sigma)
    except (TypeError, ValueError):
        raise ValueError(f"sigma must be a number in [0, 1), got {sigma!r}") from None
    if not (0.0 <= s < 1.0):
        raise ValueError(f"sigma must be in [0, 1) (Eq. 8 divides by 1 - sigma), got {sigma!r}")
    return s


def check_unmatched(mode: str) -> str:
    """``mode`` lower-cased if it is one of `UNMATCHED_MODES`, else ValueError."""
    m = str(mode).strip().lower()
    if m not in UNMATCHED_MODES:
        raise ValueError(f"unmatched must be one of {list(UNMATCHED_MODES)}, got {mode!r}")
    return m


def reward_terms(pred: Optional[Sequence[Entity]], gold: Sequence[Entity], sigma: float = DEFAULT_SIGMA,
                 *, unmatched: str = DEFAULT_UNMATCHED, count_reading: str = DEFAULT_COUNT_READING
                 ) -> Dict[str, float]:
    """``{"count", "span", "type", "iou", "entail"}`` for one completion (Eq. 6-9, 15).

    ``pred=None``: the completion has no parseable answer, every term is 0 (module docstring).
    ``unmatched``: ``drop`` (default) or ``zero``, the two readings of "the k matched pairs";
    ``count_reading``: ``literal`` (default) or ``true_count``, the two readings of Eq. 14-15.
    """
    sigma = check_sigma(sigma)
    mode = check_unmatched(unmatched)
    if pred is None:                                          # junk earns nothing
        return dict(ZEROS)
    p, q = len(pred), len(gold)
    if p == 0 and q == 0:
        return {"count": 1.0, "span": 1.0, "type": 1.0, "iou": 1.0, "entail": 1.0}
    rc = count_reward(p, q, count_reading)
    pairs = match_entities(pred, gold, sigma)
    k = len(pairs)
    if k == 0:
        return {"count": rc, "span": 0.0, "type": 0.0, "iou": 0.0, "entail": 0.0}
    s = t = u = e = 0.0
    for i, j, f in pairs:
        a, g = pred[i], gold[j]
        s += f                                                # Eq. 6
        t += a.type == g.type                                 # Eq. 7
        u += _grounding(a, g, sigma)                          # Eq. 8
        e += bool(a.boxes) == bool(g.boxes)                   # Eq. 9
    if mode == "zero":  # the padded square assignment: max(p, q) pairs, the F = 0 ones score 0
        k = max(p, q)
    return {"count": rc, "span": min(1.0, s / k), "type": t / k, "iou": min(1.0, u / k),
            "entail": e / k}


# --------------------------------------------------------------------------- Eq. 10
def normalize_weights(weights: Weights = None) -> Tuple[float, ...]:
    """The 5 lambdas of Eq. 10 in `TERMS` order, validated.

    ``weights``: None (0.2 each), a mapping keyed by term name (missing terms weigh 0), or a sequence
    of 5 numbers in the order count, span, type, iou, entail. Weights must be finite and >= 0, and
    not all 0. Raises ValueError naming the problem.
    """
    if weights is None:
        return DEFAULT_WEIGHTS
    if isinstance(weights, Mapping):
        unknown = sorted(str(k) for k in weights if k not in TERMS)
        if unknown:
            raise ValueError(f"unknown reward term(s) {unknown} in weights; known: {list(TERMS)}")
        values = [weights.get(t, 0.0) for t in TERMS]
    elif isinstance(weights, (str, bytes)):
        raise ValueError(f"weights must be a mapping or a sequence of 5 numbers, got a string {weights!r}")
    else:
        try:
            values = list(weights)
        except TypeError:
            raise ValueError(f"weights must be a mapping or a sequence of 5 numbers, got {weights!r}") from None
        if len(values) != len(TERMS):
            raise ValueError(f"weights need {len(TERMS)} values ({', '.join(TERMS)}), got {len(values)}")
    out = []
    for name, v in zip(TERMS, values):
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            try:
                v = float(v)
            except (TypeError, ValueError):
                raise ValueError(f"weight of {name!r} is not a number: {v!r}") from None
        v = float(v)
        if not math.isfinite(v):
            raise ValueError(f"weight of {name!r} is not finite: {v!r}")
        if v < 0:
            raise ValueError(f"weight of {name!r} is negative: {v!r}")
        out.append(v)
    if not any(out):
        raise ValueError("all reward weights are 0: the reward would be constant")
    return tuple(out)


def weighted_sum(terms: Mapping[str, float], weights: Tuple[float, ...]) -> float:
    """sum_j lambda_j R_j (Eq. 10) for already validated ``weights``; within [0, sum lambda]."""
    total = math.fsum(w * terms[t] for t, w in zip(TERMS, weights))
    return min(max(total, 0.0), math.fsum(weights))


def gmner_reward(pred: Optional[Sequence[Entity]], gold: Sequence[Entity], weights: Weights = None,
                 sigma: float = DEFAULT_SIGMA, *, unmatched: str = DEFAULT_UNMATCHED,
                 count_reading: str = DEFAULT_COUNT_READING) -> float:
    """R = lambda_1 R_c + lambda_2 R_s + lambda_3 R_t + lambda_4 R_u + lambda_5 R_e (Eq. 10);
    ``pred=None`` (no parseable answer) gives 0."""
    w = normalize_weights(weights)
    return weighted_sum(reward_terms(pred, gold, sigma, unmatched=unmatched, count_reading=count_reading), w)


# --------------------------------------------------------------------------- per task (rows of mixed tasks)
#: The reward terms each row task uses: GMNER all five (Eq. 6-10); MNER-MI span and type only (it asks
#: for no location, Sec. 5.3); GREC the location only (`grec_reward_terms`).
TASK_TERMS: Dict[str, Tuple[str, ...]] = {"gmner": TERMS, "mner_mi": ("count", "span", "type"),
                                          "grec": ("iou", "entail")}


def task_weights(weights: Tuple[float, ...], task: str) -> Dict[str, float]:
    """The lambdas of Eq. 10 for ``task``: those of its terms (`TASK_TERMS`), rescaled to the total of
    all five (so every task's R lies in the [0, sum lambda] range App. D.3's thresholds assume); all 0
    when every term of the task weighs 0."""
    active = TASK_TERMS[task]
    if active == TERMS:
        return dict(zip(TERMS, weights))
    sub = {t: w for t, w in zip(TERMS, weights) if t in active}
    part = math.fsum(sub.values())
    if part == 0:
        return {t: 0.0 for t in active}
    total = math.fsum(weights)
    return {t: w * total / part for t, w in sub.items()}


def task_reward(terms: Mapping[str, float], weights: Tuple[float, ...], task: str) -> float:
    """R (Eq. 10) of one row of ``task`` with the task-rescaled lambdas (`task_weights`)."""
    if task == "gmner":
        return weighted_sum(terms, weights)
    w = task_weights(weights, task)
    return min(max(math.fsum(w[t] * terms[t] for t in w), 0.0), math.fsum(w.values()))


def grec_reward_terms(pred: Sequence[Entity], gold: Sequence[Entity], sigma: float = DEFAULT_SIGMA
                      ) -> Dict[str, float]:
    """R_u (Eq. 8) and R_e (Eq. 9) of a GREC answer against its one gold expression.

    The answer is reduced to its location: no box -> None, one box -> that box; it is compared with
    the gold location as one matched pair (both None -> R_u = 1; Eq. 8's IoU mapping otherwise).
    An answer with several boxes localises nothing (GREC counts a one-target sample right only with
    exactly one correct box): R_u = 0, and R_e = 1 iff the gold has a target. An answer of several
    entities localises nothing either (the answer names one expression; extra entities, located or
    not, would otherwise be free): R_u = 0, R_e = 1{the answer has a box} == 1{the gold has one}.
    """
    if len(gold) != 1:
        raise ValueError(f"a GREC row has exactly one gold expression, got {len(gold)}")
    g = gold[0]
    boxes = [e.box for e in pred if e.boxes]  # = data.grec.answer_boxes
    if len(boxes) > 1 or len(pred) > 1:
        return {"iou": 0.0, "entail": 1.0 if bool(boxes) == bool(g.boxes) else 0.0}
    terms = reward_terms([Entity(g.text, g.type, tuple(boxes))], [g], sigma)
    return {"iou": terms["iou"], "entail": terms["entail"]}
