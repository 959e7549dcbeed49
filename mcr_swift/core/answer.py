"""The canonical assistant answer: a reasoning part, then the final structured answer.

    <think>
    ...reasoning over the four constraints (Sec. 4.1, Eq. 3)...
    </think>
    <answer>
    [{"entity": "Kevin Durant", "type": "PER", "bbox": [x1, y1, x2, y2]}, {"entity": "NBA", "type": "ORG", "bbox": null}]
    </answer>

The answer is a JSON list, one object per triple, in the order the entities occur in the sentence,
``bbox`` in the *model's* coordinate space (see `mcr_swift.core.coords`) or ``null`` when the entity is
not in the image (l_i = None, Eq. 2).

For training rows the boxes are not written as numbers: each located entity's ``bbox`` value is
ms-swift's ``<bbox>`` placeholder and the row's ``objects`` column carries the original-pixel box,
so that ms-swift's template rescales it to the image the model really sees. The plugin sets
``QWENVL_BBOX_FORMAT=plain`` (unless the user set it) so that the placeholder becomes the JSON list
``[x1, y1, x2, y2]``; with ``legacy`` it becomes Qwen's ``<|box_start|>(x1,y1),(x2,y2)<|box_end|>``,
which the parser also reads.
"""
from __future__ import annotations

import json
from typing import List, Optional, Sequence, Tuple

from .entities import Box, Entity

THINK_OPEN, THINK_CLOSE = "<think>", "</think>"
ANSWER_OPEN, ANSWER_CLOSE = "<answer>", "</answer>"
#: ms-swift's grounding placeholder, replaced by the template with the rescaled box.
BBOX_PLACEHOLDER = "<bbox>"

#: How a gold entity with several boxes becomes the single box of the training target.
MULTI_BOX_POLICIES = ("largest", "first")


def pick_box(boxes: Sequence[Box], policy: str = "largest") -> Optional[Box]:
    """The one box a training target writes for an entity with several gold boxes.

    The paper is silent; default ``largest`` (ties: the first). Metrics and rewards still accept a
    prediction that matches *any* gold box (App. E.3 compares with the gold location).
    """
    if not boxes:
        return None
    if policy == "first":
        return boxes[0]
    if policy == "largest":
        return max(boxes, key=lambda b: (b[2] - b[0]) * (b[3] - b[1]))
    raise ValueError(f"unknown multi-box policy {policy!r}; choose one of {MULTI_BOX_POLICIES}")


def _fmt_num(v: float) -> str:
    return str(int(v)) if float(v).is_integer() else repr(float(v))


def format_answer_json(items: Sequence[Tuple[str, str, Optional[str]]]) -> str:
    """``[{"entity": .., "type": .., "bbox": ..}, ..]`` with ``bbox`` given as raw JSON text."""
    parts = []
    for text, etype, bbox_json in items:
        parts.append('{"entity": %s, "type": %s, "bbox": %s}'
                     % (json.dumps(text, ensure_ascii=False), json.dumps(etype), bbox_json or "null"))
    return "[" + ", ".join(parts) + "]"


def render_answer(entities: Sequence[Entity], reasoning: str = "", *, placeholders: bool = False,
                  multi_box: str = "largest") -> Tuple[str, List[Box]]:
    """Render the canonical assistant text for ``entities``.

    With ``placeholders=True`` every located entity's bbox is ``<bbox>`` and the returned list holds
    the box (in the entities' own space, normally original pixels) each placeholder stands for, in
    order, for the row's ``objects`` column. Otherwise boxes are written as numbers as given (the
    caller converts to model space first) and the list is empty.
    """
    items, boxes = [], []
    for e in entities:
        box = pick_box(e.boxes, multi_box)
        if box is None:
            items.append((e.text, e.type, None))
        elif placeholders:
            items.append((e.text, e.type, BBOX_PLACEHOLDER))
            boxes.append(box)
        else:
            items.append((e.text, e.type, "[" + ", ".join(_fmt_num(v) for v in box) + "]"))
    body = format_answer_json(items)
    text = f"{THINK_OPEN}\n{reasoning.strip()}\n{THINK_CLOSE}\n{ANSWER_OPEN}\n{body}\n{ANSWER_CLOSE}"
    return text, boxes


def default_reasoning(sentence: str, entities: Sequence[Entity]) -> str:
    """A short constraint-ordered reasoning written from the gold labels (the foundation's default
    target; MRSI's multi-style chains replace it). Walks C_s, C_t, C_e, C_u (Eq. 3)."""
    if not entities:
        return ("Entity recognition (text): the sentence mentions no person, location, organization "
                "or other named entity.\nNo entity, so there is nothing to type, verify in the image "
                "or ground.")
    names = ", ".join(f'"{e.text}"' for e in entities)
    lines = [f"Entity recognition (text): the sentence mentions {names}."]
    lines.append("Type classification (text semantics and knowledge): "
                 + "; ".join(f'"{e.text}" is {e.type}' for e in entities) + ".")
    seen = [e for e in entities if e.boxes]
    unseen = [e for e in entities if not e.boxes]
    ent = []
    if seen:
        ent.append("visible in the image: " + ", ".join(f'"{e.text}"' for e in seen))
    if unseen:
        ent.append("not present in the image: " + ", ".join(f'"{e.text}"' for e in unseen))
    lines.append("Visual entailment (image): " + "; ".join(ent) + ".")
    if seen:
        lines.append("Visual grounding (image): locate "
                     + ", ".join(f'"{e.text}"' for e in seen) + " with a box each; the others get null.")
    else:
        lines.append("Visual grounding (image): no entity is visible, so every location is null.")
    return "\n".join(lines)
