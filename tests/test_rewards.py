"""The CVO reward terms (Sec. 4.2.1 Eq. 6-10, App. D.1-D.2 Eq. 13-18), hand-computed and as properties."""
from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mcr_swift.core.rewards import (TERMS, count_reward, gmner_reward, match_entities, normalize_weights,
                               reward_terms, span_f1)
from mcr_swift.core.entities import ENTITY_TYPES, Entity

ONES = {t: 1.0 for t in TERMS}


# --------------------------------------------------------------------------- Eq. 13-15
@pytest.mark.parametrize("p,q,expected", [
    # Eq. 15 first branch: p = q -> 1
    (0, 0, 1.0), (1, 1, 1.0), (7, 7, 1.0),
    # second branch p > q > 0: 1 - (p - q) * w_o(q); w_o(q) = 0.4 for 1 <= q <= 2 (Eq. 13)
    (2, 1, 0.6),    # 1 - 1 * 0.4
    (4, 2, 0.2),    # 1 - 2 * 0.4
    (3, 2, 0.6),    # 1 - 1 * 0.4
    (4, 1, 0.0),    # 1 - 3 * 0.4 = -0.2 -> max(0, .) = 0
    # w_o(q) = 0.2 for 3 <= q <= 4
    (5, 3, 0.6),    # 1 - 2 * 0.2
    (5, 4, 0.8),    # 1 - 1 * 0.2
    (10, 4, 0.0),   # 1 - 6 * 0.2 = -0.2 -> 0
    # w_o(q) = 0.1 for q >= 5
    (6, 5, 0.9),    # 1 - 1 * 0.1
    (7, 5, 0.8),    # 1 - 2 * 0.1
    (20, 5, 0.0),   # 1 - 15 * 0.1 = -0.5 -> 0
    # third branch 0 < p < q: 1 - (q - p) * w_u(p); w_u(p) = 0.5 for 0 <= p <= 2 (Eq. 14)
    (1, 2, 0.5),    # 1 - 1 * 0.5
    (2, 3, 0.5),    # 1 - 1 * 0.5
    (1, 3, 0.0),    # 1 - 2 * 0.5 = 0
    (2, 5, 0.0),    # 1 - 3 * 0.5 = -0.5 -> 0
    # w_u(p) = 0.3 for 3 <= p <= 4
    (3, 4, 0.7),    # 1 - 1 * 0.3
    (4, 6, 0.4),    # 1 - 2 * 0.3
    (3, 8, 0.0),    # 1 - 5 * 0.3 = -0.5 -> 0
    # w_u(p) = 0.2 for p >= 5
    (5, 7, 0.6),    # 1 - 2 * 0.2
    (6, 8, 0.6),    # 1 - 2 * 0.2 (indexed by p = 6, not by q)
    (5, 12, 0.0),   # 1 - 7 * 0.2 = -0.4 -> 0
    # "otherwise": p > 0 = q and p = 0 < q (w_u(0) = 0.5 is never used: 0 < p is required)
    (3, 0, 0.0), (1, 0, 0.0), (0, 1, 0.0), (0, 5, 0.0),
])
def test_count_reward_every_branch(p, q, expected):
    assert count_reward(p, q) == pytest.approx(expected, abs=1e-12)


def test_count_reward_w_u_is_indexed_by_p_and_w_o_by_q():
    # p=2, q=6: w_u(2) = 0.5 -> 1 - 4*0.5 = -1 -> 0; if it were indexed by q (0.2): 1 - 0.8 = 0.2
    assert count_reward(2, 6) == 0.0
    # p=8, q=2: w_o(2) = 0.4 -> 1 - 6*0.4 < 0 -> 0; indexed by p (0.1) it would be 0.4
    assert count_reward(8, 2) == 0.0
    # p=4, q=3: w_o(3) = 0.2 -> 0.8 (indexed by p=4 it would also be 0.2: check q=5 side instead)
    assert count_reward(9, 5) == pytest.approx(0.6)  # w_o(5) = 0.1: 1 - 4*0.1


@pytest.mark.parametrize("p,q,literal,true_count", [
    (1, 3, 0.0, 0.4),    # literal: 1 - 2 w_u(1) = 1 - 2*0.5; true count: 1 - 2 w_u(3) = 1 - 2*0.3
    (0, 1, 0.0, 0.5),    # literal: p = 0 is "otherwise"; true count: 0 <= p < q, 1 - 1 w_u(1)
    (0, 5, 0.0, 0.0),    # 1 - 5 w_u(5) = 1 - 5*0.2 = 0
    (4, 7, 0.1, 0.4),    # literal 1 - 3 w_u(4) = 1 - 0.9; true count 1 - 3 w_u(7) = 1 - 0.6
    (2, 2, 1.0, 1.0), (5, 3, 0.6, 0.6), (3, 0, 0.0, 0.0), (0, 0, 1.0, 1.0)])  # other branches agree
def test_count_reward_two_readings_of_eq14(p, q, literal, true_count):
    """App. D.1: Eq. 14 indexes w_u by p (default, literal); the text says the penalty "is scaled by
    the true count" (q), and w_u's domain 0 <= p suggests p = 0 belongs to the under-recall branch."""
    assert count_reward(p, q) == pytest.approx(literal, abs=1e-12)
    assert count_reward(p, q, "literal") == pytest.approx(literal, abs=1e-12)
    assert count_reward(p, q, "true_count") == pytest.approx(true_count, abs=1e-12)
    with pytest.raises(ValueError, match="count reading"):
        count_reward(p, q, "q")


def test_count_reading_reaches_the_reward_terms():
    from mcr_swift.core.entities import Entity
    gold = [Entity("A", "PER"), Entity("B", "ORG"), Entity("C", "LOC")]
    assert reward_terms([Entity("A", "PER")], gold)["count"] == 0.0
    assert reward_terms([Entity("A", "PER")], gold, count_reading="true_count")["count"] == pytest.approx(0.4)
    assert reward_terms([], gold[:1], count_reading="true_count")["count"] == pytest.approx(0.5)


@pytest.mark.parametrize("p,q", [(-1, 0), (0, -2), (1.5, 1), (True, 1)])
def test_count_reward_rejects_bad_counts(p, q):
    with pytest.raises(ValueError):
        count_reward(p, q)


# --------------------------------------------------------------------------- Eq. 16-17
def test_span_f1_hand_computed():
    # w = 1 ("Durant"), n = 2, m = 1: P = 1/2 ... pred "Kevin Durant" vs gold "Durant": P = 1/2, R = 1
    assert span_f1("Kevin Durant", "Durant") == pytest.approx(2 / 3)
    # pred "Durant" vs gold "Kevin Durant": P = 1/1, R = 1/2, F = 2 * 1 * 0.5 / 1.5 = 2/3
    assert span_f1("Durant", "Kevin Durant") == pytest.approx(2 / 3)
    assert span_f1("Kevin Durant", "Kevin Durant") == 1.0
    assert span_f1("Kevin Durant", "LeBron James") == 0.0      # disjoint
    assert span_f1("", "Durant") == 0.0 and span_f1("  ", "  ") == 0.0
    # case-sensitive exact tokens
    assert span_f1("nba", "NBA") == 0.0
    # extra whitespace does not matter (tokens are the whitespace split)
    assert span_f1("  Kevin   Durant ", "Kevin Durant") == 1.0


def test_span_f1_uses_longest_contiguous_run_not_subsequence():
    # pred "A B C D" vs gold "A X C D": common subsequence A,C,D has 3 tokens, but the longest
    # contiguous run is "C D": w = 2, P = 2/4, R = 2/4, F = 0.5 (a subsequence LCS would give 0.75)
    assert span_f1("A B C D", "A X C D") == pytest.approx(0.5)
    # "New York Knicks" vs "York City New York": runs "New York" (2): P = 2/3, R = 2/4 -> F = 4/7
    assert span_f1("New York Knicks", "York City New York") == pytest.approx(2 * 2 / (3 + 4))


# --------------------------------------------------------------------------- matching
def test_hungarian_beats_greedy():
    # F = [[1, 2/3], [2/3, 0]]: greedy takes the 1.0 first (p0-g0) and then p1-g1 has F = 0 (not
    # matched): sum 1.0, k = 1. The Hungarian assignment p0-g1 + p1-g0 has sum 4/3 > 1.
    pred = [Entity("Kevin Durant", "PER"), Entity("Durant", "PER")]
    gold = [Entity("Kevin Durant", "PER"), Entity("Kevin", "PER")]
    pairs = match_entities(pred, gold)
    assert [(i, j) for i, j, _ in pairs] == [(0, 1), (1, 0)]
    hungarian_sum = sum(f for _, _, f in pairs)
    greedy_sum = 1.0 + 0.0
    assert hungarian_sum == pytest.approx(4 / 3) and greedy_sum < hungarian_sum
    terms = reward_terms(pred, gold)
    assert terms["span"] == pytest.approx(2 / 3)            # (2/3 + 2/3) / k, k = 2
    assert terms["count"] == terms["type"] == terms["iou"] == terms["entail"] == 1.0


def test_zero_f1_pairs_are_not_matched():
    pred = [Entity("Kevin Durant", "PER"), Entity("Paris", "LOC")]
    gold = [Entity("Kevin Durant", "PER"), Entity("London", "LOC")]
    assert [(i, j) for i, j, _ in match_entities(pred, gold)] == [(0, 0)]
    t = reward_terms(pred, gold)
    assert t["span"] == 1.0 and t["type"] == 1.0        # k = 1: only the matched pair counts


def test_order_does_not_matter_even_with_duplicate_texts():
    a = Entity("Jordan", "PER", (0, 0, 10, 10))
    b = Entity("Jordan", "LOC")
    # 2 x 2, every F = 1: the solver's tie is broken by type/location agreement
    assert reward_terms([b, a], [a, b]) == ONES
    assert reward_terms([a, b], [a, b]) == ONES
    # a star (two preds compete for one gold), F tied: the agreeing pred is matched
    for pred in ([b, a], [a, b]):
        t = reward_terms(pred, [a])
        assert t == {"count": pytest.approx(0.6), "span": 1.0, "type": 1.0, "iou": 1.0, "entail": 1.0}


# --------------------------------------------------------------------------- Eq. 7-9
def test_type_and_entailment_terms():
    gold = [Entity("A", "PER", (0, 0, 4, 4)), Entity("B", "ORG"), Entity("C", "LOC")]
    pred = [Entity("A", "ORG", (0, 0, 4, 4)), Entity("B", "ORG", (0, 0, 1, 1)), Entity("C", "LOC")]
    t = reward_terms(pred, gold)
    assert t["type"] == pytest.approx(2 / 3)        # A wrong, B and C right
    assert t["entail"] == pytest.approx(2 / 3)      # B predicted located, gold is None
    assert t["iou"] == pytest.approx((1 + 0 + 1) / 3)  # A: IoU 1; B: one unlocated -> 0; C: both None -> 1


def test_iou_sigma_mapping():
    gold = [Entity("A", "PER", (0, 0, 4, 1))]
    # pred (0,0,3,1): inter 3, union 4 -> IoU 0.75; (0.75 - 0.5) / (1 - 0.5) = 0.5
    assert reward_terms([Entity("A", "PER", (0, 0, 3, 1))], gold)["iou"] == pytest.approx(0.5)
    # IoU 0.25 < sigma -> 0
    assert reward_terms([Entity("A", "PER", (0, 0, 1, 1))], gold)["iou"] == 0.0
    # sigma 0: the IoU itself; sigma 0.25: (0.75 - 0.25) / 0.75 = 2/3
    assert reward_terms([Entity("A", "PER", (0, 0, 3, 1))], gold, sigma=0.0)["iou"] == pytest.approx(0.75)
    assert reward_terms([Entity("A", "PER", (0, 0, 3, 1))], gold, sigma=0.25)["iou"] == pytest.approx(2 / 3)
    for bad in (1.0, -0.1, float("nan"), "x"):
        with pytest.raises(ValueError):
            reward_terms([], [], sigma=bad)


def test_multi_box_gold_uses_best_iou():
    gold = [Entity("A", "PER", ((0, 0, 10, 10), (100, 100, 200, 200)))]
    assert reward_terms([Entity("A", "PER", (100, 100, 200, 200))], gold)["iou"] == 1.0
    # vs the first box: inter 50, union 100 -> IoU 0.5; sigma 0.25 -> (0.5 - 0.25) / 0.75 = 1/3
    assert reward_terms([Entity("A", "PER", (0, 0, 10, 5))], gold, sigma=0.25)["iou"] == pytest.approx(1 / 3)


def test_both_unlocated_scores_one_and_one_unlocated_zero():
    assert reward_terms([Entity("A", "PER")], [Entity("A", "PER")])["iou"] == 1.0
    t = reward_terms([Entity("A", "PER")], [Entity("A", "PER", (0, 0, 1, 1))])
    assert t["iou"] == 0.0 and t["entail"] == 0.0
    t = reward_terms([Entity("A", "PER", (0, 0, 1, 1))], [Entity("A", "PER")])
    assert t["iou"] == 0.0 and t["entail"] == 0.0


# --------------------------------------------------------------------------- conventions
def test_empty_conventions():
    assert reward_terms([], []) == ONES                                   # p = q = 0
    assert gmner_reward([], []) == 1.0
    zero = {t: 0.0 for t in TERMS}
    assert reward_terms([], [Entity("A", "PER")]) == zero                 # p = 0 < q
    assert reward_terms([Entity("A", "PER")], []) == zero                 # p > 0 = q
    # p = q = 1 but nothing matches: count 1, the rest 0
    assert reward_terms([Entity("B", "PER")], [Entity("A", "PER")]) == {**zero, "count": 1.0}
    assert gmner_reward([Entity("B", "PER")], [Entity("A", "PER")]) == pytest.approx(0.2)


# --------------------------------------------------------------------------- Eq. 10 and weights
def test_gmner_reward_weighted_sum():
    pred = [Entity("Kevin Durant", "PER"), Entity("Durant", "PER")]
    gold = [Entity("Kevin Durant", "PER"), Entity("Kevin", "PER")]
    # terms: count 1, span 2/3, type 1, iou 1, entail 1 -> 0.2 * (4 + 2/3)
    assert gmner_reward(pred, gold) == pytest.approx(0.2 * (4 + 2 / 3))
    assert gmner_reward(pred, gold, weights={"span": 1.0}) == pytest.approx(2 / 3)
    assert gmner_reward(pred, gold, weights=[0, 0.5, 0, 0, 0.5]) == pytest.approx(0.5 * 2 / 3 + 0.5)
    assert gmner_reward(pred, gold, weights=(1, 1, 1, 1, 1)) == pytest.approx(4 + 2 / 3)


@pytest.mark.parametrize("weights,msg", [
    ([0.2] * 4, "5 values"),
    ([0.2] * 6, "5 values"),
    ({"count": 0.5, "bogus": 0.5}, "unknown reward term"),
    ([0.2, -0.1, 0.2, 0.2, 0.2], "'span' is negative"),
    ([0.2, 0.2, float("nan"), 0.2, 0.2], "'type' is not finite"),
    ([0.2, 0.2, 0.2, float("inf"), 0.2], "'iou' is not finite"),
    ([0.2, 0.2, 0.2, 0.2, "x"], "'entail' is not a number"),
    ([0, 0, 0, 0, 0], "all reward weights are 0"),
    ("0.2,0.2", "string"),
    (5, "mapping or a sequence"),
])
def test_weights_validation(weights, msg):
    with pytest.raises(ValueError, match=msg):
        normalize_weights(weights)
    with pytest.raises(ValueError):
        gmner_reward([], [], weights=weights)


def test_default_weights():
    assert normalize_weights(None) == (0.2,) * 5
    assert normalize_weights({"count": 1}) == (1.0, 0.0, 0.0, 0.0, 0.0)
    assert normalize_weights(["0.1", 0.2, 0.3, 0.2, 0.2]) == (0.1, 0.2, 0.3, 0.2, 0.2)


# --------------------------------------------------------------------------- properties
_coord = st.floats(allow_nan=True, allow_infinity=True, width=64)
_type = st.one_of(st.sampled_from(ENTITY_TYPES), st.text(max_size=6))


def _raw_entity(text, etype, boxes):
    """An Entity holding arbitrary (even non-finite) boxes, bypassing the constructor's checks,
    as a defence test: the reward must stay in [0, 1] whatever it is handed."""
    e = object.__new__(Entity)
    object.__setattr__(e, "text", text)
    object.__setattr__(e, "type", etype)
    object.__setattr__(e, "boxes", tuple(tuple(b) for b in boxes))
    return e


_any_entity = st.builds(_raw_entity, st.text(max_size=20), _type,
                        st.lists(st.tuples(_coord, _coord, _coord, _coord), max_size=2))
_word = st.sampled_from(["Kevin", "Durant", "NBA", "New", "York", "Knicks", "Paris", "a", "A"])


@st.composite
def _valid_entity(draw):
    text = " ".join(draw(st.lists(st.one_of(_word, st.text(min_size=1, max_size=6).filter(
        lambda s: s.split() == [s])), min_size=1, max_size=4)))
    boxes = []
    for _ in range(draw(st.integers(0, 2))):
        x1 = draw(st.floats(-1e4, 1e4))
        y1 = draw(st.floats(-1e4, 1e4))
        boxes.append((x1, y1, x1 + draw(st.floats(1e-3, 1e4)), y1 + draw(st.floats(1e-3, 1e4))))
    return Entity(text, draw(_type), tuple(boxes))


@settings(max_examples=200, deadline=None)
@given(st.lists(_any_entity, max_size=8), st.lists(_any_entity, max_size=8),
       st.sampled_from([0.0, 0.3, 0.5, 0.9]))
def test_terms_are_finite_and_bounded(pred, gold, sigma):
    t = reward_terms(pred, gold, sigma)
    assert set(t) == set(TERMS)
    for v in t.values():
        assert isinstance(v, float) and math.isfinite(v) and 0.0 <= v <= 1.0
    r = gmner_reward(pred, gold, sigma=sigma)
    assert math.isfinite(r) and 0.0 <= r <= 1.0


@settings(max_examples=200, deadline=None)
@given(st.lists(_valid_entity(), max_size=8))
def test_gold_against_itself_is_perfect(gold):
    pred = [Entity(e.text, e.type, e.boxes[:1]) for e in gold]  # a prediction carries one box
    assert reward_terms(pred, gold) == ONES
    assert reward_terms(list(reversed(pred)), gold) == ONES
    assert gmner_reward(gold, gold) == 1.0


_small_text = st.lists(st.sampled_from(["A", "B", "C", "D"]), min_size=1, max_size=3).map(" ".join)


@settings(max_examples=200, deadline=None)
@given(st.lists(_small_text, max_size=7), st.lists(_small_text, max_size=7))
def test_matching_is_a_maximum_sum_assignment(pred_texts, gold_texts):
    """The component shortcuts (isolated edges, stars) give the same optimum as a full solve."""
    import numpy as np
    from scipy.optimize import linear_sum_assignment
    pred = [Entity(t, "PER") for t in pred_texts]
    gold = [Entity(t, "PER") for t in gold_texts]
    pairs = match_entities(pred, gold)
    F = [[span_f1(a, b) for b in gold_texts] for a in pred_texts]
    best = 0.0
    if pred and gold:
        r, c = linear_sum_assignment(np.array(F), maximize=True)
        best = sum(F[i][j] for i, j in zip(r, c))
    assert sum(f for _, _, f in pairs) == pytest.approx(best)
    assert len({i for i, _, _ in pairs}) == len({j for _, j, _ in pairs}) == len(pairs)
    assert all(f > 0 and f == F[i][j] for i, j, f in pairs)


# --------------------------------------------------------------------------- no answer; unmatched readings
def test_no_parseable_answer_scores_zero_on_every_term():
    """pred=None (no parseable answer) earns 0 everywhere, also where "nothing predicted, nothing
    to find" would score 1; an empty prediction there still scores 1."""
    zeros = {t: 0.0 for t in TERMS}
    assert reward_terms(None, []) == zeros
    assert reward_terms(None, [Entity("NBA", "ORG")]) == zeros
    assert gmner_reward(None, []) == 0.0 and gmner_reward([], []) == 1.0
    for mode in ("drop", "zero"):
        assert reward_terms(None, [], unmatched=mode) == zeros
        assert reward_terms([], [], unmatched=mode) == ONES


def test_unmatched_readings_by_hand():
    """Sec. 4.2.1 / App. D.2 read two ways: ``drop`` averages over the k pairs with F > 0, ``zero``
    over the max(p, q) pairs of the zero-padded square assignment."""
    kd = Entity("Kevin Durant", "PER", (0, 0, 10, 10))
    pred = [Entity("Kevin Durant", "PER", (0, 0, 10, 7.5)),   # F 1, IoU 75/100 -> (0.75-0.5)/0.5 = 0.5
            Entity("Lakers", "ORG"),                          # F 0 with everything
            Entity("xyz", "PER")]                             # F 0 with everything
    gold = [kd, Entity("NBA", "ORG")]
    # p = 3 > q = 2: R_c = 1 - (3 - 2) * w_o(2) = 1 - 0.4 = 0.6 (Eq. 13, 15) in both readings
    drop = reward_terms(pred, gold)
    assert drop == pytest.approx({"count": 0.6, "span": 1.0, "type": 1.0, "iou": 0.5, "entail": 1.0})
    assert reward_terms(pred, gold, unmatched="drop") == drop
    zero = reward_terms(pred, gold, unmatched="zero")          # k = max(3, 2) = 3
    assert zero == pytest.approx({"count": 0.6, "span": 1 / 3, "type": 1 / 3, "iou": 0.5 / 3, "entail": 1 / 3})
    # Eq. 10 with 0.2 each: 0.2 * (0.6 + 1 + 1 + 0.5 + 1) = 0.82 vs 0.2 * (0.6 + (1 + 1 + 0.5 + 1) / 3)
    assert gmner_reward(pred, gold) == pytest.approx(0.82)
    assert gmner_reward(pred, gold, unmatched="zero") == pytest.approx(0.2 * (0.6 + 3.5 / 3))

    # p = 1 < q = 2, partial span: "Durant" vs "Kevin Durant": w 1, F = 2*1/(1+2) = 2/3
    pred = [Entity("Durant", "PER")]
    gold = [Entity("Kevin Durant", "PER"), Entity("NBA", "ORG")]
    # R_c = 1 - (2 - 1) * w_u(1) = 0.5; both unlocated: R_u = R_e = 1 per pair
    assert reward_terms(pred, gold) == pytest.approx(
        {"count": 0.5, "span": 2 / 3, "type": 1.0, "iou": 1.0, "entail": 1.0})
    assert reward_terms(pred, gold, unmatched="zero") == pytest.approx(
        {"count": 0.5, "span": 1 / 3, "type": 0.5, "iou": 0.5, "entail": 0.5})
    # a complete, right answer scores the same in both readings
    assert reward_terms(gold, gold, unmatched="zero") == ONES == reward_terms(gold, gold)
    # no matched pair at all: 0 on the pair terms in both readings
    for mode in ("drop", "zero"):
        assert reward_terms([Entity("Paris", "LOC")], gold, unmatched=mode) == pytest.approx(
            {"count": 0.5, "span": 0.0, "type": 0.0, "iou": 0.0, "entail": 0.0})


def test_unmatched_mode_is_validated():
    with pytest.raises(ValueError, match="unmatched must be one of"):
        reward_terms([], [], unmatched="ignore")
    assert reward_terms([], [], unmatched=" ZERO ") == ONES
