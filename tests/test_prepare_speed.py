"""`prepare` in stand-in mode does no repeated work (issue 23 §3): each Twitter-GMNER split is read once,
the stand-ins just drawn are not decoded again, the instruction is looked up once, and the stand-ins
are synced to disk once per batch, not once per file; the rows are the ones the image-folder path
(which verifies every image in full) writes for the same images."""
from __future__ import annotations

import os

from mcr_swift.data import prepare as prep_mod
from mcr_swift.data import standin as standin_mod
from mcr_swift.data import twitter as twitter_mod
from mcr_swift.data.prepare import prepare_twitter_gmner


def _count(monkeypatch, module, name):
    calls = []
    real = getattr(module, name)

    def wrapped(*a, **k):
        calls.append((a, k))
        return real(*a, **k)
    monkeypatch.setattr(module, name, wrapped)
    return calls


def test_standin_prepare_reads_once_decodes_nothing_syncs_once(data_v2, tmp_path, monkeypatch):
    loads = _count(monkeypatch, prep_mod, "load_twitter_gmner")
    instructions = _count(monkeypatch, prep_mod, "task_instruction")
    full_checks = []
    real_check = twitter_mod.check_image
    monkeypatch.setattr(twitter_mod, "check_image", lambda p, full=True: (full_checks.append(full),
                                                                           real_check(p, full))[1])
    fsyncs = _count(monkeypatch, os, "fsync")
    syncs = _count(monkeypatch, standin_mod, "sync_folder")
    prepare_twitter_gmner(data_v2, tmp_path / "out", splits=["train", "dev"], standin_dir=tmp_path / "img",
                          limit=40, progress=False)
    assert len(loads) == 2  # one read per split (it was two: sizes from the xml, then the stand-ins)
    assert full_checks == []  # nothing decoded: the stand-ins were just drawn at the xml's sizes
    assert len(instructions) == 1  # not once per row
    assert len(syncs) == 2  # one sync per split's batch of 40 new stand-ins ...
    assert len(fsyncs) <= 3 * 2  # ... and no fsync per image (the rows and the summary: one each)
    assert len(list((tmp_path / "img").glob("*.jpg"))) == 80
    # warm: the kept stand-ins are checked by header only, none drawn, nothing synced
    syncs.clear()
    prepare_twitter_gmner(data_v2, tmp_path / "out", splits=["train", "dev"], standin_dir=tmp_path / "img",
                          limit=40, progress=False)
    assert syncs == [] and full_checks == []


def test_standin_rows_equal_the_verified_image_folder_rows(data_v2, tmp_path, monkeypatch):
    prepare_twitter_gmner(data_v2, tmp_path / "a", splits=["dev"], standin_dir=tmp_path / "img", limit=60,
                          progress=False)
    full_checks = []
    real_check = twitter_mod.check_image
    monkeypatch.setattr(twitter_mod, "check_image", lambda p, full=True: (full_checks.append(full),
                                                                           real_check(p, full))[1])
    prepare_twitter_gmner(data_v2, tmp_path / "b", splits=["dev"], image_dir=tmp_path / "img", limit=60,
                          progress=False)
    assert full_checks == [True] * 60  # real images: every one decoded in full, as before
    a = (tmp_path / "a" / "twitter_gmner" / "dev.jsonl").read_text()
    b = (tmp_path / "b" / "twitter_gmner" / "dev.jsonl").read_text()
    assert a == b and a.count("\n") == 60


def test_an_unreadable_kept_standin_is_drawn_again(data_v2, tmp_path):
    prepare_twitter_gmner(data_v2, tmp_path / "a", splits=["dev"], standin_dir=tmp_path / "img", limit=3,
                          progress=False)
    first = sorted((tmp_path / "img").glob("*.jpg"))[0]
    good = first.read_bytes()
    first.write_bytes(b"")  # what a machine crash before the folder's sync can leave
    prepare_twitter_gmner(data_v2, tmp_path / "a", splits=["dev"], standin_dir=tmp_path / "img", limit=3,
                          progress=False)
    assert first.read_bytes() == good
