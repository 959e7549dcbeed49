"""``mcr-swift evaluate``: the paper's metrics over ``swift infer`` output or a predictions file.

Rows are joined to their gold and scored by task (GMNER: Table 1; MNER-MI, GREC: Table 2); every gold
post is scored, one row per post. Inputs, joins, coordinate spaces and the report: docs/metrics.md.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

from ..core.coords import CoordinateSpace, add_space_args, space_from_args
from ..jsonl import write_json_atomic
from .reading import GoldIndex, collect, missing_gold_rows, read_rows
from ..files import refuse_overwriting_inputs


def evaluate_file(path, gold: Optional[GoldIndex] = None, space: Optional[CoordinateSpace] = None,
                  entities_space: str = "original", progress: bool = False, protocol: str = "mcr"
                  ) -> Dict[str, Any]:
    from ..core.metrics import gmner_metrics, grec_benchmark_metrics, mner_mi_metrics
    if protocol not in EVAL_PROTOCOLS:
        raise ValueError(f"protocol must be one of {', '.join(EVAL_PROTOCOLS)}, got {protocol!r}")
    path = Path(path)
    space = space or CoordinateSpace.from_env()
    rows = read_rows(path, progress)
    missing = missing_gold_rows(rows, gold, str(path))
    c = collect(rows + missing, gold, space, str(path), entities_space)
    # --protocol grec is GREC's own evaluator; GMNER rows in the same file keep the paper's protocol
    gmner_protocol = "mcr" if protocol == "grec" else protocol
    m = gmner_metrics(c["preds"], c["golds"], c["sentences"], protocol=gmner_protocol)
    report = {"file": str(path), "protocol": protocol, "gmner_protocol": gmner_protocol,
              "grec_protocol": "grec" if protocol == "grec" else "mcr",
              "posts": len(c["golds"]), "rows": len(rows),
              "missing_posts": len(missing),
              "parse_failures": c["parse_failures"], "dropped_items": c["dropped_items"],
              "unmatched_rows": c["unmatched_rows"],
              "space": {"family": space.family, "min_pixels": space.min_pixels, "max_pixels": space.max_pixels,
                        "template_max_pixels": space.template_max_pixels},
              "metrics": m}
    table2: Dict[str, Any] = {}
    if c["mner_mi"]["golds"]:
        table2["mner_mi"] = mner_mi_metrics(c["mner_mi"]["preds"], c["mner_mi"]["golds"])
    if c["grec"]:
        if protocol == "grec":
            table2["grec"] = {split: grec_benchmark_metrics(d["pred_boxes"], d["gold_sets"])
                              for split, d in c["grec"].items()}
        else:
            table2["grec"] = {split: _grec_paper(d) for split, d in c["grec"].items()}
    if table2:
        by_task = c["parse_failures_by_task"]
        table2["parse_failures"] = by_task["mner_mi"] + by_task["grec"]
        table2["samples"] = (table2.get("mner_mi", {}).get("posts", 0)
                             + sum(g["samples"] for g in table2.get("grec", {}).values()))
        report["parse_failures_by_task"] = by_task
        report["table2"] = table2
    return report


def _grec_paper(d: Dict[str, List]) -> Dict[str, Any]:
    """The paper's GREC metrics (App. E.3) of one split; a multi-target sample (a file prepared with
    ``--grec-multi-target keep``) is left out and counted, as App. E.1 removes them."""
    from ..core.metrics import grec_metrics
    keep = [k for k, g in enumerate(d["gold_sets"]) if len(g) <= 1]
    out = grec_metrics([d["pred_boxes"][k] for k in keep], [d["gold_boxes"][k] for k in keep])
    out["multi_target_left_out"] = len(d["gold_sets"]) - len(keep)
    return out


def format_table(reports: Sequence[Dict[str, Any]]) -> str:
    """A Table 1-style row per file (percent), plus the bias metrics (Sec. 5.5)."""
    head = (f"{'run':<28} | {'GMNER Pre':>9} {'Rec':>5} {'F1':>5} | {'MNER Pre':>8} {'Rec':>5} {'F1':>5} | "
            f"{'EEG Pre':>7} {'Rec':>5} {'F1':>5} | {'N-Pre':>5} {'N-Rec':>5} {'N-F1':>5} | "
            f"{'N-Count':>7} {'N-Rate':>6} | {'posts':>5} {'unparsed':>8}")
    lines = [head, "-" * len(head)]
    for r in reports:
        m = r["metrics"]
        name = Path(r["file"]).name
        name = name if len(name) <= 28 else "…" + name[-27:]

        def prf(k, w=9):
            return (f"{100 * m[k]['precision']:>{w}.1f} {100 * m[k]['recall']:>5.1f} "
                    f"{100 * m[k]['f1']:>5.1f}")
        lines.append(f"{name:<28} | {prf('gmner')} | {prf('mner', 8)} | {prf('eeg', 7)} | {prf('n', 5)} | "
                     f"{m.get('n_count', 0):>7d} {100 * m.get('n_rate', 0.0):>5.1f}% | {r['posts']:>5d} "
                     f"{r['parse_failures']:>8d}")
    return "\n".join(lines)


#: ``--protocol``: the paper's (mcr), the H-Index evaluator's for GMNER (hindex), gRefCOCO's for GREC (grec).
EVAL_PROTOCOLS = ("mcr", "hindex", "grec")
#: The GREC splits Table 2 shows as columns; other splits (val, train) are printed below it.
TABLE2_GREC_SPLITS = ("testA", "testB")


def format_table2(reports: Sequence[Dict[str, Any]]) -> str:
    """A Table 2-style row per file (percent): MNER-MI Pre Rec F1 | GREC-testA N-acc Pre |
    GREC-testB N-acc Pre, "-" where the file has no such rows; then GREC's other splits."""
    head = (f"{'run':<28} | {'MNER-MI Pre':>11} {'Rec':>5} {'F1':>5} | {'GREC-testA N-acc':>16} {'Pre':>5} | "
            f"{'GREC-testB N-acc':>16} {'Pre':>5} | {'samples':>7} {'unparsed':>8}")
    lines, extra = [head, "-" * len(head)], []
    for r in reports:
        t = r["table2"]
        name = Path(r["file"]).name
        name = name if len(name) <= 28 else "…" + name[-27:]
        mm = t.get("mner_mi")
        mner = (f"{100 * mm['precision']:>11.1f} {100 * mm['recall']:>5.1f} {100 * mm['f1']:>5.1f}" if mm
                else f"{'-':>11} {'-':>5} {'-':>5}")
        cols = []
        for split in TABLE2_GREC_SPLITS:
            g = t.get("grec", {}).get(split)
            cols.append(f"{100 * g['n_acc']:>16.1f} {100 * g['precision']:>5.1f}" if g else f"{'-':>16} {'-':>5}")
        lines.append(f"{name:<28} | {mner} | {cols[0]} | {cols[1]} | {t['samples']:>7d} {t['parse_failures']:>8d}")
        for split, g in t.get("grec", {}).items():
            if split not in TABLE2_GREC_SPLITS:
                extra.append(f"{name}: GREC-{split} N-acc {100 * g['n_acc']:.1f} Pre {100 * g['precision']:.1f} "
                             f"({g['samples']} samples)")
            if "t_acc" in g:
                extra.append(f"{name}: GREC-{split} (protocol grec) T-acc {100 * g['t_acc']:.1f}, "
                             f"{g['multi_target']['total']} multi-target samples")
            elif g.get("multi_target_left_out"):
                extra.append(f"{name}: GREC-{split}: {g['multi_target_left_out']} multi-target samples left out "
                             f"(App. E.1; score them with --protocol grec)")
    return "\n".join(lines + extra)


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="mcr-swift evaluate", description=__doc__.splitlines()[0])
    p.add_argument("results", nargs="+", help="swift infer result files or prediction JSONL files")
    p.add_argument("--gold", action="append", default=None,
                   help="prepared dataset JSONL with mcr_gold (needed for swift infer output); repeat it for "
                        "several datasets (e.g. mner_mi/test.jsonl and grec/testA.jsonl)")
    add_space_args(p)
    p.add_argument("--entities-space", choices=["original", "model"], default="original",
                   help="space of boxes given as 'entities' (responses are always model space)")
    p.add_argument("--protocol", choices=list(EVAL_PROTOCOLS), default="mcr",
                   help="mcr (default): the paper's metrics (IoU >= 0.5, one-to-one matching); hindex: the "
                        "Twitter-GMNER authors' evaluator (IoU > 0.5, a repeated prediction of a text replaces "
                        "the earlier one); grec: GREC rows scored by gRefCOCO's evaluator (greedy one-to-one "
                        "matching by generalized IoU >= 0.5, a sample right when its F1 is 1, Pr over all "
                        "samples; every predicted box counts: answers have no score)")
    p.add_argument("--json-out", default=None, help="write the report here (default: <first result>.metrics.json)")
    p.add_argument("--no-progress", action="store_true")
    a = p.parse_args(argv)
    out = Path(a.json_out or (str(a.results[0]) + ".metrics.json"))
    refuse_overwriting_inputs([("result", r) for r in a.results] + [("--gold", g) for g in a.gold or []],
                              [("--json-out", out)])
    space = space_from_args(a)
    gold = None
    for g in a.gold or []:
        rows = read_rows(Path(g), not a.no_progress)
        if gold is None:
            gold = GoldIndex(rows, g)
        else:
            gold.add(rows, g)
    reports = [evaluate_file(r, gold, space, a.entities_space, progress=not a.no_progress, protocol=a.protocol)
               for r in a.results]
    table1 = [r for r in reports if r["posts"] or "table2" not in r]
    table2 = [r for r in reports if "table2" in r]
    if a.protocol == "hindex":
        print(f"protocol {a.protocol}: the dataset authors' evaluator (IoU > 0.5; a text predicted more often "
              f"than it occurs keeps its first c-1 and last predictions)")
    elif a.protocol == "grec":
        print("protocol grec: GREC columns are gRefCOCO's N-acc and Pr@(F1=1, IoU>=0.5) over all samples "
              "(one-, multi- and no-target; generalized IoU, greedy one-to-one; every predicted box counts, "
              "as answers carry no score); GMNER rows keep the paper's protocol")
    if table1:
        print(format_table(table1))
    if table2:
        print(("\n" if table1 else "") + format_table2(table2))
    for r in reports:
        extra = []
        if r["missing_posts"]:
            extra.append(f"{r['missing_posts']} of {r['posts'] + r.get('table2', {}).get('samples', 0)} gold posts "
                         f"had no prediction row (scored as all-missed)")
        if r["unmatched_rows"]:
            extra.append(f"{r['unmatched_rows']} rows had no gold row and were not scored")
        scored = r["posts"] + r.get("table2", {}).get("samples", 0) - r["missing_posts"]
        extra.append(f"{r['parse_failures']} of {scored} responses failed to parse")
        if r["dropped_items"]:
            extra.append(f"{r['dropped_items']} answer items dropped by the parser")
        print(f"{Path(r['file']).name}: " + "; ".join(extra))
    write_json_atomic(out, reports if len(reports) > 1 else reports[0])
    print(f"report: {out}", file=sys.stderr)
    return 0
