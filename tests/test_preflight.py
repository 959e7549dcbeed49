"""`mcr-swift preflight` and the per-post image budget (issue 21, sections 1 and 2), on CPU with the
paper profile's resize setting (MAX_PIXELS 1003520 = 1280 image tokens) and the real Qwen tokenizer of
the tiny model (no weights are used)."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from mcr_swift.core.coords import (CoordinateSpace, apply_image_budget, post_max_pixels, row_max_pixels)
from mcr_swift.data.lengths import TokenCounter, load_tokenizer
from mcr_swift.pipeline.preflight import main as preflight_main
from tests.conftest import REPO

PAPER_MAX_PIXELS = 1003520
PAPER = CoordinateSpace("qwen2_5_vl", max_pixels=PAPER_MAX_PIXELS)


def write_mner_mi_fixture(root: Path, n_big: int = 2) -> Path:
    """MNER-MI posts in the release format: ``n_big`` posts with 4 images of 1200x675 and one with a
    single image; returns the image folder."""
    from PIL import Image
    (root / "text").mkdir(parents=True)
    images = root / "images"
    images.mkdir()
    posts = [(200 + i, "Lionel Messi lifts the cup with Inter Miami".split(), 4,
              ["B-PER", "I-PER", "O", "O", "O", "O", "B-ORG", "I-ORG"]) for i in range(n_big)]
    posts.append((300, "sunset over the bay".split(), 1, ["O"] * 4))
    with open(root / "text" / "MNER-MI_train.txt", "w") as f:
        for pid, text, n, label in posts:
            names = [f"{pid}_{k}.jpg" for k in range(n)]
            for name in names:
                Image.new("RGB", (1200, 675), (90, 120, 150)).save(images / name)
            f.write(json.dumps({"id": pid, "text": text, "images": names, "label": label, "url": ""}) + "\n")
    return images


def _cli(*args, env=None):
    import os
    return subprocess.run([sys.executable, "-m", "mcr_swift.cli", *args], capture_output=True, text=True,
                          cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO), **(env or {})})


def test_image_tokens_agree_with_the_real_processor():
    # transformers' own Qwen2.5-VL image processor under the paper's bounds: tokens = grid h*w / merge**2
    from PIL import Image
    from transformers.models.qwen2_vl.image_processing_qwen2_vl import Qwen2VLImageProcessor
    proc = Qwen2VLImageProcessor(min_pixels=3136, max_pixels=PAPER_MAX_PIXELS, patch_size=14, merge_size=2)
    for w, h in [(1200, 675), (640, 480), (4000, 3000), (57, 300), (2048, 1536)]:
        grid = proc(images=[Image.new("RGB", (w, h))], return_tensors="np")["image_grid_thw"][0]
        assert PAPER.image_tokens(w, h) == int(grid[1] * grid[2]) // 4, (w, h)
    assert PAPER.image_tokens(1200, 675) == 1032  # 672 x 1204 -> 24 x 43 (issue 21's figure)


def test_post_budget_hand_computed():
    four = [(1200, 675)] * 4
    assert sum(PAPER.image_tokens(*s) for s in four) == 4128
    # largest per-image cap C with 4 x tokens(1200x675 under C*784) <= 2048: C = 540 tokens;
    # beta = sqrt(810000 / 423360), sides floor(675/beta/28)*28 = 476, floor(1200/beta/28)*28 = 840 -> 17 x 30
    v = post_max_pixels(PAPER, four, 2048)
    assert v == 540 * 784 == 423360
    assert CoordinateSpace(max_pixels=v).resized_size(1200, 675) == (840, 476)
    assert 4 * CoordinateSpace(max_pixels=541 * 784).image_tokens(1200, 675) > 2048  # 541 would not fit
    assert post_max_pixels(PAPER, [(1200, 675)], 2048) is None            # one image: the run's cap binds
    assert post_max_pixels(PAPER, [(400, 300)] * 4, 2048) is None         # small images already fit
    assert post_max_pixels(PAPER, four, 0) is None                        # budget off


def test_row_space_is_what_ms_swift_resizes_with():
    row = {"images": ["a.jpg"] * 4, "mcr_image_sizes": [[1200, 675]] * 4}
    apply_image_budget(row, PAPER, 2048)
    assert row["chat_template_kwargs"] == {"max_pixels": 423360} and row_max_pixels(row) == 423360
    sp = PAPER.for_row(row)
    assert sp.max_pixels == 423360 and sp.resized_size(1200, 675) == (840, 476)
    assert sp.to_model((120, 67.5, 600, 337.5), (1200, 675)) == (84.0, 48.0, 420.0, 238.0)
    assert PAPER.for_row({"images": ["a.jpg"]}) is PAPER
    assert PAPER.for_row({"chat_template_kwargs": json.dumps({"max_pixels": 50176})}).max_pixels == 50176
    apply_image_budget(row, PAPER, 0)  # off again: the key goes
    assert "chat_template_kwargs" not in row


def test_prompt_count_equals_the_expanded_chat_template(tiny_model):
    # <image> -> vision_start + n x image_pad + vision_end through the tokenizer's own chat template
    tok = load_tokenizer(tiny_model)
    row = {"messages": [{"role": "user", "content": "Image 1: <image>\nImage 2: <image>\nName the entities."},
                        {"role": "assistant", "content": "<think>x</think>\n<answer>\n[]\n</answer>"}],
           "images": [], "mcr_image_sizes": [[1200, 675], [640, 480]]}
    from PIL import Image
    import tempfile
    with tempfile.TemporaryDirectory() as d:
        for i, s in enumerate(row["mcr_image_sizes"]):
            Image.new("RGB", tuple(s)).save(f"{d}/{i}.png")
            row["images"].append(f"{d}/{i}.png")
        c = TokenCounter(tok, PAPER).count(row)
    n = [PAPER.image_tokens(1200, 675), PAPER.image_tokens(640, 480)]
    assert c["image_tokens"] == n == [1032, 391]
    expanded = row["messages"][0]["content"]
    for k in n:
        expanded = expanded.replace("<image>", "<|vision_start|>" + "<|image_pad|>" * k + "<|vision_end|>", 1)
    ids = tok.apply_chat_template([{"role": "user", "content": expanded}], add_generation_prompt=True, tokenize=True)
    ids = ids["input_ids"] if isinstance(ids, dict) or hasattr(ids, "keys") else ids
    assert c["prompt"] == len(ids)
    assert c["target"] == len(tok("<think>x</think>\n<answer>\n[]\n</answer>", add_special_tokens=False)["input_ids"]) + 2


def test_fixture_posts_are_flagged_without_the_budget_and_pass_with_it(tmp_path, tiny_model):
    images = write_mner_mi_fixture(tmp_path / "mmi")
    for budget in ("0", "2048"):
        r = _cli("prepare", "--dataset", "mner_mi", "--root", str(tmp_path / "mmi"), "--image-dir", str(images),
                 "--out", str(tmp_path / f"b{budget}"), "--splits", "train", "--no-progress",
                 "--image-token-budget", budget, env={"MAX_PIXELS": str(PAPER_MAX_PIXELS)})
        assert r.returncode == 0, r.stderr
    before = tmp_path / "b0" / "mner_mi" / "train.jsonl"
    after = tmp_path / "b2048" / "mner_mi" / "train.jsonl"
    rows = [json.loads(l) for l in after.read_text().splitlines()]
    assert [r.get("chat_template_kwargs") for r in rows] == [{"max_pixels": 423360}] * 2 + [None]
    common = ["--model", str(tiny_model), "--max-pixels", str(PAPER_MAX_PIXELS), "--max-length", "4096",
              "--max-completion-length", "1024", "--vllm-max-model-len", "4096", "--no-progress"]
    r = _cli("preflight", str(before), "--out", str(tmp_path / "pf0"), *common)
    assert r.returncode == 2, r.stdout + r.stderr
    err = r.stderr.strip().splitlines()[-1]
    assert err.startswith("mcr-swift preflight: error: 2 of 3 rows would be dropped or truncated")
    assert f"{before}:1 (max_length+vllm_max_model_len" in err and f"{before}:2 (" in err
    assert "--max-length" in err and "--accept-losses 2" in err
    res = json.loads((tmp_path / "pf0" / "preflight.json").read_text())
    (rec,) = res["table"]
    assert (rec["source"], rec["style"], rec["rows"], rec["image_max"]) == ("mner_mi", "prepared", 3, 4128)
    assert (rec["over_max_length"], rec["over_max_completion_length"], rec["over_vllm_max_model_len"]) == (2, 0, 2)
    assert (tmp_path / "pf0" / "preflight.tsv").read_text().splitlines()[0].startswith("source\tstyle\trows")
    # accepted on purpose: exit 0, reported
    r = _cli("preflight", str(before), "--accept-losses", "2", *common)
    assert r.returncode == 0 and "accepted 2 losses" in r.stdout
    # with the per-post budget: every image 510 tokens, the post 2040, all limits kept
    r = _cli("preflight", str(after), "--out", str(tmp_path / "pf1"), *common)
    assert r.returncode == 0, r.stdout + r.stderr
    (rec,) = json.loads((tmp_path / "pf1" / "preflight.json").read_text())["table"]
    assert rec["image_max"] == 2040 and rec["total_max"] <= 4096 and rec["prompt_max"] + 1024 <= 4096
    assert rec["over_max_length"] == rec["over_vllm_max_model_len"] == 0


def test_bad_row_and_missing_image_name_file_and_line(tmp_path, tiny_model):
    f = tmp_path / "rows.jsonl"
    f.write_text(json.dumps({"messages": [{"role": "user", "content": "<image>hi"}],
                             "images": [str(tmp_path / "nope.jpg")]}) + "\n")
    r = _cli("preflight", str(f), "--model", str(tiny_model), "--no-progress")
    assert r.returncode == 2 and f"{f}:1: unreadable image" in r.stderr and "Traceback" not in r.stderr


def test_disk_arithmetic_stops_when_checkpoints_do_not_fit(tmp_path, tiny_model, capsys):
    f = tmp_path / "rows.jsonl"
    f.write_text(json.dumps({"messages": [{"role": "user", "content": "hi"}], "images": []}) + "\n")
    # 7e15 parameters, full fine-tuning, 2 checkpoints: (2 + 8) bytes x 7e15 x 2 = 1.4e17 bytes
    rc = preflight_main([str(f), "--model", str(tiny_model), "--no-progress", "--params", "7e15",
                         "--stage", "sft:full:2", "--out", str(tmp_path / "o")])
    assert rc == 2
    disk = json.loads((tmp_path / "o" / "preflight.json").read_text())["disk"]
    assert disk["stages"][0]["bytes"] == 2 * 7 * 10 ** 15 * 10 and disk["fits"] is False
    assert "checkpoints need" in capsys.readouterr().err
    # the tiny model's own weights (10 M parameters): LoRA rank 8 adapters fit
    rc = preflight_main([str(f), "--model", str(tiny_model), "--no-progress", "--out", str(tmp_path / "o")])
    disk = json.loads((tmp_path / "o" / "preflight.json").read_text())["disk"]
    assert rc == 0 and disk["fits"] is True and 9_000_000 < disk["params"] < 11_000_000
    # config 64 hidden, 2 layers, 4 heads/2 kv heads: q,k,v,o,gate,up,down rank-8 LoRA parameters
    cfg = json.loads((Path(tiny_model) / "config.json").read_text())
    c = cfg.get("text_config") or cfg
    h, i, n = c["hidden_size"], c["intermediate_size"], c["num_hidden_layers"]
    hd = c.get("head_dim") or h // c["num_attention_heads"]
    q, kv = c["num_attention_heads"] * hd, c["num_key_value_heads"] * hd
    assert disk["lora_params"] == 8 * n * ((h + q) + 2 * (h + kv) + (q + h) + 2 * (h + i) + (i + h))


@pytest.mark.shared
def test_full_v2_train_split_fits_at_the_paper_settings(tmp_path, data_v2, tiny_model):
    # every one of the 7000 prepared posts (stand-in images of each xml's size) at max_length 4096
    r = _cli("prepare", "--root", str(data_v2), "--out", str(tmp_path / "d"), "--standin-images",
             str(tmp_path / "img"), "--splits", "train", "--verify-images", "header", "--no-progress")
    assert r.returncode == 0, r.stderr
    train = tmp_path / "d" / "twitter_gmner" / "train.jsonl"
    r = _cli("preflight", str(train), "--model", str(tiny_model), "--max-pixels", str(PAPER_MAX_PIXELS),
             "--out", str(tmp_path / "pf"), "--no-progress")
    assert r.returncode == 0, r.stdout + r.stderr
    (rec,) = json.loads((tmp_path / "pf" / "preflight.json").read_text())["table"]
    assert rec["rows"] == 7000 and rec["image_max"] == 1280 and rec["total_max"] <= 4096
    assert "chat_template_kwargs" not in train.read_text()  # one image a post: the budget never binds
