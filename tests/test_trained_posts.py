"""The trained-posts memorisation check's row selection (mcr_swift.evaluation.trained_posts): one row per GMNER
post of D1, other tasks counted and left out, bad input one line and exit 2."""
from __future__ import annotations

import json

from mcr_swift.cli import run_command
from mcr_swift.evaluation.trained_posts import main, select_trained_posts


def _row(i, task=None, style="formatted_a"):
    r = {"mcr_id": i, "mcr_style": style, "messages": [{"role": "user", "content": f"<image>post {i}"}]}
    if task:
        r["mcr_task"] = task
    return r


def test_select_keeps_first_row_per_gmner_post():
    rows = [_row("a"), _row("a", style="formatted_b"), _row("m1", "mner_mi"), _row("b", "gmner"),
            _row("g1", "grec"), _row("g2", "grec"), _row("b", "gmner", "llm_qa")]
    kept, counts = select_trained_posts(rows)
    assert [(r["mcr_id"], r["mcr_style"]) for r in kept] == [("a", "formatted_a"), ("b", "formatted_a")]
    assert counts == {"rows_in": 7, "posts": 2, "duplicates": 2, "skipped_by_task": {"grec": 2, "mner_mi": 1}}
    assert counts["posts"] + counts["duplicates"] + sum(counts["skipped_by_task"].values()) == counts["rows_in"]


def test_cli_writes_rows_and_summary(tmp_path, capsys):
    d1 = tmp_path / "d1.jsonl"
    d1.write_text("".join(json.dumps(r) + "\n" for r in [_row("a"), _row("a", style="b"), _row("x", "grec")]))
    out = tmp_path / "te" / "posts.jsonl"
    assert main([str(d1), str(out)]) == 0
    assert [json.loads(l)["mcr_id"] for l in out.read_text().splitlines()] == ["a"]
    s = json.loads((tmp_path / "te" / "posts.jsonl.summary.json").read_text())
    assert (s["posts"], s["duplicates"], s["skipped_by_task"]) == (1, 1, {"grec": 1})


def test_cli_bad_input_one_line_exit_2(tmp_path, capsys):
    d1 = tmp_path / "d1.jsonl"
    d1.write_text(json.dumps(_row("a")) + "\n{not json\n")
    assert run_command("trained-posts", main, [str(d1), str(tmp_path / "o.jsonl")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and f"{d1}:2" in err
    assert not (tmp_path / "o.jsonl").exists()
    only_other = tmp_path / "other.jsonl"
    only_other.write_text(json.dumps(_row("g", "grec")) + "\n")
    assert run_command("trained-posts", main, [str(only_other), str(tmp_path / "o.jsonl")]) == 2
    assert "no GMNER row" in capsys.readouterr().err
