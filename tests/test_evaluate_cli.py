"""The evaluate command: real `swift infer` output, prepared rows with responses, several files."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from mcr_swift import CoordinateSpace
from mcr_swift.plugin.registry import plugin_path
from mcr_swift.core.columns import gold_from_row
from tests.conftest import REPO, TINY_MAX_PIXELS, swift_bin


def evaluate(*args, env=None):
    out = subprocess.run([sys.executable, "-m", "mcr_swift.cli", "evaluate", "--no-progress", *args],
                         capture_output=True, text=True, cwd=REPO, env={**os.environ, **(env or {})})
    assert out.returncode == 0, out.stderr[-3000:]
    return out.stdout


def answer_for(entities, space, size):
    items = []
    for e in entities:
        box = None if not e.boxes else list(space.to_model(e.boxes[0], size))
        items.append({"entity": e.text, "type": e.type, "bbox": box})
    return "<think>ok</think>\n<answer>\n" + json.dumps(items) + "\n</answer>"


def test_gold_responses_score_100_and_table_has_a_row_per_file(prepared, tmp_path):
    rows = [json.loads(l) for l in (prepared / "twitter_gmner" / "test.jsonl").read_text().splitlines()]
    space = CoordinateSpace("qwen2_5_vl", max_pixels=TINY_MAX_PIXELS)
    perfect, empty = tmp_path / "perfect.jsonl", tmp_path / "junk.jsonl"
    with open(perfect, "w") as f, open(empty, "w") as g:
        for r in rows:
            resp = answer_for(gold_from_row(r), space, tuple(r["mcr_image_sizes"][0]))
            f.write(json.dumps({**r, "response": resp}) + "\n")
            g.write(json.dumps({"id": r["mcr_id"], "response": "I cannot tell."}) + "\n")
    report = tmp_path / "report.json"
    out = evaluate(str(perfect), str(empty), "--gold", str(prepared / "twitter_gmner" / "test.jsonl"),
                   "--max-pixels", str(TINY_MAX_PIXELS), "--json-out", str(report))
    lines = out.splitlines()
    assert lines[0].startswith("run") and "GMNER Pre" in lines[0]
    perfect_row = lines[2].replace("|", " ").split()
    assert perfect_row[0] == "perfect.jsonl" and perfect_row[1:10] == ["100.0"] * 9  # GMNER/MNER/EEG P R F1
    junk_row = lines[3].replace("|", " ").split()
    assert junk_row[0] == "junk.jsonl" and junk_row[1:10] == ["0.0"] * 9
    assert f"{len(rows)} of {len(rows)} responses failed to parse" in out
    rep = json.loads(report.read_text())
    assert rep[0]["metrics"]["gmner"]["f1"] == 1.0 and rep[0]["metrics"]["n_count"] == 0
    assert rep[1]["metrics"]["gmner"]["f1"] == 0.0 and rep[1]["parse_failures"] == len(rows)


@pytest.mark.swift
def test_swift_infer_output_is_scored(tiny_model, prepared, tmp_path):
    result = tmp_path / "infer.jsonl"
    env = {**os.environ, "MCR_DATA_DIR": str(prepared), "MAX_PIXELS": str(TINY_MAX_PIXELS)}
    proc = subprocess.run([swift_bin(), "infer", "--model", str(tiny_model), "--template", "qwen2_5_vl",
                           "--external_plugins", plugin_path(), "--val_dataset", "mcr-gmner:test#6",
                           "--infer_backend", "transformers", "--max_new_tokens", "24", "--max_batch_size", "3",
                           "--result_path", str(result)], env=env, capture_output=True, text=True, cwd=tmp_path,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert len(result.read_text().splitlines()) == 6
    out = evaluate(str(result), "--gold", str(prepared / "twitter_gmner" / "test.jsonl"),
                   "--json-out", str(tmp_path / "r.json"), env={"MAX_PIXELS": str(TINY_MAX_PIXELS)})
    rep = json.loads((tmp_path / "r.json").read_text())
    # every gold post is scored: the 18 posts not inferred count as all-missed
    assert rep["posts"] == 24 and rep["missing_posts"] == 18 and rep["unmatched_rows"] == 0
    assert rep["metrics"]["gmner"]["gold"] > 0
    assert "infer.jsonl" in out and "responses failed to parse" in out


def test_perturbed_test_split_through_the_command(data_v2, tmp_path):
    """The documented perturbation of the full shared test split (metrics.perturb, seed 0: drop,
    retype, shift 10 % each, 10 % spurious) scored by the command gives the exact counts."""
    from mcr_swift import load_twitter_gmner
    from mcr_swift.core.metrics import perturb
    from mcr_swift.core.columns import gold_json
    samples = load_twitter_gmner(data_v2, "test")
    preds = perturb([list(s.entities) for s in samples], seed=0, drop=0.1, shift=0.1, retype=0.1, spurious=0.1)
    path = tmp_path / "perturbed.jsonl"
    with open(path, "w") as f:
        for s, p in zip(samples, preds):
            f.write(json.dumps({"mcr_id": s.id, "mcr_sentence": s.sentence, "mcr_gold": gold_json(s.entities),
                                "entities": [e.to_dict() for e in p]}) + "\n")
    out = evaluate(str(path), "--json-out", str(tmp_path / "r.json"))
    print("\n" + out)
    m = json.loads((tmp_path / "r.json").read_text())["metrics"]
    # 2543 gold; 254 dropped, 254 retyped, 105 of the located shifted, 254 spurious (see test_metrics)
    assert (m["gmner"]["correct"], m["mner"]["correct"], m["eeg"]["correct"]) == (1930, 2035, 2184)
    assert m["gmner"]["predicted"] == m["gmner"]["gold"] == 2543
    assert m["n_count"] == 254 and m["n_rate"] == pytest.approx(254 / 2543)
    assert "75.9" in out.splitlines()[2] and "0 of 1500 responses failed to parse" in out


def _perfect_rows(prepared):
    rows = [json.loads(l) for l in (prepared / "twitter_gmner" / "test.jsonl").read_text().splitlines()]
    space = CoordinateSpace("qwen2_5_vl", max_pixels=TINY_MAX_PIXELS)
    return rows, [{"id": r["mcr_id"], "response": answer_for(gold_from_row(r), space, tuple(r["mcr_image_sizes"][0]))}
                  for r in rows]


def test_every_gold_post_is_scored_and_duplicates_are_refused(prepared, tmp_path):
    """Half the posts predicted perfectly: recall is the share of gold triples in that half, not 100."""
    rows, preds = _perfect_rows(prepared)
    gold = str(prepared / "twitter_gmner" / "test.jsonl")
    half = tmp_path / "half.jsonl"
    half.write_text("".join(json.dumps(p) + "\n" for p in preds[:12]))
    out = evaluate(str(half), "--gold", gold, "--max-pixels", str(TINY_MAX_PIXELS), "--json-out", str(tmp_path / "r.json"))
    rep = json.loads((tmp_path / "r.json").read_text())
    n_gold = sum(len(gold_from_row(r)) for r in rows)
    n_half = sum(len(gold_from_row(r)) for r in rows[:12])
    assert rep["posts"] == 24 and rep["missing_posts"] == 12 and rep["protocol"] == "mcr"
    m = rep["metrics"]["gmner"]
    assert (m["correct"], m["predicted"], m["gold"]) == (n_half, n_half, n_gold)
    assert m["precision"] == 1.0 and m["recall"] == pytest.approx(n_half / n_gold) and n_half < n_gold
    assert "12 of 24 gold posts had no prediction row (scored as all-missed)" in out
    assert "0 of 12 responses failed to parse" in out
    # an empty result file (a crashed swift infer) scores 0 on every gold post
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    evaluate(str(empty), "--gold", gold, "--json-out", str(tmp_path / "e.json"))
    rep = json.loads((tmp_path / "e.json").read_text())
    assert rep["missing_posts"] == 24 and rep["metrics"]["gmner"]["recall"] == 0.0
    # a duplicated row is an error naming its line and the first one
    dup = tmp_path / "dup.jsonl"
    dup.write_text("".join(json.dumps(p) + "\n" for p in preds[:3] + preds[1:2]))
    bad = subprocess.run([sys.executable, "-m", "mcr_swift.cli", "evaluate", "--no-progress", str(dup), "--gold", gold],
                         capture_output=True, text=True, cwd=REPO)
    assert bad.returncode == 2 and "Traceback" not in bad.stderr
    assert f"dup.jsonl:4: duplicated row: post {rows[1]['mcr_id']} already has a row at line 2" in bad.stderr
    assert len(bad.stderr.strip().splitlines()) == 1
    # without --gold, rows carrying mcr_gold: the same rule (same task, id and prompt twice)
    own = tmp_path / "own.jsonl"
    own.write_text("".join(json.dumps({**r, "response": p["response"]}) + "\n" for r, p in zip(rows[:2] * 2, preds[:2] * 2)))
    bad = subprocess.run([sys.executable, "-m", "mcr_swift.cli", "evaluate", "--no-progress", str(own)],
                         capture_output=True, text=True, cwd=REPO)
    assert bad.returncode == 2 and "own.jsonl:3: duplicated row" in bad.stderr


def test_protocol_option_recorded_and_applied(prepared, tmp_path):
    """--protocol hindex: a prediction repeated for a text that occurs once counts only once (its last)."""
    rows, preds = _perfect_rows(prepared)
    from mcr_swift.core.metrics import _occurrences
    # a post whose first gold entity has a box, a text occurring once, and no other gold of that text
    r = next(r for r in rows if gold_from_row(r) and gold_from_row(r)[0].boxes
             and _occurrences(gold_from_row(r)[0].text, r["mcr_sentence"].split()) == 1
             and [e.text for e in gold_from_row(r)].count(gold_from_row(r)[0].text) == 1)
    g = gold_from_row(r)
    space = CoordinateSpace("qwen2_5_vl", max_pixels=TINY_MAX_PIXELS)
    size = tuple(r["mcr_image_sizes"][0])
    twice = answer_for([g[0]] + list(g), space, size)  # the first entity predicted twice, both right
    f = tmp_path / "one.jsonl"
    f.write_text(json.dumps({**r, "response": twice}) + "\n")
    res = {}
    for proto in ("mcr", "hindex"):
        evaluate(str(f), "--protocol", proto, "--max-pixels", str(TINY_MAX_PIXELS), "--json-out", str(tmp_path / f"{proto}.json"))
        res[proto] = json.loads((tmp_path / f"{proto}.json").read_text())
    assert res["mcr"]["protocol"] == "mcr" and res["hindex"]["protocol"] == "hindex"
    m, h = res["mcr"]["metrics"]["gmner"], res["hindex"]["metrics"]["gmner"]
    assert (m["correct"], m["predicted"], m["gold"]) == (len(g), len(g) + 1, len(g))
    assert (h["correct"], h["predicted"], h["gold"]) == (len(g), len(g), len(g))
    assert res["hindex"]["metrics"]["hindex_dropped_predictions"] == 1


def test_protocol_grec_on_prepared_grec_rows(tmp_path):
    """--protocol grec on the samples' testA with its multi-target expression kept; hand-computed."""
    from mcr_swift.data.prepare import prepare_grec
    prepare_grec(REPO / "mcr_swift" / "data" / "samples" / "grec", tmp_path / "d", splits=["testA"],
                 standin_dir=tmp_path / "img", multi_target="keep", progress=False)
    rows = [json.loads(l) for l in (tmp_path / "d" / "grec" / "testA.jsonl").read_text().splitlines()]
    golds = {r["mcr_id"]: json.loads(r["mcr_gold"])[0] for r in rows}
    # 9 samples: 3 no-target (922, 924, 925), 5 one-target, 1 multi-target (919 "all cars", two boxes)
    assert sorted(len(g["boxes"]) for g in golds.values()) == [0, 0, 0, 1, 1, 1, 1, 1, 2]

    def write(name, change=lambda mid, boxes: boxes):
        path = tmp_path / name
        with open(path, "w") as f:
            for r in rows:
                g = golds[r["mcr_id"]]
                ents = [{"entity": g["entity"], "type": g["type"], "bbox": b}
                        for b in change(r["mcr_id"].split("_")[0], g["boxes"])]
                f.write(json.dumps({**r, "entities": ents}) + "\n")
        return path
    perfect = write("perfect.jsonl")
    # the multi-target sample answered with one of its two boxes; a no-target sample answered with a box
    off = write("off.jsonl", lambda ref, boxes: boxes[:1] if ref == "919" else
                [[1, 1, 50, 50]] if ref == "922" else boxes)
    for protocol in ("grec", "mcr"):
        out = evaluate(str(perfect), str(off), "--protocol", protocol, "--json-out", str(tmp_path / f"{protocol}.json"))
        rep = json.loads((tmp_path / f"{protocol}.json").read_text())
        p, o = rep[0]["table2"]["grec"]["testA"], rep[1]["table2"]["grec"]["testA"]
        assert rep[0]["protocol"] == protocol and rep[0]["grec_protocol"] == protocol
        if protocol == "grec":
            assert (p["precision"], p["n_acc"], p["t_acc"], p["samples"]) == (1.0, 1.0, 1.0, 9)
            # correct: 9 - 919 (F1 2/3) - 922 (a box for no target) = 7 of 9; T-acc stays 6 / 6
            assert o["precision"] == pytest.approx(7 / 9) and o["n_acc"] == pytest.approx(2 / 3) and o["t_acc"] == 1.0
            assert o["multi_target"] == {"correct": 0, "total": 1}
            assert "protocol grec: GREC columns are gRefCOCO's N-acc and Pr@(F1=1, IoU>=0.5)" in out
            assert "GREC-testA (protocol grec) T-acc 100.0, 1 multi-target samples" in out
        else:  # the paper's: the multi-target sample left out, one-target precision only
            assert p["multi_target_left_out"] == 1 and p["samples"] == 8 and p["precision"] == 1.0
            assert o["precision"] == 1.0 and o["n_acc"] == pytest.approx(2 / 3)
            assert "1 multi-target samples left out (App. E.1; score them with --protocol grec)" in out
