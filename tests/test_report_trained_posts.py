"""report.py's issue-16 sections: the trained-posts row (memorisation check), the GRPO steps read from
ms-swift's logging.jsonl and the curve PNGs, on a hand-made run folder."""
from __future__ import annotations

import json

from mcr_swift.reports.report import collect_report, render_markdown


def _metrics(f1):
    m = {"precision": f1, "recall": f1, "f1": f1, "correct": 1, "predicted": 1, "gold": 1}
    return {"file": "x", "posts": 2, "rows": 2, "parse_failures": 0,
            "metrics": {"gmner": m, "mner": m, "eeg": m, "n": m}}


def test_report_trained_posts_grpo_steps_and_curves(tmp_path):
    run = tmp_path / "run"
    (run / "eval").mkdir(parents=True)
    (run / "eval" / "metrics.json").write_text(json.dumps(_metrics(0.0)))
    (run / "trained_eval").mkdir()
    (run / "trained_eval" / "metrics.json").write_text(json.dumps([_metrics(0.9)]))
    (run / "trained_eval" / "posts.jsonl.summary.json").write_text(json.dumps(
        {"rows_in": 7, "posts": 2, "duplicates": 2, "skipped_by_task": {"grec": 2, "mner_mi": 1}}))
    old, new = run / "cvo_grpo" / "v0-20260101-000000", run / "cvo_grpo" / "v1-20260101-000100"
    old.mkdir(parents=True)
    new.mkdir()
    (old / "logging.jsonl").write_text(json.dumps({"reward": 9.0, "global_step/max_steps": "1/1"}) + "\n")
    (new / "logging.jsonl").write_text(
        json.dumps({"reward": 0.25, "reward_std": 0.0, "frac_reward_zero_std": 1.0, "global_step/max_steps": "1/2"})
        + "\n" + json.dumps({"reward": 0.5, "reward_std": 0.125, "frac_reward_zero_std": 0.5,
                             "global_step/max_steps": "2/2"})
        + "\n" + json.dumps({"train_runtime": 3.0}) + "\n{\"reward\": 0.")   # summary line, partial line
    (run / "curves").mkdir()
    for name in ("reward", "loss"):
        (run / "curves" / f"{name}.png").write_bytes(b"\x89PNG")
    r = collect_report(run)
    assert r["trained_posts"] == _metrics(0.9) and r["metrics"] == _metrics(0.0)
    assert r["grpo_steps"] == [{"step": 1, "reward": 0.25, "reward_std": 0.0, "frac_reward_zero_std": 1.0},
                               {"step": 2, "reward": 0.5, "reward_std": 0.125, "frac_reward_zero_std": 0.5}]
    assert r["curves"] == ["curves/loss.png", "curves/reward.png"]
    md = render_markdown(r)
    assert md.index("## Test metrics") < md.index("## Trained posts (memorisation check")
    assert "D1 rows: 7; evaluated 2 GMNER posts (one row each), left out 2 further style rows" in md
    assert "{'grec': 2, 'mner_mi': 1}" in md
    assert "| 2 | 0.5 | 0.125 | 0.5 |" in md and "![reward](curves/reward.png)" in md


def test_report_without_the_new_stages(tmp_path):
    r = collect_report(tmp_path)
    assert r["trained_posts"] is None and r["trained_posts_selection"] is None and r["grpo_steps"] is None and r["curves"] == []
    md = render_markdown(r)
    assert "Trained posts" not in md and "Curves" not in md
