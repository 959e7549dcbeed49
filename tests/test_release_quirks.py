"""The quirks of the real MNER-MI and gRefCOCO releases, as the shipped samples (mcr_swift/data/samples)
carry them: one test per quirk, each through ``mcr-swift prepare`` and the registered datasets."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from mcr_swift.plugin.registry import validate_jsonl
from tests.conftest import REPO

SAMPLES = REPO / "mcr_swift" / "data" / "samples"
MNER = SAMPLES / "mner_mi"


def prepare(tmp_path, *args):
    """Run ``mcr-swift prepare`` into tmp_path/d; (exit status, stderr, summary)."""
    out = subprocess.run([sys.executable, "-m", "mcr_swift.cli", "prepare", "--out", str(tmp_path / "d"),
                          "--no-progress", *args], capture_output=True, text=True, cwd=REPO)
    dataset = args[args.index("--dataset") + 1]
    path = tmp_path / "d" / dataset / "summary.json"
    return out.returncode, out.stderr, json.loads(path.read_text()) if path.exists() else None


def registered(tmp_path, monkeypatch, name):
    """The rows of a registered dataset (``mcr-mner-mi:dev``...) over tmp_path/d."""
    monkeypatch.setenv("MCR_DATA_DIR", str(tmp_path / "d"))
    from swift.dataset import load_dataset

    import mcr_swift
    mcr_swift.register()
    ds, _ = load_dataset([name], remove_unused_columns=False)
    rows = [dict(zip(ds.column_names, r)) for r in zip(*(ds[c] for c in ds.column_names))]
    for r in rows:  # the datasets library gives each image as {"bytes", "path"}
        r["images"] = [i["path"] if isinstance(i, dict) else i for i in r["images"]]
    return rows


def sample_images(tmp_path, names, skip=(), truncate=()):
    """A folder of real JPEGs named as ``names``, without ``skip`` and with ``truncate`` cut short."""
    from PIL import Image
    d = tmp_path / "images"
    d.mkdir(parents=True, exist_ok=True)
    for n in names:
        if n in skip:
            continue
        Image.effect_noise((64, 48), 40).convert("RGB").save(d / n, quality=95)
        if n in truncate:
            (d / n).write_bytes((d / n).read_bytes()[:-200])  # no end marker: the header still reads
    return d


def release_names(split):
    from mcr_swift.data.mner_mi import check_post, parse_line, split_file
    lines = split_file(MNER, split).read_text().splitlines()
    return [n for line in lines for n in check_post(parse_line(line))[2]]


# ------------------------------------------------------------------ MNER-MI
def test_mner_mi_stray_i_tags_read_the_conlleval_way_and_counted(tmp_path, monkeypatch):
    rc, err, summary = prepare(tmp_path, "--dataset", "mner_mi", "--root", str(MNER),
                               "--standin-images", str(tmp_path / "img"))
    assert rc == 0, err
    # train: "Switch" I-MIS after B-ORG and "Guinness" I-ORG after O; test: "Shard" I-LOC after O
    assert summary["train"]["repaired"] == {"I- tags beginning an entity (conlleval)": 2}
    assert summary["test"]["repaired"] == {"I- tags beginning an entity (conlleval)": 1}
    assert "repaired 2 I- tags beginning an entity (conlleval)" in err
    rows = {r["mcr_id"]: r for r in registered(tmp_path, monkeypatch, "mcr-mner-mi:train")}
    assert json.loads(rows["9002"]["mcr_gold"])[:3] == [
        {"entity": "Nintendo", "type": "ORG", "boxes": []}, {"entity": "Switch", "type": "OTHER", "boxes": []},
        {"entity": "Tokyo Game Show", "type": "OTHER", "boxes": []}]
    assert {"entity": "Guinness", "type": "ORG", "boxes": []} in json.loads(rows["9008"]["mcr_gold"])
    # strict mode: the same tags are malformed input, one line naming file, line and token; exit 2
    rc, err, _ = prepare(tmp_path / "strict", "--dataset", "mner_mi", "--root", str(MNER), "--tags", "strict",
                         "--standin-images", str(tmp_path / "img"))
    assert rc == 2 and "MNER-MI_train.txt:2: token 2 ('Switch'): tag I-MIS after ORG has no B- tag" in err
    assert "Traceback" not in err


def test_mner_mi_dict_literal_lines_and_json_lines(tmp_path, monkeypatch):
    # the test file is in the earlier revision's form (Python dict literals), train and dev are JSON
    assert MNER.joinpath("text", "MNER-MI_test.txt").read_text().startswith("{'id': 9201, 'text': [")
    rc, err, summary = prepare(tmp_path, "--dataset", "mner_mi", "--root", str(MNER),
                               "--standin-images", str(tmp_path / "img"))
    assert rc == 0, err
    assert {k: (v["rows"], v["dict_literal_lines"]) for k, v in summary.items()} == {
        "train": (10, 0), "dev": (8, 0), "test": (8, 8)}
    rows = registered(tmp_path, monkeypatch, "mcr-mner-mi:test")
    assert [r["mcr_id"] for r in rows][:2] == ["9201", "9202"] and len(rows[0]["images"]) == 2
    # a line that is Python code but no literal is refused, never run (ast.literal_eval only)
    bad = tmp_path / "bad" / "text"
    bad.mkdir(parents=True)
    for split in ("train", "val", "test"):
        (bad / f"MNER-MI_{split}.txt").write_text("{'id': __import__('os').getpid(), 'text': ['a']}\n")
    rc, err, _ = prepare(tmp_path / "b", "--dataset", "mner_mi", "--root", str(bad.parent), "--standin-images",
                         str(tmp_path / "img2"))
    assert rc == 2 and "MNER-MI_train.txt:1: not a JSON object or Python dict literal" in err


def test_mner_mi_plus_string_ids_and_prefixed_twitter2017_names(tmp_path, monkeypatch):
    from mcr_swift.data.mner_mi import check_post, parse_line, split_file
    uni = [check_post(parse_line(l)) for l in split_file(MNER, "train", "plus").read_text().splitlines()]
    assert [p[0] for p in uni][-2:] == ["twitter2017-O_1042", "twitter2017-16_05_02_118"]
    assert isinstance(uni[0][0], int)
    all_names = [n for p in uni for n in p[2]]
    # the images of the MNER-MI posts in images/, the Twitter-2017 ones stored under the stripped name
    img = sample_images(tmp_path, [n for n in all_names if not n.startswith("twitter2017-")])
    t17 = sample_images(tmp_path / "t17", ["O_1042.jpg", "16_05_02_118.jpg"])
    rc, err, summary = prepare(tmp_path, "--dataset", "mner_mi", "--variant", "plus", "--root", str(MNER),
                               "--splits", "train", "--image-dir", str(img), "--twitter2017-image-dir", str(t17))
    assert rc == 0, err
    s = summary["train"]
    assert (s["rows"], s["string_ids"], s["dict_literal_lines"]) == (12, 2, 2)
    assert s["twitter2017_names"] == {"stripped": 2} and s["missing_images"] == 0
    assert "Twitter-2017 images found under the stripped name (2)" in err
    rows = {r["mcr_id"]: r for r in registered(tmp_path, monkeypatch, "mcr-mner-mi:train")}
    assert rows["twitter2017-O_1042"]["images"] == [str(t17 / "O_1042.jpg")]
    # a copy that kept the prefixed names, all in one folder
    (t17 / "O_1042.jpg").rename(img / "twitter2017-O_1042.jpg")
    (t17 / "16_05_02_118.jpg").rename(img / "twitter2017-16_05_02_118.jpg")
    rc, err, summary = prepare(tmp_path / "p", "--dataset", "mner_mi", "--variant", "plus", "--root", str(MNER),
                               "--splits", "train", "--image-dir", str(img))
    assert rc == 0, err
    assert summary["train"]["twitter2017_names"] == {"prefixed": 2} and summary["train"]["rows"] == 12


def test_mner_mi_missing_and_truncated_images_keep_the_post(tmp_path, monkeypatch):
    names = release_names("train")
    # 9001 loses one of 3 images (missing), 9004 one of 4 (a truncated JPEG), 9010 both of its 2
    img = sample_images(tmp_path, names, skip={"9001_1.jpg", "9010_0.jpg", "9010_1.jpg"},
                        truncate={"9004_2.jpg"})
    rc, err, summary = prepare(tmp_path, "--dataset", "mner_mi", "--root", str(MNER), "--splits", "train",
                               "--image-dir", str(img))
    assert rc == 0, err
    s = summary["train"]
    assert (s["rows"], s["missing_images"], s["posts_with_missing_images"], s["posts_without_images"]) == \
        (9, 4, 2, 1)
    assert s["images"] == 25 - 4 and s["skipped"] == {"posts with no readable image": 1}
    loud = ("MNER-MI train: 4 images missing or unreadable; 2 posts kept with their readable images, "
            "1 posts dropped (no readable image)")
    assert f"!!! WARNING: {loud}" in err and loud in s["warnings"]
    rows = {r["mcr_id"]: r for r in registered(tmp_path, monkeypatch, "mcr-mner-mi:train")}
    assert "9010" not in rows and [p.rsplit("/", 1)[1] for p in rows["9001"]["images"]] == ["9001_0.jpg", "9001_2.jpg"]
    assert rows["9001"]["messages"][0]["content"].startswith("Image 1: <image>\nImage 2: <image>\nYou are")
    assert len(rows["9004"]["images"]) == 3 and len(rows["9004"]["mcr_image_sizes"]) == 3
    # the header check (faster) lets the truncated JPEG through
    rc, err, summary = prepare(tmp_path / "h", "--dataset", "mner_mi", "--root", str(MNER), "--splits", "train",
                               "--image-dir", str(img), "--verify-images", "header")
    assert rc == 0 and summary["train"]["missing_images"] == 3 and summary["train"]["verify_images"] == "header"


def test_mner_mi_counts_beside_the_published_ones(tmp_path):
    rc, err, summary = prepare(tmp_path, "--dataset", "mner_mi", "--root", str(MNER), "--splits", "train",
                               "--standin-images", str(tmp_path / "img"))
    assert rc == 0, err
    assert "MNER-MI train: 10 posts (published 6,856), 25 images (published 19,188), 18 entities " \
           "(published 9,734)" in err
    assert summary["train"]["published"]["posts"] == 6856
    assert summary["train"]["warnings"] == [
        "MNER-MI train differs from the published counts: 10 posts, published 6,856; 25 images, published "
        "19,188; 18 entities, published 9,734; 4 PER, published 4,529; 5 LOC, published 1,878; 4 ORG, "
        "published 1,273; 5 MISC, published 2,054"]
    # a partial read (--limit) is not compared
    rc, err, summary = prepare(tmp_path / "l", "--dataset", "mner_mi", "--root", str(MNER), "--splits", "train",
                               "--limit", "8", "--standin-images", str(tmp_path / "img"))
    assert rc == 0 and "published" not in err and summary["train"]["warnings"] == []


def test_mner_mi_published_check_matches_a_complete_release():
    from collections import Counter
    from mcr_swift.data.mner_mi import MNERMIReport, published_check
    rep = MNERMIReport(split="test", posts=860, images=2395, entities=920,
                       types=Counter(PER=439, LOC=156, ORG=92, MISC=233))
    assert published_check(rep, "mi", "test") == (
        "MNER-MI test: 860 posts (published 860), 2,395 images (published 2,395), 920 entities (published 920)", [])
    rep.posts = 850
    assert published_check(rep, "mi", "test")[1] == [
        "MNER-MI test differs from the published counts: 850 posts, published 860"]


# ------------------------------------------------------------------ gRefCOCO
def test_grec_suffixed_file_names_map_to_the_coco_image(tmp_path, monkeypatch):
    from mcr_swift.data.grec import coco_file_name
    refs = json.loads((SAMPLES / "grec" / "grefs(unc).json").read_text())
    assert refs[0]["file_name"] == "COCO_train2014_000000000101_1.jpg"
    assert coco_file_name("COCO_train2014_000000000101_1.jpg") == "COCO_train2014_000000000101.jpg"
    assert coco_file_name("COCO_train2014_000000000101.jpg") == "COCO_train2014_000000000101.jpg"
    rc, err, summary = prepare(tmp_path, "--dataset", "grec", "--root", str(SAMPLES / "grec"),
                               "--standin-images", str(tmp_path / "img"), "--train-size", "0")
    assert rc == 0, err
    rows = registered(tmp_path, monkeypatch, "mcr-grec:train")
    assert rows[0]["images"] == [str(tmp_path / "img" / "COCO_train2014_000000000101.jpg")]
    assert sorted(p.name for p in (tmp_path / "img").iterdir()) == [
        f"COCO_train2014_{i:012d}.jpg" for i in range(101, 107)]


def test_grec_ann_id_and_category_id_as_int_or_list(tmp_path, monkeypatch):
    refs = json.loads((SAMPLES / "grec" / "grefs(unc).json").read_text())
    forms = {(type(r["ann_id"]).__name__, type(r["category_id"]).__name__) for r in refs}
    assert forms == {("int", "int"), ("list", "list")}
    rc, err, summary = prepare(tmp_path, "--dataset", "grec", "--root", str(SAMPLES / "grec"),
                               "--standin-images", str(tmp_path / "img"), "--train-size", "0")
    assert rc == 0, err
    rows = {r["mcr_id"]: r for r in registered(tmp_path, monkeypatch, "mcr-grec:train")}
    # ref 901 gives ann_id 5003 as a bare int: COCO [480, 300, 140, 100] -> (480, 300, 620, 400)
    assert json.loads(rows["901_9002"]["mcr_gold"]) == [
        {"entity": "dog lying on the right", "type": "OTHER", "boxes": [[480.0, 300.0, 620.0, 400.0]]}]


def test_grec_empty_sentence_and_no_area_box_skipped_and_counted(tmp_path, monkeypatch):
    rc, err, summary = prepare(tmp_path, "--dataset", "grec", "--root", str(SAMPLES / "grec"),
                               "--standin-images", str(tmp_path / "img"), "--train-size", "0")
    assert rc == 0, err
    assert summary["train"]["skipped"] == {"sentences with an empty text": 1}
    assert summary["testB"]["skipped"] == {"refs whose target box has no area": 1}
    assert summary["train"]["skipped_sentences"] == 1 == summary["testB"]["skipped_sentences"]
    assert "skipped 1 sentences with an empty text" in err and "skipped 1 refs whose target box has no area" in err
    ids = [r["mcr_id"] for r in registered(tmp_path, monkeypatch, "mcr-grec:train")]
    assert "904_9005" in ids and "904_9099" not in ids and len(ids) == 8
    assert validate_jsonl(tmp_path / "d" / "grec" / "testB.jsonl") == 8  # ref 935 (w = 0) not written


def test_grec_release_identity_in_the_summary(tmp_path):
    import hashlib
    rc, err, summary = prepare(tmp_path, "--dataset", "grec", "--root", str(SAMPLES / "grec"),
                               "--standin-images", str(tmp_path / "img"))
    assert rc == 0, err
    rel = summary["train"]["release"]
    assert rel["sha256"] == hashlib.sha256((SAMPLES / "grec" / "grefs(unc).json").read_bytes()).hexdigest()
    assert rel["splits"] == ["testA", "testB", "train", "val"] and rel["complete"]
    assert rel["refs"] == {"train": 8, "val": 9, "testA": 9, "testB": 10}
    assert rel["looks_like"] == "the 2023-08-29 release (train, val, testA, testB)"
    assert f"sha256 {rel['sha256'][:16]}" in err
    # a complete release: val and testA + testB beside Table 5's counts, with a warning when they differ
    assert "GREC val: 8 one-/no-target sentences (paper Table 5: 5,309)" in err
    assert summary["testA"]["warnings"] == ["GREC testA+testB: 16 one-/no-target sentences, Table 5 gives 19,066"]


def test_grec_older_download_without_testa_testb(tmp_path, monkeypatch):
    old = SAMPLES / "grec_before_2023-08-29"
    rc, err, summary = prepare(tmp_path, "--dataset", "grec", "--root", str(old),
                               "--standin-images", str(tmp_path / "img"), "--train-size", "0")
    assert rc == 0, err
    assert sorted(summary) == ["train", "val"]
    assert summary["val"]["release"]["looks_like"].startswith("a download from before 2023-08-29")
    assert "!!! WARNING: GREC: grefs(unc).json has no testA, testB split; read train, val only" in err
    assert "Table 5" not in err  # not the complete release: no comparison
    ids = [r["mcr_id"] for r in registered(tmp_path, monkeypatch, "mcr-grec:val")]
    assert ids[0] == "108_1009"  # renumbered ids: they do not join with the current release's "908_9009"
    # asking for a split the download does not have: one line, exit 2
    rc, err, _ = prepare(tmp_path / "x", "--dataset", "grec", "--root", str(old), "--splits", "testA",
                         "--standin-images", str(tmp_path / "img"))
    assert rc == 2 and "no ref of split 'testA'; splits present: train, val (a download from before" in err
    assert "Traceback" not in err


@pytest.mark.parametrize("split", ["train", "val", "testA", "testB"])
def test_tiny_profile_keeps_a_grounded_sample_and_a_post_in_every_first_8(tmp_path, split):
    from mcr_swift.data.grec import load_grec
    from mcr_swift.data.mner_mi import load_mner_mi
    first = load_grec(SAMPLES / "grec", split, limit=8)
    assert len(first) == 8 and any(s.entities[0].boxes for s in first)
    if split in ("train", "val", "testA"):
        mner = load_mner_mi(MNER, {"testA": "test"}.get(split, split), limit=8)
        assert len(mner) == 8 and any(s.entities for s in mner)


def test_run_report_shows_prepare_warnings(tmp_path):
    """The run report's sources section repeats prepare's warnings (missing images, counts off)."""
    from mcr_swift.reports.report import render_sources, sources_report
    names = release_names("train")
    img = sample_images(tmp_path, names, skip={"9001_1.jpg"})
    rc, err, _ = prepare(tmp_path, "--dataset", "mner_mi", "--root", str(MNER), "--splits", "train",
                         "--limit", "8", "--image-dir", str(img))
    assert rc == 0, err
    data = tmp_path / "d"
    (data / "sources.tsv").write_text(f"mner_mi\tprepared\t{MNER}\n")
    src = sources_report(data, {}, {})
    assert src["per_source"]["mner_mi"]["warnings"] == [
        "MNER-MI train: 1 images missing or unreadable; 1 posts kept with their readable images, "
        "0 posts dropped (no readable image)"]
    assert ("- **WARNING** (prepare): MNER-MI train: 1 images missing or unreadable; 1 posts kept with their "
            "readable images, 0 posts dropped (no readable image)") in render_sources(src)
