"""``mcr-swift report RUN_DIR``: the final report of a full-pipeline run (recipes/full_pipeline.sh).

Reads what each stage left in the run folder and writes ``RUN_DIR/report.md`` and ``report.json``:
the Table 1-style metrics row of the test split, every stage's wall time (or "skipped" when a
re-run found its output), the data counts (posts, D_R per style, D1/D2, the App. D.3 filter's kept
fraction) and the hyper-parameters ms-swift resolved and saved for the SFT and GRPO stages (their
``args.json``), so a run can be checked against App. E.4.
"""
from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from pathlib import Path
from typing import Any, Dict, List, Optional

from .recipe_args import version_number

__all__ = ["SFT_KEYS", "GRPO_KEYS", "collect_report", "render_markdown", "main", "trained_posts_metrics",
           "grpo_steps", "curve_files", "render_trained_posts", "render_curves"]

#: args.json keys reported per stage (App. E.4's hyper-parameters and what fixes the effective batch)
SFT_KEYS = ("model", "template", "tuner_type", "lora_rank", "lora_alpha", "target_modules", "learning_rate",
            "lr_scheduler_type", "num_train_epochs", "max_steps", "per_device_train_batch_size",
            "gradient_accumulation_steps", "warmup_ratio", "max_length", "deepspeed", "dataset")
GRPO_KEYS = SFT_KEYS + ("adapters", "num_generations", "temperature", "top_k", "top_p", "beta", "epsilon",
                        "epsilon_high", "reward_funcs", "reward_weights", "use_vllm", "vllm_mode",
                        "max_completion_length")


def _json(path: Path) -> Optional[Any]:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _args(stage_dir: Path, keys) -> Optional[Dict[str, Any]]:
    """The newest ``args.json`` ms-swift wrote under ``stage_dir`` (``v*-*/args.json``), reduced to ``keys``."""
    found = sorted(stage_dir.glob("v*-*/args.json"), key=lambda p: version_number(p.parent))
    if not found:
        return None
    a = _json(found[-1]) or {}
    out = {k: a.get(k) for k in keys if k in a}
    out["args_json"] = str(found[-1])
    return out


def _times(path: Path) -> List[Dict[str, Any]]:
    """Stage times: the last line per stage wins (a resumed run appends 'skipped')."""
    last: Dict[str, str] = {}
    ran: Dict[str, str] = {}
    if path.exists():
        for line in path.read_text().splitlines():
            parts = line.split("\t")
            if len(parts) == 2:
                last[parts[0]] = parts[1]
                if parts[1] != "skipped":
                    ran[parts[0]] = parts[1]
    return [{"stage": s, "seconds": int(ran[s]) if s in ran else None, "last_run": v} for s, v in last.items()]


def _rows(path: Path) -> Optional[Dict[str, Any]]:
    if not path.exists():
        return None
    ids, styles = set(), Counter()
    n = 0
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.strip():
            r = json.loads(line)
            n += 1
            ids.add(str(r.get("mcr_id")))
            styles[str(r.get("mcr_style", ""))] += 1
    return {"rows": n, "posts": len(ids), "styles": dict(sorted(styles.items()))}


# --- trained posts (memorisation check) and curves (issue 16) ---
#: ms-swift's GRPO logging.jsonl keys reported per step (reward = weighted sum of --reward_funcs;
#: reward_std = its std within the groups of one step; frac_reward_zero_std = share of groups with none)
GRPO_STEP_KEYS = ("reward", "reward_std", "frac_reward_zero_std", "rewards/GMNERF1Reward/mean",
                  "completions/mean_length")


def trained_posts_metrics(run: Path) -> Optional[Dict[str, Any]]:
    """The metrics row of the trained-eval stage (RUN_DIR/trained_eval/metrics.json), same shape as
    ``metrics``: infer + evaluate on the GMNER posts of D1, which MRSI trained on (a memorisation
    check, not a test score). None when the stage did not run."""
    m = _json(run / "trained_eval" / "metrics.json")
    if isinstance(m, list):
        m = m[0] if m else None
    return m


def grpo_steps(run: Path) -> Optional[List[Dict[str, Any]]]:
    """Per logged GRPO step: the step and GRPO_STEP_KEYS found, from the newest cvo_grpo logging.jsonl."""
    found = sorted((run / "cvo_grpo").glob("v*-*/logging.jsonl"), key=lambda p: version_number(p.parent))
    if not found:
        return None
    out = []
    for line in found[-1].read_text(encoding="utf-8").splitlines():
        try:
            row = json.loads(line)
        except ValueError:
            continue   # a partial last line of a running job
        if not isinstance(row, dict) or "reward" not in row:
            continue
        step = str(row.get("global_step/max_steps", "")).split("/")[0]
        out.append({"step": int(step) if step.isdigit() else len(out) + 1,
                    **{k: row[k] for k in GRPO_STEP_KEYS if k in row}})
    return out


def curve_files(run: Path) -> List[str]:
    """The PNGs `mcr-swift curves` wrote to RUN_DIR/curves, relative to RUN_DIR."""
    return sorted(str(p.relative_to(run)) for p in (run / "curves").glob("*.png"))


def _num(v: Any) -> str:
    return f"{v:.4g}" if isinstance(v, (int, float)) and not isinstance(v, bool) else ("" if v is None else str(v))


def render_trained_posts(r: Dict[str, Any]) -> List[str]:
    from .evaluate import format_table
    m = r.get("trained_posts")
    if not m:
        return []
    return ["## Trained posts (memorisation check, percent)", "",
            f"The {m.get('posts')} GMNER posts of D1 that MRSI SFT trained on, inferred and evaluated like the "
            "test split after the SFT stage. It checks that training reaches the model and that the answer, "
            "boxes included, survives the prompt, template and coordinate round trip; it says nothing about "
            "generalisation (the test row above does).", "", "```", format_table([m]), "```", ""] + (
        [f"D1 rows: {sel.get('rows_in')}; evaluated {sel.get('posts')} GMNER posts (one row each), left out "
         f"{sel.get('duplicates')} further style rows of those posts and rows of other tasks "
         f"{sel.get('skipped_by_task') or 'none'}.", ""] if (sel := r.get("trained_posts_selection")) else [])


def render_curves(r: Dict[str, Any]) -> List[str]:
    out = []
    steps = r.get("grpo_steps")
    if steps:
        keys = [k for k in GRPO_STEP_KEYS if any(k in s for s in steps)]
        out += ["## CVO GRPO per logged step (ms-swift logging.jsonl)", "",
                "| step | " + " | ".join(keys) + " |", "|---:|" + "---:|" * len(keys)]
        out += [f"| {s['step']} | " + " | ".join(_num(s.get(k)) for k in keys) + " |" for s in steps]
        out.append("")
    if r.get("curves"):
        out += ["## Curves (`mcr-swift curves`)", ""]
        out += [f"![{Path(p).stem}]({p})" for p in r["curves"]]
        out.append("")
    return out
# --- end trained posts and curves


def collect_report(run_dir) -> Dict[str, Any]:
    run = Path(run_dir)
    data = run / "data"
    synth = _json(data / "mrsi" / "d_r.jsonl.summary.json") or {}
    filt = _json(data / "mrsi" / "d2_filtered.jsonl.summary.json") or {}
    metrics = _json(run / "eval" / "metrics.json")
    if isinstance(metrics, list):
        metrics = metrics[0] if metrics else None
    return {
        "run_dir": str(run.resolve()),
        "times": _times(run / "times.tsv"),
        "prepare": _json(data / "twitter_gmner" / "summary.json"),
        "synth": {s: {k: v for k, v in d.items() if k != "requests"} for s, d in synth.get("per_style", {}).items()},
        "d1": _rows(data / "mrsi" / "d1.jsonl"),
        "d2": _rows(data / "mrsi" / "d2.jsonl"),
        "filter": {k: filt.get(k) for k in ("queries", "scored", "kept", "kept_fraction", "dropped_by_test",
                                            "thresholds", "g", "sampling")} if filt else None,
        "mrsi_sft_args": _args(run / "mrsi_sft", SFT_KEYS),
        "cvo_grpo_args": _args(run / "cvo_grpo", GRPO_KEYS),
        "metrics": metrics,
        "trained_posts": trained_posts_metrics(run),
        "trained_posts_selection": _json(run / "trained_eval" / "posts.jsonl.summary.json"),
        "grpo_steps": grpo_steps(run),
        "curves": curve_files(run),
    }


def render_markdown(r: Dict[str, Any]) -> str:
    from .evaluate import format_table
    out = [f"# MCR run report: {r['run_dir']}", ""]
    if r["metrics"]:
        out += ["## Test metrics (percent)", "", "```", format_table([r["metrics"]]), "```", ""]
    else:
        out += ["## Test metrics", "", "not available (the infer-eval stage has not finished)", ""]
    out += render_trained_posts(r)
    out += ["## Stages", "", "| stage | wall time (s) | last run |", "|---|---:|---|"]
    total = 0
    for t in r["times"]:
        total += t["seconds"] or 0
        out.append(f"| {t['stage']} | {'' if t['seconds'] is None else t['seconds']} | {t['last_run']} |")
    out += [f"| total | {total} | |", ""]
    out += ["## Data", ""]
    if r["prepare"]:
        out.append("- prepared: " + ", ".join(f"{k} {v.get('rows')} posts" for k, v in r["prepare"].items()
                                              if isinstance(v, dict)))
    for s, d in r["synth"].items():
        out.append(f"- D_R {s}: planned {d.get('planned', 0)}, produced {d.get('produced', 0)}, "
                   f"repaired {d.get('repaired', 0)}, rejected {d.get('rejected', 0)}")
    for k in ("d1", "d2"):
        if r[k]:
            out.append(f"- {k.upper()}: {r[k]['rows']} rows, {r[k]['posts']} posts, styles {r[k]['styles']}")
    if r["filter"]:
        f = r["filter"]
        out.append(f"- CVO filter (App. D.3): kept {f['kept']} of {f['scored']} queries "
                   f"({100 * (f['kept_fraction'] or 0):.1f}%), thresholds {f['thresholds']}, G {f['g']}")
    out.append("")
    for name, key in (("MRSI SFT", "mrsi_sft_args"), ("CVO GRPO", "cvo_grpo_args")):
        a = r[key]
        out += [f"## {name}: resolved arguments (ms-swift args.json)", ""]
        if not a:
            out += ["not available", ""]
            continue
        out += ["| argument | value |", "|---|---|"]
        out += [f"| {k} | {json.dumps(v)} |" for k, v in a.items()]
        out.append("")
    out += render_curves(r)
    return "\n".join(out)


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="mcr-swift report", description=__doc__.splitlines()[0])
    p.add_argument("run_dir")
    a = p.parse_args(argv)
    run = Path(a.run_dir)
    if not run.is_dir():
        print(f"mcr-swift report: {run}: not a folder", file=sys.stderr)
        return 2
    r = collect_report(run)
    (run / "report.json").write_text(json.dumps(r, indent=1, default=str))
    md = render_markdown(r)
    (run / "report.md").write_text(md + "\n")
    print(md)
    print(f"report: {run / 'report.md'}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
