"""``mcr-swift curves RUN_DIR... [--out DIR]``: training curves of ms-swift runs, in the style of the
paper's Figures 4-5 (Sec. 5.5), several runs overlaid.

Reads ms-swift's ``logging.jsonl``; what is plotted and which keys are read: docs/metrics.md.
"""
from __future__ import annotations

import argparse
import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

from ..jsonl import atomic_open
from ..runs import version_number
from ..core.argtypes import float_range

STEP_KEY = "global_step/max_steps"


@dataclass
class Run:
    """One run's numeric series: key -> [(step, value)] in logging order."""
    label: str
    path: Path
    series: Dict[str, List[Tuple[int, float]]] = field(default_factory=dict)
    malformed: List[int] = field(default_factory=list)   # line numbers skipped


@dataclass(frozen=True)
class Panel:
    """One subplot: the keys it draws (a regex, full match). ``per_key`` gives one panel per key found."""
    title: str
    pattern: str
    per_key: bool = False


@dataclass(frozen=True)
class Figure:
    name: str
    title: str
    panels: Tuple[Panel, ...]


#: The figures written, in order (Figs. 4-5 of the paper, then the optimiser's view).
FIGURES: Tuple[Figure, ...] = (
    Figure("reward", "Reward R (Eq. 10), train and dev (Fig. 4)",
           (Panel("reward", r"reward|eval_reward"),)),
    Figure("reward_terms", "Reward terms (Eq. 6-9, 13-15)",
           (Panel("{key}", r"(eval_)?rewards/[^/]+/mean", per_key=True),)),
    Figure("f1", "F1 (Fig. 4)", (Panel("{key}", r"(?i).*f1.*", per_key=True),)),
    Figure("completion_length", "Mean completion length (Fig. 5, right)",
           (Panel("tokens", r"(eval_)?completions/mean_length"),)),
    Figure("entropy_kl", "Entropy (Fig. 5, left) and KL to the reference",
           (Panel("entropy", r"(eval_)?entropy/mean"), Panel("KL", r"(eval_)?kl"))),
    Figure("loss", "Loss and learning rate", (Panel("loss", r"loss|eval_loss"), Panel("learning rate", r"learning_rate"))),
)


def _step(row: Dict, fallback: int) -> int:
    m = re.match(r"\s*(\d+)\s*/", str(row.get(STEP_KEY, "")))
    return int(m.group(1)) if m else fallback


def read_log(path: Path, label: str) -> Run:
    """Numeric series of one ``logging.jsonl``; malformed lines are recorded in ``Run.malformed``."""
    run = Run(label, path)
    n = 0
    with open(path, encoding="utf-8", errors="replace") as f:
        for no, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                run.malformed.append(no)
                continue
            if not isinstance(row, dict):
                run.malformed.append(no)
                continue
            if "train_runtime" in row or "log_history" in row:   # end-of-training summaries, not steps
                continue
            n += 1
            step = _step(row, n)
            for key, value in row.items():
                if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                    continue
                run.series.setdefault(key, []).append((step, float(value)))
    return run


def find_logs(root: Path) -> List[Tuple[Path, str]]:
    """``(logging.jsonl, label)`` of the run(s) at ``root`` (see the module doc); newest version per
    output dir. Raises FileNotFoundError naming ``root`` when there is none."""
    root = Path(root)
    if not root.exists():
        raise FileNotFoundError(f"{root}: no such run folder or logging.jsonl")
    if root.is_file():
        return [(root, root.parent.parent.name if re.match(r"v\d+-", root.parent.name) else root.parent.name)]
    if (root / "logging.jsonl").is_file():
        return [(root / "logging.jsonl", root.parent.name if re.match(r"v\d+-", root.name) else root.name)]
    output_dirs = sorted({p.parent.parent for p in root.glob("**/v*-*/logging.jsonl")})
    if not output_dirs:
        raise FileNotFoundError(f"{root}: no logging.jsonl (expected <output_dir>/v*-*/logging.jsonl)")
    found = []
    for out in output_dirs:
        versions = sorted((p.parent for p in out.glob("v*-*/logging.jsonl")), key=version_number)
        if len(versions) > 1:
            print(f"[curves] {out}: {len(versions)} versions, reading the newest ({versions[-1].name})")
        label = str(out.relative_to(root)) if out != root else out.name
        found.append((versions[-1] / "logging.jsonl", label if label != "." else root.name))
    return found


def _panels(figure: Figure, runs: Sequence[Run]) -> List[Tuple[str, List[str]]]:
    """(title, keys) of each panel of ``figure`` that has data in some run, keys in logging order
    (ms-swift logs the rewards in ``--reward_funcs`` order)."""
    keys = list(dict.fromkeys(k for r in runs for k in r.series))
    out = []
    for panel in figure.panels:
        matched = [k for k in keys if re.fullmatch(panel.pattern, k)]
        if panel.per_key:
            out += [(panel.title.format(key=k), [k]) for k in matched]
        elif matched:
            out.append((panel.title, matched))
    return out


def ema(values: Sequence[float], weight: float) -> List[float]:
    """TensorBoard-style exponential moving average (``weight`` 0: the values unchanged)."""
    out, last = [], None
    for v in values:
        last = v if last is None else weight * last + (1 - weight) * v
        out.append(last)
    return out


def plot(runs: Sequence[Run], out_dir: Path, smooth: float = 0.0) -> List[Path]:
    """Write one PNG per figure with data; print a note for each figure with none. Returns the PNGs."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for figure in FIGURES:
        panels = _panels(figure, runs)
        if not panels:
            print(f"[curves] {figure.name}: no series in the logs ({' | '.join(p.pattern for p in figure.panels)}),"
                  " skipped")
            continue
        cols = min(3, len(panels))
        rows = math.ceil(len(panels) / cols)
        fig, axes = plt.subplots(rows, cols, figsize=(5 * cols, 3.6 * rows), squeeze=False)
        for ax, (title, keys) in zip(axes.flat, panels):
            for run in runs:
                for key in keys:
                    points = run.series.get(key)
                    if not points:
                        continue
                    steps, values = zip(*points)
                    label = run.label if len(keys) == 1 else f"{run.label}: {key}"
                    style = "--" if key.startswith("eval_") else "-"
                    if smooth > 0:
                        line, = ax.plot(steps, values, style, alpha=0.25, linewidth=1)
                        ax.plot(steps, ema(values, smooth), style, color=line.get_color(), label=label)
                    else:
                        ax.plot(steps, values, style, marker="." if len(steps) < 30 else None, label=label)
            ax.set_title(title, fontsize=10)
            ax.set_xlabel("step")
            ax.grid(alpha=0.3)
            ax.legend(fontsize=8)
        for ax in list(axes.flat)[len(panels):]:
            ax.set_visible(False)
        fig.suptitle(figure.title)
        fig.tight_layout()
        path = out_dir / f"{figure.name}.png"
        with atomic_open(path, "wb") as f:
            fig.savefig(f, dpi=110, format="png")
        plt.close(fig)
        written.append(path)
    return written


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="mcr-swift curves", description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", type=Path, help="run folders or logging.jsonl files (overlaid)")
    parser.add_argument("--out", type=Path, default=None, help="output folder (default: <first run>/curves)")
    parser.add_argument("--labels", nargs="+", default=None, help="legend name of each run, in order")
    parser.add_argument("--smooth", type=float_range(0.0, 1.0, hi_open=True), default=0.0, help="EMA weight in [0, 1) (0: raw values)")
    ns = parser.parse_args(argv)
    if not 0 <= ns.smooth < 1:
        parser.error("--smooth must be in [0, 1)")
    logs = []
    for root in ns.runs:
        logs += find_logs(root)  # FileNotFoundError naming the folder: one line, exit 2 (mcr_swift.cli)
    if ns.labels is not None:
        if len(ns.labels) != len(logs):
            parser.error(f"--labels: {len(ns.labels)} names for {len(logs)} runs ({[str(p) for p, _ in logs]})")
        logs = [(p, label) for (p, _), label in zip(logs, ns.labels)]
    runs = [read_log(path, label) for path, label in logs]
    for run in runs:
        steps = len({s for points in run.series.values() for s, _ in points})
        note = ""
        if run.malformed:
            note = (f", {len(run.malformed)} malformed line(s) skipped "
                    f"(line {', '.join(map(str, run.malformed[:5]))}{', ...' if len(run.malformed) > 5 else ''})")
        print(f"[curves] {run.label}: {run.path}: {steps} logged steps, {len(run.series)} numeric keys{note}")
    out = ns.out or (ns.runs[0] if ns.runs[0].is_dir() else ns.runs[0].parent) / "curves"
    written = plot(runs, out, ns.smooth)
    for path in written:
        print(f"[curves] wrote {path}")
    if not written:  # e.g. every line malformed: one line, exit 2 (mcr_swift.cli)
        raise ValueError(f"no plottable series in {', '.join(str(r.path) for r in runs)} (no logged step "
                         f"with a number; see the malformed-line counts above)")
    return 0
