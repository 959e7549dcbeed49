"""The Table 1 / Table 3 rows (issue 14, sec. 3): the answer-only rows of the "+SFT" baseline, the
"w/o Inst" instruction, each VARIANT of `mcr-swift pipeline` through every stage it runs (with a
stand-in `swift`, tests/_swift_stub.py: the pipeline's own python stages run for real, the swift
commands are recorded), and `mcr-swift report` over several run folders next to the paper's numbers."""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from mcr_swift.core.answer import ANSWER_OPEN, THINK_OPEN
from mcr_swift.core.parser import parse_answer
from mcr_swift.prompts import load_prompt, task_instruction
from mcr_swift.data.prepare import write_answer_only
from mcr_swift.core.columns import gold_from_row
from mcr_swift.data.rows import answer_only_row
from tests.conftest import REPO, SHARED

#: what separates the instructions (prompts/task_instruction*.txt)
STEPWISE = "Reason step by step and verify each entity across the modalities"
CAUTIONS = ("never add an entity that appears only in the image", "not from what the image happens to show",
            "a region of a similar kind")
REASONING = "Write your reasoning inside <think> </think>"


def _rows(path):
    return [json.loads(l) for l in Path(path).read_text().splitlines() if l.strip()]


# ---- instructions -------------------------------------------------------------------------------

def test_noinst_instruction_drops_verification_and_cautions_only():
    full, noinst = task_instruction("qwen2_5_vl"), task_instruction("qwen2_5_vl", "task_instruction_noinst")
    assert STEPWISE in full and all(c in full for c in CAUTIONS)
    assert STEPWISE not in noinst and not any(c in noinst for c in CAUTIONS)
    # the task itself, the reasoning request and the answer format are unchanged
    for kept in ("1. Entity recognition (text)", "2. Type classification", "3. Visual entailment (image)",
                 "4. Visual grounding (image)", REASONING, load_prompt("box_format_pixels"),
                 "If the sentence contains no named entity"):
        assert kept in full and kept in noinst
    assert len(noinst) < len(full) - 500


def test_answer_only_instruction_asks_for_no_reasoning():
    ao = task_instruction("qwen2_5_vl", "task_instruction_answer_only")
    assert "<think>" not in ao and STEPWISE not in ao and "without writing any reasoning" in ao
    assert all(c in ao for c in CAUTIONS)          # the same task wording as MCR's, minus the reasoning
    assert load_prompt("box_format_pixels") in ao


def test_mcr_instruction_variable_switches_the_gmner_instruction(monkeypatch, data_v2, tmp_path):
    from mcr_swift.data.prepare import prepare_twitter_gmner
    grec = task_instruction("qwen2_5_vl", "task_instruction_grec")
    monkeypatch.setenv("MCR_INSTRUCTION", "task_instruction_noinst")
    assert task_instruction("qwen2_5_vl") == task_instruction("qwen2_5_vl", "task_instruction_noinst")
    assert task_instruction("qwen2_5_vl", "task_instruction_grec") == grec   # other tasks keep theirs
    prepare_twitter_gmner(data_v2, tmp_path / "d", splits=["train"], standin_dir=tmp_path / "img", limit=3,
                          progress=False)
    for r in _rows(tmp_path / "d" / "twitter_gmner" / "train.jsonl"):
        user = r["messages"][0]["content"]
        assert REASONING in user and STEPWISE not in user and CAUTIONS[0] not in user
    monkeypatch.setenv("MCR_INSTRUCTION", "../etc/passwd")
    with pytest.raises(ValueError, match="MCR_INSTRUCTION"):
        task_instruction("qwen2_5_vl")
    monkeypatch.setenv("MCR_INSTRUCTION", "no_such_prompt")
    with pytest.raises(FileNotFoundError, match="no_such_prompt.txt"):
        task_instruction("qwen2_5_vl")


# ---- answer-only rows ---------------------------------------------------------------------------

def test_answer_only_rows_of_the_prepared_train_split(prepared, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(prepared, data)
    src = data / "twitter_gmner" / "train.jsonl"
    target = data / "twitter_gmner" / "train_answer_only.jsonl"
    # prepare wrote them beside every split (the dataset loader only reads: issue 24 §5)
    assert sorted(p.name for p in target.parent.glob("*_answer_only.jsonl")) == [
        "dev_answer_only.jsonl", "test_answer_only.jsonl", "train_answer_only.jsonl"]
    assert _rows(target) == [answer_only_row(r) for r in _rows(src)]
    assert write_answer_only(src) == target
    before, after = _rows(src), _rows(target)
    assert len(after) == len(before) == 24
    n_boxes = 0
    for b, a in zip(before, after):
        user, answer = a["messages"][0]["content"], a["messages"][1]["content"]
        assert [m["role"] for m in a["messages"]] == ["user", "assistant"]
        # same images and sentence, the answer-only instruction in place of MCR's
        assert user.startswith("<image>You are an expert") and user.endswith("\n\nSentence: " + b["mcr_sentence"])
        assert user.count("<image>") == len(a["images"]) == 1
        assert "<think>" not in user and STEPWISE not in user and "without writing any reasoning" in user
        # the target is exactly the prepared answer, without the reasoning
        full = b["messages"][1]["content"]
        assert full.startswith(THINK_OPEN) and answer == full[full.index(ANSWER_OPEN):]
        assert THINK_OPEN not in answer and answer.startswith("<answer>\n[") and answer.endswith("]\n</answer>")
        assert answer.count("<bbox>") == len(a["objects"]["bbox"]) and a["objects"] == b["objects"]
        # which parses back to the gold triples (spans, types, located or not)
        parsed = parse_answer(answer.replace("<bbox>", "[1, 2, 3, 4]"))
        gold = gold_from_row(b)
        assert parsed.ok and [(e.text, e.type, bool(e.boxes)) for e in parsed.entities] == \
            [(e.text, e.type, bool(e.boxes)) for e in gold]
        assert a["mcr_gold"] == b["mcr_gold"] and a["mcr_target"] == "answer_only"
        n_boxes += len(a["objects"]["bbox"])
    assert n_boxes > 0
    src.write_text("\n".join(json.dumps(r) for r in before[:5]) + "\n")
    assert len(_rows(write_answer_only(src))) == 5


def test_answer_only_drops_the_boxes_of_reasoning_placeholders():
    row = {"messages": [{"role": "user", "content": "<image>x " + load_prompt("box_format_norm1000")
                         + "\n\nSentence: Kevin at NBA"},
                        {"role": "assistant", "content": "<think>\nKevin is at <bbox>.\n</think>\n<answer>\n"
                         '[{"entity": "Kevin", "type": "PER", "bbox": <bbox>}]\n</answer>'}],
           "images": ["/a.jpg"], "objects": {"ref": ["Kevin"], "bbox": [[1, 2, 3, 4], [1, 2, 3, 4]],
                                            "bbox_type": "real"},
           "mcr_task": "gmner", "mcr_sentence": "Kevin at NBA", "mcr_gold": "[]"}
    a = answer_only_row(row)
    assert a["objects"]["bbox"] == [[1, 2, 3, 4]] and a["messages"][1]["content"].count("<bbox>") == 1
    assert load_prompt("box_format_norm1000") in a["messages"][0]["content"]   # the row's own box space


@pytest.mark.parametrize("change,message", [
    (lambda r: r.update(mcr_task="mner_mi"), "Twitter-GMNER"),
    (lambda r: r["messages"][1].update(content="<think>x</think> no answer"), "no <answer>"),
    (lambda r: r.update(mcr_sentence="another sentence"), "Sentence: <mcr_sentence>"),
    (lambda r: r["messages"][0].update(content="<image>plain\n\nSentence: s"), "box-format line"),
])
def test_answer_only_refuses_rows_it_cannot_convert(prepared, tmp_path, change, message):
    rows = _rows(prepared / "twitter_gmner" / "train.jsonl")[:3]
    if "box-format" in message:
        rows[1]["mcr_sentence"] = "s"
    change(rows[1])
    src = tmp_path / "twitter_gmner" / "train.jsonl"
    src.parent.mkdir(parents=True)
    src.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(ValueError, match=re.escape(f"{src}:2: ") + ".*" + re.escape(message)):
        write_answer_only(src)
    assert not (src.parent / "train_answer_only.jsonl").exists()


# ---- the pipeline's variants, every stage, with a stand-in swift ----------------------------------

FULL = ["tiny-model", "prepare", "synth", "split", "preflight", "mrsi-sft", "merge", "cvo-filter", "cvo-grpo",
        "infer-eval"]
#: variant -> (stages in order, swift commands in order, paper row)
PLANS = {
    "mcr": (FULL, ["deploy", "sft", "export", "deploy", "rlhf", "infer"], "+MRSI+CVO"),
    # one template style: synthesis needs no endpoint, so no synthesis server
    "no_dr": (FULL, ["sft", "export", "deploy", "rlhf", "infer"], "w/o D_R"),
    "no_inst": (FULL, ["deploy", "sft", "export", "deploy", "rlhf", "infer"], "w/o Inst"),
    "sft": (["tiny-model", "prepare", "preflight", "sft", "infer-eval"], ["sft", "infer"], "+SFT"),
    "mrsi_only": (["tiny-model", "prepare", "synth", "split", "preflight", "mrsi-sft", "infer-eval"], ["deploy", "sft", "infer"],
                  "+MRSI"),
    "no_cvo": (["tiny-model", "prepare", "synth", "split", "preflight", "mrsi-sft", "merge", "cvo-filter", "cvo-data", "cvo-data-sft",
                "infer-eval"], ["deploy", "sft", "export", "deploy", "sft", "infer"], "w/o CVO"),
    "cvo_only": (["tiny-model", "prepare", "synth", "split", "preflight", "cvo-filter", "cvo-grpo", "infer-eval"],
                 ["deploy", "deploy", "rlhf", "infer"], "w/o MRSI"),
}


@pytest.fixture(scope="module")
def swift_stub(tmp_path_factory) -> Path:
    exe = tmp_path_factory.mktemp("stub") / "swift"      # named swift: the recipes then record checkpoints
    exe.write_text(f"#!/bin/sh\nexec {sys.executable} {REPO / 'tests' / '_swift_stub.py'} \"$@\"\n")
    exe.chmod(0o755)
    return exe


def pipeline(variant, run_dir, stub, tiny_model, wrapper="qwen25vl_7b_full", **env):
    log = Path(str(run_dir) + ".swift.jsonl")
    e = {**os.environ, "PROFILE": "tiny", "RUN_DIR": str(run_dir), "MCR_SHARED_DIR": str(SHARED),
         "SWIFT": str(stub), "SWIFT_STUB_LOG": str(log), "MODEL": str(tiny_model),
         # the paper profile's MRSI path (LoRA, merge), without the tiny profile's memorisation extras
         # (full fine-tuning, trained-posts check, curves), which tests/test_full_pipeline.py covers
         "TINY_MEMORISE": "false", **env}
    if variant is not None:
        e["VARIANT"] = variant
    p = subprocess.run(["bash", f"recipes/{wrapper}.sh"], cwd=REPO, env=e, capture_output=True, text=True,
                       timeout=900)
    calls = [json.loads(l) for l in log.read_text().splitlines()] if log.exists() else []
    return p, calls


def _user(row):
    return next(m["content"] for m in row["messages"] if m["role"] == "user")


@pytest.mark.swift    # every stage of the full pipeline recipe, swift stubbed (integration)
@pytest.mark.shared
@pytest.mark.parametrize("variant", list(PLANS))
def test_variant_runs_its_stages_with_its_data_and_instruction(variant, tmp_path, swift_stub, tiny_model):
    stages, commands, paper_row = PLANS[variant]
    run = tmp_path / f"run_{variant}"
    p, calls = pipeline(variant, run, swift_stub, tiny_model)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    r = json.loads((run / "report.json").read_text())
    assert [t["stage"] for t in r["times"]] == stages
    assert [c["cmd"] for c in calls] == commands
    assert (run / "variant.txt").read_text().strip() == variant and r["variant"] == variant
    row = r["table_row"]
    assert (row["variant"], row["row"], row["model"], row["tiny"]) == (variant, paper_row, "Qwen2.5VL-7B", True)
    assert r["metrics"]["posts"] == 8 and r["metrics"]["unmatched_rows"] == 0
    by = {c["cmd"]: c["args"] for c in calls}           # the last call of each command
    sft_dir = "sft" if variant == "sft" else "mrsi_sft"
    data = run / "data"
    infer = _rows(run / "eval" / "infer.jsonl")
    assert len(infer) == 8

    # the instruction: the same in the prepared rows, in training and at inference
    instruction = {"no_inst": "task_instruction_noinst"}.get(variant)
    assert {c["env"]["MCR_INSTRUCTION"] for c in calls} == {instruction}
    prepared_users = [_user(x) for x in _rows(data / "twitter_gmner" / "train.jsonl")]
    if variant == "no_inst":
        assert all(REASONING in u and STEPWISE not in u for u in prepared_users)
    else:
        assert all(STEPWISE in u for u in prepared_users)
    if variant == "sft":
        trained = _rows(data / "twitter_gmner" / "train_answer_only.jsonl")
        assert len(trained) == 8 and all(THINK_OPEN not in x["messages"][1]["content"] for x in trained)
        assert all("without writing any reasoning" in _user(x) and STEPWISE not in _user(x)
                   for x in trained + infer)
        assert not (data / "mrsi").exists()
    else:
        d1 = _rows(data / "mrsi" / "d1.jsonl")
        every_source = [_user(x) for src in ("twitter_gmner", "mner_mi", "grec")      # D_R's three sources
                        for x in _rows(data / src / "train.jsonl")]
        assert {_user(x) for x in d1} <= set(every_source)
        assert {x.get("mcr_task", "gmner") for x in d1} == {"gmner", "mner_mi", "grec"}
        assert {_user(x) for x in infer} <= {_user(x) for x in _rows(data / "twitter_gmner" / "test.jsonl")}
        styles = {x["mcr_style"] for x in _rows(data / "mrsi" / "d_r.jsonl")}
        assert styles == {"formatted_a"} if variant == "no_dr" else len(styles) >= 2

    # datasets and starting points of the swift stages
    model = str(tiny_model)
    ckpt = lambda d: str(run / d / "v0-20260101-000000" / "checkpoint-1")
    if variant == "no_cvo":                  # MRSI on D1, then SFT of the merged MRSI model on the CVO data
        first, second = [c["args"] for c in calls if c["cmd"] == "sft"]
        merged = str(run / "mrsi_merged" / "merged")
        assert (first["--dataset"], first["--model"]) == ("mcr-mrsi:d1", model)
        assert (second["--dataset"], second["--model"]) == ("mcr-mrsi:d2_kept", merged)   # data/mrsi/d2_kept.jsonl
        assert second["--output_dir"] == str(run / "cvo_sft") and second["--learning_rate"] == "1e-4"
        assert [c["args"] for c in calls if c["cmd"] == "deploy"][1]["--model"] == merged   # the filter
        d2, kept = _rows(data / "mrsi" / "d2.jsonl"), _rows(data / "mrsi" / "d2_kept.jsonl")
        kept_ids = {x["mcr_id"] for x in _rows(data / "mrsi" / "d2_filtered.jsonl")}
        assert kept == [x for x in d2 if x["mcr_id"] in kept_ids] and kept      # with their chains
        assert all(x["messages"][-1]["role"] == "assistant" for x in kept)
        assert (by["infer"]["--model"], by["infer"]["--adapters"]) == (merged, ckpt("cvo_sft"))
    elif "sft" in by:
        assert by["sft"]["--dataset"] == {"sft": "mcr-gmner:train_answer_only"}.get(variant, "mcr-mrsi:d1")
        assert by["sft"]["--model"] == model and by["sft"]["--output_dir"] == str(run / sft_dir)
        assert by["sft"]["--learning_rate"] == "1e-4" and by["sft"]["--lr_scheduler_type"] == "cosine"
    assert by["infer"]["--val_dataset"] == ("mcr-gmner:test_answer_only" if variant == "sft" else "mcr-gmner:test")
    if variant in ("sft", "mrsi_only"):      # no CVO: the base model with the SFT adapter
        assert (by["infer"]["--model"], by["infer"]["--adapters"]) == (model, ckpt(sft_dir))
    elif variant == "cvo_only":              # CVO from the base model, its filter sampling the base model
        filt = [c for c in calls if c["cmd"] == "deploy"][-1]["args"]
        assert filt["--model"] == model and "--adapters" not in filt
        assert by["rlhf"]["--model"] == model and "--adapters" not in by["rlhf"]
        assert (by["infer"]["--model"], by["infer"]["--adapters"]) == (model, ckpt("cvo_grpo"))
        assert not (run / "mrsi_sft").exists()
    elif variant != "no_cvo":                # MCR: CVO from the merged MRSI policy
        merged = str(run / "mrsi_merged" / "merged")
        filt = [c for c in calls if c["cmd"] == "deploy"][-1]["args"]
        assert filt["--model"] == merged and by["rlhf"]["--model"] == merged
        assert by["rlhf"]["--dataset"] == "mcr-mrsi:d2_filtered"
        assert (by["infer"]["--model"], by["infer"]["--adapters"]) == (merged, ckpt("cvo_grpo"))
    if "rlhf" in by:   # the filter's queries: D2, or all of D_R for w/o MRSI (Sec. 5.4, "CVO on D_R")
        kept = _rows(data / "mrsi" / "d2_filtered.jsonl")
        queries = _rows(data / "mrsi" / ("d_r.jsonl" if variant == "cvo_only" else "d2.jsonl"))
        assert {(x.get("mcr_task"), x["mcr_id"]) for x in kept} == {(x.get("mcr_task"), x["mcr_id"]) for x in queries}
        if variant == "no_inst":
            assert all(STEPWISE not in _user(x) and REASONING in _user(x) for x in kept)


@pytest.mark.swift    # the pipeline recipe itself (it stops at its checks), with the tiny model
@pytest.mark.parametrize("marker", ["variant.txt", "times.tsv"])   # times.tsv alone: a run made before VARIANT
def test_a_run_folder_belongs_to_one_variant(tmp_path, swift_stub, tiny_model, marker):
    run = tmp_path / "run"
    run.mkdir()
    (run / marker).write_text("mcr\n" if marker == "variant.txt" else "prepare\t1\n")
    p, calls = pipeline("no_inst", run, swift_stub, tiny_model)
    assert p.returncode == 2 and calls == []
    assert f"{run}/variant.txt: this run folder was made by VARIANT=mcr, not no_inst" in p.stderr
    assert not (run / "data").exists()


@pytest.mark.parametrize("env,message", [
    ({"VARIANT": "w/o_cvo"}, "VARIANT must be mcr, sft, mrsi_only, no_cvo, no_dr, no_inst or cvo_only, got 'w/o_cvo'"),
    ({"VARIANT": "no_dr", "NO_DR_STYLE": "formatted_a,llm_qa"}, "NO_DR_STYLE must name one style, got 'formatted_a,llm_qa'"),
    ({"VARIANT": "cvo_only", "CVO_QUERIES": "d1"}, "CVO_QUERIES must be d2 or d_r, got 'd1'"),
])
@pytest.mark.swift    # the pipeline recipe itself (it stops at its checks), with the tiny model
def test_bad_variant_settings_stop_with_one_line(tmp_path, swift_stub, tiny_model, env, message):
    p, calls = pipeline(None, tmp_path / "run", swift_stub, tiny_model, **env)
    assert p.returncode == 2 and calls == []
    assert p.stderr.strip() == f"mcr-swift pipeline: error: {message} (set MCR_DEBUG=1 for the traceback)"
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("wrapper,variant,folder", [
    ("qwen25vl_7b_full", None, "runs/qwen25vl_7b_tiny"), ("qwen25vl_7b_full", "mcr", "runs/qwen25vl_7b_tiny"),
    ("qwen25vl_7b_full", "sft", "runs/qwen25vl_7b_tiny_sft"), ("mimovl_7b_full", "no_inst", "runs/mimovl_7b_tiny_no_inst"),
    ("mimovl_7b_full", "cvo_only", "runs/mimovl_7b_tiny_cvo_only"),
])
def test_each_variant_has_its_own_default_run_folder(tmp_path, wrapper, variant, folder):
    env = {k: v for k, v in os.environ.items() if k not in ("RUN_DIR", "VARIANT")}
    env.update({"PROFILE": "tiny", **({"VARIANT": variant} if variant else {})})
    out = subprocess.run(["bash", f"recipes/{wrapper}.sh", "--dry-run"], cwd=REPO, env=env, capture_output=True,
                         text=True)
    assert out.returncode == 0, out.stderr
    assert f"run dir {REPO / folder};" in out.stdout          # what the wrapper's pipeline runs in
    assert not (REPO / folder).exists()                          # a dry run writes nothing


def test_cvo_only_queries_all_of_d_r_by_default(tmp_path):
    """Sec. 5.4: w/o MRSI is "directly applying CVO on D_R" (issue 21, 5): the filter reads d_r.jsonl;
    CVO_QUERIES=d2 keeps the full method's CVO data."""
    from mcr_swift.pipeline.config import resolve
    assert resolve("tiny", "qwen25vl_7b", "cvo_only", env={}).filter.queries == "d_r"
    assert resolve("tiny", "qwen25vl_7b", "cvo_only", env={"CVO_QUERIES": "d2"}).filter.queries == "d2"
    assert resolve("tiny", "qwen25vl_7b", "mcr", env={}).filter.queries == "d2"
    env = {k: v for k, v in os.environ.items() if k not in ("RUN_DIR", "CVO_QUERIES")}
    out = subprocess.run(["bash", "recipes/qwen25vl_7b_full.sh", "--dry-run"], cwd=REPO, capture_output=True,
                         text=True, env={**env, "PROFILE": "tiny", "VARIANT": "cvo_only", "RUN_DIR": str(tmp_path / "r")})
    assert out.returncode == 0, out.stderr
    line = next(l for l in out.stdout.splitlines() if l.lstrip().startswith("$ mcr-swift cvo-filter "))
    assert f"--input {tmp_path / 'r' / 'data' / 'mrsi' / 'd_r.jsonl'} " in line


# ---- mcr-swift report over several runs -----------------------------------------------------------

def _prf(c, p, g):
    """A metrics entry as mcr-swift evaluate writes it, from counts (correct, predicted, gold)."""
    pre, rec = c / p, c / g
    return {"precision": pre, "recall": rec, "f1": 2 * pre * rec / (pre + rec), "correct": c, "predicted": p,
            "gold": g}


def make_run(folder: Path, variant, template, tiny, counts=None, stage_dir="mrsi_sft"):
    """A hand-made run folder: what the pipeline's stages leave for the report."""
    folder.mkdir(parents=True)
    if variant is not None:
        (folder / "variant.txt").write_text(variant + "\n")
    (folder / "times.tsv").write_text(("tiny-model\t3\n" if tiny else "") + "prepare\t1\ninfer-eval\t2\n")
    args = folder / stage_dir / "v0-20260101-000000" / "args.json"
    args.parent.mkdir(parents=True)
    args.write_text(json.dumps({"model": "m", "template": template, "learning_rate": 1e-4}))
    if counts:
        (folder / "eval").mkdir()
        (folder / "eval" / "metrics.json").write_text(json.dumps(
            {"file": "infer.jsonl", "posts": 10, "rows": 10, "parse_failures": 0,
             "metrics": {**{k: _prf(*v) for k, v in counts.items()}, "n": _prf(1, 2, 2)}}))
    return folder


def report(*argv):
    return subprocess.run([sys.executable, "-m", "mcr_swift.cli", "report", *map(str, argv)], cwd=REPO,
                          capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(REPO)})


def test_report_puts_several_runs_next_to_the_papers_rows(tmp_path):
    # GMNER 1/2 correct of predicted, 1/4 of gold -> P 50.0, R 25.0, F1 33.3; MNER 3/4, 3/5 -> 75.0, 60.0, 66.7;
    # EEG 2/3, 2/8 -> 66.7, 25.0, 36.4
    counts = {"gmner": (1, 2, 4), "mner": (3, 4, 5), "eeg": (2, 3, 8)}
    sft = make_run(tmp_path / "qwen25vl_7b_paper_sft", "sft", "qwen2_5_vl", False, counts, stage_dir="sft")
    mcr = make_run(tmp_path / "qwen25vl_7b_paper", None, "qwen2_5_vl", False, {k: (4, 4, 4) for k in counts})
    noinst = make_run(tmp_path / "mimovl_7b_paper_no_inst", "no_inst", "mimo_vl", False)
    out = tmp_path / "table.md"
    p = report(sft, mcr, noinst, "--out", out)
    assert p.returncode == 0, p.stderr
    lines = p.stdout.splitlines()
    assert "| Qwen2.5VL-7B | +SFT | this run `qwen25vl_7b_paper_sft` | 50.0 | 25.0 | 33.3 | 75.0 | 60.0 | 66.7 | " \
           "66.7 | 25.0 | 36.4 |" in lines
    assert "| Qwen2.5VL-7B | +SFT | paper, Table 1 | 63.3 | 62.0 | 62.7 | 83.0 | 81.3 | 82.2 | 65.8 | 64.4 | 65.1 |" in lines
    # a run made before variant.txt existed is the full method
    assert "| Qwen2.5VL-7B | +MRSI+CVO | this run `qwen25vl_7b_paper` | " + " | ".join(["100.0"] * 9) + " |" in lines
    assert "| Qwen2.5VL-7B | +MRSI+CVO | paper, Table 1 | 70.5 | 70.8 | 70.6 | 82.6 | 82.9 | 82.8 | 73.2 | 73.5 | 73.4 |" \
        in lines
    # Table 3 is on Qwen2.5VL-7B only; a run without test metrics says so
    assert "| MimoVL-7B | w/o Inst | this run `mimovl_7b_paper_no_inst` | " + " | ".join(["n/a"] * 9) + " |" in lines
    assert "- `mimovl_7b_paper_no_inst`: the paper reports no w/o Inst row for MimoVL-7B (Table 3 is on " \
           "Qwen2.5VL-7B only)" in lines
    assert "- `mimovl_7b_paper_no_inst`: no test metrics yet (the infer-eval stage has not finished)" in lines
    assert "plumbing" not in p.stdout          # no tiny run among them
    # the runs' rows in order, each followed by its paper row
    rows = [l for l in lines if l.startswith("| ") and "numbers from" not in l]
    assert [r.split(" | ")[2] for r in rows] == ["this run `qwen25vl_7b_paper_sft`", "paper, Table 1",
                                                "this run `qwen25vl_7b_paper`", "paper, Table 1",
                                                "this run `mimovl_7b_paper_no_inst`"]
    assert out.read_text() == "\n".join(lines) + "\n"
    # every run's own report records its variant and row
    r = json.loads((sft / "report.json").read_text())
    assert r["variant"] == "sft" and r["table_row"]["scores"]["gmner"] == [50.0, 25.0, 33.3]
    assert r["table_row"]["paper"]["table"] == "Table 1" and r["sft_args"]["template"] == "qwen2_5_vl"
    assert "| Qwen2.5VL-7B | +SFT | paper, Table 1 |" in (sft / "report.md").read_text()


def test_report_says_tiny_runs_are_plumbing_checks(tmp_path):
    counts = {"gmner": (1, 2, 4), "mner": (1, 2, 4), "eeg": (1, 2, 4)}
    a = make_run(tmp_path / "a", "cvo_only", "qwen2_5_vl", True, counts, stage_dir="cvo_grpo")
    b = make_run(tmp_path / "b", "no_dr", "qwen2_5_vl", True, counts)
    p = report(a, b)
    assert p.returncode == 0, p.stderr
    assert "| Qwen2.5VL-7B | w/o MRSI | this run `a` (tiny: plumbing check) | 50.0 | 25.0 | 33.3 |" in p.stdout
    assert "| Qwen2.5VL-7B | w/o MRSI | paper, Table 3 | 50.2 | 53.2 | 51.7 | 64.3 | 68.1 | 66.2 | 54.2 | 57.5 | 55.8 |" \
        in p.stdout
    assert "| Qwen2.5VL-7B | w/o D_R | paper, Table 3 | 69.5 | 68.8 | 69.2 | 81.6 | 80.7 | 81.1 | 72.8 | 72.1 | 72.5 |" \
        in p.stdout
    assert "- tiny profile: a random tiny model trained a few steps on a handful of posts; its numbers are " \
           "plumbing checks, not comparable with the paper's" in p.stdout


def test_report_refuses_a_missing_folder(tmp_path):
    a = make_run(tmp_path / "a", "sft", "qwen2_5_vl", True, stage_dir="sft")
    p = report(a, tmp_path / "nope")
    assert p.returncode == 2 and p.stderr.strip().startswith(f"mcr-swift report: error: {tmp_path / 'nope'}: not a folder")
    assert not (a / "report.json").exists()      # nothing written when an argument is bad


def test_paper_rows_are_the_papers():
    from mcr_swift.reports.report import PAPER_ROWS, VARIANT_ROWS
    # Table 3's "Ours" is Table 1's +MRSI+CVO row of Qwen2.5VL-7B; Sec. 5.4: w/o MRSI drops F1 by 18.9
    assert PAPER_ROWS[("Qwen2.5VL-7B", "+MRSI+CVO")][1] == (70.5, 70.8, 70.6)
    assert round(PAPER_ROWS[("Qwen2.5VL-7B", "+MRSI+CVO")][1][2] - PAPER_ROWS[("Qwen2.5VL-7B", "w/o MRSI")][1][2], 2) \
        == 18.9
    # Sec. 5.4: w/o Inst drops F1 by 3.9
    assert round(70.6 - PAPER_ROWS[("Qwen2.5VL-7B", "w/o Inst")][1][2], 2) == 3.9
    assert set(VARIANT_ROWS) == set(PLANS) and all(
        ("Qwen2.5VL-7B", row) in PAPER_ROWS for row in VARIANT_ROWS.values())
