"""``mcr-swift synth``: build the multi-style CoT set D_R (paper Sec. 4.1, Eq. 4; App. B, C; App. E.4).

For every sample and ``--per-post`` (2) of the five styles, Gamma_phi turns (sentence, image, constraints C,
gold triples) into a reasoning chain that ends in the gold answer; every chain is checked against the gold
(`check_chain`); requests are cached and resumable. Styles, endpoints, outputs: docs/pipeline.md.
"""
from __future__ import annotations

import argparse
import random
import re
import sys
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

from ..core.answer import (ANSWER_CLOSE, ANSWER_OPEN, BBOX_PLACEHOLDER, THINK_CLOSE, THINK_OPEN,
                     format_answer_json, pick_box)
from ..jsonl import iter_jsonl, write_json_atomic, write_jsonl_atomic
from ..core.columns import GOLD_COLUMN, row_task
from ..data.rows import sample_from_row
from .styles import TEMPLATE_STYLES, template_chain
from ..core.entities import Box, Entity, Sample

__all__ = ["API_STYLES", "ALL_STYLES", "check_chain", "ChainCheck", "style_prompt",
           "chain_row", "plan_styles", "paper_count_line", "synthesize", "main"]

#: style -> (prompt file, sends the image)
API_STYLES: Dict[str, Tuple[str, bool]] = {
    "llm_qa": ("style_llm_qa", False),
    "llm_conclusions": ("style_llm_conclusions", False),
    "mllm_distill": ("style_mllm_distill", True),
}
ALL_STYLES: Tuple[str, ...] = TEMPLATE_STYLES + tuple(API_STYLES)

#: Styles per sample by default: App. E.1 counts "55,712 samples annotated with multi-style reasoning
#: schema" = 2 x (7000 Twitter-GMNER + 6856 MNER-MI + 14000 GREC) training samples.
DEFAULT_PER_POST = 2
#: App. E.1 / Table 5: training samples per source (task) and the size of D_R.
PAPER_TRAIN_SAMPLES = {"gmner": 7000, "mner_mi": 6856, "grec": 14000}
PAPER_D_R = 55712

#: Sampling for synthesis: the paper is silent; some temperature keeps the API styles diverse.
DEFAULT_TEMPERATURE = 0.7
DEFAULT_MAX_TOKENS = 2048

_LEAK = re.compile(r"\b(gold|ground[- ]truth|correct (labels?|triples?|answers?)|"
                   r"(given|provided) (labels?|triples?|answers?))\b", re.I)
_NUM = r"-?\d+(?:\.\d+)?"
_BOX_LITERAL = re.compile(
    rf"\[\s*({_NUM})\s*,\s*({_NUM})\s*,\s*({_NUM})\s*,\s*({_NUM})\s*\]"
    rf"|\(\s*({_NUM})\s*,\s*({_NUM})\s*,\s*({_NUM})\s*,\s*({_NUM})\s*\)"
    rf"|\(\s*({_NUM})\s*,\s*({_NUM})\s*\)\s*,?\s*\(\s*({_NUM})\s*,\s*({_NUM})\s*\)")
#: A literal box within this many pixels (each coordinate) of a gold box is that box.
BOX_TOLERANCE = 2.0


def style_prompt(style: str, sample: Sample, gold_raw: str, task: str = "gmner") -> str:
    """The filled instruction of an API style (placeholders replaced with str.replace). GMNER uses
    ``prompts/style_<style>.txt``, the other tasks ``prompts/style_<style>_<task>.txt`` (MNER-MI:
    several images, no location; GREC: one expression, one box or none, no entity type);
    ``{n_images}`` is the post's number of images."""
    from ..prompts import load_prompt
    name = API_STYLES[style][0] + ("" if task == "gmner" else f"_{task}")
    text = load_prompt(name)
    return (text.replace("{sentence}", sample.sentence).replace("{n_images}", str(len(sample.images)))
            .replace("{gold_json}", gold_raw))


@dataclass
class ChainCheck:
    status: str                      # "accepted" | "repaired" | "rejected"
    reason: str = ""                 # why rejected / what was repaired
    text: str = ""                   # the final assistant turn (placeholders for boxes)
    boxes: Tuple[Box, ...] = ()      # original-pixel box of each placeholder, in order
    refs: Tuple[str, ...] = ()       # the entity text of each box
    literal_boxes: int = 0           # literal gold boxes turned into placeholders


def _key(e: Entity) -> Tuple[str, str, bool]:
    from ..core.metrics import normalize_text
    return normalize_text(e.text), e.type, bool(e.boxes)


def _mentions(text: str, entities: Sequence[Entity]) -> List[Tuple[int, int]]:
    """(end offset, entity index) of every case-insensitive mention of a located entity."""
    low = text.lower()
    out = []
    for i, e in enumerate(entities):
        needle = e.text.lower()
        if not e.boxes or not needle:
            continue
        start = low.find(needle)
        while start >= 0:
            out.append((start + len(needle), i))
            start = low.find(needle, start + 1)
    return sorted(out)


def _near(a: Sequence[float], b: Sequence[float]) -> bool:
    return all(abs(float(x) - float(y)) <= BOX_TOLERANCE for x, y in zip(a, b))


def _reasoning_boxes(think: str, gold: Sequence[Entity], multi_box: str, task: str = "gmner"):
    """Replace literal gold boxes by placeholders and bind every placeholder to a box (GREC: the
    expression's one target box, however the reasoning words it). Returns (think, boxes, refs,
    n_literal) or a rejection reason string."""
    n_literal = 0

    def literal(m: "re.Match") -> str:
        nonlocal n_literal
        nums = [float(v) for v in m.groups() if v is not None]
        for ei, e in enumerate(gold):
            for bi, b in enumerate(e.boxes):
                if _near(nums, b):
                    n_literal += 1
                    return f"{BBOX_PLACEHOLDER}\x00{ei}:{bi}\x00"
        raise LookupError
    try:
        think = _BOX_LITERAL.sub(literal, think)
    except LookupError:
        return "stray_box"
    mentions = _mentions(think, gold)
    boxes, refs, parts, pos = [], [], [], 0
    for m in re.finditer(re.escape(BBOX_PLACEHOLDER) + r"(?:\x00(\d+):(\d+)\x00)?", think):
        if m.group(1) is not None:  # a literal gold box: exactly that box
            e = gold[int(m.group(1))]
            box = e.boxes[int(m.group(2))]
        elif task == "grec":  # one expression: every placeholder is its one target box
            located = [e for e in gold if e.boxes]
            if not located:
                return "unresolved_bbox"
            e = located[0]
            box = pick_box(e.boxes, multi_box)
        else:  # the located entity named last before the placeholder
            before = [i for end, i in mentions if end <= m.start()]
            if not before:
                return "unresolved_bbox"
            e = gold[before[-1]]
            box = pick_box(e.boxes, multi_box)
        boxes.append(box)
        refs.append(e.text)
        parts.append(think[pos:m.start()] + BBOX_PLACEHOLDER)
        pos = m.end()
    parts.append(think[pos:])
    return "".join(parts), boxes, refs, n_literal


def _answer_entities(answer: str) -> Optional[List[Entity]]:
    """The answer's entities; a ``<bbox>`` placeholder reads as 'located'. None: no readable list."""
    from ..core.parser import parse_answer
    res = parse_answer(answer.replace(BBOX_PLACEHOLDER, "[0, 0, 1, 1]"))
    return list(res.entities) if res.ok else None


def _canonical_answer(order: Sequence[Entity], multi_box: str) -> Tuple[str, List[Box], List[str]]:
    items, boxes, refs = [], [], []
    for e in order:
        box = pick_box(e.boxes, multi_box)
        items.append((e.text, e.type, BBOX_PLACEHOLDER if box is not None else None))
        if box is not None:
            boxes.append(box)
            refs.append(e.text)
    return f"{ANSWER_OPEN}\n{format_answer_json(items)}\n{ANSWER_CLOSE}", boxes, refs


def _without_entities(text: str, gold: Sequence[Entity]) -> str:
    """``text`` with every (case-insensitive) mention of a gold entity blanked out."""
    for e in sorted(gold, key=lambda e: -len(e.text)):
        if e.text.strip():
            text = re.sub(re.escape(e.text), " ", text, flags=re.I)
    return text


def check_chain(text: str, gold: Sequence[Entity], *, repair: bool = True, multi_box: str = "largest",
                finish_reason: Optional[str] = None, task: str = "gmner") -> ChainCheck:
    """Validate a generated chain against the gold triples (never raises on model output).

    Per task (the row's ``mcr_task``): the answer must hold exactly the gold (span, type,
    located-or-not) triples in every task, so an MNER-MI answer has every bbox null (a box anywhere
    in an MNER-MI chain rejects it: ``box_not_asked``) and a GREC answer is its one expression with
    its box or null; in a GREC chain every ``<bbox>`` placeholder is the expression's one box."""
    gold = list(gold)
    text = text if isinstance(text, str) else ""
    lo = text.find(THINK_OPEN)
    hi = text.find(THINK_CLOSE, lo + 1 if lo >= 0 else 0)
    if hi < 0:
        return ChainCheck("rejected", "truncated" if finish_reason == "length" else "no_reasoning")
    think = text[lo + len(THINK_OPEN) if lo >= 0 else 0:hi].strip()
    if len(think) < 20:
        return ChainCheck("rejected", "no_reasoning")
    if _LEAK.search(_without_entities(think, gold)):  # "Gold Star families" is an entity, not a leak
        return ChainCheck("rejected", "mentions_labels")
    rest = text[hi + len(THINK_CLOSE):]
    if task == "mner_mi" and (BBOX_PLACEHOLDER in text or _BOX_LITERAL.search(text)):
        return ChainCheck("rejected", "box_not_asked")
    status, reason = "accepted", ""
    if ANSWER_OPEN in rest:
        pred = _answer_entities(rest)
        if pred is None:
            return ChainCheck("rejected", "answer_unparseable")
        if sorted(map(_key, pred)) != sorted(map(_key, gold)):
            return ChainCheck("rejected", "answer_mismatch")
        pool = defaultdict(list)  # model order, gold boxes
        for g in gold:
            pool[_key(g)].append(g)
        order = [pool[_key(p)].pop(0) for p in pred]
    elif repair:
        status, reason, order = "repaired", "answer_appended", gold
    else:
        return ChainCheck("rejected", "no_answer")
    r = _reasoning_boxes(think, gold, multi_box, task)
    if isinstance(r, str):
        return ChainCheck("rejected", r)
    think, boxes, refs, n_literal = r
    answer, a_boxes, a_refs = _canonical_answer(order, multi_box)
    final = f"{THINK_OPEN}\n{think}\n{THINK_CLOSE}\n{answer}"
    return ChainCheck(status, reason, final, tuple(boxes) + tuple(a_boxes), tuple(refs) + tuple(a_refs),
                      n_literal)


def chain_row(row: Mapping[str, Any], style: str, text: str, boxes: Sequence[Box], refs: Sequence[str],
              extra: Optional[Mapping[str, Any]] = None) -> Dict[str, Any]:
    """The D_R row: the prepared row's user turn and columns, the chain as assistant turn, its boxes
    in ``objects`` (original pixels, ms-swift's grounding convention) and ``mcr_style``."""
    out = {k: v for k, v in row.items() if k not in ("messages", "objects")}
    user = [m for m in row["messages"] if m.get("role") != "assistant"]
    out["messages"] = user + [{"role": "assistant", "content": text}]
    out["objects"] = {"ref": list(refs), "bbox": [[float(v) for v in b] for b in boxes], "bbox_type": "real"}
    out["mcr_style"] = style
    if extra:
        out.update(extra)
    return out


def plan_styles(keys: Sequence[Tuple[str, str]], styles: Sequence[str], per_post: int, seed: int,
                repeat: bool = False) -> List[List[str]]:
    """The styles of each sample (``keys``: (task, id) per sample, in input order), ``per_post`` of
    ``styles`` each (0, or at least len(styles): all of them once; with ``repeat``, more rows than
    styles repeat the styles in turn, so ``--styles formatted_a --per-post 2 --repeat-styles`` gives
    two rows of one style, the w/o D_R row of Table 3).

    Balanced and seeded (the paper is silent on how its 2 styles per sample were drawn): within each
    task, samples are visited in a seeded order and each takes the ``per_post`` styles used least so
    far in that task, ties broken by how often that combination was used, then by a seeded draw. So
    within a task every style's count differs from every other's by at most 1, the combinations are
    spread evenly, and the choice does not depend on the input order."""
    from itertools import combinations
    if repeat and per_post > len(styles):
        return [[styles[k % len(styles)] for k in range(per_post)] for _ in keys]
    if per_post <= 0 or per_post >= len(styles):
        return [list(styles) for _ in keys]
    combos = list(combinations(range(len(styles)), per_post))
    out: List[List[str]] = [[] for _ in keys]
    by_task: Dict[str, List[int]] = defaultdict(list)
    for i, (task, _) in enumerate(keys):
        by_task[task].append(i)
    for task, idx in by_task.items():
        rng = random.Random(f"{seed}:{task}:styles")
        order = sorted(idx, key=lambda i: (random.Random(f"{seed}:{task}:{keys[i][1]}").random(), i))
        used, combo_used = [0] * len(styles), Counter()
        for i in order:
            best = min(combos, key=lambda c: (sum(used[j] for j in c), combo_used[c], rng.random()))
            for j in best:
                used[j] += 1
            combo_used[best] += 1
            out[i] = [styles[j] for j in best]
    return out


#: A rejected chain is asked again this many times (another seed) before its slot is replaced
#: (docs/decisions.md; the paper is silent).
DEFAULT_CHAIN_RETRIES = 2
#: How a slot whose chains were all rejected is filled: "style" = another API style of the run the
#: sample does not have yet (least produced in its task first, with its own retries), then a template
#: style of the run as the last resort; "template" = a template style straight away; "none" = lost.
REPLACE_MODES = ("style", "template", "none")
DEFAULT_REPLACE = "style"


@dataclass
class _Slot:
    """One planned D_R row: sample ``i``'s ``variant``-th row of ``planned`` style, now asked as
    ``style`` (attempt ``attempt``; the endpoint ``ep`` of that style's list)."""
    i: int
    planned: str
    variant: int = 0
    style: str = ""
    attempt: int = 0
    ep: int = 0
    key: Optional[str] = None
    state: str = "open"        # open | produced | lost | missing
    replaced: bool = False

    def __post_init__(self):
        self.style = self.style or self.planned


def _request_seed(seed: int, slot: "_Slot") -> int:
    """Attempt 0 of variant 0 sends ``seed`` (the cache key of earlier runs); a retry or a repeated
    style sends another seed."""
    return seed + slot.attempt + 1009 * slot.variant


def _request_messages(style: str, sample: Sample, row: Mapping[str, Any]) -> List[Dict[str, Any]]:
    from ..endpoint import to_openai_messages
    task = row_task(row)
    prompt = style_prompt(style, sample, str(row[GOLD_COLUMN]), task)
    if API_STYLES[style][1]:
        if task == "mner_mi" and len(sample.images) > 1:  # numbered, as in the row's user turn
            tags = "".join(f"Image {k}: <image>\n" for k in range(1, len(sample.images) + 1))
        else:
            tags = "<image>" * len(sample.images)
        return to_openai_messages([{"role": "user", "content": tags + prompt}], sample.images)
    return [{"role": "user", "content": prompt}]


def paper_count_line(task_samples: Mapping[str, int], per_post: int, n_styles: int, rows: Optional[int] = None
                     ) -> str:
    """The D_R size against App. E.1's 55,712 = 2 x 27,856 (7000 + 6856 + 14000)."""
    k = n_styles if per_post <= 0 or per_post >= n_styles else per_post
    n = sum(task_samples.values())
    full = all(task_samples.get(t, 0) == c for t, c in PAPER_TRAIN_SAMPLES.items())
    paper_n = sum(PAPER_TRAIN_SAMPLES.values())
    line = f"D_R {n:,} samples x {k} styles = {n * k:,} planned"
    if rows is not None:
        line += f", {rows:,} produced"
    if full:
        line += f" (paper: {PAPER_D_R:,} = 2 x {paper_n:,}, App. E.1)"
    else:
        per = ", ".join(f"{t} {task_samples.get(t, 0):,}/{c:,}" for t, c in PAPER_TRAIN_SAMPLES.items())
        line += (f" (a subset: {per} of the paper's training samples; on full data 2 x {paper_n:,} = "
                 f"{PAPER_D_R:,}, App. E.1)")
    return line


def synthesize(rows: Sequence[Mapping[str, Any]], out: Path, styles: Sequence[str], *, endpoints: Mapping[str, Any],
               cache_path: Optional[Path] = None, concurrency: Any = None, retry=None, temperature: float =
               DEFAULT_TEMPERATURE, top_p: Optional[float] = None, max_tokens: int = DEFAULT_MAX_TOKENS,
               seed: int = 0, per_post: int = 0, repair: bool = True, multi_box: str = "largest",
               progress: bool = True, source: str = "input", chain_retries: int = DEFAULT_CHAIN_RETRIES,
               replace: str = DEFAULT_REPLACE, repeat_styles: bool = False, length_counter=None,
               max_completion: Optional[int] = None) -> Dict[str, Any]:
    """Run synthesis; returns the summary. ``endpoints`` maps each API style to its `Endpoint` or a
    list of them (the style's samples are shared out between them in turn, e.g. App. E.4's two
    MLLMs). A rejected chain is asked again ``chain_retries`` times with another seed, then its slot
    is replaced (``replace``, `REPLACE_MODES`), so D_R keeps its planned size where it can.
    ``concurrency``: an int pins the requests in flight, a `Concurrency` (default adaptive) sets one
    `AdaptiveLimit` per endpoint, carried across the styles and rounds it serves.
    With ``length_counter`` (a `mcr_swift.data.lengths.TokenCounter`) and ``max_completion``, a chain
    (template or API) longer than ``max_completion`` tokens is rejected (``too_long``) like any other
    rejection: GRPO's rollouts and the filter's samples are capped there, so it could never be written
    whole. A template chain is not asked again (it would be the same): its slot is replaced."""
    from ..endpoint import ResultCache, RetryPolicy
    if replace not in REPLACE_MODES:
        raise ValueError(f"replace must be one of {', '.join(REPLACE_MODES)}, got {replace!r}")
    if int(chain_retries) < 0:
        raise ValueError(f"chain retries must be >= 0, got {chain_retries!r}")
    retry = retry or RetryPolicy()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    cache = ResultCache(cache_path or out.with_name(out.name + ".cache.jsonl"))
    samples = []
    for i, row in enumerate(rows):
        try:
            samples.append(sample_from_row(row))
        except (KeyError, ValueError, TypeError) as e:
            raise ValueError(f"{source}: row {i + 1} (mcr_id {row.get('mcr_id')!r}): {e}") from None
    tasks = [row_task(r) for r in rows]
    eps = {s: list(e) if isinstance(e, (list, tuple)) else [e] for s, e in endpoints.items()}
    chosen = plan_styles([(t, smp.id) for t, smp in zip(tasks, samples)], styles, per_post, seed, repeat_styles)
    slots: List[_Slot] = []
    for i, ss in enumerate(chosen):
        seen: Counter = Counter()   # the k-th row of one style of this sample is its variant k
        for s in ss:
            slots.append(_Slot(i, s, variant=seen[s]))
            seen[s] += 1
    run = _Run(rows, samples, tasks, styles, eps, cache, slots, seed=seed, temperature=temperature, top_p=top_p,
               max_tokens=max_tokens, retry=retry, concurrency=concurrency, progress=progress, repair=repair,
               multi_box=multi_box, chain_retries=int(chain_retries), replace=replace,
               length_counter=length_counter, max_completion=max_completion)
    run.go()
    produced = [run.rows_out[id(sl)] for sl in slots if sl.state == "produced"]
    complete = run.complete()
    summary = {
        "input_posts": len(rows), "styles": list(styles), "complete": complete,
        "per_style": {s: {"planned": sum(1 for sl in slots if sl.planned == s), **dict(run.per[s]),
                          **({"requests": run.stats[s].as_dict()} if s in run.stats else {})} for s in styles},
        "endpoints": {s: [e.describe() for e in eps[s]] if len(eps[s]) > 1 else eps[s][0].describe()
                      for s in styles if s in eps},
        "cache": {"path": str(cache.path), "records": len(cache), "torn_lines_dropped": cache.torn},
        "rows": len(produced), "out": str(out) if complete else None,
        "per_post": per_post, "chain_retries": int(chain_retries), "replace": replace,
        "max_completion_length": max_completion if length_counter is not None else None,
        "input_per_task": dict(sorted(Counter(tasks).items())),
        "planned_per_task": {t: dict(Counter(sl.planned for sl in slots if tasks[sl.i] == t))
                             for t in sorted(set(tasks))},
        "produced_per_task": {t: dict(Counter(sl.style for sl in slots if sl.state == "produced" and tasks[sl.i] == t))
                              for t in sorted(set(tasks))},
        "per_task_style": run.per_task_style(),
    }
    summary["paper_count"] = paper_count_line(summary["input_per_task"], per_post, len(styles), len(produced))
    if complete:
        write_jsonl_atomic(out, produced)
        write_jsonl_atomic(out.with_name(out.stem + ".rejected.jsonl"), run.rejected)
    write_json_atomic(out.with_name(out.name + ".summary.json"), summary)
    cache.close()  # the lock is held until the outputs are written
    return summary


class _Run:
    """The rounds of one synthesis: ask every open API slot, check its chain, and retry, replace or
    close it; template slots close at once. Deterministic given the cache, so a resumed run replays
    the same rounds from cached answers and sends only what is missing."""

    def __init__(self, rows, samples, tasks, styles, eps, cache, slots, **kw):
        self.rows, self.samples, self.tasks, self.styles, self.eps = rows, samples, tasks, list(styles), eps
        self.cache, self.slots, self.kw = cache, slots, kw
        self.per: Dict[str, Counter] = defaultdict(Counter)
        self.stats: Dict[str, Any] = {}
        self.rows_out: Dict[int, Dict[str, Any]] = {}
        self.rejected: List[Dict[str, Any]] = []
        self.ep_turn: Counter = Counter()
        self.slots_of: Dict[int, List[_Slot]] = defaultdict(list)    # sample index -> its slots
        for sl in slots:
            self.slots_of[sl.i].append(sl)
        self.rejected_of: Dict[Tuple[str, str], set] = defaultdict(set)  # (task, id) -> styles rejected
        # (task, style) -> slots open or produced in that style: what `_replacement` balances
        self.live: Counter = Counter((tasks[sl.i], sl.style) for sl in slots)
        self.retried: Counter = Counter()   # (task, style) -> chains asked again
        self.stopped = False
        self.limits: Dict[Tuple[str, str], Any] = {}  # one AdaptiveLimit per endpoint (the LLM styles share one)

    # ---- the loop
    def go(self) -> None:
        for sl in self.slots:
            self._enter(sl)
        while not self.stopped:
            open_ = [sl for sl in self.slots if sl.state == "open"]
            if not open_:
                break
            self._ask(open_)
            for sl in open_:
                if sl.state == "open" and not self.stopped:
                    self._judge(sl)
                elif sl.state == "open":
                    sl.state = "missing"
                    self.live[(self.tasks[sl.i], sl.style)] -= 1
                    self.per[sl.style]["missing"] += 1

    def complete(self) -> bool:
        return not self.stopped and all(not st.failed and not st.interrupted for st in self.stats.values()) and \
            not any(sl.state == "missing" for sl in self.slots)

    def _enter(self, sl: _Slot) -> None:
        """``sl`` now asks for ``sl.style``: a template style produces its row at once."""
        if sl.style in TEMPLATE_STYLES:
            k = self.kw
            smp = self.samples[sl.i]
            text, boxes = template_chain(smp, sl.style, k["seed"] + sl.variant, k["multi_box"], self.tasks[sl.i])
            refs = [_ref_for(smp.entities, b) for b in boxes]
            extra = {"mcr_variant": sl.variant} if sl.variant else None
            out_row = chain_row(self.rows[sl.i], sl.style, text, boxes, refs, extra)
            n_tok = self._too_long(out_row)
            if n_tok is not None:  # a template chain is the same on every try: replaced, not retried
                self._reject(sl, "too_long", text, n_tok, retry=False)
                return
            self._produce(sl, out_row, "produced")
        else:
            sl.ep = self.ep_turn[sl.style] % len(self.eps[sl.style])
            self.ep_turn[sl.style] += 1

    def _produce(self, sl: _Slot, row: Dict[str, Any], status: str) -> None:
        sl.state = "produced"
        self.rows_out[id(sl)] = row
        c = self.per[sl.style]
        c["produced"] += 1
        if status != "produced":
            c[status] += 1
        if sl.replaced:
            c["replacing"] += 1

    def _ask(self, open_: Sequence[_Slot]) -> None:
        from ..endpoint import AdaptiveLimit, Concurrency, RunStats, cache_key, chat, run_jobs
        k = self.kw
        groups: Dict[Tuple[str, int], List[Tuple[str, Any]]] = defaultdict(list)
        for sl in open_:
            ep = self.eps[sl.style][sl.ep]
            msgs = _request_messages(sl.style, self.samples[sl.i], self.rows[sl.i])
            fields = dict(kind="mcr-synth", post=self.samples[sl.i].id, style=sl.style, messages=msgs, model=ep.model,
                          temperature=k["temperature"], top_p=k["top_p"], max_tokens=k["max_tokens"],
                          seed=_request_seed(k["seed"], sl))
            if sl.attempt or sl.variant:
                fields.update(attempt=sl.attempt, variant=sl.variant)
            sl.key = cache_key(**fields)
            groups[(sl.style, sl.ep)].append((sl.key, (msgs, fields["seed"])))
        for style in [s for s in ALL_STYLES if any(g[0] == s for g in groups)]:
            st = self.stats.setdefault(style, RunStats())
            for (gs, e), jobs in sorted(groups.items()):
                if gs != style:
                    continue
                ep = self.eps[style][e]
                client = ep.client()

                def work(payload, ep=ep, st=st, client=client):
                    msgs, rseed = payload
                    return chat(ep, msgs, temperature=k["temperature"], top_p=k["top_p"], max_tokens=k["max_tokens"],
                                seed=rseed, retry=k["retry"], client=client, on_retry=st.note_retry)
                limit = self.limits.setdefault((ep.base_url, ep.model),
                                               AdaptiveLimit(Concurrency.of(k["concurrency"])))
                run_jobs(jobs, work, self.cache, desc=f"synth {style}", progress=k["progress"], stats=st,
                         limiter=limit)
                if st.interrupted:
                    self.stopped = True
                    return

    def _judge(self, sl: _Slot) -> None:
        from ..endpoint import ChatResult
        k = self.kw
        value = self.cache.get(sl.key)
        c = self.per[sl.style]
        if value is None:  # the request failed: the run is incomplete, a rerun asks again
            sl.state = "missing"
            self.live[(self.tasks[sl.i], sl.style)] -= 1
            c["missing"] += 1
            return
        res = ChatResult.from_json(value)
        c["prompt_tokens"] += res.prompt_tokens
        c["completion_tokens"] += res.completion_tokens
        smp, task = self.samples[sl.i], self.tasks[sl.i]
        text = res.texts[0] if res.texts else ""
        chk = check_chain(text, smp.entities, repair=k["repair"], multi_box=k["multi_box"],
                          finish_reason=res.finish_reasons[0] if res.finish_reasons else None, task=task)
        reason, n_tok = chk.reason, None
        if chk.status != "rejected":
            extra = {"mcr_synth": {"model": self.eps[sl.style][sl.ep].model, "status": chk.status}}
            if sl.variant:
                extra["mcr_variant"] = sl.variant
            out_row = chain_row(self.rows[sl.i], sl.style, chk.text, chk.boxes, chk.refs, extra)
            n_tok = self._too_long(out_row)
            if n_tok is None:
                c["literal_boxes"] += chk.literal_boxes
                self._produce(sl, out_row, chk.status)
                return
            reason = "too_long"  # a GRPO rollout of this length is cut before </answer> (issue 21)
        self._reject(sl, reason, text, n_tok)

    def _too_long(self, row: Mapping[str, Any]) -> Optional[int]:
        """The chain's tokens when they exceed ``max_completion`` (GRPO's completion cap), else None."""
        counter, cap = self.kw.get("length_counter"), self.kw.get("max_completion")
        if counter is None or not cap:
            return None
        n = counter.target_tokens(row["messages"][-1]["content"], row)
        return n if n > cap else None

    def _reject(self, sl: _Slot, reason: str, text: str, tokens: Optional[int] = None, retry: bool = True) -> None:
        """Count and keep a rejected chain, then ask again (another seed), replace the slot or lose it."""
        k = self.kw
        c = self.per[sl.style]
        smp, task = self.samples[sl.i], self.tasks[sl.i]
        c["rejected"] += 1
        c[f"rejected:{reason}"] += 1
        self.rejected_of[(task, smp.id)].add(sl.style)
        self.rejected.append({"mcr_id": smp.id, "mcr_task": task, "mcr_style": sl.style, "attempt": sl.attempt,
                              "reason": reason, "text": text, **({"tokens": tokens} if tokens is not None else {})})
        if retry and sl.attempt < k["chain_retries"]:          # ask again, another seed
            sl.attempt += 1
            c["retried"] += 1
            self.retried[(task, sl.style)] += 1
            return
        nxt = self._replacement(sl)
        if nxt is None:
            sl.state = "lost"
            self.live[(task, sl.style)] -= 1
            c["lost"] += 1
            return
        c["replaced"] += 1
        self.live[(task, sl.style)] -= 1
        self.live[(task, nxt)] += 1
        sl.style, sl.attempt, sl.replaced = nxt, 0, True
        self._enter(sl)

    def _replacement(self, sl: _Slot) -> Optional[str]:
        """Another style of the run for ``sl``'s sample: one the sample has not had (in any slot),
        API styles first, least produced so far in the sample's task; a template style last."""
        mode = self.kw["replace"]
        if mode == "none":
            return None
        task = self.tasks[sl.i]
        mine = self.slots_of[sl.i]
        had = {x.style for x in mine} | {x.planned for x in mine} | self.rejected_of[(task, self.samples[sl.i].id)]
        free = [s for s in self.styles if s not in had]
        made = {s: self.live[(task, s)] for s in free}
        api = [s for s in free if s in API_STYLES and s in self.eps]
        tpl = [s for s in free if s in TEMPLATE_STYLES]
        for group in ((api if mode == "style" else []), tpl):
            if group:
                return min(group, key=lambda s: (made[s], self.styles.index(s)))
        return None

    def per_task_style(self) -> Dict[str, Dict[str, Dict[str, int]]]:
        """{task: {style: planned / produced / retried / replaced (away from it) / replacing (rows it
        produced in place of another style) / lost}}."""
        out: Dict[str, Dict[str, Counter]] = defaultdict(lambda: defaultdict(Counter))
        for sl in self.slots:
            t = self.tasks[sl.i]
            out[t][sl.planned]["planned"] += 1
            if sl.state == "produced":
                out[t][sl.style]["produced"] += 1
                if sl.replaced:
                    out[t][sl.style]["replacing"] += 1
                    out[t][sl.planned]["replaced"] += 1
            elif sl.state == "lost":
                out[t][sl.planned]["lost"] += 1
        for (t, style), n in self.retried.items():
            out[t][style]["retried"] += n
        keys = ("planned", "produced", "retried", "replaced", "replacing", "lost")
        return {t: {s: {k: d[s].get(k, 0) for k in keys} for s in self.styles if s in d}
                for t, d in sorted(out.items())}


def _ref_for(entities: Sequence[Entity], box: Sequence[float]) -> str:
    for e in entities:
        if any(tuple(b) == tuple(box) for b in e.boxes):
            return e.text
    return ""


def format_summary(summary: Mapping[str, Any]) -> str:
    head = (f"{'style':<16}{'planned':>8}{'produced':>9}{'repaired':>9}{'rejected':>9}{'cached':>7}"
            f"{'sent':>6}{'retried':>8}{'failed':>7}{'tokens in/out':>18}")
    lines = [head, "-" * len(head)]
    for s, d in summary["per_style"].items():
        req = d.get("requests") or {}
        lines.append(f"{s:<16}{d['planned']:>8}{d.get('produced', 0):>9}{d.get('repaired', 0):>9}"
                     f"{d.get('rejected', 0):>9}{req.get('cached', 0):>7}{req.get('done', 0):>6}"
                     f"{req.get('retries', 0):>8}{req.get('failed', 0):>7}"
                     f"{d.get('prompt_tokens', 0):>10}/{d.get('completion_tokens', 0):<7}")
        reasons = {k.split(':', 1)[1]: v for k, v in d.items() if k.startswith("rejected:")}
        if reasons:
            lines.append(f"{'':<16}rejected: " + ", ".join(f"{k} {v}" for k, v in sorted(reasons.items())))
    if summary.get("produced_per_task"):
        styles = list(summary["per_style"])
        lines.append("")
        lines.append(f"{'produced by task':<18}" + "".join(f"{s:>16}" for s in styles) + f"{'samples':>9}")
        for t, n in summary.get("input_per_task", {}).items():
            d = summary["produced_per_task"].get(t, {})
            lines.append(f"{t:<18}" + "".join(f"{d.get(s, 0):>16}" for s in styles) + f"{n:>9}")
    keys = ("planned", "produced", "retried", "replaced", "replacing", "lost")
    if any(d.get(k) for per in (summary.get("per_task_style") or {}).values() for d in per.values()
           for k in keys[2:]):
        lines += ["", f"{'chains by task / style':<32}" + "".join(f"{k:>10}" for k in keys)]
        for t, per in summary["per_task_style"].items():
            for st, d in per.items():
                lines.append(f"{t + ' / ' + st:<32}" + "".join(f"{d.get(k, 0):>10}" for k in keys))
    if summary.get("paper_count"):
        lines.append(summary["paper_count"])
    return "\n".join(lines)


def main(argv: Optional[List[str]] = None) -> int:
    from ..core.argtypes import non_negative_int, positive_int, top_p_float
    from ..endpoint import Concurrency, Endpoint, RetryPolicy, add_endpoint_args, add_request_args, finish_run
    from ..files import refuse_overwriting_inputs
    p = argparse.ArgumentParser(prog="mcr-swift synth", description=__doc__.splitlines()[0])
    p.add_argument("--input", required=True, nargs="+",
                   help="prepared dataset JSONL file(s) (mcr-swift prepare), e.g. the train.jsonl of "
                        "twitter_gmner, mner_mi and grec: D_R is built over their mixture")
    p.add_argument("--out", required=True, help="D_R JSONL to write (rows with mcr_style)")
    p.add_argument("--styles", default=",".join(ALL_STYLES), help=f"comma-separated, from {', '.join(ALL_STYLES)}")
    p.add_argument("--per-post", type=non_negative_int, default=DEFAULT_PER_POST,
                   help="styles per sample, balanced over the styles within each task and seeded (default 2, "
                        "App. E.1's count: 55,712 = 2 x 27,856; 0 = every style for every sample)")
    add_endpoint_args(p, "", "both endpoints")
    add_endpoint_args(p, "llm-", "the LLM styles' endpoint (default: --base-url)")
    add_endpoint_args(p, "mllm-", "the MLLM style's endpoint (default: --base-url)")
    add_endpoint_args(p, "mllm2-", "a second MLLM endpoint (App. E.4 names two MLLMs): the MLLM style's samples "
                                   "are shared out between --mllm-* and --mllm2-* in turn; unset: one endpoint")
    add_request_args(p, DEFAULT_MAX_TOKENS, DEFAULT_TEMPERATURE, "template styles' seed; sent to the API as well")
    p.add_argument("--top-p", type=top_p_float, default=None)
    p.add_argument("--no-repair", action="store_true", help="reject chains without an answer instead of appending it")
    p.add_argument("--repeat-styles", action="store_true",
                   help="with --per-post above the number of styles, repeat the styles in turn (each repeat "
                        "another seed, column mcr_variant): one style on as many rows as the full method "
                        "(Table 3 w/o D_R)")
    p.add_argument("--chain-retries", type=non_negative_int, default=DEFAULT_CHAIN_RETRIES,
                   help=f"ask a rejected chain again this many times, another seed each (default "
                        f"{DEFAULT_CHAIN_RETRIES}), before replacing it")
    p.add_argument("--replace", choices=REPLACE_MODES, default=DEFAULT_REPLACE,
                   help="a slot whose chains were all rejected: 'style' (default) another API style the sample "
                        "lacks, then a template style; 'template' a template style; 'none' lose it (counted)")
    p.add_argument("--multi-box", default="largest", choices=["largest", "first"])
    p.add_argument("--limit", type=positive_int, default=None, help="only the first N posts of each input file")
    p.add_argument("--cache", default=None, help="request cache (default <out>.cache.jsonl)")
    ln = p.add_argument_group("chain length (issue 21)")
    ln.add_argument("--max-completion-length", type=positive_int, default=None,
                    help="reject a chain longer than N tokens (the GRPO / filter completion cap, e.g. 1024); "
                         "needs --tokenizer")
    ln.add_argument("--tokenizer", default=None, help="local model folder whose tokenizer counts the chain")
    from ..core.coords import add_space_args
    add_space_args(p)  # the run's resize: a chain's boxes are counted as the model writes them
    a = p.parse_args(argv)
    if a.max_completion_length and not a.tokenizer:
        p.error("--max-completion-length needs --tokenizer (a local model folder)")
    out = Path(a.out)
    refuse_overwriting_inputs([("--input", i) for i in a.input], [
        ("--out", out), ("--out's rejected rows", out.with_name(out.stem + ".rejected.jsonl")),
        ("--out's summary", out.with_name(out.name + ".summary.json")),
        ("--cache", a.cache or out.with_name(out.name + ".cache.jsonl"))])
    styles = [s.strip() for s in a.styles.split(",") if s.strip()]
    bad = [s for s in styles if s not in ALL_STYLES]
    if bad or not styles:
        p.error(f"unknown style(s) {bad}; choose from {', '.join(ALL_STYLES)}")
    retry = RetryPolicy.from_args(a)
    rows = []
    # (task, mcr_id) -> (input number, file, line): a sample in two inputs (the same file given twice, or
    # a copy) would be written twice and carried into D1 and D2 by `split`
    first_at: Dict[Tuple[str, str], Tuple[int, str, int]] = {}
    for k, path in enumerate(a.input):
        for n, (lineno, row, _) in enumerate(iter_jsonl(path)):
            if a.limit is not None and n >= a.limit:
                break
            try:
                sample_from_row(row)
            except (KeyError, ValueError, TypeError, AttributeError) as e:
                raise ValueError(f"{path}:{lineno}: not a prepared row (mcr_id {row.get('mcr_id')!r}): {e}"
                                 ) from None
            key = (row_task(row), str(row["mcr_id"]))
            first = first_at.setdefault(key, (k, path, lineno))
            if first[0] != k:
                raise ValueError(f"{path}:{lineno}: {key[0]} sample {key[1]} is also in --input {first[1]}:"
                                 f"{first[2]}; a sample may come from one input file only (it would be "
                                 f"synthesised twice)")
            rows.append(row)
    endpoints = {}
    for s in styles:
        if s not in API_STYLES:
            continue
        pre = "mllm" if API_STYLES[s][1] else "llm"
        args = [getattr(a, f"{pre}_{k}") or getattr(a, k) for k in ("base_url", "model", "api_key")]
        endpoints[s] = Endpoint.resolve(*args, timeout=a.timeout)
        if pre == "mllm" and a.mllm2_base_url:
            second = Endpoint.resolve(a.mllm2_base_url, a.mllm2_model, a.mllm2_api_key or args[2],
                                      timeout=a.timeout)
            endpoints[s] = [endpoints[s], second]
    counter = None
    if a.max_completion_length:
        from ..core.coords import space_from_args
        from ..data.lengths import TokenCounter, load_tokenizer
        counter = TokenCounter(load_tokenizer(a.tokenizer), space_from_args(a))
    summary = synthesize(rows, Path(a.out), styles, endpoints=endpoints,
                         cache_path=Path(a.cache) if a.cache else None, concurrency=Concurrency.from_args(a),
                         retry=retry, temperature=a.temperature,
                         top_p=a.top_p, max_tokens=a.max_tokens, seed=a.seed, per_post=a.per_post,
                         repair=not a.no_repair, multi_box=a.multi_box, progress=not a.no_progress,
                         source=", ".join(a.input), chain_retries=a.chain_retries, replace=a.replace,
                         repeat_styles=a.repeat_styles, length_counter=counter,
                         max_completion=a.max_completion_length)
    print(format_summary(summary))
    interrupted = any((d.get("requests") or {}).get("interrupted") for d in summary["per_style"].values())
    return finish_run(summary["complete"], interrupted, f"D_R: {summary['rows']} rows -> {a.out}")


if __name__ == "__main__":
    sys.exit(main())
