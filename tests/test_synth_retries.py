"""D_R reaches its planned size (issue 21 §3): a rejected chain is asked again with another seed, then
its slot is replaced by another style of the run (a template style last); a style's samples can be
shared out between two endpoints (App. E.4's two MLLMs); one style can fill several rows of a sample
(Table 3's w/o D_R). Against the scripted OpenAI server of tests/_fake_openai.py."""
from __future__ import annotations

import json
from collections import Counter

import pytest

from mcr_swift.data.rows import gold_from_row
from mcr_swift.jsonl import iter_jsonl
from mcr_swift.endpoint import Endpoint
from mcr_swift.synth.synthesize import main as synth_main, synthesize
from tests._fake_openai import FakeOpenAI, gold_in_prompt, prompt_text


def _good(body):
    gold = gold_in_prompt(body)
    think = "Recognition: " + ("; ".join(f"{g['entity']} is {g['type']}" for g in gold) or "no entity") + \
        ". Each entity is checked against the sentence."
    items = [{"entity": g["entity"], "type": g["type"], "bbox": None} for g in gold]
    return f"<think>\n{think}\n</think>\n<answer>\n{json.dumps(items)}\n</answer>"


def _bad(body):
    return "<think>\nI am not sure what the entities are here at all.\n</think>\n<answer>\n[]\n</answer>"


@pytest.fixture()
def rows(prepared):
    """Six train posts with at least one entity and no box (so `_good` answers their gold exactly)."""
    rows = [r for _, r, _ in iter_jsonl(prepared / "twitter_gmner" / "train.jsonl")]
    rows = [r for r in rows if gold_from_row(r) and not any(e.boxes for e in gold_from_row(r))][:6]
    assert len(rows) == 6
    return rows


def _mllm(body) -> bool:
    return "careful annotator" in prompt_text(body)


def test_rejected_chain_is_asked_again_with_another_seed(rows, tmp_path):
    """The server answers junk for seed 0 and the gold for any other seed: every chain is produced at
    its second attempt; a rerun replays the rounds from the cache and sends nothing."""
    with FakeOpenAI(lambda b: [_bad(b) if b.get("seed", 0) == 0 else _good(b)]) as fake:
        ep = Endpoint(fake.base_url, "fake-model")
        kw = dict(endpoints={"llm_qa": ep}, per_post=1, temperature=0.0, progress=False)
        s = synthesize(rows, tmp_path / "dr.jsonl", ["llm_qa"], **kw)
        assert s["complete"] and s["rows"] == 6
        assert len(fake.requests) == 12 and Counter(b["seed"] for b in fake.requests) == {0: 6, 1: 6}
        d = s["per_style"]["llm_qa"]
        assert (d["planned"], d["produced"], d["rejected"], d["retried"]) == (6, 6, 6, 6)
        assert s["per_task_style"]["gmner"]["llm_qa"] == {"planned": 6, "produced": 6, "retried": 6,
                                                            "replaced": 0, "replacing": 0, "lost": 0}
        rejected = [r for _, r, _ in iter_jsonl(tmp_path / "dr.rejected.jsonl")]
        assert [r["attempt"] for r in rejected] == [0] * 6
        before = (tmp_path / "dr.jsonl").read_text()
        s2 = synthesize(rows, tmp_path / "dr.jsonl", ["llm_qa"], **kw)
        assert len(fake.requests) == 12 and (tmp_path / "dr.jsonl").read_text() == before
        assert s2["per_style"]["llm_qa"]["requests"]["cached"] == 12


def test_replaced_by_another_api_style_then_by_a_template(rows, tmp_path):
    """llm_qa always fails; mllm_distill answers well. With one style per sample: the llm_qa slots
    are asked 1 + 2 times, then take mllm_distill; with mllm_distill failing too, formatted_a (the
    run's template style) is the last resort. D_R keeps its planned size in both cases."""
    styles = ["formatted_a", "llm_qa", "mllm_distill"]
    with FakeOpenAI(lambda b: [_good(b) if _mllm(b) else _bad(b)]) as fake:
        ep = Endpoint(fake.base_url, "fake-model")
        s = synthesize(rows, tmp_path / "a.jsonl", styles, endpoints={"llm_qa": ep, "mllm_distill": ep},
                       per_post=1, temperature=0.0, progress=False)
        assert s["complete"] and s["rows"] == 6
        planned = s["planned_per_task"]["gmner"]
        assert planned == {"formatted_a": 2, "llm_qa": 2, "mllm_distill": 2}
        t = s["per_task_style"]["gmner"]
        assert t["llm_qa"] == {"planned": 2, "produced": 0, "retried": 4, "replaced": 2, "replacing": 0, "lost": 0}
        assert t["mllm_distill"]["produced"] == 4 and t["mllm_distill"]["replacing"] == 2
        assert len(fake.requests) == 2 * 3 + 2 + 2   # llm_qa 2 x 3 attempts, then 2 + 2 mllm_distill
        out = [r for _, r, _ in iter_jsonl(tmp_path / "a.jsonl")]
        assert Counter(r["mcr_style"] for r in out) == {"formatted_a": 2, "mllm_distill": 4}
    with FakeOpenAI(lambda b: [_bad(b)]) as fake:
        ep = Endpoint(fake.base_url, "fake-model")
        s = synthesize(rows, tmp_path / "b.jsonl", styles, endpoints={"llm_qa": ep, "mllm_distill": ep},
                       per_post=1, temperature=0.0, progress=False, chain_retries=1)
        assert s["complete"] and s["rows"] == 6
        out = [r for _, r, _ in iter_jsonl(tmp_path / "b.jsonl")]
        assert Counter(r["mcr_style"] for r in out) == {"formatted_a": 6}
        t = s["per_task_style"]["gmner"]
        assert t["formatted_a"]["replacing"] == 4 and t["llm_qa"]["replaced"] == t["mllm_distill"]["replaced"] == 2
        # each API slot: 2 attempts of its style, then 2 of the other API style, then the template
        assert len(fake.requests) == 4 * 4
        s = synthesize(rows, tmp_path / "c.jsonl", styles, endpoints={"llm_qa": ep, "mllm_distill": ep},
                       per_post=1, temperature=0.0, progress=False, chain_retries=0, replace="none")
        assert s["complete"] and s["rows"] == 2
        assert s["per_task_style"]["gmner"]["llm_qa"]["lost"] == 2


def test_a_second_mllm_endpoint_takes_every_other_sample(rows, tmp_path):
    with FakeOpenAI(lambda b: [_good(b)], model="qwen25vl-72b") as a, \
            FakeOpenAI(lambda b: [_good(b)], model="qwen3vl-30b") as b:
        eps = [Endpoint(a.base_url, "qwen25vl-72b"), Endpoint(b.base_url, "qwen3vl-30b")]
        s = synthesize(rows, tmp_path / "dr.jsonl", ["mllm_distill"], endpoints={"mllm_distill": eps},
                       per_post=1, temperature=0.0, progress=False)
        assert s["complete"] and len(a.requests) == len(b.requests) == 3
        out = [r for _, r, _ in iter_jsonl(tmp_path / "dr.jsonl")]
        assert Counter(r["mcr_synth"]["model"] for r in out) == {"qwen25vl-72b": 3, "qwen3vl-30b": 3}
        assert [e["model"] for e in s["endpoints"]["mllm_distill"]] == ["qwen25vl-72b", "qwen3vl-30b"]


def test_cli_second_mllm_endpoint_and_one_style_twice(rows, tmp_path, capsys):
    src = tmp_path / "in.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with FakeOpenAI(lambda b: [_good(b)], model="m1") as a, FakeOpenAI(lambda b: [_good(b)], model="m2") as b:
        assert synth_main(["--input", str(src), "--out", str(tmp_path / "dr.jsonl"), "--styles", "mllm_distill",
                           "--per-post", "1", "--mllm-base-url", a.base_url, "--mllm-model", "m1",
                           "--mllm2-base-url", b.base_url, "--mllm2-model", "m2", "--no-progress"]) == 0
        assert len(a.requests) == len(b.requests) == 3
    with FakeOpenAI(lambda b: [_bad(b)]) as fake:   # every chain rejected: the table says where they went
        assert synth_main(["--input", str(src), "--out", str(tmp_path / "r.jsonl"), "--styles",
                           "formatted_a,llm_qa", "--per-post", "1", "--base-url", fake.base_url, "--model",
                           "fake-model", "--chain-retries", "1", "--no-progress"]) == 0
        assert len(fake.requests) == 3 * 2
    out = capsys.readouterr().out
    assert "chains by task / style" in out
    assert "gmner / llm_qa" in out and "gmner / formatted_a" in out
    # w/o D_R: one style, as many rows as two styles per sample; the second row is variant 1
    assert synth_main(["--input", str(src), "--out", str(tmp_path / "one.jsonl"), "--styles", "formatted_a",
                       "--per-post", "2", "--repeat-styles", "--no-progress"]) == 0
    out = [r for _, r, _ in iter_jsonl(tmp_path / "one.jsonl")]
    assert len(out) == 12 and Counter(r["mcr_style"] for r in out) == {"formatted_a": 12}
    assert Counter(r.get("mcr_variant", 0) for r in out) == {0: 6, 1: 6}
    with pytest.raises(SystemExit):
        synth_main(["--input", str(src), "--out", str(tmp_path / "x.jsonl"), "--chain-retries", "-1"])


def test_report_shows_posts_per_half_and_synthesis_per_style(tmp_path):
    """The run report's Sources table gives posts and rows per half, and the synthesis table per
    source and style (planned / produced / retried / replaced / replacing / lost)."""
    from mcr_swift.reports.report import render_sources, sources_report
    data = tmp_path / "data"
    (data / "mrsi").mkdir(parents=True)
    (data / "sources.tsv").write_text("gmner\tprepared\t/x\n")

    def write(name, rows):
        (data / "mrsi" / name).write_text("".join(json.dumps(r) + "\n" for r in rows))
    rows = [{"mcr_id": f"p{i}", "mcr_style": st} for i in range(3) for st in ("formatted_a", "llm_qa")]
    write("d_r.jsonl", rows)
    write("d1.jsonl", rows[0::2])
    write("d2.jsonl", rows[1::2])
    per = {"gmner": {"formatted_a": {"planned": 3, "produced": 3, "retried": 0, "replaced": 0, "replacing": 1,
                                     "lost": 0},
                     "llm_qa": {"planned": 3, "produced": 2, "retried": 4, "replaced": 1, "replacing": 0, "lost": 0}}}
    src = sources_report(data, {"per_task_style": per}, {})
    g = src["per_source"]["gmner"]
    assert (g["d_r_posts"], g["d1_posts"], g["d2_posts"]) == (3, 3, 3)
    md = "\n".join(render_sources(src))
    assert "| 3: formatted_a 3 (3 posts) |" in md and "6: formatted_a 3, llm_qa 3 (3 posts)" in md
    assert "| Twitter-GMNER | llm_qa | 3 | 2 | 4 | 1 | 0 | 0 |" in md
    assert "| Twitter-GMNER | formatted_a | 3 | 3 | 0 | 0 | 1 | 0 |" in md
