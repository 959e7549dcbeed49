"""Rows in ms-swift's format, the prepare command, and the registered dataset loader."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from mcr_swift import Entity, Sample
from mcr_swift.core.answer import pick_box, render_answer
from mcr_swift.plugin.registry import validate_jsonl
from mcr_swift.core.columns import gold_from_row
from mcr_swift.data.rows import sample_to_row
from tests.conftest import REPO

SAMPLE = Sample("42", ["Kevin", "Durant", "and", "the", "NBA"],
                [Entity("Kevin Durant", "PER", [(10, 10, 20, 20), (0, 0, 50, 40)]), Entity("NBA", "ORG")],
                ["/img/42.jpg"], [(100, 80)])


def test_row_layout():
    row = sample_to_row(SAMPLE)
    user, assistant = row["messages"]
    assert user["role"] == "user" and user["content"].startswith("<image>")
    assert user["content"].endswith("Sentence: Kevin Durant and the NBA")
    assert "Visual grounding" in user["content"] and "{box_format}" not in user["content"]
    # one <bbox> placeholder, fed by objects (original pixels, the largest of the two gold boxes)
    assert assistant["content"].count("<bbox>") == 1
    assert row["objects"] == {"ref": ["Kevin Durant"], "bbox": [[0.0, 0.0, 50.0, 40.0]], "bbox_type": "real"}
    assert '{"entity": "NBA", "type": "ORG", "bbox": null}' in assistant["content"]
    assert gold_from_row(row) == list(SAMPLE.entities)  # both gold boxes kept for rewards/metrics
    assert row["mcr_image_sizes"] == [[100, 80]] and row["images"] == ["/img/42.jpg"]
    assert sample_to_row(SAMPLE, with_answer=False)["messages"] == [user]


def test_render_answer_numbers_and_policies():
    text, boxes = render_answer(SAMPLE.entities, "why", multi_box="first")
    assert boxes == []
    assert text == ('<think>\nwhy\n</think>\n<answer>\n[{"entity": "Kevin Durant", "type": "PER", '
                    '"bbox": [10, 10, 20, 20]}, {"entity": "NBA", "type": "ORG", "bbox": null}]\n</answer>')
    assert pick_box([(0, 0, 1, 1), (0, 0, 2, 2), (5, 5, 7, 7)]) == (0, 0, 2, 2)
    with pytest.raises(ValueError, match="multi-box policy"):
        pick_box([(0, 0, 1, 1)], "union")


def test_validate_jsonl_names_file_and_line(tmp_path):
    good = json.dumps(sample_to_row(SAMPLE))
    cases = {
        "not json": r":2: not valid JSON",
        json.dumps({"messages": []}): r":2: field 'messages'",
        json.dumps({**json.loads(good), "images": []}): r":2: 1 <image> tags but 0 images",
        json.dumps({**json.loads(good), "objects": {"ref": [], "bbox": []}}): r":2: 1 <bbox> placeholders but 0",
        json.dumps({**json.loads(good), "mcr_gold": "{oops"}): r":2: field 'mcr_gold'",
    }
    for bad, pattern in cases.items():
        f = tmp_path / "x.jsonl"
        f.write_text(good + "\n" + bad + "\n")
        with pytest.raises(ValueError, match=pattern):
            validate_jsonl(f)
    f.write_text(good + "\n\n" + good + "\n")
    assert validate_jsonl(f) == 2


def test_validate_jsonl_checks_images(tmp_path):
    from PIL import Image
    img, cut, txt = tmp_path / "ok.jpg", tmp_path / "cut.jpg", tmp_path / "notes.jpg"
    Image.effect_noise((256, 256), 60).convert("RGB").save(img)
    cut.write_bytes(img.read_bytes()[:2000])  # the header and a part of the pixels
    txt.write_text("not an image")
    good = sample_to_row(SAMPLE)
    f = tmp_path / "x.jsonl"
    for image, full, pattern in ((tmp_path / "gone.jpg", False, f":2: missing image {tmp_path / 'gone.jpg'}$"),
                                 (txt, False, f":2: unreadable image {txt}: cannot identify"),
                                 (cut, True, f":2: unreadable image {cut}")):
        f.write_text(json.dumps({**good, "images": [str(img)]}) + "\n" + json.dumps({**good, "images": [str(image)]}) + "\n")
        assert validate_jsonl(f) == 2  # the row layout alone is fine
        with pytest.raises(ValueError, match=pattern):
            validate_jsonl(f, check_images=True, full=full)
    assert validate_jsonl(f, check_images=True) == 2  # the truncated file's header is readable


def test_prepare_cli_writes_splits_and_summary(data_v2, tmp_path):
    out = subprocess.run([sys.executable, "-m", "mcr_swift.cli", "prepare", "--root", str(data_v2),
                          "--out", str(tmp_path / "d"), "--standin-images", str(tmp_path / "img"),
                          "--limit", "10", "--splits", "dev", "--no-progress"],
                         capture_output=True, text=True, cwd=REPO)
    assert out.returncode == 0, out.stderr
    summary = json.loads((tmp_path / "d" / "twitter_gmner" / "summary.json").read_text())
    assert summary["dev"]["rows"] == 10 and summary["dev"]["posts"] == 10
    assert "dev: 10 posts" in out.stderr
    assert validate_jsonl(tmp_path / "d" / "twitter_gmner" / "dev.jsonl") == 10
    assert len(list((tmp_path / "img").glob("*.jpg"))) == 10
    bad = subprocess.run([sys.executable, "-m", "mcr_swift.cli", "prepare", "--root", str(tmp_path / "none"),
                          "--out", str(tmp_path / "e"), "--standin-images", str(tmp_path / "img")],
                         capture_output=True, text=True, cwd=REPO)
    assert bad.returncode != 0 and "txt/train.txt: no such split file" in bad.stderr


def test_registered_dataset_loads_through_ms_swift(prepared, monkeypatch, tmp_path):
    monkeypatch.setenv("MCR_DATA_DIR", str(prepared))
    from swift.dataset import load_dataset

    import mcr_swift
    mcr_swift.register()
    train, val = load_dataset(["mcr-gmner:dev#5"], remove_unused_columns=False)
    assert val is None and len(train) == 5
    assert set(train.column_names) >= {"messages", "images", "objects", "mcr_gold", "mcr_image_sizes"}
    full, _ = load_dataset(["mcr-gmner:test"])
    assert len(full) == 24
    with pytest.raises(ValueError, match="has no subset 'valid'"):
        load_dataset(["mcr-gmner:valid"])
    monkeypatch.setenv("MCR_DATA_DIR", str(tmp_path))
    with pytest.raises(FileNotFoundError, match=r"twitter_gmner/train\.jsonl: not prepared"):
        load_dataset(["mcr-gmner"])
