"""`mcr-swift curves`: ms-swift's logging.jsonl -> Figures 4-5 style PNGs. Key names are those a real
ms-swift 4.6 GRPO run of the tiny model logs (tests/test_stage_recipes.py draws a real run too)."""
from __future__ import annotations

import json

import pytest
from PIL import Image

from mcr_swift.cli import main as cli
from mcr_swift.reports.curves import FIGURES, _panels, ema, find_logs, read_log

TERMS = ["GMNERReward", "GMNERCountReward", "GMNERSpanReward", "GMNERTypeReward", "GMNERIoUReward",
         "GMNEREntailReward"]


def grpo_row(step: int, n: int, reward: float) -> dict:
    row = {"loss": 0.01 * step, "grad_norm": 0.5, "learning_rate": 5e-6, "completions/mean_length": 300.0 - step,
           "reward": reward, "reward_std": 0.1, "entropy/mean": 0.5 + 0.01 * step, "kl": 0.001 * step,
           "epoch": step / n, "global_step/max_steps": f"{step}/{n}", "elapsed_time": "4s"}
    row.update({f"rewards/{t}/mean": reward for t in TERMS})
    return row


def write_log(path, rows, extra_lines=()):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows) + "".join(extra_lines))
    return path


def test_read_log_skips_and_counts_malformed_lines(tmp_path):
    rows = [grpo_row(s, 3, 0.1 * s) for s in (1, 2, 3)]
    rows[1]["kl"] = float("nan")      # json.dumps writes NaN: a non-finite value is not plotted
    lines = [json.dumps(rows[0]) + "\n", "[1, 2]\n", json.dumps(rows[1]) + "\n", "\n", json.dumps(rows[2]) + "\n",
             json.dumps({"train_runtime": 7.7, "train_loss": 0.0, "global_step/max_steps": "3/3"}) + "\n",
             '{"loss": 0.5, "rew']    # the partial last line of a running job
    path = tmp_path / "logging.jsonl"
    path.write_text("".join(lines))
    run = read_log(path, "r")
    assert run.malformed == [2, 7]
    assert run.series["reward"] == [(1, 0.1), (2, 0.2), (3, pytest.approx(0.3))]
    assert run.series["kl"] == [(1, 0.001), (3, 0.003)]
    assert "elapsed_time" not in run.series and "train_runtime" not in run.series
    assert run.series["loss"][-1] == (3, 0.03)   # the summary's train_loss is not a step


def test_ema_is_tensorboards():
    assert ema([1.0, 2.0, 3.0], 0.5) == [1.0, 1.5, 2.25]
    assert ema([4.0, 1.0], 0.0) == [4.0, 1.0]


def test_panels_follow_the_logged_keys(tmp_path):
    run = read_log(write_log(tmp_path / "l.jsonl", [grpo_row(1, 1, 0.2) | {"eval_reward": 0.3, "eval_f1": 0.4}]), "r")
    panels = {f.name: _panels(f, [run]) for f in FIGURES}
    assert panels["reward"] == [("reward", ["reward", "eval_reward"])]
    assert [t for t, _ in panels["reward_terms"]] == [f"rewards/{t}/mean" for t in TERMS]   # logging order
    assert panels["f1"] == [("eval_f1", ["eval_f1"])]
    assert panels["entropy_kl"] == [("entropy", ["entropy/mean"]), ("KL", ["kl"])]


def test_cli_overlays_runs_and_skips_absent_series(tmp_path, capsys):
    single = tmp_path / "single" / "cvo_grpo"
    multi = tmp_path / "multi" / "cvo_grpo"
    write_log(single / "v0-20260101-000000" / "logging.jsonl", [grpo_row(s, 4, 0.3) for s in range(1, 5)])
    write_log(single / "v1-20260102-000000" / "logging.jsonl", [grpo_row(s, 4, 0.5) for s in range(1, 4)],
              ['{"reward": ', "\n"])
    write_log(multi / "v0-20260101-000000" / "logging.jsonl", [grpo_row(s, 4, 0.1 * s) for s in range(1, 5)])
    out = tmp_path / "fig"
    assert cli(["curves", str(single), str(multi), "--labels", "single", "multi", "--out", str(out),
                "--smooth", "0.6"]) == 0
    text = capsys.readouterr().out
    assert "2 versions, reading the newest (v1-20260102-000000)" in text
    assert "single: " in text and "3 logged steps" in text and "1 malformed line(s) skipped (line 4)" in text
    assert "multi: " in text and "4 logged steps" in text
    assert "f1: no series in the logs" in text
    names = sorted(p.name for p in out.glob("*.png"))
    assert names == ["completion_length.png", "entropy_kl.png", "loss.png", "reward.png", "reward_terms.png"]
    with Image.open(out / "reward_terms.png") as im:   # 6 panels -> a 3 x 2 grid at 110 dpi
        assert im.size == (1650, 792)


def test_sft_run_of_a_pipeline_folder(tmp_path, capsys):
    write_log(tmp_path / "run" / "mrsi_sft" / "v0-1-1" / "logging.jsonl",
              [{"loss": 2.0 / s, "learning_rate": 1e-4, "token_acc": 0.5, "global_step/max_steps": f"{s}/3"}
               for s in (1, 2, 3)])
    write_log(tmp_path / "run" / "cvo_grpo" / "v0-1-1" / "logging.jsonl", [grpo_row(1, 1, 0.2)])
    assert [label for _, label in find_logs(tmp_path / "run")] == ["cvo_grpo", "mrsi_sft"]
    assert cli(["curves", str(tmp_path / "run" / "mrsi_sft")]) == 0
    text = capsys.readouterr().out
    for name in ("reward", "reward_terms", "f1", "completion_length", "entropy_kl"):
        assert f"{name}: no series" in text
    assert [p.name for p in (tmp_path / "run" / "mrsi_sft" / "curves").glob("*.png")] == ["loss.png"]


def test_cli_errors_are_clear(tmp_path, capsys):
    """Issue 20 section 4: a missing, empty or garbage folder is one line on stderr, exit 2."""
    def one_line(*needles):
        out, err = capsys.readouterr()
        assert err.startswith("mcr-swift curves: error: ") and len(err.strip().splitlines()) == 1, err
        assert "[curves] error" not in out and "Traceback" not in err
        for n in needles:
            assert n in err, (n, err)

    assert cli(["curves", str(tmp_path / "missing")]) == 2
    one_line(f"{tmp_path / 'missing'}: no such run folder")
    assert cli(["curves", str(tmp_path)]) == 2
    one_line(f"{tmp_path}: no logging.jsonl")
    write_log(tmp_path / "a" / "logging.jsonl", ["not a dict"], ["garbage\n"])
    assert cli(["curves", str(tmp_path / "a")]) == 2
    one_line("no plottable series in", str(tmp_path / "a" / "logging.jsonl"))
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "logging.jsonl").write_bytes(b"\xff\xfe\x00garbage\x00" * 50)
    assert cli(["curves", str(tmp_path / "c")]) == 2
    one_line("no plottable series in")
    write_log(tmp_path / "b" / "logging.jsonl", [grpo_row(1, 1, 0.0)])
    with pytest.raises(SystemExit):
        cli(["curves", str(tmp_path / "b"), "--labels", "x", "y"])
