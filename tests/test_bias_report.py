"""`mcr-swift bias-report`: hand-checked numbers, agreement with `mcr-swift evaluate` on the shared
test split, the whole split's known perturbation, and the page rendered in a real headless Chromium."""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from PIL import Image

from mcr_swift.reports.bias_report import main
from mcr_swift.evaluation.evaluate import evaluate_file
from mcr_swift.evaluation.reading import GoldIndex, read_rows
from mcr_swift.reports.pictures import GOLD_RGB, PRED_RGB
from tests.test_pictures import colours, perturbed_prepared, write_hand_file


def report(*args) -> dict:
    out = Path(args[args.index("--out") + 1])
    assert main([*args, "--no-progress"]) == 0
    return json.loads((out / "bias_report.json").read_text())


def test_hand_checked_numbers(tmp_path):
    path = write_hand_file(tmp_path)
    rep = report(str(path), "--out", str(tmp_path / "r"), "--top", "1")
    tb, vb, c = rep["textual_bias"], rep["visual_bias"], rep["confusion"]
    # n-predict: Manchester United, Paris, Lionel Messi (None); n-gold: Iggy, NBA, Paris; n-correct: Paris
    assert (tb["n_correct"], tb["n_predicted"], tb["n_gold"]) == (1, 3, 3)
    assert tb["n_pre"] == pytest.approx(1 / 3) and tb["n_rec"] == pytest.approx(1 / 3)
    assert tb["errors"] == {"box_for_text_only": 1, "text_only_missed": 1, "no_box_for_located": 1,
                            "unlocated_not_gold": 1}
    assert tb["posts_with_errors"] == 2
    # not in the sentence: Manchester United (p1), Barcelona (p3); 6 predictions in all
    assert (vb["n_count"], vb["n_count_predicted"], vb["posts_with_errors"]) == (2, 6, 2)
    assert vb["n_rate"] == pytest.approx(2 / 6)
    assert c == {"gold_located": {"pred_located": 1, "pred_unlocated": 1},
                 "gold_unlocated": {"pred_located": 1, "pred_unlocated": 1},
                 "located_pairs_box_right": 1,
                 "unmatched_gold": {"located": 0, "unlocated": 1},
                 "unmatched_pred": {"located": 1, "unlocated": 1}}
    assert (rep["metrics"]["gmner"]["correct"], rep["metrics"]["gmner"]["predicted"],
            rep["metrics"]["gmner"]["gold"]) == (2, 6, 5)
    # worst textual: p1 (a box for a text-only entity); worst visual: p3 (1 of 2 predictions, p1: 1 of 3)
    assert [w["id"] for w in rep["worst"]["textual"]] == ["p1"]
    assert [w["id"] for w in rep["worst"]["visual"]] == ["p3"]
    assert rep["worst"]["visual"][0]["visual"] == ["Barcelona"]
    assert rep["pictures"] == {"drawn": 2, "reused": 0, "missing_images": 0, "unreadable_images": 0}
    full = report(str(path), "--out", str(tmp_path / "r2"))
    assert [w["id"] for w in full["worst"]["textual"]] == ["p1", "p3"]
    assert [w["id"] for w in full["worst"]["visual"]] == ["p3", "p1"]
    # the same numbers as `mcr-swift evaluate` on the same file
    m = evaluate_file(path)["metrics"]
    assert {k: m[k] for k in ("gmner", "mner", "eeg")} == rep["metrics"]
    assert (m["n_count"], m["n"]["correct"]) == (vb["n_count"], tb["n_correct"])


def check_invariants(rep: dict) -> None:
    """Identities that tie the confusion and the error kinds to the paper's N counts (Eq. 26-28)."""
    tb, c = rep["textual_bias"], rep["confusion"]
    assert c["gold_unlocated"]["pred_unlocated"] == tb["n_correct"]
    assert sum(tb["errors"].values()) == (tb["n_predicted"] - tb["n_correct"]) + (tb["n_gold"] - tb["n_correct"])
    gold_unlocated = c["gold_unlocated"]["pred_located"] + c["gold_unlocated"]["pred_unlocated"] + \
        c["unmatched_gold"]["unlocated"]
    assert gold_unlocated == tb["n_gold"]
    gold_all = sum(c["gold_located"].values()) + gold_unlocated + c["unmatched_gold"]["located"]
    assert gold_all == rep["metrics"]["gmner"]["gold"]


def test_agrees_with_evaluate_on_the_shared_split(prepared, tmp_path):
    path, rows, golds, preds = perturbed_prepared(prepared, tmp_path)
    gold = str(prepared / "twitter_gmner" / "test.jsonl")
    rep = report(str(path), "--gold", gold, "--out", str(tmp_path / "r"), "--top", "3")
    ev = evaluate_file(path, GoldIndex(read_rows(Path(gold), False), gold))
    m = ev["metrics"]
    assert rep["posts"] == ev["posts"] == len(rows) and rep["unmatched_rows"] == 0
    assert {k: m[k] for k in ("gmner", "mner", "eeg")} == rep["metrics"]
    tb, vb = rep["textual_bias"], rep["visual_bias"]
    assert (tb["n_pre"], tb["n_rec"], tb["n_f1"]) == (m["n"]["precision"], m["n"]["recall"], m["n"]["f1"])
    assert (vb["n_count"], vb["n_rate"]) == (m["n_count"], m["n_rate"])
    spurious = sum(e.text.startswith("spurious entity") for p in preds for e in p)
    assert vb["n_count"] == spurious == round(0.25 * sum(map(len, golds)))
    check_invariants(rep)
    assert 0 < len(rep["worst"]["textual"]) <= 3 and 0 < len(rep["worst"]["visual"]) <= 3
    for case in rep["worst"]["textual"] + rep["worst"]["visual"]:
        assert Image.open(tmp_path / "r" / case["picture"]).format == "PNG"


def test_whole_test_split_default_perturbation(data_v2, tmp_path):
    """`perturb(golds, seed=0)` on all 1500 test posts (drop, retype, shift 10 %, no spurious entity):
    every N error is a dropped text-only entity, nothing is outside the sentence, and only the shifted
    boxes leave the located-located cell's IoU >= 0.5 count. No images: counted placeholders."""
    from mcr_swift import load_twitter_gmner
    from mcr_swift.core.metrics import perturb
    from mcr_swift.core.columns import gold_json
    samples = load_twitter_gmner(data_v2, "test")
    golds = [list(s.entities) for s in samples]
    preds = perturb(golds, seed=0)
    path = tmp_path / "perturbed.jsonl"
    with open(path, "w") as f:
        for s, p in zip(samples, preds):
            f.write(json.dumps({"mcr_id": s.id, "mcr_sentence": s.sentence, "mcr_gold": gold_json(s.entities),
                                "mcr_image_sizes": [list(s.image_size or (640, 480))],
                                "entities": [e.to_dict() for e in p]}) + "\n")
    rep = report(str(path), "--out", str(tmp_path / "r"), "--allow-missing-images")
    located = sum(1 for g in golds for e in g if e.boxes)
    unlocated = sum(1 for g in golds for e in g if not e.boxes)
    kept_located = sum(1 for p in preds for e in p if e.boxes)
    kept_unlocated = sum(1 for p in preds for e in p if not e.boxes)
    assert (located, unlocated) == (1046, 1497)  # README's shared counts
    tb, c = rep["textual_bias"], rep["confusion"]
    assert (tb["n_correct"], tb["n_predicted"], tb["n_gold"]) == (kept_unlocated, kept_unlocated, unlocated)
    assert tb["n_pre"] == 1.0 and tb["errors"] == {"box_for_text_only": 0, "no_box_for_located": 0,
                                                   "unlocated_not_gold": 0,
                                                   "text_only_missed": unlocated - kept_unlocated}
    assert rep["visual_bias"]["n_count"] == 0 and rep["worst"]["visual"] == []
    assert c["gold_located"] == {"pred_located": kept_located, "pred_unlocated": 0}
    assert c["gold_unlocated"] == {"pred_located": 0, "pred_unlocated": kept_unlocated}
    assert c["located_pairs_box_right"] == kept_located - round(0.1 * located)  # the shifted boxes
    assert c["unmatched_pred"] == {"located": 0, "unlocated": 0}
    assert c["unmatched_gold"] == {"located": located - kept_located, "unlocated": unlocated - kept_unlocated}
    check_invariants(rep)
    assert rep["pictures"]["missing_images"] == len(rep["worst"]["textual"]) == 5
    page = (tmp_path / "r" / "index.html").read_text()
    assert "no visual-bias errors (N-Count = 0)" in page


# --------------------------------------------------------------------------- in a real browser
def chromium() -> str:
    exe = shutil.which("chromium") or ("/usr/bin/chromium" if Path("/usr/bin/chromium").exists() else None)
    if exe is None:
        if os.environ.get("MCR_REQUIRE_CHROMIUM") == "1":
            pytest.fail("MCR_REQUIRE_CHROMIUM=1 but chromium is not installed (apt-get install chromium)")
        pytest.skip("chromium not installed (apt-get install chromium); set MCR_REQUIRE_CHROMIUM=1 to fail instead")
    return exe


def browse(page: Path, tmp_path: Path, *args: str) -> str:
    proc = subprocess.run([chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                           "--no-first-run", "--disable-background-networking", "--disable-component-update",
                           "--disable-sync", f"--user-data-dir={tmp_path / 'chromium-profile'}", *args,
                           page.resolve().as_uri()], capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


@pytest.mark.parametrize("command", ["bias-report", "pictures"])
def test_page_renders_in_headless_chromium(prepared, tmp_path, command):
    from mcr_swift.cli import main as cli
    path, rows, _, _ = perturbed_prepared(prepared, tmp_path)
    out = tmp_path / "page"
    args = [command, str(path), "--gold", str(prepared / "twitter_gmner" / "test.jsonl"), "--out", str(out),
            "--width", "480", "--no-progress"]
    assert cli(args + (["--top", "2"] if command == "bias-report" else ["--only", "visual", "--limit", "3"])) == 0
    page = out / "index.html"
    n_img = len(re.findall(r"<img ", page.read_text()))
    assert n_img >= 3

    shot = tmp_path / "shot.png"
    browse(page, tmp_path, f"--screenshot={shot}", "--window-size=1200,3000")
    seen = colours(Image.open(shot))
    assert 1 - seen[(255, 255, 255)] / sum(seen.values()) > 0.10  # not a blank page
    # both box colours are on screen, and they come from the drawing: the stand-in images have neither
    assert seen[GOLD_RGB] > 300 and seen[PRED_RGB] > 300
    for r in rows:
        raw = colours(Image.open(r["images"][0]))
        assert raw[GOLD_RGB] == raw[PRED_RGB] == 0

    dom = browse(page, tmp_path, "--dump-dom")
    assert f'data-images="{n_img}"' in dom and f'data-images-ok="{n_img}"' in dom
    assert re.search(r'<div id="broken" hidden="">\s*</div>', dom)
    # the check can fail: a picture that is gone is reported on the page
    srcs = re.findall(r'<img src="([^"]+)"', page.read_text())
    (out / srcs[0]).unlink()
    gone = srcs.count(srcs[0])  # a post among the worst of both biases is shown twice
    dom = browse(page, tmp_path, "--dump-dom")
    assert f'data-images-ok="{n_img - gone}"' in dom and f"{gone} picture(s) could not be loaded" in dom
