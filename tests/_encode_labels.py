"""Helper run in a subprocess by test_swift_sft.py: encode prepared rows with ms-swift's own
Qwen2.5-VL template (resize settings from the environment) and print the decoded label texts.
With a fourth argument ``lengths`` (test_swift_preflight.py): every row, its sequence length, label
count and image grids instead."""
import json
import sys

import mcr_swift
from swift import get_processor, get_template

mcr_swift.register()
model_dir, rows_path, limit = sys.argv[1], sys.argv[2], int(sys.argv[3])
lengths = sys.argv[4:5] == ["lengths"]
processor = get_processor(model_dir, model_type="qwen2_5_vl", check_model=False)
template = get_template(processor, template_type="qwen2_5_vl")
template.set_mode("train")
out = []
with open(rows_path) as f:
    for line in f:
        row = json.loads(line)
        if lengths:
            enc = template.encode(row)
            out.append({"input_ids": len(enc["input_ids"]), "labels": sum(1 for t in enc["labels"] if t != -100),
                        "grid": enc["image_grid_thw"].tolist()})
            continue
        if not row["objects"]["bbox"]:
            continue
        enc = template.encode(json.loads(line))
        label_ids = [t for t in enc["labels"] if t != -100]
        thw = enc["image_grid_thw"][0].tolist()
        out.append({"row": row, "label": processor.tokenizer.decode(label_ids),
                    "grid_hw": [thw[1] * 14, thw[2] * 14]})
        if len(out) >= limit:
            break
print("@@" + json.dumps(out))
