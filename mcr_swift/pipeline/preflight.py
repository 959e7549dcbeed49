"""``mcr-swift preflight``: measure every row against the run's length limits before training (issue 21).

ms-swift loses over-long rows silently: ``swift sft`` (truncation ``delete``) skips a row longer than
``--max_length`` and trains another one; ``swift rlhf`` GRPO (truncation ``left``) cuts the prompt from
the left, through its image tokens; a rollout longer than ``--max_completion_length`` is cut before
``</answer>`` and scores 0. This command counts, for every row of the given files (prepared rows or D_R
rows), without model weights:

* prompt tokens: the model's tokenizer and chat template over the row's user turn(s), each ``<image>``
  as ``<|vision_start|>`` + n x ``<|image_pad|>`` + ``<|vision_end|>`` where n is the image's token count
  from its real size (image header, PIL) under the run's resize settings and the row's own
  ``chat_template_kwargs.max_pixels`` (`mcr_swift.core.coords.CoordinateSpace.for_row`, the space the
  rewards use);
* target tokens: the assistant turn with its ``<bbox>`` placeholders filled in model space as ms-swift
  renders them (``[x1, y1, x2, y2]``), plus the closing ``<|im_end|>`` and newline (ms-swift's labels);

and compares them with ``max_length`` (prompt + target: SFT), ``max_completion_length`` (target: the
GRPO / filter cap) and ``vllm_max_model_len`` (prompt + max_completion_length). It prints one table per
source (``mcr_task``) and style (``mcr_style``; ``prepared`` for prepared rows), writes it to
``--out`` (``preflight.tsv``, ``preflight.json``) and exits 2 when a row would be dropped or truncated,
naming the first rows (``file:line``) and the setting that would keep them; ``--accept-losses N``
accepts up to N such rows on purpose (reported). It also does the disk arithmetic of the run's
checkpoints (docs/commands.md, "preflight").
"""
from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

from ..core.argtypes import non_negative_int, positive_float, positive_int
from ..core.coords import FAMILIES, add_space_args, space_from_args
from ..data.lengths import TokenCounter, load_tokenizer
from ..jsonl import iter_jsonl, write_json_atomic, write_text_atomic

#: The limits checked, in table order: (key, flag, environment variable the recipes read)
LIMITS = (("max_length", "--max-length", "MAX_LENGTH"),
          ("max_completion_length", "--max-completion-length", "MAX_COMPLETION_LENGTH"),
          ("vllm_max_model_len", "--vllm-max-model-len", "VLLM_MAX_MODEL_LEN"))
#: Recipe defaults (recipes/mrsi_sft.sh, recipes/cvo_grpo.sh): max_length 4096, completions 1024,
#: vllm_max_model_len = max_length.
DEFAULT_MAX_LENGTH = 4096
DEFAULT_MAX_COMPLETION = 1024
SHOW_ROWS = 5


# --------------------------------------------------------------------------- the check
def _pct(values: Sequence[int], q: float) -> int:
    """Nearest-rank percentile (q in 0..100) of a non-empty list."""
    v = sorted(values)
    return v[max(0, math.ceil(q / 100 * len(v)) - 1)]


def over_limits(c: Mapping[str, Any], limits: Mapping[str, Optional[int]]) -> List[str]:
    """The limits a counted row breaks (a limit of None/0 is not checked)."""
    out = []
    if limits.get("max_length") and c["prompt"] + c["target"] > limits["max_length"]:
        out.append("max_length")
    if limits.get("max_completion_length") and c["has_target"] and c["target"] > limits["max_completion_length"]:
        out.append("max_completion_length")
    if limits.get("vllm_max_model_len") and \
            c["prompt"] + (limits.get("max_completion_length") or 0) > limits["vllm_max_model_len"]:
        out.append("vllm_max_model_len")
    return out


def preflight(files: Sequence[Path], counter: TokenCounter, limits: Mapping[str, Optional[int]],
              progress: bool = False) -> Dict[str, Any]:
    """Count every row of ``files``; returns the table, the losses and what would fix them."""
    groups: Dict[Tuple[str, str], Dict[str, List[int]]] = defaultdict(lambda: defaultdict(list))
    over: Dict[Tuple[str, str], Dict[str, int]] = defaultdict(lambda: defaultdict(int))
    losses: List[Dict[str, Any]] = []
    need = {"max_length": 0, "max_completion_length": 0, "vllm_max_model_len": 0}
    n_rows = 0
    for path in files:
        it = iter_jsonl(path)
        if progress:
            from tqdm import tqdm
            it = tqdm(it, desc=f"preflight {Path(path).name}", unit=" rows", file=sys.stderr)
        for no, row, _ in it:
            if not isinstance(row, dict):
                raise ValueError(f"{path}:{no}: a row must be a JSON object")
            try:
                c = counter.count(row)
            except ValueError as e:
                raise ValueError(f"{path}:{no}: {e}") from None
            n_rows += 1
            key = (str(row.get("mcr_task") or "gmner"),
                   str(row.get("mcr_style") or ("answer_only" if row.get("mcr_target") == "answer_only"
                                                else "prepared")))
            g = groups[key]
            g["prompt"].append(c["prompt"])
            g["image"].append(c["image"])
            g["target"].append(c["target"])
            g["total"].append(c["prompt"] + c["target"])
            g["images"].append(c["images"])
            need["max_length"] = max(need["max_length"], c["prompt"] + c["target"])
            need["max_completion_length"] = max(need["max_completion_length"], c["target"])
            need["vllm_max_model_len"] = max(need["vllm_max_model_len"],
                                             c["prompt"] + max(limits.get("max_completion_length") or 0,
                                                               c["target"]))
            bad = over_limits(c, limits)
            for lim in bad:
                over[key][lim] += 1
            if bad:
                losses.append({"where": f"{path}:{no}", "mcr_id": row.get("mcr_id"), "task": key[0],
                               "style": key[1], "over": bad, "prompt": c["prompt"], "image": c["image"],
                               "images": c["images"], "target": c["target"]})
    table = []
    for (task, style), g in sorted(groups.items()):
        rec: Dict[str, Any] = {"source": task, "style": style, "rows": len(g["total"]),
                               "images_max": max(g["images"])}
        for k in ("prompt", "image", "target", "total"):
            rec[f"{k}_median"] = _pct(g[k], 50)
            rec[f"{k}_p95"] = _pct(g[k], 95)
            rec[f"{k}_max"] = max(g[k])
        for lim, _, _ in LIMITS:
            rec[f"over_{lim}"] = over[(task, style)][lim]
        table.append(rec)
    return {"rows": n_rows, "files": [str(f) for f in files], "limits": dict(limits), "table": table,
            "losses": len(losses), "lost_rows": losses, "needed": need}


def fixes(result: Mapping[str, Any]) -> List[str]:
    """One hint per broken limit: the value that keeps every row, and the other way out."""
    lim = result["limits"]
    out = []
    broken = {l for r in result["lost_rows"] for l in r["over"]}
    for key, flag, env in LIMITS:
        if key in broken:
            out.append(f"{flag} {result['needed'][key]} ({env}) keeps every row")
    if broken & {"max_length", "vllm_max_model_len"}:
        out.append("or give the images fewer tokens: MAX_PIXELS, or the per-post image budget of "
                   "`mcr-swift prepare --image-token-budget` (docs/decisions.md)")
    if "max_completion_length" in broken:
        out.append(f"or reject longer chains at synthesis (`mcr-swift synth --max-completion-length "
                   f"{lim.get('max_completion_length')}`)")
    return out


def format_table(result: Mapping[str, Any]) -> str:
    cols = [("source", "source", "<10"), ("style", "style", "<17"), ("rows", "rows", ">6"),
            ("imgs", "images_max", ">5")]
    for k in ("prompt", "image", "target", "total"):
        cols += [(f"{k} med", f"{k}_median", ">11"), ("p95", f"{k}_p95", ">6"), ("max", f"{k}_max", ">6")]
    cols += [(f">{short}", f"over_{n}", ">9") for (n, _, _), short in zip(LIMITS, ("max_len", "compl", "vllm"))]
    head = "".join(f"{h:{fmt}}" for h, _, fmt in cols)
    lines = [head, "-" * len(head)]
    for rec in result["table"]:
        lines.append("".join(f"{rec[k]:{fmt}}" for _, k, fmt in cols))
    lim = result["limits"]
    lines.append(f"limits: max_length {lim.get('max_length') or 'off'}, max_completion_length "
                 f"{lim.get('max_completion_length') or 'off'}, vllm_max_model_len "
                 f"{lim.get('vllm_max_model_len') or 'off'} (>max_len, >compl, >vllm: rows over each)")
    return "\n".join(lines)


def to_tsv(result: Mapping[str, Any]) -> str:
    if not result["table"]:
        return ""
    keys = list(result["table"][0])
    return "\n".join(["\t".join(keys)] + ["\t".join(str(r[k]) for k in keys) for r in result["table"]]) + "\n"


# --------------------------------------------------------------------------- disk arithmetic
def model_parameters(model_dir: Path, dtype_bytes: int) -> Optional[int]:
    """Parameter count of a model folder: the tensor shapes in its ``*.safetensors`` headers (read
    without loading a weight), else its safetensors index's ``total_size`` / ``dtype_bytes``; None when
    it holds neither."""
    files = sorted(model_dir.glob("*.safetensors"))
    if files:
        n = 0
        for f in files:
            with open(f, "rb") as fh:
                size = int.from_bytes(fh.read(8), "little")
                try:
                    header = json.loads(fh.read(size))
                except ValueError:
                    raise ValueError(f"{f}: not a safetensors file (bad header)") from None
            for k, v in header.items():
                if k != "__metadata__":
                    n += math.prod(v.get("shape") or [1])
        return n
    idx = model_dir / "model.safetensors.index.json"
    if idx.is_file():
        try:
            total = json.loads(idx.read_text()).get("metadata", {}).get("total_size")
        except ValueError:
            total = None
        if total:
            return int(total) // dtype_bytes
    return None


def lora_parameters(model_dir: Path, rank: int) -> Optional[int]:
    """LoRA parameters of ``--target_modules all-linear`` on the language model (ms-swift freezes the
    vision tower by default): per layer rank x (in + out) of q, k, v, o, gate, up, down."""
    try:
        cfg = json.loads((model_dir / "config.json").read_text())
    except (OSError, ValueError):
        return None
    c = cfg.get("text_config") or cfg
    try:
        h, i, n = int(c["hidden_size"]), int(c["intermediate_size"]), int(c["num_hidden_layers"])
        heads = int(c["num_attention_heads"])
        kv_heads = int(c.get("num_key_value_heads") or heads)
        hd = int(c.get("head_dim") or h // heads)
    except (KeyError, TypeError, ValueError):
        return None
    q, kv = heads * hd, kv_heads * hd
    per_layer = (h + q) + 2 * (h + kv) + (q + h) + 2 * (h + i) + (i + h)
    return rank * per_layer * n


def disk_plan(stages: Sequence[str], params: Optional[int], lora: Optional[int], dtype_bytes: int,
              folder: Path) -> Dict[str, Any]:
    """Checkpoint bytes per stage ``NAME:TUNER:SAVE_TOTAL_LIMIT[:merge]`` against the free disk of
    ``folder``. A checkpoint holds the trained weights (LoRA: the adapter; full: every parameter) in the
    model dtype and Adam's two fp32 moments of the trained parameters (8 bytes each; ms-swift saves the
    optimizer state unless --save_only_model); ``merge`` adds one merged full model (recipes/merge_lora.sh)."""
    rows, total = [], 0
    for spec in stages:
        parts = spec.split(":")
        if len(parts) < 3 or parts[1] not in ("lora", "full") or not parts[2].isdigit():
            raise ValueError(f"--stage {spec!r}: expected NAME:lora|full:SAVE_TOTAL_LIMIT[:merge]")
        name, tuner, keep, merge = parts[0], parts[1], int(parts[2]), "merge" in parts[3:]
        trained = params if tuner == "full" else lora
        if trained is None or (merge and params is None):
            rows.append({"stage": name, "tuner": tuner, "bytes": None, "why": "parameter count unknown "
                         "(no weights in the model folder: give --params)"})
            continue
        ckpt = trained * (dtype_bytes + 8)
        b = keep * ckpt + (params * dtype_bytes if merge else 0)
        rows.append({"stage": name, "tuner": tuner, "save_total_limit": keep, "checkpoint_bytes": ckpt,
                     "merged_bytes": params * dtype_bytes if merge else 0, "bytes": b})
        total += b
    probe = folder
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    free = shutil.disk_usage(probe).free
    known = all(r["bytes"] is not None for r in rows)
    return {"stages": rows, "total_bytes": total, "free_bytes": free, "folder": str(folder),
            "fits": (total <= free) if known else None, "params": params, "lora_params": lora,
            "dtype_bytes": dtype_bytes}


def _gb(b: Optional[int]) -> str:
    return "?" if b is None else f"{b / 1e9:.2f} GB"


# --------------------------------------------------------------------------- command
def _env_limit(name: str, default: Optional[int]) -> Optional[int]:
    v = os.environ.get(name, "").strip()
    if not v:
        return default
    try:
        return int(v)
    except ValueError:
        raise ValueError(f"environment variable {name}={v!r} is not a number") from None


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="mcr-swift preflight", description=__doc__.splitlines()[0])
    p.add_argument("files", nargs="+", help="prepared or D_R row files (JSONL)")
    p.add_argument("--model", default=os.environ.get("MODEL"),
                   help="local model folder: its tokenizer and chat template (default $MODEL); no weights needed")
    p.add_argument("--template", default=os.environ.get("TEMPLATE", "qwen2_5_vl"),
                   help="ms-swift template (default $TEMPLATE or qwen2_5_vl): the model family of the resize")
    add_space_args(p)
    ml = _env_limit("MAX_LENGTH", DEFAULT_MAX_LENGTH)
    p.add_argument("--max-length", type=non_negative_int, default=ml,
                   help=f"prompt + target limit (swift --max_length; default $MAX_LENGTH or {DEFAULT_MAX_LENGTH}; 0: off)")
    p.add_argument("--max-completion-length", type=non_negative_int,
                   default=_env_limit("MAX_COMPLETION_LENGTH", DEFAULT_MAX_COMPLETION),
                   help=f"target limit (GRPO/filter cap; default $MAX_COMPLETION_LENGTH or {DEFAULT_MAX_COMPLETION}; 0: off)")
    p.add_argument("--vllm-max-model-len", type=non_negative_int, default=None,
                   help="prompt + max completion limit (default $VLLM_MAX_MODEL_LEN, else --max-length; 0: off)")
    p.add_argument("--accept-losses", type=non_negative_int, default=0,
                   help="accept up to N rows over a limit on purpose (reported); default 0")
    p.add_argument("--out", default=None, help="folder for preflight.tsv and preflight.json")
    d = p.add_argument_group("disk")
    d.add_argument("--stage", action="append", default=None, metavar="NAME:TUNER:KEEP[:merge]",
                   help="a training stage's checkpoints (default mrsi_sft:lora:2:merge and cvo_grpo:lora:2:merge)")
    d.add_argument("--params", type=positive_float, default=None, help="model parameters (default: from its weight files)")
    d.add_argument("--dtype-bytes", type=positive_int, default=2, help="bytes per parameter (bf16: 2)")
    d.add_argument("--lora-rank", type=positive_int, default=int(os.environ.get("LORA_RANK") or 8))
    d.add_argument("--disk-dir", default=None, help="where checkpoints go (default --out, else .)")
    p.add_argument("--no-progress", action="store_true")
    a = p.parse_args(argv)
    if not a.model:
        p.error("--model is required (a local model folder with its tokenizer), or set $MODEL")
    vllm = a.vllm_max_model_len if a.vllm_max_model_len is not None else _env_limit("VLLM_MAX_MODEL_LEN", a.max_length)
    limits = {"max_length": a.max_length or None, "max_completion_length": a.max_completion_length or None,
              "vllm_max_model_len": vllm or None}
    files = [Path(f) for f in a.files]
    for f in files:
        if not f.is_file():
            raise FileNotFoundError(2, "No such file", str(f))
    family = a.template if a.template in FAMILIES else None
    space = space_from_args(a, family)
    counter = TokenCounter(load_tokenizer(a.model), space)
    result = preflight(files, counter, limits, progress=not a.no_progress)
    result["space"] = {"family": space.family, "max_pixels": space.max_pixels, "min_pixels": space.min_pixels,
                       "template_max_pixels": space.template_max_pixels}
    result["model"], result["accept_losses"] = str(a.model), a.accept_losses
    model_dir = Path(a.model)
    params = int(a.params) if a.params else model_parameters(model_dir, a.dtype_bytes)
    disk = disk_plan(a.stage or ["mrsi_sft:lora:2:merge", "cvo_grpo:lora:2:merge"], params,
                     lora_parameters(model_dir, a.lora_rank), a.dtype_bytes,
                     Path(a.disk_dir or a.out or ".").resolve())
    result["disk"] = disk
    result["accepted"] = 0 < result["losses"] <= a.accept_losses
    print(f"preflight: {result['rows']} rows of {len(files)} file(s); images under {space.family} "
          f"max_pixels {space.max_pixels} (rows' own chat_template_kwargs.max_pixels honoured)")
    print(format_table(result))
    print("disk: " + ", ".join(f"{r['stage']} ({r['tuner']}) {_gb(r['bytes'])}" for r in disk["stages"])
          + f"; total {_gb(disk['total_bytes'])}, free {_gb(disk['free_bytes'])} at {disk['folder']}")
    if a.out:
        out = Path(a.out)
        out.mkdir(parents=True, exist_ok=True)
        write_text_atomic(out / "preflight.tsv", to_tsv(result))
        write_json_atomic(out / "preflight.json", {**result, "lost_rows": result["lost_rows"][:100]})
    status = 0
    if result["losses"]:
        shown = "; ".join(f"{r['where']} ({'+'.join(r['over'])}: prompt {r['prompt']}, image {r['image']}, "
                          f"target {r['target']})" for r in result["lost_rows"][:SHOW_ROWS])
        what = (f"{result['losses']} of {result['rows']} rows would be dropped or truncated: {shown}"
                + (" ..." if result["losses"] > SHOW_ROWS else "") + ". " + "; ".join(fixes(result)))
        if result["accepted"]:
            print(f"preflight: accepted {result['losses']} losses (--accept-losses {a.accept_losses}): {what}")
        else:
            print(f"mcr-swift preflight: error: {what}; or accept them with --accept-losses "
                  f"{result['losses']}", file=sys.stderr)
            status = 2
    if disk["fits"] is False:
        print(f"mcr-swift preflight: error: checkpoints need {_gb(disk['total_bytes'])} but "
              f"{disk['folder']} has {_gb(disk['free_bytes'])} free: lower SAVE_TOTAL_LIMIT, use LoRA, "
              f"or free disk", file=sys.stderr)
        status = 2
    return status


if __name__ == "__main__":
    sys.exit(main())
