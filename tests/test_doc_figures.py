"""The counts docs/pipeline.md's "Estimated GPU time" builds on, recomputed from the code's own
arithmetic (issue 21 §6): App. E.1's sample counts, `plan_styles`' 2 of 5 balanced styles per sample, and
the row split's D2 (one query per sample). A figure in the docs that the code no longer gives fails here."""
from __future__ import annotations

import re
from collections import Counter
from pathlib import Path

from mcr_swift.synth.split import split_by_post, split_by_row
from mcr_swift.synth.synthesize import (ALL_STYLES, API_STYLES, DEFAULT_PER_POST, PAPER_D_R, PAPER_TRAIN_SAMPLES,
                                        plan_styles)

DOC = (Path(__file__).resolve().parents[1] / "docs" / "pipeline.md").read_text(encoding="utf-8")
GPU_TIME = DOC[DOC.index("## Estimated GPU time"):DOC.index("## Using the plugin")]


def _n(x: int) -> str:
    return f"{x:,}"


def _paper_plan():
    keys = [(t, f"{t}{i}") for t, n in PAPER_TRAIN_SAMPLES.items() for i in range(n)]
    return keys, plan_styles(keys, ALL_STYLES, DEFAULT_PER_POST, seed=0)


def test_chains_per_style_and_endpoint():
    keys, plan = _paper_plan()
    per_style = Counter(s for styles in plan for s in styles)
    assert sum(per_style.values()) == PAPER_D_R == 55712 == 2 * len(keys)
    llm = sum(n for s, n in per_style.items() if s in API_STYLES and not API_STYLES[s][1])
    mllm = sum(n for s, n in per_style.items() if s in API_STYLES and API_STYLES[s][1])
    templates = sum(n for s, n in per_style.items() if s not in API_STYLES)
    assert (llm, mllm, templates) == (22284, 11142, 22286)
    for figure in (llm, mllm, PAPER_D_R, len(keys)):
        assert _n(figure) in GPU_TIME, figure
    assert f"synth, template styles | CPU only, {_n(templates)} chains" in GPU_TIME
    assert "a third of 55,712" not in DOC and "18,600" not in DOC


def test_d2_queries_under_each_split_unit():
    keys, plan = _paper_plan()
    rows = [{"mcr_task": t, "mcr_id": i, "mcr_style": s} for (t, i), styles in zip(keys, plan) for s in styles]
    d1, d2 = split_by_row(rows, 0.5, 0)
    queries = len({(r["mcr_task"], r["mcr_id"]) for r in d2})
    assert (len(d1), len(d2), queries) == (27856, 27856, 27856)       # the default: every sample once
    assert f"{_n(queries)} D2 queries" in GPU_TIME
    _, p2 = split_by_post(rows, 0.5, 0)
    assert len({(r["mcr_task"], r["mcr_id"]) for r in p2}) == 13928  # --split-unit post: half the samples
    assert not re.search(r"~27,900 D2 queries", DOC)
