"""Template MRSI styles (mcr_swift.synth.styles): round trip on the whole train split, determinism,
diversity, rows that ms-swift accepts."""
from __future__ import annotations

import json
import re
from collections import Counter

import pytest

from mcr_swift.core.answer import BBOX_PLACEHOLDER, pick_box
from mcr_swift.core.parser import parse_answer
from mcr_swift.prompts import load_prompt
from mcr_swift.plugin.registry import validate_jsonl
from mcr_swift.synth.styles import TEMPLATE_STYLES, step_order, template_chain, template_row
from mcr_swift.data.twitter import load_twitter_gmner
from mcr_swift.core.entities import Entity, Sample


@pytest.fixture(scope="module")
def train(data_v2):
    samples = load_twitter_gmner(data_v2, "train")
    assert len(samples) == 7000
    return samples


def _fill(text, boxes):
    parts = text.split(BBOX_PLACEHOLDER)
    assert len(parts) - 1 == len(boxes)
    out = [parts[0]]
    for b, p in zip(boxes, parts[1:]):
        out.append("[" + ", ".join(str(int(v)) if float(v).is_integer() else repr(v) for v in b) + "]")
        out.append(p)
    return "".join(out)


def _key(text, etype, box):
    return (text, etype, None if box is None else tuple(float(v) for v in box))


def _think(text):
    return text[text.index("<think>") + 7:text.index("</think>")]


def _ngrams(text, n=4):
    w = text.split()
    return {tuple(w[i:i + n]) for i in range(len(w) - n + 1)}


def test_round_trip_whole_train_split(train):
    for s in train:
        gold = Counter(_key(e.text, e.type, pick_box(e.boxes)) for e in s.entities)
        for style in TEMPLATE_STYLES:
            text, boxes = template_chain(s, style, seed=0)
            assert text.startswith("<think>\n") and text.endswith("</answer>")
            assert text.count("<think>") == 1 and text.count("<answer>") == 1
            res = parse_answer(_fill(text, boxes))
            assert res.ok and res.dropped == 0 and res.repaired == 0, (s.id, style, text)
            got = Counter(_key(e.text, e.type, e.box) for e in res.entities)
            assert got == gold, (s.id, style, text)
            # every located entity is boxed in the grounding step and in the answer
            assert len(boxes) == 2 * sum(1 for e in s.entities if e.boxes)


def test_determinism_and_seed(train):
    sub = train[:300]
    for style in TEMPLATE_STYLES:
        a = [template_chain(s, style, seed=0) for s in sub]
        b = [template_chain(s, style, seed=0) for s in sub]
        c = [template_chain(s, style, seed=1) for s in sub]
        assert a == b
        assert sum(x[0] != y[0] for x, y in zip(a, c)) > 100


def test_unknown_style():
    with pytest.raises(ValueError):
        template_chain(Sample("1", ("a",)), "nope")


def test_diversity_on_train(train):
    orders = {st: Counter() for st in TEMPLATE_STYLES}
    answer_orders = Counter()
    jac, own = [], {st: [0, 0] for st in TEMPLATE_STYLES}
    multi = [s for s in train if len(s.entities) >= 2]
    for s in train:
        thinks = {}
        for st in TEMPLATE_STYLES:
            text, _ = template_chain(s, st, seed=0)
            orders[st][step_order(s, st, seed=0)] += 1
            thinks[st] = _think(text)
            words = thinks[st].split()
            own[st][0] += len(_ngrams(thinks[st]))
            own[st][1] += max(0, len(words) - 3)
        g1, g2 = _ngrams(thinks["formatted_a"]), _ngrams(thinks["formatted_b"])
        if g1 | g2:
            jac.append(len(g1 & g2) / len(g1 | g2))
    for s in multi:
        text, _ = template_chain(s, "formatted_b", seed=0)
        ans = text[text.index("<answer>"):]
        answer_orders[tuple(re.findall(r'"(entity|type|bbox)"', ans)[:3])] += 1
    mean_jac = sum(jac) / len(jac)
    print()
    for st in TEMPLATE_STYLES:
        print(f"{st}: {len(orders[st])} distinct step orders; distinct-4-gram ratio within posts "
              f"{own[st][0] / own[st][1]:.3f}; top orders {orders[st].most_common(3)}")
    print(f"mean 4-gram Jaccard between formatted_a and formatted_b reasoning: {mean_jac:.3f}")
    print(f"formatted_b answer key orders: {len(answer_orders)} distinct {dict(answer_orders)}")
    assert len(orders["formatted_a"]) == 3
    assert min(orders["formatted_a"].values()) > 1500      # each allowed order ~1/3 of 7000
    assert len(orders["formatted_b"]) >= 20
    assert len(answer_orders) == 6
    assert mean_jac < 0.2


def test_triple_order_varies(train):
    multi = [s for s in train if len(s.entities) >= 3][:200]
    changed = 0
    for s in multi:
        res = parse_answer(_fill(*template_chain(s, "formatted_a", seed=0)))
        changed += [e.text for e in res.entities] != [e.text for e in s.entities]
    assert changed > len(multi) // 2


def test_template_row_validates(tmp_path):
    s = Sample("42", ("Lady", "Gaga", "in", "Paris", "with", "Lady", "Gaga"),
               entities=(Entity("Lady Gaga", "PER", ((1, 2, 30, 40), (0, 0, 100, 100))),
                         Entity("Paris", "LOC")),
               images=("/abs/42.jpg",), image_sizes=((200, 150),))
    for style in TEMPLATE_STYLES:
        row = template_row(s, style, seed=3)
        assert row["mcr_style"] == style and row["mcr_id"] == "42"
        text = row["messages"][-1]["content"]
        assert text.count("<bbox>") == len(row["objects"]["bbox"]) == 2
        assert row["objects"]["bbox"] == [[0.0, 0.0, 100.0, 100.0]] * 2   # largest box
        assert row["objects"]["ref"] == ["Lady Gaga", "Lady Gaga"]
        path = tmp_path / f"{style}.jsonl"
        path.write_text(json.dumps(row) + "\n", encoding="utf-8")
        assert validate_jsonl(path) == 1
    row = template_row(s, "formatted_a", multi_box="first")
    assert row["objects"]["bbox"][0] == [1.0, 2.0, 30.0, 40.0]


def test_style_prompts_exist():
    for name in ("formatted_a", "formatted_b", "llm_qa", "llm_conclusions", "mllm_distill"):
        text = load_prompt(f"style_{name}")
        assert "{sentence}" in text and "{gold_json}" in text
        filled = text.replace("{sentence}", "S").replace("{gold_json}", "[]")
        assert "{sentence}" not in filled and "<answer>" in filled
    assert "image" in load_prompt("style_mllm_distill")
