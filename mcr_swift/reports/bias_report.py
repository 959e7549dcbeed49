"""``mcr-swift bias-report``: the modality-bias report of one result file (Sec. 5.5, Table 4, Fig. 3,
App. E.3) -- the numbers as JSON and one self-contained HTML page.

Textual bias (Eq. 26-29), visual bias (Eq. 30-31), located/unlocated confusion and the worst posts;
see docs/metrics.md.
"""
from __future__ import annotations

import argparse
import html
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

from ..jsonl import write_json_atomic, write_text_atomic
from ..core.metrics import gmner_metrics
from .page import html_page, post_card
from .pictures import render_pictures
from ..core.argtypes import positive_int
from ..files import refuse_overwriting_inputs
from .posts import TEXTUAL_KINDS, Post, add_input_args, read_and_analyse

#: How many worst posts of each bias the report shows (the paper gives no number).
DEFAULT_TOP = 5


def worst_textual(posts: Sequence[Post], top: int) -> List[Post]:
    """Posts with textual-bias errors, most boxes for text-only entities first, then most N errors."""
    bad = [p for p in posts if p.analysis["textual"]]
    bad.sort(key=lambda p: (-sum(t["kind"] == "box_for_text_only" for t in p.analysis["textual"]),
                            -len(p.analysis["textual"]), p.index))
    return bad[:top]


def worst_visual(posts: Sequence[Post], top: int) -> List[Post]:
    """Posts with predictions not in the sentence, most first, then by their share of the predictions."""
    bad = [p for p in posts if p.analysis["visual"]]
    bad.sort(key=lambda p: (-len(p.analysis["visual"]), -len(p.analysis["visual"]) / len(p.pred), p.index))
    return bad[:top]


def bias_numbers(posts: Sequence[Post]) -> Dict[str, Any]:
    """Metrics, textual/visual-bias numbers and the located/unlocated confusion of analysed posts."""
    m = gmner_metrics([p.pred for p in posts], [p.gold for p in posts], [p.sentence for p in posts])
    kinds = {k: 0 for k in TEXTUAL_KINDS}
    conf = {k: 0 for k in ("located_located", "located_unlocated", "unlocated_located", "unlocated_unlocated")}
    unmatched_gold = {"located": 0, "unlocated": 0}
    unmatched_pred = {"located": 0, "unlocated": 0}
    box_right = 0
    for p in posts:
        a = p.analysis
        for t in a["textual"]:
            kinds[t["kind"]] += 1
        for k in conf:
            conf[k] += a["confusion"][k]
        for side, total in (("unmatched_gold", unmatched_gold), ("unmatched_pred", unmatched_pred)):
            for k in total:
                total[k] += a[side][k]
        box_right += a["located_box_right"]
    n = m["n"]
    return {
        "metrics": {t: m[t] for t in ("gmner", "mner", "eeg")},
        "textual_bias": {"n_pre": n["precision"], "n_rec": n["recall"], "n_f1": n["f1"],
                         "n_correct": n["correct"], "n_predicted": n["predicted"], "n_gold": n["gold"],
                         "errors": kinds, "posts_with_errors": sum(1 for p in posts if p.analysis["textual"])},
        "visual_bias": {"n_count": m["n_count"], "n_rate": m["n_rate"],
                        "n_count_predicted": m["n_count_predicted"],
                        "posts_with_errors": sum(1 for p in posts if p.analysis["visual"])},
        "confusion": {
            "gold_located": {"pred_located": conf["located_located"], "pred_unlocated": conf["located_unlocated"]},
            "gold_unlocated": {"pred_located": conf["unlocated_located"],
                               "pred_unlocated": conf["unlocated_unlocated"]},
            "located_pairs_box_right": box_right,
            "unmatched_gold": unmatched_gold,
            "unmatched_pred": unmatched_pred,
        },
    }


def _case(p: Post, picture: str) -> Dict[str, Any]:
    a = p.analysis
    return {"id": p.id, "where": p.where, "picture": picture,
            "textual": [{"kind": t["kind"], "entity": t["entity"]} for t in a["textual"]],
            "visual": [v["entity"] for v in a["visual"]]}


def _pct(x: float) -> str:
    return f"{100 * x:.1f}"


def report_html(name: str, rep: Dict[str, Any], cards: Dict[str, List[str]]) -> str:
    """The report page: metrics, textual-bias errors, confusion, then the worst cases' cards."""
    esc = html.escape
    m, tb, vb, c = rep["metrics"], rep["textual_bias"], rep["visual_bias"], rep["confusion"]
    prf_rows = "".join(f"<tr><td>{label}</td><td>{_pct(m[k]['precision'])}</td><td>{_pct(m[k]['recall'])}</td>"
                       f"<td>{_pct(m[k]['f1'])}</td><td>{m[k]['correct']}</td><td>{m[k]['predicted']}</td>"
                       f"<td>{m[k]['gold']}</td></tr>" for k, label in (("gmner", "GMNER"), ("mner", "MNER"),
                                                                         ("eeg", "EEG")))
    prf_rows += (f"<tr><td>N (textual bias, Eq. 26-29)</td><td>{_pct(tb['n_pre'])}</td><td>{_pct(tb['n_rec'])}</td>"
                 f"<td>{_pct(tb['n_f1'])}</td><td>{tb['n_correct']}</td><td>{tb['n_predicted']}</td>"
                 f"<td>{tb['n_gold']}</td></tr>")
    kinds = {"box_for_text_only": "box given to a text-only entity (gold None, predicted with a box)",
             "text_only_missed": "text-only entity not predicted (gold None, span missing)",
             "no_box_for_located": "None predicted for an entity the gold locates",
             "unlocated_not_gold": "unlocated prediction whose span is no gold entity"}
    kind_rows = "".join(f"<tr><td>{esc(kinds[k])}</td><td>{v}</td></tr>" for k, v in tb["errors"].items())
    gl, gu = c["gold_located"], c["gold_unlocated"]
    ug, up = c["unmatched_gold"], c["unmatched_pred"]
    confusion = (
        "<table><tr><th>gold \\ predicted</th><th>located</th><th>unlocated</th><th>not predicted</th></tr>"
        f"<tr><td>located</td><td>{gl['pred_located']} ({c['located_pairs_box_right']} with IoU &ge; 0.5)</td>"
        f"<td>{gl['pred_unlocated']}</td><td>{ug['located']}</td></tr>"
        f"<tr><td>unlocated</td><td>{gu['pred_located']}</td><td>{gu['pred_unlocated']}</td>"
        f"<td>{ug['unlocated']}</td></tr>"
        f"<tr><td>not in gold</td><td>{up['located']}</td><td>{up['unlocated']}</td><td></td></tr></table>")
    body = [
        f"<h1>Modality-bias report: {esc(name)}</h1>",
        f"<p class=\"note\">{rep['posts']} posts ({rep['rows']} rows; {rep['unmatched_rows']} without gold, "
        f"{rep['parse_failures']} unparsed responses scored as no prediction). Boxes in original pixels.</p>",
        "<h2>Metrics</h2><table><tr><th></th><th>Pre %</th><th>Rec %</th><th>F1 %</th><th>correct</th>"
        f"<th>predicted</th><th>gold</th></tr>{prf_rows}</table>",
        f"<p>Visual bias (Eq. 30-31, Table 4): <b>N-Count {vb['n_count']}</b>, <b>N-Rate {_pct(vb['n_rate'])}%</b> "
        f"of {vb['n_count_predicted']} predicted entities are not in the sentence "
        f"({vb['posts_with_errors']} posts).</p>",
        f"<h2>Textual-bias errors</h2><p class=\"note\">N-Pre misses + N-Rec misses, in "
        f"{tb['posts_with_errors']} posts.</p><table><tr><th>kind</th><th>count</th></tr>{kind_rows}</table>",
        "<h2>Located vs unlocated</h2><p class=\"note\">Predictions paired with gold triples one-to-one by "
        "span (type ignored); the diagonal is where the model agrees with the gold on whether the entity is "
        f"in the image.</p>{confusion}",
    ]
    for key, title, empty in (("textual", "Worst textual-bias cases", "no textual-bias errors"),
                              ("visual", "Worst visual-bias cases", "no visual-bias errors (N-Count = 0)")):
        cases = rep["worst"][key]
        body.append(f"<h2>{title} ({len(cases)})</h2>")
        body.append("\n".join(cards[key]) if cases
                    else f"<p class=\"note\">{empty}</p>")
    return html_page(f"bias report: {name}", "\n".join(body))


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="mcr-swift bias-report", description=__doc__.splitlines()[0])
    add_input_args(p)
    p.add_argument("--out", default=None, help="output folder (default <result>.bias)")
    p.add_argument("--top", type=positive_int, default=DEFAULT_TOP, help="worst cases shown per bias")
    a = p.parse_args(argv)
    out = Path(a.out or f"{a.result}.bias")
    refuse_overwriting_inputs([("result", a.result), ("--gold", a.gold)],
                              [("--out's bias_report.json", out / "bias_report.json"), ("--out's index.html", out / "index.html")])
    try:
        posts, info = read_and_analyse(a)
        worst = {"textual": worst_textual(posts, a.top), "visual": worst_visual(posts, a.top)}
        chosen = list({q.index: q for q in worst["textual"] + worst["visual"]}.values())
        rel, counts = render_pictures(chosen, out, a.width, a.allow_missing_images, progress=not a.no_progress)
    except (ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    rep: Dict[str, Any] = {"file": str(a.result), "posts": len(posts), **info, **bias_numbers(posts),
                           "worst": {k: [_case(q, rel[q.index]) for q in v] for k, v in worst.items()},
                           "pictures": counts}
    cards = {k: [post_card(q, rel[q.index], a.width) for q in v] for k, v in worst.items()}
    out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(out / "bias_report.json", rep)
    write_text_atomic(out / "index.html", report_html(Path(a.result).name, rep, cards))
    tb, vb = rep["textual_bias"], rep["visual_bias"]
    print(f"{Path(a.result).name}: {len(posts)} posts | N-Pre {_pct(tb['n_pre'])} N-Rec {_pct(tb['n_rec'])} "
          f"N-F1 {_pct(tb['n_f1'])} | N-Count {vb['n_count']} N-Rate {_pct(vb['n_rate'])}% | "
          f"textual-bias errors {sum(tb['errors'].values())} in {tb['posts_with_errors']} posts\n"
          f"report: {out / 'index.html'}\nnumbers: {out / 'bias_report.json'}")
    return 0
