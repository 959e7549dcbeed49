"""Issue 20 §2: misuse that lost data or gave silently wrong results -- an output that is its own input,
a gold post counted twice, numbers out of range, an empty CoNLL token, an input given twice, a prepare
that half-writes. (The registered kept-D2 subset, §2.2, is proven through `swift sft` in test_swift_sft.py.)"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from mcr_swift import CoordinateSpace
from mcr_swift.data.rows import gold_from_row
from tests.conftest import TINY_MAX_PIXELS
from tests.test_bad_inputs import cli, one_line_error


def _lines(path: Path):
    return [json.loads(l) for l in path.read_text().splitlines() if l.strip()]


def _predictions(gold_rows, path: Path) -> Path:
    """One perfect answer per gold post, joined by id (no mcr_gold: the gold comes from --gold)."""
    space = CoordinateSpace("qwen2_5_vl", max_pixels=TINY_MAX_PIXELS)
    with open(path, "w") as f:
        for r in gold_rows:
            items = [{"entity": e.text, "type": e.type,
                      "bbox": list(space.to_model(e.boxes[0], tuple(r["mcr_image_sizes"][0]))) if e.boxes else None}
                     for e in gold_from_row(r)]
            f.write(json.dumps({"id": r["mcr_id"], "response": "<answer>" + json.dumps(items) + "</answer>"}) + "\n")
    return path


# --------------------------------------------------------------------------- §2.3 output == input
def _links(src: Path, how: str) -> Path:
    """``src`` itself, a symlink to it, or a hard link to it."""
    if how == "same":
        return src
    link = src.with_name(f"{how}-{src.name}")
    (os.symlink if how == "symlink" else os.link)(src, link)
    return link


@pytest.mark.parametrize("how", ["same", "symlink", "hardlink"])
def test_evaluate_refuses_a_report_over_its_own_predictions(prepared, tmp_path, how):
    gold = prepared / "twitter_gmner" / "test.jsonl"
    pred = _predictions(_lines(gold), tmp_path / "pred.jsonl")
    before = pred.read_bytes()
    err = one_line_error(cli("evaluate", pred, "--gold", gold, "--json-out", _links(pred, how), "--no-progress"),
                         "--json-out", "is the same file as result", str(pred))
    assert "overwrite" in err
    assert pred.read_bytes() == before  # the predictions are intact
    # and the gold file is guarded too
    one_line_error(cli("evaluate", pred, "--gold", gold, "--json-out", gold, "--no-progress"), "--gold")


@pytest.mark.parametrize("how", ["same", "symlink", "hardlink"])
def test_synth_refuses_to_write_over_its_input(prepared, tmp_path, how):
    src = tmp_path / "train.jsonl"
    shutil.copy(prepared / "twitter_gmner" / "train.jsonl", src)
    before = src.read_bytes()
    one_line_error(cli("synth", "--input", src, "--out", _links(src, how), "--styles", "formatted_a",
                       "--no-progress"), "--out", "is the same file as --input")
    assert src.read_bytes() == before
    # the cache written beside --out is an output too
    one_line_error(cli("synth", "--input", src, "--out", tmp_path / "dr.jsonl", "--cache", src,
                       "--styles", "formatted_a", "--no-progress"), "--cache", "is the same file as --input")
    assert src.read_bytes() == before and not (tmp_path / "dr.jsonl").exists()


@pytest.mark.parametrize("how", ["same", "symlink", "hardlink"])
def test_cvo_filter_and_split_refuse_to_write_over_their_input(prepared, tmp_path, how):
    src = tmp_path / "d2.jsonl"
    shutil.copy(prepared / "twitter_gmner" / "train.jsonl", src)
    before = src.read_bytes()
    # refused before any endpoint is looked for (none is given)
    one_line_error(cli("cvo-filter", "--input", src, "--out", _links(src, how), "--no-progress"),
                   "--out", "is the same file as --input")
    assert src.read_bytes() == before
    outdir = tmp_path / "mrsi"
    outdir.mkdir()
    if how == "same":  # split --input mrsi/d1.jsonl --out-dir mrsi
        inp = outdir / "d1.jsonl"
        shutil.copy(src, inp)
    else:              # mrsi/d1.jsonl is a link to the input
        inp = src
        (os.symlink if how == "symlink" else os.link)(src, outdir / "d1.jsonl")
    one_line_error(cli("split", "--input", inp, "--out-dir", outdir), "d1.jsonl", "is the same file as --input")
    assert inp.read_bytes() == before


def test_the_same_file_check_follows_links_and_missing_outputs(tmp_path):
    from mcr_swift.files import refuse_overwriting_inputs
    a = tmp_path / "a.jsonl"
    a.write_text("{}\n")
    os.link(a, tmp_path / "hard.jsonl")
    (tmp_path / "dir").mkdir()
    os.symlink(tmp_path, tmp_path / "dir" / "up")
    for out in (a, tmp_path / "hard.jsonl", tmp_path / "dir" / "up" / "a.jsonl", tmp_path / "dir" / ".." / "a.jsonl"):
        with pytest.raises(ValueError, match="is the same file as --input"):
            refuse_overwriting_inputs([("--input", a)], [("--out", out)])
    refuse_overwriting_inputs([("--input", a)], [("--out", tmp_path / "new.jsonl"), ("--cache", None)])  # fine
    b = tmp_path / "b.jsonl"
    b.write_text("{}\n")  # same content, another file: fine
    refuse_overwriting_inputs([("--input", a)], [("--out", b)])


# --------------------------------------------------------------------------- §2.4 one post, two gold files
def test_evaluate_refuses_a_post_in_two_gold_files(prepared, tmp_path):
    gold = prepared / "twitter_gmner" / "test.jsonl"
    rows = _lines(gold)
    pred = _predictions(rows, tmp_path / "pred.jsonl")
    ok = cli("evaluate", pred, "--gold", gold, "--max-pixels", TINY_MAX_PIXELS, "--json-out", tmp_path / "r.json",
             "--no-progress")
    assert ok.returncode == 0, ok.stderr
    rep = json.loads((tmp_path / "r.json").read_text())
    assert rep["posts"] == len(rows) and rep["metrics"]["gmner"]["recall"] == 1.0
    # the same file twice: before, 2 x 24 posts were scored and recall was 50 %
    err = one_line_error(cli("evaluate", pred, "--gold", gold, "--gold", gold, "--json-out", tmp_path / "r2.json",
                             "--no-progress"), f"{gold}:1:", f"also in gold file {gold}:1")
    assert f"post {rows[0]['mcr_id']}" in err
    # a copy: both files named
    copy = tmp_path / "copy.jsonl"
    shutil.copy(gold, copy)
    one_line_error(cli("evaluate", pred, "--gold", gold, "--gold", copy, "--json-out", tmp_path / "r3.json",
                       "--no-progress"), f"{copy}:1:", f"also in gold file {gold}:1")
    assert not (tmp_path / "r2.json").exists() and not (tmp_path / "r3.json").exists()


# --------------------------------------------------------------------------- §2.5 numbers out of range
RANGE_CASES = [
    (["prepare", "--root", "R", "--standin-images", "S", "--limit", "-1"], "--limit"),
    (["prepare", "--root", "R", "--standin-images", "S", "--limit", "0"], "--limit"),
    (["prepare", "--dataset", "grec", "--root", "R", "--standin-images", "S", "--train-size", "-5"], "--train-size"),
    (["synth", "--input", "IN", "--out", "OUT", "--limit", "-1"], "--limit"),
    (["synth", "--input", "IN", "--out", "OUT", "--per-post", "-1"], "--per-post"),
    (["synth", "--input", "IN", "--out", "OUT", "--concurrency", "0"], "--concurrency"),
    (["synth", "--input", "IN", "--out", "OUT", "--top-p", "1.5"], "--top-p"),
    (["synth", "--input", "IN", "--out", "OUT", "--timeout", "0"], "--timeout"),
    (["synth", "--input", "IN", "--out", "OUT", "--retries", "-1"], "--retries"),
    (["synth", "--input", "IN", "--out", "OUT", "--max-tokens", "0"], "--max-tokens"),
    (["synth", "--input", "IN", "--out", "OUT", "--temperature", "-0.5"], "--temperature"),
    (["cvo-filter", "--input", "IN", "--out", "OUT", "-G", "0"], "-G/--num-generations"),
    (["cvo-filter", "--input", "IN", "--out", "OUT", "-G", "1"], "-G/--num-generations"),
    (["cvo-filter", "--input", "IN", "--out", "OUT", "--limit", "-1"], "--limit"),
    (["cvo-filter", "--input", "IN", "--out", "OUT", "--concurrency", "-2"], "--concurrency"),
    (["cvo-filter", "--input", "IN", "--out", "OUT", "--min-max", "1.5"], "--min-max"),
    (["cvo-filter", "--input", "IN", "--out", "OUT", "--min-std", "-0.1"], "--min-std"),
    (["cvo-filter", "--input", "IN", "--out", "OUT", "--max-median", "nan"], "--max-median"),
    (["cvo-filter", "--input", "IN", "--out", "OUT", "--top-k", "0"], "--top-k"),
    (["cvo-filter", "--input", "IN", "--out", "OUT", "--min-median", "0.7"], "--min-median 0.7 is above --max-median"),
    (["cvo-filter", "--input", "IN", "--out", "OUT", "--max-pixels", "0"], "--max-pixels"),
    (["split", "--input", "IN", "--out-dir", "OUTDIR", "--d1-ratio", "1"], "--d1-ratio"),
    (["baselines", "--method", "direct", "--input", "IN", "--out", "OUT", "--shots", "-1"], "--shots"),
    (["baselines", "--method", "direct", "--input", "IN", "--out", "OUT", "--limit", "0"], "--limit"),
    (["evaluate", "IN", "--max-pixels", "-1", "--json-out", "OUT"], "--max-pixels"),
    (["predict", "--input", "IN", "--out", "OUT", "--batch-size", "0"], "--batch-size"),
    (["curves", "OUTDIR", "--smooth", "1"], "--smooth"),
    (["recipe-args", "batch", "--batch", "0"], "--batch"),
]


@pytest.mark.parametrize("args,flag", RANGE_CASES, ids=[" ".join(a[:1] + a[-2:]) for a, _ in RANGE_CASES])
def test_numbers_out_of_range_stop_at_parse_time(prepared, tmp_path, args, flag):
    inp = tmp_path / "in.jsonl"
    shutil.copy(prepared / "twitter_gmner" / "train.jsonl", inp)
    subst = {"IN": inp, "OUT": tmp_path / "out.jsonl", "OUTDIR": tmp_path / "outdir", "R": tmp_path / "root",
             "S": tmp_path / "standin"}
    err = one_line_error(cli(*[subst.get(a, a) for a in args]), flag)
    assert "out of range" in err or "above" in err or "not a finite number" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.jsonl"]  # nothing read into an output, nothing made


@pytest.mark.parametrize("var,value,command", [
    ("MCR_API_TIMEOUT", "-3", ["synth", "--input", "IN", "--out", "OUT", "--styles", "formatted_a"]),
    ("MCR_API_TIMEOUT", "abc", ["cvo-filter", "--input", "IN", "--out", "OUT"]),
    ("MAX_PIXELS", "0", ["evaluate", "IN", "--json-out", "OUT"]),
    ("MIN_PIXELS", "-10", ["cvo-filter", "--input", "IN", "--out", "OUT"]),
])
def test_numeric_settings_out_of_range_name_the_variable(prepared, tmp_path, var, value, command):
    inp = tmp_path / "in.jsonl"
    shutil.copy(prepared / "twitter_gmner" / "train.jsonl", inp)
    subst = {"IN": inp, "OUT": tmp_path / "out.jsonl"}
    one_line_error(cli(*[subst.get(a, a) for a in command], "--no-progress", env={var: value}),
                   f"environment variable {var}={value!r}")
    assert not (tmp_path / "out.jsonl").exists()


# --------------------------------------------------------------------------- §2.6 an empty CoNLL token
def test_an_empty_conll_token_is_refused_or_skipped_and_counted(tmp_path):
    from mcr_swift.data.twitter import GMNERFormatError, load_twitter_gmner
    from tests.test_bad_inputs import release
    root = release(tmp_path / "rel", "IMGID:1\nApple\tB-ORG\n\tB-ORG\nrocks\tO\n\nIMGID:2\nParis\tB-LOC\n\n")
    with pytest.raises(GMNERFormatError, match=r"train\.txt:3: empty token"):
        load_twitter_gmner(root, "train")
    posts = load_twitter_gmner(root, "train", on_error="skip")
    assert [[e.text for e in p.entities] for p in posts] == [["Apple"], ["Paris"]]  # no empty-text entity
    assert list(posts[0].tokens) == ["Apple", "rocks"]
    assert posts.report.skipped == {"lines with an empty token": 1}
    # the command: one line, exit 2, nothing written
    one_line_error(cli("prepare", "--root", root, "--standin-images", tmp_path / "s", "--out", tmp_path / "o",
                       "--no-progress"), f"{root / 'txt' / 'train.txt'}:3: empty token")
    assert not (tmp_path / "o").exists()


def test_an_empty_mner_mi_token_is_refused_or_skipped_and_counted(tmp_path):
    from mcr_swift.data.mner_mi import MNERMIFormatError, load_mner_mi
    (tmp_path / "text").mkdir()
    lines = [{"id": 1, "text": ["Apple", "", "rocks"], "images": ["1_0.jpg"], "label": ["B-ORG", "B-ORG", "O"]},
             {"id": 2, "text": ["Paris"], "images": ["2_0.jpg"], "label": ["B-LOC"]}]
    (tmp_path / "text" / "MNER-MI_train.txt").write_text("".join(json.dumps(l) + "\n" for l in lines))
    with pytest.raises(MNERMIFormatError, match=r"MNER-MI_train\.txt:1: .*empty token at position 1"):
        load_mner_mi(tmp_path, "train")
    posts = load_mner_mi(tmp_path, "train", on_error="skip")
    assert [p.id for p in posts] == ["2"] and posts.report.skipped == {"malformed posts": 1}


# --------------------------------------------------------------------------- §2.7 an input given twice
def test_synth_refuses_a_sample_in_two_inputs_and_split_a_duplicated_row(prepared, tmp_path):
    src = prepared / "twitter_gmner" / "train.jsonl"
    copy = tmp_path / "copy.jsonl"
    shutil.copy(src, copy)
    first_id = _lines(src)[0]["mcr_id"]
    out = tmp_path / "dr.jsonl"
    for second in (src, copy):  # the same file twice, or a copy
        err = one_line_error(cli("synth", "--input", src, second, "--out", out, "--styles", "formatted_a",
                                 "--no-progress"), f"{second}:1:", f"also in --input {src}:1")
        assert f"gmner sample {first_id}" in err
        assert not out.exists()
    # one input: every sample once
    ok = cli("synth", "--input", src, "--out", out, "--styles", "formatted_a", "--no-progress")
    assert ok.returncode == 0, ok.stderr
    rows = _lines(out)
    assert len(rows) == len(_lines(src)) == len({r["mcr_id"] for r in rows})
    # a D_R written twice (concatenated): split names the repeated row and writes nothing
    doubled = tmp_path / "doubled.jsonl"
    doubled.write_text(out.read_text() * 2)
    one_line_error(cli("split", "--input", doubled, "--out-dir", tmp_path / "mrsi"),
                   f"{doubled}:{len(rows) + 1}: duplicated row", "repeats line 1")
    assert not (tmp_path / "mrsi").exists()
    assert cli("split", "--input", out, "--out-dir", tmp_path / "mrsi").returncode == 0


# --------------------------------------------------------------------------- §2.10 prepare: all or nothing
def _tree(*folders):
    return sorted(str(p) for f in folders if f.exists() for p in f.rglob("*"))


def test_prepare_writes_all_or_nothing(data_v2, tmp_path):
    root = tmp_path / "rel"
    (root / "txt").mkdir(parents=True)
    os.symlink(data_v2 / "xml", root / "xml")
    (root / "txt" / "dev.txt").write_text("".join((data_v2 / "txt" / "dev.txt").open().readlines()[:300]))
    (root / "txt" / "test.txt").write_text("IMGID:1\nfoo\tB-ZZZ\n\n")  # broken: an unknown tag
    out, standin = tmp_path / "out", tmp_path / "standin"
    args = ["prepare", "--root", root, "--standin-images", standin, "--out", out, "--no-progress"]
    # a broken later split: before, dev.jsonl and dev's stand-ins stayed, without a summary
    one_line_error(cli(*args, "--splits", "dev", "test"), "test.txt:2: unknown tag")
    assert not out.exists() and not standin.exists()
    # a missing root: before, an empty output folder stayed
    one_line_error(cli("prepare", "--root", tmp_path / "nowhere", "--standin-images", standin, "--out", out,
                       "--no-progress"), "no such split file")
    assert not out.exists() and not standin.exists()
    # into an existing output with other splits: those stay, the failed run adds nothing
    ok = cli(*args, "--splits", "dev")
    assert ok.returncode == 0, ok.stderr
    before = _tree(out, standin)
    dev = (out / "twitter_gmner" / "dev.jsonl").read_bytes()
    assert [p.name for p in (out / "twitter_gmner").iterdir()] and sorted(
        p.name for p in (out / "twitter_gmner").iterdir()) == ["dev.jsonl", "summary.json"]
    (root / "txt" / "train.txt").write_text("".join((data_v2 / "txt" / "train.txt").open().readlines()[:200]))
    one_line_error(cli(*args, "--splits", "train", "test"), "unknown tag")
    assert _tree(out, standin) == before  # no train.jsonl, no train stand-ins, no staging folder
    assert (out / "twitter_gmner" / "dev.jsonl").read_bytes() == dev
    summary = json.loads((out / "twitter_gmner" / "summary.json").read_text())
    assert list(summary) == ["dev"] and summary["dev"]["file"] == str(out / "twitter_gmner" / "dev.jsonl")
    assert summary["dev"]["rows"] == len(_lines(out / "twitter_gmner" / "dev.jsonl")) > 0
    # a later good run adds its split beside the earlier one
    ok = cli(*args, "--splits", "train")
    assert ok.returncode == 0, ok.stderr
    assert sorted(p.name for p in (out / "twitter_gmner").iterdir()) == ["dev.jsonl", "summary.json", "train.jsonl"]


def test_report_table_may_not_replace_a_file_of_a_run(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "times.tsv").write_text("prepare\t12\n")
    before = (run / "times.tsv").read_bytes()
    os.symlink(run / "times.tsv", tmp_path / "link.tsv")
    for out in (run / "times.tsv", tmp_path / "link.tsv", run / "report.md"):
        one_line_error(cli("report", run, "--out", out), "--out")
        assert (run / "times.tsv").read_bytes() == before
    ok = cli("report", run, "--out", tmp_path / "table.md")
    assert ok.returncode == 0, ok.stderr
    assert (tmp_path / "table.md").is_file() and (run / "times.tsv").read_bytes() == before
