"""MNER-MI reader, multi-image rows, prepare command, registered dataset, span/type metrics and the
count/span/type reward, on invented fixtures in the released format (tests/fixtures/mner_mi)."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from mcr_swift.core.metrics import mner_mi_metrics
from mcr_swift.data.mner_mi import MNERMIFormatError, load_mner_mi, mner_mi_row
from mcr_swift.core.parser import parse_answer
from mcr_swift.plugin.registry import validate_jsonl
from mcr_swift.core.entities import Entity
from tests.conftest import REPO

FIX = REPO / "tests" / "fixtures" / "mner_mi"


def test_multi_image_posts_and_integer_ids():
    train = load_mner_mi(FIX, "train")
    assert [s.id for s in train] == ["101", "102", "103", "104"]
    messi = train[0]
    assert messi.images == ("101_0.jpg", "101_1.jpg", "101_2.jpg") and messi.image_sizes == (None, None, None)
    assert messi.entities == (Entity("Lionel Messi", "PER"), Entity("Inter Miami", "ORG"), Entity("Florida", "LOC"))
    assert not any(e.located for s in train for e in s.entities)  # MNER only: no location
    # MIS (MNER-MI's misc type) becomes the project's OTHER
    assert train[1].entities == (Entity("World Cup", "OTHER"),)
    assert train[1].labels == ("O", "O", "B-OTHER", "I-OTHER", "O", "O")
    assert train[2].entities == () and len(train[3].images) == 4
    r = train.report
    assert (r.posts, r.entities, r.images, r.multi_image_posts, r.string_ids) == (4, 7, 10, 3, 0)
    # the release's "val" file is the dev split
    assert [s.id for s in load_mner_mi(FIX, "dev")] == ["201", "202"] == [s.id for s in load_mner_mi(FIX, "val")]
    assert len(load_mner_mi(FIX, "test", limit=1)) == 1
    with pytest.raises(FileNotFoundError, match=r"MNER-UNI_test\.txt: no such MNER-MI file"):
        load_mner_mi(FIX, "test", variant="plus")
    with pytest.raises(ValueError, match="unknown MNER-MI variant"):
        load_mner_mi(FIX, "test", variant="uni")


def test_plus_variant_string_ids_python_literals_and_twitter2017_images(tmp_path):
    from PIL import Image
    mi, t17 = tmp_path / "images", tmp_path / "twitter2017_images"
    mi.mkdir()
    t17.mkdir()
    for k, size in enumerate([(64, 48), (30, 40), (50, 50)]):
        Image.new("RGB", size).save(mi / f"101_{k}.jpg")
    Image.new("RGB", (120, 90)).save(t17 / "O_26.jpg")             # stored without the prefix
    Image.new("RGB", (33, 22)).save(t17 / "16_05_01_7.jpg")
    plus = load_mner_mi(FIX, "train", mi, twitter2017_dir=t17, variant="plus")
    assert [s.id for s in plus] == ["101", "twitter2017-O_26", "twitter2017-16_05_01_7"]
    assert plus[0].image_sizes == ((64, 48), (30, 40), (50, 50))
    assert plus[0].images == tuple(str(mi / f"101_{k}.jpg") for k in range(3))
    assert plus[1].images == (str(t17 / "O_26.jpg"),) and plus[1].image_sizes == ((120, 90),)
    assert plus[1].entities == (Entity("Marta", "PER"), Entity("Golden Boot Award", "OTHER"))  # MISC -> OTHER
    assert plus.report.string_ids == 2 and plus.report.multi_image_posts == 1
    assert dict(plus.report.twitter2017_names) == {"stripped": 2}
    # without a Twitter-2017 folder those images are looked up in the image folder under both names;
    # missing there: the posts have no readable image and are dropped, counted (never an exception)
    kept = load_mner_mi(FIX, "train", mi, variant="plus")
    assert [s.id for s in kept] == ["101"]
    r = kept.report
    assert (r.missing_images, r.posts_without_images, r.posts_with_missing_images) == (2, 2, 0)
    assert r.skipped["posts with no readable image"] == 2
    assert any("twitter2017-O_26.jpg not found (looked for " + str(mi / "O_26.jpg") + ", "
               + str(mi / "twitter2017-O_26.jpg") + ")" in m for m in r.messages)
    assert "2 images missing or unreadable; 0 posts kept with their readable images, 2 posts dropped" \
        in r.summary()
    Image.new("RGB", (120, 90)).save(mi / "twitter2017-O_26.jpg")   # a copy using the prefixed name
    assert dict(load_mner_mi(FIX, "train", mi, variant="plus").report.twitter2017_names) == {"prefixed": 1}
    # an unreadable image is left out of its post, which keeps its readable images
    (mi / "101_1.jpg").write_bytes(b"not a jpeg")
    plus = load_mner_mi(FIX, "train", mi, twitter2017_dir=t17, variant="plus")
    assert plus[0].images == (str(mi / "101_0.jpg"), str(mi / "101_2.jpg"))
    assert plus[0].image_sizes == ((64, 48), (50, 50)) and plus[0].entities[0] == Entity("Lionel Messi", "PER")
    assert (plus.report.missing_images, plus.report.posts_with_missing_images, plus.report.images) == (1, 1, 4)
    assert any("image 1 of post 101: unreadable image" in m for m in plus.report.messages)


MALFORMED = [  # the lines of tests/fixtures/mner_mi/malformed.txt, in order
    r"not a JSON object or Python dict literal",
    r"field 'label' has 1 tags for 2 tokens in 'text'",
    r"field 'images' must be a list of strings, got NoneType",
    r"field 'id' must be an integer or a non-empty string, got None",
    r"token 0 \('Bob'\): unknown tag 'B-PERSON'",
    r"token 1 \('York'\): tag I-LOC after O has no B- tag",  # with tags="strict"
    r"a line must be one object, got list",
    r"field 'text' is empty",
    r"field 'images' is empty",
    r"field 'label' must be a list of strings",
]


@pytest.mark.parametrize("index", range(len(MALFORMED)))
def test_malformed_line_names_file_line_and_field(tmp_path, index):
    good = (FIX / "text" / "MNER-MI_train.txt").read_text().splitlines()[0]
    bad = (FIX / "malformed.txt").read_text().splitlines()[index]
    (tmp_path / "text").mkdir()
    (tmp_path / "text" / "MNER-MI_train.txt").write_text(good + "\n" + bad + "\n")
    with pytest.raises(MNERMIFormatError, match=r"text/MNER-MI_train\.txt:2: " + MALFORMED[index]):
        load_mner_mi(tmp_path, "train", tags="strict")


def test_malformed_lines_are_skipped_and_counted(tmp_path):
    (tmp_path / "MNER-MI_test.txt").write_text((FIX / "malformed.txt").read_text())  # root = the text folder
    samples = load_mner_mi(tmp_path, "test", on_error="skip", tags="strict")
    # lines 5 and 6 keep their post with the bad token as O; the 8 others are dropped
    assert [s.id for s in samples] == ["10", "11"] and all(not s.entities for s in samples)
    assert samples[1].labels == ("O", "O")
    assert dict(samples.report.skipped) == {"malformed posts": 8, "unknown tags": 1, "I- tags with no B-": 1}
    assert samples.report.messages[0].startswith(f"{tmp_path / 'MNER-MI_test.txt'}:1: not a JSON object")


def test_rows_carry_every_image_in_order_and_null_locations():
    post = load_mner_mi(FIX, "train")[0]
    post = type(post)(post.id, post.tokens, post.entities, post.images, [(640, 480)] * 3, post.labels)
    row = mner_mi_row(post, "train")
    user, assistant = row["messages"]
    assert user["content"].startswith("Image 1: <image>\nImage 2: <image>\nImage 3: <image>\nYou are an expert in "
                                      "Multimodal Named Entity Recognition")
    assert user["content"].endswith("\n\nSentence: Lionel Messi scores again for Inter Miami in Florida")
    assert "do not locate entities" in user["content"] and "{box_format}" not in user["content"]
    assert row["images"] == ["101_0.jpg", "101_1.jpg", "101_2.jpg"] and row["mcr_image_sizes"] == [[640, 480]] * 3
    assert row["objects"]["bbox"] == [] and "<bbox>" not in assistant["content"]
    assert (row["mcr_task"], row["mcr_split"], row["mcr_id"]) == ("mner_mi", "train", "101")
    assert parse_answer(assistant["content"]).entities == list(post.entities)
    assert assistant["content"].count('"bbox": null') == 3 and "not asked" in assistant["content"]


def test_prepare_cli_and_registered_dataset(tmp_path, monkeypatch):
    out = subprocess.run([sys.executable, "-m", "mcr_swift.cli", "prepare", "--dataset", "mner_mi", "--root", str(FIX),
                          "--out", str(tmp_path / "d"), "--standin-images", str(tmp_path / "img"), "--no-progress"],
                         capture_output=True, text=True, cwd=REPO)
    assert out.returncode == 0, out.stderr
    summary = json.loads((tmp_path / "d" / "mner_mi" / "summary.json").read_text())
    assert {k: (v["rows"], v["entities"], v["images"]) for k, v in summary.items()} == {
        "train": (4, 7, 10), "dev": (2, 3, 3), "test": (2, 4, 3)}
    assert "mner_mi train: 4 posts" in out.stderr
    for split, n in (("train", 4), ("dev", 2), ("test", 2)):
        assert validate_jsonl(tmp_path / "d" / "mner_mi" / f"{split}.jsonl") == n
    assert len(list((tmp_path / "img").glob("*.jpg"))) == 16  # one stand-in per image of the posts
    rows = [json.loads(l) for l in (tmp_path / "d" / "mner_mi" / "train.jsonl").read_text().splitlines()]
    assert rows[3]["images"] == [str(tmp_path / "img" / f"104_{k}.jpg") for k in range(4)]

    monkeypatch.setenv("MCR_DATA_DIR", str(tmp_path / "d"))
    from swift.dataset import load_dataset

    import mcr_swift
    mcr_swift.register()
    ds, _ = load_dataset(["mcr-mner-mi:dev"], remove_unused_columns=False)
    assert len(ds) == 2 and set(ds["mcr_task"]) == {"mner_mi"}
    assert sorted((i, len(im)) for i, im in zip(ds["mcr_id"], ds["images"])) == [("201", 2), ("202", 1)]


def test_mner_mi_metrics_hand_computed():
    golds = [[Entity("Lionel Messi", "PER"), Entity("Inter Miami", "ORG"), Entity("Florida", "LOC")],
             [Entity("World Cup", "OTHER")], []]
    preds = [[Entity("Lionel Messi", "PER", (1, 2, 3, 4)),   # a box is ignored: right
              Entity("Inter Miami", "LOC"),                   # wrong type
              Entity("Florida", "LOC"), Entity("Florida", "LOC")],  # the duplicate counts once
             [Entity("World", "OTHER")],                      # partial span: wrong
             [Entity("day", "OTHER")]]                        # spurious
    m = mner_mi_metrics(preds, golds)
    assert (m["correct"], m["predicted"], m["gold"], m["posts"]) == (2, 6, 4, 3)
    assert m["precision"] == pytest.approx(2 / 6) and m["recall"] == pytest.approx(2 / 4)
    assert m["f1"] == pytest.approx(2 * (1 / 3) * (1 / 2) / (1 / 3 + 1 / 2))
    with pytest.raises(ValueError, match="one entry per post"):
        mner_mi_metrics(preds, golds[:2])


def test_mner_mi_rows_through_the_swift_orm(monkeypatch):
    pytest.importorskip("swift.rewards")
    from mcr_swift.plugin import orms as swift_rewards
    from mcr_swift.plugin.orms import GMNERIoUReward, GMNERReward, GMNERTypeReward, task_weights
    monkeypatch.setattr(swift_rewards, "_malformed", 0)
    for k in ("MCR_REWARD_WEIGHTS", "MCR_REWARD_SPACE", "MCR_MODEL_FAMILY"):
        monkeypatch.delenv(k, raising=False)
    gold = json.dumps([{"entity": "Lionel Messi", "type": "PER", "boxes": []},
                       {"entity": "Inter Miami", "type": "ORG", "boxes": []},
                       {"entity": "Florida", "type": "LOC", "boxes": []}])

    def answer(items):
        return "<think>x</think>\n<answer>\n" + json.dumps(items) + "\n</answer>"
    right = [{"entity": "Lionel Messi", "type": "PER", "bbox": None}, {"entity": "Inter Miami", "type": "ORG",
                                                                        "bbox": None},
             {"entity": "Florida", "type": "LOC", "bbox": None}]
    retyped_boxed = [dict(right[0], bbox=[1, 1, 50, 50]), dict(right[1], type="LOC"), right[2]]
    two = right[:2]
    cols = {"mcr_gold": [gold] * 3, "mcr_image_sizes": [[[640, 480], [640, 480]]] * 3,
            "mcr_task": ["mner_mi"] * 3, "mcr_id": ["101"] * 3}
    # R = (R_c + R_s + R_t) / 3; boxes are not asked, so one on an entity costs nothing
    # two of three entities: R_c = 1 - (3 - 2) * 0.5 = 0.5 (Eq. 14-15), R_s = R_t = 1
    got = GMNERReward()([answer(right), answer(retyped_boxed), answer(two)], **cols)
    assert got == pytest.approx([1.0, (1 + 1 + 2 / 3) / 3, (0.5 + 1 + 1) / 3])
    assert GMNERTypeReward()([answer(retyped_boxed)], **{k: v[:1] for k, v in cols.items()}) == \
        [pytest.approx(2 / 3)]
    assert GMNERIoUReward()([answer(right)], **{k: v[:1] for k, v in cols.items()}) == [None]  # not used
    assert task_weights((0.1, 0.2, 0.3, 0.2, 0.2), "mner_mi") == pytest.approx(
        {"count": 1 / 6, "span": 1 / 3, "type": 1 / 2})
    assert task_weights((0.1, 0.2, 0.3, 0.2, 0.2), "gmner") == dict(
        zip(("count", "span", "type", "iou", "entail"), (0.1, 0.2, 0.3, 0.2, 0.2)))
    assert swift_rewards.malformed_rows() == 0
