"""Token lengths of ms-swift rows without model weights (issue 21): the model's tokenizer and chat
template for the text, each image's token count from its real size (image header) under the run's
resize settings and the row's own ``chat_template_kwargs.max_pixels`` (`CoordinateSpace.for_row`, the
space the rewards use). Used by ``mcr-swift preflight`` and by ``synth --max-completion-length``;
`tests/test_swift_preflight.py` checks the counts against ms-swift's own template encode."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, Mapping, Optional, Sequence, Tuple

from ..core.coords import CoordinateSpace

VISION_START, IMAGE_PAD, VISION_END = "<|vision_start|>", "<|image_pad|>", "<|vision_end|>"
#: ms-swift's Qwen template ends an assistant turn with ``<|im_end|>`` and a newline, both labels
#: (measured: tests/test_swift_preflight.py).
TARGET_END_TOKENS = 2


class TokenCounter:
    """Prompt and target token counts of rows for one tokenizer, resize setting and template family."""

    def __init__(self, tokenizer, space: CoordinateSpace):
        self.tok = tokenizer
        self.space = space
        self._sizes: Dict[str, Tuple[int, int]] = {}

    def image_size(self, path: str) -> Tuple[int, int]:
        """(width, height) from the image header (cached per path). Raises ValueError if unreadable."""
        if path not in self._sizes:
            from PIL import Image
            try:
                with Image.open(path) as im:
                    self._sizes[path] = im.size
            except (OSError, ValueError) as e:
                raise ValueError(f"unreadable image {path} ({type(e).__name__}: {e})") from None
        return self._sizes[path]

    def target_tokens(self, content: str, row: Mapping[str, Any], space: Optional[CoordinateSpace] = None,
                      sizes: Optional[Sequence[Tuple[int, int]]] = None) -> int:
        """Tokens of an assistant turn as ms-swift trains it (`target_text`) plus the template's
        ``<|im_end|>`` and newline (its labels); a GRPO rollout of that chain is one shorter. ``space``
        defaults to the row's (`CoordinateSpace.for_row`), ``sizes`` to its ``mcr_image_sizes``."""
        space = self.space.for_row(row) if space is None else space
        sizes = [tuple(s) for s in row.get("mcr_image_sizes") or []] if sizes is None else sizes
        text = target_text(content, row, space, sizes)
        return len(self.tok(text, add_special_tokens=False)["input_ids"]) + TARGET_END_TOKENS

    def _render(self, text: str, images: int) -> str:
        return text.replace("<image>", VISION_START + VISION_END) if images else text

    def count(self, row: Mapping[str, Any]) -> Dict[str, Any]:
        """{'prompt', 'image', 'images', 'target', 'has_target'} token counts of one row.
        Raises ValueError (no file/line: the caller adds them) for a row it cannot read."""
        msgs = row.get("messages")
        if not isinstance(msgs, list) or not msgs or not all(isinstance(m, dict) for m in msgs):
            raise ValueError("field 'messages' must be a non-empty list of {role, content} objects")
        images = [im.get("path") if isinstance(im, dict) else str(im) for im in row.get("images") or []]
        n_tags = sum(str(m.get("content", "")).count("<image>") for m in msgs)
        if n_tags != len(images):
            raise ValueError(f"{n_tags} <image> tags but {len(images)} images")
        space = self.space.for_row(row)
        sizes = [self.image_size(p) for p in images]
        img_tokens = [space.image_tokens(w, h) for w, h in sizes]
        last_assistant = max((i for i, m in enumerate(msgs) if m.get("role") == "assistant"), default=None)
        prompt_msgs = [{"role": m["role"], "content": self._render(str(m.get("content", "")), len(images))}
                       for i, m in enumerate(msgs) if i != last_assistant]
        ids = self.tok.apply_chat_template(prompt_msgs, add_generation_prompt=True, tokenize=True)
        if isinstance(ids, Mapping):  # transformers 5 may return a BatchEncoding
            ids = ids["input_ids"]
        prompt = len(ids) + sum(img_tokens)
        target = 0
        if last_assistant is not None:
            target = self.target_tokens(str(msgs[last_assistant].get("content", "")), row, space, sizes)
        return {"prompt": prompt, "image": sum(img_tokens), "images": len(images), "target": target,
                "has_target": last_assistant is not None, "sizes": sizes, "image_tokens": img_tokens}


def target_text(content: str, row: Mapping[str, Any], space: CoordinateSpace,
                sizes: Sequence[Tuple[int, int]]) -> str:
    """The assistant text as ms-swift tokenizes it: each ``<bbox>`` the next box of ``objects`` in the
    model's space (``str([x1, y1, x2, y2])``, QWENVL_BBOX_FORMAT=plain, what the plugin sets) and each
    ``<ref-object>`` the next ref. Boxes refer to the first image."""
    objects = row.get("objects") if isinstance(row.get("objects"), Mapping) else {}
    boxes = list(objects.get("bbox") or [])
    refs = list(objects.get("ref") or [])
    if "<bbox>" in content and boxes and sizes:
        parts = content.split("<bbox>")
        out = [parts[0]]
        for k, piece in enumerate(parts[1:]):
            b = boxes[k] if k < len(boxes) else boxes[-1]
            mb = [int(v) for v in space.to_model(b, sizes[0])] if len(b) == 4 else b
            out.append(str(mb) + piece)
        content = "".join(out)
    if "<ref-object>" in content and refs:
        parts = content.split("<ref-object>")
        content = parts[0] + "".join(str(refs[min(k, len(refs) - 1)]) + p for k, p in enumerate(parts[1:]))
    return content


def load_tokenizer(model_dir: str):
    """The model folder's tokenizer (AutoTokenizer; local files only, nothing is downloaded)."""
    p = Path(model_dir)
    if not p.is_dir():
        raise FileNotFoundError(f"{p}: model folder not found (--model: a local folder with the tokenizer)")
    from transformers import AutoTokenizer
    try:
        return AutoTokenizer.from_pretrained(str(p), local_files_only=True)
    except (OSError, ValueError) as e:
        raise ValueError(f"{p}: no usable tokenizer ({e})") from None
