"""Proof through ms-swift itself: `swift sft` trains on the registered data, and the label tokens
ms-swift's template produces carry exactly our model-space boxes."""
from __future__ import annotations

import json
import os
import re
import resource
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mcr_swift import CoordinateSpace, Entity
from mcr_swift.plugin.registry import plugin_path
from tests.conftest import REPO, TINY_MAX_PIXELS, swift_bin

#: every test here but test_plugin_file_and_cli runs ms-swift (marked swift one by one)


def run_swift(args, env_extra, cwd, timeout=600):
    env = {**os.environ, **env_extra}
    t = time.time()
    proc = subprocess.run([swift_bin(), *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=timeout)
    wall = time.time() - t
    peak_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    if proc.returncode != 0:
        raise AssertionError(f"swift {args[0]} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n"
                             f"{proc.stderr[-6000:]}")
    return proc, wall, peak_mb


def test_plugin_file_and_cli():
    path = Path(plugin_path())
    assert path.is_file() and path.suffix == ".py"
    # the plugin's folder goes on sys.path: it must hold nothing but the plugin file
    assert [p.name for p in path.parent.glob("*.py")] == ["mcr_swift_plugin.py"]
    out = subprocess.run([sys.executable, "-m", "mcr_swift.cli", "plugin"], capture_output=True, text=True,
                         cwd=REPO, check=True).stdout.strip()
    assert out == str(path)


@pytest.mark.swift
def test_swift_sft_trains_on_registered_gmner(tiny_model, prepared, tmp_path):
    out_dir = tmp_path / "sft"
    proc, wall, peak_mb = run_swift(
        ["sft", "--model", str(tiny_model), "--template", "qwen2_5_vl", "--check_model", "false",
         "--external_plugins", plugin_path(), "--dataset", "mcr-gmner:train#16",
         "--tuner_type", "lora", "--max_steps", "5", "--per_device_train_batch_size", "1",
         "--gradient_accumulation_steps", "1", "--learning_rate", "1e-4", "--lr_scheduler_type", "cosine",
         "--save_steps", "5", "--logging_steps", "1", "--dataloader_num_workers", "0",
         "--report_to", "none", "--output_dir", str(out_dir), "--max_length", "4096"],
        {"MCR_DATA_DIR": str(prepared), "MAX_PIXELS": str(TINY_MAX_PIXELS)}, cwd=tmp_path)
    print(f"\n[swift sft] 5 LoRA steps: wall {wall:.1f} s, peak RSS {peak_mb:.0f} MB")
    ckpts = list(out_dir.glob("v*/checkpoint-5"))
    assert len(ckpts) == 1, list(out_dir.rglob("*"))
    assert (ckpts[0] / "adapter_model.safetensors").stat().st_size > 0
    assert json.loads((ckpts[0] / "adapter_config.json").read_text())["peft_type"] == "LORA"
    logs = [json.loads(l) for l in (ckpts[0].parent / "logging.jsonl").read_text().splitlines()]
    losses = [float(l["loss"]) for l in logs if "loss" in l]
    assert len(losses) == 5 and all(l > 0 for l in losses)
    # ms-swift logged our plugin, our dataset, and the plain box format the plugin chose
    text = proc.stdout + proc.stderr
    assert "Successfully imported external_plugins" in text
    assert "QWENVL_BBOX_FORMAT: plain" in text


def one_step_sft(tiny_model, data_dir, dataset, tmp_path):
    """One LoRA step of `swift sft` on ``dataset`` read from ``data_dir`` (checkpoint-1 under tmp_path/sft)."""
    env = {**os.environ, "MCR_DATA_DIR": str(data_dir), "MAX_PIXELS": str(TINY_MAX_PIXELS)}
    return subprocess.run(
        [swift_bin(), "sft", "--model", str(tiny_model), "--template", "qwen2_5_vl", "--check_model", "false",
         "--external_plugins", plugin_path(), "--dataset", dataset, "--tuner_type", "lora",
         "--max_steps", "1", "--save_steps", "1", "--per_device_train_batch_size", "1",
         "--gradient_accumulation_steps", "1", "--dataloader_num_workers", "0", "--report_to", "none",
         "--output_dir", str(tmp_path / "sft"), "--max_length", "4096"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)


@pytest.mark.swift
def test_swift_sft_stops_on_a_missing_image_of_a_registered_dataset(tiny_model, prepared, tmp_path):
    """ms-swift alone logs a missing image and trains on another row (exit 0); the registered loader
    stops before training with file:line: missing image <path>, and swift exits non-zero."""
    rows = (prepared / "twitter_gmner" / "train.jsonl").read_text().splitlines()[:8]
    row = json.loads(rows[2])
    gone = tmp_path / "gone" / "999.jpg"
    row["images"] = [str(gone)]
    rows[2] = json.dumps(row)
    data = tmp_path / "data" / "twitter_gmner"
    data.mkdir(parents=True)
    (data / "train.jsonl").write_text("\n".join(rows) + "\n")
    proc = one_step_sft(tiny_model, tmp_path / "data", "mcr-gmner:train", tmp_path)
    assert proc.returncode != 0
    assert f"{data / 'train.jsonl'}:3: missing image {gone}" in proc.stdout + proc.stderr
    assert not list((tmp_path / "sft").rglob("checkpoint-*"))  # stopped before training


ANSWER = re.compile(r"<answer>\s*(\[.*\])\s*</answer>", re.S)


@pytest.mark.swift
@pytest.mark.parametrize("max_pixels", [TINY_MAX_PIXELS, 1003520])
def test_label_boxes_are_the_converted_original_boxes(tiny_model, data_v2, tmp_path, max_pixels):
    """The bug every grounding project hits: label space vs reward/eval space. ms-swift's template
    must write exactly CoordinateSpace.to_model(original box) into the label tokens."""
    from mcr_swift.data.prepare import prepare_twitter_gmner
    prepare_twitter_gmner(data_v2, tmp_path / "data", splits=["train"], standin_dir=tmp_path / "img",
                          limit=120, progress=False)
    rows = tmp_path / "data" / "twitter_gmner" / "train.jsonl"
    resize = ("MAX_PIXELS", "MIN_PIXELS", "IMAGE_MAX_TOKEN_NUM", "IMAGE_MIN_TOKEN_NUM")  # only max_pixels applies
    env = {**{k: v for k, v in os.environ.items() if k not in resize}, "MAX_PIXELS": str(max_pixels),
           "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, str(REPO / "tests" / "_encode_labels.py"), str(tiny_model),
                           str(rows), "60"], env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    encoded = json.loads(proc.stdout.split("@@", 1)[1])
    assert len(encoded) >= 40
    space = CoordinateSpace("qwen2_5_vl", max_pixels=max_pixels)
    n_boxes = n_scaled = 0
    for item in encoded:
        row = item["row"]
        size = tuple(row["mcr_image_sizes"][0])
        # the processor really fed the model the size our module computes
        assert tuple(item["grid_hw"][::-1]) == space.resized_size(*size)
        answer = json.loads(ANSWER.search(item["label"]).group(1))
        gold = [Entity.from_dict(d) for d in json.loads(row["mcr_gold"])]
        assert [a["entity"] for a in answer] == [g.text for g in gold]
        expected = iter(row["objects"]["bbox"])
        for a, g in zip(answer, gold):
            if not g.boxes:
                assert a["bbox"] is None
                continue
            original = next(expected)
            assert tuple(original) in g.boxes
            assert tuple(a["bbox"]) == space.to_model(original, size), (row["mcr_id"], a, original)
            n_boxes += 1
            n_scaled += tuple(a["bbox"]) != tuple(original)
    assert n_boxes >= 40
    if max_pixels == TINY_MAX_PIXELS:
        assert n_scaled == n_boxes  # every image was downscaled: no box may stay in original pixels


@pytest.mark.swift
@pytest.mark.parametrize("fault", [None, "missing image", "tag mismatch"])
def test_no_cvo_data_trains_through_the_checked_loader(tiny_model, prepared, tmp_path, fault):
    """Issue 20 §2.2: VARIANT=no_cvo's kept D2 rows (data/mrsi/d2_kept.jsonl) train through the registered
    ``mcr-mrsi:d2_kept``, so a missing image or an image-tag mismatch stops `swift sft` before training
    (exit non-zero, file:line named) instead of training on other rows; clean rows train."""
    rows = (prepared / "twitter_gmner" / "train.jsonl").read_text().splitlines()[:6]
    row = json.loads(rows[2])
    gone = tmp_path / "gone" / "7.jpg"
    if fault == "missing image":
        row["images"] = [str(gone)]
    elif fault == "tag mismatch":  # one image, two <image> tags
        row["messages"][0]["content"] = "<image>" + row["messages"][0]["content"]
    rows[2] = json.dumps(row)
    data = tmp_path / "data" / "mrsi"
    data.mkdir(parents=True)
    (data / "d2_kept.jsonl").write_text("\n".join(rows) + "\n")
    proc = one_step_sft(tiny_model, tmp_path / "data", "mcr-mrsi:d2_kept", tmp_path)
    text = proc.stdout + proc.stderr
    if fault is None:
        assert proc.returncode == 0, text[-4000:]
        assert len(list((tmp_path / "sft").glob("v*/checkpoint-1"))) == 1
        return
    assert proc.returncode != 0
    expected = (f"missing image {gone}" if fault == "missing image" else "2 <image> tags but 1 images")
    assert f"{data / 'd2_kept.jsonl'}:3: {expected}" in text, text[-4000:]
    assert not list((tmp_path / "sft").rglob("checkpoint-*"))  # stopped before training
