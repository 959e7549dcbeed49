"""Training/evaluation rows in ms-swift's format, carrying the gold triples for rewards and metrics.

One row per post (per referring expression for GREC)::

    {"messages": [{"role": "user", "content": "<image>" + instruction + "\\n\\nSentence: ..."},
                  {"role": "assistant", "content": "<think>..</think>\\n<answer>\\n[.. \\"bbox\\": <bbox> ..]\\n</answer>"}],
     "images": ["/abs/path/<IMGID>.jpg"],
     "objects": {"ref": ["Kevin Durant"], "bbox": [[x1, y1, x2, y2]], "bbox_type": "real"},
     "mcr_task": "gmner", "mcr_id": "<IMGID>", "mcr_sentence": "...",
     "mcr_gold": "[{\\"entity\\": .., \\"type\\": .., \\"boxes\\": [[..], ..]}]",   # JSON text, original pixels
     "mcr_image_sizes": [[width, height]]}

``objects`` uses ms-swift's grounding convention: each ``<bbox>`` placeholder of the assistant text
takes the next box, given in original pixels (``bbox_type: real``); ms-swift's template rescales it
to the model's space (resized-image pixels for Qwen2.5-VL / MiMo-VL, 0-1000 for Qwen2-VL / Qwen3-VL)
using the image it really feeds the model. So the label tokens always carry model-space boxes while
``mcr_gold`` keeps original pixels for rewards and metrics.

MNER-MI rows (`mcr_swift.data.mner_mi`, ``mcr_task`` ``mner_mi``) carry every image of the post, in
order, and the user turn numbers them (``Image 1: <image>``, ``Image 2: <image>``, ...); their
entities have no box. GREC rows (`mcr_swift.data.grec`, ``mcr_task`` ``grec``) hold one referring
expression (``Expression: ...``) with its one box or none. Both add ``mcr_split``.
"""
from __future__ import annotations

from typing import Any, Dict, Mapping, Optional

from ..core.answer import ANSWER_OPEN, BBOX_PLACEHOLDER, default_reasoning, render_answer
from ..prompts import ANSWER_ONLY_INSTRUCTION, load_prompt, task_instruction
from ..core.columns import GOLD_COLUMN, SIZES_COLUMN, TASK_COLUMN, gold_from_row, gold_json, row_task
from ..core.entities import Sample

def user_content(sample: Sample, instruction: str, text_label: str = "Sentence") -> str:
    """The user turn: the image tag(s), the instruction, then ``<text_label>: <sentence>``.

    One image: ``<image>`` directly before the instruction. Several images (MNER-MI posts): one line
    per image in the post's order, ``Image 1: <image>``, ``Image 2: <image>``, ... so that the
    instruction and the answer can refer to them by number.
    """
    if len(sample.images) > 1:
        tags = "".join(f"Image {i}: <image>\n" for i in range(1, len(sample.images) + 1))
    else:
        tags = "".join("<image>" for _ in sample.images)
    return f"{tags}{instruction}\n\n{text_label}: {sample.sentence}"


def sample_from_row(row: Mapping[str, Any]) -> Sample:
    """The `Sample` behind a prepared row (gold in original pixels). Raises ValueError if malformed."""
    images = [im.get("path") if isinstance(im, dict) else str(im) for im in row.get("images") or []]
    sizes = row.get(SIZES_COLUMN) or []
    return Sample(str(row["mcr_id"]), str(row.get("mcr_sentence", "")).split(" "), gold_from_row(row),
                  images, [tuple(s) for s in sizes])


def sample_to_row(sample: Sample, *, family: str = "qwen2_5_vl", instruction: Optional[str] = None,
                  reasoning: Optional[str] = None, assistant: Optional[str] = None,
                  with_answer: bool = True, multi_box: str = "largest", task: str = "gmner",
                  extra: Optional[Mapping[str, Any]] = None, text_label: str = "Sentence") -> Dict[str, Any]:
    """One ms-swift row for ``sample``.

    The assistant turn is ``assistant`` if given (e.g. an MRSI chain whose boxes are already
    ``<bbox>`` placeholders matching ``objects``), else the canonical answer with ``reasoning`` (default:
    `default_reasoning`). ``with_answer=False`` leaves only the user turn (inference/GRPO prompts);
    ``objects`` is still written so that a later assistant text can use it. ``task`` goes into
    ``mcr_task`` (``gmner``, ``mner_mi`` or ``grec``: what the rewards and ``evaluate`` score);
    ``text_label`` names the text in the user turn (GREC rows: ``Expression``). Every box refers to
    the first image (the only one of a GMNER or GREC row; MNER-MI rows have no boxes).
    """
    if any(s is None for s in sample.image_sizes) or len(sample.image_sizes) != len(sample.images):
        raise ValueError(f"post {sample.id}: every image needs a known size to build a row")
    instruction = task_instruction(family) if instruction is None else instruction
    messages = [{"role": "user", "content": user_content(sample, instruction, text_label)}]
    text, boxes = render_answer(
        sample.entities,
        default_reasoning(sample.sentence, sample.entities) if reasoning is None else reasoning,
        placeholders=True, multi_box=multi_box)
    refs = [e.text for e in sample.entities if e.boxes]
    if with_answer:
        messages.append({"role": "assistant", "content": text if assistant is None else assistant})
    row: Dict[str, Any] = {
        "messages": messages,
        "images": list(sample.images),
        "objects": {"ref": refs, "bbox": [[float(v) for v in b] for b in boxes], "bbox_type": "real"},
        TASK_COLUMN: task,
        "mcr_id": sample.id,
        "mcr_sentence": sample.sentence,
        GOLD_COLUMN: gold_json(sample.entities),
        SIZES_COLUMN: [list(s) for s in sample.image_sizes],
    }
    if extra:
        row.update(extra)
    return row


#: Subset-name suffix of the answer-only rows (Table 1 "+SFT"): ``mcr-gmner:train_answer_only``.
ANSWER_ONLY_SUFFIX = "_answer_only"
#: The coordinate spaces whose box-format line an instruction can carry (prompts/box_format_<kind>.txt).
_BOX_KINDS = ("pixels", "norm1000")


def answer_only_row(row: Mapping[str, Any]) -> Dict[str, Any]:
    """The Table 1 "+SFT" row of a prepared Twitter-GMNER row: plain fine-tuning, no reasoning.

    User turn: the same image tag(s) and ``Sentence: ...`` with the answer-only instruction
    (``prompts/task_instruction_answer_only.txt``, with the box-format line the row's own instruction
    carries, so the coordinate space is unchanged). Assistant turn (when present): the row's answer
    from ``<answer>`` on, i.e. ``<answer>\n[...]\n</answer>`` with its ``<bbox>`` placeholders and no
    ``<think>`` part; a placeholder of the dropped reasoning also drops its box from ``objects`` (ms-swift
    fills placeholders in order). Adds ``mcr_target: answer_only``. Raises ValueError (no file or line:
    the caller names them) for a row that is not a prepared Twitter-GMNER row.
    """
    if row_task(row) != "gmner":
        raise ValueError(f"answer-only rows are built from Twitter-GMNER rows, not {row_task(row)!r}")
    msgs = row.get("messages")
    if not isinstance(msgs, list) or not msgs or not all(isinstance(m, dict) for m in msgs):
        raise ValueError("field 'messages' must be a non-empty list of {role, content} objects")
    users = [m for m in msgs if m.get("role") == "user"]
    if len(users) != 1 or not isinstance(users[0].get("content"), str):
        raise ValueError("an answer-only row needs exactly one text user turn")
    content, sentence = users[0]["content"], row.get("mcr_sentence")
    images = row.get("images") or []
    if not isinstance(sentence, str) or not content.endswith(f"\n\nSentence: {sentence}"):
        raise ValueError("user turn does not end with 'Sentence: <mcr_sentence>' (not a prepared row)")
    lines = [load_prompt(f"box_format_{k}") for k in _BOX_KINDS]
    line = next((b for b in lines if b in content), None)
    if line is None:
        raise ValueError("user turn carries no known box-format line (prompts/box_format_*.txt)")
    instruction = load_prompt(ANSWER_ONLY_INSTRUCTION).replace("{box_format}", line)
    post = type("_Post", (), {"images": images, "sentence": sentence})
    out = {k: v for k, v in row.items() if k != "messages"}
    out["messages"] = [{"role": "user", "content": user_content(post, instruction)}]
    assistants = [m for m in msgs if m.get("role") == "assistant"]
    if assistants:
        text = str(assistants[-1].get("content"))
        start = text.find(ANSWER_OPEN)
        if start < 0:
            raise ValueError(f"assistant turn has no {ANSWER_OPEN}")
        dropped = text[:start].count(BBOX_PLACEHOLDER)
        out["messages"].append({"role": "assistant", "content": text[start:]})
        objects = row.get("objects")
        if dropped and isinstance(objects, dict):
            out["objects"] = {**objects, "bbox": list(objects.get("bbox") or [])[dropped:]}
    out["mcr_target"] = "answer_only"
    return out
