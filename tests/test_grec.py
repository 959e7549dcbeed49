"""GREC (gRefCOCO) reader, rows, prepare command, registered dataset, N-acc / Precision and the
grounding-only reward, on invented fixtures in the released formats (tests/fixtures/grec)."""
from __future__ import annotations

import json
import logging
import pickle
import shutil
import subprocess
import sys

import pytest

from mcr_swift.core.rewards import grec_reward_terms
from mcr_swift.data.grec import (GRECFormatError, GRefCOCO, answer_boxes, grec_row, load_grec,
                            select_train)
from mcr_swift.core.metrics import grec_metrics
from mcr_swift.core.parser import parse_answer
from mcr_swift.plugin.registry import validate_jsonl
from mcr_swift.core.entities import Entity
from tests.conftest import REPO
from tests.fixtures.grec.make_pickle import make_pickle

FIX = REPO / "tests" / "fixtures" / "grec"


def fixture_copy(tmp_path, refs=None, json_refs=True):
    """A gRefCOCO folder in tmp_path: instances.json plus the refs (default: the fixture's)."""
    d = tmp_path / "grefcoco"
    d.mkdir(exist_ok=True)
    shutil.copy(FIX / "instances.json", d / "instances.json")
    refs = json.loads((FIX / "grefs(unc).json").read_text()) if refs is None else refs
    if json_refs:
        (d / "grefs(unc).json").write_text(json.dumps(refs))
    return d, refs


def test_json_release_one_sample_per_sentence():
    data = GRefCOCO.load(FIX)
    assert data.splits() == ["testA", "testB", "train", "val"]
    train = data.samples("train")
    # ref 0 (one target, 2 sentences), ref 1 (no target); ref 2 has two targets -> removed (App. E.1)
    assert [s.id for s in train] == ["0_0", "0_1", "1_2"]
    assert train[0].sentence == "man on the left" and train[1].sentence == "left guy in blue"
    # COCO [10, 20, 100, 50] -> (x1, y1, x2, y2)
    assert train[0].entities == (Entity("man on the left", "OTHER", ((10, 20, 110, 70),)),)
    assert train[2].entities == (Entity("dog in the car", "OTHER"),) and not train[2].entities[0].located
    assert train[0].images == ("COCO_train2014_000000000009.jpg",) and train[0].image_sizes == ((640, 480),)
    r = train.report
    assert (r.posts, r.refs, r.no_target, r.one_target) == (3, 3, 1, 2)
    assert (r.removed_multi_target_refs, r.removed_multi_target_sentences) == (1, 2)
    assert "removed 1 multi-target refs (2 sentences" in r.summary()
    val = data.samples("val")
    # ref 3 gives ann_id as a bare int; its box [450, 300, 100, 100] leaves the 500x375 image
    assert val[0].entities[0].boxes == ((450, 300, 500, 375),)
    assert val.report.repaired["boxes clamped to the image"] == 1
    testb = data.samples("testB")
    assert [s.id for s in testb] == ["7_10", "9_12", "9_13"]
    assert testb.report.removed_multi_target_refs == 1 and testb.report.no_target == 2
    assert data.samples("testA", text_field="raw")[0].sentence == "red car, top left"
    assert len(data.samples("testA", limit=2)) == 2
    with pytest.raises(ValueError, match=r"no ref of split 'test'; splits present: testA, testB, train, val \(the 2023-08-29 release"):
        data.samples("test")


def test_pickle_variant_reads_the_same_and_refuses_code(tmp_path):
    d, refs = fixture_copy(tmp_path, json_refs=False)
    make_pickle(d)
    assert sorted(p.name for p in d.iterdir()) == ["grefs(unc).p", "instances.json"]
    for split in ("train", "val", "testA", "testB"):
        assert load_grec(d, split) == load_grec(FIX, split)
    # with both files present the JSON is read (it cannot carry code)
    (d / "grefs(unc).json").write_text(json.dumps([dict(r, split="val") for r in refs]))
    assert GRefCOCO.load(d).splits() == ["val"]
    # a pickle that refers to any class is refused before anything runs
    evil = d / "evil.p"
    evil.write_bytes(pickle.dumps([{"ref_id": 1, "x": Entity("a", "PER")}]))
    with pytest.raises(GRECFormatError, match=r"evil\.p: unreadable refs file: .*mcr_swift\.core\.entities\.Entity"):
        GRefCOCO.load(d, refs_file=evil)
    (d / "broken.json").write_text('[{"ref_id": 1,')
    with pytest.raises(GRECFormatError, match=r"broken\.json: unreadable refs file"):
        GRefCOCO.load(d, refs_file=d / "broken.json")
    with pytest.raises(FileNotFoundError, match=r"no grefs\(unc\)\.json or grefs\(unc\)\.p"):
        GRefCOCO.load(tmp_path)


BAD_REFS = [  # (ref index in the fixture, change, expected message)
    (0, {"no_target": True}, r"ref 0: field 'no_target' is True but 'ann_id' is \[1001\]"),
    (1, {"no_target": False}, r"ref 1: field 'no_target' is False but 'ann_id' is \[-1\]"),
    (0, {"ann_id": [1001, -1]}, r"ref 0: field 'ann_id' mixes -1"),
    (0, {"ann_id": "1001"}, r"ref 0: field 'ann_id' must be an integer or a list of integers"),
    (0, {"ann_id": [4242]}, r"ref 0: field 'ann_id' 4242 is not in instances\.json"),
    (0, {"ann_id": [1004]}, r"ref 0: annotation 1004 belongs to image 30, not to the ref's image_id 9"),
    (0, {"image_id": 77}, r"ref 0: field 'image_id' 77 is not in instances\.json"),
    (0, {"sentences": []}, r"ref 0: field 'sentences' must be a non-empty list"),
    (0, {"sentences": [{"sent": 5, "sent_id": 0}]}, r"ref 0: sentences\[0\] needs a string 'sent'"),
    (0, {"file_name": "COCO_train2014_000000000030_4.jpg"},
     r"ref 0: field 'file_name' 'COCO_train2014_000000000030_4\.jpg' names COCO image "
     r"'COCO_train2014_000000000030\.jpg', but image_id 9 is 'COCO_train2014_000000000009\.jpg'"),
    (0, {"sentences": [{"sent": "man"}]}, r"ref 0: sentences\[0\] needs .* and a 'sent_id'"),
    (1, {"image_id": None}, r"ref 1: field 'image_id' None is not in"),
]


@pytest.mark.parametrize("index,change,message", BAD_REFS)
def test_malformed_refs_name_file_ref_and_field(tmp_path, index, change, message):
    refs = json.loads((FIX / "grefs(unc).json").read_text())
    refs[index] = {**refs[index], **change}
    d, _ = fixture_copy(tmp_path, refs)
    with pytest.raises(GRECFormatError, match=r"grefs\(unc\)\.json: " + message):
        load_grec(d, "train")
    skipped = load_grec(d, "train", on_error="skip")
    assert sum(skipped.report.skipped.values()) == 1 and skipped.report.messages
    assert len(skipped) < 3


def test_malformed_files_and_annotations(tmp_path):
    refs = json.loads((FIX / "grefs(unc).json").read_text())
    d, _ = fixture_copy(tmp_path, refs)
    inst = json.loads((FIX / "instances.json").read_text())
    inst["annotations"][0]["bbox"] = [10, 20, 0, 50]   # no area: the release has such boxes
    (d / "instances.json").write_text(json.dumps(inst))
    train = load_grec(d, "train")  # skipped and counted, not raised (the ref's 2 sentences are not read)
    assert [s.id for s in train] == ["1_2"] and train.report.skipped["refs whose target box has no area"] == 1
    assert train.report.skipped_sentences == 2
    assert "ref 0: annotation 1001: bbox [10, 20, 0, 50] has no area" in train.report.messages[0]
    inst["annotations"][0]["bbox"] = [10, 20, "w", 50]
    (d / "instances.json").write_text(json.dumps(inst))
    with pytest.raises(GRECFormatError, match=r"ref 0: annotation 1001: bbox must be \[x, y, w, h\]"):
        load_grec(d, "train")
    del inst["images"]
    (d / "instances.json").write_text(json.dumps(inst))
    with pytest.raises(GRECFormatError, match=r"instances\.json: no 'images' list"):
        load_grec(d, "train")
    (d / "grefs(unc).json").write_text(json.dumps({"refs": refs}))
    with pytest.raises(GRECFormatError, match=r"must hold a list of refs, got dict"):
        load_grec(d, "train")
    (d / "grefs(unc).json").write_text(json.dumps(refs[:1] + ["oops"]))
    shutil.copy(FIX / "instances.json", d / "instances.json")
    with pytest.raises(GRECFormatError, match=r"ref #1 is not an object"):
        load_grec(d, "train")


def test_image_dir_real_sizes_and_missing_images(tmp_path):
    from PIL import Image
    img = tmp_path / "train2014"
    img.mkdir()
    Image.new("RGB", (320, 240)).save(img / "COCO_train2014_000000000009.jpg")  # half the json size
    train = load_grec(FIX, "train", img)
    assert train[0].images == (str(img / "COCO_train2014_000000000009.jpg"),)
    assert train[0].image_sizes == ((320, 240),)
    assert train[0].entities[0].boxes == ((5, 10, 55, 35),)  # rescaled with the image
    assert train.report.repaired["boxes rescaled to the real image size"] == 1
    with pytest.raises(GRECFormatError, match=r"ref 3: image .*COCO_train2014_000000000025\.jpg not found"):
        load_grec(FIX, "val", img)
    val = load_grec(FIX, "val", img, on_error="skip")
    assert len(val) == 0 and val.report.skipped["refs with a missing or unreadable image"] == 2


def test_select_train_is_a_seeded_sample_in_file_order():
    samples = load_grec(FIX, "testA") + load_grec(FIX, "testB")
    a, b = select_train(samples, 4, seed=1), select_train(samples, 4, seed=1)
    assert a == b and len(a) == 4
    assert [s.id for s in a] == [s.id for s in samples if s in a]  # order kept
    assert select_train(samples, None) == list(samples) == select_train(samples, 99)


def test_rows_ground_or_null():
    train = load_grec(FIX, "train")
    row = grec_row(train[0], "train")
    user, assistant = row["messages"]
    assert user["content"].startswith("<image>You are an expert in visual grounding")
    assert user["content"].endswith("\n\nExpression: man on the left")
    assert "{box_format}" not in user["content"] and "{entity_type}" not in user["content"]
    assert row["objects"] == {"ref": ["man on the left"], "bbox": [[10.0, 20.0, 110.0, 70.0]], "bbox_type": "real"}
    assert row["mcr_task"] == "grec" and row["mcr_split"] == "train" and row["mcr_id"] == "0_0"
    assert '"bbox": <bbox>' in assistant["content"]
    none_row = grec_row(train[2], "train")
    assert none_row["objects"]["bbox"] == [] and '"bbox": null' in none_row["messages"][1]["content"]
    assert "no object in the image matches" in none_row["messages"][1]["content"]
    assert parse_answer(none_row["messages"][1]["content"]).entities == [Entity("dog in the car", "OTHER")]


def test_prepare_cli_and_registered_dataset(tmp_path, monkeypatch):
    out = subprocess.run([sys.executable, "-m", "mcr_swift.cli", "prepare", "--dataset", "grec", "--root", str(FIX),
                          "--out", str(tmp_path / "d"), "--standin-images", str(tmp_path / "img"),
                          "--train-size", "2", "--seed", "3", "--no-progress"],
                         capture_output=True, text=True, cwd=REPO)
    assert out.returncode == 0, out.stderr
    summary = json.loads((tmp_path / "d" / "grec" / "summary.json").read_text())
    assert {k: v["rows"] for k, v in summary.items()} == {"train": 2, "val": 2, "testA": 3, "testB": 3}
    assert summary["train"]["posts"] == 3 and summary["train"]["removed_multi_target_refs"] == 1
    assert summary["testB"]["removed_multi_target_sentences"] == 1 and summary["testB"]["no_target"] == 2
    for split in ("train", "val", "testA", "testB"):
        assert validate_jsonl(tmp_path / "d" / "grec" / f"{split}.jsonl") == summary[split]["rows"]
    # one stand-in per COCO image, of its instances.json size
    from PIL import Image
    with Image.open(tmp_path / "img" / "COCO_train2014_000000000025.jpg") as im:
        assert im.size == (500, 375)
    assert len(list((tmp_path / "img").glob("*.jpg"))) == 3

    monkeypatch.setenv("MCR_DATA_DIR", str(tmp_path / "d"))
    from swift.dataset import load_dataset

    import mcr_swift
    mcr_swift.register()
    ds, _ = load_dataset(["mcr-grec:testB"], remove_unused_columns=False)
    assert len(ds) == 3 and set(ds["mcr_task"]) == {"grec"} and sorted(ds["mcr_id"]) == ["7_10", "9_12", "9_13"]
    with pytest.raises(ValueError, match="has no subset 'test'"):
        load_dataset(["mcr-grec:test"])


def test_grec_metrics_hand_computed():
    gold = [None, None, None, (0, 0, 10, 10), (0, 0, 10, 10), (0, 0, 10, 10), (0, 0, 10, 10), (0, 0, 10, 10)]
    pred = [[], [(1, 1, 5, 5)], [],                         # no-target: right, wrong, right -> N-acc 2/3
            [(0, 0, 10, 10)],                               # IoU 1
            [(0, 0, 10, 5)],                                # IoU exactly 0.5: right (>=)
            [(0, 0, 10, 4.9)],                              # IoU 0.49: wrong
            [(0, 0, 10, 10), (20, 20, 30, 30)],             # two boxes: not Precision@(F1=1)
            []]                                             # no box for a target: wrong
    m = grec_metrics(pred, gold)
    assert m["n_acc"] == pytest.approx(2 / 3) and m["precision"] == pytest.approx(2 / 5)
    assert m["no_target"] == {"correct": 2, "total": 3} and m["one_target"] == {"correct": 2, "total": 5}
    assert grec_metrics([], []) == {"n_acc": 0.0, "precision": 0.0, "no_target": {"correct": 0, "total": 0},
                                    "one_target": {"correct": 0, "total": 0}, "samples": 0}
    with pytest.raises(ValueError, match="one entry per sample"):
        grec_metrics([[]], [])


def test_grec_reward_terms():
    g = [Entity("kid top left", "OTHER", ((0, 0, 100, 100),))]
    n = [Entity("the horse", "OTHER")]

    def ans(*boxes):
        return [Entity("whatever the model wrote", "PER", b) for b in boxes]
    assert answer_boxes(ans((1, 2, 3, 4), None, (5, 6, 7, 8))) == [(1, 2, 3, 4), (5, 6, 7, 8)]
    assert grec_reward_terms(ans((0, 0, 100, 100)), g) == {"iou": 1.0, "entail": 1.0}
    assert grec_reward_terms(ans((0, 0, 100, 75)), g) == {"iou": pytest.approx(0.5), "entail": 1.0}  # IoU .75
    assert grec_reward_terms(ans((0, 0, 100, 100), (0, 0, 100, 100)), g) == {"iou": 0.0, "entail": 1.0}
    assert grec_reward_terms([], g) == {"iou": 0.0, "entail": 0.0}
    assert grec_reward_terms([], n) == {"iou": 1.0, "entail": 1.0}
    assert grec_reward_terms(ans(None), n) == {"iou": 1.0, "entail": 1.0}  # an item with null: no box
    assert grec_reward_terms(ans((0, 0, 5, 5)), n) == {"iou": 0.0, "entail": 0.0}
    # several entities localise nothing either, located or not (else extra entities would be free)
    assert grec_reward_terms(ans((0, 0, 100, 100), None), g) == {"iou": 0.0, "entail": 1.0}
    assert grec_reward_terms(ans(None, None), n) == {"iou": 0.0, "entail": 1.0}
    assert grec_reward_terms(ans(None, None), g) == {"iou": 0.0, "entail": 0.0}
    with pytest.raises(ValueError, match="exactly one gold expression"):
        grec_reward_terms([], g + n)


def test_grec_rows_through_the_swift_orm(monkeypatch, caplog):
    pytest.importorskip("swift.rewards")
    from mcr_swift.plugin import orms as swift_rewards
    from mcr_swift.plugin.orms import GMNERCountReward, GMNEREntailReward, GMNERReward, task_weights
    monkeypatch.setattr(swift_rewards, "_malformed", 0)
    for k in ("MCR_REWARD_WEIGHTS", "MCR_REWARD_SPACE", "MIN_PIXELS", "MCR_MODEL_FAMILY"):
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setenv("MAX_PIXELS", str(280 * 280))  # a 280x280 image is not resized: model = original
    one = json.dumps([{"entity": "kid", "type": "OTHER", "boxes": [[0, 0, 100, 100]]}])
    none = json.dumps([{"entity": "the horse", "type": "OTHER", "boxes": []}])

    def answer(bbox):
        return "<think>x</think>\n<answer>\n" + json.dumps([{"entity": "kid", "type": "OTHER", "bbox": bbox}]) + \
            "\n</answer>"
    completions = [answer([0, 0, 100, 100]), answer([0, 0, 100, 75]), answer(None), answer([0, 0, 5, 5]),
                   answer(None), "<answer>[]</answer>",
                   '<answer>[{"entity": "kid", "bbox": [0, 0, 100, 100]}, '
                   '{"entity": "x", "bbox": [0, 0, 9, 9]}]</answer>']
    golds = [one, one, none, none, one, none, one]
    cols = {"mcr_gold": golds, "mcr_image_sizes": [[[280, 280]]] * 7, "mcr_task": ["grec"] * 7,
            "mcr_id": list("abcdefg")}
    # R = 0.5 R_u + 0.5 R_e (the two GREC lambdas, rescaled to the total 1.0)
    assert GMNERReward()(completions, **cols) == pytest.approx([1.0, 0.75, 1.0, 0.0, 0.0, 1.0, 0.5])
    assert GMNEREntailReward()(completions, **cols) == [1.0, 1.0, 1.0, 0.0, 0.0, 1.0, 1.0]
    assert GMNERCountReward()(completions, **cols) == [None] * 7  # GREC does not use R_c
    assert task_weights((0.2,) * 5, "grec") == {"iou": 0.5, "entail": 0.5}
    assert task_weights((0.1, 0.2, 0.3, 0.2, 0.2), "grec") == pytest.approx({"iou": 0.5, "entail": 0.5})
    monkeypatch.setenv("MCR_REWARD_WEIGHTS", "count=1")
    with caplog.at_level(logging.WARNING, logger="mcr_swift.core.rewards"):
        r = GMNERReward()
    assert "weight 0 to every term of task(s) grec" in caplog.text
    assert r(completions, **cols) == [0.0] * 7
    assert swift_rewards.malformed_rows() == 0
    bad = GMNERReward()(["<answer>[]</answer>"], mcr_gold=[one], mcr_task=["vqa"], mcr_image_sizes=[[[280, 280]]])
    assert bad == [0.0] and swift_rewards.malformed_rows() == 1
