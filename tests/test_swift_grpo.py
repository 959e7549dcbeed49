"""Proof through ms-swift: GRPO rollouts scored by gmner_orm, and ms-swift's own label text scoring 1.0."""
from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import time

import pytest

from mcr_swift import CoordinateSpace, gmner_reward, parse_answer, reward_terms
from mcr_swift.plugin.registry import plugin_path
from mcr_swift.core.columns import gold_from_row
from tests.conftest import REPO, TINY_MAX_PIXELS, swift_bin

pytestmark = pytest.mark.swift

# App. E.4 (CVO) sampling and clipping values, passed explicitly (ms-swift-notes: never rely on the
# model's generation_config for rollouts).
PAPER_GRPO = ["--temperature", "1.5", "--top_k", "200", "--top_p", "0.95", "--beta", "0.005",
              "--epsilon", "0.15", "--epsilon_high", "0.25", "--num_generations", "4"]


def to_model(entities, space, size):
    """Gold in the completion's space: the reward compares where the model writes (issue 3)."""
    return [type(e)(e.text, e.type, tuple(space.to_model(b, size) for b in e.boxes)) for e in entities]


def grpo(tiny_model, prepared, out_dir, reward_args, steps, log_path):
    env = {**os.environ, "MCR_DATA_DIR": str(prepared), "MAX_PIXELS": str(TINY_MAX_PIXELS),
           "MCR_REWARD_LOG": str(log_path)}
    t = time.time()
    proc = subprocess.run(
        [swift_bin(), "rlhf", "--rlhf_type", "grpo", "--model", str(tiny_model), "--template", "qwen2_5_vl",
         "--check_model", "false", "--external_plugins", plugin_path(), "--dataset", "mcr-gmner:train#8",
         "--tuner_type", "lora", *reward_args, *PAPER_GRPO, "--max_steps", str(steps),
         "--per_device_train_batch_size", "4", "--gradient_accumulation_steps", "1",
         "--max_completion_length", "48", "--learning_rate", "5e-6", "--warmup_ratio", "0.05",
         "--logging_steps", "1", "--save_steps", str(steps), "--dataloader_num_workers", "0",
         "--report_to", "none", "--output_dir", str(out_dir)],
        env=env, capture_output=True, text=True, cwd=out_dir.parent, timeout=900)
    wall = time.time() - t
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-6000:]
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    logs = [json.loads(l) for l in next(out_dir.glob("v*/logging.jsonl")).read_text().splitlines()]
    return logs, wall, peak


def test_grpo_scores_real_rollouts_with_gmner_orm(tiny_model, prepared, tmp_path):
    log_path = tmp_path / "rewards.jsonl"
    logs, wall, peak = grpo(tiny_model, prepared, tmp_path / "grpo", ["--reward_funcs", "gmner_orm"], 2, log_path)
    print(f"\n[swift rlhf grpo] 2 steps x 4 rollouts, gmner_orm: wall {wall:.1f} s, peak RSS {peak:.0f} MB")
    steps = [l for l in logs if "rewards/GMNERReward/mean" in l]
    assert len(steps) == 2, logs
    records = [json.loads(l) for l in log_path.read_text().splitlines()]
    assert len(records) == 2 * 4  # every rollout of both steps was scored
    train = {json.loads(l)["mcr_id"]: json.loads(l)
             for l in (prepared / "twitter_gmner" / "train.jsonl").read_text().splitlines()}
    space = CoordinateSpace("qwen2_5_vl", max_pixels=TINY_MAX_PIXELS)
    for rec in records:
        row = train[rec["mcr_id"]]
        # a real rollout: generated text, not the dataset's assistant answer
        assert rec["completion"] != row["messages"][-1]["content"]
        size = tuple(row["mcr_image_sizes"][0])
        pred = parse_answer(rec["completion"], extent=space.model_extent(size)).entities
        assert rec["reward"] == pytest.approx(gmner_reward(pred, to_model(gold_from_row(row), space, size)))
    # the logged batch mean is the mean of the rollouts' rewards
    means = [s["rewards/GMNERReward/mean"] for s in steps]
    assert sum(means) / 2 == pytest.approx(sum(r["reward"] for r in records) / 8, abs=1e-3)


def test_grpo_with_separate_terms_and_weights(tiny_model, prepared, tmp_path):
    names = ["gmner_count", "gmner_span", "gmner_type", "gmner_iou", "gmner_entail", "gmner_format"]
    logs, _, _ = grpo(tiny_model, prepared, tmp_path / "grpo", ["--reward_funcs", *names, "--reward_weights",
                                                                 "0.2", "0.2", "0.2", "0.2", "0.2", "0"],
                      1, tmp_path / "r.jsonl")
    keys = {k for l in logs for k in l if k.startswith("rewards/") and k.endswith("/mean")}
    assert len(keys) == 6, keys


def test_ms_swift_label_text_scores_one(tiny_model, data_v2, tmp_path):
    """Round trip: the assistant target ms-swift's template produces scores 1.0 on every term."""
    from mcr_swift.data.prepare import prepare_twitter_gmner
    from mcr_swift.plugin.orms import GMNERReward
    prepare_twitter_gmner(data_v2, tmp_path / "d", splits=["train"], standin_dir=tmp_path / "img", limit=80,
                          progress=False)
    env = {**os.environ, "MAX_PIXELS": str(TINY_MAX_PIXELS), "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, str(REPO / "tests" / "_encode_labels.py"), str(tiny_model),
                           str(tmp_path / "d" / "twitter_gmner" / "train.jsonl"), "40"], env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    encoded = json.loads(proc.stdout.split("@@", 1)[1])
    assert len(encoded) >= 25
    labels = [e["label"].replace("<|im_end|>", "").strip() for e in encoded]
    os.environ["MAX_PIXELS"] = str(TINY_MAX_PIXELS)
    try:
        kwargs = {"mcr_gold": [e["row"]["mcr_gold"] for e in encoded],
                  "mcr_image_sizes": [e["row"]["mcr_image_sizes"] for e in encoded]}
        assert GMNERReward()(labels, **kwargs) == [1.0] * len(labels)
        space = CoordinateSpace.from_env()
        for e, text in zip(encoded, labels):
            size = tuple(e["row"]["mcr_image_sizes"][0])
            pred = parse_answer(text).entities
            assert reward_terms(pred, to_model(gold_from_row(e["row"]), space, size)) == {
                "count": 1.0, "span": 1.0, "type": 1.0, "iou": 1.0, "entail": 1.0}
    finally:
        del os.environ["MAX_PIXELS"]
