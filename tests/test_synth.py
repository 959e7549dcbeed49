"""MRSI synthesis (Sec. 4.1 Eq. 4, App. C): chain checking by hand, and the command against a
scripted OpenAI-compatible server (accepted / repaired / rejected paths, image inline for the MLLM
style only, resume without re-sending, retries, a torn cache line)."""
from __future__ import annotations

import json

import pytest

from mcr_swift.core.answer import BBOX_PLACEHOLDER
from mcr_swift.endpoint import Endpoint, RetryPolicy
from mcr_swift.jsonl import iter_jsonl
from mcr_swift.core.parser import parse_answer
from mcr_swift.plugin.registry import validate_jsonl
from mcr_swift.core.columns import gold_from_row
from mcr_swift.synth.synthesize import check_chain, main as synth_main, synthesize
from mcr_swift.core.entities import Entity
from tests._fake_openai import FakeOpenAI, gold_in_prompt, image_parts, prompt_text

GOLD = [Entity("Kevin Durant", "PER", ((10, 20, 110, 220),)), Entity("MSG", "LOC", ())]
CHAIN = """<think>
Q1: The sentence names Kevin Durant and MSG.
Q2: Kevin Durant is a basketball player, so PER; MSG is a venue, LOC.
Q3: The photo shows Kevin Durant; MSG is not visible.
Q4: Kevin Durant is at <bbox>; MSG has no location.
</think>
<answer>
[{"entity": "MSG", "type": "LOC", "bbox": null}, {"entity": "Kevin Durant", "type": "PER", "bbox": <bbox>}]
</answer>"""


def test_accepted_chain_keeps_model_order_and_binds_boxes():
    c = check_chain(CHAIN, GOLD)
    assert (c.status, c.reason) == ("accepted", "")
    assert c.boxes == ((10, 20, 110, 220),) * 2 and c.refs == ("Kevin Durant",) * 2
    assert c.text.count(BBOX_PLACEHOLDER) == 2
    assert c.text.endswith('<answer>\n[{"entity": "MSG", "type": "LOC", "bbox": null}, '
                           '{"entity": "Kevin Durant", "type": "PER", "bbox": <bbox>}]\n</answer>')


def test_literal_gold_box_becomes_placeholder_and_stray_box_rejects():
    lit = CHAIN.replace("is at <bbox>", "is at [11, 19, 111.5, 221]")  # within 2 px of the gold box
    c = check_chain(lit, GOLD)
    assert c.status == "accepted" and c.literal_boxes == 1 and "111.5" not in c.text
    assert c.boxes[0] == (10, 20, 110, 220)
    assert check_chain(CHAIN.replace("is at <bbox>", "is at (10,20),(150,220)"), GOLD).reason == "stray_box"


@pytest.mark.parametrize("text,reason", [
    (CHAIN.replace('"LOC", "bbox": null', '"ORG", "bbox": null'), "answer_mismatch"),  # wrong type
    (CHAIN.replace('"bbox": null', '"bbox": <bbox>'), "answer_mismatch"),  # MSG given a location
    (CHAIN.replace('{"entity": "MSG", "type": "LOC", "bbox": null}, ', ""), "answer_mismatch"),  # missed
    (CHAIN.split("<answer>")[0] + "<answer>\nI am not sure.\n</answer>", "answer_unparseable"),
    (CHAIN.replace("Q1: The sentence names", "<bbox> Q1: The sentence names"), "unresolved_bbox"),
    (CHAIN.replace("Q3:", "Per the gold labels, Q3:"), "mentions_labels"),
    ("<think>short</think><answer>[]</answer>", "no_reasoning"),
    ("no tags at all", "no_reasoning"),
    (None, "no_reasoning"),
])
def test_rejections(text, reason):
    c = check_chain(text, GOLD)
    assert (c.status, c.reason) == ("rejected", reason)


def test_missing_answer_is_repaired_or_rejected():
    cut = CHAIN.split("<answer>")[0]
    c = check_chain(cut, GOLD)
    assert (c.status, c.reason) == ("repaired", "answer_appended")
    assert parse_answer(c.text.replace(BBOX_PLACEHOLDER, "[1, 2, 3, 4]")).entities[0].text == "Kevin Durant"
    assert check_chain(cut, GOLD, repair=False).reason == "no_answer"
    assert check_chain("<think>" + "x" * 40, GOLD, finish_reason="length").reason == "truncated"


def _fake_answer(rows):
    """Per post (by its position among ``rows``): 0 a good chain (answer reversed), 1 a wrong type,
    2 no answer (repairable), 3 the gold box written as numbers in the reasoning."""
    by_sentence = {r["mcr_sentence"]: i for i, r in enumerate(rows)}

    def answer(body):
        text = prompt_text(body)
        i = next(i for s, i in by_sentence.items() if f"Sentence: {s}\n" in text)
        gold = gold_in_prompt(body)
        located = [g for g in gold if g["boxes"]]
        think = "Recognition: " + "; ".join(f"{g['entity']} is {g['type']}" for g in gold) + ". "
        if located:
            box = located[0]["boxes"][0] if i % 4 == 3 else None
            think += f"{located[0]['entity']} appears at " + (json.dumps(box) if box else "<bbox>") + "."
        items = [{"entity": g["entity"], "type": g["type"], "bbox": "<bbox>" if g["boxes"] else None}
                 for g in reversed(gold)]
        if i % 4 == 1:
            items[0]["type"] = "OTHER" if items[0]["type"] != "OTHER" else "PER"
        ans = json.dumps(items).replace('"<bbox>"', "<bbox>")
        return [f"<think>\n{think}\n</think>\n" + ("" if i % 4 == 2 else f"<answer>\n{ans}\n</answer>")]
    return answer


@pytest.fixture()
def rows(prepared):
    """Eight train posts that have a located entity (so every scripted behaviour applies)."""
    rows = [r for _, r, _ in iter_jsonl(prepared / "twitter_gmner" / "train.jsonl")]
    rows = [r for r in rows if any(e.boxes for e in gold_from_row(r))][:8]
    assert len(rows) == 8
    return rows


def test_synthesis_against_scripted_server(rows, tmp_path):
    out = tmp_path / "dr.jsonl"
    styles = ["formatted_a", "llm_qa", "mllm_distill"]
    with FakeOpenAI(_fake_answer(rows)) as fake:
        ep = Endpoint(fake.base_url, "fake-model")
        s = synthesize(rows, out, styles, endpoints={"llm_qa": ep, "mllm_distill": ep}, concurrency=3,
                       temperature=0.0, progress=False, chain_retries=0, replace="none")
        assert len(fake.requests) == 16
        for body in fake.requests:  # the MLLM style sends the image inline, the LLM style text only
            mllm = "careful annotator" in prompt_text(body)
            assert len(image_parts(body)) == (1 if mllm else 0)
            if mllm:
                assert image_parts(body)[0].startswith("data:image/jpeg;base64,")
        assert s["complete"]
        for st in ("llm_qa", "mllm_distill"):
            d = s["per_style"][st]
            # posts 0,4 good; 3,7 literal box; 2,6 repaired; 1,5 wrong type
            assert (d["planned"], d["produced"], d["accepted"], d["repaired"], d["rejected"]) == (8, 6, 4, 2, 2)
            assert d["rejected:answer_mismatch"] == 2 and d["literal_boxes"] == 2
            assert d["requests"]["done"] == 8 and (d["prompt_tokens"], d["completion_tokens"]) == (80, 40)
        assert s["per_style"]["formatted_a"]["produced"] == 8
        produced = [r for _, r, _ in iter_jsonl(out)]
        assert len(produced) == s["rows"] == 8 + 6 + 6
        assert validate_jsonl(out) == 20  # what the plugin checks before ms-swift reads it
        for r in produced:
            text = r["messages"][-1]["content"]
            boxes = r["objects"]["bbox"]
            assert text.count(BBOX_PLACEHOLDER) == len(boxes) == len(r["objects"]["ref"])
            filled = text
            for b in boxes:
                filled = filled.replace(BBOX_PLACEHOLDER, json.dumps(b), 1)
            got = sorted((e.text, e.type, e.boxes[:1]) for e in parse_answer(filled).entities)
            want = {(g.text, g.type): g.boxes for g in gold_from_row(r)}
            assert [(t, ty) for t, ty, _ in got] == sorted(want)
            for t, ty, b in got:
                assert (b == ()) == (want[(t, ty)] == ()) and (not b or b[0] in want[(t, ty)])
            assert r["messages"][0] == next(x for x in rows if x["mcr_id"] == r["mcr_id"])["messages"][0]
        rejected = [r for _, r, _ in iter_jsonl(tmp_path / "dr.rejected.jsonl")]
        assert len(rejected) == 4 and {r["reason"] for r in rejected} == {"answer_mismatch"}

        before = out.read_text()
        s2 = synthesize(rows, out, styles, endpoints={"llm_qa": ep, "mllm_distill": ep}, temperature=0.0,
                        progress=False, chain_retries=0, replace="none")
        assert len(fake.requests) == 16  # resumed from the cache: nothing sent again
        assert s2["per_style"]["llm_qa"]["requests"]["cached"] == 8 and out.read_text() == before


def test_failed_requests_leave_no_output_then_resume(rows, tmp_path, capsys):
    out = tmp_path / "dr.jsonl"
    argv = ["--input", str(tmp_path / "in.jsonl"), "--out", str(out), "--styles", "llm_qa",
            "--model", "fake-model", "--retries", "1", "--backoff", "0.01", "--concurrency", "1", "--no-progress",
            "--chain-retries", "0"]
    (tmp_path / "in.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows[:4]))
    with FakeOpenAI(_fake_answer(rows), fail_first=4, fail_status=500) as fake:
        assert synth_main(argv + ["--base-url", fake.base_url]) == 3  # 2 requests gave up (2 attempts each)
        assert not out.exists()
        summary = json.loads((tmp_path / "dr.jsonl.summary.json").read_text())
        assert summary["complete"] is False and summary["per_style"]["llm_qa"]["requests"]["failed"] == 2
        assert summary["per_style"]["llm_qa"]["requests"]["retries"] == 2
        assert synth_main(argv + ["--base-url", fake.base_url]) == 0
        assert len(fake.requests) == 4  # 2 + the 2 that failed before; none twice
    cache = (tmp_path / "dr.jsonl.cache.jsonl").read_text().splitlines()
    assert len(cache) == len({json.loads(l)["key"] for l in cache}) == 4
    # a crash in the middle of writing the cache: the torn line is dropped and that request re-sent
    with open(tmp_path / "dr.jsonl.cache.jsonl", "a") as f:
        f.write(cache[0][: len(cache[0]) // 2])
    with FakeOpenAI(_fake_answer(rows)) as fake:
        assert synth_main(argv + ["--base-url", fake.base_url]) == 0
        assert len(fake.requests) == 0  # the torn line duplicated a cached key: nothing to re-send
    assert "llm_qa" in capsys.readouterr().out


def test_cli_errors(tmp_path, rows, capsys):
    (tmp_path / "in.jsonl").write_text(json.dumps(rows[0]) + "\n")
    base = ["--input", str(tmp_path / "in.jsonl"), "--out", str(tmp_path / "o.jsonl")]
    with pytest.raises(SystemExit):
        synth_main(base + ["--styles", "nope"])
    assert "unknown style" in capsys.readouterr().err
    assert synth_main(base + ["--styles", "llm_qa"]) == 2  # no endpoint configured
    assert "OPENAI_BASE_URL" in capsys.readouterr().err
    bad = dict(rows[0])
    bad["mcr_gold"] = "{oops"
    (tmp_path / "bad.jsonl").write_text(json.dumps(bad) + "\n")
    with pytest.raises(ValueError, match=r"bad.jsonl: row 1 \(mcr_id"):
        synthesize([bad], tmp_path / "o.jsonl", ["formatted_a"], endpoints={}, source=str(tmp_path / "bad.jsonl"),
                   progress=False)
    with FakeOpenAI(lambda b: ["x"], model="other") as fake:  # unknown model: stop at once, exit 2
        assert synth_main(base + ["--styles", "llm_qa", "--base-url", fake.base_url, "--model", "fake-model",
                                  "--retries", "0", "--no-progress"]) == 2
    assert "not found" in capsys.readouterr().err


def test_retry_policy_flags_reach_requests(rows, tmp_path):
    with FakeOpenAI(_fake_answer(rows), fail_first=2, fail_status=503) as fake:
        ep = Endpoint(fake.base_url, "fake-model")
        s = synthesize(rows[:2], tmp_path / "o.jsonl", ["llm_conclusions"], endpoints={"llm_conclusions": ep},
                       retry=RetryPolicy(3, 0.01, 0.01), concurrency=1, progress=False)
        assert s["complete"] and s["per_style"]["llm_conclusions"]["requests"]["retries"] == 2
        assert "few" in prompt_text(fake.requests[0]).lower()


def test_ctrl_c_during_an_earlier_style_exits_130_with_the_summary_then_resumes(rows, tmp_path, capsys):
    """A real SIGINT while the first of two API styles is running: exit 130, the summary table (what
    is done), no KeyError for the style that never started; the rerun sends only what is missing."""
    import os
    import signal
    import time

    from mcr_swift.cli import main as cli_main
    out = tmp_path / "dr.jsonl"
    (tmp_path / "in.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows[:4]))
    argv = ["synth", "--input", str(tmp_path / "in.jsonl"), "--out", str(out), "--styles",
            "formatted_a,llm_qa,mllm_distill", "--per-post", "0", "--model", "fake-model", "--concurrency", "1",
            "--no-progress", "--chain-retries", "0"]
    good = _fake_answer(rows)
    sent = []

    def answer(body):
        sent.append(1)
        if len(sent) == 2:  # the second llm_qa request: Ctrl-C, then answer late
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.5)
        return good(body)
    with FakeOpenAI(answer) as fake:
        assert cli_main(argv + ["--base-url", fake.base_url]) == 130
        captured = capsys.readouterr()
        assert "KeyError" not in captured.err and "Traceback" not in captured.err
        assert "llm_qa" in captured.out and "mllm_distill" in captured.out  # the summary table
        assert "re-run the same command to resume" in captured.err
        summary = json.loads((tmp_path / "dr.jsonl.summary.json").read_text())
        assert summary["complete"] is False and not out.exists()
        assert summary["per_style"]["llm_qa"]["requests"]["interrupted"] is True
        assert summary["per_style"]["mllm_distill"]["missing"] == 4
        done_before = summary["per_style"]["llm_qa"]["requests"]["done"]
        assert 1 <= done_before <= 2
        n_sent = len(fake.requests)
        assert cli_main(argv + ["--base-url", fake.base_url]) == 0
        assert len(fake.requests) - n_sent == 8 - done_before  # resumed: finished requests not sent again
    assert len([1 for _ in iter_jsonl(out)]) == json.loads((tmp_path / "dr.jsonl.summary.json").read_text())["rows"]


def test_chains_over_the_completion_cap_are_rejected(rows, tmp_path, tiny_model):
    # issue 21: a chain longer than GRPO's completion cap could never be written whole by a rollout
    from mcr_swift.core.coords import CoordinateSpace
    from mcr_swift.data.lengths import TokenCounter, load_tokenizer
    counter = TokenCounter(load_tokenizer(tiny_model), CoordinateSpace("qwen2_5_vl", max_pixels=1003520))
    styles = ["formatted_a", "llm_qa"]
    with FakeOpenAI(_fake_answer(rows)) as fake:
        ep = Endpoint(fake.base_url, "fake-model")
        s = synthesize(rows, tmp_path / "all.jsonl", styles, endpoints={"llm_qa": ep}, temperature=0.0,
                       progress=False, cache_path=tmp_path / "cache.jsonl")
        full = [r for _, r, _ in iter_jsonl(tmp_path / "all.jsonl")]
        lengths = {(r["mcr_id"], r["mcr_style"]): counter.target_tokens(r["messages"][-1]["content"], r) for r in full}
        # below the longest chain of each style, so each style loses one
        cap = min(max(n for (_, st), n in lengths.items() if st == style) for style in styles) - 1
        over = {k for k, n in lengths.items() if n > cap}
        assert 0 < len(over) < len(lengths) and {st for _, st in over} == set(styles)
        s = synthesize(rows, tmp_path / "cut.jsonl", styles, endpoints={"llm_qa": ep}, temperature=0.0,
                       progress=False, cache_path=tmp_path / "cache.jsonl", length_counter=counter,
                       max_completion=cap, chain_retries=0, replace="none")
        # the default: a too-long chain is asked again / its slot replaced like any rejected chain
        s2 = synthesize(rows, tmp_path / "again.jsonl", styles, endpoints={"llm_qa": ep}, temperature=0.0,
                        progress=False, cache_path=tmp_path / "cache.jsonl", length_counter=counter,
                        max_completion=cap)
    again = [r for _, r, _ in iter_jsonl(tmp_path / "again.jsonl")]
    assert all(counter.target_tokens(r["messages"][-1]["content"], r) <= cap for r in again)
    assert s2["rows"] == len(again) >= s["rows"]
    assert sum(s2["per_style"][st].get("rejected:too_long", 0) for st in styles) >= 1
    kept = {(r["mcr_id"], r["mcr_style"]) for _, r, _ in iter_jsonl(tmp_path / "cut.jsonl")}
    assert kept == set(lengths) - over and s["max_completion_length"] == cap
    assert sum(s["per_style"][st].get("rejected:too_long", 0) for st in styles) == len(over)
    too_long = [r for _, r, _ in iter_jsonl(tmp_path / "cut.rejected.jsonl") if r["reason"] == "too_long"]
    assert {(r["mcr_id"], r["mcr_style"]) for r in too_long} == over and all(r["tokens"] > cap for r in too_long)


def test_cli_completion_cap_needs_a_tokenizer(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        synth_main(["--input", str(tmp_path / "x.jsonl"), "--out", str(tmp_path / "o.jsonl"),
                    "--max-completion-length", "1024"])
    assert e.value.code == 2 and "needs --tokenizer" in capsys.readouterr().err
