"""Issue 20 section 4: errors a person can read -- every bad input or setting is one line naming the
file (and line) or the setting, exit 2, no traceback; inputs that would allocate without bound are
refused by size; report.md never renders HTML that came from a run folder's files."""
from __future__ import annotations

import errno
import json
import os
import pickle
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import pytest

from mcr_swift.cli import main as cli_main
from tests.conftest import REPO

FIX_GREC = Path(__file__).parent / "fixtures" / "grec"


def cli(*args, env=None):
    return subprocess.run([sys.executable, "-m", "mcr_swift.cli", *map(str, args)], capture_output=True, text=True,
                          cwd=REPO, env={**os.environ, **(env or {})}, timeout=300)


def one_line_error(proc, *needles):
    assert proc.returncode == 2, (proc.returncode, proc.stdout[-1000:], proc.stderr[-2000:])
    err = proc.stderr.strip()
    assert "Traceback" not in err and len(err.splitlines()) == 1, err
    for n in needles:
        assert n in err, (n, err)
    return err


# --------------------------------------------------------------------------- evaluate: entities shapes
GOLD = json.dumps([{"entity": "Kevin Durant", "type": "PER", "boxes": [[10, 10, 40, 40]]}])


def pred_row(entities, **extra):
    return {"mcr_id": "7", "mcr_task": "gmner", "mcr_gold": GOLD, "mcr_image_sizes": [[64, 64]],
            "mcr_sentence": "Kevin Durant scores", "entities": entities, **extra}


def write_rows(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_evaluate_scores_well_formed_entities_rows(tmp_path):
    good = [{"entity": "Kevin Durant", "type": "PER", "bbox": [10, 10, 40, 40]}]
    preds = write_rows(tmp_path / "p.jsonl", [pred_row(good),
                                              {**pred_row([{"entity": "Kevin Durant", "type": "PER",
                                                            "boxes": [[10, 10, 40, 40]]}]), "mcr_id": "8"},
                                              {**pred_row([]), "mcr_id": "9"}])
    out = cli("evaluate", preds, "--no-progress", "--json-out", tmp_path / "r.json")
    assert out.returncode == 0, out.stderr
    m = json.loads((tmp_path / "r.json").read_text())["metrics"]["gmner"]
    assert (m["tp"] if "tp" in m else None, round(m["precision"], 3), round(m["recall"], 3)) in (
        (2, 1.0, 0.667), (None, 1.0, 0.667))


BAD_ENTITIES = [  # (entities value, what the message must say)
    ({"entity": "Kevin Durant", "type": "PER"}, "'entities' must be a list of entity objects"),
    ("Kevin Durant", "'entities' must be a list of entity objects"),
    (None, "'entities' must be a list of entity objects, got null"),
    ([["Kevin Durant", "PER", None]], "entities[0] must be an object with 'entity' and 'type'"),
    ([{"type": "PER", "bbox": None}], "entities[0]: 'entity' must be a string, got null"),
    ([{"entity": "Kevin Durant"}], "entities[0]: 'type' must be a string"),
    ([{"entity": "K", "type": "PER", "bbox": [float("nan"), 1, 2, 3]}], "entities[0]: 'bbox' has a non-finite"),
    ([{"entity": "K", "type": "PER", "bbox": 0}], "entities[0]: 'bbox' must be 4 numbers [x1, y1, x2, y2], got 0"),
    ([{"entity": "K", "type": "PER", "bbox": [1, 2, 3]}], "'bbox' must be 4 numbers"),
    ([{"entity": "K", "type": "PER", "bbox": [1, 2, 3, 4, 5]}], "'bbox' must be 4 numbers"),
    ([{"entity": "K", "type": "PER", "bbox": [True, False, True, True]}], "'bbox' must be 4 numbers"),
    ([{"entity": "K", "type": "PER", "bbox": []}], "'bbox' must be 4 numbers"),
    ([{"entity": "K", "type": "PER", "boxes": [[1, 2, 3, "4"]]}], "entities[0]: boxes[0] must be 4 numbers"),
    ([{"entity": "K", "type": "PER", "boxes": 5}], "entities[0]: 'boxes' must be a list of boxes"),
    ([{"entity": "K", "type": "PER", "bbox": None}, 3], "entities[1] must be an object"),
]


@pytest.mark.parametrize("entities, needle", BAD_ENTITIES)
def test_evaluate_names_file_line_and_problem_of_a_bad_entities_row(tmp_path, entities, needle):
    preds = write_rows(tmp_path / "preds.jsonl", [{**pred_row([]), "mcr_id": "1"}, pred_row(entities)])
    one_line_error(cli("evaluate", preds, "--no-progress"), f"{preds}:2: ", needle)
    assert not (tmp_path / "preds.jsonl.metrics.json").exists()


def test_evaluate_names_the_gold_file_and_line_of_a_malformed_gold_row(tmp_path):
    gold = write_rows(tmp_path / "gold.jsonl", [{"mcr_id": "1", "mcr_task": "gmner", "mcr_gold": "[{\"type\": \"PER\"}]",
                                                "mcr_image_sizes": [[64, 64]], "images": ["/x/1.jpg"]}])
    preds = write_rows(tmp_path / "preds.jsonl", [{"id": "1", "response": "<answer>[]</answer>"}])
    one_line_error(cli("evaluate", preds, "--gold", gold, "--no-progress"), f"{gold}:1: bad mcr_gold")


# --------------------------------------------------------------------------- GREC pickles
def grec_root(tmp_path, pickle_bytes):
    root = tmp_path / "grec"
    root.mkdir()
    shutil.copy(FIX_GREC / "instances.json", root / "instances.json")
    (root / "grefs(unc).p").write_bytes(pickle_bytes)
    return root


PROTO = b"\x80\x04"
BAD_PICKLES = {
    # [] {"a": "b"} BUILD: a list has no __dict__ (AttributeError traceback before)
    "build on a list": (PROTO + b"]}\x8c\x01a\x8c\x01bsb.", "opcode BUILD at byte 11 is not plain data"),
    # BINUNICODE8 claiming 2**60 bytes (MemoryError before): refused by the length left in the file
    "huge unicode8": (PROTO + b"\x8d" + struct.pack("<Q", 1 << 60) + b"abc.",
                      "expected 1152921504606846976 bytes in a unicodestring8, but only 4 remain"),
    "huge bytes8": (PROTO + b"\x8e" + struct.pack("<Q", 1 << 40) + b"abc.", "bytes in a bytes8, but only 4 remain"),
    "huge bytearray8": (b"\x80\x05\x96" + struct.pack("<Q", 1 << 40) + b".", "bytes in a bytearray8"),
    "huge long4": (PROTO + b"\x8b" + struct.pack("<i", 2 ** 31 - 1) + b"..", "long4"),
    "a class": (pickle.dumps([{"ref_id": 1, "f": os.system}]), "the pickle refers to posix.system"),
    "truncated": (pickle.dumps([{"ref_id": 1, "sentences": ["a"]}])[:-4], "unreadable refs file"),
}


@pytest.mark.parametrize("name", list(BAD_PICKLES))
def test_grec_pickle_is_refused_with_bounded_sizes_and_one_line(tmp_path, name):
    data, needle = BAD_PICKLES[name]
    root = grec_root(tmp_path, data)
    proc = cli("prepare", "--dataset", "grec", "--root", root, "--out", tmp_path / "out", "--standin-images",
               tmp_path / "img", "--no-progress")
    err = one_line_error(proc, f"{root / 'grefs(unc).p'}: unreadable refs file", needle)
    assert "MemoryError" not in err and "AttributeError" not in err


def test_grec_plain_pickle_still_reads(tmp_path):
    from mcr_swift.data.grec import read_refs
    refs = json.loads((FIX_GREC / "grefs(unc).json").read_text())
    for proto in (2, 4, 5):
        (tmp_path / "r.p").write_bytes(pickle.dumps(refs, protocol=proto))
        assert read_refs(tmp_path / "r.p") == refs


# --------------------------------------------------------------------------- report.md and HTML
def test_report_md_escapes_html_from_args_json_and_times_tsv(tmp_path):
    run = tmp_path / "run"
    (run / "cvo_grpo" / "v0-20260101-000000").mkdir(parents=True)
    (run / "times.tsv").write_text("<script>alert(1)</script>\t5\nprepare\t<b>bold</b>|x\n")
    (run / "cvo_grpo" / "v0-20260101-000000" / "args.json").write_text(json.dumps(
        {"model": "<img src=x onerror=alert(1)>", "learning_rate": 5e-6, "template": "a|b`c"}))
    proc = cli("report", run)
    assert proc.returncode == 0, proc.stderr
    md = (run / "report.md").read_text()
    for raw in ("<script>", "<img", "<b>", "a|b"):
        assert raw not in md, raw
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in md and "&lt;img src=x onerror=alert(1)&gt;" in md
    assert "| &lt;script&gt;alert(1)&lt;/script&gt; | 5 |" in md      # still one table row
    assert "a&#124;b&#96;c" in md
    # report.json keeps the raw values
    assert json.loads((run / "report.json").read_text())["cvo_grpo_args"]["model"] == "<img src=x onerror=alert(1)>"


# --------------------------------------------------------------------------- writes name their target
def test_full_disk_names_the_file_being_written(tmp_path, monkeypatch, capsys):
    preds = write_rows(tmp_path / "p.jsonl", [pred_row([])])
    out = tmp_path / "report.json"

    def full(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    monkeypatch.setattr(os, "fsync", full)
    assert cli_main(["evaluate", str(preds), "--no-progress", "--json-out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"mcr-swift evaluate: error: {out}: cannot write: No space left on device"), err
    assert not out.exists() and not list(tmp_path.glob(".*tmp"))


def test_json_out_a_folder_names_the_folder_not_a_temporary_file(tmp_path):
    preds = write_rows(tmp_path / "p.jsonl", [pred_row([])])
    (tmp_path / "dir").mkdir()
    err = one_line_error(cli("evaluate", preds, "--no-progress", "--json-out", tmp_path / "dir"),
                         f"{tmp_path / 'dir'}: is a folder")
    assert ".tmp" not in err and not list((tmp_path / "dir").iterdir())
    one_line_error(cli("evaluate", preds, "--no-progress", "--json-out", tmp_path / "nowhere" / "r.json"),
                   f"{tmp_path / 'nowhere' / 'r.json'}: cannot write: No such file or directory")


# --------------------------------------------------------------------------- settings name themselves
def test_api_timeout_setting_is_named():
    from mcr_swift.endpoint import Endpoint
    for raw in ("abc", "0", "-3", "nan", "inf"):
        with pytest.raises(ValueError, match=rf"environment variable MCR_API_TIMEOUT='{raw}'"):
            Endpoint.resolve("http://127.0.0.1:9/v1", "m", env={"MCR_API_TIMEOUT": raw})
    assert Endpoint.resolve("http://127.0.0.1:9/v1", "m", env={"MCR_API_TIMEOUT": " 7.5 "}).timeout == 7.5
    assert Endpoint.resolve("http://127.0.0.1:9/v1", "m", env={}).timeout == 120.0


def test_api_timeout_setting_is_one_line_from_a_command(tmp_path):
    inp = write_rows(tmp_path / "in.jsonl", [pred_row([])])
    one_line_error(cli("synth", "--input", inp, "--out", tmp_path / "o.jsonl", "--styles", "llm_qa",
                       "--base-url", "http://127.0.0.1:9/v1", "--model", "m", "--no-progress",
                       env={"MCR_API_TIMEOUT": "abc"}), "MCR_API_TIMEOUT='abc'")


def test_other_settings_name_themselves(monkeypatch):
    from mcr_swift.core.coords import CoordinateSpace
    from mcr_swift.pipeline.recipe_args import simulated_world_size
    from mcr_swift.plugin.registry import verify_images_full
    from mcr_swift.prompts import task_instruction
    with pytest.raises(ValueError, match=r"MAX_PIXELS='1e999' is not a number"):
        CoordinateSpace.from_env(env={"MAX_PIXELS": "1e999"})
    with pytest.raises(ValueError, match=r"NPROC_PER_NODE='two' is not an integer"):
        simulated_world_size({"NPROC_PER_NODE": "two"})
    with pytest.raises(ValueError, match=r"NNODES='0' must be positive"):
        simulated_world_size({"NNODES": "0"})
    assert simulated_world_size({"NPROC_PER_NODE": "2", "NNODES": "3"}) == 6
    monkeypatch.setenv("MCR_VERIFY_IMAGES", "ful")
    with pytest.raises(ValueError, match=r"MCR_VERIFY_IMAGES='ful': choose one of full, header"):
        verify_images_full()
    monkeypatch.setenv("MCR_VERIFY_IMAGES", "FULL")
    assert verify_images_full() is True
    monkeypatch.setenv("MCR_INSTRUCTION", "no_such_prompt")
    with pytest.raises(FileNotFoundError, match=r"MCR_INSTRUCTION='no_such_prompt': no prompt file .*no_such_prompt\.txt"):
        task_instruction()
