"""`mcr_swift.core.scoring`: score_row per task against hand-computed values, and RewardConfig.from_env."""
from __future__ import annotations

import dataclasses
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mcr_swift.core.answer import render_answer
from mcr_swift.core.entities import Entity
from mcr_swift.core.rewards import DEFAULT_SIGMA, DEFAULT_WEIGHTS
from mcr_swift.core.scoring import RewardConfig, Score, clear_caches, score_row

#: A 280 x 280 image is not resized under MAX_PIXELS = 280 * 280: model space = original pixels.
ENV = {"MAX_PIXELS": str(280 * 280)}
CFG = RewardConfig.from_env(ENV)
SIZE = [[280, 280]]
GOLD = [Entity("Kevin Durant", "PER", ((0, 0, 100, 100),)), Entity("NBA", "ORG")]
#: Kevin Durant exact (box too); NBA with the wrong type (no box, like the gold).
PRED = [Entity("Kevin Durant", "PER", ((0, 0, 100, 100),)), Entity("NBA", "LOC")]


def row(task=None, gold=GOLD, sizes=SIZE, **extra):
    r = {"mcr_gold": json.dumps([e.to_dict() for e in gold]) if gold is not None else None,
         "mcr_image_sizes": sizes, **extra}
    if task:
        r["mcr_task"] = task
    return r


def text(entities):
    return render_answer(entities, "reasoning")[0]


def test_gmner_hand_case():
    s = score_row(text(PRED), row("gmner"), CFG)
    # p = q = 2: R_c = 1 (Eq. 15); spans exact: R_s = 1; types 1 of 2: R_t = 0.5; KD IoU 1, NBA both
    # None: R_u = 1; both entailments right: R_e = 1 (Eq. 6-9)
    assert (s.task, s.answered, s.n_pred, s.n_gold, s.skipped) == ("gmner", True, 2, 2, None)
    assert (s.count, s.span, s.type, s.iou, s.entail) == (1.0, 1.0, 0.5, 1.0, 1.0)
    assert s.reward == pytest.approx(0.2 * (1 + 1 + 0.5 + 1 + 1))  # Eq. 10 = 0.9
    assert s.terms == {"count": 1.0, "span": 1.0, "type": 0.5, "iou": 1.0, "entail": 1.0}
    # GMNER F1 (Eq. 19-24): KD correct, NBA wrong type: 2 * 1 / (2 + 2)
    assert s.f1 == pytest.approx(0.5)
    assert s.format_ok is True
    # a row without mcr_task is GMNER
    assert score_row(text(PRED), row(), CFG) == s


def test_mner_mi_hand_case():
    s = score_row(text(PRED), row("mner_mi"), CFG)
    assert (s.count, s.span, s.type) == (1.0, 1.0, 0.5)
    assert s.iou is None and s.entail is None                  # MNER-MI asks for no location
    # three lambdas of 0.2 rescaled to the total 1.0: 1/3 each
    assert s.reward == pytest.approx((1 + 1 + 0.5) / 3)
    assert s.f1 == pytest.approx(0.5)                           # MNER F1: NBA's type wrong
    # a box where the gold has none costs nothing on MNER-MI (boxes ignored) ...
    boxed = [PRED[0], Entity("NBA", "ORG", ((5, 5, 50, 50),))]
    assert score_row(text(boxed), row("mner_mi"), CFG).reward == pytest.approx(1.0)
    # ... but does on GMNER (NBA's location wrong: R_u = 0.5, R_e = 0.5; F1 1/2)
    g = score_row(text(boxed), row("gmner"), CFG)
    assert (g.iou, g.entail, g.f1) == (0.5, 0.5, 0.5)


def test_grec_hand_case():
    gold = [Entity("the man on the left", "OTHER", ((0, 0, 100, 100),))]
    s = score_row(text([Entity("the man on the left", "OTHER", ((0, 0, 100, 75),))]), row("grec", gold), CFG)
    # IoU 0.75 -> R_u = (0.75 - 0.5) / (1 - 0.5) = 0.5 (Eq. 8); a target found: R_e = 1
    assert (s.iou, s.entail) == (pytest.approx(0.5), 1.0)
    assert (s.count, s.span, s.type) == (None, None, None)
    assert s.reward == pytest.approx(0.5 * 0.5 + 0.5 * 1.0)   # two lambdas rescaled to 0.5 each
    assert s.f1 is None                                         # GREC is scored by N-acc / precision
    no_target = [Entity("the dog", "OTHER")]
    assert score_row("<answer>None</answer>", row("grec", no_target), CFG).reward == 1.0
    two = score_row(text(gold), row("grec", gold + no_target), CFG)
    assert two.skipped and "exactly one gold expression" in two.skipped and two.reward == 0.0


def test_junk_and_empty_answers():
    for junk in ("junk", "", None, 12, "<answer></answer>"):
        s = score_row(junk, row("gmner"), CFG)
        assert s.answered is False and s.reward == 0.0 and s.f1 == 0.0
        assert s.terms == {"count": 0.0, "span": 0.0, "type": 0.0, "iou": 0.0, "entail": 0.0}
    # a row with no gold entity: junk earns nothing, a well-formed empty answer everything
    assert score_row("junk", row("gmner", []), CFG).reward == 0.0
    empty = score_row("<think>x</think>\n<answer>\n[]\n</answer>", row("gmner", []), CFG)
    assert (empty.reward, empty.f1, empty.answered) == (1.0, 1.0, True)


def test_gold_mapped_into_the_model_space():
    # 1000 x 500 under MAX_PIXELS = 28*28*64 is resized to 308 x 140: gold (100, 50, 400, 300) is
    # (31, 14, 123, 84) in the model's space, the box the model is trained to write
    cfg = RewardConfig.from_env({"MAX_PIXELS": str(28 * 28 * 64)})
    gold = [Entity("Kevin Durant", "PER", ((100, 50, 400, 300),))]
    model = text([Entity("Kevin Durant", "PER", ((31, 14, 123, 84),))])
    assert score_row(model, row("gmner", gold, [[1000, 500]]), cfg).iou == 1.0
    orig = dataclasses.replace(cfg, space_mode="original")      # rounding costs a little IoU there
    assert 0.9 < score_row(model, row("gmner", gold, [[1000, 500]]), orig).iou < 1.0
    # the original-pixel box read as model coordinates is clamped and misses
    assert score_row(text(gold), row("gmner", gold, [[1000, 500]]), cfg).iou < 0.5


def test_unusable_rows_are_skipped_with_a_reason():
    cases = {"no gold column": row("gmner", None), "unknown task": row("nope"),
             "bad gold": {**row("gmner"), "mcr_gold": "not json"},
             "no size for boxes": row("gmner", sizes=None)}
    for why, r in cases.items():
        s = score_row(text(PRED), r, CFG)
        assert s.skipped, why
        assert (s.reward, s.terms, s.f1) == (0.0, None, 0.0), why
    assert "mcr_gold" in score_row("x", row("gmner", None), CFG).skipped
    assert "'nope'" in score_row("x", row("nope"), CFG).skipped
    # a gold without boxes needs no size
    assert score_row(text([Entity("NBA", "ORG")]), row("gmner", [Entity("NBA", "ORG")], None), CFG).reward == 1.0


def test_score_is_frozen_and_cached():
    a = score_row(text(PRED), row("gmner"), CFG)
    assert isinstance(a, Score) and score_row(text(PRED), row("gmner"), CFG) is a
    with pytest.raises(dataclasses.FrozenInstanceError):
        a.reward = 1.0
    clear_caches()
    b = score_row(text(PRED), row("gmner"), CFG)
    assert b is not a and b == a
    # messages: the last assistant turn is the completion
    msgs = [{"role": "user", "content": "q"}, {"role": "assistant", "content": text(PRED)}]
    assert score_row(msgs, row("gmner"), CFG) == a


def test_weights_sigma_unmatched_change_the_score():
    t = text(PRED)
    assert score_row(t, row("gmner"), dataclasses.replace(CFG, weights=(0, 0, 1, 0, 0))).reward == 0.5
    # MNER-MI with only 'type' weighted: type rescaled to the total 1.0
    assert score_row(t, row("mner_mi"), dataclasses.replace(CFG, weights=(0, 0, 1, 0, 0))).reward == 0.5
    # GREC with its terms at 0: scores 0.0
    gold = [Entity("x", "OTHER", ((0, 0, 100, 100),))]
    cfg = dataclasses.replace(CFG, weights=(1, 0, 0, 0, 0))
    assert score_row(text(gold), row("grec", gold), cfg).reward == 0.0
    assert cfg.zero_weight_tasks() == ("grec",)
    # sigma of Eq. 8: IoU 0.75 with sigma 0.25 -> (0.75 - 0.25) / 0.75
    g = score_row(text([Entity("x", "OTHER", ((0, 0, 100, 75),))]), row("grec", gold),
                  dataclasses.replace(CFG, sigma=0.25))
    assert g.iou == pytest.approx(2 / 3)
    # MCR_UNMATCHED: a spurious third prediction (no partner) -- 'zero' averages over max(p, q) = 3
    extra = text(PRED + [Entity("Oklahoma", "LOC")])
    drop = score_row(extra, row("gmner"), CFG)
    zero = score_row(extra, row("gmner"), dataclasses.replace(CFG, unmatched="zero"))
    assert drop.span == 1.0 and zero.span == pytest.approx(2 / 3)


def test_reward_config_from_env():
    d = RewardConfig.from_env({})
    assert (d.weights, d.sigma, d.unmatched, d.space_mode, d.log_path, d.count_reading) == (
        DEFAULT_WEIGHTS, DEFAULT_SIGMA, "drop", "model", None, "literal")
    assert RewardConfig.from_env({"MCR_COUNT_READING": " True_Count"}).count_reading == "true_count"
    c = RewardConfig.from_env({"MCR_REWARD_WEIGHTS": "type=0.5, entail=0.5", "MCR_IOU_SIGMA": "0.25",
                               "MCR_UNMATCHED": "zero", "MCR_REWARD_SPACE": "Original", "MCR_REWARD_LOG": "/x/r.jsonl",
                               "MAX_PIXELS": "100352", "MCR_MODEL_FAMILY": "qwen2_5_vl"})
    assert c.weights == (0.0, 0.0, 0.5, 0.0, 0.5)
    assert (c.sigma, c.unmatched, c.space_mode, c.log_path) == (0.25, "zero", "original", "/x/r.jsonl")
    assert c.space.max_pixels == 100352
    assert c.task_weights("grec") == {"iou": 0.0, "entail": 1.0}
    hash(c)  # frozen and hashable: a cache key
    assert RewardConfig.from_env({"MCR_REWARD_WEIGHTS": "1,0,0,0,0"}).weights == (1.0, 0.0, 0.0, 0.0, 0.0)
    for var, bad in (("MCR_REWARD_WEIGHTS", "1,2"), ("MCR_REWARD_WEIGHTS", "a=1"), ("MCR_IOU_SIGMA", "1.5"),
                     ("MCR_IOU_SIGMA", "x"), ("MCR_UNMATCHED", "nope"), ("MCR_REWARD_SPACE", "bogus"),
                     ("MCR_COUNT_READING", "by_q")):
        with pytest.raises(ValueError, match=var):
            RewardConfig.from_env({var: bad})


def test_scoring_reads_the_environment_once(monkeypatch):
    monkeypatch.setenv("MCR_REWARD_WEIGHTS", "0,0,1,0,0")
    monkeypatch.setenv("MAX_PIXELS", str(280 * 280))
    cfg = RewardConfig.from_env()
    monkeypatch.setenv("MCR_REWARD_WEIGHTS", "1,0,0,0,0")   # later changes do not reach a built config
    assert score_row(text(PRED), row("gmner"), cfg).reward == 0.5
    assert score_row(text(PRED), row("gmner")).reward == 1.0  # no config: read now


# --------------------------------------------------------------------------- spam never pays
def _forms(ents):
    """``ents`` written in each answer form the parser reads (whole answers, in <answer> tags)."""
    def box(e, fmt="[%d, %d, %d, %d]"):
        return fmt % e.box if e.boxes else None
    forms = {
        "json_objects": json.dumps([{"entity": e.text, "type": e.type, "bbox": list(e.box) if e.boxes else None}
                                    for e in ents]),
        "json_lists": json.dumps([[e.text, e.type, list(e.box) if e.boxes else None] for e in ents]),
        "python": repr([(e.text, e.type, list(e.box) if e.boxes else None) for e in ents]),
        "tuples": ", ".join(f"({e.text}, {e.type}, {box(e) or 'None'})" for e in ents),
        "lines": "".join(f"{e.text} | {e.type} | {box(e) or 'None'}\n" for e in ents),
        "qwen_tokens": "".join("<|object_ref_start|>%s<|object_ref_end|>%s %s\n" % (
            e.text, box(e, "<|box_start|>(%d,%d),(%d,%d)<|box_end|>") or "", e.type) for e in ents),
    }
    return {k: f"<think>r</think><answer>{v}</answer>" for k, v in forms.items()}


KD_GOLD = [Entity("Kevin Durant", "PER", ((0, 0, 100, 100),))]


@pytest.mark.parametrize("unmatched", ["drop", "zero"])
def test_spam_in_every_form_pays_at_most_the_drop_reading(unmatched):
    """30,000 spammed entities, in every form, scored as GRPO scores them (the list-of-lists form used
    to read as one entity past the 64 KiB window, and scored 0.9)."""
    cfg = dataclasses.replace(CFG, unmatched=unmatched)
    copies = _forms(KD_GOLD * 30_000)
    junk = _forms(KD_GOLD + [Entity(f"Spam{i}", "PER", ((0, 0, 100, 100),)) for i in range(30_000)])
    noise = _forms([Entity(f"Spam{i}", "PER", ((0, 0, 100, 100),)) for i in range(30_000)])
    for form in copies:
        for name, answer in (("copies", copies[form]), ("gold+junk", junk[form])):
            s = score_row(answer, row("gmner", KD_GOLD), cfg)
            assert s.n_pred == 200, (form, name)  # max_entities read: the count term sees the spam
            assert s.count == 0.0  # Eq. 15: p = 200 > q = 1, 1 - 199 * 0.4 < 0
            if unmatched == "drop":  # the one matched pair is perfect: every other term 1 (docs/rewards.md)
                assert s.reward == pytest.approx(0.8), (form, name)
            else:  # the padded assignment: each term 1/200
                assert s.reward == pytest.approx(0.2 * 4 / 200), (form, name)
        assert score_row(noise[form], row("gmner", KD_GOLD), cfg).reward == 0.0, form
        m = score_row(copies[form], row("mner_mi", KD_GOLD), cfg)  # count, span, type
        assert m.reward == pytest.approx((2 if unmatched == "drop" else 2 / 200) / 3), form
        g = score_row(copies[form], row("grec", KD_GOLD), cfg)  # several entities localise nothing
        assert (g.iou, g.entail) == (0.0, 1.0), form


def test_two_hundred_copies_of_the_one_gold_entity():
    """The numbers docs/rewards.md quotes: 200 copies of the one correct entity (p = 200, q = 1)."""
    answer = text(KD_GOLD * 200)
    d = score_row(answer, row("gmner", KD_GOLD), CFG)
    assert (d.count, d.span, d.type, d.iou, d.entail) == (0.0, 1.0, 1.0, 1.0, 1.0)
    assert d.reward == pytest.approx(0.8)  # passes App. D.3's max >= 0.8
    z = score_row(answer, row("gmner", KD_GOLD), dataclasses.replace(CFG, unmatched="zero"))
    assert (z.count, z.span, z.type, z.iou, z.entail) == (0.0, 0.005, 0.005, 0.005, 0.005)
    assert z.reward == pytest.approx(0.004)
    two = score_row(text(KD_GOLD * 2), row("gmner", KD_GOLD), CFG)  # one extra copy: R_c = 1 - 0.4
    assert (two.count, two.reward) == (pytest.approx(0.6), pytest.approx(0.92))
    two = score_row(text(KD_GOLD * 2), row("gmner", KD_GOLD), dataclasses.replace(CFG, unmatched="zero"))
    assert (two.span, two.reward) == (0.5, pytest.approx(0.52))


_letters = st.text("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ", min_size=1, max_size=6)


@st.composite
def _gold_entity(draw, located=None):
    text = " ".join(draw(st.lists(_letters, min_size=1, max_size=3)))
    box = None
    if draw(st.booleans()) if located is None else located:
        x1, y1 = draw(st.integers(0, 200)), draw(st.integers(0, 200))
        box = (x1, y1, x1 + draw(st.integers(1, 79)), y1 + draw(st.integers(1, 79)))
    return Entity(text, draw(st.sampled_from(["PER", "LOC", "ORG", "OTHER"])), (box,) if box else ())


@pytest.mark.parametrize("unmatched", ["drop", "zero"])
@pytest.mark.parametrize("task", ["gmner", "mner_mi", "grec"])
@settings(max_examples=60, deadline=None)
@given(data=st.data())
def test_the_exact_gold_answer_beats_it_plus_spurious_entities(task, unmatched, data):
    gold = data.draw(st.lists(_gold_entity(), min_size=1, max_size=1) if task == "grec"
                     else st.lists(_gold_entity(), max_size=5), label="gold")
    extra = data.draw(st.lists(st.one_of(_gold_entity(), st.sampled_from(gold) if gold else _gold_entity()),
                               min_size=1, max_size=5), label="spurious")
    answer = data.draw(st.permutations(gold + extra), label="answer")
    weights = data.draw(st.one_of(st.just(DEFAULT_WEIGHTS), st.tuples(*[st.floats(0.05, 1.0)] * 5)),
                        label="weights")
    reading = data.draw(st.sampled_from(["literal", "true_count"]), label="count reading")
    cfg = dataclasses.replace(CFG, unmatched=unmatched, weights=tuple(weights), count_reading=reading)
    exact = score_row(text(gold), row(task, gold), cfg)
    spammed = score_row(text(answer), row(task, gold), cfg)
    assert exact.n_pred == len(gold) and spammed.n_pred == len(answer)
    assert exact.reward == pytest.approx(sum(cfg.task_weights(task).values()))
    assert exact.reward > spammed.reward, (exact, spammed)
