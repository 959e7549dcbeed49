"""The paper's metrics (App. E.3, Eq. 19-31): hand-computed cases for every definition, properties
against a brute-force matcher, and the real Twitter-GMNER test split (gold as prediction, and a
seeded perturbation whose scores are derived by counting)."""
from __future__ import annotations

import itertools
import random
import time
from collections import Counter

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from mcr_swift.core.coords import best_iou, iou
from mcr_swift.core.metrics import (TASKS, _kuhn, _scipy_matching, gmner_metrics, location_correct, max_matching,
                               metrics_table, normalize_text, perturb, post_counts, prf)
from mcr_swift.core.entities import Entity

E = Entity


def counts(m, task):
    return m[task]["correct"], m[task]["predicted"], m[task]["gold"]


# =========================================================================== hand-computed cases
def test_prf_degenerate_ratios():
    assert prf(0, 0, 0) == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "correct": 0, "predicted": 0, "gold": 0}
    # 1 correct of 2 predicted, 1 gold: P = 1/2, R = 1, F1 = 2 * 1/2 * 1 / (3/2) = 2/3
    r = prf(1, 2, 1)
    assert r["precision"] == 0.5 and r["recall"] == 1.0 and r["f1"] == pytest.approx(2 / 3)
    assert prf(0, 3, 0)["precision"] == 0.0 and prf(0, 0, 3)["recall"] == 0.0


def test_perfect_prediction_of_one_post():
    gold = [E("Kevin Durant", "PER", (10, 20, 50, 80)), E("NBA", "ORG")]
    m = gmner_metrics([list(gold)], [gold], ["Kevin Durant joins the NBA"])
    for t in TASKS:
        assert m[t]["f1"] == 1.0
    assert counts(m, "gmner") == (2, 2, 2)
    assert counts(m, "n") == (1, 1, 1)  # only "NBA" is unlocated
    assert m["n_count"] == 0 and m["n_rate"] == 0.0


def test_multi_box_gold_second_box_counts():
    # The gold entity is shown twice; the prediction hits the 2nd box exactly (IoU 1) and the
    # first not at all (IoU 0): Eq. 21 with "any gold box" -> correct.
    gold = [E("Santa", "PER", ((0, 0, 10, 10), (100, 100, 110, 110)))]
    pred = [E("Santa", "PER", (100, 100, 110, 110))]
    m = gmner_metrics([pred], [gold])
    assert counts(m, "gmner") == (1, 1, 1) and counts(m, "eeg") == (1, 1, 1)
    # Missing both boxes: IoU 0 with each -> GMNER and EEG wrong, MNER right.
    m = gmner_metrics([[E("Santa", "PER", (50, 50, 60, 60))]], [gold])
    assert counts(m, "gmner") == (0, 1, 1) and counts(m, "eeg") == (0, 1, 1) and counts(m, "mner") == (1, 1, 1)


def test_prediction_uses_only_its_first_box():
    gold = [E("Santa", "PER", (0, 0, 10, 10))]
    # first box misses (IoU 0), second would hit: only the first counts -> wrong
    pred = [E("Santa", "PER", ((50, 50, 60, 60), (0, 0, 10, 10)))]
    assert counts(gmner_metrics([pred], [gold]), "gmner") == (0, 1, 1)


def test_duplicate_predictions_count_once():
    # Two identical predictions of one gold: correct = 1, #predict = 2, #gold = 1
    # P = 1/2, R = 1/1, F1 = 2/3 for every task.
    gold = [E("Bruno Mars", "PER", (0, 0, 10, 10))]
    pred = [E("Bruno Mars", "PER", (0, 0, 10, 10))] * 2
    m = gmner_metrics([pred], [gold])
    for t in ("gmner", "mner", "eeg"):
        assert counts(m, t) == (1, 2, 1)
        assert m[t]["precision"] == 0.5 and m[t]["recall"] == 1.0 and m[t]["f1"] == pytest.approx(2 / 3)
    # Same with unlocated triples, for the N metric: n-correct 1, n-predict 2, n-gold 1.
    m = gmner_metrics([[E("TOTTI", "PER")] * 2], [[E("TOTTI", "PER")]])
    assert counts(m, "n") == (1, 2, 1)


def test_duplicate_golds_need_two_predictions():
    # The same text twice in the gold (as in ~14 test posts): one prediction credits one gold.
    gold = [E("TOTTI", "PER"), E("TOTTI", "PER")]
    m = gmner_metrics([[E("TOTTI", "PER")]], [gold])
    assert counts(m, "gmner") == (1, 1, 2)  # P = 1, R = 1/2
    m = gmner_metrics([[E("TOTTI", "PER")] * 2], [gold])
    assert counts(m, "gmner") == (2, 2, 2)


def test_none_none_location():
    gold = [E("England", "LOC")]
    m = gmner_metrics([[E("England", "LOC")]], [gold])
    assert counts(m, "gmner") == (1, 1, 1) and counts(m, "eeg") == (1, 1, 1) and counts(m, "n") == (1, 1, 1)
    # box predicted for an unlocated gold: C_l = 0 (and not in #n-predict)
    m = gmner_metrics([[E("England", "LOC", (0, 0, 5, 5))]], [gold])
    assert counts(m, "gmner") == (0, 1, 1) and counts(m, "mner") == (1, 1, 1) and counts(m, "n") == (0, 0, 1)
    # None predicted for a located gold: C_l = 0 (counted in #n-predict, not n-correct)
    m = gmner_metrics([[E("England", "LOC")]], [[E("England", "LOC", (0, 0, 5, 5))]])
    assert counts(m, "gmner") == (0, 1, 1) and counts(m, "eeg") == (0, 1, 1) and counts(m, "n") == (0, 1, 0)


def test_iou_exactly_half_is_correct():
    # gold [0,0,2,1] (area 2), pred [0,0,1,1] (area 1): intersection 1, union 2 + 1 - 1 = 2,
    # IoU = 1/2 exactly -> ">= 0.5" holds (Eq. 21 is inclusive).
    assert iou((0, 0, 1, 1), (0, 0, 2, 1)) == 0.5
    gold = [E("Apple", "ORG", (0, 0, 2, 1))]
    m = gmner_metrics([[E("Apple", "ORG", (0, 0, 1, 1))]], [gold])
    assert counts(m, "gmner") == (1, 1, 1) and counts(m, "eeg") == (1, 1, 1)


def test_iou_just_under_half_is_wrong():
    # pred [0,0,1,0.999] (area 0.999) inside gold [0,0,2,1] (area 2): intersection 0.999,
    # union 2, IoU = 0.4995 < 0.5 -> wrong location.
    assert iou((0, 0, 1, 0.999), (0, 0, 2, 1)) == pytest.approx(0.4995)
    gold = [E("Apple", "ORG", (0, 0, 2, 1))]
    m = gmner_metrics([[E("Apple", "ORG", (0, 0, 1, 0.999))]], [gold])
    assert counts(m, "gmner") == (0, 1, 1) and counts(m, "eeg") == (0, 1, 1) and counts(m, "mner") == (1, 1, 1)


def test_type_wrong_span_right():
    # C_e = 1, C_t = 0, C_l = 1: GMNER (needs all three) and MNER (needs C_t) wrong, EEG right.
    gold = [E("Ter Stegen", "PER", (0, 0, 10, 10))]
    m = gmner_metrics([[E("Ter Stegen", "ORG", (0, 0, 10, 10))]], [gold])
    assert counts(m, "gmner") == (0, 1, 1)
    assert counts(m, "mner") == (0, 1, 1)
    assert counts(m, "eeg") == (1, 1, 1)


def test_span_whitespace_normalised_and_case_sensitive():
    gold = [E("Kevin Durant", "PER")]
    assert normalize_text("  Kevin \t Durant ") == "Kevin Durant"
    assert counts(gmner_metrics([[E(" Kevin  Durant ", "PER")]], [gold]), "gmner") == (1, 1, 1)
    assert counts(gmner_metrics([[E("kevin durant", "PER")]], [gold]), "gmner") == (0, 1, 1)
    # a partial span is wrong
    assert counts(gmner_metrics([[E("Durant", "PER")]], [gold]), "mner") == (0, 1, 1)


def test_type_is_case_sensitive():
    assert counts(gmner_metrics([[E("NBA", "org")]], [[E("NBA", "ORG")]]), "mner") == (0, 1, 1)


def test_optimal_matching_beats_greedy():
    # One span, two gold triples with different boxes (e.g. the same text twice, from an
    # annotation where the two mentions carry different boxes):
    #   g0 box A = [0,0,10,10] (area 100), g1 box B = [0,0,10,12] (area 120)
    #   p0 box [0,0,10,11] (area 110): IoU(p0,A) = 100/110 = .909, IoU(p0,B) = 110/120 = .917 -> both
    #   p1 box [0,0,10,5]  (area 50):  IoU(p1,A) = 50/100 = .5 (>=),  IoU(p1,B) = 50/120 = .417 -> A only
    # Greedy first-come (p0 takes the first compatible gold g0, then p1 finds nothing) credits 1;
    # the maximum matching p0 -> g1, p1 -> g0 credits 2.
    gold = [E("Taylor Beck", "PER", (0, 0, 10, 10)), E("Taylor Beck", "PER", (0, 0, 10, 12))]
    pred = [E("Taylor Beck", "PER", (0, 0, 10, 11)), E("Taylor Beck", "PER", (0, 0, 10, 5))]
    ok = [[location_correct(p, g) for g in gold] for p in pred]
    assert ok == [[True, True], [True, False]]

    def greedy(ok):
        used, n = set(), 0
        for row in ok:
            for j, x in enumerate(row):
                if x and j not in used:
                    used.add(j)
                    n += 1
                    break
        return n

    assert greedy(ok) == 1
    m = gmner_metrics([pred], [gold], per_post=True)
    assert counts(m, "gmner") == (2, 2, 2) and counts(m, "eeg") == (2, 2, 2)
    assert m["per_post"][0]["pairs"]["gmner"] == [(0, 1), (1, 0)]


def test_n_metrics_hand_computed():
    # gold: A PER None | B LOC None | C ORG box        -> #n-gold = 2 (A, B)
    # pred: A LOC None | B LOC box  | C ORG None | D PER None
    #   #n-predict = 3 (A, C, D: predicted with no box)
    #   n-correct: A (span equal, both None; the type is NOT part of Eq. 26) -> 1
    #              C is None but its gold has a box -> no; D has no gold -> no
    #   N-Pre = 1/3, N-Rec = 1/2, N-F1 = 2 * (1/6) / (5/6) = 0.4
    # The other tasks on the same post (#predict 4, #gold 3):
    #   GMNER: A type wrong, B box vs None, C None vs box, D no gold -> 0
    #   MNER:  B (LOC=LOC), C (ORG=ORG) -> 2 ;  EEG: A (None/None) -> 1
    gold = [E("A", "PER"), E("B", "LOC"), E("C", "ORG", (0, 0, 4, 4))]
    pred = [E("A", "LOC"), E("B", "LOC", (0, 0, 4, 4)), E("C", "ORG"), E("D", "PER")]
    m = gmner_metrics([pred], [gold])
    assert counts(m, "n") == (1, 3, 2)
    assert m["n"]["precision"] == pytest.approx(1 / 3) and m["n"]["recall"] == 0.5
    assert m["n"]["f1"] == pytest.approx(0.4)
    assert counts(m, "gmner") == (0, 4, 3) and counts(m, "mner") == (2, 4, 3) and counts(m, "eeg") == (1, 4, 3)


def test_n_count_entity_not_in_sentence():
    # sentence "RT @nba : Kevin Durant joins the Warriors"
    # preds: "Kevin Durant" (in it), "Warriors" (in it), "Stephen Curry" (image-only: absent),
    #        "kevin durant" (case differs: absent), "Kevin   Durant" (normalised: in it)
    # N-Count = 2, N-Rate = 2/5 = 0.4
    sent = "RT @nba : Kevin Durant joins the  Warriors"
    pred = [E("Kevin Durant", "PER"), E("Warriors", "ORG"), E("Stephen Curry", "PER"),
            E("kevin durant", "PER"), E("Kevin   Durant", "PER")]
    m = gmner_metrics([pred], [[E("Kevin Durant", "PER"), E("Warriors", "ORG")]], [sent], per_post=True)
    assert m["n_count"] == 2 and m["n_rate"] == pytest.approx(0.4)
    assert m["per_post"][0]["absent"] == [2, 3]
    # No sentences given: no N-Count keys. A None sentence leaves the post out of N-Count/N-Rate.
    assert "n_count" not in gmner_metrics([pred], [[]])
    m = gmner_metrics([pred, [E("X", "PER")]], [[], []], [None, "Y"])
    assert m["n_count"] == 1 and m["n_rate"] == 1.0 and m["n_count_predicted"] == 1


def test_empty_posts():
    m = gmner_metrics([], [], [])
    for t in TASKS:
        assert m[t] == prf(0, 0, 0)
    assert m["n_count"] == 0 and m["n_rate"] == 0.0
    m = gmner_metrics([[], []], [[], []], ["a", "b"])
    assert all(m[t]["f1"] == 0.0 for t in TASKS) and m["n_rate"] == 0.0
    # nothing predicted: P = 0 (by convention), R = 0
    m = gmner_metrics([[]], [[E("A", "PER")]])
    assert counts(m, "gmner") == (0, 0, 1) and m["gmner"]["precision"] == 0.0
    # nothing to find: R = 0 (by convention), P = 0
    m = gmner_metrics([[E("A", "PER")]], [[]])
    assert counts(m, "gmner") == (0, 1, 0) and m["gmner"]["recall"] == 0.0


def test_length_mismatch_raises():
    with pytest.raises(ValueError, match=r"2 prediction lists and 3 gold lists"):
        gmner_metrics([[], []], [[], [], []])
    with pytest.raises(ValueError, match=r"1 sentences for 2 posts"):
        gmner_metrics([[], []], [[], []], ["x"])


def test_posts_do_not_share_matches():
    # The same entity in two posts: each prediction matches only its own post's gold.
    g = E("NBA", "ORG")
    m = gmner_metrics([[g, g], []], [[g], [g]])
    assert counts(m, "gmner") == (1, 2, 2)


def test_per_post_sums_to_totals_and_table():
    golds = [[E("A", "PER", (0, 0, 2, 2))], [E("B", "LOC"), E("C", "ORG")]]
    preds = [[E("A", "ORG", (0, 0, 2, 2))], [E("B", "LOC")]]
    m = gmner_metrics(preds, golds, ["A", "B C"], per_post=True)
    assert len(m["per_post"]) == 2
    for t in TASKS:
        for k in ("correct", "predicted", "gold"):
            assert sum(p[t][k] for p in m["per_post"]) == m[t][k]
    assert m["per_post"][0]["pairs"] == {"gmner": [], "mner": [], "eeg": [(0, 0)], "n": []}
    table = metrics_table(m)
    assert "GMNER" in table and "N-Count 0" in table


def test_large_group_goes_through_scipy():
    # 30 predictions x 30 golds of one span (900 pairs > the scipy threshold): same size as the
    # augmenting-path matcher, and a valid one-to-one matching of the relation.
    rng = random.Random(1)
    gold = [E("X", "PER", (rng.randint(0, 5), 0, rng.randint(6, 12), 10)) for _ in range(30)]
    pred = [E("X", "PER", (rng.randint(0, 5), 0, rng.randint(6, 12), 10)) for _ in range(30)]
    ok = [[location_correct(p, g) for g in gold] for p in pred]
    adj = [[j for j, x in enumerate(r) if x] for r in ok]
    ref = len(_kuhn(adj, 30))
    m = gmner_metrics([pred], [gold], per_post=True)
    pairs = m["per_post"][0]["pairs"]["eeg"]
    assert len(pairs) == ref == m["eeg"]["correct"]
    assert len({i for i, _ in pairs}) == len({j for _, j in pairs}) == len(pairs)
    assert all(ok[i][j] for i, j in pairs)


# =========================================================================== properties
def brute_max_matching(ok):
    """Largest one-to-one matching by trying every injection of predictions into golds."""
    n_p, n_g = len(ok), len(ok[0]) if ok else 0
    best = 0
    slots = list(range(n_g)) + [None] * n_p  # None: prediction left unmatched
    for perm in set(itertools.permutations(slots, n_p)):
        best = max(best, sum(1 for i, j in enumerate(perm) if j is not None and ok[i][j]))
    return best


BOXES = [(0, 0, 10, 10), (0, 0, 10, 12), (0, 0, 10, 5), (5, 0, 15, 10), (20, 20, 30, 30)]
entity_st = st.builds(
    lambda t, ty, b: E(t, ty, () if b is None else BOXES[b]),
    st.sampled_from(["A", "A", "A", "B"]), st.sampled_from(["PER", "LOC"]),
    st.one_of(st.none(), st.integers(0, len(BOXES) - 1)))
gold_st = st.builds(
    lambda t, ty, bs: E(t, ty, tuple(BOXES[b] for b in bs)),
    st.sampled_from(["A", "A", "A", "B"]), st.sampled_from(["PER", "LOC"]),
    st.lists(st.integers(0, len(BOXES) - 1), max_size=2, unique=True))


def reference_relation(task, p, g):
    """Eq. 19-21, 26-27 written out independently of the module."""
    ce = p.text == g.text
    ct = p.type == g.type
    if not p.boxes or not g.boxes:
        cl = not p.boxes and not g.boxes
    else:
        cl = best_iou(p.boxes[0], g.boxes) >= 0.5
    return {"gmner": ce and ct and cl, "mner": ce and ct, "eeg": ce and cl,
            "n": ce and not p.boxes and not g.boxes}[task]


@settings(max_examples=300, deadline=None)
@given(st.lists(entity_st, max_size=5), st.lists(gold_st, max_size=4))
# the greedy counter-example of test_optimal_matching_beats_greedy, always tried
@example([E("A", "PER", BOXES[1]), E("A", "PER", BOXES[2])], [E("A", "PER", BOXES[0]), E("A", "PER", BOXES[1])])
def test_matches_brute_force(pred, gold):
    m = gmner_metrics([pred], [gold], per_post=True)
    post = m["per_post"][0]
    for task in TASKS:
        ok = [[reference_relation(task, p, g) for g in gold] for p in pred]
        assert m[task]["correct"] == brute_max_matching(ok), task
        pairs = post["pairs"][task]
        assert len({i for i, _ in pairs}) == len({j for _, j in pairs}) == len(pairs)
        assert all(ok[i][j] for i, j in pairs)
    assert m["gmner"]["correct"] <= min(m["mner"]["correct"], m["eeg"]["correct"])
    assert m["n"]["predicted"] == sum(not p.boxes for p in pred)
    # order of predictions does not matter
    m2 = gmner_metrics([list(reversed(pred))], [gold])
    assert all(m2[t] == m[t] for t in TASKS)


@settings(max_examples=100, deadline=None)
@given(st.integers(1, 7), st.integers(1, 7), st.data())
def test_kuhn_and_scipy_agree(n_left, n_right, data):
    adj = [sorted(data.draw(st.sets(st.integers(0, n_right - 1)))) for _ in range(n_left)]
    a, b = _kuhn(adj, n_right), _scipy_matching(adj, n_right)
    assert len(a) == len(b)
    ok = [[j in adj[i] for j in range(n_right)] for i in range(n_left)]
    if n_left <= 5:
        assert len(a) == brute_max_matching(ok)
    assert max_matching(adj, n_right) is not None


# =========================================================================== real test split
@pytest.fixture(scope="module")
def test_split(data_v2):
    from mcr_swift.data.twitter import load_twitter_gmner
    samples = load_twitter_gmner(data_v2, "test")
    golds = [list(s.entities) for s in samples]
    sentences = [s.sentence for s in samples]
    return samples, golds, sentences


def test_split_statistics(test_split):
    samples, golds, _ = test_split
    assert len(samples) == 1500
    assert sum(map(len, golds)) == 2543
    assert sum(1 for g in golds for e in g if e.boxes) == 1046
    # posts where one span text occurs twice (the one-to-one matching matters there)
    assert sum(1 for g in golds if len({e.text for e in g}) < len(g)) == 14


def test_gold_as_prediction_scores_100(test_split):
    _, golds, sentences = test_split
    preds = [[E(e.text, e.type, e.boxes[:1]) for e in g] for g in golds]  # one box per prediction
    t0 = time.perf_counter()
    m = gmner_metrics(preds, golds, sentences)
    elapsed = time.perf_counter() - t0
    for t in TASKS:
        assert m[t]["precision"] == m[t]["recall"] == m[t]["f1"] == 1.0, t
    assert counts(m, "gmner") == (2543, 2543, 2543)
    assert counts(m, "n") == (1497, 1497, 1497)
    assert m["n_count"] == 0 and m["n_rate"] == 0.0
    # Speed target is < 1 s on one core (measured ~0.02 s); a generous bound against flakiness.
    assert elapsed < 2.0


PERTURB = dict(seed=0, drop=0.1, shift=0.1, retype=0.1, spurious=0.1)


def classify(golds, preds, sentences):
    """Recount what `perturb` did, from its output alone, per documented kind of change."""
    kinds = Counter()
    n_pred_none_real = 0
    for g, p, s in zip(golds, preds, sentences):
        groups = {}
        for e in g:
            groups.setdefault(e.text, []).append(e)
        # Precondition of the expectation formula: golds sharing a span share type and boxes.
        for es in groups.values():
            assert len({(e.type, e.boxes) for e in es}) == 1
        per_group = Counter()
        for e in p:
            if e.text not in groups:
                assert e.text.startswith("spurious entity ") and e.text not in s and not e.boxes
                kinds["spurious"] += 1
                continue
            per_group[e.text] += 1
            ref = groups[e.text][0]
            n_pred_none_real += not e.boxes
            if e.type != ref.type:
                assert e.boxes == ref.boxes[:1]  # retyped: location kept
                kinds["retyped"] += 1
            elif ref.boxes and e.boxes != ref.boxes[:1]:
                assert len(e.boxes) == 1 and best_iou(e.boxes[0], ref.boxes) < 0.5
                kinds["shifted"] += 1
            else:
                assert e.boxes == ref.boxes[:1]
                kinds["copy"] += 1
        for text, es in groups.items():
            assert per_group[text] <= len(es)
            kinds["dropped"] += len(es) - per_group[text]
    return kinds, n_pred_none_real


def test_perturbation_scores_derived_by_counting(test_split):
    _, golds, sentences = test_split
    preds = perturb(golds, **PERTURB)
    n = sum(map(len, golds))                                   # 2543
    n_located = sum(1 for g in golds for e in g if e.boxes)    # 1046
    n_none = n - n_located                                     # 1497
    kinds, n_pred_none_real = classify(golds, preds, sentences)
    # The documented selection sizes: round(0.1 * 2543) = 254, round(0.1 * 1046) = 105.
    assert kinds["dropped"] == round(0.1 * n) == 254
    assert kinds["retyped"] == round(0.1 * n) == 254
    assert kinds["shifted"] == round(0.1 * n_located) == 105
    assert kinds["spurious"] == round(0.1 * n) == 254
    assert kinds["copy"] == n - 254 - 254 - 105 == 1930
    # Expected scores. In a span group all golds share type and boxes (checked above) and the
    # group has no more predictions than golds, so every prediction compatible with one gold of
    # its group is compatible with all of them and the maximum matching credits each compatible
    # prediction once: #correct = #compatible predictions.
    #   GMNER: copies only                          -> 1930
    #   MNER:  copies + shifted (type kept)         -> 1930 + 105 = 2035
    #   EEG:   copies + retyped (location kept)     -> 1930 + 254 = 2184
    #   #predict = 2543 - 254 dropped + 254 spurious = 2543 ; #gold = 2543
    #   N: #n-gold = 1497; #n-predict = surviving unlocated + spurious; n-correct = surviving
    #      unlocated (type does not matter in Eq. 26; no shifted one is unlocated)
    m = gmner_metrics(preds, golds, sentences)
    n_pred = n - kinds["dropped"] + kinds["spurious"]
    assert counts(m, "gmner") == (kinds["copy"], n_pred, n)
    assert counts(m, "mner") == (kinds["copy"] + kinds["shifted"], n_pred, n)
    assert counts(m, "eeg") == (kinds["copy"] + kinds["retyped"], n_pred, n)
    assert counts(m, "n") == (n_pred_none_real, n_pred_none_real + kinds["spurious"], n_none)
    assert m["n_count"] == kinds["spurious"] and m["n_rate"] == kinds["spurious"] / n_pred
    # F1 from the counts: P = R here since #predict = #gold.
    assert m["gmner"]["f1"] == pytest.approx(1930 / 2543)
    # The concrete numbers of seed 0, to catch any change of the perturbation or the metrics.
    assert counts(m, "gmner") == (1930, 2543, 2543)
    assert counts(m, "mner") == (2035, 2543, 2543)
    assert counts(m, "eeg") == (2184, 2543, 2543)
    assert counts(m, "n") == (1345, 1599, 1497)
    assert m["n_count"] == 254
    assert round(100 * m["n"]["f1"], 2) == 86.89


def test_perturbation_is_deterministic_and_validated(test_split):
    _, golds, _ = test_split
    a, b = perturb(golds, seed=3), perturb(golds, seed=3)
    assert a == b and a != perturb(golds, seed=4)
    assert perturb(golds, drop=0, shift=0, retype=0) == [[E(e.text, e.type, e.boxes[:1]) for e in g] for g in golds]
    with pytest.raises(ValueError):
        perturb(golds, drop=1.5)
    with pytest.raises(ValueError):
        perturb(golds, drop=0.6, retype=0.6)


def test_per_post_pairs_on_real_data(test_split):
    _, golds, sentences = test_split
    preds = perturb(golds, seed=1, spurious=0.05)
    m = gmner_metrics(preds, golds, sentences, per_post=True)
    for p, g, post in zip(preds, golds, m["per_post"]):
        for task in TASKS:
            pairs = post["pairs"][task]
            assert len(pairs) == post[task]["correct"]
            assert all(reference_relation(task, p[i], g[j]) for i, j in pairs)
        assert post_counts(p, g, None, pairs=False)["gmner"] == post["gmner"]


# --------------------------------------------------------------------------- protocols (mcr, hindex)
def test_protocol_box_at_exactly_iou_half():
    # pred (0,0,10,5) inside gold (0,0,10,10): intersection 50, union 100 -> IoU exactly 0.5.
    pred, gold = [[Entity("Kevin", "PER", [(0, 0, 10, 5)])]], [[Entity("Kevin", "PER", [(0, 0, 10, 10)])]]
    mcr = gmner_metrics(pred, gold)
    hix = gmner_metrics(pred, gold, protocol="hindex")
    assert mcr["protocol"] == "mcr" and hix["protocol"] == "hindex"
    assert (mcr["gmner"]["correct"], mcr["eeg"]["correct"], mcr["mner"]["correct"]) == (1, 1, 1)
    assert (hix["gmner"]["correct"], hix["eeg"]["correct"], hix["mner"]["correct"]) == (0, 0, 1)
    assert hix["gmner"]["predicted"] == 1 and hix["hindex_dropped_predictions"] == 0
    # just above 0.5 (0,0,10,5.1): IoU 0.51, right under both
    above = [[Entity("Kevin", "PER", [(0, 0, 10, 5.1)])]]
    assert gmner_metrics(above, gold, protocol="hindex")["gmner"]["correct"] == 1
    from mcr_swift.core.metrics import location_correct
    assert location_correct(pred[0][0], gold[0][0]) and not location_correct(pred[0][0], gold[0][0], strict=True)
    with pytest.raises(ValueError, match="protocol must be one of mcr, hindex"):
        gmner_metrics(pred, gold, protocol="conll")


def test_protocol_hindex_duplicates_keep_first_c_minus_1_and_last():
    sentence = "Kevin Durant met Kevin at NBA"  # "Kevin" at 2 positions, "NBA" at 1, "Apple" at none
    gold = [Entity("Kevin", "PER"), Entity("Kevin", "PER"), Entity("NBA", "ORG")]
    pred = [Entity("Kevin", "PER"), Entity("Kevin", "LOC"), Entity("Kevin", "PER"), Entity("Kevin", "ORG"),
            Entity("NBA", "ORG"), Entity("NBA", "PER"), Entity("Apple", "ORG"), Entity("Apple", "ORG")]
    from mcr_swift.core.metrics import hindex_kept, post_counts
    # Kevin: n=4 > c=2 -> first c-1=1 (index 0) and the last (3); NBA: n=2 > c=1 -> the last (5);
    # Apple absent -> both kept.
    assert hindex_kept(pred, sentence) == [0, 3, 5, 6, 7]
    mcr = gmner_metrics([pred], [gold], [sentence])
    hix = gmner_metrics([pred], [gold], [sentence], protocol="hindex")
    # mcr: 8 predicted; MNER/GMNER: Kevin PER x2 + NBA ORG = 3; EEG: 2 Kevin + 1 NBA = 3; N: 3 of 8
    for t in ("gmner", "mner", "eeg", "n"):
        assert (mcr[t]["correct"], mcr[t]["predicted"], mcr[t]["gold"]) == (3, 8, 3), t
    # hindex: kept Kevin PER, Kevin ORG, NBA PER, Apple x2 = 5 predicted; MNER/GMNER: only Kevin PER;
    # EEG: Kevin x2 + NBA = 3; N (type ignored): 3 of 5.
    assert (hix["gmner"]["correct"], hix["gmner"]["predicted"]) == (1, 5)
    assert (hix["mner"]["correct"], hix["eeg"]["correct"], hix["n"]["correct"]) == (1, 3, 3)
    assert hix["n"]["predicted"] == 5 and hix["hindex_dropped_predictions"] == 3
    assert (mcr["n_count"], mcr["n_count_predicted"]) == (2, 8)
    assert (hix["n_count"], hix["n_count_predicted"]) == (2, 5)
    c = post_counts(pred, gold, sentence, protocol="hindex")
    assert c["pairs"]["mner"] == [(0, 0)] and c["pairs"]["eeg"] == [(0, 0), (3, 1), (5, 2)]
    assert c["absent"] == [6, 7]
    # without a sentence nothing is dropped (occurrences unknown)
    assert gmner_metrics([pred], [gold], protocol="hindex")["gmner"]["predicted"] == 8
    # a text occurring 3 times, predicted twice, is untouched
    assert hindex_kept([Entity("a", "PER")] * 2, "a b a c a") == [0, 1]


# --------------------------------------------------------------------------- --protocol grec (gRefCOCO)
def test_giou_hand_computed():
    from mcr_swift.core.coords import giou
    a = (0, 0, 10, 10)
    assert giou(a, a) == 1.0 and giou(a, (0, 0, 10, 5)) == pytest.approx(0.5)  # hull = a: GIoU = IoU
    # (1.8, 1.8, 11.8, 11.8): IoU 67.24 / 132.76 = 0.5065, hull 11.8^2 = 139.24: GIoU 0.5065 - 6.48 / 139.24
    assert giou(a, (1.8, 1.8, 11.8, 11.8)) == pytest.approx(67.24 / 132.76 - 6.48 / 139.24)
    assert giou(a, (20, 0, 30, 10)) == pytest.approx(0 - 100 / 300)  # apart: hull 300, union 200
    assert giou(a, (0, 0, float("nan"), 1)) == -1.0


def test_grec_protocol_hand_computed():
    from mcr_swift.core.metrics import grec_benchmark_metrics, grec_matches
    A, B = (0, 0, 10, 10), (20, 0, 30, 10)
    G1, G2, P1, P2 = (0, 0, 10, 10), (4, 0, 14, 10), (1, 0, 11, 10), (-2, 0, 8, 10)
    cases = [  # (predicted boxes, gold boxes, correct?)
        ([], [], True),                                   # 1 no-target, nothing predicted
        ([(0, 0, 1, 1)], [], False),                      # 2 no-target, a box
        ([A], [A], True),                                 # 3 GIoU 1
        ([(0, 0, 10, 5)], [A], True),                     # 4 GIoU exactly 0.5 (>=)
        ([A, B], [A], False),                             # 5 one extra box: P 1/2, R 1, F1 2/3
        ([B, A], [A, B], True),                           # 6 multi-target, both found (any order)
        ([A], [A, B], False),                             # 7 multi-target, one of two: F1 2/3
        ([], [A], False),                                 # 8 a target answered "nothing"
        (None, [A], False),                               # 9 no answer row at all
        ([(1.8, 1.8, 11.8, 11.8)], [A], False),           # 10 IoU 0.506 but GIoU 0.460 < 0.5
        ([P1, P2], [G1, G2], False),                      # 11 greedy: P1-G1 (0.818) first, P2-G2 0.25
    ]
    # case 11: a one-to-one assignment with both >= 0.5 exists (P1-G2 7/13, P2-G1 8/12), greedy finds 1
    assert grec_matches([P1, P2], [G1, G2]) == 1 and grec_matches([B, A], [A, B]) == 2
    m = grec_benchmark_metrics([c[0] for c in cases], [c[1] for c in cases])
    assert m["samples"] == 11 and m["precision"] == pytest.approx(4 / 11)   # correct: 1, 3, 4, 6
    assert m["n_acc"] == pytest.approx(1 / 2) and m["t_acc"] == pytest.approx(7 / 9)  # 8 and 9 answered nothing
    assert m["no_target"] == {"correct": 1, "total": 2} and m["one_target"] == {"correct": 2, "total": 6}
    assert m["multi_target"] == {"correct": 1, "total": 3} and m["score_threshold"] is None
    # scores: a box below 0.7 does not count (>= 0.7 does)
    s = grec_benchmark_metrics([[A, B], [(0, 0, 1, 1)], [(0, 0, 1, 1)]], [[A], [], []],
                               pred_scores=[[0.9, 0.69], [0.5], [0.7]])
    assert (s["one_target"]["correct"], s["no_target"]["correct"]) == (1, 1) and s["precision"] == pytest.approx(2 / 3)
    assert grec_benchmark_metrics([], [])["precision"] == 0.0
    with pytest.raises(ValueError, match="one entry per sample"):
        grec_benchmark_metrics([[]], [])
    # the paper's protocol on the one-target cases: 3, 4 and 10 (IoU 0.506 >= 0.5) of 3, 4, 5, 8, 9, 10
    from mcr_swift.core.metrics import grec_metrics
    one = [c for c in cases if len(c[1]) == 1]
    assert grec_metrics([c[0] for c in one], [c[1][0] for c in one])["precision"] == pytest.approx(3 / 6)
