"""CVO sampling filter (App. D.3): the keep rule by hand, and the command against a scripted server
whose groups have known rewards (k exact answers scoring 1.0, G-k empty answers scoring 0.0)."""
from __future__ import annotations

import json
import math

import pytest

from mcr_swift.core.answer import render_answer
from mcr_swift.endpoint import Endpoint
from mcr_swift.core.coords import CoordinateSpace
from mcr_swift.synth.cvo_filter import (FilterThresholds, decide, distribution, filter_d2, format_summary, group_stats,
    main as filter_main)
from mcr_swift.jsonl import iter_jsonl
from mcr_swift.core.columns import gold_from_row
from mcr_swift.core.entities import Entity
from tests._fake_openai import FakeOpenAI, image_parts, prompt_text
from tests.conftest import TINY_MAX_PIXELS


@pytest.mark.parametrize("rewards,fails", [
    ([1, 1, 0, 0, 0, 0, 0, 0], ["median_low"]),          # std .433, max 1, median 0
    ([1, 1, 1, 1, 0, 0, 0, 0], []),                      # std .5, median .5: kept
    ([1, 1, 1, 1, 1, 0, 0, 0], ["median_high"]),         # median 1
    ([0.5] * 8, ["std", "max"]),                         # no spread, max .5 (median .5 is fine)
    ([0.0] * 8, ["std", "max", "median_low"]),
    ([0.9, 0.7, 0.7, 0.7, 0.6, 0.6, 0.6, 0.5], ["median_high"]),  # median .65
    ([0.8, 0.6, 0.6, 0.3, 0.2, 0.08, 0.08, 0.08], []),   # median exactly .25, max exactly .8
])
def test_keep_rule(rewards, fails):
    assert decide(group_stats(rewards)) == fails


def test_thresholds_are_inclusive_and_configurable():
    # exactly at the App. D.3 limits: std .1, max .8, median .08 / .6 are kept
    assert decide({"std": 0.1, "max": 0.8, "median": 0.08}) == []
    assert decide({"std": 0.1, "max": 0.8, "median": 0.6}) == []
    assert decide({"std": 0.0999, "max": 0.7999, "median": 0.6001}) == ["std", "max", "median_high"]
    loose = FilterThresholds(0, 0, 0, 1)
    assert decide({"std": 0.0, "max": 0.0, "median": 0.0}, loose) == []


def test_group_stats_by_hand():
    s = group_stats([1, 0, 0, 1])
    assert s == {"std": 0.5, "max": 1.0, "median": 0.5}
    assert math.isclose(group_stats([1, 0, 0, 1], ddof=1)["std"], math.sqrt(1 / 3))
    assert group_stats([]) == {"std": 0.0, "max": 0.0, "median": 0.0}
    d = distribution([0.0, 0.25, 0.5, 1.0])
    assert d["n"] == 4 and d["min"] == 0 and d["max"] == 1 and d["p50"] == 0.375
    assert d["histogram"]["counts"] == [1, 0, 1, 0, 0, 1, 0, 0, 0, 1]


G = 8
#: post position -> number of exact answers (reward 1) in its group of 8; the rest score 0
K = [0, 2, 4, 5, 8, 3]


def _exact(row, space):
    size = tuple(row["mcr_image_sizes"][0])
    gold = [Entity(e.text, e.type, tuple(space.to_model(b, size) for b in e.boxes[:1])) for e in gold_from_row(row)]
    return render_answer(gold, "exact")[0]


@pytest.fixture()
def d2(prepared):
    """Six posts with at least one entity, each as two D2 rows (two styles), as `split` writes them."""
    rows = [r for _, r, _ in iter_jsonl(prepared / "twitter_gmner" / "train.jsonl")]
    rows = [r for r in rows if gold_from_row(r)][:6]
    out = []
    for r in rows:
        for style in ("formatted_a", "llm_qa"):
            out.append({**r, "mcr_style": style})
    return out


def _server(d2, space, ignore_n=False):
    posts = [r for i, r in enumerate(d2) if i % 2 == 0]
    exact = {r["mcr_sentence"]: (_exact(r, space), K[i]) for i, r in enumerate(posts)}
    served = {}

    def answer(body):
        text = prompt_text(body)
        sent = next(s for s in exact if f"Sentence: {s}" in text)
        good, k = exact[sent]
        group = [good] * k + ["<think>none</think>\n<answer>\n[]\n</answer>"] * (G - k)
        n = 1 if ignore_n else body.get("n", 1)
        start = served.get(sent, 0)
        served[sent] = start + n
        return group[start:start + n]
    return FakeOpenAI(answer)


def test_filter_against_scripted_server(d2, tmp_path, monkeypatch):
    monkeypatch.setenv("MAX_PIXELS", str(TINY_MAX_PIXELS))
    space = CoordinateSpace.from_env()
    # by hand: k=0 fails std/max/median_low; k=2, k=3 median 0 < .08; k=4 median .5, std .5: kept;
    # k=5 median 1 > .6; k=8 std 0 and median 1
    keep = {0: False, 1: False, 2: True, 3: False, 4: False, 5: False}
    with _server(d2, space) as fake:
        out = tmp_path / "d2_filtered.jsonl"
        s = filter_d2(d2, out, Endpoint(fake.base_url, "fake-model"), g=G, concurrency=2, progress=False)
        assert len(fake.requests) == 6  # one request of n=8 per post; the style duplicates merged
        body = fake.requests[0]
        assert (body["n"], body["temperature"], body["top_k"], body["top_p"]) == (8, 1.5, 200, 0.95)  # App. E.4
        assert len(image_parts(body)) == 1 and len(body["messages"]) == 1  # user turn only, image inline
    assert (s["queries"], s["rows_merged_by_post"], s["scored"]) == (6, 6, 6)
    assert s["kept"] == sum(keep.values()) == 1 and s["kept_fraction"] == pytest.approx(1 / 6)
    stats = [json.loads(l) for l in (tmp_path / "d2_filtered.jsonl.stats.jsonl").read_text().splitlines()]
    for i, rec in enumerate(stats):
        assert rec["rewards"] == [1.0] * K[i] + [0.0] * (G - K[i])  # the exact answer scores 1 in model space
        assert rec["kept"] == keep[i]
    assert s["dropped_by_test"] == {"std": 2, "max": 1, "median_low": 3, "median_high": 2}
    kept = [r for _, r, _ in iter_jsonl(out)]
    assert [r["mcr_id"] for r in kept] == [stats[2]["mcr_id"]]
    assert [m["role"] for m in kept[0]["messages"]] == ["user"] and "mcr_style" not in kept[0]
    assert s["distribution"]["max"]["n"] == 6 and s["distribution"]["max"]["histogram"]["counts"][-1] == 5


def test_servers_that_ignore_n_are_asked_again(d2, tmp_path, monkeypatch):
    monkeypatch.setenv("MAX_PIXELS", str(TINY_MAX_PIXELS))
    with _server(d2[:4], CoordinateSpace.from_env(), ignore_n=True) as fake:
        s = filter_d2(d2[:4], tmp_path / "f.jsonl", Endpoint(fake.base_url, "fake-model"), g=4, concurrency=1,
                      progress=False)
        assert len(fake.requests) == 2 * 4 and s["scored"] == 2


def test_cli_resume_and_errors(d2, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("MAX_PIXELS", "1")  # overridden by the flag below
    src = tmp_path / "d2.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in d2))
    argv = ["--input", str(src), "--out", str(tmp_path / "f.jsonl"), "--model", "fake-model", "--no-progress",
            "--max-pixels", str(TINY_MAX_PIXELS), "--min-std", "0", "--min-max", "0", "--min-median", "0",
            "--max-median", "1"]
    with _server(d2, CoordinateSpace("qwen2_5_vl", max_pixels=TINY_MAX_PIXELS)) as fake:
        assert filter_main(argv + ["--base-url", fake.base_url]) == 0
        assert len([l for l in (tmp_path / "f.jsonl").read_text().splitlines()]) == 6  # loose thresholds keep all
        assert filter_main(argv + ["--base-url", fake.base_url]) == 0
        assert len(fake.requests) == 6  # second run: all cached
    assert "kept 6 queries" in capsys.readouterr().out
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"mcr_id": "1", "messages": []}) + "\n")
    assert filter_main(["--input", str(bad), "--out", str(tmp_path / "x.jsonl"), "--base-url", "http://127.0.0.1:9/v1",
                        "--model", "m"]) == 2
    assert "row 1 (mcr_id '1'): no 'mcr_gold'" in capsys.readouterr().err


def test_filter_pays_nothing_for_junk_on_no_entity_posts(prepared, tmp_path, monkeypatch):
    """App. D.3 scores with gmner_orm itself: on the two no-entity posts of the prepared train rows,
    junk earns 0 and a well-formed empty answer 1, so a group of 4 + 4 is kept (std .5, max 1,
    median .5) and a group of 8 junk answers is dropped (std 0, max 0, median 0)."""
    monkeypatch.setenv("MAX_PIXELS", str(TINY_MAX_PIXELS))
    rows = [r for _, r, _ in iter_jsonl(prepared / "twitter_gmner" / "train.jsonl")]
    empty = [r for r in rows if not gold_from_row(r)]
    assert len(empty) == 2  # posts 5 and 7 of the v2 train split have no entity
    junk = ["I refuse.", "", "x" * 5000, "<answer></answer>"]
    groups = {empty[0]["mcr_sentence"]: ["<think>none</think>\n<answer>\n[]\n</answer>"] * 4 + junk,
              empty[1]["mcr_sentence"]: junk * 2}

    def answer(body):
        text = prompt_text(body)
        return groups[next(s for s in groups if f"Sentence: {s}" in text)][:body.get("n", 1)]
    with FakeOpenAI(answer) as fake:
        s = filter_d2(empty, tmp_path / "f.jsonl", Endpoint(fake.base_url, "fake-model"), g=G, concurrency=1,
                      progress=False)
    stats = {json.loads(l)["mcr_id"]: json.loads(l) for l in (tmp_path / "f.jsonl.stats.jsonl").read_text().splitlines()}
    first, second = stats[empty[0]["mcr_id"]], stats[empty[1]["mcr_id"]]
    assert first["rewards"] == [1.0] * 4 + [0.0] * 4 and first["kept"] is True
    assert second["rewards"] == [0.0] * 8 and second["kept"] is False
    assert s["kept"] == 1
    assert s["unscorable_rollouts"] == 0 and s["unscorable_reasons"] == {}


def test_unscorable_rollouts_score_zero_and_are_counted(d2, tmp_path, monkeypatch):
    """A query whose gold cannot be read scores 0.0 per rollout, as in GRPO, and the summary counts
    those rollouts with the reason (`mcr_swift.core.scoring.score_row`)."""
    monkeypatch.setenv("MAX_PIXELS", str(TINY_MAX_PIXELS))
    rows = [{**r, "mcr_gold": "[1, 2]"} for r in d2[:2]]   # one post, two styles
    with _server(d2[:2], CoordinateSpace.from_env()) as fake:
        s = filter_d2(rows, tmp_path / "f.jsonl", Endpoint(fake.base_url, "fake-model"), g=4, concurrency=1,
                      progress=False)
    stats = [json.loads(l) for l in (tmp_path / "f.jsonl.stats.jsonl").read_text().splitlines()]
    assert stats[0]["rewards"] == [0.0] * 4 and s["kept"] == 0
    assert s["unscorable_rollouts"] == 4
    assert len(s["unscorable_reasons"]) == 1 and list(s["unscorable_reasons"])[0].startswith("unusable row (")
    assert "unscorable rollouts (scored 0.0): 4" in format_summary(s)
