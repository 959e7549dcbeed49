"""Issue 15: bad inputs on purpose -- truncated images and path-escaping ids in ``prepare``, one-line
errors (exit 2, no traceback) from the top-level CLI handler, atomic output files."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO


def cli(*args, env=None, cwd=REPO):
    return subprocess.run([sys.executable, "-m", "mcr_swift.cli", *map(str, args)], capture_output=True, text=True,
                          cwd=cwd, env={**os.environ, **(env or {})}, timeout=300)


def one_line_error(proc, *needles):
    """Exit 2, one line on stderr naming what is wrong, no traceback."""
    assert proc.returncode == 2, (proc.returncode, proc.stderr[-2000:])
    err = proc.stderr.strip()
    assert "Traceback" not in err and len(err.splitlines()) == 1, err
    for n in needles:
        assert n in err, (n, err)
    return err


def release(root: Path, txt: str) -> Path:
    (root / "txt").mkdir(parents=True)
    (root / "xml").mkdir()
    (root / "txt" / "train.txt").write_text(txt)
    return root


# --------------------------------------------------------------------------- prepare: images (case 3)
def test_prepare_refuses_a_truncated_jpeg(data_v2, tmp_path):
    from mcr_swift.data.prepare import prepare_twitter_gmner
    prepare_twitter_gmner(data_v2, tmp_path / "first", splits=["dev"], standin_dir=tmp_path / "standin", limit=6,
                          progress=False)  # images of the first 6 posts: --limit 5 reads one more after a skip
    images = tmp_path / "images"
    shutil.copytree(tmp_path / "standin", images)
    first_ids = [json.loads(l)["mcr_id"] for l in (tmp_path / "first" / "twitter_gmner" / "dev.jsonl").open()]
    victim = images / f"{first_ids[1]}.jpg"
    data = victim.read_bytes()
    victim.write_bytes(data[: len(data) // 2])  # the header and half the pixels: PIL opens it
    args = ["prepare", "--root", data_v2, "--splits", "dev", "--limit", 5, "--image-dir", images, "--no-progress"]
    # default: every image decoded fully -> refused, one line naming the image
    one_line_error(cli(*args, "--out", tmp_path / "a"), str(victim), "unreadable image")
    assert not (tmp_path / "a" / "twitter_gmner" / "dev.jsonl").exists()
    # skipped and counted
    ok = cli(*args, "--out", tmp_path / "b", "--on-error", "skip")
    assert ok.returncode == 0, ok.stderr
    summary = json.loads((tmp_path / "b" / "twitter_gmner" / "summary.json").read_text())["dev"]
    assert summary["rows"] == 5 and summary["refused_images"] == 1 and summary["verify_images"] == "full"
    assert summary["skipped"] == {"posts with an unreadable image": 1}
    assert json.loads(ok.stdout.strip().splitlines()[-1])["dev"]["refused_images"] == 1
    # the header alone (the old behaviour, now an option) accepts it
    hdr = cli(*args, "--out", tmp_path / "c", "--verify-images", "header")
    assert hdr.returncode == 0 and len((tmp_path / "c" / "twitter_gmner" / "dev.jsonl").read_text().splitlines()) == 5


# --------------------------------------------------------------------------- paths (case 7)
def test_prepare_refuses_an_imgid_that_leaves_the_folder(tmp_path):
    work = tmp_path / "work"
    root = release(work / "release", "IMGID:../../x\nKevin\tB-PER\n\nIMGID:7\nNBA\tB-ORG\n\n")
    args = ["prepare", "--root", root, "--out", work / "out", "--standin-images", work / "img", "--splits", "train",
            "--no-progress"]
    one_line_error(cli(*args), f"{root / 'txt' / 'train.txt'}:1: IMGID '../../x' is not a plain file name")
    ok = cli(*args, "--on-error", "skip")
    assert ok.returncode == 0, ok.stderr
    summary = json.loads((work / "out" / "twitter_gmner" / "summary.json").read_text())["train"]
    assert summary["rows"] == 1 and summary["skipped"] == {"posts with an IMGID that is not a plain file name": 1}
    written = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*") if p.is_file())
    assert written == ["work/img/7.jpg", "work/out/twitter_gmner/summary.json", "work/out/twitter_gmner/train.jsonl",
                       "work/out/twitter_gmner/train_answer_only.jsonl", "work/release/txt/train.txt"]
    # a split name is a file name too
    one_line_error(cli("prepare", "--root", root, "--out", work / "out", "--standin-images", work / "img",
                       "--splits", "../../escape"), "--splits value '../../escape' is not a plain file name")
    assert not (tmp_path / "escape.jsonl").exists()


def test_standin_refuses_an_id_with_a_folder(tmp_path):
    from mcr_swift.data.standin import write_standin_image
    from mcr_swift.core.entities import Sample
    with pytest.raises(ValueError, match="post id '../x' is not a plain file name"):
        write_standin_image(Sample("../x", ("a",), ()), tmp_path / "img")
    assert not (tmp_path / "x.jpg").exists()


# --------------------------------------------------------------------------- one top-level handler (case 9)
def test_user_mistakes_are_one_line_exit_2_in_every_command(prepared, tmp_path):
    gold = prepared / "twitter_gmner" / "test.jsonl"
    bad_json = tmp_path / "bad.jsonl"
    bad_json.write_text('{"id": "1", "response": "x"}\n{"id": oops\n')
    latin = tmp_path / "latin.jsonl"
    latin.write_bytes(b'{"id": "1", "response": "x"}\n{"id": "2", "response": "caf\xe9"}\n')
    missing = tmp_path / "nope.jsonl"
    one_line_error(cli("evaluate", missing, "--gold", gold, "--no-progress"), str(missing), "No such file")
    one_line_error(cli("evaluate", bad_json, "--gold", gold, "--no-progress"), f"{bad_json}:2: not valid JSON")
    one_line_error(cli("evaluate", latin, "--gold", gold, "--no-progress"), f"{latin}:2: not UTF-8 text (byte 0xe9")
    one_line_error(cli("pictures", latin, "--gold", gold, "--no-progress"), f"{latin}:2: not UTF-8")
    one_line_error(cli("bias-report", bad_json, "--gold", gold, "--no-progress"), f"{bad_json}:2: not valid JSON")
    one_line_error(cli("split", "--input", latin, "--out", tmp_path / "s"), f"{latin}:2: not UTF-8")
    one_line_error(cli("synth", "--input", missing, "--out", tmp_path / "o.jsonl", "--styles", "formatted_a"),
                   str(missing))
    one_line_error(cli("cvo-filter", "--input", bad_json, "--out", tmp_path / "f.jsonl", "--base-url",
                       "http://127.0.0.1:9/v1", "--model", "m"), f"{bad_json}:2")
    one_line_error(cli("report", tmp_path / "no-run"), str(tmp_path / "no-run"))
    for cmd in ("baselines", "predict"):
        extra = ["--method", "direct"] if cmd == "baselines" else []
        one_line_error(cli(cmd, *extra, "--input", missing, "--out", tmp_path / "o.jsonl", "--base-url",
                           "http://127.0.0.1:9/v1", "--model", "m"), str(missing))
    # an unknown tag and bytes that are not UTF-8 in the release
    root = release(tmp_path / "r", "IMGID:1\nKevin\tB-FOO\n\n")
    one_line_error(cli("prepare", "--root", root, "--out", tmp_path / "o", "--standin-images", tmp_path / "i",
                       "--splits", "train"), f"{root / 'txt' / 'train.txt'}:2: unknown tag 'B-FOO'")
    root2 = tmp_path / "r2"
    release(root2, "")
    (root2 / "txt" / "train.txt").write_bytes(b"IMGID:1\nCaf\xe9\tO\n\n")
    one_line_error(cli("prepare", "--root", root2, "--out", tmp_path / "o", "--standin-images", tmp_path / "i",
                       "--splits", "train"), f"{root2 / 'txt' / 'train.txt'}:2: not UTF-8 text (byte 0xe9")
    # a bad flag value or an unknown flag: one line too
    one_line_error(cli("evaluate", bad_json, "--protocol", "conll"), "mcr-swift evaluate: error: argument --protocol: "
                   "invalid choice: 'conll'")
    one_line_error(cli("prepare", "--root", root, "--standin-images", tmp_path / "i", "--limit", "many"),
                   "argument --limit: invalid int value: 'many'")
    one_line_error(cli("split", "--no-such-flag"), "the following arguments are required")
    # MCR_DEBUG=1 shows the traceback
    dbg = cli("evaluate", bad_json, "--gold", gold, "--no-progress", env={"MCR_DEBUG": "1"})
    assert dbg.returncode == 1 and "Traceback" in dbg.stderr and f"{bad_json}:2: not valid JSON" in dbg.stderr


# --------------------------------------------------------------------------- atomic writes (case 8)
def test_atomic_writes_leave_the_old_file_or_none(tmp_path, monkeypatch):
    from mcr_swift import jsonl
    target = tmp_path / "metrics.json"
    jsonl.write_json_atomic(target, {"v": 1})

    def rows():
        yield {"a": 1}
        raise OSError(28, "No space left on device")
    with pytest.raises(OSError, match="No space left"):
        jsonl.write_jsonl_atomic(target, rows())
    assert json.loads(target.read_text()) == {"v": 1}  # the old file, untouched
    with pytest.raises(OSError):
        jsonl.write_jsonl_atomic(tmp_path / "new.jsonl", rows())
    assert not (tmp_path / "new.jsonl").exists()  # none, never a 0-byte file
    # a failure at the rename itself (full disk at fsync/replace): the same
    monkeypatch.setattr(jsonl.os, "replace", lambda *a: (_ for _ in ()).throw(OSError(28, "No space left")))
    with pytest.raises(OSError):
        jsonl.write_text_atomic(target, "x" * 100)
    monkeypatch.undo()
    assert json.loads(target.read_text()) == {"v": 1}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics.json"]  # no temporary file left behind
    assert oct(target.stat().st_mode & 0o777) != oct(0o600)  # not mkstemp's private mode


def test_every_writer_uses_the_shared_atomic_helper():
    """No module writes an output file by hand (write_text / open(..., 'w') / save(path) / savefig(path));
    they all go through mcr_swift.jsonl's helpers. Streams that are not output files stay: the log of a
    background server (serve.py) and the append-only journals (the request cache, whose torn last line
    is dropped on reading, the reward log, and the run's times.tsv)."""
    import re
    allowed = {("pipeline/serve.py", 'with open(log, "w") as f:'),
               ("endpoint.py", 'self._file = open(self.path, "ab", buffering=0)  # unbuffered: one write per line'),
               ("plugin/orms.py", 'with _lock, open(path, "a", encoding="utf-8") as f:'),
               ("pipeline/runner.py", 'with open(times, "a") as f:')}   # times.tsv: one line per stage run
    bad, seen = [], set()
    for f in sorted((REPO / "mcr_swift").rglob("*.py")):  # every subpackage
        name = f.relative_to(REPO / "mcr_swift").as_posix()
        for no, line in enumerate(f.read_text().splitlines(), 1):
            s = line.strip()
            if (name, s) in allowed:
                seen.add((name, s))
                continue
            if name == "jsonl.py":
                continue
            if "atomic_open(" in s:
                continue
            if re.search(r"\.write_text\(|\.write_bytes\(|open\([^)]*['\"][wa]b?['\"]|\.savefig\((?!f)|"
                         r"\.save\((?!f\b)(?!out\b)", s):
                bad.append(f"{name}:{no}: {s}")
    assert bad == []
    assert seen == allowed  # no allowance outlives the line it allows


def test_evaluate_failure_keeps_the_old_report(prepared, tmp_path, monkeypatch):
    """A full disk while writing metrics.json: the old report stays, no 0-byte file, no .tmp."""
    from mcr_swift import jsonl
    from mcr_swift.evaluation.evaluate import main as evaluate_main
    rows = (prepared / "twitter_gmner" / "test.jsonl").read_text()
    res = tmp_path / "res.jsonl"
    res.write_text(rows)
    out = tmp_path / "m.json"
    out.write_text('{"old": true}')
    real = jsonl.os.fsync

    def full(fd):
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(jsonl.os, "fsync", full)
    with pytest.raises(OSError, match="No space left"):
        evaluate_main([str(res), "--json-out", str(out), "--no-progress"])
    monkeypatch.setattr(jsonl.os, "fsync", real)
    assert json.loads(out.read_text()) == {"old": True}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.json", "res.jsonl"]


def test_release_image_names_cannot_leave_the_image_folder(tmp_path):
    """The same class of bug in the MNER-MI and GREC readers: an image name from the release with a
    folder part is refused (a skippable problem), never opened outside --image-dir."""
    from PIL import Image

    from mcr_swift.data.grec import GRefCOCO
    from mcr_swift.data.mner_mi import image_candidates, load_mner_mi
    (tmp_path / "images").mkdir()
    Image.new("RGB", (8, 8)).save(tmp_path / "outside.jpg")  # exists, but outside the folder
    with pytest.raises(FileNotFoundError, match="image name '../outside.jpg' is not a plain file name"):
        image_candidates("../outside.jpg", tmp_path / "images", None)
    with pytest.raises(FileNotFoundError, match="image name 'twitter2017-../x.jpg' is not a plain file name"):
        image_candidates("twitter2017-../x.jpg", tmp_path / "images", None)
    assert image_candidates("a.jpg", tmp_path / "images", None) == [(tmp_path / "images" / "a.jpg", "")]
    # through the reader: the image is left out and counted, its post (no other image) dropped
    (tmp_path / "text").mkdir()
    (tmp_path / "text" / "MNER-MI_train.txt").write_text(
        '{"id": 1, "text": ["a"], "images": ["../outside.jpg"], "label": ["O"]}\n')
    got = load_mner_mi(tmp_path, "train", tmp_path / "images")
    assert got == [] and (got.report.missing_images, got.report.posts_without_images) == (1, 1)
    assert "is not a plain file name" in got.report.messages[0]
    got = GRefCOCO._image({"file_name": "../outside.jpg", "width": 8, "height": 8}, tmp_path / "images", {})
    assert got == "image file_name '../outside.jpg' is not a plain file name"
