"""Every box conversion of the project: IoU, clamping, and original pixels <-> model space.

Gold boxes, metrics (App. E.3, Eq. 21-22) and the grounding reward (Eq. 8) work in original-image
pixels. A model writes boxes in its own coordinate space:

* Qwen2.5-VL and MiMo-VL: absolute pixels of the image *after* the processor's "smart resize"
  (both sides multiples of patch 14 x merge 2 = 28, pixel count within [min_pixels, max_pixels]).
* Qwen2-VL and Qwen3-VL: a 0-1000 grid over the original image.

The conversion to model space rounds exactly as ms-swift's template does (``int(round(v))`` of
``x / W_orig * W_model``) so that training labels, rewards and metrics agree to the unit; the
conversion back is exact (floats) and clamped to the image.

ms-swift resizes images in two places that both change the model space:
``--max_pixels`` (a proportional rescale done by the template before anything else) and the
qwen-vl-utils smart resize driven by the ``MAX_PIXELS``/``MIN_PIXELS`` environment variables
(or ``IMAGE_MAX_TOKEN_NUM``/``IMAGE_MIN_TOKEN_NUM``). `CoordinateSpace` models both.
"""
from __future__ import annotations

import math
import os
import sys
from dataclasses import dataclass
from typing import Mapping, Optional, Sequence, Tuple

from .entities import Box

#: model family -> (coordinate space, vision patch size). Spatial merge is 2 for all of them.
FAMILIES = {
    "qwen2_5_vl": ("pixels", 14),
    "mimo_vl": ("pixels", 14),
    "qwen2_vl": ("norm1000", 14),
    "qwen3_vl": ("norm1000", 16),
}
SPATIAL_MERGE = 2
#: qwen-vl-utils' defaults (IMAGE_MIN_TOKEN_NUM=4, IMAGE_MAX_TOKEN_NUM=16384 tokens of factor**2 px).
DEFAULT_MIN_TOKENS = 4
DEFAULT_MAX_TOKENS = 16384
MAX_RATIO = 200


# --------------------------------------------------------------------------- plain box geometry
def box_area(b: Sequence[float]) -> float:
    return max(0.0, b[2] - b[0]) * max(0.0, b[3] - b[1])


def iou(a: Sequence[float], b: Sequence[float]) -> float:
    """Intersection over union (App. E.3, Eq. 22). Degenerate or non-finite boxes give 0."""
    try:
        if not all(math.isfinite(v) for v in (*a, *b)):
            return 0.0
    except TypeError:
        return 0.0
    iw = min(a[2], b[2]) - max(a[0], b[0])
    ih = min(a[3], b[3]) - max(a[1], b[1])
    if iw <= 0 or ih <= 0:
        return 0.0
    inter = iw * ih
    union = box_area(a) + box_area(b) - inter
    return inter / union if union > 0 else 0.0


def giou(a: Sequence[float], b: Sequence[float]) -> float:
    """Generalized IoU (Rezatofighi et al. 2019), the matching score of gRefCOCO's GREC evaluator:
    IoU - (C - U) / C, C the area of the smallest box enclosing both, U their union; in [-1, 1].
    Non-finite input or an empty enclosing box gives -1."""
    try:
        if not all(math.isfinite(v) for v in (*a, *b)):
            return -1.0
    except TypeError:
        return -1.0
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    union = box_area(a) + box_area(b) - inter
    hull = (max(a[2], b[2]) - min(a[0], b[0])) * (max(a[3], b[3]) - min(a[1], b[1]))
    if hull <= 0:
        return -1.0
    return (inter / union if union > 0 else 0.0) - (hull - union) / hull


def best_iou(pred: Sequence[float], golds: Sequence[Sequence[float]]) -> float:
    """IoU of ``pred`` with the best of several gold boxes (0 when there are none)."""
    return max((iou(pred, g) for g in golds), default=0.0)


def is_valid_box(b: Sequence[float]) -> bool:
    """Four finite numbers with x2 > x1 and y2 > y1."""
    try:
        return (len(b) == 4 and all(math.isfinite(float(v)) for v in b)
                and b[2] > b[0] and b[3] > b[1])
    except (TypeError, ValueError):
        return False


def clamp_box(b: Sequence[float], width: float, height: float) -> Box:
    """Clamp a box to the image [0, width] x [0, height] (corners are not reordered)."""
    x1, y1, x2, y2 = (float(v) for v in b)
    return (min(max(x1, 0.0), width), min(max(y1, 0.0), height),
            min(max(x2, 0.0), width), min(max(y2, 0.0), height))


# --------------------------------------------------------------------------- resize arithmetic
def smart_resize(height: int, width: int, factor: int = 28, min_pixels: Optional[int] = None,
                 max_pixels: Optional[int] = None) -> Tuple[int, int]:
    """(height, width) of the image the Qwen-VL vision tower sees.

    Round each side to a multiple of ``factor``; if the pixel count leaves [min_pixels, max_pixels],
    scale by beta = sqrt(HW / max) (floor) or sqrt(min / HW) (ceil) -- qwen-vl-utils' ``smart_resize``,
    what ms-swift and vLLM feed the model. Bad sizes raise ValueError (qwen-vl-utils: an ``assert``
    or a ZeroDivisionError).

    The answer is qwen-vl-utils' own when that package is already loaded in this process (every
    ms-swift process: training, rewards, the local engine), so the two cannot drift. Otherwise it is
    `_smart_resize` below, the same arithmetic (tests/test_coords.py: equal on every image size of
    Twitter-GMNER under four resize settings): importing qwen-vl-utils loads torch and torchvision
    (4-8 s here), which the pure core never does for a box conversion. Ours is also kept for the
    extreme ratios where qwen-vl-utils fails: near the 200:1 limit under a small ``max_pixels`` its
    floor gives a side of 0 (28x5600 under 50176 px -> (0, 3164)); ours keeps one ``factor``.
    """
    max_pixels = DEFAULT_MAX_TOKENS * factor ** 2 if max_pixels is None else max_pixels
    min_pixels = DEFAULT_MIN_TOKENS * factor ** 2 if min_pixels is None else min_pixels
    if max_pixels < min_pixels:
        raise ValueError(f"max_pixels ({max_pixels}) must be >= min_pixels ({min_pixels})")
    if height <= 0 or width <= 0:
        raise ValueError(f"image size must be positive, got {width}x{height}")
    if max(height, width) / min(height, width) > MAX_RATIO:
        raise ValueError(f"aspect ratio of a {width}x{height} image exceeds {MAX_RATIO}")
    qvu = sys.modules.get("qwen_vl_utils")
    if qvu is not None and hasattr(qvu, "smart_resize"):
        h_bar, w_bar = qvu.smart_resize(height, width, factor, min_pixels, max_pixels)
        if h_bar >= factor and w_bar >= factor:
            return h_bar, w_bar
    return _smart_resize(height, width, factor, min_pixels, max_pixels)


def _smart_resize(height: int, width: int, factor: int, min_pixels: int, max_pixels: int) -> Tuple[int, int]:
    """`smart_resize`'s arithmetic on checked arguments; a side never drops below ``factor``."""
    h_bar = max(factor, round(height / factor) * factor)
    w_bar = max(factor, round(width / factor) * factor)
    if h_bar * w_bar > max_pixels:
        beta = math.sqrt((height * width) / max_pixels)
        h_bar = max(factor, math.floor(height / beta / factor) * factor)
        w_bar = max(factor, math.floor(width / beta / factor) * factor)
    elif h_bar * w_bar < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h_bar = math.ceil(height * beta / factor) * factor
        w_bar = math.ceil(width * beta / factor) * factor
    return h_bar, w_bar


def template_rescale(width: int, height: int, max_pixels: Optional[int]) -> Tuple[int, int]:
    """(width, height) after ms-swift's ``--max_pixels`` proportional rescale (no-op if under)."""
    if not max_pixels or max_pixels <= 0 or width * height <= max_pixels:
        return width, height
    ratio = width / height
    h = math.sqrt(max_pixels / ratio)
    return int(h * ratio), int(h)


def _env_int(env: Mapping[str, str], name: str) -> Optional[int]:
    v = env.get(name)
    if v is None or str(v).strip() == "":
        return None
    try:
        n = int(float(v))
    except (ValueError, OverflowError) as e:
        raise ValueError(f"environment variable {name}={v!r} is not a number") from e
    if n < 1:  # a pixel or token bound of 0 or less resizes nothing sensibly
        raise ValueError(f"environment variable {name}={v!r} is out of range: must be >= 1")
    return n


@dataclass(frozen=True)
class CoordinateSpace:
    """The coordinate space a model family emits boxes in, for given resize settings.

    ``min_pixels``/``max_pixels`` are the smart-resize bounds (None: qwen-vl-utils defaults,
    4 and 16384 tokens of factor**2 pixels); ``template_max_pixels`` is ms-swift's ``--max_pixels``.
    """

    family: str = "qwen2_5_vl"
    min_pixels: Optional[int] = None
    max_pixels: Optional[int] = None
    template_max_pixels: Optional[int] = None

    def __post_init__(self) -> None:
        if self.family not in FAMILIES:
            raise ValueError(f"unknown model family {self.family!r}; known: {sorted(FAMILIES)}")

    @property
    def kind(self) -> str:
        """'pixels' (resized-image pixels) or 'norm1000'."""
        return FAMILIES[self.family][0]

    @property
    def factor(self) -> int:
        return FAMILIES[self.family][1] * SPATIAL_MERGE

    @classmethod
    def from_env(cls, family: Optional[str] = None, env: Optional[Mapping[str, str]] = None
                 ) -> "CoordinateSpace":
        """The space of a run configured through environment variables, as ms-swift reads them:
        ``MCR_MODEL_FAMILY`` (default qwen2_5_vl), ``MAX_PIXELS``/``MIN_PIXELS`` (pixels) or
        ``IMAGE_MAX_TOKEN_NUM``/``IMAGE_MIN_TOKEN_NUM`` (tokens), ``MCR_TEMPLATE_MAX_PIXELS``
        (the value passed to ``--max_pixels``, if any)."""
        env = os.environ if env is None else env
        family = family or env.get("MCR_MODEL_FAMILY") or "qwen2_5_vl"
        factor = FAMILIES.get(family, ("", 14))[1] * SPATIAL_MERGE
        max_px, min_px = _env_int(env, "MAX_PIXELS"), _env_int(env, "MIN_PIXELS")
        # ms-swift turns MAX_PIXELS into IMAGE_MAX_TOKEN_NUM = MAX_PIXELS // factor**2 unless the
        # latter is set; qwen-vl-utils then uses tokens * factor**2.
        max_tok, min_tok = _env_int(env, "IMAGE_MAX_TOKEN_NUM"), _env_int(env, "IMAGE_MIN_TOKEN_NUM")
        if max_tok is None and max_px is not None:
            max_tok = max_px // factor ** 2
        if min_tok is None and min_px is not None:
            min_tok = min_px // factor ** 2
        return cls(family=family,
                   min_pixels=None if min_tok is None else min_tok * factor ** 2,
                   max_pixels=None if max_tok is None else max_tok * factor ** 2,
                   template_max_pixels=_env_int(env, "MCR_TEMPLATE_MAX_PIXELS"))

    def resized_size(self, width: int, height: int) -> Tuple[int, int]:
        """(width, height) of the image the model sees for an original of ``width`` x ``height``."""
        w, h = template_rescale(int(width), int(height), self.template_max_pixels)
        rh, rw = smart_resize(h, w, self.factor, self.min_pixels, self.max_pixels)
        return rw, rh

    def image_tokens(self, width: int, height: int) -> int:
        """Tokens the LLM sees for one image of ``width`` x ``height``: one per ``factor`` x ``factor``
        cell of the resized image (Qwen2.5-VL: patch 14, merge 2, so (h/28)*(w/28))."""
        rw, rh = self.resized_size(width, height)
        return (rw // self.factor) * (rh // self.factor)

    @property
    def cap_pixels(self) -> int:
        """The smart-resize pixel cap in force (qwen-vl-utils' default when ``max_pixels`` is None)."""
        return DEFAULT_MAX_TOKENS * self.factor ** 2 if self.max_pixels is None else self.max_pixels

    def for_row(self, row: Mapping) -> "CoordinateSpace":
        """The space of one row's images: a row's ``chat_template_kwargs.max_pixels`` (written by the
        per-post image budget, `post_max_pixels`) replaces the run's ``max_pixels``, exactly as ms-swift's
        Qwen-VL template passes it to qwen-vl-utils' ``fetch_image`` (the row's value wins, larger or not)."""
        v = row_max_pixels(row)
        if v is None or v == self.max_pixels:
            return self
        return CoordinateSpace(self.family, self.min_pixels, v, self.template_max_pixels)

    def _scale(self, width: int, height: int) -> Tuple[float, float]:
        """Model units per original pixel along x and y."""
        if self.kind == "norm1000":
            return 1000.0 / width, 1000.0 / height
        rw, rh = self.resized_size(width, height)
        return rw / width, rh / height

    def to_model(self, box: Sequence[float], image_size: Tuple[int, int], rounded: bool = True) -> Box:
        """Original pixels -> model space, rounded like ms-swift's ``normalize_bbox``."""
        sx, sy = self._scale(*image_size)
        out = (box[0] * sx, box[1] * sy, box[2] * sx, box[3] * sy)
        if rounded:
            out = tuple(float(int(round(v))) for v in out)
        return out  # type: ignore[return-value]

    def from_model(self, box: Sequence[float], image_size: Tuple[int, int], clamp: bool = True) -> Box:
        """Model space -> original pixels (exact floats), clamped to the original image."""
        sx, sy = self._scale(*image_size)
        out = (box[0] / sx, box[1] / sy, box[2] / sx, box[3] / sy)
        return clamp_box(out, *image_size) if clamp else out  # type: ignore[return-value]

    def model_extent(self, image_size: Tuple[int, int]) -> Tuple[float, float]:
        """The largest x and y a box may take in model space (for clamping model output)."""
        if self.kind == "norm1000":
            return 1000.0, 1000.0
        rw, rh = self.resized_size(*image_size)
        return float(rw), float(rh)


# --------------------------------------------------------------------------- per-post image budget
#: Row key ms-swift hands to qwen-vl-utils' ``fetch_image`` for every image of the row (its
#: ``chat_template_kwargs``; ms-swift 4.6 Qwen2-VL/2.5-VL/3-VL templates and its OpenAI server read it).
ROW_KWARGS = "chat_template_kwargs"
#: Default image-token budget of one post (docs/decisions.md, "per-post image budget"): all images of a
#: post together get at most this many tokens, so a 4-image MNER-MI post fits max_length 4096 with its
#: instruction and a 1024-token chain. Single images are never cut by it under the paper's 1280-token cap.
DEFAULT_IMAGE_TOKEN_BUDGET = 2048
BUDGET_ENV = "MCR_IMAGE_TOKEN_BUDGET"


def row_max_pixels(row: Mapping) -> Optional[int]:
    """The row's own ``chat_template_kwargs.max_pixels``, or None."""
    kw = row.get(ROW_KWARGS) if isinstance(row, Mapping) else None
    if isinstance(kw, str):  # ms-swift's Json feature may hand it back as text
        import json
        try:
            kw = json.loads(kw)
        except ValueError:
            return None
    v = kw.get("max_pixels") if isinstance(kw, Mapping) else None
    return int(v) if isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0 else None


def budget_from_env(env: Optional[Mapping[str, str]] = None) -> int:
    """``$MCR_IMAGE_TOKEN_BUDGET`` (0 turns the budget off), default `DEFAULT_IMAGE_TOKEN_BUDGET`."""
    v = _env_int(os.environ if env is None else env, BUDGET_ENV)
    return DEFAULT_IMAGE_TOKEN_BUDGET if v is None else max(0, v)


def post_max_pixels(space: CoordinateSpace, sizes: Sequence[Tuple[int, int]], budget_tokens: Optional[int]
                    ) -> Optional[int]:
    """Per-image pixel cap that keeps a post's images (``sizes``: (w, h) each) within ``budget_tokens``
    tokens in all, or None when they already fit under the run's own cap (or the budget is off: 0/None).

    The cap is the largest C tokens (C x factor**2 pixels, C between floor(budget / n) and the run's
    cap) with sum of tokens(image, C) <= budget: small images keep their size, large ones share the rest.
    C = floor(budget / n) always fits (every image then has at most C tokens), so the search succeeds."""
    sizes = [tuple(int(v) for v in s) for s in sizes]
    if not budget_tokens or not sizes:
        return None
    if sum(space.image_tokens(w, h) for w, h in sizes) <= budget_tokens:
        return None
    f2 = space.factor ** 2
    min_tok = -(-(DEFAULT_MIN_TOKENS * f2 if space.min_pixels is None else space.min_pixels) // f2)

    def total(c: int) -> int:
        sp = CoordinateSpace(space.family, space.min_pixels, c * f2, space.template_max_pixels)
        return sum(sp.image_tokens(w, h) for w, h in sizes)

    lo, hi = max(budget_tokens // len(sizes), min_tok), space.cap_pixels // f2
    while lo < hi:  # largest c in [lo, hi] with total(c) <= budget (total is monotone in c)
        mid = (lo + hi + 1) // 2
        if total(mid) <= budget_tokens:
            lo = mid
        else:
            hi = mid - 1
    return lo * f2


def apply_image_budget(row: dict, space: CoordinateSpace, budget_tokens: Optional[int]) -> dict:
    """Write (or clear) the row's ``chat_template_kwargs.max_pixels`` under the per-post budget (image sizes
    from ``mcr_image_sizes``); returns the row. A row whose images fit keeps no key, so it resizes exactly as before."""
    sizes = row.get("mcr_image_sizes") or []
    if len(sizes) != len(row.get("images") or []):
        raise ValueError("the image budget needs every image's size (mcr_image_sizes)")
    v = post_max_pixels(space, sizes, budget_tokens)
    kw = dict(row.get(ROW_KWARGS) or {})
    kw.pop("max_pixels", None)
    if v is not None:
        kw["max_pixels"] = v
    if kw:
        row[ROW_KWARGS] = kw
    else:
        row.pop(ROW_KWARGS, None)
    return row


# --------------------------------------------------------------------------- command-line flags
def add_space_args(p) -> None:
    """The resize flags of a run, shared by ``evaluate``, ``pictures``, ``bias-report``, ``predict`` and
    ``baselines`` (read with `space_from_args`)."""
    from .argtypes import positive_int
    p.add_argument("--family", default=None, choices=sorted(FAMILIES),
                   help="model family: its box space (default $MCR_MODEL_FAMILY, else qwen2_5_vl)")
    p.add_argument("--max-pixels", type=positive_int, default=None,
                   help="smart-resize max pixels of the run (default $MAX_PIXELS or qwen-vl-utils')")
    p.add_argument("--min-pixels", type=positive_int, default=None, help="MIN_PIXELS (default $MIN_PIXELS)")
    p.add_argument("--template-max-pixels", type=positive_int, default=None, help="the run's ms-swift --max_pixels, if any")


def space_from_args(a, family: Optional[str] = None) -> CoordinateSpace:
    """The coordinate space of a run: the `add_space_args` flags over the environment variables
    ms-swift reads (`CoordinateSpace.from_env`); ``family`` is the fallback when ``--family`` is unset."""
    env = CoordinateSpace.from_env(a.family or family)
    return CoordinateSpace(env.family,
                           a.min_pixels if a.min_pixels is not None else env.min_pixels,
                           a.max_pixels if a.max_pixels is not None else env.max_pixels,
                           a.template_max_pixels if a.template_max_pixels is not None else env.template_max_pixels)
