"""D_R from all three sources (App. E.1): template chains of every task parse back to their gold,
check_chain per task, 2 balanced styles per sample (55,712 = 2 x 27,856), the split stratified by
task and style, the filter keyed by sample, API styles per task against a scripted server, and the
prepare / synth / split stages of `mcr-swift pipeline` (recipes/qwen25vl_7b_full.sh) with the shipped sample files and with a
missing source."""
from __future__ import annotations

import json
import os
import subprocess
from collections import Counter, defaultdict

import pytest

from mcr_swift.cli import run_command
from mcr_swift.core.answer import BBOX_PLACEHOLDER
from mcr_swift.core.scoring import RewardConfig
from mcr_swift.endpoint import Endpoint
from mcr_swift.synth.cvo_filter import _query_rows
from mcr_swift.jsonl import iter_jsonl
from mcr_swift.core.parser import parse_answer
from mcr_swift.data.prepare import prepare_grec, prepare_mner_mi
from mcr_swift.core.columns import gold_from_row, row_task
from mcr_swift.data.rows import sample_from_row
from mcr_swift.synth.split import split_by_post
from mcr_swift.synth.styles import TEMPLATE_STYLES, template_chain
from mcr_swift.synth.synthesize import (ALL_STYLES, PAPER_D_R, PAPER_TRAIN_SAMPLES, check_chain, paper_count_line,
                             plan_styles, synthesize)
from mcr_swift.core.entities import Entity
from tests._fake_openai import FakeOpenAI, gold_in_prompt, image_parts, prompt_text
from tests.conftest import REPO, SHARED

SAMPLES = REPO / "mcr_swift" / "data" / "samples"
FIX = REPO / "tests" / "fixtures"


def _read(path):
    return [r for _, r, _ in iter_jsonl(path)]


@pytest.fixture(scope="module")
def mixed(tmp_path_factory):
    """The shipped samples and the test fixtures of MNER-MI and GREC, prepared with stand-ins."""
    base = tmp_path_factory.mktemp("mixed")
    out = {}
    for name, root in (("samples", SAMPLES), ("fixtures", FIX)):
        data = base / name
        prepare_mner_mi(root / "mner_mi", data, standin_dir=base / name / "img_m", progress=False)
        prepare_grec(root / "grec", data, standin_dir=base / name / "img_g", progress=False)
        out[name] = data
    return out


def _filled(text, boxes):
    for b in boxes:
        text = text.replace(BBOX_PLACEHOLDER, json.dumps([float(v) for v in b]), 1)
    return text


def _round_trip(row, style, seed=0):
    """The template chain of ``row`` in ``style``: accepted by check_chain for the row's task, with
    the same boxes, and its answer parses to exactly the gold (span, type, box)."""
    task = row_task(row)
    smp = sample_from_row(row)
    text, boxes = template_chain(smp, style, seed, task=task)
    assert text.count(BBOX_PLACEHOLDER) == len(boxes)
    chk = check_chain(text, smp.entities, repair=False, task=task)
    assert (chk.status, chk.reason) == ("accepted", ""), (row["mcr_id"], style, chk.reason, text)
    n_ans = text.split("<answer>")[1].count(BBOX_PLACEHOLDER)
    assert list(chk.boxes)[len(boxes) - n_ans:] == [tuple(b) for b in boxes][len(boxes) - n_ans:]
    if task != "gmner":  # GMNER binds a reasoning <bbox> to the entity named last (a quoted context
        assert list(chk.boxes) == [tuple(b) for b in boxes]  # may name another); GREC has one box
    assert chk.text.split("</think>")[0] == text.split("</think>")[0]  # the reasoning kept as written
    ans = parse_answer(_filled(text, boxes))
    assert ans.ok
    got = sorted((e.text, e.type, tuple(e.boxes[0]) if e.boxes else None) for e in ans.entities)
    want = sorted((e.text, e.type, tuple(float(v) for v in max(e.boxes, key=lambda b: (b[2] - b[0]) * (b[3] - b[1])))
                   if e.boxes else None) for e in gold_from_row(row))
    assert got == want
    return text


def test_template_chains_of_every_task_parse_back_to_gold(mixed, prepared):
    n = Counter()
    for name, data in mixed.items():
        for split_file in sorted((data / "mner_mi").glob("*.jsonl")) + sorted((data / "grec").glob("*.jsonl")):
            for row in _read(split_file):
                for style in TEMPLATE_STYLES:
                    text = _round_trip(row, style)
                    task = row_task(row)
                    n[task] += 1
                    if task == "mner_mi":  # no location anywhere: every bbox null, no box step
                        assert BBOX_PLACEHOLDER not in text and "<grounding>" not in text
                        assert '"bbox": null' in text or text.endswith("[]\n</answer>")
                        if len(row["images"]) > 1:
                            assert f"Image {len(row['images'])}" in text
                    else:  # one expression, no entity type reasoned about
                        assert "type is" not in text and "<category>" not in text
                        # the box in the grounding / location step and in the answer, or none
                        assert text.count(BBOX_PLACEHOLDER) == (2 if gold_from_row(row)[0].boxes else 0)
    # real Twitter-GMNER rows (shared data, first 24 posts of every split)
    for split in ("train", "dev", "test"):
        for row in _read(prepared / "twitter_gmner" / f"{split}.jsonl"):
            for style in TEMPLATE_STYLES:
                _round_trip(row, style)
                n["gmner"] += 1
    # samples: 26 MNER-MI posts, 32 GREC sentences; fixtures: 8 MNER-MI posts, 11 GREC sentences; x 2 styles
    assert n == {"mner_mi": 2 * (26 + 8), "grec": 2 * (32 + 11), "gmner": 2 * 72}


def test_grec_boxes_in_the_template():
    one = sample_from_row({"mcr_id": "1_2", "mcr_sentence": "man on the left", "images": ["a.jpg"],
                           "mcr_image_sizes": [[640, 480]],
                           "mcr_gold": json.dumps([{"entity": "man on the left", "type": "OTHER",
                                                    "boxes": [[10, 20, 110, 70]]}])})
    text, boxes = template_chain(one, "formatted_a", task="grec")
    assert boxes == [(10, 20, 110, 70)] * 2  # the grounding step and the answer
    none = sample_from_row({"mcr_id": "3_4", "mcr_sentence": "dog in the car", "images": ["a.jpg"],
                            "mcr_image_sizes": [[640, 480]],
                            "mcr_gold": json.dumps([{"entity": "dog in the car", "type": "OTHER", "boxes": []}])})
    for style in TEMPLATE_STYLES:
        text, boxes = template_chain(none, style, task="grec")
        assert boxes == [] and '"bbox": null' in text and BBOX_PLACEHOLDER not in text
    with pytest.raises(ValueError, match="unknown task"):
        template_chain(none, "formatted_a", task="nope")


GREC_GOLD = [Entity("man in a red coat", "OTHER", ((10, 20, 110, 220),))]
MNER_GOLD = [Entity("Ada Lovelace", "PER", ()), Entity("London", "LOC", ())]


def test_check_chain_per_task():
    # GREC: the reasoning names the object in its own words; <bbox> is still the one target box
    grec = ("<think>\nThe expression asks for a man wearing red. The person on the left wears a red coat, "
            "so he is at <bbox>.\n</think>\n<answer>\n"
            '[{"entity": "man in a red coat", "type": "OTHER", "bbox": <bbox>}]\n</answer>')
    c = check_chain(grec, GREC_GOLD, task="grec")
    assert (c.status, c.boxes) == ("accepted", ((10, 20, 110, 220),) * 2)
    assert check_chain(grec, GREC_GOLD).reason == "unresolved_bbox"  # GMNER rules need the entity named
    two = grec.replace('<bbox>}]', '<bbox>}, {"entity": "man in a red coat", "type": "OTHER", "bbox": <bbox>}]')
    assert check_chain(two, GREC_GOLD, task="grec").reason == "answer_mismatch"  # never two boxes
    no_target = [Entity("man in a red coat", "OTHER", ())]
    assert check_chain(grec, no_target, task="grec").reason == "answer_mismatch"
    assert check_chain(grec.replace("so he is at <bbox>", "nothing matches"), no_target, task="grec"
                       ).reason == "answer_mismatch"
    ok_none = grec.replace("so he is at <bbox>", "but no one matches").replace("<bbox>}", "null}")
    assert check_chain(ok_none, no_target, task="grec").status == "accepted"
    # MNER-MI: bbox null everywhere; any box in the chain is refused
    mner = ("<think>\nThe sentence names Ada Lovelace, a person, and London, a city; Image 2 shows a portrait "
            "that supports PER.\n</think>\n<answer>\n"
            '[{"entity": "London", "type": "LOC", "bbox": null}, {"entity": "Ada Lovelace", "type": "PER", '
            '"bbox": null}]\n</answer>')
    c = check_chain(mner, MNER_GOLD, task="mner_mi")
    assert c.status == "accepted" and c.boxes == () and c.text.index("London") < c.text.index("Ada Lovelace\", \"type\": \"PER\"")
    assert check_chain(mner.replace("a city;", "a city at [1, 2, 3, 4];"), MNER_GOLD, task="mner_mi").reason == \
        "box_not_asked"
    assert check_chain(mner.replace('"PER", "bbox": null', '"PER", "bbox": <bbox>'), MNER_GOLD,
                       task="mner_mi").reason == "box_not_asked"
    assert check_chain(mner.replace('"LOC"', '"ORG"'), MNER_GOLD, task="mner_mi").reason == "answer_mismatch"
    assert check_chain(mner.split("<answer>")[0], MNER_GOLD, task="mner_mi").status == "repaired"
    # an entity's own words are no label leak; talk of the labels still is
    star = [Entity("Gold Star families", "ORG", ())]
    chain = ("<think>\nThe sentence names Gold Star families, an organization of bereaved families.\n</think>\n"
             '<answer>\n[{"entity": "Gold Star families", "type": "ORG", "bbox": null}]\n</answer>')
    assert check_chain(chain, star).status == "accepted"
    assert check_chain(chain.replace("an organization", "per the gold labels an organization"), star).reason == \
        "mentions_labels"


def _paper_keys():
    return [(t, f"{t}-{i}") for t, n in PAPER_TRAIN_SAMPLES.items() for i in range(n)]


def test_two_balanced_styles_per_sample_reproduce_55712():
    keys = _paper_keys()
    assert len(keys) == 27856
    plan = plan_styles(keys, ALL_STYLES, 2, seed=0)
    assert sum(map(len, plan)) == PAPER_D_R == 55712
    assert all(len(p) == 2 and len(set(p)) == 2 for p in plan)
    for task, n in PAPER_TRAIN_SAMPLES.items():
        counts = Counter(s for k, p in zip(keys, plan) if k[0] == task for s in p)
        assert set(counts) == set(ALL_STYLES)
        assert max(counts.values()) - min(counts.values()) <= 1, (task, counts)  # 2n/5 each, +-1
        assert sum(counts.values()) == 2 * n
        pairs = Counter(tuple(sorted(p)) for k, p in zip(keys, plan) if k[0] == task)
        assert len(pairs) == 10 and max(pairs.values()) - min(pairs.values()) <= 2  # every pair, evenly
    assert Counter(s for p in plan for s in p)["formatted_a"] in (11142, 11143, 11144)  # 55712 / 5 = 11142.4
    # seeded, independent of the input order, different for another seed
    rev = plan_styles(keys[::-1], ALL_STYLES, 2, seed=0)
    assert rev[::-1] == plan
    assert plan_styles(keys, ALL_STYLES, 2, seed=1) != plan
    assert plan_styles(keys[:5], ALL_STYLES, 0, seed=0) == [list(ALL_STYLES)] * 5  # 0: all styles
    assert plan_styles(keys[:5], ["llm_qa"], 2, seed=0) == [["llm_qa"]] * 5
    # repeat: more rows than styles take the styles in turn (one style twice: the w/o D_R row of Table 3)
    assert plan_styles(keys[:5], ["llm_qa"], 2, seed=0, repeat=True) == [["llm_qa", "llm_qa"]] * 5
    assert plan_styles(keys[:2], ["llm_qa", "formatted_a"], 3, 0, True) == [["llm_qa", "formatted_a", "llm_qa"]] * 2
    line = paper_count_line(dict(PAPER_TRAIN_SAMPLES), 2, 5, rows=55712)
    assert line.startswith("D_R 27,856 samples x 2 styles = 55,712 planned, 55,712 produced (paper: 55,712")
    sub = paper_count_line({"gmner": 8, "mner_mi": 8, "grec": 8}, 2, 5)
    assert sub.startswith("D_R 24 samples x 2 styles = 48 planned (a subset: gmner 8/7,000") and "55,712" in sub


def _mixture(n_per_task=(300, 280, 600), seed=0):
    keys = [(t, f"p{i}") for t, n in zip(("gmner", "mner_mi", "grec"), n_per_task) for i in range(n)]
    plan = plan_styles(keys, ALL_STYLES, 2, seed)
    rows = [{"mcr_task": t, "mcr_id": pid, "mcr_style": s} for (t, pid), p in zip(keys, plan) for s in p]
    for r in rows:  # a pre-mcr_task GMNER row reads as gmner
        if r["mcr_task"] == "gmner" and r["mcr_id"].endswith("7"):
            del r["mcr_task"]
    return rows


def test_split_by_sample_stratified_by_task_and_style():
    rows = _mixture()
    d1, d2 = split_by_post(rows, 0.5, seed=0)
    assert len(d1) + len(d2) == len(rows)
    s1 = {(row_task(r), r["mcr_id"]) for r in d1}
    s2 = {(row_task(r), r["mcr_id"]) for r in d2}
    assert not s1 & s2 and len(s1) + len(s2) == 1180  # the same id in two tasks is two samples
    assert ("gmner", "p1") in s1 | s2 and ("mner_mi", "p1") in s1 | s2 and ("grec", "p1") in s1 | s2
    for task, n in (("gmner", 300), ("mner_mi", 280), ("grec", 600)):
        assert abs(sum(1 for t, _ in s1 if t == task) - n / 2) <= 1, task
        c_all = Counter(r["mcr_style"] for r in rows if row_task(r) == task)
        c1 = Counter(r["mcr_style"] for r in d1 if row_task(r) == task)
        for st in ALL_STYLES:  # each half keeps the task's style mix
            assert abs(c1[st] - c_all[st] / 2) <= 3, (task, st, c1[st], c_all[st])
    strata = defaultdict(set)
    by = defaultdict(list)
    for r in rows:
        by[(row_task(r), r["mcr_id"])].append(r["mcr_style"])
    for key, ss in by.items():
        strata[(key[0], tuple(sorted(ss)))].add(key)
    for k, keys in strata.items():
        assert abs(len(keys & s1) - len(keys) / 2) <= 1, k
    # small strata (one sample each) do not all round the same way: the halves stay equal
    tiny = _mixture((8, 8, 8))
    t1, t2 = split_by_post(tiny, 0.5, seed=0)
    n1 = {(row_task(r), r["mcr_id"]) for r in t1}
    n2 = {(row_task(r), r["mcr_id"]) for r in t2}
    assert len(n1) == len(n2) == 12
    assert all(sum(1 for t, _ in n1 if t == task) == 4 for task in ("gmner", "mner_mi", "grec"))


def test_filter_queries_are_per_sample_not_per_id():
    rows = [{"mcr_task": t, "mcr_id": "101", "mcr_style": s, "mcr_gold": "[]",
             "messages": [{"role": "user", "content": t}, {"role": "assistant", "content": "x"}]}
            for t in ("gmner", "mner_mi") for s in ("formatted_a", "llm_qa")]
    queries, merged = _query_rows(rows, "d2")
    assert [q["mcr_task"] for q in queries] == ["gmner", "mner_mi"] and merged == 2
    assert all(q["messages"] == [{"role": "user", "content": q["mcr_task"]}] for q in queries)


def _task_answer(body):
    """A chain per task from the gold in the prompt: MNER-MI good, GREC good except for the
    expression 'dog lying on the right', answered with no box (a wrong answer, rejected)."""
    text = prompt_text(body)
    gold = gold_in_prompt(body)
    if "Expression:" in text:
        g = gold[0]
        wrong = g["entity"] == "dog lying on the right"
        box = "<bbox>" if g["boxes"] and not wrong else "null"
        think = f"The expression describes {g['entity']}. " + (
            "One object matches all of it; it sits at <bbox>." if box != "null" else "Nothing matches all of it.")
        return [f"<think>\n{think}\n</think>\n<answer>\n"
                f'[{{"entity": {json.dumps(g["entity"])}, "type": "{g["type"]}", "bbox": {box}}}]\n</answer>']
    items = [{"entity": g["entity"], "type": g["type"], "bbox": None} for g in gold]
    think = "Recognition: " + ("; ".join(f"{g['entity']} is {g['type']}" for g in gold) or "no entity") + \
        ". The images only support the types."
    return [f"<think>\n{think}\n</think>\n<answer>\n{json.dumps(items)}\n</answer>"]


def test_api_styles_per_task_against_a_scripted_server(mixed, tmp_path):
    rows = _read(mixed["samples"] / "mner_mi" / "train.jsonl") + _read(mixed["samples"] / "grec" / "train.jsonl")
    styles = ["llm_qa", "llm_conclusions", "mllm_distill"]
    with FakeOpenAI(_task_answer) as fake:
        ep = Endpoint(fake.base_url, "fake-model")
        s = synthesize(rows, tmp_path / "dr.jsonl", styles, endpoints={st: ep for st in styles}, per_post=0,
                       temperature=0.0, progress=False, chain_retries=0, replace="none")
        assert s["complete"] and len(fake.requests) == 3 * 18
        for body in fake.requests:
            text = prompt_text(body)
            mllm = "careful annotator" in text
            if "Expression:" in text:  # GREC: one expression, no type reasoning, one box or none
                assert "GREC" in text and "Sentence:" not in text and "do not reason about entity types" in text
                assert len(image_parts(body)) == (1 if mllm else 0)
            else:  # MNER-MI: several images, no location
                assert "MNER-MI" in text and "no location" in text
                n = int(text.split("cannot see its ")[1].split()[0]) if not mllm else \
                    int(text.split("and its ")[1].split()[0])
                assert len(image_parts(body)) == (n if mllm else 0) and n >= 2
                if mllm:
                    assert "Image 1: " in text and f"Image {n}: " in text
    per_task = s["produced_per_task"]
    assert per_task["mner_mi"] == {st: 10 for st in styles}
    assert per_task["grec"] == {st: 7 for st in styles}  # 'dog lying on the right' answered without its box
    for st in styles:
        assert s["per_style"][st]["rejected:answer_mismatch"] == 1
    out = _read(tmp_path / "dr.jsonl")
    assert len(out) == s["rows"] == 51
    for r in out:
        filled = _filled(r["messages"][-1]["content"], r["objects"]["bbox"])
        got = sorted((e.text, e.type, bool(e.boxes)) for e in parse_answer(filled).entities)
        assert got == sorted((e.text, e.type, bool(e.boxes)) for e in gold_from_row(r))
        if row_task(r) == "mner_mi":
            assert r["objects"]["bbox"] == []


def _pipeline(run_dir, **env):
    e = {**os.environ, "PROFILE": "tiny", "RUN_DIR": str(run_dir), "MCR_SHARED_DIR": str(SHARED),
         "STOP_AFTER": "split", "SYNTH_STYLES": "formatted_a,formatted_b", **env}
    return subprocess.run(["bash", "recipes/qwen25vl_7b_full.sh"], cwd=REPO, env=e, capture_output=True, text=True,
                          timeout=900)


def _by_task_style(path):
    c = defaultdict(Counter)
    for r in _read(path):
        c[row_task(r)][r["mcr_style"]] += 1
    return {t: dict(v) for t, v in c.items()}


@pytest.mark.swift    # the full pipeline recipe up to split (integration)
@pytest.mark.shared
def test_pipeline_three_sources_then_a_missing_one(tmp_path):
    run = tmp_path / "run"
    p = _pipeline(run)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    data = run / "data"
    assert (data / "sources.tsv").read_text().splitlines() == [
        f"gmner\tprepared\t{SHARED / 'data' / 'twitter_gmner_v2'}",
        f"mner_mi\tprepared\t{REPO / 'mcr_swift' / 'data' / 'samples' / 'mner_mi'}",
        f"grec\tprepared\t{REPO / 'mcr_swift' / 'data' / 'samples' / 'grec'}"]
    # 8 samples per source (LIMIT=8), 2 styles each: 48 rows, 8 per task and style
    dr = _by_task_style(data / "mrsi" / "d_r.jsonl")
    assert dr == {t: {"formatted_a": 8, "formatted_b": 8} for t in ("gmner", "mner_mi", "grec")}
    for half in ("d1", "d2"):
        assert _by_task_style(data / "mrsi" / f"{half}.jsonl") == {
            t: {"formatted_a": 4, "formatted_b": 4} for t in ("gmner", "mner_mi", "grec")}
    assert not (run / "mrsi_sft").exists()  # STOP_AFTER=split
    assert "D_R 24 samples x 2 styles = 48 planned, 48 produced (a subset" in p.stdout
    assert "SOURCE MISSING" not in p.stderr
    r = json.loads((run / "report.json").read_text())
    src = r["sources"]["per_source"]
    assert src["grec"]["prepared"] == {"train": 8, "val": 8, "testA": 8, "testB": 8}
    assert src["mner_mi"]["d1"] == {"formatted_a": 4, "formatted_b": 4}
    assert "| MNER-MI | prepared | train 8, dev 8, test 8 | 16: formatted_a 8, formatted_b 8 (8 posts) |" in \
        (run / "report.md").read_text()

    # MNER-MI missing, all five styles planned 2 per sample: said once, loudly; the others go on
    run2 = tmp_path / "run2"
    p = _pipeline(run2, MNER_MI_ROOT=str(tmp_path / "no_such_release"), SYNTH_PER_POST="1")
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    assert p.stderr.count("SOURCE MISSING: MNER-MI") == 1 and "MNER_MI_ROOT" in p.stderr
    assert "SOURCE MISSING: GREC" not in p.stderr
    assert (run2 / "data" / "sources.tsv").read_text().splitlines()[1] == \
        f"mner_mi\tmissing\t{tmp_path / 'no_such_release'}"
    dr = _by_task_style(run2 / "data" / "mrsi" / "d_r.jsonl")
    assert set(dr) == {"gmner", "grec"} and all(sum(v.values()) == 8 for v in dr.values())
    assert all(sorted(v.values()) == [4, 4] for v in dr.values())  # 1 style per sample, balanced
    md = (run2 / "report.md").read_text()
    assert "| MNER-MI | MISSING |" in md
    # a resumed run does not say it again (the prepare stage is done)
    p = _pipeline(run2, MNER_MI_ROOT=str(tmp_path / "no_such_release"), SYNTH_PER_POST="1")
    assert p.returncode == 0 and "SOURCE MISSING" not in p.stderr

    # a source left out on purpose: no warning, listed as not selected, nothing of it in D_R
    run4 = tmp_path / "run4"
    p = _pipeline(run4, SOURCES="mner_mi,grec")
    assert p.returncode == 0 and "SOURCE MISSING" not in p.stderr, p.stderr[-3000:]
    assert [l.split("\t")[:2] for l in (run4 / "data" / "sources.tsv").read_text().splitlines()] == [
        ["gmner", "not selected"], ["mner_mi", "prepared"], ["grec", "prepared"]]
    assert set(_by_task_style(run4 / "data" / "mrsi" / "d_r.jsonl")) == {"mner_mi", "grec"}
    assert (run4 / "data" / "twitter_gmner" / "test.jsonl").exists()  # still evaluated on

    # a release without its images is a mistake, not a missing source: one line, exit 2
    run3 = tmp_path / "run3"
    p = _pipeline(run3, STANDIN="0", IMAGE_DIR=str(run / "images"),
                  MNER_MI_IMAGE_DIR=str(run / "images" / "mner_mi"))
    assert p.returncode == 2
    assert "GREC at" in p.stderr and "GREC_IMAGE_DIR='' is not a folder" in p.stderr


def test_filter_scores_each_sample_by_its_task(mixed, tmp_path, monkeypatch):
    """App. D.3 on a D2 of MNER-MI and GREC rows: gmner_orm scores each by its task. An MNER-MI answer
    that boxes every entity still earns 1 (boxes are not asked); a GREC answer with the gold box (or
    null for no target) earns 1; a GREC answer with the expression typed differently still earns 1
    (GREC scores the location only)."""
    from mcr_swift.core.coords import CoordinateSpace
    from mcr_swift.synth.cvo_filter import FilterThresholds, filter_d2
    from tests.conftest import TINY_MAX_PIXELS
    from tests.test_cvo_filter import _exact
    monkeypatch.setenv("MAX_PIXELS", str(TINY_MAX_PIXELS))
    space = CoordinateSpace.from_env()
    rows = _read(mixed["samples"] / "mner_mi" / "train.jsonl")[:4] + _read(mixed["samples"] / "grec" / "train.jsonl")
    d2 = [{**r, "mcr_style": st} for r in rows for st in ("formatted_a", "llm_qa")]
    answers = {}
    for r in rows:
        a = _exact(r, space)
        if row_task(r) == "mner_mi":
            a = a.replace('"bbox": null', '"bbox": [1, 2, 30, 40]')
        else:
            a = a.replace('"type": "OTHER"', '"type": "PER"')
        answers[r["messages"][0]["content"].rsplit(": ", 1)[1]] = a

    def answer(body):
        text = prompt_text(body)
        return [next(a for k, a in answers.items() if text.endswith(k))] * body.get("n", 1)
    with FakeOpenAI(answer) as fake:
        s = filter_d2(d2, tmp_path / "f.jsonl", Endpoint(fake.base_url, "fake-model"), g=2, progress=False, reward=RewardConfig.from_env(),
                      thresholds=FilterThresholds(0, 0, 0, 1))
    assert s["queries_per_task"] == {"grec": 8, "mner_mi": 4} and s["rows_merged_by_post"] == 12
    stats = [json.loads(l) for l in (tmp_path / "f.jsonl.stats.jsonl").read_text().splitlines()]
    assert [r["rewards"] for r in stats] == [[1.0, 1.0]] * 12
    assert s["kept_per_task"] == {"grec": 8, "mner_mi": 4}


def test_task_prompt_files():
    from mcr_swift.prompts import load_prompt
    from mcr_swift.synth.synthesize import API_STYLES, style_prompt
    smp = sample_from_row({"mcr_id": "9", "mcr_sentence": "Ada Lovelace in London", "images": ["a.jpg", "b.jpg", "c.jpg"],
                           "mcr_image_sizes": [[10, 10]] * 3,
                           "mcr_gold": json.dumps([{"entity": "London", "type": "LOC", "boxes": []}])})
    for style in ALL_STYLES:
        for task in ("mner_mi", "grec"):
            text = load_prompt(f"style_{style}_{task}")
            assert "{sentence}" in text and "{gold_json}" in text and "<answer>" in text
            if style in API_STYLES:
                filled = style_prompt(style, smp, '[{"entity": "London"}]', task)
                assert "{" + "sentence}" not in filled and "{n_images}" not in filled
                assert ("Expression: Ada Lovelace in London" if task == "grec" else "Sentence: Ada Lovelace in London") \
                    in filled and '[{"entity": "London"}]' in filled
                if task == "mner_mi":
                    assert "its 3 " in filled and '"bbox": null' in filled and "<bbox>" not in filled
                else:
                    assert "<bbox> or null" in filled and "exactly one object" in filled
    assert style_prompt("llm_qa", smp, "[]") == load_prompt("style_llm_qa").replace(
        "{sentence}", smp.sentence).replace("{gold_json}", "[]")  # GMNER: unchanged


def test_synth_cli_mixes_inputs_and_names_a_bad_line(mixed, tmp_path, capsys):
    from mcr_swift.synth.synthesize import main as synth_main
    m, g = mixed["samples"] / "mner_mi" / "train.jsonl", mixed["samples"] / "grec" / "train.jsonl"
    out = tmp_path / "dr.jsonl"
    assert synth_main(["--input", str(m), str(g), "--out", str(out), "--styles", "formatted_a,formatted_b",
                       "--limit", "4", "--no-progress"]) == 0
    text = capsys.readouterr().out
    assert "D_R 8 samples x 2 styles = 16 planned, 16 produced (a subset: gmner 0/7,000, mner_mi 4/6,856, " \
           "grec 4/14,000" in text
    assert _by_task_style(out) == {"mner_mi": {"formatted_a": 4, "formatted_b": 4},
                                   "grec": {"formatted_a": 4, "formatted_b": 4}}
    bad = tmp_path / "bad.jsonl"
    rows = _read(g)[:2]
    rows[1]["mcr_gold"] = "{oops"
    bad.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert run_command("synth", synth_main, ["--input", str(m), str(bad), "--out", str(tmp_path / "x.jsonl"), "--styles", "formatted_a",
                       "--no-progress"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"{bad}:2: not a prepared row" in err[0]
    assert run_command("synth", synth_main, ["--input", str(tmp_path / "nope.jsonl"), "--out", str(tmp_path / "x.jsonl"),
                       "--styles", "formatted_a", "--no-progress"]) == 2
    assert "nope.jsonl" in capsys.readouterr().err
