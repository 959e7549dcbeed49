"""Helper run in a subprocess by test_swift_preflight.py: encode rows with ms-swift's own Qwen2.5-VL
template in train mode (resize settings from the environment) and print each row's sequence length,
label count and image grids."""
import json
import sys

import mcr_swift
from swift import get_processor, get_template

mcr_swift.register()
model_dir, rows_path = sys.argv[1], sys.argv[2]
processor = get_processor(model_dir, model_type="qwen2_5_vl", check_model=False)
template = get_template(processor, template_type="qwen2_5_vl")
template.set_mode("train")
out = []
with open(rows_path) as f:
    for line in f:
        enc = template.encode(json.loads(line))
        out.append({"input_ids": len(enc["input_ids"]), "labels": sum(1 for t in enc["labels"] if t != -100),
                    "grid": enc["image_grid_thw"].tolist()})
print("@@" + json.dumps(out))
