"""``mcr-swift report RUN_DIR``: the final report of a full-pipeline run (``mcr-swift pipeline``).

Reads what each stage left in the run folder and writes ``RUN_DIR/report.md`` and ``report.json``:
the Table 1-style metrics row of the test split, every stage's wall time (or "skipped" when a
re-run found its output), the data counts (posts, D_R per style, D1/D2, the App. D.3 filter's kept
fraction) and the hyper-parameters ms-swift resolved and saved for the SFT and GRPO stages (their
``args.json``), so a run can be checked against App. E.4.

``mcr-swift report RUN_DIR [RUN_DIR ...]``: every run's report as above, then one markdown table of the
runs' Table 1 / Table 3 rows (the pipeline's ``VARIANT``, RUN_DIR/variant.txt), each next to the paper's
numbers for the same row and model (`PAPER_ROWS`); ``--out FILE`` also writes that table.
"""
from __future__ import annotations

import argparse
import html
import json
import os
import sys
from collections import Counter
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

from ..files import refuse_overwriting_inputs
from ..jsonl import write_json_atomic, write_text_atomic
from ..runs import version_number

__all__ = ["SFT_KEYS", "GRPO_KEYS", "collect_report", "render_markdown", "PAPER_ROWS", "VARIANT_ROWS",
           "variant_row", "render_variant_table", "main", "trained_posts_metrics", "grpo_steps", "curve_files",
           "render_trained_posts", "render_curves"]

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
    return [{"stage": s, "seconds": int(ran[s]) if ran.get(s, "").strip().isdigit() else None, "last_run": v}
            for s, v in last.items()]  # a value that is not a number of seconds is shown, not added up


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


# --------------------------------------------------------------------------- sources of D_R (App. E.1)
#: Prepared folder of each source (task) and its name in the paper.
SOURCE_DIRS = {"gmner": ("twitter_gmner", "Twitter-GMNER"), "mner_mi": ("mner_mi", "MNER-MI"),
               "grec": ("grec", "GREC")}


def _task_style_rows(path: Path) -> Tuple[Optional[Dict[str, Dict[str, int]]], Dict[str, int]]:
    """Rows per task and style of a D_R / D1 / D2 file (rows without ``mcr_task`` are GMNER), and
    posts (distinct ``mcr_id``) per task; (None, {}) when the file is missing."""
    if not path.exists():
        return None, {}
    out: Dict[str, Counter] = {}
    posts: Dict[str, set] = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.strip():
            r = json.loads(line)
            task = str(r.get("mcr_task") or "gmner")
            out.setdefault(task, Counter())[str(r.get("mcr_style", ""))] += 1
            posts.setdefault(task, set()).add(str(r.get("mcr_id")))
    return {t: dict(sorted(c.items())) for t, c in out.items()}, {t: len(v) for t, v in posts.items()}


def sources_report(data: Path, synth: Dict[str, Any], filt: Dict[str, Any]) -> Optional[Dict[str, Any]]:
    """What each source contributed: its status (``sources.tsv`` of the prepare stage: prepared,
    missing, not selected), prepared rows per split, D_R / D1 / D2 rows per style, and the filter's
    queries and kept samples. None when the run has no ``sources.tsv``."""
    tsv = data / "sources.tsv"
    if not tsv.exists():
        return None
    read = {k: _task_style_rows(data / "mrsi" / f"{k}.jsonl") for k in ("d_r", "d1", "d2")}
    rows = {k: v[0] for k, v in read.items()}
    out: Dict[str, Any] = {}
    for line in tsv.read_text(encoding="utf-8").splitlines():
        parts = line.split("\t")
        if len(parts) < 2:
            continue
        task, status = parts[0], parts[1]
        folder, name = SOURCE_DIRS.get(task, (task, task))
        prep = _json(data / folder / "summary.json") if status == "prepared" else None
        out[task] = {
            "name": name, "status": status, "root": parts[2] if len(parts) > 2 else "",
            "prepared": {k: v.get("rows") for k, v in (prep or {}).items() if isinstance(v, dict)},
            "synth_samples": (synth.get("input_per_task") or {}).get(task),
            **{k: (v or {}).get(task, {}) if v is not None else None for k, v in rows.items()},
            **{f"{k}_posts": v[1].get(task, 0) if v[0] is not None else None for k, v in read.items()},
            "filter_queries": (filt.get("queries_per_task") or {}).get(task) if filt else None,
            "filter_kept": (filt.get("kept_per_task") or {}).get(task) if filt else None,
            # prepare's loud lines: missing images, counts that differ from the published ones
            "warnings": [w for v in (prep or {}).values() if isinstance(v, dict) for w in v.get("warnings") or []],
        }
    return {"per_source": out, "paper_count": synth.get("paper_count"),
            "per_task_style": synth.get("per_task_style")}


def render_sources(src: Optional[Dict[str, Any]]) -> List[str]:
    """The report's "Sources of D_R" section (rows per source and style in D_R, D1, D2)."""
    if not src:
        return []
    out = ["## Sources of D_R (App. E.1)", "",
           "| source | status | prepared rows | D_R rows by style | D1 rows by style | D2 rows by style | filter kept |",
           "|---|---|---|---|---|---|---|"]

    def styles(d, posts=None):
        if d is None:
            return "-"
        text = (f"{sum(d.values())}: " + ", ".join(f"{k} {v}" for k, v in d.items())) if d else "0"
        return text if posts is None else f"{text} ({posts} posts)"
    for task, d in src["per_source"].items():
        prep = ", ".join(f"{k} {v}" for k, v in d["prepared"].items()) or "-"
        kept = "-" if d["filter_queries"] is None else f"{d['filter_kept'] or 0} of {d['filter_queries']}"
        status = d["status"].upper() if d["status"] == "missing" else d["status"]
        out.append(f"| {d['name']} | {status} | {prep} | {styles(d['d_r'], d.get('d_r_posts'))} | "
                   f"{styles(d['d1'], d.get('d1_posts'))} | {styles(d['d2'], d.get('d2_posts'))} | {kept} |")
    warned = [w for d in src["per_source"].values() for w in d.get("warnings") or []]
    if warned:
        out += [""] + [f"- **WARNING** (prepare): {w}" for w in warned]
    if src.get("paper_count"):
        out += ["", src["paper_count"]]
    if src.get("per_task_style"):
        keys = ("planned", "produced", "retried", "replaced", "replacing", "lost")
        out += ["", "Synthesis per source and style (retried: chains asked again; replaced: slots given to "
                "another style; replacing: rows made in place of another style; lost: slots left empty):", "",
                "| source | style | " + " | ".join(keys) + " |", "|---|---|" + "---|" * len(keys)]
        for task, per in src["per_task_style"].items():
            name = SOURCE_DIRS.get(task, (task, task))[1]
            for style, d in per.items():
                out.append(f"| {name} | {style} | " + " | ".join(str(d.get(k, 0)) for k in keys) + " |")
    return out + [""]


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


PREFLIGHT_LIMITS = (("over_max_length", "max_length"), ("over_max_completion_length", "max_completion_length"),
                    ("over_vllm_max_model_len", "vllm_max_model_len"))


def render_preflight(pre: Optional[Dict[str, Any]]) -> List[str]:
    """The preflight stage's tables (issue 21 §1): tokens per source and style against the run's limits,
    the rows that would be lost and whether that was accepted on purpose (``--accept-losses``)."""
    if not pre:
        return []
    out = ["## Preflight: tokens against the run's limits (issue 21)", ""]
    for half, d in pre.items():
        if not d:
            continue
        lim = d.get("limits") or {}
        out.append(f"{half} rows ({d.get('rows', 0)}): limits " + ", ".join(f"{k} {lim.get(k)}" for _, k in
                                                                           PREFLIGHT_LIMITS) +
                   f"; rows lost {d.get('losses', 0)}" + (f" (accepted on purpose: --accept-losses "
                                                          f"{d.get('accept_losses')})" if d.get("accepted") else ""))
        out += ["", "| source | style | rows | prompt median / p95 / max | target max | total max | over "
                "max_length | over completion cap | over vLLM length |", "|---|---|---:|---|---:|---:|---:|---:|---:|"]
        for t in d.get("table") or []:
            out.append(f"| {t['source']} | {t['style'] or '-'} | {t['rows']} | {t['prompt_median']} / "
                       f"{t['prompt_p95']} / {t['prompt_max']} | {t['target_max']} | {t['total_max']} | "
                       + " | ".join(str(t.get(k, 0)) for k, _ in PREFLIGHT_LIMITS) + " |")
        out.append("")
    return out


def render_trained_posts(r: Dict[str, Any]) -> List[str]:
    from ..evaluation.evaluate import format_table
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
        "variant": run_variant(run),
        "mrsi_sft_args": _args(run / "mrsi_sft", SFT_KEYS),
        "sft_args": _args(run / "sft", SFT_KEYS),
        "cvo_sft_args": _args(run / "cvo_sft", SFT_KEYS),
        "cvo_grpo_args": _args(run / "cvo_grpo", GRPO_KEYS),
        "metrics": metrics,
        "sources": sources_report(data, synth, filt),
        "trained_posts": trained_posts_metrics(run),
        "trained_posts_selection": _json(run / "trained_eval" / "posts.jsonl.summary.json"),
        "grpo_steps": grpo_steps(run),
        "curves": curve_files(run),
        "preflight": {h: _json(run / "preflight" / h / "preflight.json") for h in ("train", "test")
                      if (run / "preflight" / h / "preflight.json").is_file()},
    }


def render_markdown(r: Dict[str, Any]) -> str:
    from ..evaluation.evaluate import format_table
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
    out += render_sources(r.get("sources"))
    out += render_preflight(r.get("preflight"))
    for name, key in (("MRSI SFT", "mrsi_sft_args"), ("CVO GRPO", "cvo_grpo_args"), ("+SFT baseline", "sft_args"),
                      ("w/o CVO: SFT on the CVO data", "cvo_sft_args")):
        a = r.get(key)
        if key in ("sft_args", "cvo_sft_args") and not a:
            continue
        out += [f"## {name}: resolved arguments (ms-swift args.json)", ""]
        if not a:
            out += ["not available", ""]
            continue
        out += ["| argument | value |", "|---|---|"]
        out += [f"| {k} | {json.dumps(v)} |" for k, v in a.items()]
        out.append("")
    out += render_curves(r)
    return "\n".join(out)


# ---- Table 1 / Table 3 rows of several runs (issue 14, sec. 3) ----

#: The paper's numbers (percent): (model, row) -> (table, GMNER P/R/F1, MNER P/R/F1, EEG P/R/F1).
#: Table 1 (main results) for both models; Table 3 (ablations, Sec. 5.4) reports Qwen2.5VL-7B only, and its
#: "Ours" row is Table 1's "+MRSI+CVO" row of that model.
PAPER_ROWS: Dict[tuple, tuple] = {
    ("Qwen2.5VL-7B", "+SFT"): ("Table 1", (63.3, 62.0, 62.7), (83.0, 81.3, 82.2), (65.8, 64.4, 65.1)),
    ("Qwen2.5VL-7B", "+MRSI"): ("Table 1", (69.1, 68.1, 68.6), (82.4, 81.2, 81.8), (72.1, 71.0, 71.5)),
    ("Qwen2.5VL-7B", "+MRSI+CVO"): ("Table 1", (70.5, 70.8, 70.6), (82.6, 82.9, 82.8), (73.2, 73.5, 73.4)),
    ("MimoVL-7B", "+SFT"): ("Table 1", (63.5, 60.6, 62.0), (81.7, 78.0, 79.8), (67.0, 63.9, 65.4)),
    ("MimoVL-7B", "+MRSI"): ("Table 1", (66.1, 65.5, 65.8), (81.5, 80.8, 81.1), (69.8, 69.2, 69.5)),
    ("MimoVL-7B", "+MRSI+CVO"): ("Table 1", (69.4, 69.7, 69.6), (82.2, 82.5, 82.3), (72.8, 73.1, 72.9)),
    ("Qwen2.5VL-7B", "w/o MRSI"): ("Table 3", (50.2, 53.2, 51.7), (64.3, 68.1, 66.2), (54.2, 57.5, 55.8)),
    ("Qwen2.5VL-7B", "w/o CVO"): ("Table 3", (68.9, 68.6, 68.8), (81.9, 81.5, 81.7), (72.2, 71.9, 72.0)),
    ("Qwen2.5VL-7B", "w/o D_R"): ("Table 3", (69.5, 68.8, 69.2), (81.6, 80.7, 81.1), (72.8, 72.1, 72.5)),
    ("Qwen2.5VL-7B", "w/o Inst"): ("Table 3", (67.3, 66.1, 66.7), (81.7, 80.2, 80.9), (70.8, 69.5, 70.1)),
}
#: mcr-swift pipeline VARIANT -> the paper's row it reproduces
VARIANT_ROWS: Dict[str, str] = {
    "mcr": "+MRSI+CVO", "sft": "+SFT", "mrsi_only": "+MRSI", "no_cvo": "w/o CVO",
    "cvo_only": "w/o MRSI", "no_dr": "w/o D_R", "no_inst": "w/o Inst",
}
#: ms-swift template -> the model name of the paper's tables
TEMPLATE_MODELS: Dict[str, str] = {"qwen2_5_vl": "Qwen2.5VL-7B", "mimo_vl": "MimoVL-7B"}
TINY_NOTE = ("tiny profile: a random tiny model trained a few steps on a handful of posts; its numbers are "
             "plumbing checks, not comparable with the paper's")


def run_variant(run: Path) -> str:
    """The pipeline VARIANT that made ``run`` (RUN_DIR/variant.txt; ``mcr`` for runs made before it existed)."""
    try:
        return (run / "variant.txt").read_text().strip() or "mcr"
    except OSError:
        return "mcr"


def variant_row(r: Dict[str, Any]) -> Dict[str, Any]:
    """A run's row in the Table 1 layout: variant, paper row, model, tiny or not, its GMNER / MNER / EEG
    precision, recall and F1 in percent (None before the infer-eval stage), and the paper's numbers for
    the same row and model (None where the paper has none)."""
    variant = r.get("variant") or "mcr"
    template = next((a.get("template") for a in (r.get("mrsi_sft_args"), r.get("sft_args"), r.get("cvo_grpo_args"))
                     if a and a.get("template")), None)
    model = TEMPLATE_MODELS.get(template or "", template or "unknown model")
    row = VARIANT_ROWS.get(variant, variant)
    tiny = any(t.get("stage") == "tiny-model" for t in r.get("times") or [])
    scores = None
    m = (r.get("metrics") or {}).get("metrics")
    if m:
        scores = {k: tuple(round(100 * float(m[k][x]), 1) for x in ("precision", "recall", "f1"))
                  for k in ("gmner", "mner", "eeg")}
    paper = PAPER_ROWS.get((model, row))
    return {"run_dir": r.get("run_dir"), "variant": variant, "row": row, "model": model, "tiny": tiny,
            "posts": (r.get("metrics") or {}).get("posts"), "scores": scores,
            "paper": None if paper is None else {"table": paper[0], "gmner": paper[1], "mner": paper[2],
                                                 "eeg": paper[3]}}


def render_variant_table(rows: List[Dict[str, Any]]) -> str:
    """One markdown table of `variant_row` rows, each followed by the paper's row (Table 1 layout)."""
    head = ("| model | row | numbers from | GMNER Pre | Rec | F1 | MNER Pre | Rec | F1 | EEG Pre | Rec | F1 |\n"
            "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    out = ["## Table 1 / Table 3 rows (percent)", "", head]
    notes = []

    def cells(d):
        return " | ".join(f"{v:.1f}" for k in ("gmner", "mner", "eeg") for v in d[k])
    for x in rows:
        name = Path(str(x["run_dir"])).name
        src = f"this run `{name}`" + (" (tiny: plumbing check)" if x["tiny"] else "")
        out.append(f"| {x['model']} | {x['row']} | {src} | "
                   + (cells(x["scores"]) if x["scores"] else " | ".join(["n/a"] * 9)) + " |")
        if x["paper"]:
            out.append(f"| {x['model']} | {x['row']} | paper, {x['paper']['table']} | {cells(x['paper'])} |")
        else:
            notes.append(f"- `{name}`: the paper reports no {x['row']} row for {x['model']}"
                         + (" (Table 3 is on Qwen2.5VL-7B only)" if x["row"].startswith("w/o") else ""))
        if not x["scores"]:
            notes.append(f"- `{name}`: no test metrics yet (the infer-eval stage has not finished)")
    if any(x["tiny"] for x in rows):
        notes.insert(0, f"- {TINY_NOTE}")
    notes.append("- paper rows: Table 1 (main results) and Table 3 (ablations, Sec. 5.4) of the MCR paper; "
                 "the runs' numbers are on the test split their run folder prepared")
    return "\n".join(out + [""] + notes)


def markdown_safe(obj: Any) -> Any:
    """``obj`` (a collected report) with every string, keys included, made inert in report.md: HTML
    escaped (``<script>`` from an args.json or times.tsv shows as text, it is not rendered), ``|`` that
    would split a table cell, backticks that would open or close code, and line breaks that would end
    a table row replaced. Numbers and None are kept; report.json keeps the raw values."""
    if isinstance(obj, str):
        text = html.escape(" ".join(obj.splitlines()), quote=True)
        return text.replace("|", "&#124;").replace("`", "&#96;")
    if isinstance(obj, dict):
        return {markdown_safe(k): markdown_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [markdown_safe(v) for v in obj]
    return obj


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="mcr-swift report", description=__doc__.splitlines()[0])
    p.add_argument("run_dir", nargs="+", help="one or more full-pipeline run folders")
    p.add_argument("--out", help="also write the table of the runs' Table 1 / Table 3 rows to this file")
    a = p.parse_args(argv)
    runs = [Path(d) for d in a.run_dir]
    for run in runs:
        if not run.is_dir():
            raise ValueError(f"{run}: not a folder")
    if a.out:
        # the table may not replace a file of a run it reads (args.json, times.tsv, metrics, D_R ...) nor
        # a report this command writes: an existing file inside a run folder, or a link to one, is refused
        out = Path(a.out)
        for run in runs:
            refuse_overwriting_inputs([("run report", run / "report.json"), ("run report", run / "report.md")],
                                      [("--out", out)])
            if out.exists() and Path(run).resolve() in Path(os.path.realpath(out)).parents:
                raise ValueError(f"--out {out} is a file of the run folder {run}, which the report reads; "
                                 f"choose another output")
    rows = []
    for run in runs:
        r = collect_report(run)
        r["table_row"] = variant_row(r)
        write_json_atomic(run / "report.json", r, default=str)
        safe = markdown_safe(json.loads(json.dumps(r, default=str)))  # what the JSON holds, made inert
        rows.append(safe["table_row"])
        md = render_markdown(safe) + "\n\n" + render_variant_table([safe["table_row"]])
        write_text_atomic(run / "report.md", md + "\n")
        if len(runs) == 1:
            print(md)
        print(f"report: {run / 'report.md'}", file=sys.stderr)
    if len(runs) > 1 or a.out:
        table = render_variant_table(rows)
        if len(runs) > 1:
            print(table)
        if a.out:
            write_text_atomic(Path(a.out), table + "\n")
            print(f"table: {a.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
