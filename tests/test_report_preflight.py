"""The run report shows the preflight stage's tables (issue 21 §1): tokens per source and style against
the run's limits, the rows lost and whether they were accepted on purpose."""
from __future__ import annotations

from mcr_swift.reports.report import render_preflight


def _row(source, style, over=0):
    return {"source": source, "style": style, "rows": 2, "prompt_median": 500, "prompt_p95": 600, "prompt_max": 610,
            "target_max": 300, "total_max": 910, "over_max_length": over, "over_max_completion_length": 0,
            "over_vllm_max_model_len": over}


def test_report_shows_the_preflight_tables_and_accepted_losses():
    pre = {"train": {"rows": 4, "limits": {"max_length": 4096, "max_completion_length": 1024,
                                           "vllm_max_model_len": 4096},
                     "table": [_row("gmner", "formatted_a"), _row("mner_mi", "llm_qa", over=1)],
                     "losses": 1, "accept_losses": 1, "accepted": True},
           "test": {"rows": 2, "limits": {"max_length": 0, "max_completion_length": 2048, "vllm_max_model_len": 8192},
                    "table": [_row("gmner", "")], "losses": 0, "accept_losses": 0, "accepted": False}}
    md = "\n".join(render_preflight(pre))
    assert "train rows (4): limits max_length 4096, max_completion_length 1024, vllm_max_model_len 4096; rows lost 1 " \
           "(accepted on purpose: --accept-losses 1)" in md
    assert "| mner_mi | llm_qa | 2 | 500 / 600 / 610 | 300 | 910 | 1 | 0 | 1 |" in md
    assert "test rows (2):" in md and "rows lost 0\n" in md and "| gmner | - | 2 |" in md
    assert render_preflight(None) == [] and render_preflight({}) == []
