"""GMNER + MNER-MI + GREC together: `swift sft` on the mixed registered datasets, `swift infer` on the
Table 2 test sets, and the Table 2 row of `mcr-swift evaluate` (hand-computed on the fixtures)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from mcr_swift import CoordinateSpace
from mcr_swift.data.prepare import prepare_grec, prepare_mner_mi, prepare_twitter_gmner
from mcr_swift.plugin.registry import plugin_path
from mcr_swift.core.columns import gold_from_row
from tests.conftest import REPO, TINY_MAX_PIXELS, swift_bin

FIX = REPO / "tests" / "fixtures"


@pytest.fixture(scope="module")
def mixed(tmp_path_factory, data_v2) -> Path:
    """MCR_DATA_DIR with 8 Twitter-GMNER posts per split and the MNER-MI and GREC fixtures."""
    base = tmp_path_factory.mktemp("mixed")
    img = base / "images"
    prepare_twitter_gmner(data_v2, base / "data", standin_dir=img, limit=8, progress=False)
    prepare_mner_mi(FIX / "mner_mi", base / "data", standin_dir=img, progress=False)
    prepare_grec(FIX / "grec", base / "data", standin_dir=img, progress=False)
    return base / "data"


def rows_of(path: Path):
    return [json.loads(l) for l in path.read_text().splitlines()]


def evaluate(*args):
    out = subprocess.run([sys.executable, "-m", "mcr_swift.cli", "evaluate", "--no-progress", *args],
                         capture_output=True, text=True, cwd=REPO)
    assert out.returncode == 0, out.stderr[-3000:]
    return out.stdout


def test_table2_row_hand_computed(mixed, tmp_path):
    space = CoordinateSpace("qwen2_5_vl", max_pixels=TINY_MAX_PIXELS)

    def answer(row, bbox_of_gold=True, type_=None, boxes=None):
        items = []
        for e in gold_from_row(row):
            size = tuple(row["mcr_image_sizes"][0])
            bbox = list(space.to_model(e.boxes[0], size)) if (e.boxes and bbox_of_gold) else None
            items.append({"entity": e.text, "type": type_ or e.type, "bbox": bbox if boxes is None else boxes})
        return "<think>ok</think>\n<answer>\n" + json.dumps(items) + "\n</answer>"

    mner = rows_of(mixed / "mner_mi" / "test.jsonl")
    ta = rows_of(mixed / "grec" / "testA.jsonl")
    tb = rows_of(mixed / "grec" / "testB.jsonl")
    by_id = {r["mcr_id"]: r for r in mner + ta + tb}
    responses = {
        "301": answer(by_id["301"]),                       # Ada Lovelace, Science Museum, London: right
        "302": answer(by_id["302"], type_="ORG"),          # iPhone typed ORG: wrong -> MNER-MI 3/4, 3/4
        "5_7": answer(by_id["5_7"]),                       # testA one-target, right box
        "5_8": answer(by_id["5_8"], bbox_of_gold=False),   # testA one-target answered null: wrong
        "6_9": answer(by_id["6_9"]),                       # testA no-target, null: right
        "7_10": answer(by_id["7_10"]),                     # testB one-target, right box
        "9_12": answer(by_id["9_12"], boxes=[0, 0, 20, 20]),  # testB no-target given a box: wrong
        "9_13": "I think it is the horse.",                # testB no-target, unparsable -> no box: right
    }
    direct, joined = tmp_path / "direct.jsonl", tmp_path / "joined.jsonl"
    with open(direct, "w") as f, open(joined, "w") as g:
        for r in mner + ta + tb:
            f.write(json.dumps({**r, "response": responses[r["mcr_id"]]}) + "\n")
            # what swift infer writes: the prompt, the images and the response, no mcr_ columns
            g.write(json.dumps({"messages": r["messages"][:1], "images": r["images"],
                                "response": responses[r["mcr_id"]]}) + "\n")
    report = tmp_path / "r.json"
    out = evaluate(str(direct), str(joined), "--gold", str(mixed / "mner_mi" / "test.jsonl"),
                   "--gold", str(mixed / "grec" / "testA.jsonl"), "--gold", str(mixed / "grec" / "testB.jsonl"),
                   "--max-pixels", str(TINY_MAX_PIXELS), "--json-out", str(report))
    print("\n" + out)
    lines = out.splitlines()
    assert lines[0].startswith("run") and "MNER-MI Pre" in lines[0] and "GREC-testA N-acc" in lines[0]
    assert "GMNER Pre" not in out  # no GMNER rows: no Table 1
    expected = ["75.0", "75.0", "75.0", "100.0", "50.0", "50.0", "100.0", "8", "1"]
    assert lines[2].replace("|", " ").split() == ["direct.jsonl", *expected]
    assert lines[3].replace("|", " ").split() == ["joined.jsonl", *expected]
    assert "direct.jsonl: 1 of 8 responses failed to parse" in out
    rep = json.loads(report.read_text())
    for r in rep:
        t = r["table2"]
        assert (t["mner_mi"]["correct"], t["mner_mi"]["predicted"], t["mner_mi"]["gold"]) == (3, 4, 4)
        assert t["grec"]["testA"]["no_target"] == {"correct": 1, "total": 1}
        assert t["grec"]["testA"]["one_target"] == {"correct": 1, "total": 2}
        assert t["grec"]["testB"]["no_target"] == {"correct": 1, "total": 2}
        assert r["unmatched_rows"] == 0 and r["parse_failures_by_task"] == {"gmner": 0, "mner_mi": 0, "grec": 1}


def test_gmner_and_table2_rows_in_one_file(mixed, tmp_path):
    """A file mixing tasks gets both tables; GMNER rows keep the Table 1 numbers."""
    gm = rows_of(mixed / "twitter_gmner" / "test.jsonl")
    val = rows_of(mixed / "grec" / "val.jsonl")
    path = tmp_path / "mixed.jsonl"
    with open(path, "w") as f:
        for r in gm:
            f.write(json.dumps({**r, "entities": json.loads(r["mcr_gold"])}) + "\n")
        for r in val:
            f.write(json.dumps({**r, "entities": []}) + "\n")  # val: no-target right, one-target wrong
    out = evaluate(str(path), "--json-out", str(tmp_path / "r.json"))
    lines = out.splitlines()
    assert "GMNER Pre" in lines[0]
    assert lines[2].replace("|", " ").split()[1:10] == ["100.0"] * 9
    table2 = lines.index("") + 1
    assert "MNER-MI Pre" in lines[table2]
    assert lines[table2 + 2].replace("|", " ").split() == ["mixed.jsonl", *["-"] * 7, "2", "0"]
    assert "mixed.jsonl: GREC-val N-acc 100.0 Pre 0.0 (2 samples)" in out
    assert json.loads((tmp_path / "r.json").read_text())["posts"] == len(gm)


@pytest.mark.swift
def test_swift_sft_on_mixed_gmner_mner_mi_grec(tiny_model, mixed, tmp_path):
    out_dir = tmp_path / "sft"
    env = {**os.environ, "MCR_DATA_DIR": str(mixed), "MAX_PIXELS": str(TINY_MAX_PIXELS)}
    # --lazy_tokenize false --strict true: every row is encoded before training and any row ms-swift
    # cannot encode (multi-image MNER-MI, GREC boxes) fails the run instead of being dropped
    proc = subprocess.run(
        [swift_bin(), "sft", "--model", str(tiny_model), "--template", "qwen2_5_vl", "--check_model", "false",
         "--external_plugins", plugin_path(),
         "--dataset", "mcr-gmner:train#4", "mcr-mner-mi:train", "mcr-grec:train",
         "--lazy_tokenize", "false", "--strict", "true", "--dataset_shuffle", "false",
         "--tuner_type", "lora", "--max_steps", "3", "--per_device_train_batch_size", "1",
         "--gradient_accumulation_steps", "1", "--save_steps", "3", "--logging_steps", "1",
         "--dataloader_num_workers", "0", "--report_to", "none", "--output_dir", str(out_dir),
         "--max_length", "4096"], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    text = proc.stdout + proc.stderr
    assert proc.returncode == 0, text[-6000:]
    # 4 GMNER + 4 MNER-MI + 3 GREC rows, all encoded
    assert "num_rows: 11" in text, text[-4000:]
    ckpts = list(out_dir.glob("v*/checkpoint-3"))
    assert len(ckpts) == 1 and (ckpts[0] / "adapter_model.safetensors").stat().st_size > 0
    logs = [json.loads(l) for l in (ckpts[0].parent / "logging.jsonl").read_text().splitlines()]
    assert len([l for l in logs if "loss" in l]) == 3


@pytest.mark.swift
def test_swift_infer_on_table2_sets_then_evaluate(tiny_model, mixed, tmp_path):
    result = tmp_path / "infer.jsonl"
    env = {**os.environ, "MCR_DATA_DIR": str(mixed), "MAX_PIXELS": str(TINY_MAX_PIXELS)}
    proc = subprocess.run([swift_bin(), "infer", "--model", str(tiny_model), "--template", "qwen2_5_vl",
                           "--external_plugins", plugin_path(),
                           "--val_dataset", "mcr-mner-mi:test", "mcr-grec:testA", "mcr-grec:testB",
                           "--infer_backend", "transformers", "--max_new_tokens", "16", "--max_batch_size", "4",
                           "--result_path", str(result)], env=env, capture_output=True, text=True, cwd=tmp_path,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert len(result.read_text().splitlines()) == 8
    out = evaluate(str(result), "--gold", str(mixed / "mner_mi" / "test.jsonl"),
                   "--gold", str(mixed / "grec" / "testA.jsonl"), "--gold", str(mixed / "grec" / "testB.jsonl"),
                   "--max-pixels", str(TINY_MAX_PIXELS), "--json-out", str(tmp_path / "r.json"))
    rep = json.loads((tmp_path / "r.json").read_text())
    assert rep["unmatched_rows"] == 0 and rep["posts"] == 0
    t = rep["table2"]
    assert t["samples"] == 8 and t["mner_mi"]["gold"] == 4
    assert t["grec"]["testA"]["samples"] == 3 and t["grec"]["testB"]["samples"] == 3
    assert "infer.jsonl" in out.splitlines()[2]


@pytest.mark.swift
def test_grec_label_boxes_are_the_converted_original_boxes(tiny_model, mixed, tmp_path):
    """ms-swift's template writes exactly CoordinateSpace.to_model(target box) into GREC labels."""
    import re
    env = {**os.environ, "MAX_PIXELS": str(TINY_MAX_PIXELS), "PYTHONPATH": str(REPO)}
    rows = tmp_path / "grec_all.jsonl"
    rows.write_text("".join((mixed / "grec" / f"{s}.jsonl").read_text() for s in ("train", "val", "testA", "testB")))
    proc = subprocess.run([sys.executable, str(REPO / "tests" / "_encode_labels.py"), str(tiny_model), str(rows),
                           "10"], env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    encoded = json.loads(proc.stdout.split("@@", 1)[1])
    assert len(encoded) == 6  # every one-target sample of the fixture
    space = CoordinateSpace("qwen2_5_vl", max_pixels=TINY_MAX_PIXELS)
    for item in encoded:
        row = item["row"]
        answer = json.loads(re.search(r"<answer>\s*(\[.*\])\s*</answer>", item["label"], re.S).group(1))
        box = tuple(row["objects"]["bbox"][0])
        assert answer == [{"entity": row["mcr_sentence"], "type": "OTHER",
                           "bbox": list(space.to_model(box, tuple(row["mcr_image_sizes"][0])))}]
