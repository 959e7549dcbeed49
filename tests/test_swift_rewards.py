"""The ms-swift ORMs, called exactly as GRPO calls them: ``reward(completions, **columns)``."""
from __future__ import annotations

import json
import logging

import pytest

swift_rewards_mod = pytest.importorskip("swift.rewards")

from mcr_swift.plugin import orms as swift_rewards  # noqa: E402
from mcr_swift.core.answer import render_answer  # noqa: E402
from mcr_swift.core.coords import CoordinateSpace  # noqa: E402
from mcr_swift.core.rewards import gmner_reward, reward_terms  # noqa: E402
from mcr_swift.plugin.orms import (REWARD_NAMES, GMNERCountReward, GMNEREntailReward,  # noqa: E402
                                     GMNERF1Reward, GMNERFormatReward, GMNERIoUReward, GMNERReward, GMNERSpanReward,
                                     GMNERTypeReward, register_rewards)
from mcr_swift.core.entities import Entity  # noqa: E402

SIZE = (1000, 500)                       # original image, pixels
MAX_PIXELS = 28 * 28 * 64                # resized to 308 x 140 for Qwen2.5-VL
GOLD = [Entity("Kevin Durant", "PER", ((100, 50, 400, 300), (600, 100, 700, 200))),
        Entity("NBA", "ORG"), Entity("Oklahoma City", "LOC", ((10, 10, 990, 490),))]
TERM_CLASSES = {"count": GMNERCountReward, "span": GMNERSpanReward, "type": GMNERTypeReward,
                "iou": GMNERIoUReward, "entail": GMNEREntailReward}


@pytest.fixture(autouse=True)
def env(monkeypatch):
    for k in ("MCR_REWARD_WEIGHTS", "MCR_IOU_SIGMA", "MCR_REWARD_SPACE", "MCR_REWARD_LOG", "MIN_PIXELS", "MCR_UNMATCHED",
              "IMAGE_MAX_TOKEN_NUM", "IMAGE_MIN_TOKEN_NUM", "MCR_TEMPLATE_MAX_PIXELS", "MCR_MODEL_FAMILY"):
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setenv("MAX_PIXELS", str(MAX_PIXELS))
    monkeypatch.setattr(swift_rewards, "_malformed", 0)


def space():
    return CoordinateSpace.from_env()


def gold_json(entities=GOLD):
    return json.dumps([e.to_dict() for e in entities])


def in_model_space(entities, largest=True):
    """What the model is trained to write: the (largest) gold box mapped with to_model."""
    out = []
    for e in entities:
        out.append(Entity(e.text, e.type, tuple(space().to_model(b, SIZE) for b in e.boxes)))
    return out


def grpo_kwargs(n, gold=None, sizes=None):
    """The columns GRPO passes: every dataset column as a list aligned with completions, + extras."""
    return {"mcr_gold": [gold or gold_json()] * n, "mcr_image_sizes": [sizes or [list(SIZE)]] * n,
            "mcr_id": [f"id{i}" for i in range(n)], "mcr_task": ["gmner"] * n,
            "mcr_sentence": ["Kevin Durant leaves NBA for Oklahoma City"] * n,
            "images": [[{"bytes": None, "path": "/x.jpg"}]] * n,
            "messages": [[{"role": "user", "content": "<image>q"}]] * n,
            "solution": [None] * n, "trainer_state": object()}


def test_model_space_differs_from_original():
    assert space().resized_size(*SIZE) == (308, 140)
    assert space().model_extent(SIZE) == (308.0, 140.0)


def test_gold_in_model_space_scores_one_on_every_reward():
    text, _ = render_answer(in_model_space(GOLD), "reasoning")
    assert "[31, 14, 123, 84]" in text  # the largest box, 1000x500 -> 308x140, rounded like ms-swift
    completions = [text, [{"role": "user", "content": "q"}, {"role": "assistant", "content": text}]]
    kwargs = grpo_kwargs(2)
    assert GMNERReward()(completions, **kwargs) == [1.0, 1.0]
    for cls in TERM_CLASSES.values():
        assert cls()(completions, **kwargs) == [1.0, 1.0]
    assert GMNERFormatReward()(completions, **kwargs) == [1.0, 1.0]


def test_original_pixel_boxes_score_lower_on_iou():
    good, _ = render_answer(in_model_space(GOLD), "r")
    wrong, _ = render_answer(GOLD, "r")  # boxes left in original pixels: the model-space mistake
    kwargs = grpo_kwargs(2)
    iou = GMNERIoUReward()([good, wrong], **kwargs)
    total = GMNERReward()([good, wrong], **kwargs)
    # Kevin Durant: IoU((100,50,308,140) clamped, (31,14,123,84)) < sigma -> 0; NBA unlocated -> 1;
    # Oklahoma City (nearly the whole image) still overlaps well -> ~0.8
    assert iou[0] == 1.0 and iou[1] < 0.7
    assert total[0] == 1.0 and total[1] < 1.0
    # count, span, type and entailment do not depend on the boxes' space
    for name in ("count", "span", "type", "entail"):
        assert TERM_CLASSES[name]()([good, wrong], **kwargs) == [1.0, 1.0]


def test_matches_plain_reward_in_model_space():
    pred = [Entity("Kevin Durant", "PER", (35, 15, 120, 80)), Entity("NBA", "ORG", (1, 1, 50, 50)),
            Entity("Oklahoma", "ORG")]
    text, _ = render_answer(pred, "r")
    got = GMNERReward()([text], **grpo_kwargs(1))[0]
    gold_m = in_model_space(GOLD)
    assert got == pytest.approx(gmner_reward(pred, gold_m))
    terms = reward_terms(pred, gold_m)
    for name, cls in TERM_CLASSES.items():
        assert cls()([text], **grpo_kwargs(1)) == [pytest.approx(terms[name])]
    assert 0 < got < 1


def test_original_space_mode(monkeypatch):
    monkeypatch.setenv("MCR_REWARD_SPACE", "original")
    text, _ = render_answer(in_model_space(GOLD), "r")
    iou = GMNERIoUReward()([text], **grpo_kwargs(1))[0]
    assert 0.9 < iou < 1.0  # integer rounding in the 308x140 space costs a little IoU
    monkeypatch.setenv("MCR_REWARD_SPACE", "bogus")
    with pytest.raises(ValueError, match="MCR_REWARD_SPACE"):
        GMNERReward()


def test_weights_and_sigma_from_env(monkeypatch):
    pred = [Entity("Kevin Durant", "LOC"), Entity("NBA", "ORG")]
    text, _ = render_answer(pred, "r")
    terms = reward_terms(pred, in_model_space(GOLD))
    monkeypatch.setenv("MCR_REWARD_WEIGHTS", "1,0,0,0,0")
    assert GMNERReward()([text], **grpo_kwargs(1)) == [pytest.approx(terms["count"])]
    monkeypatch.setenv("MCR_REWARD_WEIGHTS", "type=0.5, entail=0.5")
    assert GMNERReward()([text], **grpo_kwargs(1)) == [pytest.approx(0.5 * terms["type"] + 0.5 * terms["entail"])]
    for bad in ("0.2,0.2", "a,b,c,d,e", "count=1,foo=2", "-1,1,1,1,1", "0,0,0,0,0"):
        monkeypatch.setenv("MCR_REWARD_WEIGHTS", bad)
        with pytest.raises(ValueError, match="MCR_REWARD_WEIGHTS"):
            GMNERReward()
    monkeypatch.delenv("MCR_REWARD_WEIGHTS")
    # sigma: a box with IoU 0.75 against the gold (model space) scores 0.5 at sigma 0.5, 2/3 at 0.25
    g = [Entity("A", "PER", ((0, 0, 400, 200),))]
    gm = in_model_space(g)[0].box                       # (0, 0, 123, 56)
    pred_box = (0, 0, gm[2] * 0.75, gm[3])
    text, _ = render_answer([Entity("A", "PER", pred_box)], "r")
    kw = grpo_kwargs(1, gold=gold_json(g))
    assert GMNERIoUReward()([text], **kw) == [pytest.approx(0.5)]
    monkeypatch.setenv("MCR_IOU_SIGMA", "0.25")
    assert GMNERIoUReward()([text], **kw) == [pytest.approx((0.75 - 0.25) / 0.75)]
    monkeypatch.setenv("MCR_IOU_SIGMA", "1.5")
    with pytest.raises(ValueError, match="MCR_IOU_SIGMA"):
        GMNERIoUReward()


def test_malformed_gold_scores_zero_and_warns_once(caplog):
    good, _ = render_answer(in_model_space(GOLD), "r")
    golds = [gold_json(), "not json", None, '{"entity": "x"}', '[{"entity": "x"}]', '[1, 2]', gold_json()]
    kwargs = grpo_kwargs(len(golds))
    kwargs["mcr_gold"] = golds
    with caplog.at_level(logging.WARNING, logger="mcr_swift.core.rewards"):
        out = GMNERReward()([good] * len(golds), **kwargs)
        out2 = GMNERIoUReward()([good] * len(golds), **kwargs)
    assert out == [1.0, 0.0, 0.0, 0.0, 0.0, 0.0, 1.0]
    assert out2 == [1.0, 0.0, 0.0, 0.0, 0.0, 0.0, 1.0]
    assert swift_rewards.malformed_rows() == 10
    assert len([r for r in caplog.records if "score 0.0" in r.getMessage()]) == 1


def test_missing_columns_and_bad_sizes():
    good, _ = render_answer(in_model_space(GOLD), "r")
    assert GMNERReward()([good, good], trainer_state=None) == [0.0, 0.0]       # no mcr_gold column
    kw = grpo_kwargs(3)
    kw["mcr_image_sizes"] = [None, [[0, 5]], "[[1000, 500]]"]
    assert GMNERReward()([good] * 3, **kw) == [0.0, 0.0, 1.0]
    # a gold without boxes does not need the size
    no_box = [Entity("NBA", "ORG")]
    text, _ = render_answer(no_box, "r")
    kw = grpo_kwargs(1, gold=gold_json(no_box))
    kw["mcr_image_sizes"] = [None]
    assert GMNERReward()([text], **kw) == [1.0]


def test_odd_completions_never_raise():
    odd = [None, "", "junk", 12, b"<answer>[]</answer>", [], [{"role": "assistant", "content": None}],
           [{"role": "assistant", "content": [{"type": "text", "text": "<answer>[]</answer>"}]}],
           {"role": "assistant", "content": "x"}, "<answer>" + "[" * 100000]
    kw = grpo_kwargs(len(odd))
    for cls in (*TERM_CLASSES.values(), GMNERReward, GMNERFormatReward, GMNERF1Reward):
        out = cls()(odd, **kw)
        assert len(out) == len(odd) and all(0.0 <= v <= 1.0 for v in out)


def test_empty_gold_and_empty_answer():
    kw = grpo_kwargs(3, gold="[]")
    out = GMNERReward()(["<think>x</think>\n<answer>\n[]\n</answer>", "<answer>None</answer>",
                         '<answer>[{"entity": "NBA", "type": "ORG", "bbox": null}]</answer>'], **kw)
    assert out == [1.0, 1.0, 0.0]


def test_f1_metric_reward_counts_like_the_evaluation():
    """gmner_f1 (logged with weight 0 for Fig. 4): one post's F1 as Eq. 19-24 count it."""
    gold_m = in_model_space(GOLD)
    perfect, _ = render_answer(gold_m, "r")
    # Kevin Durant right (box on the largest gold box); NBA gets a box it has not (location wrong);
    # "Oklahoma" is a wrong span: GMNER 1 correct of 3 predicted, 3 gold -> F1 = 2*1/(3+3) = 1/3;
    # MNER (MNER-MI rows: span + type) 2 correct -> 2/3
    part, _ = render_answer([gold_m[0], Entity("NBA", "ORG", ((1, 1, 50, 50),)), Entity("Oklahoma", "LOC")], "r")
    kw = grpo_kwargs(5)
    out = GMNERF1Reward()([perfect, part, "junk", "<answer>[]</answer>", None], **kw)
    assert out == [1.0, pytest.approx(1 / 3), 0.0, 0.0, 0.0]
    kw["mcr_task"] = ["mner_mi"] * 5
    assert GMNERF1Reward()([perfect, part, "junk", "<answer>[]</answer>", None], **kw)[:2] == [1.0, pytest.approx(2 / 3)]
    kw["mcr_task"] = ["grec"] * 5          # GREC is scored by N-acc / precision, not F1
    assert GMNERF1Reward()([perfect] * 5, **kw) == [None] * 5
    # nothing to find and nothing found is perfect; a row without gold scores 0 and is counted
    assert GMNERF1Reward()(["<answer>[]</answer>", part], **grpo_kwargs(2, gold="[]")) == [1.0, 0.0]
    assert GMNERF1Reward()([perfect], mcr_gold=[None], mcr_image_sizes=[[list(SIZE)]]) == [0.0]
    assert swift_rewards.malformed_rows() == 1


def test_reward_log(tmp_path, monkeypatch):
    log = tmp_path / "r.jsonl"
    monkeypatch.setenv("MCR_REWARD_LOG", str(log))
    good, _ = render_answer(in_model_space(GOLD), "r")
    GMNERReward()([good, "junk"], **grpo_kwargs(2))
    recs = [json.loads(line) for line in log.read_text().splitlines()]
    assert [(r["mcr_id"], r["reward"], r["parse_ok"]) for r in recs] == [("id0", 1.0, True), ("id1", 0.0, False)]
    assert recs[0]["completion"] == good and recs[0]["terms"]["span"] == 1.0


def test_registration_is_idempotent():
    import swift.rewards
    register_rewards()
    register_rewards()
    names = ["gmner_orm", "gmner_count", "gmner_span", "gmner_type", "gmner_iou", "gmner_entail", "gmner_format",
             "gmner_f1"]
    for name in names:
        assert swift.rewards.orms[name] is REWARD_NAMES[name]
        assert issubclass(swift.rewards.orms[name], swift.rewards.ORM)
    # ms-swift instantiates them with the trainer arguments and logs them by class name
    assert GMNERReward(args=None).__class__.__name__ == "GMNERReward"
    assert len({swift.rewards.orms[n].__name__ for n in names}) == len(names)


def test_plugin_import_registers(monkeypatch):
    monkeypatch.setenv("QWENVL_BBOX_FORMAT", "plain")  # register() sets a default; keep the env clean
    from mcr_swift.plugin.registry import register
    register()
    import swift.rewards
    assert "gmner_orm" in swift.rewards.orms


# --------------------------------------------------------------------------- junk earns nothing
JUNK = ["I refuse.", "", "x" * 5000, "<answer></answer>", "<think>no idea</think>", "<answer>[1, 2, 3]</answer>",
        "<answer>[{}]</answer>", '<answer>[{"foo": 1}]</answer>', None, [{"role": "assistant", "content": None}]]
EMPTY = ["<think>x</think>\n<answer>\n[]\n</answer>", "<answer>None</answer>", "<answer>no entities</answer>",
         '<answer>{"entities": []}</answer>']
ALL_ORMS = (GMNERReward, *TERM_CLASSES.values(), GMNERF1Reward, GMNERFormatReward)


def _no_entity_posts(data_v2):
    from mcr_swift.data.twitter import load_twitter_gmner
    samples = load_twitter_gmner(data_v2, "train")
    empty = [s for s in samples if not s.entities]
    assert (len(samples), len(empty)) == (7000, 358)
    return empty


@pytest.mark.parametrize("unmatched", ["drop", "zero"])
def test_junk_scores_zero_on_the_358_no_entity_train_posts(data_v2, monkeypatch, unmatched):
    """Every registered ORM pays 0 for text with no parseable answer on each of the 358 train posts
    of Twitter-GMNER v2 with no gold entity; a well-formed empty answer there earns 1."""
    monkeypatch.setenv("MCR_UNMATCHED", unmatched)
    posts = _no_entity_posts(data_v2)
    n = len(posts)
    kw = {"mcr_gold": ["[]"] * n, "mcr_image_sizes": [[[640, 480]]] * n, "mcr_id": [p.id for p in posts],
          "mcr_task": ["gmner"] * n, "mcr_sentence": [" ".join(p.tokens) for p in posts]}
    for junk in JUNK:
        for cls in ALL_ORMS:
            out = cls()([junk] * n, **kw)
            assert out == [0.0] * n, (cls.__name__, junk)
    for empty in EMPTY:
        assert GMNERReward()([empty] * n, **kw) == [1.0] * n
        assert GMNERF1Reward()([empty] * n, **kw) == [1.0] * n
        for cls in TERM_CLASSES.values():
            assert cls()([empty] * n, **kw) == [1.0] * n
    assert swift_rewards.malformed_rows() == 0


def test_junk_scores_zero_for_every_task():
    """MNER-MI rows with no entity and GREC no-target rows: junk 0, a well-formed empty answer 1."""
    grec_gold = json.dumps([{"entity": "the red car on the left", "type": "OTHER", "boxes": []}])
    for task, gold in (("mner_mi", "[]"), ("grec", grec_gold)):
        kw = grpo_kwargs(1, gold=gold)
        kw["mcr_task"] = [task]
        for junk in JUNK:
            assert GMNERReward()([junk], **kw) == [0.0], (task, junk)
            for cls in TERM_CLASSES.values():
                assert cls()([junk], **kw) in ([0.0], [None]), (task, cls.__name__)
        for empty in EMPTY:
            assert GMNERReward()([empty], **kw) == [1.0], (task, empty)
    assert swift_rewards.malformed_rows() == 0


def test_unmatched_reading_from_env(monkeypatch):
    """MCR_UNMATCHED switches gmner_orm between the two readings (values by hand in test_rewards)."""
    gold = [Entity("Kevin Durant", "PER"), Entity("NBA", "ORG")]
    kw = grpo_kwargs(1, gold=gold_json(gold))
    text = '<answer>[{"entity": "Durant", "type": "PER", "bbox": null}]</answer>'
    # drop: count .5, span 2/3, type 1, iou 1, entail 1; zero: .5, 1/3, .5, .5, .5
    assert GMNERReward()([text], **kw) == [pytest.approx(0.2 * (0.5 + 2 / 3 + 3))]
    monkeypatch.setenv("MCR_UNMATCHED", "zero")
    assert GMNERReward()([text], **kw) == [pytest.approx(0.2 * (0.5 + 1 / 3 + 1.5))]
    assert GMNERSpanReward()([text], **kw) == [pytest.approx(1 / 3)]
    monkeypatch.setenv("MCR_UNMATCHED", "drop")
    assert GMNERSpanReward()([text], **kw) == [pytest.approx(2 / 3)]
    monkeypatch.setenv("MCR_UNMATCHED", "nope")
    with pytest.raises(ValueError, match="MCR_UNMATCHED='nope'"):
        GMNERReward()


def test_orm_reads_its_config_once(monkeypatch):
    """The ORM reads `RewardConfig.from_env` when it is built; later changes of the environment do
    not reach it (one config object per reward, issue 17)."""
    good, _ = render_answer(in_model_space(GOLD), "r")
    orm = GMNERReward()
    monkeypatch.setenv("MCR_REWARD_WEIGHTS", "1,0,0,0,0")
    monkeypatch.setenv("MAX_PIXELS", str(28 * 28 * 4096))
    assert orm([good], **grpo_kwargs(1)) == [1.0]
    assert orm.config.space.max_pixels == MAX_PIXELS
    assert GMNERReward().config.weights == (1.0, 0.0, 0.0, 0.0, 0.0)
