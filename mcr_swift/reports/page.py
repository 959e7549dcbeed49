"""The self-contained HTML of the reports (inline CSS and script, no external resources) and the
card of one post: its picture beside its metrics. Shared by `mcr_swift.reports.pictures` and
`mcr_swift.reports.bias_report`."""
from __future__ import annotations

import html
from typing import Optional

from .posts import DEFAULT_WIDTH, Post, entity_label


CSS = """
body{font-family:system-ui,-apple-system,'DejaVu Sans',sans-serif;margin:16px;color:#222;background:#fff}
h1{font-size:22px;margin:4px 0 8px}h2{font-size:18px;margin:20px 0 8px;border-bottom:1px solid #ccc}
h3{font-size:15px;margin:0 0 6px}.where{color:#777;font-weight:normal;font-size:12px}
.post{display:flex;gap:16px;align-items:flex-start;margin:0 0 18px;padding:10px;border:1px solid #ddd;border-radius:6px}
.post img{flex:none;border:1px solid #ccc}.info{font-size:13px;min-width:300px}
table{border-collapse:collapse;margin:4px 0 8px}td,th{border:1px solid #ccc;padding:2px 7px;text-align:right}
th:first-child,td:first-child{text-align:left}.gold{color:rgb(0,120,88)}.pred{color:rgb(180,75,0)}
.bad{color:#b00}.note{color:#555;font-size:13px}#broken{background:#fdd;padding:6px;border:1px solid #b00}
ul{margin:2px 0 6px;padding-left:18px}
"""

#: Inline script: marks on <body> how many pictures loaded and shows a banner for broken ones.
CHECK_IMAGES_JS = """
window.addEventListener('load', function () {
  var imgs = document.images, ok = 0, bad = [];
  for (var i = 0; i < imgs.length; i++) {
    if (imgs[i].complete && imgs[i].naturalWidth > 0) ok++; else bad.push(imgs[i].getAttribute('src'));
  }
  document.body.setAttribute('data-images', String(imgs.length));
  document.body.setAttribute('data-images-ok', String(ok));
  if (bad.length) {
    var d = document.getElementById('broken');
    d.textContent = bad.length + ' picture(s) could not be loaded (keep the posts/ folder next to this page): '
      + bad.join(', ');
    d.hidden = false;
  }
});
"""


def html_page(title: str, body: str) -> str:
    """A self-contained page: inline CSS and script, no external resources."""
    return (f"<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>{html.escape(title)}</title>"
            f"<style>{CSS}</style></head>\n<body>\n<div id=\"broken\" hidden></div>\n{body}\n"
            f"<script>{CHECK_IMAGES_JS}</script>\n</body></html>\n")


def _pct(x: float) -> str:
    return f"{100 * x:.1f}"


def post_card(post: Post, picture: Optional[str], width: int = DEFAULT_WIDTH) -> str:
    """One post's picture beside its metrics (counts and P/R/F1 of GMNER, MNER, EEG, N; N-Count;
    the textual- and visual-bias errors; the entity lists)."""
    from ..core.metrics import prf
    a, esc = post.analysis, html.escape
    rows = []
    for key, name in (("gmner", "GMNER"), ("mner", "MNER"), ("eeg", "EEG"), ("n", "N (textual)")):
        c = a["counts"][key]
        r = prf(c["correct"], c["predicted"], c["gold"])
        rows.append(f"<tr><td>{name}</td><td>{c['correct']}</td><td>{c['predicted']}</td><td>{c['gold']}</td>"
                    f"<td>{_pct(r['f1'])}</td></tr>")
    parts = [f"<h3>post {esc(post.id)} <span class=\"where\">{esc(post.where)}</span></h3>",
             "<table><tr><th></th><th>correct</th><th>pred</th><th>gold</th><th>F1 %</th></tr>"
             + "".join(rows) + "</table>"]
    if a["n_count"] is not None:
        parts.append(f"<div>N-Count (visual bias): <b>{a['n_count']}</b> of {len(post.pred)} predictions "
                     f"not in the sentence</div>")
    if post.parse_failed:
        parts.append("<div class=\"bad\">the response could not be parsed (scored as no prediction)</div>")
    if a["textual"]:
        items = "".join(f"<li>{esc(t['kind'].replace('_', ' '))}: {esc(t['entity'])}</li>" for t in a["textual"])
        parts.append(f"<div>textual-bias errors ({len(a['textual'])}):<ul>{items}</ul></div>")
    if a["visual"]:
        items = "".join(f"<li>{esc(v['entity'])} ({esc(v['type'])})</li>" for v in a["visual"])
        parts.append(f"<div>visual-bias errors ({len(a['visual'])}), not in the sentence:<ul>{items}</ul></div>")
    gold = "".join(f"<li>{esc(entity_label(e))} {'box' if e.boxes else 'no box'}</li>" for e in post.gold)
    pred = "".join(f"<li>{esc(entity_label(e))} {'box' if e.boxes else 'no box'}: {esc(s)}</li>"
                   for e, s in zip(post.pred, a["pred_status"]))
    parts.append(f"<div class=\"gold\">gold<ul>{gold or '<li>(none)</li>'}</ul></div>"
                 f"<div class=\"pred\">prediction<ul>{pred or '<li>(none)</li>'}</ul></div>")
    img = (f"<img src=\"{esc(picture)}\" alt=\"post {esc(post.id)}\" width=\"{width}\">" if picture
           else "")
    return (f"<section class=\"post\" id=\"post-{esc(post.id)}\">{img}"
            f"<div class=\"info\">{''.join(parts)}</div></section>")
