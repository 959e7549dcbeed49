"""The preflight's counts against ms-swift's own Qwen2.5-VL template encode (issue 21): prompt and
target tokens of prepared GMNER rows and of MNER-MI rows under the per-post image budget, whose
``chat_template_kwargs.max_pixels`` ms-swift must honour (image grids) exactly as the preflight and the
rewards' coordinate space assume."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from mcr_swift.core.coords import CoordinateSpace
from mcr_swift.jsonl import iter_jsonl
from mcr_swift.data.lengths import TokenCounter, load_tokenizer
from tests.conftest import REPO
from tests.test_preflight import PAPER_MAX_PIXELS, write_mner_mi_fixture

pytestmark = pytest.mark.swift


def test_counts_agree_with_ms_swift_template_encode(tmp_path, prepared, tiny_model):
    images = write_mner_mi_fixture(tmp_path / "mmi")
    env = {**os.environ, "PYTHONPATH": str(REPO), "MAX_PIXELS": str(PAPER_MAX_PIXELS)}
    r = subprocess.run([sys.executable, "-m", "mcr_swift.cli", "prepare", "--dataset", "mner_mi", "--root",
                        str(tmp_path / "mmi"), "--image-dir", str(images), "--out", str(tmp_path / "d"),
                        "--splits", "train", "--no-progress"], capture_output=True, text=True, env=env, cwd=REPO)
    assert r.returncode == 0, r.stderr
    rows = [r for _, r, _ in iter_jsonl(prepared / "twitter_gmner" / "train.jsonl")][:3]
    rows += [r for _, r, _ in iter_jsonl(tmp_path / "d" / "mner_mi" / "train.jsonl")]
    f = tmp_path / "rows.jsonl"
    f.write_text("".join(json.dumps(r) + "\n" for r in rows))
    p = subprocess.run([sys.executable, str(REPO / "tests" / "_encode_labels.py"), str(tiny_model), str(f), "0", "lengths"],
                       capture_output=True, text=True, env=env, cwd=REPO, timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    encoded = json.loads(p.stdout.split("@@", 1)[1])
    counter = TokenCounter(load_tokenizer(tiny_model), CoordinateSpace("qwen2_5_vl", max_pixels=PAPER_MAX_PIXELS))
    for row, enc in zip(rows, encoded):
        c = counter.count(row)
        assert c["prompt"] + c["target"] == enc["input_ids"], row["mcr_id"]
        assert c["target"] == enc["labels"], row["mcr_id"]
        assert c["image_tokens"] == [t * h * w // 4 for t, h, w in enc["grid"]], row["mcr_id"]
    # the budgeted 4-image posts: 4 x 510 image tokens in ms-swift's own encode
    assert [g for e in encoded[3:5] for g in e["grid"]] == [[1, 34, 60]] * 8
