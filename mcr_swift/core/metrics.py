"""The paper's evaluation metrics (App. E.3, Eq. 19-31; Sec. 5.1 and 5.5), separate from any file I/O.

`gmner_metrics` (Table 1: GMNER, MNER, EEG; textual bias Eq. 26-29; visual bias Eq. 30-31),
`mner_mi_metrics` and `grec_metrics` (Table 2, Eq. 25), the ``mcr`` and ``hindex`` protocols, and
`grec_benchmark_metrics` (``--protocol grec``: gRefCOCO's own evaluator). Every box in
ONE coordinate space (original pixels normally). Definitions, conventions and protocols: docs/metrics.md.
"""
from __future__ import annotations

import random
from typing import Any, Dict, List, Optional, Sequence, Tuple

from .coords import giou, iou
from .entities import ENTITY_TYPES, Entity

#: C_l threshold (Eq. 21): IoU >= this value (inclusive).
IOU_THRESHOLD = 0.5
#: Evaluation protocols of `gmner_metrics` (module docstring): the paper's, and the H-Index evaluator's.
PROTOCOLS: Tuple[str, ...] = ("mcr", "hindex")
#: gRefCOCO's GREC evaluator (`grec_benchmark_metrics`): a prediction counts when its score is >= 0.7,
#: a match needs generalized IoU >= 0.5, a sample is correct when its F1 is 1.
GREC_SCORE_THRESHOLD = 0.7
GREC_GIOU_THRESHOLD = 0.5
GREC_F1_THRESHOLD = 1.0
#: The four correctness relations, each with its own one-to-one matching.
TASKS: Tuple[str, ...] = ("gmner", "mner", "eeg", "n")
#: Sub-problems with more compatible pairs than this go to scipy; smaller ones use augmenting paths.
_SCIPY_MIN_PAIRS = 400

Pair = Tuple[int, int]


# --------------------------------------------------------------------------- single-triple tests
def normalize_text(text: str) -> str:
    """Whitespace normalisation used for span equality (C_e) and the N-Count substring test."""
    return " ".join(str(text).split())


def location_correct(pred: Entity, gold: Entity, threshold: float = IOU_THRESHOLD, strict: bool = False) -> bool:
    """C_l of Eq. 21: both None, or IoU(pred's first box, any gold box) >= ``threshold`` (> with
    ``strict``, the H-Index protocol)."""
    pb, gb = pred.boxes, gold.boxes
    if not pb:
        return not gb
    if not gb:
        return False
    b = pb[0]
    for g in gb:
        v = iou(b, g)
        if v > threshold or (v == threshold and not strict):
            return True
    return False


def _check_protocol(protocol: str) -> None:
    if protocol not in PROTOCOLS:
        raise ValueError(f"protocol must be one of {', '.join(PROTOCOLS)}, got {protocol!r}")


def _occurrences(text: str, tokens: Sequence[str]) -> int:
    """Number of start positions where ``text``'s whitespace tokens are consecutive ``tokens``."""
    t = text.split()
    if not t:
        return 0
    n = len(t)
    return sum(1 for i in range(len(tokens) - n + 1) if list(tokens[i:i + n]) == t)


def hindex_kept(pred: Sequence[Entity], sentence: Optional[str]) -> List[int]:
    """Indices of the predictions the H-Index protocol counts (module docstring): for a text occurring
    c >= 1 times in ``sentence`` and predicted n > c times, its first c - 1 and its last predictions;
    every other prediction (and every prediction when ``sentence`` is None)."""
    if sentence is None:
        return list(range(len(pred)))
    tokens = str(sentence).split()
    by_text = _group(pred)
    drop = set()
    for text, idx in by_text.items():
        c = _occurrences(text, tokens)
        if c >= 1 and len(idx) > c:
            drop.update(idx[c - 1:-1])
    return [i for i in range(len(pred)) if i not in drop]


def prf(correct: int, predicted: int, gold: int) -> Dict[str, Any]:
    """Precision, recall (Eq. 23, 28) and F1 (Eq. 24, 29) with the raw counts.

    P = 0 when ``predicted`` is 0, R = 0 when ``gold`` is 0, F1 = 0 when P + R = 0.
    """
    p = correct / predicted if predicted else 0.0
    r = correct / gold if gold else 0.0
    f = 2 * p * r / (p + r) if p + r > 0 else 0.0
    return {"precision": p, "recall": r, "f1": f,
            "correct": int(correct), "predicted": int(predicted), "gold": int(gold)}


# --------------------------------------------------------------------------- maximum matching
def _kuhn(adj: List[List[int]], n_right: int) -> List[Pair]:
    """Maximum bipartite matching by augmenting paths; ``adj[u]`` lists the right nodes of u."""
    match_r = [-1] * n_right

    def augment(u: int, seen: List[bool]) -> bool:
        for v in adj[u]:
            if not seen[v]:
                seen[v] = True
                if match_r[v] < 0 or augment(match_r[v], seen):
                    match_r[v] = u
                    return True
        return False

    for u in range(len(adj)):
        if adj[u]:
            augment(u, [False] * n_right)
    return [(u, v) for v, u in enumerate(match_r) if u >= 0]


def _scipy_matching(adj: List[List[int]], n_right: int) -> List[Pair]:
    import numpy as np
    from scipy.optimize import linear_sum_assignment

    m = np.zeros((len(adj), n_right), dtype=np.int8)
    for u, vs in enumerate(adj):
        m[u, vs] = 1
    rows, cols = linear_sum_assignment(m, maximize=True)
    return [(int(u), int(v)) for u, v in zip(rows, cols) if m[u, v]]


def max_matching(adj: Sequence[Sequence[int]], n_right: int) -> List[Pair]:
    """A maximum matching of a bipartite graph given as adjacency lists (left -> right indices);
    returns the matched (left, right) pairs."""
    adj = [list(vs) for vs in adj]
    n_edges = sum(map(len, adj))
    if n_edges == 0:
        return []
    if n_edges > _SCIPY_MIN_PAIRS:
        return _scipy_matching(adj, n_right)
    return _kuhn(adj, n_right)


def _match_group(ok: List[List[bool]], n_gold: int) -> List[Pair]:
    """Maximum matching for one relation on one span-text group (``ok[i][j]``: pred i ~ gold j)."""
    n_pred = len(ok)
    full = True
    adj = []
    for row in ok:
        vs = [j for j, x in enumerate(row) if x]
        full = full and len(vs) == n_gold
        adj.append(vs)
    if full:  # complete bipartite: pair them off in order
        k = min(n_pred, n_gold)
        return [(i, i) for i in range(k)]
    return max_matching(adj, n_gold)


# --------------------------------------------------------------------------- per post
def _group(entities: Sequence[Entity]) -> Dict[str, List[int]]:
    groups: Dict[str, List[int]] = {}
    for i, e in enumerate(entities):
        groups.setdefault(normalize_text(e.text), []).append(i)
    return groups


def post_counts(pred: Sequence[Entity], gold: Sequence[Entity], sentence: Optional[str] = None,
                pairs: bool = True, protocol: str = "mcr") -> Dict[str, Any]:
    """Counts of one post under ``protocol`` (module docstring; "hindex" counts only the
    predictions `hindex_kept` keeps -- indices still refer to ``pred`` -- and needs IoU > 0.5).

    Returns ``{task: {"correct", "predicted", "gold"}}`` for each task in `TASKS`, plus, when
    ``pairs``, ``"pairs": {task: [(pred_index, gold_index), ...]}`` (the maximum matching found,
    indices into ``pred`` and ``gold``), and, when ``sentence`` is not None, ``"n_count"`` and
    ``"absent"`` (indices of predictions whose span does not occur in the sentence).
    """
    _check_protocol(protocol)
    if protocol == "mcr":
        return _counts(pred, gold, sentence, pairs, strict=False)
    kept = hindex_kept(pred, sentence)
    out = _counts([pred[i] for i in kept], gold, sentence, pairs, strict=True)
    if pairs:
        out["pairs"] = {t: [(kept[i], j) for i, j in v] for t, v in out["pairs"].items()}
    if "absent" in out:
        out["absent"] = [kept[i] for i in out["absent"]]
    out["hindex_dropped"] = len(pred) - len(kept)
    return out


def _counts(pred: Sequence[Entity], gold: Sequence[Entity], sentence: Optional[str], pairs: bool,
            strict: bool) -> Dict[str, Any]:
    correct = {t: 0 for t in TASKS}
    matched: Dict[str, List[Pair]] = {t: [] for t in TASKS}
    if pred and gold:
        gold_groups = _group(gold)
        for text, pis in _group(pred).items():
            gis = gold_groups.get(text)
            if not gis:
                continue
            if len(pis) == 1 and len(gis) == 1:  # the common case: no matching needed
                i, j = pis[0], gis[0]
                p, g = pred[i], gold[j]
                t_ok = p.type == g.type
                l_ok = location_correct(p, g, strict=strict)
                n_ok = not p.boxes and not g.boxes
                for task, ok in (("gmner", t_ok and l_ok), ("mner", t_ok), ("eeg", l_ok), ("n", n_ok)):
                    if ok:
                        correct[task] += 1
                        if pairs:
                            matched[task].append((i, j))
                continue
            # Several predictions and/or golds share this span: C_t and C_l once per pair.
            t_ok = [[pred[i].type == gold[j].type for j in gis] for i in pis]
            l_ok = [[location_correct(pred[i], gold[j], strict=strict) for j in gis] for i in pis]
            n_ok = [[not pred[i].boxes and not gold[j].boxes for j in gis] for i in pis]
            rel = {
                "gmner": [[a and b for a, b in zip(tr, lr)] for tr, lr in zip(t_ok, l_ok)],
                "mner": t_ok,
                "eeg": l_ok,
                "n": n_ok,
            }
            for task, ok in rel.items():
                m = _match_group(ok, len(gis))
                correct[task] += len(m)
                if pairs:
                    matched[task].extend((pis[a], gis[b]) for a, b in m)
    n_pred_none = sum(1 for p in pred if not p.boxes)
    n_gold_none = sum(1 for g in gold if not g.boxes)
    out: Dict[str, Any] = {}
    for task in TASKS:
        if task == "n":
            out[task] = {"correct": correct[task], "predicted": n_pred_none, "gold": n_gold_none}
        else:
            out[task] = {"correct": correct[task], "predicted": len(pred), "gold": len(gold)}
    if pairs:
        out["pairs"] = {t: sorted(v) for t, v in matched.items()}
    if sentence is not None:
        s = normalize_text(sentence)
        absent = []
        for i, p in enumerate(pred):
            t = normalize_text(p.text)
            if not t or t not in s:
                absent.append(i)
        out["n_count"] = len(absent)
        out["absent"] = absent
    return out


# --------------------------------------------------------------------------- whole set
def gmner_metrics(preds: Sequence[Sequence[Entity]], golds: Sequence[Sequence[Entity]],
                  sentences: Optional[Sequence[Optional[str]]] = None, per_post: bool = False,
                  protocol: str = "mcr") -> Dict[str, Any]:
    """GMNER / MNER / EEG precision, recall, F1 (Eq. 19-24), textual-bias N-Pre/N-Rec/N-F1
    (Eq. 26-29, key ``n``) and, with ``sentences``, visual-bias N-Count / N-Rate (Eq. 30-31).

    ``preds[k]`` and ``golds[k]`` are the predicted and gold `Entity` lists of post k (boxes in one
    coordinate space); ``sentences[k]`` is its sentence (None: leave the post out of N-Count/N-Rate).
    With ``per_post=True`` the result also holds ``"per_post"``: the `post_counts` of every post.
    ``protocol``: "mcr" (default, the paper's) or "hindex" (the H-Index evaluator's; recorded in the
    result with the number of predictions it dropped). See the module docstring for every
    convention. Raises ValueError on mismatched lengths or an unknown protocol.
    """
    _check_protocol(protocol)
    if len(preds) != len(golds):
        raise ValueError(f"preds and golds must have one entry per post: got {len(preds)} prediction "
                         f"lists and {len(golds)} gold lists")
    if sentences is not None and len(sentences) != len(golds):
        raise ValueError(f"sentences must have one entry per post: got {len(sentences)} sentences "
                         f"for {len(golds)} posts")
    totals = {t: [0, 0, 0] for t in TASKS}
    n_count = n_count_pred = n_dropped = 0
    posts = [] if per_post else None
    for k in range(len(golds)):
        sentence = sentences[k] if sentences is not None else None
        pred = preds[k]
        c = post_counts(pred, golds[k], sentence, pairs=per_post, protocol=protocol)
        n_dropped += c.get("hindex_dropped", 0)
        for t in TASKS:
            tt, ct = totals[t], c[t]
            tt[0] += ct["correct"]
            tt[1] += ct["predicted"]
            tt[2] += ct["gold"]
        if sentence is not None:
            n_count += c["n_count"]
            n_count_pred += len(pred) - c.get("hindex_dropped", 0)
        if posts is not None:
            posts.append(c)
    out: Dict[str, Any] = {t: prf(*totals[t]) for t in TASKS}
    out["protocol"] = protocol
    if protocol == "hindex":
        out["hindex_dropped_predictions"] = n_dropped
    if sentences is not None:
        out["n_count"] = n_count
        out["n_rate"] = n_count / n_count_pred if n_count_pred else 0.0
        out["n_count_predicted"] = n_count_pred
    if posts is not None:
        out["per_post"] = posts
    return out


def metrics_table(m: Dict[str, Any]) -> str:
    """The result of `gmner_metrics` as a small plain-text table (percentages)."""
    names = {"gmner": "GMNER", "mner": "MNER", "eeg": "EEG", "n": "N (textual bias)"}
    lines = [f"{'metric':<17} {'Pre':>6} {'Rec':>6} {'F1':>6} {'correct':>8} {'predict':>8} {'gold':>6}"]
    for t in TASKS:
        r = m[t]
        lines.append(f"{names[t]:<17} {100 * r['precision']:>6.2f} {100 * r['recall']:>6.2f} "
                     f"{100 * r['f1']:>6.2f} {r['correct']:>8d} {r['predicted']:>8d} {r['gold']:>6d}")
    if "n_count" in m:
        lines.append(f"N-Count {m['n_count']}  N-Rate {100 * m['n_rate']:.2f}% "
                     f"(of {m.get('n_count_predicted', 0)} predicted)")
    return "\n".join(lines)


# --------------------------------------------------------------------------- perturbation
def _shifted_box(gold: Entity) -> Tuple[float, float, float, float]:
    """The gold entity's first box moved right, past every gold box of the entity (IoU 0 with each)."""
    x1, y1, x2, y2 = gold.boxes[0]
    right = max(b[2] for b in gold.boxes)
    dx = right - x1 + max(1.0, 0.5 * (x2 - x1))
    return (x1 + dx, y1, x2 + dx, y2)


def perturb(golds: Sequence[Sequence[Entity]], seed: int = 0, drop: float = 0.1, shift: float = 0.1,
            retype: float = 0.1, spurious: float = 0.0,
            types: Sequence[str] = ENTITY_TYPES) -> List[List[Entity]]:
    """Predictions made from gold triples with a known number of errors, deterministic in ``seed``.

    Let N be the number of gold triples and L the number with at least one box. Every gold triple
    becomes one prediction (same text, same type, its FIRST gold box or None), except:

    * ``round(drop * N)`` triples are dropped;
    * ``round(retype * N)`` of the rest get a different type (drawn uniformly from ``types`` minus
      the gold type); their location is kept;
    * ``round(shift * L)`` located triples of the rest (neither dropped nor retyped) get a box moved
      right past every gold box of that entity, so IoU = 0 < 0.5 with each; type kept;
    * ``round(spurious * N)`` unlocated predictions are added, with type ``types[0]`` and a text
      ``"spurious entity <k>"`` (k = 0, 1, ...) that occurs in no sentence, each appended to a
      post drawn uniformly.

    The three selections are DISJOINT: the triples are enumerated in order (post, then position),
    shuffled once with ``random.Random(seed)``, and the dropped ones are the first of the shuffled
    order, the retyped ones the next, and the shifted ones the first located triples after those.
    Then the new types are drawn in shuffled order, then the spurious posts. Raises ValueError when
    a fraction is outside [0, 1] or there are not enough triples left for a selection.
    """
    for name, v in (("drop", drop), ("shift", shift), ("retype", retype), ("spurious", spurious)):
        if not 0.0 <= v <= 1.0:
            raise ValueError(f"{name} must be in [0, 1], got {v}")
    rng = random.Random(seed)
    flat = [(k, j) for k, g in enumerate(golds) for j in range(len(g))]
    n = len(flat)
    n_located = sum(1 for k, j in flat if golds[k][j].boxes)
    n_drop, n_retype = round(drop * n), round(retype * n)
    n_shift, n_spurious = round(shift * n_located), round(spurious * n)
    if n_drop + n_retype > n:
        raise ValueError(f"cannot drop {n_drop} and retype {n_retype} of {n} triples")
    order = list(range(n))
    rng.shuffle(order)
    dropped = set(order[:n_drop])
    retyped_order = order[n_drop:n_drop + n_retype]
    rest_located = [i for i in order[n_drop + n_retype:] if golds[flat[i][0]][flat[i][1]].boxes]
    if n_shift > len(rest_located):
        raise ValueError(f"cannot shift {n_shift} boxes: only {len(rest_located)} located triples are "
                         f"neither dropped nor retyped")
    shifted = set(rest_located[:n_shift])
    new_type: Dict[int, str] = {}
    for i in retyped_order:
        t = golds[flat[i][0]][flat[i][1]].type
        others = [x for x in types if x != t]
        if not others:
            raise ValueError(f"no type other than {t!r} to retype to")
        new_type[i] = rng.choice(others)
    preds: List[List[Entity]] = [[] for _ in golds]
    for i, (k, j) in enumerate(flat):
        if i in dropped:
            continue
        g = golds[k][j]
        if i in shifted:
            box: Tuple = (_shifted_box(g),)
        else:
            box = (g.boxes[0],) if g.boxes else ()
        preds[k].append(Entity(g.text, new_type.get(i, g.type), box))
    if n_spurious and not preds:
        raise ValueError("cannot add spurious predictions to an empty set of posts")
    for s in range(n_spurious):
        preds[rng.randrange(len(preds))].append(Entity(f"spurious entity {s}", types[0], ()))
    return preds


# --------------------------------------------------------------------------- Table 2: MNER-MI, GREC
def mner_mi_metrics(preds: Sequence[Sequence[Entity]], golds: Sequence[Sequence[Entity]]) -> Dict[str, Any]:
    """MNER-MI precision / recall / F1 (Table 2, Sec. 5.1 "MNER"): a predicted entity is correct when
    its span and type equal a gold entity's (C_e and C_t of Eq. 20; locations are not asked and are
    ignored), counted with the same one-to-one maximum matching per post and Eq. 23-24 as the
    ``mner`` part of `gmner_metrics`. Returns ``{"precision", "recall", "f1", "correct",
    "predicted", "gold", "posts"}``."""
    if len(preds) != len(golds):
        raise ValueError(f"preds and golds must have one entry per post: got {len(preds)} prediction "
                         f"lists and {len(golds)} gold lists")
    c = p = g = 0
    for pred, gold in zip(preds, golds):
        counts = post_counts(pred, gold, pairs=False)["mner"]
        c, p, g = c + counts["correct"], p + counts["predicted"], g + counts["gold"]
    return {**prf(c, p, g), "posts": len(golds)}


def grec_metrics(pred_boxes: Sequence[Sequence[Tuple[float, float, float, float]]],
                 gold_boxes: Sequence[Optional[Tuple[float, float, float, float]]],
                 threshold: float = IOU_THRESHOLD) -> Dict[str, Any]:
    """GREC N-acc and Precision (App. E.3 "VG", Eq. 25; He et al. 2023), one entry per sample.

    ``pred_boxes[k]``: the boxes the answer for sample k gives (empty: location None; None: no
    answer at all, e.g. a sample missing from the result file -- wrong in both ratios);
    ``gold_boxes[k]``: its target box, or None for a no-target sample (multi-target samples are
    removed before, App. E.1).

    * N-acc = TP / (TP + FN) over no-target samples (Eq. 25): TP when no box is predicted.
    * Precision over one-target samples: correct when the answer gives exactly one box and its IoU
      with the target is >= ``threshold`` (0.5, inclusive as in Eq. 21). GREC's Precision@(F1=1,
      IoU>=0.5) also needs the predicted set to match exactly, so an answer with extra boxes, or
      with none, is wrong.

    A ratio with no sample is 0. Returns ``{"n_acc", "precision", "no_target": {"correct",
    "total"}, "one_target": {"correct", "total"}, "samples"}``.
    """
    if len(pred_boxes) != len(gold_boxes):
        raise ValueError(f"pred_boxes and gold_boxes must have one entry per sample: got "
                         f"{len(pred_boxes)} and {len(gold_boxes)}")
    nt_ok = nt = ot_ok = ot = 0
    for boxes, gold in zip(pred_boxes, gold_boxes):
        if gold is None:
            nt += 1
            nt_ok += boxes is not None and not boxes
        else:
            ot += 1
            ot_ok += boxes is not None and len(boxes) == 1 and iou(boxes[0], gold) >= threshold
    return {"n_acc": nt_ok / nt if nt else 0.0, "precision": ot_ok / ot if ot else 0.0,
            "no_target": {"correct": nt_ok, "total": nt}, "one_target": {"correct": ot_ok, "total": ot},
            "samples": len(gold_boxes)}


def grec_matches(pred: Sequence[Sequence[float]], gold: Sequence[Sequence[float]],
                 threshold: float = GREC_GIOU_THRESHOLD) -> int:
    """True positives of one sample under gRefCOCO's evaluator: the (prediction, gold) pair of highest
    generalized IoU is matched, both leave, and so on while that GIoU is >= ``threshold``
    (greedy, one-to-one)."""
    scores = sorted(((giou(p, g), i, j) for i, p in enumerate(pred) for j, g in enumerate(gold)), reverse=True)
    used_p, used_g, tp = set(), set(), 0
    for s, i, j in scores:
        if s < threshold:
            break
        if i in used_p or j in used_g:
            continue
        used_p.add(i)
        used_g.add(j)
        tp += 1
    return tp


def grec_benchmark_metrics(pred_boxes: Sequence[Optional[Sequence[Sequence[float]]]],
                           gold_boxes: Sequence[Sequence[Sequence[float]]],
                           pred_scores: Optional[Sequence[Optional[Sequence[float]]]] = None,
                           score_threshold: float = GREC_SCORE_THRESHOLD,
                           giou_threshold: float = GREC_GIOU_THRESHOLD) -> Dict[str, Any]:
    """GREC scored as gRefCOCO's released evaluator does (``--protocol grec``), one entry per sample.

    ``pred_boxes[k]``: the predicted boxes of sample k (None: no answer at all -- wrong, even for a
    no-target sample); ``gold_boxes[k]``: all its target boxes (empty: no-target; several:
    multi-target). ``pred_scores[k]``: a score per box; only boxes scoring >= ``score_threshold``
    (0.7) count. Our answers carry no score, so with ``pred_scores`` None every predicted box counts.

    Per sample: the predictions are matched to the targets greedily, one-to-one, by generalized IoU
    >= ``giou_threshold`` (`grec_matches`); precision = TP / predictions, recall = TP / targets; the
    sample is correct when its F1 is 1 (every prediction matched and every target found); a no-target
    sample is correct when nothing is predicted.

    * ``precision`` = Pr@(F1=1, IoU>=0.5) = correct samples / all samples (one-, multi-, no-target).
    * ``n_acc`` = correct no-target samples / no-target samples.
    * ``t_acc`` = target samples with at least one prediction / target samples (a target sample not
      answered "nothing").

    A ratio with no sample is 0. Returns those three and per-kind counts.
    """
    if len(pred_boxes) != len(gold_boxes) or (pred_scores is not None and len(pred_scores) != len(gold_boxes)):
        raise ValueError(f"pred_boxes, gold_boxes (and pred_scores) must have one entry per sample: got "
                         f"{len(pred_boxes)}, {len(gold_boxes)}"
                         + ("" if pred_scores is None else f" and {len(pred_scores)}"))
    kinds = {k: {"correct": 0, "total": 0} for k in ("no_target", "one_target", "multi_target")}
    t_found = 0
    for k, (boxes, gold) in enumerate(zip(pred_boxes, gold_boxes)):
        kind = "no_target" if not gold else "one_target" if len(gold) == 1 else "multi_target"
        kinds[kind]["total"] += 1
        if boxes is None:  # no answer: wrong whatever the sample
            continue
        scores = None if pred_scores is None else pred_scores[k]
        if scores is not None:
            if len(scores) != len(boxes):
                raise ValueError(f"sample {k}: {len(boxes)} boxes but {len(scores)} scores")
            boxes = [b for b, sc in zip(boxes, scores) if sc >= score_threshold]
        if not gold:
            kinds[kind]["correct"] += not boxes
            continue
        t_found += bool(boxes)
        tp = grec_matches(boxes, gold, giou_threshold)
        if tp:
            p, r = tp / len(boxes), tp / len(gold)
            kinds[kind]["correct"] += 2 * p * r / (p + r) >= GREC_F1_THRESHOLD
    n = sum(v["total"] for v in kinds.values())
    nt = kinds["no_target"]
    targets = n - nt["total"]
    return {"protocol": "grec", "precision": sum(v["correct"] for v in kinds.values()) / n if n else 0.0,
            "n_acc": nt["correct"] / nt["total"] if nt["total"] else 0.0,
            "t_acc": t_found / targets if targets else 0.0, **kinds,
            "target_answered": {"found": t_found, "total": targets}, "samples": n,
            "score_threshold": score_threshold if pred_scores is not None else None,
            "giou_threshold": giou_threshold}
