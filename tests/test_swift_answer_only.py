"""The Table 1 "+SFT" baseline through ms-swift itself: recipes/mrsi_sft.sh trains on
mcr-gmner:train_answer_only with the tiny model, and the labels ms-swift's template encodes from those
rows are the answer alone (no <think>), with the boxes in the model's space."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mcr_swift import CoordinateSpace, Entity
from tests.conftest import REPO, TINY_MAX_PIXELS

pytestmark = pytest.mark.swift


def test_sft_baseline_trains_on_answer_only_rows(tiny_model, prepared, tmp_path):
    data = tmp_path / "data"
    import shutil
    shutil.copytree(prepared, data)
    out = tmp_path / "sft"
    env = {**os.environ, "PATH": os.pathsep.join([str(Path(sys.executable).parent), os.environ["PATH"]]),
           "MCR_DATA_DIR": str(data), "MODEL": str(tiny_model), "DATASET": "mcr-gmner:train_answer_only",
           "MAX_STEPS": "3", "BATCH_SIZE": "2", "SAVE_STEPS": "3", "OUTPUT_DIR": str(out), "NPROC_PER_NODE": "1",
           "DEEPSPEED": "", "MAX_PIXELS": str(TINY_MAX_PIXELS), "DATALOADER_WORKERS": "0", "REPORT_TO": "none",
           "LOGGING_STEPS": "1"}
    t = time.time()
    p = subprocess.run(["bash", "recipes/mrsi_sft.sh"], cwd=REPO, env=env, capture_output=True, text=True,
                       timeout=900)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-6000:]
    wall = time.time() - t
    ckpt = Path((out / "last_checkpoint.txt").read_text().strip())
    assert ckpt.name == "checkpoint-3" and (ckpt / "adapter_model.safetensors").stat().st_size > 0
    args = json.loads((ckpt.parent / "args.json").read_text())
    assert args["dataset"] == ["mcr-gmner:train_answer_only"]
    assert (args["learning_rate"], args["lr_scheduler_type"], args["tuner_type"]) == (1e-4, "cosine", "lora")
    logs = [json.loads(l) for l in (ckpt.parent / "logging.jsonl").read_text().splitlines()]
    assert len([l for l in logs if "loss" in l]) == 3
    # the loader derived the rows it trained on, beside the prepared split
    rows_path = data / "twitter_gmner" / "train_answer_only.jsonl"
    assert len(rows_path.read_text().splitlines()) == 24
    print(f"\n[+SFT baseline] 3 LoRA steps on answer-only rows: wall {wall:.1f} s")

    # what ms-swift's own template encodes from those rows: labels are the answer alone
    proc = subprocess.run([sys.executable, str(REPO / "tests" / "_encode_labels.py"), str(tiny_model),
                           str(rows_path), "24"], capture_output=True, text=True, timeout=600,
                          env={**os.environ, "MAX_PIXELS": str(TINY_MAX_PIXELS), "PYTHONPATH": str(REPO)})
    assert proc.returncode == 0, proc.stderr[-4000:]
    encoded = json.loads(proc.stdout.split("@@", 1)[1])
    assert len(encoded) >= 5          # the rows with a located entity
    space = CoordinateSpace("qwen2_5_vl", max_pixels=TINY_MAX_PIXELS)
    for item in encoded:
        label, row = item["label"].strip(), item["row"]
        assert "<think>" not in label and "</think>" not in label
        assert label.startswith("<answer>\n[") and "</answer>" in label
        answer = json.loads(label[len("<answer>"):label.index("</answer>")])
        gold = [Entity.from_dict(d) for d in json.loads(row["mcr_gold"])]
        assert [(a["entity"], a["type"]) for a in answer] == [(g.text, g.type) for g in gold]
        size = tuple(row["mcr_image_sizes"][0])
        boxes = iter(row["objects"]["bbox"])
        for a, g in zip(answer, gold):
            assert (a["bbox"] is None) == (not g.boxes)
            if g.boxes:
                assert tuple(a["bbox"]) == space.to_model(next(boxes), size)


@pytest.mark.shared
def test_sft_variant_of_the_pipeline_on_cpu(tmp_path):
    """`VARIANT=sft PROFILE=tiny bash recipes/qwen25vl_7b_full.sh` through the real swift sft / infer: the
    answer-only prompts at inference join the answer-only gold rows, every test post is scored."""
    from tests.conftest import SHARED
    run = tmp_path / "run_sft"
    # 5 steps (not the tiny profile's 50 memorising passes) and no curves: this checks the wiring; the tiny
    # profile's full fine-tuning stays on, so inference runs the full-FT checkpoint itself (no adapter)
    env = {**os.environ, "PROFILE": "tiny", "VARIANT": "sft", "RUN_DIR": str(run), "MCR_SHARED_DIR": str(SHARED),
           "SFT_MAX_STEPS": "5", "CURVES": "false"}
    t = time.time()
    p = subprocess.run(["bash", "recipes/qwen25vl_7b_full.sh"], cwd=REPO, env=env, capture_output=True, text=True,
                       timeout=1800)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-6000:]
    r = json.loads((run / "report.json").read_text())
    assert [x["stage"] for x in r["times"]] == ["tiny-model", "prepare", "preflight", "sft", "infer-eval"]
    pre = r["preflight"]["train"]   # the +SFT rows themselves were measured
    assert pre["rows"] == 8 and pre["files"][0].endswith("twitter_gmner/train_answer_only.jsonl")
    assert r["sft_args"]["dataset"] == ["mcr-gmner:train_answer_only"] and r["sft_args"]["max_steps"] == 5
    assert r["sft_args"]["tuner_type"] == "full"
    m = r["metrics"]
    assert (m["posts"], m["rows"], m["unmatched_rows"]) == (8, 8, 0)   # the random model's output may not parse
    infer = [json.loads(l) for l in (run / "eval" / "infer.jsonl").read_text().splitlines()]
    assert len(infer) == 8 and all("without writing any reasoning" in x["messages"][0]["content"] for x in infer)
    assert r["table_row"]["row"] == "+SFT" and r["table_row"]["tiny"] is True
    print(f"\n[VARIANT=sft, tiny, CPU] wall {time.time() - t:.0f} s; stages (s): "
          + ", ".join(f"{x['stage']} {x['seconds']}" for x in r["times"]))
