"""`mcr-swift pictures`: the per-post analysis (hand-checked), the drawing (pixels), and the command on
the shared test split with stand-in images and a perturbed prediction file."""
from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path

import pytest
from PIL import Image

from mcr_swift import Entity
from mcr_swift.core.metrics import perturb, post_counts
from mcr_swift.reports.pictures import GOLD_RGB, PRED_RGB, _char_spans, draw_post, main
from mcr_swift.reports.posts import Post, analyse, span_pairs
from mcr_swift.core.columns import gold_from_row, gold_json

SENTENCE = "Iggy got it RT Kevin Durant : NBA CHAMPION"


def colours(im: Image.Image) -> Counter:
    """Pixel count per RGB colour."""
    return Counter({c: n for n, c in im.convert("RGB").getcolors(1 << 24)})


def hand_posts():
    """Three posts with hand-checked errors (see test_analyse_hand_checked_post and test_bias_report)."""
    return [
        # Kevin Durant right; Iggy (text-only) given a box; NBA (text-only) missed; an entity not in the text.
        ("p1", SENTENCE,
         [Entity("Kevin Durant", "PER", (10, 10, 60, 80)), Entity("Iggy", "PER"), Entity("NBA", "ORG")],
         [Entity("Kevin Durant", "PER", (12, 12, 60, 80)), Entity("Iggy", "PER", (10, 10, 60, 80)),
          Entity("Manchester United", "ORG")]),
        # perfect
        ("p2", "Rainy day in Paris", [Entity("Paris", "LOC")], [Entity("Paris", "LOC")]),
        # None for a located entity; a located prediction not in the sentence
        ("p3", "Lionel Messi scores again", [Entity("Lionel Messi", "PER", (100, 20, 180, 90))],
         [Entity("Lionel Messi", "PER"), Entity("Barcelona", "ORG", (0, 0, 50, 50))]),
    ]


def write_hand_file(tmp_path: Path, with_images: bool = True) -> Path:
    """The hand posts as rows carrying mcr_gold + entities, with 200x100 white images."""
    path = tmp_path / "hand.jsonl"
    with open(path, "w") as f:
        for pid, sentence, gold, pred in hand_posts():
            img = tmp_path / f"{pid}.png"
            if with_images:
                Image.new("RGB", (200, 100), (255, 255, 255)).save(img)
            f.write(json.dumps({"mcr_id": pid, "mcr_sentence": sentence, "mcr_gold": gold_json(gold),
                                "images": [str(img)], "mcr_image_sizes": [[200, 100]],
                                "entities": [e.to_dict() for e in pred]}) + "\n")
    return path


def test_analyse_hand_checked_post():
    _, sentence, gold, pred = hand_posts()[0]
    a = analyse(pred, gold, sentence)
    assert [(t["kind"], t["entity"]) for t in a["textual"]] == [
        ("box_for_text_only", "Iggy"), ("text_only_missed", "NBA"), ("unlocated_not_gold", "Manchester United")]
    c = post_counts(pred, gold, sentence)
    # the kinds add up to the N-Pre and N-Rec misses (Eq. 28): (1 - 0) + (2 - 0)
    assert len(a["textual"]) == (c["n"]["predicted"] - c["n"]["correct"]) + (c["n"]["gold"] - c["n"]["correct"]) == 3
    assert a["visual"] == [{"entity": "Manchester United", "type": "ORG", "pred": 2}] and a["n_count"] == 1
    assert a["confusion"] == {"located_located": 1, "located_unlocated": 0, "unlocated_located": 1,
                              "unlocated_unlocated": 0}
    assert a["located_box_right"] == 1
    assert a["unmatched_gold"] == {"located": 0, "unlocated": 1}
    assert a["unmatched_pred"] == {"located": 0, "unlocated": 1}
    assert a["pred_status"] == ["correct", "box for a text-only entity", "not in the sentence"]
    assert a["gold_found"] == [0] and a["error"] is True
    perfect = analyse(hand_posts()[1][3], hand_posts()[1][2], hand_posts()[1][1])
    assert perfect["error"] is False and perfect["textual"] == [] and perfect["visual"] == []


def test_span_pairs_pair_same_location_state_first():
    gold = [Entity("NBA", "ORG"), Entity("NBA", "ORG", (0, 0, 10, 10))]
    pred = [Entity("NBA", "ORG", (0, 0, 10, 10)), Entity("NBA", "ORG"), Entity("NBA", "ORG")]
    assert span_pairs(pred, gold) == [(0, 1), (1, 0)]
    a = analyse(pred, gold, "NBA NBA")
    assert a["confusion"]["unlocated_unlocated"] == post_counts(pred, gold)["n"]["correct"] == 1
    assert [t["kind"] for t in a["textual"]] == ["unlocated_not_gold"]
    assert a["pred_status"] == ["correct", "correct", "not a gold entity"]


def test_char_spans_use_each_occurrence_once():
    ents = [Entity("NBA", "ORG"), Entity("NBA", "ORG"), Entity("Lakers", "ORG"), Entity("Bulls", "ORG")]
    assert _char_spans("NBA fans love the NBA Lakers", ents) == [(0, 3), (18, 21), (22, 28)]


def test_draw_post_puts_both_colours_where_the_boxes_are():
    _, sentence, gold, pred = hand_posts()[0]
    post = Post(0, "p1", "x:1", None, (200, 100), sentence, gold, pred)
    post.analysis = analyse(pred, gold, sentence)
    pic = draw_post(post, Image.new("RGB", (200, 100), (255, 255, 255)), width=400)  # scale 2
    assert pic.width == 400 and pic.height > 200
    # gold box (10,10,60,80) -> x 20..120: outline 4 px wide from x=20; Kevin Durant's predicted box
    # (12,12,60,80) -> 2 px wide from x=24; Iggy's predicted box covers the gold edge's first 2 px.
    assert pic.getpixel((22, 100)) == GOLD_RGB
    assert pic.getpixel((24, 100)) == PRED_RGB and pic.getpixel((25, 100)) == PRED_RGB
    assert pic.getpixel((20, 100)) == PRED_RGB
    assert pic.getpixel((26, 100)) == (255, 255, 255)
    # the text panel (below the 200 px image) carries gold and predicted underlines/legend
    panel = colours(pic.crop((0, 200, 400, pic.height)))
    assert panel[GOLD_RGB] > 50 and panel[PRED_RGB] > 50


def test_long_prediction_lists_are_not_cut_off():
    """Model output is adversarial: 300 predicted entities still all end up on the picture."""
    pred = [Entity(f"made up entity number {k}", "PER") for k in range(300)]
    post = Post(0, "long", "x:1", None, (200, 100), SENTENCE, [], pred)
    post.analysis = analyse(pred, [], SENTENCE)
    pic = draw_post(post, Image.new("RGB", (200, 100), (255, 255, 255)), width=400)
    assert pic.height > 2000  # one wrapped line per few entities
    assert colours(pic.crop((0, pic.height - 30, 400, pic.height)))[PRED_RGB] > 0  # the last line is drawn


# --------------------------------------------------------------------------- the command, shared data
def perturbed_prepared(prepared: Path, tmp_path: Path, spurious: float = 0.25):
    """`{id, entities}` predictions: the prepared test rows perturbed (seed 0) with spurious entities."""
    rows = [json.loads(l) for l in (prepared / "twitter_gmner" / "test.jsonl").read_text().splitlines()]
    golds = [gold_from_row(r) for r in rows]
    preds = perturb(golds, seed=0, spurious=spurious)
    path = tmp_path / "perturbed.jsonl"
    with open(path, "w") as f:
        for r, p in zip(rows, preds):
            f.write(json.dumps({"id": r["mcr_id"], "entities": [e.to_dict() for e in p]}) + "\n")
    return path, rows, golds, preds


def expected_selection(rows, golds, preds):
    """Post ids per filter, derived from the perturbation itself (not from the tool's analysis)."""
    perfect = perturb(golds, seed=0, drop=0, shift=0, retype=0)
    out = {"errors": [], "textual": [], "visual": []}
    for r, exact, p in zip(rows, perfect, preds):
        spurious = any(e.text.startswith("spurious entity") for e in p)
        dropped_unlocated = Counter(e.text for e in exact if not e.boxes) - Counter(e.text for e in p if not e.boxes)
        if p != exact:
            out["errors"].append(r["mcr_id"])
        if spurious or dropped_unlocated:
            out["textual"].append(r["mcr_id"])
        if spurious:
            out["visual"].append(r["mcr_id"])
    return out


def run_pictures(*args):
    return main([*args, "--no-progress"])


@pytest.mark.parametrize("only", ["errors", "textual", "visual", "all"])
def test_filters_select_exactly_the_perturbed_posts(prepared, tmp_path, only):
    path, rows, golds, preds = perturbed_prepared(prepared, tmp_path)
    gold = str(prepared / "twitter_gmner" / "test.jsonl")
    out = tmp_path / "pics"
    assert run_pictures(str(path), "--gold", gold, "--out", str(out), "--only", only) == 0
    summary = json.loads((out / "pictures.json").read_text())
    expected = expected_selection(rows, golds, preds)
    expected["all"] = [r["mcr_id"] for r in rows]
    assert [p["id"] for p in summary["pictures"]] == expected[only]
    assert summary["matching"] == {k: len(expected[k]) for k in ("errors", "textual", "visual")}
    assert all(summary["matching"][k] > 0 for k in summary["matching"])  # the fixture exercises each filter
    assert summary["drawn"] == len(expected[only]) and summary["missing_images"] == 0
    page = (out / "index.html").read_text()
    srcs = re.findall(r'<img src="([^"]+)"', page)
    assert srcs == [p["picture"] for p in summary["pictures"]]
    for s in srcs:  # relative paths that resolve next to the page, real PNGs
        assert not s.startswith(("/", "http")) and Image.open(out / s).format == "PNG"
    assert "http://" not in page and "https://" not in page and "<link" not in page


def test_posts_limit_resume_and_unknown_ids(prepared, tmp_path, capsys):
    path, rows, _, _ = perturbed_prepared(prepared, tmp_path)
    gold = str(prepared / "twitter_gmner" / "test.jsonl")
    out = tmp_path / "pics"
    ids = [rows[5]["mcr_id"], rows[2]["mcr_id"], rows[9]["mcr_id"]]
    assert run_pictures(str(path), "--gold", gold, "--out", str(out), "--posts", ",".join(ids), "--limit", "2") == 0
    summary = json.loads((out / "pictures.json").read_text())
    assert [p["id"] for p in summary["pictures"]] == [rows[2]["mcr_id"], rows[5]["mcr_id"]]  # file order
    assert summary["drawn"] == 2 and summary["reused"] == 0
    assert run_pictures(str(path), "--gold", gold, "--out", str(out), "--posts", ",".join(ids), "--limit", "2") == 0
    again = json.loads((out / "pictures.json").read_text())
    assert again["drawn"] == 0 and again["reused"] == 2  # resumed: same inputs, same files
    assert run_pictures(str(path), "--gold", gold, "--out", str(out), "--posts", "nope,also-not") == 2
    assert "no post with id nope, also-not" in capsys.readouterr().err


def test_missing_images_name_the_row_or_become_counted_placeholders(prepared, tmp_path, capsys):
    rows = [json.loads(l) for l in (prepared / "twitter_gmner" / "test.jsonl").read_text().splitlines()][:4]
    rows[2]["images"] = [str(tmp_path / "gone.jpg")]
    path = tmp_path / "rows.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert run_pictures(str(path), "--out", str(tmp_path / "a")) == 2
    err = capsys.readouterr().err
    assert f"{path}:3: post {rows[2]['mcr_id']}: image {tmp_path / 'gone.jpg'} not found" in err
    assert not (tmp_path / "a" / "posts").exists()  # checked before anything is drawn
    assert run_pictures(str(path), "--out", str(tmp_path / "b"), "--allow-missing-images") == 0
    summary = json.loads((tmp_path / "b" / "pictures.json").read_text())
    assert summary["missing_images"] == 1 and summary["drawn"] == 4
    placeholder = Image.open(tmp_path / "b" / summary["pictures"][2]["picture"]).convert("RGB")
    w, h = rows[2]["mcr_image_sizes"][0]
    region = placeholder.crop((0, 0, 640, round(h * 640 / w)))
    assert colours(region).most_common(1)[0][0] == (200, 200, 200)  # the grey placeholder


def test_an_image_that_is_not_an_image_is_reported_and_the_others_go_on(prepared, tmp_path, capsys):
    rows = [json.loads(l) for l in (prepared / "twitter_gmner" / "test.jsonl").read_text().splitlines()][:4]
    fake, cut = tmp_path / "notes.jpg", tmp_path / "cut.jpg"
    fake.write_text("this is a text file, not a JPEG")
    cut.write_bytes(Path(rows[3]["images"][0]).read_bytes()[:300])  # a truncated JPEG: header only
    rows[1]["images"], rows[3]["images"] = [str(fake)], [str(cut)]
    path = tmp_path / "rows.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "pics"
    assert run_pictures(str(path), "--out", str(out)) == 0
    err = capsys.readouterr().err
    assert f"{path}:2: post {rows[1]['mcr_id']}: image {fake} unreadable: cannot identify image file" in err
    assert f"{path}:4: post {rows[3]['mcr_id']}: image {cut} unreadable" in err
    summary = json.loads((out / "pictures.json").read_text())
    assert summary["drawn"] == 4 and summary["unreadable_images"] == 2 and summary["missing_images"] == 0
    assert (out / "index.html").is_file()
    assert sorted(p.name for p in out.rglob("*") if p.name.endswith(".tmp") or p.name.startswith(".")) == []
    placeholder = Image.open(out / summary["pictures"][1]["picture"]).convert("RGB")
    assert colours(placeholder.crop((0, 0, 640, 200))).most_common(1)[0][0] == (200, 200, 200)


def test_rows_without_images_use_image_dir(prepared, tmp_path, capsys):
    """Rows like `{mcr_id, mcr_sentence, mcr_gold, entities}` name no image: --image-dir finds <id>.jpg."""
    rows = [json.loads(l) for l in (prepared / "twitter_gmner" / "test.jsonl").read_text().splitlines()][:3]
    path = tmp_path / "plain.jsonl"
    path.write_text("".join(json.dumps({k: r[k] for k in ("mcr_id", "mcr_sentence", "mcr_gold")}
                                       | {"entities": json.loads(r["mcr_gold"])}) + "\n" for r in rows))
    assert run_pictures(str(path), "--out", str(tmp_path / "a")) == 2
    assert f"{path}:1: post {rows[0]['mcr_id']}: the row names no image" in capsys.readouterr().err
    image_dir = Path(rows[0]["images"][0]).parent
    assert run_pictures(str(path), "--out", str(tmp_path / "b"), "--image-dir", str(image_dir)) == 0
    summary = json.loads((tmp_path / "b" / "pictures.json").read_text())
    assert summary["missing_images"] == 0 and summary["drawn"] == 3
    pic = Image.open(tmp_path / "b" / summary["pictures"][0]["picture"]).convert("RGB")
    standin = Image.open(rows[0]["images"][0]).convert("RGB")
    region = pic.crop((0, 0, 640, round(standin.height * 640 / standin.width)))
    # the stand-in (scaled to the default width, 640) is the picture's background
    background = colours(region).most_common(1)[0][0]
    assert background == pytest.approx(colours(standin).most_common(1)[0][0], abs=12)


@pytest.mark.swift
def test_pictures_of_real_swift_infer_output(tiny_model, prepared, tmp_path):
    """`swift infer` output of the tiny random model (joined to --gold like `mcr-swift evaluate`):
    every post gets a picture; unparsable responses are said so on the picture and the page."""
    import os
    import subprocess

    from mcr_swift.plugin.registry import plugin_path
    from tests.conftest import TINY_MAX_PIXELS, swift_bin
    result = tmp_path / "infer.jsonl"
    env = {**os.environ, "MCR_DATA_DIR": str(prepared), "MAX_PIXELS": str(TINY_MAX_PIXELS)}
    proc = subprocess.run([swift_bin(), "infer", "--model", str(tiny_model), "--template", "qwen2_5_vl",
                           "--external_plugins", plugin_path(), "--val_dataset", "mcr-gmner:test#3",
                           "--infer_backend", "transformers", "--max_new_tokens", "16", "--max_batch_size", "3",
                           "--result_path", str(result)], env=env, capture_output=True, text=True, cwd=tmp_path,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    out = tmp_path / "pics"
    assert run_pictures(str(result), "--gold", str(prepared / "twitter_gmner" / "test.jsonl"), "--out", str(out),
                        "--max-pixels", str(TINY_MAX_PIXELS)) == 0
    summary = json.loads((out / "pictures.json").read_text())
    rows = [json.loads(l) for l in (prepared / "twitter_gmner" / "test.jsonl").read_text().splitlines()]
    assert summary["unmatched_rows"] == 0 and summary["missing_posts"] == len(rows) - 3
    # the 3 inferred posts, then the gold posts without a row (no prediction), as `evaluate` scores them
    assert [p["id"] for p in summary["pictures"]] == [r["mcr_id"] for r in rows]
    assert sum("(no prediction row)" in p["where"] for p in summary["pictures"]) == len(rows) - 3
    page = (out / "index.html").read_text()
    assert page.count("the response could not be parsed") == summary["parse_failures"]
    for p, r in zip(summary["pictures"], rows):
        w, h = r["mcr_image_sizes"][0]
        region = colours(Image.open(out / p["picture"]).crop((0, 0, 640, round(h * 640 / w))))
        assert (region[GOLD_RGB] > 0) == any(e.boxes for e in gold_from_row(r))  # gold boxes drawn
