"""``mcr-swift predict``: the trained prompt format, boxes back to original pixels by hand, input
validation with file:line errors, images by path / file:// URL, per-post and single-post errors,
resume, and real runs on the tiny model (ms-swift's in-process engine and ``swift deploy``)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest
from PIL import Image

from mcr_swift.endpoint import image_data_url, to_openai_messages
from mcr_swift.core.coords import CoordinateSpace
from mcr_swift.jsonl import iter_jsonl
from mcr_swift.evaluation.predict import (ImageError, LocalBackend, Post, answer_entities, image_size, main as predict_main,
                               post_messages, predict_posts, read_posts, resolve_image)
from mcr_swift.prompts import task_instruction
from tests._fake_openai import FakeOpenAI, image_parts, prompt_text
from tests.conftest import REPO, TINY_MAX_PIXELS

SPACE = CoordinateSpace("qwen2_5_vl", max_pixels=TINY_MAX_PIXELS)
#: In SPACE a 640x480 image is seen as 252x168 (smart resize under 50176 pixels).
GOOD = '<think>..</think>\n<answer>\n[{"entity": "Kevin Durant", "type": "PER", "bbox": [25, 17, 126, 84]}, ' \
       '{"entity": "NBA", "type": "ORG", "bbox": null}]\n</answer>'


def _img(path, size=(640, 480)):
    Image.new("RGB", size, (10, 120, 200)).save(path)
    return path


def _rows(prepared, n):
    return [r for _, r, _ in iter_jsonl(prepared / "twitter_gmner" / "test.jsonl")][:n]


# --------------------------------------------------------------------------- pieces
def test_prompt_is_the_trained_row_format(prepared):
    for row in _rows(prepared, 5):
        assert post_messages(row["mcr_sentence"], 1, task_instruction()) == [row["messages"][0]]
    two = post_messages("a  b", 2, "INSTR")[0]["content"]
    assert two == "Image 1: <image>\nImage 2: <image>\nINSTR\n\nSentence: a  b"  # text kept verbatim


def test_answers_map_back_to_original_pixels():
    ents, res = answer_entities(GOOD, SPACE, (640, 480))
    # x * 640/252, y * 480/168: (25, 17, 126, 84) -> (63.49, 48.57, 320, 240)
    assert res.ok and ents == [{"entity": "Kevin Durant", "type": "PER", "bbox": [63.49, 48.57, 320.0, 240.0]},
                               {"entity": "NBA", "type": "ORG", "bbox": None}]
    legacy = ('<answer>[{"entity": "Kevin Durant", "type": "PER", "bbox": "<|box_start|>(25,17),(126,84)'
              '<|box_end|>"}]</answer>')
    assert answer_entities(legacy, SPACE, (640, 480))[0][0]["bbox"] == [63.49, 48.57, 320.0, 240.0]
    # 0-1000 grid: 500 -> half the width
    assert answer_entities('[{"entity": "A", "type": "LOC", "bbox": [0, 0, 500, 1000]}]', CoordinateSpace("qwen3_vl"),
                           (640, 480))[0][0]["bbox"] == [0.0, 0.0, 320.0, 480.0]
    # beyond the resized image: clamped to it first, so the box ends at the original border
    assert answer_entities('[{"entity": "A", "type": "LOC", "bbox": [200, 100, 999, 999]}]', SPACE,
                           (640, 480))[0][0]["bbox"] == [507.94, 285.71, 640.0, 480.0]
    for bad in ("I am not sure.", "", None, "\n" * 16):
        ents, res = answer_entities(bad, SPACE, (640, 480))
        assert ents == [] and not res.ok


def test_images_by_path_and_file_url(tmp_path):
    a = _img(tmp_path / "a.jpg", (300, 200))
    assert resolve_image("a.jpg", tmp_path) == a and resolve_image(a.as_uri()) == a
    assert resolve_image("file://localhost" + str(a)) == a and image_size(a) == (300, 200)
    with pytest.raises(ImageError, match="only local paths and file:// URLs"):
        resolve_image("https://example.com/x.jpg")
    with pytest.raises(ImageError, match="image not found"):
        image_size(tmp_path / "none.jpg")
    (tmp_path / "bad.jpg").write_bytes(b"not an image at all")
    with pytest.raises(ImageError, match=r"bad\.jpg: not a readable image"):
        image_size(tmp_path / "bad.jpg")
    trunc = tmp_path / "trunc.jpg"
    trunc.write_bytes(a.read_bytes()[:200])
    with pytest.raises(ImageError, match="not a readable image"):
        image_size(trunc)


@pytest.mark.parametrize("line,msg", [
    ('{"id": "a", "text": "t", "images": ["x.jpg"]', "not valid JSON"),
    ('["a"]', "a row must be a JSON object"),
    ('{"text": "t", "images": ["x.jpg"]}', "'id' must be a non-empty string or an integer"),
    ('{"id": true, "text": "t", "images": ["x.jpg"]}', "'id' must be"),
    ('{"id": "a", "text": 3, "images": ["x.jpg"]}', "'text' must be a string, got int"),
    ('{"id": "a", "text": "t", "images": []}', "'images' must be a non-empty list"),
    ('{"id": "a", "text": "t", "images": "x.jpg"}', "'images' must be a non-empty list"),
    ('{"id": "p1", "text": "t", "images": ["x.jpg"]}', "id 'p1' already used on line 1"),
])
def test_post_file_errors_name_file_and_line(tmp_path, line, msg):
    f = tmp_path / "posts.jsonl"
    f.write_text('{"id": "p1", "text": "ok", "images": ["x.jpg"]}\n\n' + line + "\n")
    with pytest.raises(ValueError) as e:
        read_posts(f)
    assert str(e.value).startswith(f"{f}:3: ") and msg in str(e.value)


# --------------------------------------------------------------------------- against a scripted endpoint
def _posts_file(tmp_path):
    _img(tmp_path / "a.jpg")
    _img(tmp_path / "b.jpg", (320, 240))
    lines = [{"id": "good", "text": "Kevin Durant joins the NBA", "images": ["a.jpg"]},
             {"id": 7, "text": "prose", "images": [(tmp_path / "a.jpg").as_uri()]},
             {"id": "missing", "text": "no image", "images": ["gone.jpg"]},
             {"id": "two", "text": "two images", "images": ["a.jpg", "b.jpg"]}]
    f = tmp_path / "posts.jsonl"
    f.write_text("".join(json.dumps(x) + "\n" for x in lines))
    return f


def _answer(body):
    return ["I do not know." if "Sentence: prose" in prompt_text(body) else GOOD]


def test_jsonl_with_parse_failure_and_image_error(tmp_path, capsys):
    f = _posts_file(tmp_path)
    out = tmp_path / "pred.jsonl"
    with FakeOpenAI(_answer) as fake:
        rc = predict_main(["--input", str(f), "--out", str(out), "--base-url", fake.base_url, "--max-pixels",
                           str(TINY_MAX_PIXELS), "--no-progress"])
        reqs = fake.requests
    err = capsys.readouterr().err
    assert rc == 0, err
    got = [r for _, r, _ in iter_jsonl(out)]
    assert [r["id"] for r in got] == ["good", 7, "missing", "two"]  # input order, ids as given
    box = [63.49, 48.57, 320.0, 240.0]
    assert got[0] == {"id": "good", "entities": [{"entity": "Kevin Durant", "type": "PER", "bbox": box},
                                                 {"entity": "NBA", "type": "ORG", "bbox": None}],
                      "raw": GOOD, "parse_ok": True, "error": None}
    assert got[1] == {"id": 7, "entities": [], "raw": "I do not know.", "parse_ok": False, "error": None}
    assert got[2]["raw"] is None and got[2]["error"] == f"{f}:3: {tmp_path / 'gone.jpg'}: image not found"
    assert got[3]["entities"][0]["bbox"] == box  # boxes refer to the first image (640x480)
    assert len(reqs) == 3  # nothing is sent for the post without its image
    two = next(b for b in reqs if "two images" in prompt_text(b))
    # both images inline, in order, in the numbered multi-image layout
    assert image_parts(two) == [image_data_url(tmp_path / "a.jpg"), image_data_url(tmp_path / "b.jpg")]
    assert two["messages"] == to_openai_messages(post_messages("two images", 2, task_instruction()),
                                                 [tmp_path / "a.jpg", tmp_path / "b.jpg"])
    assert "4 posts, 3 answered (1 unparseable, raw text kept), 1 image errors, 0 request errors" in err
    assert "gone.jpg: image not found" in err
    summary = json.loads(out.with_name("pred.jsonl.summary.json").read_text())
    assert summary["parse_failures"] == 1 and summary["space"]["max_pixels"] == TINY_MAX_PIXELS


def test_failed_request_is_recorded_and_resumed(tmp_path, capsys):
    f = _posts_file(tmp_path)
    out = tmp_path / "pred.jsonl"
    with FakeOpenAI(_answer, fail_first=1, fail_status=500) as fake:
        args = ["--input", str(f), "--out", str(out), "--base-url", fake.base_url, "--retries", "0",
                "--concurrency", "1", "--no-progress"]
        assert predict_main(args) == 3
        err = capsys.readouterr().err
        got = [r for _, r, _ in iter_jsonl(out)]
        assert "re-run the same command to resume" in err and "1 request errors" in err
        assert got[0]["raw"] is None and fake.base_url in got[0]["error"] and "500" in got[0]["error"]
        assert got[0]["error"].startswith(f"{f}:1: ")
        assert predict_main(args) == 0
        again = [r for _, r, _ in iter_jsonl(out)]
        assert again[0]["raw"] == GOOD and again[1:] == got[1:]
        assert len(fake.requests) == 3  # 2 answered the first time, 1 on the re-run
    keys = [json.loads(l)["key"] for l in out.with_name("pred.jsonl.cache.jsonl").read_text().splitlines()]
    assert len(keys) == len(set(keys)) == 3


def test_single_post(tmp_path, capsys):
    a = _img(tmp_path / "a.jpg")
    with FakeOpenAI(_answer) as fake:
        base = ["--base-url", fake.base_url, "--max-pixels", str(TINY_MAX_PIXELS)]
        assert predict_main(["--text", "Kevin Durant joins the NBA", "--image", a.as_uri(), "--id", "kd", *base]) == 0
        rec = json.loads(capsys.readouterr().out)
        assert rec["id"] == "kd" and rec["entities"][0]["bbox"] == [63.49, 48.57, 320.0, 240.0]
        assert predict_main(["--text", "prose", "--image", str(a), *base]) == 0  # unparseable: raw kept
        cap = capsys.readouterr()
        assert json.loads(cap.out)["raw"] == "I do not know." and "could not be parsed" in cap.err
        assert predict_main(["--text", "x", "--image", str(tmp_path / "no.jpg"), *base]) == 2
        assert f"--image: {tmp_path / 'no.jpg'}: image not found" in capsys.readouterr().err
        assert len(fake.requests) == 2
    # an unreachable endpoint, with and without a model name: the URL is named, exit 2
    dead = "http://127.0.0.1:9/v1"
    assert predict_main(["--text", "x", "--image", str(a), "--base-url", dead, "--retries", "0"]) == 2
    assert f"cannot list the models of {dead}" in capsys.readouterr().err
    assert predict_main(["--text", "x", "--image", str(a), "--base-url", dead, "--model", "m", "--retries", "0"]) == 2
    err = capsys.readouterr().err
    assert dead in err and "APIConnectionError" in err
    # the local engine never reaches for a hub: a missing folder is refused before ms-swift is asked
    assert predict_main(["--engine", "local", "--model", str(tmp_path / "nomodel"), "--text", "x",
                         "--image", str(a)]) == 2
    assert f"--model {tmp_path / 'nomodel'}: not a directory" in capsys.readouterr().err


# --------------------------------------------------------------------------- the tiny model
@pytest.fixture(scope="module")
def local(tiny_model):
    saved = dict(os.environ)   # ms-swift also sets IMAGE_MAX_TOKEN_NUM from MAX_PIXELS when it loads
    os.environ["MAX_PIXELS"] = str(TINY_MAX_PIXELS)
    t = time.time()
    backend = LocalBackend(str(tiny_model), template="qwen2_5_vl", max_tokens=16)
    backend.load_s = time.time() - t
    yield backend
    os.environ.clear()
    os.environ.update(saved)


def _prepared_posts(prepared, n):
    return [Post(r["mcr_id"], r["mcr_sentence"], r["images"], "test", list(r["images"]),
                 [tuple(r["mcr_image_sizes"][0])]) for r in _rows(prepared, n)]


@pytest.mark.swift
def test_local_engine_answers_the_training_prompt(local, prepared, tiny_model, tmp_path):
    from swift.infer_engine import InferRequest
    posts = _prepared_posts(prepared, 3)
    t = time.time()
    recs, counts = predict_posts(posts, local, task_instruction(), SPACE, progress=False)
    wall = time.time() - t
    # the engine's own answer to the prepared row's user turn is what predict returns, untouched
    for rec, row in zip(recs, _rows(prepared, 3)):
        direct = local.engine.infer([InferRequest(messages=[row["messages"][0]], images=row["images"])],
                                    local.config, use_tqdm=False)[0].choices[0].message.content
        assert rec["raw"] == direct and rec["parse_ok"] is False and rec["error"] is None
    assert counts["answered"] == 3 and counts["parse_failures"] == 3 and counts["requests"]["done"] == 3
    # and the command line, one post, in a fresh process
    row = _rows(prepared, 1)[0]
    t = time.time()
    r = subprocess.run([sys.executable, "-m", "mcr_swift.cli", "predict", "--engine", "local", "--model",
                        str(tiny_model), "--template", "qwen2_5_vl", "--max-pixels", str(TINY_MAX_PIXELS),
                        "--max-tokens", "16", "--text", row["mcr_sentence"], "--image", row["images"][0],
                        "--id", row["mcr_id"]], cwd=REPO, capture_output=True, text=True, timeout=600)
    cli_wall = time.time() - t
    assert r.returncode == 0, r.stderr[-3000:]
    assert json.loads(r.stdout) == recs[0]
    print(f"\n[predict, local engine] load {local.load_s:.1f} s, 3 posts {wall:.1f} s; CLI one post {cli_wall:.1f} s")


@pytest.fixture(scope="module")
def server(tiny_model, tmp_path_factory):
    from tests._deploy import SwiftDeploy
    with SwiftDeploy(tiny_model, tmp_path_factory.mktemp("deploy"), max_new_tokens=16) as s:
        yield s


@pytest.mark.swift
def test_predict_on_swift_deploy_matches_the_local_engine(server, local, prepared, tmp_path):
    rows = _rows(prepared, 3)
    f = tmp_path / "posts.jsonl"
    f.write_text("".join(json.dumps({"id": r["mcr_id"], "text": r["mcr_sentence"], "images": r["images"]}) + "\n"
                         for r in rows))
    out = tmp_path / "pred.jsonl"
    t = time.time()
    r = subprocess.run([sys.executable, "-m", "mcr_swift.cli", "predict", "--base-url", server.base_url, "--input",
                        str(f), "--out", str(out), "--max-tokens", "16", "--max-pixels", str(TINY_MAX_PIXELS),
                        "--no-progress"], cwd=REPO, capture_output=True, text=True, timeout=600)
    wall = time.time() - t
    assert r.returncode == 0, r.stderr[-3000:]
    got = [x for _, x, _ in iter_jsonl(out)]
    want, _ = predict_posts(_prepared_posts(prepared, 3), local, task_instruction(), SPACE, progress=False)
    # same prompt, same greedy decoding: the served model answers what the in-process engine answers
    assert got == want
    assert "3 posts, 3 answered (3 unparseable, raw text kept)" in r.stderr
    print(f"\n[predict on swift deploy] 3 posts: {wall:.1f} s")


# --------------------------------------------------------------------------- batching (local engine path)
class _BatchFake:
    """A local-engine stand-in: answers from the post text, fails the posts whose text says so."""
    info = {"engine": "fake"}

    def __init__(self, batch_size):
        self.batch_size, self.calls = batch_size, []

    def complete_many(self, items):
        from mcr_swift.endpoint import ChatResult
        self.calls.append([m[0]["content"].rsplit("Sentence: ", 1)[1] for m, _ in items])
        return [RuntimeError("engine broke") if "fail" in m[0]["content"] else
                ChatResult([f'[{{"entity": "{m[0]["content"].rsplit(" ", 1)[1]}", "type": "PER", "bbox": null}}]'],
                           ["stop"]) for m, _ in items]


def test_batches_keep_input_order_and_account_for_every_post(tmp_path):
    _img(tmp_path / "a.jpg")
    texts = ["p0", "p1", "fail p2", "p3", "p4", "p5", "fail p6"]
    posts = [Post(f"id{k}", t, ["a.jpg"], f"in:{k + 1}") for k, t in enumerate(texts)]
    posts.insert(3, Post("noimg", "x", ["gone.jpg"], "in:9"))
    from mcr_swift.evaluation.predict import _check_images
    for p in posts:
        _check_images(p, tmp_path)
    cache = tmp_path / "c.jsonl"
    fake = _BatchFake(3)
    recs, counts = predict_posts(posts, fake, "I", SPACE, cache_path=cache, progress=False)
    assert fake.calls == [["p0", "p1", "fail p2"], ["p3", "p4", "p5"], ["fail p6"]]   # 7 readable posts, 3 a call
    assert [r["id"] for r in recs] == [p.id for p in posts]                           # input order
    assert [r["entities"][0]["entity"] if r["entities"] else None for r in recs] == \
        ["p0", "p1", None, None, "p3", "p4", "p5", None]
    assert recs[2]["error"] == "in:3: RuntimeError: engine broke" and recs[7]["error"].startswith("in:7: ")
    assert "gone.jpg: image not found" in recs[3]["error"]
    assert counts["posts"] == 8 and counts["answered"] == 5 and counts["request_errors"] == 2
    assert counts["image_errors"] == 1 and counts["requests"]["failed"] == 2 and counts["requests"]["done"] == 5
    # resume: only the two failed posts are sent again, in one batch; answers are identical
    fake2 = _BatchFake(8)
    recs2, counts2 = predict_posts(posts, fake2, "I", SPACE, cache_path=cache, progress=False)
    assert fake2.calls == [["fail p2", "fail p6"]] and counts2["requests"]["cached"] == 5
    assert recs2 == recs


@pytest.mark.swift
def test_batched_equals_unbatched_on_the_tiny_model(local, prepared):
    """Greedy decoding: 8 posts in batches of 8 (left-padded) answer exactly what one at a time does."""
    posts = _prepared_posts(prepared, 8)
    old = local.batch_size
    try:
        local.batch_size = 1
        one, c1 = predict_posts(posts, local, task_instruction(), SPACE, progress=False)
        local.batch_size = local.engine.max_batch_size = 8
        eight, c8 = predict_posts(posts, local, task_instruction(), SPACE, progress=False)
    finally:
        local.batch_size = local.engine.max_batch_size = old
    assert [r["id"] for r in eight] == [p.id for p in posts]
    assert eight == one and c8["answered"] == c1["answered"] == 8 and c8["request_errors"] == 0
