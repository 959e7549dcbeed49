"""Coordinate spaces: IoU, clamping, and the resize arithmetic against the real processors."""
from __future__ import annotations

import math
import xml.etree.ElementTree as ET

import pytest

from mcr_swift.core.coords import (CoordinateSpace, best_iou, clamp_box, iou, is_valid_box, smart_resize,
                              template_rescale)


def xml_sizes_and_boxes(root):
    sizes, boxes = set(), []
    for f in sorted((root / "xml").glob("*.xml")):
        r = ET.parse(f).getroot()
        w, h = int(r.find("size/width").text), int(r.find("size/height").text)
        sizes.add((w, h))
        for o in r.findall("object"):
            b = o.find("bndbox")
            boxes.append(((w, h), tuple(float(b.find(k).text) for k in ("xmin", "ymin", "xmax", "ymax"))))
    return sorted(sizes), boxes


@pytest.fixture(scope="module")
def xml_data(data_v2):
    return xml_sizes_and_boxes(data_v2)


def test_iou_hand_computed():
    assert iou((0, 0, 2, 2), (0, 0, 2, 2)) == 1.0
    assert iou((0, 0, 2, 1), (0, 0, 1, 1)) == 0.5          # inter 1, union 2
    assert iou((0, 0, 2, 2), (1, 1, 3, 3)) == 1 / 7        # inter 1, union 4 + 4 - 1
    assert iou((0, 0, 1, 1), (1, 0, 2, 1)) == 0.0          # touching edges
    assert iou((0, 0, 1, 1), (0, 0, float("nan"), 1)) == 0.0
    assert iou((2, 2, 0, 0), (0, 0, 2, 2)) == 0.0          # inverted box has no area
    assert best_iou((0, 0, 2, 1), [(5, 5, 6, 6), (0, 0, 1, 1)]) == 0.5
    assert best_iou((0, 0, 1, 1), []) == 0.0


def test_clamp_and_validity():
    assert clamp_box((-5, -1, 120, 40), 100, 50) == (0.0, 0.0, 100.0, 40.0)
    assert is_valid_box((0, 0, 1, 1)) and not is_valid_box((1, 0, 1, 1))
    assert not is_valid_box((0, 0, math.inf, 1)) and not is_valid_box((0, 0, 1))


def test_smart_resize_hand_computed():
    # 500x706 with defaults: no resize bound hit, sides rounded to multiples of 28.
    assert smart_resize(706, 500) == (700, 504)
    # max 28*28*64 = 50176 px: beta = sqrt(500*706/50176) = 2.6523..; floor(706/beta/28)*28 = 252, 500 -> 168
    assert smart_resize(706, 500, 28, None, 50176) == (252, 168)
    # tiny image grows to the minimum 56*56 = 3136
    assert smart_resize(20, 20, 28, 3136, 50176) == (56, 56)
    with pytest.raises(ValueError, match="aspect ratio"):
        smart_resize(1, 500)


@pytest.mark.parametrize("min_px,max_px", [(3136, 12845056), (3136, 1003520), (3136, 50176), (200704, 1003520)])
def test_smart_resize_equals_reference_arithmetic(xml_data, min_px, max_px):
    """Same (h, w) as qwen-vl-utils (what ms-swift feeds the model) and transformers, on every xml size."""
    from mcr_swift.core.coords import _smart_resize
    from qwen_vl_utils.vision_process import smart_resize as qvu_resize
    from transformers.models.qwen2_vl.image_processing_qwen2_vl import smart_resize as hf_resize
    sizes, _ = xml_data
    assert len(sizes) > 500
    for w, h in sizes:
        ours = _smart_resize(h, w, 28, min_px, max_px)  # our arithmetic, what runs without qwen-vl-utils loaded
        assert ours == smart_resize(h, w, 28, min_px, max_px) == qvu_resize(h, w, 28, min_px, max_px) \
            == hf_resize(h, w, 28, min_px, max_px), (w, h)


def test_resize_matches_real_image_processor_grid(xml_data):
    """The size the transformers processor actually feeds the model (image_grid_thw * patch)."""
    from PIL import Image
    from transformers import Qwen2VLImageProcessor
    sizes, _ = xml_data
    pick = sizes[:: max(1, len(sizes) // 25)]  # ~25 real sizes across the range
    for min_px, max_px in [(3136, 50176), (3136, 1003520)]:
        proc = Qwen2VLImageProcessor(min_pixels=min_px, max_pixels=max_px, patch_size=14, merge_size=2)
        space = CoordinateSpace("qwen2_5_vl", min_pixels=min_px, max_pixels=max_px)
        for w, h in pick:
            grid = proc(images=Image.new("RGB", (w, h)), return_tensors="pt")["image_grid_thw"][0].tolist()
            assert (grid[2] * 14, grid[1] * 14) == space.resized_size(w, h), (w, h, min_px, max_px)


def test_resize_matches_qwen_vl_utils_fetch_image(xml_data):
    """ms-swift's Qwen2.5-VL template resizes with qwen_vl_utils.fetch_image."""
    from PIL import Image
    from qwen_vl_utils import fetch_image
    sizes, _ = xml_data
    space = CoordinateSpace("qwen2_5_vl", min_pixels=3136, max_pixels=50176)
    for w, h in sizes[:: max(1, len(sizes) // 15)]:
        img = fetch_image({"image": Image.new("RGB", (w, h)), "min_pixels": 3136, "max_pixels": 50176})
        assert img.size == space.resized_size(w, h)


def test_round_trip_within_one_pixel(xml_data):
    """original -> model -> original for every xml box, Qwen2.5-VL defaults and the 0-1000 grid."""
    _, boxes = xml_data
    for family in ("qwen2_5_vl", "mimo_vl", "qwen2_vl", "qwen3_vl"):
        space = CoordinateSpace(family)
        worst = 0.0
        for size, box in boxes:
            back = space.from_model(space.to_model(box, size), size)
            worst = max(worst, max(abs(a - b) for a, b in zip(back, box)))
        # norm1000 on images up to 2000 px wide: half a grid step is <= 1 px
        assert worst <= 1.0, (family, worst)


def test_round_trip_bound_when_downscaled(xml_data):
    """With a small max_pixels the error is bounded by half a model unit in original pixels."""
    _, boxes = xml_data
    space = CoordinateSpace("qwen2_5_vl", max_pixels=50176)
    for size, box in boxes[:2000]:
        rw, rh = space.resized_size(*size)
        back = space.from_model(space.to_model(box, size), size)
        assert abs(back[0] - box[0]) <= 0.5 * size[0] / rw + 1e-9
        assert abs(back[3] - box[3]) <= 0.5 * size[1] / rh + 1e-9


def test_to_model_rounds_like_ms_swift():
    # ms-swift: int(round(x / width * resized_width)); 64x64 image -> 56x56 (notes' example)
    space = CoordinateSpace("qwen2_5_vl")
    assert space.resized_size(64, 64) == (56, 56)
    assert space.to_model((12, 13, 42, 43), (64, 64)) == (10, 11, 37, 38)
    assert CoordinateSpace("qwen2_vl").to_model((12, 13, 42, 43), (64, 64)) == (188, 203, 656, 672)


def test_template_rescale_and_env():
    assert template_rescale(1000, 500, None) == (1000, 500)
    assert template_rescale(1000, 500, 125000) == (500, 250)
    env = {"MAX_PIXELS": "50176", "MIN_PIXELS": "3136", "MCR_MODEL_FAMILY": "mimo_vl"}
    sp = CoordinateSpace.from_env(env=env)
    assert (sp.family, sp.max_pixels, sp.min_pixels) == ("mimo_vl", 50176, 3136)
    # IMAGE_MAX_TOKEN_NUM wins over MAX_PIXELS, as in ms-swift
    assert CoordinateSpace.from_env(env={"IMAGE_MAX_TOKEN_NUM": "64", "MAX_PIXELS": "1"}).max_pixels == 50176
    with pytest.raises(ValueError, match="MAX_PIXELS"):
        CoordinateSpace.from_env(env={"MAX_PIXELS": "lots"})
    with pytest.raises(ValueError, match="unknown model family"):
        CoordinateSpace("llava")


def test_smart_resize_uses_qwen_vl_utils_when_loaded_and_ours_at_extreme_ratios(monkeypatch):
    """With qwen-vl-utils loaded (any ms-swift process) its function answers; where it returns a zero
    side (near the 200:1 limit under a small max_pixels) ours keeps one factor; bad input is our
    ValueError, not its assert / ZeroDivisionError."""
    import qwen_vl_utils
    from mcr_swift.core.coords import _smart_resize
    assert qwen_vl_utils.smart_resize(28, 5600, 28, 3136, 50176) == (0, 3164)      # its floor hits 0
    assert smart_resize(28, 5600, 28, 3136, 50176) == _smart_resize(28, 5600, 28, 3136, 50176) == (28, 3164)
    assert smart_resize(30, 5900, 28, 3136, 50176) == (28, 3136)
    calls = []
    real = qwen_vl_utils.smart_resize
    monkeypatch.setattr(qwen_vl_utils, "smart_resize", lambda *a: calls.append(a) or real(*a))
    assert smart_resize(706, 500, 28, None, 50176) == (252, 168) and calls == [(706, 500, 28, 3136, 50176)]
    for bad in [(0, 500, 28, None, None), (706, 500, 28, 3136, 100)]:
        with pytest.raises(ValueError):
            smart_resize(*bad)
    assert len(calls) == 1


def test_coordinate_space_does_not_load_torch():
    """Outside ms-swift processes the box conversion stays cheap: no qwen-vl-utils, no torch."""
    import subprocess
    import sys
    code = ("import sys; from mcr_swift.core.coords import CoordinateSpace; "
            "print(CoordinateSpace('qwen2_5_vl', max_pixels=50176).resized_size(500, 706), "
            "sorted({'torch', 'qwen_vl_utils'} & set(sys.modules)))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "(168, 252) []"
