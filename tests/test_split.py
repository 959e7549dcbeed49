"""D_R -> D1 (MRSI) / D2 (CVO) split by post, stratified by style mix (mcr_swift.synth.split)."""
from __future__ import annotations

import json
import random
from collections import Counter, defaultdict

import pytest

from mcr_swift.jsonl import iter_jsonl
from mcr_swift.synth.split import main, split_by_post, split_by_row, split_rows

STYLES = ("formatted_a", "formatted_b", "llm_qa", "llm_conclusions", "mllm_distill")


def _rows(n_posts=1000, seed=7):
    rng = random.Random(seed)
    rows = []
    for p in range(n_posts):
        styles = rng.sample(STYLES, rng.choice((1, 2, 2, 3)))
        if p % 10 == 0:
            styles = ["formatted_a"]
        for st in styles:
            rows.append({"mcr_id": f"p{p}", "mcr_style": st, "k": len(rows)})
    rng.shuffle(rows)
    return rows


def _strata(rows):
    styles = defaultdict(list)
    for r in rows:
        styles[r["mcr_id"]].append(r["mcr_style"])
    out = defaultdict(set)
    for pid, ss in styles.items():
        out[tuple(sorted(ss))].add(pid)
    return out


@pytest.mark.parametrize("ratio", [0.5, 0.3, 0.8])
def test_split_by_post(ratio):
    rows = _rows()
    d1, d2 = split_by_post(rows, ratio, seed=0)
    assert len(d1) + len(d2) == len(rows)
    p1, p2 = {r["mcr_id"] for r in d1}, {r["mcr_id"] for r in d2}
    assert not p1 & p2                                    # disjoint by post
    # input order kept on each side
    assert [r["k"] for r in d1] == [r["k"] for r in rows if r["mcr_id"] in p1]
    for key, posts in _strata(rows).items():              # ratio within +-1 post per stratum
        assert abs(len(posts & p1) - len(posts) * ratio) <= 1, key
    c_all = Counter(r["mcr_style"] for r in rows)
    c1 = Counter(r["mcr_style"] for r in d1)
    for st in STYLES:                                     # style mix kept
        assert abs(c1[st] / c_all[st] - ratio) < 0.03, (st, c1[st], c_all[st])


def test_deterministic_and_seeded():
    rows = _rows()
    a = split_by_post(rows, 0.5, seed=0)
    assert a == split_by_post(list(rows), 0.5, seed=0)
    b = split_by_post(rows, 0.5, seed=1)
    assert {r["mcr_id"] for r in a[0]} != {r["mcr_id"] for r in b[0]}


@pytest.mark.parametrize("bad", [0, 1, -0.1, 1.5, float("nan"), "x"])
def test_bad_ratio(bad):
    with pytest.raises(ValueError):
        split_by_post(_rows(10), bad)


def test_missing_id():
    with pytest.raises(ValueError):
        split_by_post([{"mcr_style": "formatted_a"}])


def test_cli(tmp_path, capsys):
    rows = _rows(200)
    src = tmp_path / "D_R.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    out = tmp_path / "out"
    assert main(["--input", str(src), "--out-dir", str(out), "--d1-ratio", "0.4", "--seed", "3",
                 "--split-unit", "post"]) == 0
    d1 = [r for _, r, _ in iter_jsonl(out / "d1.jsonl")]
    d2 = [r for _, r, _ in iter_jsonl(out / "d2.jsonl")]
    assert (d1, d2) == split_by_post(rows, 0.4, seed=3)
    assert "split unit: post" in capsys.readouterr().out
    assert main(["--input", str(src), "--out-dir", str(out), "--d1-ratio", "0.4", "--seed", "3"]) == 0
    d1 = [r for _, r, _ in iter_jsonl(out / "d1.jsonl")]
    d2 = [r for _, r, _ in iter_jsonl(out / "d2.jsonl")]
    assert (d1, d2) == split_by_row(rows, 0.4, seed=3)       # row is the default unit
    text = capsys.readouterr().out
    for st in STYLES:
        assert st in text
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"mcr_id": 1}\nnot json\n', encoding="utf-8")
    with pytest.raises(ValueError, match="bad.jsonl:2"):
        main(["--input", str(bad), "--out-dir", str(out)])


def test_grounded_samples_are_a_stratum_of_their_own():
    """Grounded samples (a box in the gold) are stratified like a style mix: two grounded posts of one
    mix split one to each half, and a lone grounded sample of the first task goes to D1, so MRSI always
    trains on a box when D_R has one (the tiny run's trained-posts check relies on it)."""
    box = json.dumps([{"entity": "A", "type": "PER", "boxes": [[1, 2, 3, 4]]}])
    nobox = json.dumps([{"entity": "B", "type": "LOC", "boxes": []}])
    rows = [{"mcr_id": f"p{i}", "mcr_style": "formatted_a", "mcr_gold": box if i in (3, 6) else nobox}
            for i in range(8)]
    d1, d2 = split_by_post(rows, 0.5, seed=0)
    grounded = lambda half: sorted(r["mcr_id"] for r in half if r["mcr_gold"] == box)
    assert len(d1) == len(d2) == 4 and grounded(d1) and grounded(d2)
    assert len(grounded(d1)) == len(grounded(d2)) == 1
    for lone in range(8):   # one grounded sample, wherever it stands: it lands in D1
        rows1 = [{**r, "mcr_gold": box if i == lone else nobox} for i, r in enumerate(rows)]
        d1, _ = split_by_post(rows1, 0.5, seed=lone)
        assert [r["mcr_id"] for r in d1 if r["mcr_gold"] == box] == [f"p{lone}"]


def _two_style_rows(n_posts, seed=3):
    rng = random.Random(seed)
    rows = []
    for p in range(n_posts):
        for st in rng.sample(STYLES, 2):
            rows.append({"mcr_id": f"p{p}", "mcr_style": st, "k": len(rows)})
    rng.shuffle(rows)
    return rows


def test_split_by_row_two_styles_each_sample_once_per_half():
    """Eq. 5 / D2 = D_R \\ D1 as sets of rows: with two styles per sample, every sample has exactly one
    row in D1 (MRSI sees it once) and one in D2 (CVO queries it once), and within each style mix each
    style goes to D1 for half of the samples (+-1)."""
    rows = _two_style_rows(600)
    d1, d2 = split_by_row(rows, 0.5, seed=0)
    assert len(d1) == len(d2) == 600
    assert Counter(r["mcr_id"] for r in d1) == Counter({f"p{p}": 1 for p in range(600)})
    assert Counter(r["mcr_id"] for r in d2) == Counter({f"p{p}": 1 for p in range(600)})
    pos = {r["k"]: i for i, r in enumerate(rows)}
    assert [pos[r["k"]] for r in d1] == sorted(pos[r["k"]] for r in d1)  # input order kept
    by_mix = defaultdict(list)
    for pid, posts in _strata(rows).items():
        by_mix[pid] = posts
    for mix, posts in by_mix.items():
        for st in mix:
            n = sum(1 for r in d1 if r["mcr_style"] == st and r["mcr_id"] in posts)
            assert abs(n - len(posts) / 2) <= 1, (mix, st, n, len(posts))


def test_split_by_row_hand_case():
    """Four samples with styles a, b in one stratum: the k-th sample (stratum order) rotates its rows
    by k, so D1 gets a, b, a, b: two of each style, one row per sample."""
    rows = [{"mcr_id": f"p{p}", "mcr_style": st} for p in range(4) for st in ("formatted_a", "formatted_b")]
    d1, d2 = split_by_row(rows, 0.5, seed=0)
    assert Counter(r["mcr_style"] for r in d1) == {"formatted_a": 2, "formatted_b": 2}
    assert sorted(r["mcr_id"] for r in d1) == sorted(r["mcr_id"] for r in d2) == ["p0", "p1", "p2", "p3"]
    # one row per sample (ratio 0.5): samples alternate between the halves
    single = [{"mcr_id": f"s{p}", "mcr_style": "formatted_a"} for p in range(6)]
    s1, s2 = split_by_row(single, 0.5, seed=0)
    assert len(s1) == len(s2) == 3
    assert (s1, s2) == split_by_post(single, 0.5, seed=0)   # one row per sample: the same cut as by post


def test_split_by_row_grounded_samples_in_both_halves():
    box = json.dumps([{"entity": "A", "type": "PER", "boxes": [[1, 2, 3, 4]]}])
    nobox = json.dumps([{"entity": "B", "type": "LOC", "boxes": []}])
    rows = [{"mcr_id": f"p{i}", "mcr_style": st, "mcr_gold": box if i == 5 else nobox}
            for i in range(8) for st in ("formatted_a", "llm_qa")]
    d1, d2 = split_by_row(rows, 0.5, seed=1)
    assert [r["mcr_id"] for r in d1 if r["mcr_gold"] == box] == ["p5"]
    assert [r["mcr_id"] for r in d2 if r["mcr_gold"] == box] == ["p5"]


def test_split_rows_unit():
    rows = _two_style_rows(50)
    assert split_rows(rows, 0.5, 0, "post") == split_by_post(rows, 0.5, 0)
    assert split_rows(rows, 0.5, 0) == split_by_row(rows, 0.5, 0)
    with pytest.raises(ValueError, match="split unit"):
        split_rows(rows, 0.5, 0, "sample")
