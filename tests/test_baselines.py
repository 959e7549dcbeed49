"""The Table 1 end-to-end prompting baselines (``mcr-swift baselines``): demonstration choice by hand,
demonstration answers in each coordinate space, the exact requests of CoT+3-shot against a scripted
endpoint, scoring of the written rows by ``mcr-swift evaluate``, resume and bounded concurrency, clear
errors, and one end-to-end run against ``swift deploy`` of the tiny model."""
from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest

from mcr_swift.endpoint import image_data_url
from mcr_swift.evaluation.baselines import demo_answer, instruction, main as baselines_main, select_demos
from mcr_swift.core.coords import CoordinateSpace
from mcr_swift.evaluation.evaluate import evaluate_file
from mcr_swift.jsonl import iter_jsonl
from mcr_swift.core.columns import gold_from_row
from mcr_swift.data.rows import sample_from_row
from mcr_swift.core.entities import Entity, Sample
from tests._fake_openai import FakeOpenAI, image_parts, prompt_text
from tests.conftest import REPO, TINY_MAX_PIXELS

SPACE = CoordinateSpace("qwen2_5_vl", max_pixels=TINY_MAX_PIXELS)


def _s(pid, *kinds, size=(640, 480)):
    ents = [Entity(f"E{i}", "PER", ((64, 48, 320, 240),) if k == "loc" else ()) for i, k in enumerate(kinds)]
    return Sample(pid, ["E0", "and", "E1"], ents, [f"/img/{pid}.jpg"], [size])


def _rows(prepared, split, n=None):
    return [r for _, r, _ in iter_jsonl(prepared / "twitter_gmner" / f"{split}.jsonl")][:n]


# --------------------------------------------------------------------------- demonstrations
def test_demonstrations_are_seeded_and_cover_located_and_unlocated():
    # only D has an unlocated entity, E has no entity: every draw must take D and never E
    cands = [_s("A", "loc"), _s("B", "loc"), _s("C", "loc"), _s("D", "unloc"), _s("E")]
    draws = {s: [d.id for d in select_demos(cands, 3, s)] for s in range(20)}
    assert all(len(v) == 3 and "D" in v and "E" not in v for v in draws.values())
    assert draws[0] == [d.id for d in select_demos(cands, 3, 0)]  # fixed per seed
    assert len({tuple(v) for v in draws.values()}) > 1  # and the seed matters
    assert all("A" not in [d.id for d in select_demos(cands, 3, s, exclude=["A"])] for s in range(10))
    # nothing unlocated to cover: still three located posts, no error
    assert len(select_demos(cands[:3], 3, 1)) == 3 and len(select_demos(cands[:2], 3, 1)) == 2


def test_demonstrations_on_the_shared_train_split(prepared):
    train = [sample_from_row(r) for r in _rows(prepared, "train")]
    for seed in range(5):
        demos = select_demos(train, 3, seed)
        kinds = {bool(e.boxes) for d in demos for e in d.entities}
        assert len(demos) == 3 and kinds == {True, False} and all(d.entities for d in demos)


def test_demo_answer_in_model_original_and_norm1000_space():
    s = Sample("X", ["Kevin", "Durant", "at", "MSG"],
               [Entity("Kevin Durant", "PER", ((10, 10, 20, 20), (64, 48, 320, 240))), Entity("MSG", "LOC")],
               ["/x.jpg"], [(640, 480)])
    # 640x480 under MAX_PIXELS 50176: smart resize to 252x168; the larger box (64,48,320,240) becomes
    # (64*252/640, 48*168/480, 320*252/640, 240*168/480) = (25.2, 16.8, 126, 84) -> rounded
    model = demo_answer(s, False, SPACE)
    assert model == ('<answer>\n[{"entity": "Kevin Durant", "type": "PER", "bbox": [25, 17, 126, 84]}, '
                     '{"entity": "MSG", "type": "LOC", "bbox": null}]\n</answer>')
    assert '"bbox": [64, 48, 320, 240]' in demo_answer(s, False, None)  # original pixels
    assert '"bbox": [100, 100, 500, 500]' in demo_answer(s, False, CoordinateSpace("qwen2_vl"))
    assert '"bbox": [10, 10, 20, 20]' in demo_answer(s, False, None, multi_box="first")
    cot = demo_answer(s, True, SPACE)
    # a plain chain of thought, not MCR's constraint walk (issue 21 §5: no method leak into the baseline)
    assert cot == ('<think>\n"Kevin Durant" is a person. The image shows it, so I give its box. "MSG" is a '
                   'location. The image does not show it.\n</think>\n' + model)
    for word in ("recognition", "Type classification", "entailment", "grounding", "constraint"):
        assert word.lower() not in cot.lower()
    empty = Sample("Y", ["hello"], [], ["/y.jpg"], [(64, 64)])
    assert demo_answer(empty, True, SPACE).startswith("<think>\nI read the sentence and find no name")
    # the original-pixel prompt tells the model the image size; the model-space one the family's line
    assert "640 pixels wide and 480 pixels high" in instruction("baseline_cot", None, (640, 480))
    assert "as you see it" in instruction("baseline_cot", SPACE, (640, 480))
    assert "0-1000 grid" in instruction("baseline_direct", CoordinateSpace("qwen3_vl"), (640, 480))


# --------------------------------------------------------------------------- against a scripted endpoint
def _perfect(row):
    """The gold answer of a row in SPACE (what a perfect Qwen2.5-VL would write)."""
    size = tuple(row["mcr_image_sizes"][0])
    items = []
    for e in gold_from_row(row):
        box = max(e.boxes, key=lambda b: (b[2] - b[0]) * (b[3] - b[1])) if e.boxes else None
        items.append({"entity": e.text, "type": e.type, "bbox": list(SPACE.to_model(box, size)) if box else None})
    return "<think>ok</think>\n<answer>\n" + json.dumps(items) + "\n</answer>"


def _last_sentence(body):
    return prompt_text(body).rsplit("Sentence: ", 1)[1]


def _args(inp, out, url, *extra):
    return ["--input", str(inp), "--out", str(out), "--base-url", url, "--max-pixels", str(TINY_MAX_PIXELS),
            "--no-progress", "--retries", "0", *extra]


def test_cot_3shot_requests_results_and_evaluate(prepared, tmp_path, capsys):
    rows = _rows(prepared, "test", 6)
    inp = tmp_path / "test.jsonl"
    inp.write_text("".join(json.dumps(r) + "\n" for r in rows))
    by_sentence = {r["mcr_sentence"]: i for i, r in enumerate(rows)}

    def answer(body):  # posts 0-3 perfect, 4 unparseable prose, 5 an empty list
        i = by_sentence[_last_sentence(body)]
        return [_perfect(rows[i]) if i < 4 else ("I cannot tell." if i == 4 else "<answer>[]</answer>")]
    out = tmp_path / "cot3.jsonl"
    with FakeOpenAI(answer) as fake:
        rc = baselines_main(["--method", "cot_3shot", "--train", str(prepared / "twitter_gmner" / "train.jsonl"),
                             *_args(inp, out, fake.base_url)])
        assert rc == 0, capsys.readouterr().err
        reqs = fake.requests
    summary = json.loads(out.with_name("cot3.jsonl.summary.json").read_text())
    train = {r["mcr_id"]: r for r in _rows(prepared, "train")}
    demo_ids = [d["mcr_id"] for d in summary["demos"]]
    demos = [sample_from_row(train[i]) for i in demo_ids]
    assert summary["shots"] == 3 and summary["demo_coverage"] == ["located", "unlocated"]
    assert len(reqs) == 6 and summary["requests"]["done"] == 6
    for body in reqs:  # the same 3 demonstrations, each with its image and its gold answer, then the post
        msgs = body["messages"]
        assert [m["role"] for m in msgs] == ["user", "assistant"] * 3 + ["user"]
        assert [msgs[2 * k + 1]["content"] for k in range(3)] == [demo_answer(d, True, SPACE) for d in demos]
        urls = image_parts(body)
        post = rows[by_sentence[_last_sentence(body)]]
        assert urls == [image_data_url(d.image) for d in demos] + [image_data_url(post["images"][0])]
        assert body["temperature"] == 0 and body["max_tokens"] == 2048 and body["seed"] == 0
    # rows: gold columns kept, entities in original pixels, raw text never lost
    got = [r for _, r, _ in iter_jsonl(out)]
    assert [r["mcr_id"] for r in got] == [r["mcr_id"] for r in rows]
    assert all(r["mcr_gold"] == s["mcr_gold"] and r["mcr_baseline"]["demos"] == demo_ids for r, s in zip(got, rows))
    assert [r["parse_ok"] for r in got] == [True] * 4 + [False, True]
    assert got[4]["raw"] == "I cannot tell." and got[4]["entities"] == [] and summary["parse_failures"] == 1
    for r, row in zip(got[:4], rows[:4]):
        size = tuple(row["mcr_image_sizes"][0])
        for e, g in zip(r["entities"], gold_from_row(row)):
            assert (e["entity"], e["type"]) == (g.text, g.type)
            if g.boxes:  # model space and back: within the rounding of one model pixel
                big = max(g.boxes, key=lambda b: (b[2] - b[0]) * (b[3] - b[1]))
                tol = size[0] / SPACE.resized_size(*size)[0]
                assert all(abs(a - b) <= tol for a, b in zip(e["bbox"], big))
            else:
                assert e["bbox"] is None
    # evaluate reads the rows with no --gold and no resize flags: precision 1, recall = gold of posts 0-3 / all
    rep = evaluate_file(out, space=CoordinateSpace("qwen2_vl"))  # a wrong space must not matter
    gold_n = [len(gold_from_row(r)) for r in rows]
    m = rep["metrics"]["gmner"]
    assert rep["posts"] == 6 and m["gold"] == sum(gold_n)
    assert rep["parse_failures"] == summary["parse_failures"] == 1   # the row with parse_ok false is counted
    assert (m["correct"], m["predicted"]) == (sum(gold_n[:4]), sum(gold_n[:4]))
    assert m["recall"] == pytest.approx(sum(gold_n[:4]) / sum(gold_n))
    cli = subprocess.run([sys.executable, "-m", "mcr_swift.cli", "evaluate", str(out), "--no-progress"], cwd=REPO,
                         capture_output=True, text=True, timeout=120)
    assert cli.returncode == 0 and "cot3.jsonl" in cli.stdout


def test_direct_with_original_box_space(prepared, tmp_path, capsys):
    rows = _rows(prepared, "test", 2)
    inp = tmp_path / "t.jsonl"
    inp.write_text("".join(json.dumps(r) + "\n" for r in rows))
    answer = '[{"entity": "X", "type": "ORG", "bbox": [64, 48, 320, 240]}]'  # a bare list, no tags
    with FakeOpenAI(lambda b: [answer]) as fake:
        assert baselines_main(["--method", "direct", "--box-space", "original",
                               *_args(inp, tmp_path / "d.jsonl", fake.base_url)]) == 0
        reqs = fake.requests
    by_sentence = {r["mcr_sentence"]: r for r in rows}
    for body in reqs:  # one turn: the post's image, the direct prompt with that image's size, the sentence
        row = by_sentence[_last_sentence(body)]
        assert len(body["messages"]) == 1 and image_parts(body) == [image_data_url(row["images"][0])]
        expected = instruction("baseline_direct", None, tuple(row["mcr_image_sizes"][0]))
        assert prompt_text(body) == f"{expected}\n\nSentence: {row['mcr_sentence']}"
    for _, row, _ in iter_jsonl(tmp_path / "d.jsonl"):
        w, h = by_sentence[row["mcr_sentence"]]["mcr_image_sizes"][0]
        # boxes are already original pixels: kept (clamped to the image), not rescaled
        assert row["entities"] == [{"entity": "X", "type": "ORG", "bbox": [64, 48, min(320, w), min(240, h)]}]
        assert row["mcr_baseline"]["box_space"] == "original"
    texts = [prompt_text(b) for b in reqs]
    assert all("<think>" not in t for t in texts)


def test_failed_requests_resume_without_resending_and_concurrency_is_bounded(prepared, tmp_path, capsys):
    rows = _rows(prepared, "test", 6)
    inp = tmp_path / "t.jsonl"
    inp.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "c.jsonl"
    args = ["--method", "cot", *_args(inp, out, "URL"), "--concurrency", "2"]
    with FakeOpenAI(lambda b: ["<answer>[]</answer>"], fail_first=2, fail_status=503, delay=0.2) as fake:
        args[args.index("URL")] = fake.base_url
        assert baselines_main(args) == 3
        err = capsys.readouterr().err
        assert "re-run the same command to resume" in err and "503" in err and not out.exists()
        s1 = json.loads(out.with_name("c.jsonl.summary.json").read_text())
        assert (s1["requests"]["done"], s1["requests"]["failed"], s1["complete"]) == (4, 2, False)
        assert fake.peak == 2
        assert baselines_main(args) == 0
        s2 = json.loads(out.with_name("c.jsonl.summary.json").read_text())
        assert (s2["requests"]["cached"], s2["requests"]["done"]) == (4, 2)  # nothing paid twice
        assert len(fake.requests) == 6
    keys = [json.loads(l)["key"] for l in out.with_name("c.jsonl.cache.jsonl").read_text().splitlines()]
    assert len(keys) == len(set(keys)) == 6 and len(out.read_text().splitlines()) == 6


def test_bad_input_is_named(prepared, tmp_path, capsys):
    rows = _rows(prepared, "test", 3)
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps(rows[0]) + "\n" + json.dumps({**rows[1], "images": ["/nowhere/x.jpg"]}) + "\n")
    assert baselines_main(["--method", "direct", *_args(bad, tmp_path / "o.jsonl", "http://127.0.0.1:9/v1")]) == 2
    assert f"{bad}:2: image /nowhere/x.jpg not found" in capsys.readouterr().err
    bad.write_text(json.dumps({**rows[0], "mcr_task": "grec"}) + "\n")
    assert baselines_main(["--method", "direct", *_args(bad, tmp_path / "o.jsonl", "http://127.0.0.1:9/v1")]) == 2
    assert f"{bad}:1: mcr_task 'grec'" in capsys.readouterr().err
    ok = tmp_path / "ok.jsonl"
    ok.write_text(json.dumps(rows[0]) + "\n")
    assert baselines_main(["--method", "cot_3shot", *_args(ok, tmp_path / "o.jsonl", "http://127.0.0.1:9/v1")]) == 2
    assert f"{tmp_path / 'train.jsonl'}: no train split" in capsys.readouterr().err
    # nothing listens on port 9: the endpoint is named
    assert baselines_main(["--method", "direct", *_args(ok, tmp_path / "o.jsonl", "http://127.0.0.1:9/v1")]) == 2
    assert "cannot list the models of http://127.0.0.1:9/v1" in capsys.readouterr().err


# --------------------------------------------------------------------------- swift deploy of the tiny model
@pytest.fixture(scope="module")
def server(tiny_model, tmp_path_factory):
    from tests._deploy import SwiftDeploy
    with SwiftDeploy(tiny_model, tmp_path_factory.mktemp("deploy"), max_new_tokens=16) as s:
        yield s


@pytest.mark.swift
def test_baselines_on_swift_deploy(server, prepared, tmp_path):
    inp = prepared / "twitter_gmner" / "test.jsonl"
    walls, summaries = {}, {}
    for method in ("cot", "cot_3shot"):
        out = tmp_path / f"{method}.jsonl"
        t = time.time()
        r = subprocess.run([sys.executable, "-m", "mcr_swift.cli", "baselines", "--method", method,
                            *_args(inp, out, server.base_url), "--limit", "4", "--max-tokens", "16",
                            "--concurrency", "2"], cwd=REPO, capture_output=True, text=True, timeout=600)
        walls[method] = time.time() - t
        assert r.returncode == 0, r.stderr[-3000:]
        summaries[method] = s = json.loads(out.with_name(f"{method}.jsonl.summary.json").read_text())
        assert s["answered"] == 4 and s["requests"]["done"] == 4 and s["endpoint"]["model"] == "tiny"
        got = [row for _, row, _ in iter_jsonl(out)]
        # a random model writes no answer: every row keeps its raw text and is counted unparsed
        assert all(isinstance(g["raw"], str) and g["parse_ok"] is False for g in got)
        assert s["parse_failures"] == 4
        rep = evaluate_file(out)
        assert rep["posts"] == 4 and rep["metrics"]["gmner"]["predicted"] == 0
    # three more image+instruction turns per request: well over three times the prompt tokens
    assert summaries["cot_3shot"]["tokens"]["prompt"] > 3 * summaries["cot"]["tokens"]["prompt"]
    print(f"\n[baselines on swift deploy] 4 posts: cot {walls['cot']:.1f} s, cot_3shot {walls['cot_3shot']:.1f} s; "
          f"prompt tokens {summaries['cot']['tokens']['prompt']} vs {summaries['cot_3shot']['tokens']['prompt']}")
