"""Template reasoning styles for MRSI (paper Sec. 4.1, Eq. 4 with Gamma = a template extractor).

``formatted_a`` (constraint by constraint) and ``formatted_b`` (entity by entity), App. C.1-C.2, written
offline from the gold labels, deterministic per (post id, style, seed), with a wording per task (GMNER,
MNER-MI, GREC); boxes are always ``<bbox>`` placeholders. Details: docs/pipeline.md (MRSI synthesis).
"""
from __future__ import annotations

import json
import random
from typing import Any, Dict, List, Optional, Sequence, Tuple

from ..core.answer import (ANSWER_CLOSE, ANSWER_OPEN, BBOX_PLACEHOLDER, THINK_CLOSE, THINK_OPEN,
                     pick_box)
from ..data.rows import sample_to_row
from ..core.entities import Box, Entity, Sample

__all__ = ["TEMPLATE_STYLES", "STEP_ORDERS_A", "STEP_ORDERS_A_MNER_MI", "template_chain", "template_row",
           "style_rng"]

#: The template styles this module writes.
TEMPLATE_STYLES: Tuple[str, ...] = ("formatted_a", "formatted_b")

#: Constraint orders allowed for ``formatted_a``: C_s first, C_u after C_e, C_t anywhere after C_s.
STEP_ORDERS_A: Tuple[Tuple[str, ...], ...] = (("s", "t", "e", "u"), ("s", "e", "t", "u"),
                                              ("s", "e", "u", "t"))

_TYPE_GLOSS = {
    "PER": ("a person", "the name of a person", "an individual (person)"),
    "LOC": ("a location", "a place name", "a geographic location"),
    "ORG": ("an organization", "an organization such as a team, company or institution",
            "a named organization"),
    "OTHER": ("a named entity that is not a person, location or organization",
              "another kind of named entity (e.g. an event, product or work)",
              "a miscellaneous named entity"),
}

_KEYS = ("entity", "type", "bbox")


def style_rng(sample_id: str, style: str, seed: int = 0) -> random.Random:
    """The private RNG of one (post, style, seed); never the global one."""
    return random.Random(f"{seed}:{style}:{sample_id}")


def _q(text: str) -> str:
    return json.dumps(text, ensure_ascii=False)


def _context(sample: Sample, text: str, width: int = 3) -> str:
    """A few words around the first occurrence of ``text`` in the sentence ('' if not found)."""
    toks = list(sample.tokens)
    ent = text.split()
    n = len(ent)
    for i in range(len(toks) - n + 1):
        if toks[i:i + n] == ent:
            lo, hi = max(0, i - width), min(len(toks), i + n + width)
            return " ".join(toks[lo:hi])
    return ""


def _gloss(rng: random.Random, etype: str) -> str:
    opts = _TYPE_GLOSS.get(etype)
    return rng.choice(opts) if opts else f"of type {etype}"


class _Writer:
    """Collects text pieces and the boxes of the ``<bbox>`` placeholders in order."""

    def __init__(self) -> None:
        self.boxes: List[Box] = []
        self.refs: List[str] = []

    def box(self, box: Box, ref: str) -> str:
        self.boxes.append(box)
        self.refs.append(ref)
        return BBOX_PLACEHOLDER


def _answer_json(w: _Writer, items: Sequence[Tuple[Entity, Optional[Box]]],
                 keys: Sequence[str] = _KEYS) -> str:
    parts = []
    for e, box in items:
        vals = {"entity": _q(e.text), "type": _q(e.type),
                "bbox": "null" if box is None else w.box(box, e.text)}
        parts.append("{" + ", ".join(f'"{k}": {vals[k]}' for k in keys) + "}")
    return "[" + ", ".join(parts) + "]"


def _recognise_and_type(sample: Sample, rng: random.Random, walk, steps: Dict[str, str]) -> None:
    """Route A's recognition (C_s, from the text) and typing (C_t, text and knowledge) steps, shared by
    the GMNER and MNER-MI chains: ``steps["s"]`` and ``steps["t"]``."""
    names = ", ".join(_q(e.text) for e, _ in walk)
    steps["s"] = rng.choice((
        f"From the text alone, the named entities are {names}.",
        f"Scanning the sentence for named entities gives {len(walk)} span(s): {names}.",
        f"The sentence mentions the following entities: {names}.",
    ))
    lines = []
    for e, _ in walk:
        ctx = _context(sample, e.text)
        where = f' (in "{ctx}")' if ctx else ""
        lines.append(f"{_q(e.text)}{where} is {_gloss(rng, e.type)}, so its type is {e.type}.")
    steps["t"] = rng.choice(("Using the wording of the sentence and world knowledge: ",
                             "Judging from the text semantics: ", "")) + " ".join(lines)


def _chain_a(sample: Sample, rng: random.Random, items) -> Tuple[str, _Writer, Tuple[str, ...]]:
    w = _Writer()
    order = rng.choice(STEP_ORDERS_A)
    walk = list(items)
    rng.shuffle(walk)
    seen = [(e, b) for e, b in walk if b is not None]
    unseen = [(e, b) for e, b in walk if b is None]
    steps: Dict[str, str] = {}
    if not items:
        steps["s"] = ("Reading the sentence, I find no span that names a person, location, "
                      "organization or other entity.")
        steps["t"] = "No entity was recognized, so there is nothing to classify."
        steps["e"] = "With no entity from the text, no image region has to be checked."
        steps["u"] = "Nothing is entailed by the image, so nothing is grounded."
    else:
        _recognise_and_type(sample, rng, walk, steps)
        ent = []
        for e, _ in seen:
            ent.append(rng.choice((f"{_q(e.text)} is depicted in the image.",
                                   f"the image does show {_q(e.text)}.",
                                   f"{_q(e.text)} appears in the picture.")))
        for e, _ in unseen:
            ent.append(rng.choice((f"{_q(e.text)} is not visible in the image.",
                                   f"nothing in the image corresponds to {_q(e.text)}.",
                                   f"{_q(e.text)} cannot be found in the picture.")))
        steps["e"] = ("Checking each entity against the image: "
                      + " ".join(x[0].upper() + x[1:] for x in ent))
        if seen:
            g = "; ".join(f"{_q(e.text)} is located at {w.box(b, e.text)}" for e, b in seen)
            steps["u"] = "Grounding the entailed entities: " + g + "."
            if unseen:
                steps["u"] += " " + ", ".join(_q(e.text) for e, _ in unseen) + (" gets None." if len(unseen) == 1 else " get None.")
        else:
            steps["u"] = "No entity is entailed by the image, so every location is None."
    tag = {"s": "recognition", "t": "typing", "e": "entailment", "u": "grounding"}
    # Only the grounding step holds boxes, so the step order does not change the box order.
    think = "\n".join(f"<{tag[k]}>{steps[k]}</{tag[k]}>" for k in order)
    ans = list(items)
    rng.shuffle(ans)
    answer = _answer_json(w, ans)
    return f"{THINK_OPEN}\n{think}\n{THINK_CLOSE}\n{ANSWER_OPEN}\n{answer}\n{ANSWER_CLOSE}", w, order


def _chain_b(sample: Sample, rng: random.Random, items) -> Tuple[str, _Writer, Tuple[str, ...]]:
    w = _Writer()
    walk = list(items)
    rng.shuffle(walk)
    blocks = []
    sig: List[str] = []
    if not items:
        blocks.append("<mentions>none: the text names no person, location, organization or "
                      "other entity</mentions>")
        blocks.append("<summary>No entity, so nothing to type, check in the image or ground."
                      "</summary>")
        sig.append("m")
    else:
        blocks.append("<mentions>" + " | ".join(e.text for e, _ in walk) + "</mentions>")
        sig.append("m")
        for k, (e, b) in enumerate(walk, 1):
            ctx = _context(sample, e.text)
            cat = (f"<category>{e.type}: the text"
                   + (f' ("{ctx}")' if ctx else "")
                   + f" presents it as {_gloss(rng, e.type)}</category>")
            if b is None:
                vis = "<visual_check>absent: the image does not show it</visual_check>"
                loc = "<location>None</location>"
            else:
                vis = "<visual_check>present: it is visible in the image</visual_check>"
                loc = f"<location>{w.box(b, e.text)}</location>"
            inner = [("t", cat), ("e", vis)]
            rng.shuffle(inner)
            sig.append("".join(x for x, _ in inner) + "u")
            body = "".join(x for _, x in inner) + loc
            blocks.append(f"<entity index=\"{k}\" span={_q(e.text)}>{body}</entity>")
        n_seen = sum(b is not None for _, b in walk)
        blocks.append(f"<summary>{len(walk)} entit{'y' if len(walk) == 1 else 'ies'}, "
                      f"{n_seen} grounded in the image, {len(walk) - n_seen} without a location."
                      f"</summary>")
    think = "\n".join(blocks)
    ans = list(items)
    rng.shuffle(ans)
    keys = list(_KEYS)
    rng.shuffle(keys)
    answer = _answer_json(w, ans, keys)
    return (f"{THINK_OPEN}\n{think}\n{THINK_CLOSE}\n{ANSWER_OPEN}\n{answer}\n{ANSWER_CLOSE}", w,
            tuple(sig))


# --------------------------------------------------------------------------- MNER-MI and GREC routes
#: Step orders of ``formatted_a`` for MNER-MI: recognition first, then typing and the image check in
#: either order (no entailment / grounding: the task asks for no location).
STEP_ORDERS_A_MNER_MI: Tuple[Tuple[str, ...], ...] = (("s", "t", "v"), ("s", "v", "t"))


def _images_phrase(sample: Sample) -> str:
    n = len(sample.images)
    if n <= 1:
        return "the post's image"
    return f"the post's {n} images (Image 1 {'and' if n == 2 else 'to'} Image {n})"


def _chain_a_mner_mi(sample: Sample, rng: random.Random, items) -> Tuple[str, _Writer, Tuple[str, ...]]:
    """MNER-MI, constraint by constraint: recognition (text), typing (text and knowledge), an image
    check (the post's images as supporting evidence only); no location is asked, every bbox is null."""
    w = _Writer()
    order = rng.choice(STEP_ORDERS_A_MNER_MI)
    walk = list(items)
    rng.shuffle(walk)
    imgs = _images_phrase(sample)
    steps: Dict[str, str] = {}
    if not items:
        steps["s"] = ("Reading the sentence, I find no span that names a person, location, "
                      "organization or other entity.")
        steps["t"] = "No entity was recognized, so there is nothing to classify."
        steps["v"] = (f"Looking at {imgs}: an entity is never added from an image, so they change "
                      "nothing; this task asks for no location.")
    else:
        _recognise_and_type(sample, rng, walk, steps)
        steps["v"] = rng.choice((
            f"Checking {imgs}: they serve only as supporting evidence for the types and never add or "
            "remove an entity of the sentence.",
            f"{imgs[0].upper() + imgs[1:]} may be unrelated to the text, so they only support the types "
            "found from the sentence.",
        )) + " This task asks for no location, so every bbox is null."
    tag = {"s": "recognition", "t": "typing", "v": "images"}
    think = "\n".join(f"<{tag[k]}>{steps[k]}</{tag[k]}>" for k in order)
    ans = list(items)
    rng.shuffle(ans)
    answer = _answer_json(w, [(e, None) for e, _ in ans])
    return f"{THINK_OPEN}\n{think}\n{THINK_CLOSE}\n{ANSWER_OPEN}\n{answer}\n{ANSWER_CLOSE}", w, order


def _chain_b_mner_mi(sample: Sample, rng: random.Random, items) -> Tuple[str, _Writer, Tuple[str, ...]]:
    """MNER-MI, entity by entity: ``<mentions>``, one ``<entity>`` block per entity walking
    ``<category>`` and ``<image_support>`` in a seeded order, ``<summary>``; no ``<location>``."""
    w = _Writer()
    walk = list(items)
    rng.shuffle(walk)
    imgs = _images_phrase(sample)
    blocks, sig = [], ["m"]
    if not items:
        blocks.append("<mentions>none: the text names no person, location, organization or "
                      "other entity</mentions>")
        blocks.append(f"<summary>No entity, so nothing to type; {imgs} add none, and no location is "
                      "asked.</summary>")
    else:
        blocks.append("<mentions>" + " | ".join(e.text for e, _ in walk) + "</mentions>")
        for k, (e, _) in enumerate(walk, 1):
            ctx = _context(sample, e.text)
            cat = (f"<category>{e.type}: the text" + (f' ("{ctx}")' if ctx else "")
                   + f" presents it as {_gloss(rng, e.type)}</category>")
            sup = f"<image_support>{imgs} only support this type; they do not change it</image_support>"
            inner = [("t", cat), ("v", sup)]
            rng.shuffle(inner)
            sig.append("".join(x for x, _ in inner))
            blocks.append(f"<entity index=\"{k}\" span={_q(e.text)}>" + "".join(x for _, x in inner)
                          + "</entity>")
        blocks.append(f"<summary>{len(walk)} entit{'y' if len(walk) == 1 else 'ies'} from the sentence; "
                      "no location is asked, so every bbox is null.</summary>")
    think = "\n".join(blocks)
    ans = list(items)
    rng.shuffle(ans)
    keys = list(_KEYS)
    rng.shuffle(keys)
    answer = _answer_json(w, [(e, None) for e, _ in ans], keys)
    return (f"{THINK_OPEN}\n{think}\n{THINK_CLOSE}\n{ANSWER_OPEN}\n{answer}\n{ANSWER_CLOSE}", w,
            tuple(sig))


def _grec_item(items, sample: Sample):
    if len(items) != 1:
        raise ValueError(f"GREC sample {sample.id}: exactly one expression expected, got {len(items)}")
    return items[0]


def _chain_a_grec(sample: Sample, rng: random.Random, items) -> Tuple[str, _Writer, Tuple[str, ...]]:
    """GREC, constraint by constraint: the expression (text), visual entailment (image: does one
    object match every part?), grounding (image: its one box, or null). No entity type is reasoned
    about: the answer's type is the expression's fixed type."""
    w = _Writer()
    e, box = _grec_item(items, sample)
    steps = [("expression", rng.choice((
        f"The expression is {_q(e.text)}; every part of it (category, attributes, position, relations) "
        "has to match one object.",
        f"Reading the expression {_q(e.text)}: it describes at most one object, and only an object that "
        "matches all of it counts.",
    )))]
    if box is not None:
        steps.append(("entailment", rng.choice((
            f"One object in the image matches every part of {_q(e.text)}.",
            f"The image does contain the object {_q(e.text)} describes.",
        ))))
        where = rng.choice((f"{_q(e.text)} is located at", "That object lies at"))
        steps.append(("grounding", f"{where} {w.box(box, e.text)}."))
    else:
        steps.append(("entailment", rng.choice((
            f"No object in the image matches every part of {_q(e.text)}; a partial match does not count, "
            "so the expression refers to nothing here.",
            f"Nothing in the image fits {_q(e.text)} as a whole, so it has no target.",
        ))))
        steps.append(("grounding", "There is nothing to locate, so the location is null."))
    think = "\n".join(f"<{t}>{x}</{t}>" for t, x in steps)
    answer = _answer_json(w, [(e, box)])
    return (f"{THINK_OPEN}\n{think}\n{THINK_CLOSE}\n{ANSWER_OPEN}\n{answer}\n{ANSWER_CLOSE}", w,
            ("x", "e", "u"))


def _chain_b_grec(sample: Sample, rng: random.Random, items) -> Tuple[str, _Writer, Tuple[str, ...]]:
    """GREC, by candidate: ``<expression>``, one ``<target>`` block with ``<visual_check>`` and
    ``<location>``, ``<summary>``; the answer's key order is seeded (App. C.2)."""
    w = _Writer()
    e, box = _grec_item(items, sample)
    if box is None:
        vis = "<visual_check>absent: no object matches every part of the expression</visual_check>"
        loc = "<location>None</location>"
        summ = "no target, so the answer has no box"
    else:
        vis = "<visual_check>present: one object matches every part of the expression</visual_check>"
        loc = f"<location>{w.box(box, e.text)}</location>"
        summ = "one target, grounded with one box"
    think = "\n".join([f"<expression>{e.text}</expression>", f"<target>{vis}{loc}</target>",
                       f"<summary>{summ}.</summary>"])
    keys = list(_KEYS)
    rng.shuffle(keys)
    answer = _answer_json(w, [(e, box)], keys)
    return (f"{THINK_OPEN}\n{think}\n{THINK_CLOSE}\n{ANSWER_OPEN}\n{answer}\n{ANSWER_CLOSE}", w,
            ("x", "eu"))


#: (task, style) -> chain writer
_WRITERS = {("gmner", "formatted_a"): _chain_a, ("gmner", "formatted_b"): _chain_b,
            ("mner_mi", "formatted_a"): _chain_a_mner_mi, ("mner_mi", "formatted_b"): _chain_b_mner_mi,
            ("grec", "formatted_a"): _chain_a_grec, ("grec", "formatted_b"): _chain_b_grec}


def _chain(sample: Sample, style: str, seed: int, multi_box: str, task: str = "gmner"):
    if style not in TEMPLATE_STYLES:
        raise ValueError(f"unknown template style {style!r}; choose one of {TEMPLATE_STYLES}")
    if (task, style) not in _WRITERS:
        raise ValueError(f"unknown task {task!r}; choose one of gmner, mner_mi, grec")
    rng = style_rng(sample.id, style, seed)
    items = [(e, pick_box(e.boxes, multi_box)) for e in sample.entities]
    return _WRITERS[(task, style)](sample, rng, items)


def template_chain(sample: Sample, style: str, seed: int = 0,
                   multi_box: str = "largest", task: str = "gmner") -> Tuple[str, List[Box]]:
    """``(assistant_text, boxes)``: a full assistant turn in template style ``style`` for
    ``sample``'s gold labels, and the original-pixel box of each ``<bbox>`` placeholder in order.
    ``task`` (the row's ``mcr_task``) picks the task's wording: GMNER (four constraints), MNER-MI
    (recognition, typing, the post's images as support; every bbox null) or GREC (one expression:
    entailment and grounding, one box or null)."""
    text, w, _ = _chain(sample, style, seed, multi_box, task)
    return text, list(w.boxes)


def step_order(sample: Sample, style: str, seed: int = 0, task: str = "gmner") -> Tuple[str, ...]:
    """The seeded constraint order of the chain (for diversity statistics): for ``formatted_a`` the
    step order, for ``formatted_b`` the per-entity inner orders after the mentions step."""
    return _chain(sample, style, seed, "largest", task)[2]


def template_row(sample: Sample, style: str, seed: int = 0, *, multi_box: str = "largest",
                 **kw: Any) -> Dict[str, Any]:
    """An ms-swift row (see `mcr_swift.data.rows.sample_to_row`) whose assistant turn is the template
    chain; ``objects`` holds the chain's boxes and the entity text of each, ``mcr_style`` the style.
    Extra keyword arguments go to `sample_to_row` (``extra`` is merged with ``mcr_style``)."""
    text, w, _ = _chain(sample, style, seed, multi_box, kw.get("task", "gmner"))
    extra = dict(kw.pop("extra", None) or {})
    extra["mcr_style"] = style
    row = sample_to_row(sample, assistant=text, extra=extra, multi_box=multi_box, **kw)
    row["objects"]["bbox"] = [[float(v) for v in b] for b in w.boxes]
    row["objects"]["ref"] = list(w.refs)
    return row
