"""``mcr-swift predict``: grounded entities of new posts from a trained model, as JSON.

A post is a text and one or more images already on disk (paths or ``file://`` URLs)::

    mcr-swift predict --engine local --model OUT/checkpoint-N-merged --template qwen2_5_vl \\
        --text "Kevin Durant joins the Warriors" --image kd.jpg
    mcr-swift predict --base-url http://127.0.0.1:8000/v1 --input posts.jsonl --out predictions.jsonl

``--input`` reads JSON lines ``{"id": ..., "text": "...", "images": ["a.jpg", ...]}`` (relative image
paths are taken from the JSONL's folder). The model gets the row format it was trained on: the MCR
task instruction (``prompts/task_instruction.txt`` with the family's box-format line, App. C.1) and
``Sentence: <text>`` (several images are numbered ``Image 1: <image>`` ...; see `mcr_swift.data.rows`).

Backends: ``--engine local`` runs ms-swift's in-process ``TransformersEngine`` on ``--model DIR``
(``--adapters DIR`` for a LoRA checkpoint, ``--template`` for a bare Qwen2.5-VL folder), posts sent
``--batch-size`` at a time (``--infer-backend vllm``: its ``VllmEngine``, on a GPU); otherwise
(``--base-url`` or ``OPENAI_BASE_URL``) any OpenAI-compatible endpoint -- ``swift deploy``,
``vllm serve`` -- through `mcr_swift.endpoint` (retries, bounded concurrency, on-disk cache: a JSONL run
resumes).

Each post gives ``{"id", "entities": [{"entity", "type", "bbox"}], "raw", "parse_ok", "error"}``:
``bbox`` is ``[x1, y1, x2, y2]`` in pixels of the post's first (original) image, mapped back from the
model's coordinate space (`mcr_swift.core.coords.CoordinateSpace`: ``--family``, ``--max-pixels``,
``--min-pixels`` must match the server's resize settings), or null. ``raw`` always keeps the model's
text; an answer the parser cannot read gives ``parse_ok: false`` and no entities. An unreadable
image or a failed request names the file or URL in ``error``: a single post then exits 2; a JSONL run
records it for that post, counts it, and exits 3 (re-run to resume) if requests failed.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import sys
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

from ..core.argtypes import positive_int
from ..core.coords import FAMILIES, SPACE_FLAGS, CoordinateSpace, add_space_args, space_from_args
from ..files import refuse_overwriting_inputs
from ..jsonl import iter_jsonl, write_json_atomic, write_jsonl_atomic

__all__ = ["ImageError", "Post", "resolve_image", "image_size", "read_posts", "answer_entities", "post_messages",
           "LocalBackend", "ApiBackend", "DEFAULT_BATCH_SIZE", "predict_posts", "describe_space",
           "main"]

#: Decoding for predictions: the paper is silent (App. E.4 gives only CVO's rollout sampling); greedy
#: answers are reproducible, and the reasoning needs room.
DEFAULT_TEMPERATURE = 0.0
DEFAULT_MAX_TOKENS = 2048
#: Posts per engine call of the local engine (``--batch-size``); the paper is silent.
DEFAULT_BATCH_SIZE = 8
INFER_BACKENDS = ("transformers", "vllm")
_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")


class ImageError(ValueError):
    """An image that is not a local path / ``file://`` URL, is missing, or cannot be decoded."""


@dataclass
class Post:
    id: Any                               # as given (string or integer)
    text: str
    images: List[str]                     # as given
    where: str                            # "file:line" or "--image"
    paths: List[str] = field(default_factory=list)        # resolved local files
    sizes: List[Tuple[int, int]] = field(default_factory=list)
    error: Optional[str] = None


def resolve_image(ref: str, base: Optional[Path] = None) -> Path:
    """A local path or ``file://`` URL as an absolute path (relative paths against ``base``)."""
    if _URL.match(ref):
        u = urllib.parse.urlparse(ref)
        if u.scheme.lower() != "file":
            raise ImageError(f"{ref}: only local paths and file:// URLs are read; download {u.scheme} images first")
        if u.netloc not in ("", "localhost"):
            raise ImageError(f"{ref}: a file:// URL on another host ({u.netloc}) cannot be read")
        path = Path(urllib.request.url2pathname(u.path))
    else:
        path = Path(ref).expanduser()
        if not path.is_absolute() and base is not None:
            path = base / path
    return path.absolute()


def image_size(path: Path) -> Tuple[int, int]:
    """(width, height) of a decodable image file. Raises ImageError naming the file."""
    from PIL import Image
    if not path.is_file():
        raise ImageError(f"{path}: image not found")
    try:
        with Image.open(path) as im:
            im.load()
            return im.size
    except Exception as e:  # PIL raises many types for bad files
        raise ImageError(f"{path}: not a readable image ({type(e).__name__}: {e})") from None


def _check_images(post: Post, base: Optional[Path]) -> None:
    """Fill ``paths``/``sizes`` or set ``error``."""
    try:
        for ref in post.images:
            p = resolve_image(ref, base)
            post.sizes.append(image_size(p))
            post.paths.append(str(p))
    except ImageError as e:
        post.error = f"{post.where}: {e}"


def read_posts(path) -> List[Post]:
    """Posts of a JSONL file, validated: ``id`` (string or integer, unique), ``text`` (string),
    ``images`` (non-empty list of strings). Raises ValueError naming ``file:line`` and the field."""
    posts: List[Post] = []
    seen: Dict[str, int] = {}
    for no, row, _ in iter_jsonl(path):
        where = f"{path}:{no}"
        pid = row.get("id")
        if isinstance(pid, bool) or not isinstance(pid, (str, int)) or str(pid) == "":
            raise ValueError(f"{where}: 'id' must be a non-empty string or an integer, got {pid!r:.60}")
        text = row.get("text")
        if not isinstance(text, str):
            raise ValueError(f"{where}: 'text' must be a string, got {type(text).__name__}")
        images = row.get("images")
        if not isinstance(images, list) or not images or not all(isinstance(i, str) and i for i in images):
            raise ValueError(f"{where}: 'images' must be a non-empty list of image paths, got {images!r:.80}")
        if str(pid) in seen:
            raise ValueError(f"{where}: id {pid!r} already used on line {seen[str(pid)]}")
        seen[str(pid)] = no
        posts.append(Post(pid, text, list(images), where))
    return posts


def answer_entities(text: Any, space: Optional[CoordinateSpace], size: Optional[Tuple[int, int]]):
    """Parse a model answer; boxes mapped to original pixels of an image of ``size``.

    ``space`` None: the answer already uses original pixels (``--box-space original``). Returns
    (``[{"entity", "type", "bbox"}]``, `ParseResult`); never raises on model output.
    """
    from ..core.parser import completion_text, parse_answer
    extent = None
    if size is not None:
        extent = space.model_extent(size) if space is not None else (float(size[0]), float(size[1]))
    res = parse_answer(completion_text(text), extent=extent)
    out = []
    for e in res.entities:
        box = e.box
        if box is not None and space is not None and size is not None:
            box = space.from_model(box, size)
        out.append({"entity": e.text, "type": e.type,
                    "bbox": None if box is None else [round(float(v), 2) for v in box]})
    return out, res


def post_messages(text: str, n_images: int, instruction: str) -> List[Dict[str, str]]:
    """The user turn of a post in the trained row format (`mcr_swift.data.rows.user_content`)."""
    from ..data.rows import user_content
    from ..core.entities import Sample
    sample = Sample("post", text.split(" "), (), ("",) * n_images)  # split(" ") joins back to ``text``
    return [{"role": "user", "content": user_content(sample, instruction)}]


class LocalBackend:
    """ms-swift's in-process engine, posts sent ``batch_size`` at a time.

    ``infer_backend``: ``transformers`` (ms-swift's ``TransformersEngine``, CPU or GPU, padded batches
    of ``max_batch_size``) or ``vllm`` (``VllmEngine``, GPU only, ``max_num_seqs`` = ``batch_size``).
    """

    concurrency = 1

    def __init__(self, model: str, adapters: Sequence[str] = (), template: Optional[str] = None,
                 max_tokens: int = DEFAULT_MAX_TOKENS, temperature: float = DEFAULT_TEMPERATURE,
                 seed: Optional[int] = None, batch_size: int = DEFAULT_BATCH_SIZE,
                 infer_backend: str = "transformers"):
        for what, d in [("--model", model)] + [("--adapters", a) for a in adapters]:
            if not Path(d).is_dir():  # never let ms-swift try a hub download
                raise RuntimeError(f"{what} {d}: not a directory (give the folder of a trained model, or use "
                                   f"--base-url for a served one)")
        if batch_size < 1:
            raise RuntimeError(f"--batch-size must be at least 1, got {batch_size}")
        if infer_backend not in INFER_BACKENDS:
            raise RuntimeError(f"--infer-backend {infer_backend}: choose one of {', '.join(INFER_BACKENDS)}")
        from swift.infer_engine import RequestConfig
        self.batch_size = int(batch_size)
        try:
            if infer_backend == "vllm":  # GPU only; not exercised by the CPU tests
                from swift.infer_engine import VllmEngine
                self.engine = VllmEngine(model, adapters=list(adapters) or None, template_type=template,
                                         max_num_seqs=self.batch_size, seed=seed)
            else:
                from swift.infer_engine import TransformersEngine
                self.engine = TransformersEngine(model, adapters=list(adapters) or None, template_type=template,
                                                 max_batch_size=self.batch_size)
        except Exception as e:
            hint = "" if template else " (a bare Qwen2.5-VL folder needs --template qwen2_5_vl)"
            raise RuntimeError(f"cannot load the local model {model}: {type(e).__name__}: {e}{hint}") from None
        self.config = RequestConfig(max_tokens=max_tokens, temperature=temperature, seed=seed)
        # batch_size is not in ``info`` (it keys the cache): greedy answers do not depend on it, so a
        # run resumed with another batch size reuses what is cached
        self.info = {"engine": "local", "model": str(Path(model).resolve()),
                     "adapters": [str(Path(a).resolve()) for a in adapters], "template": template,
                     "max_tokens": max_tokens, "temperature": temperature, "seed": seed}
        self.infer_backend = infer_backend

    @staticmethod
    def _result(resp):
        from ..endpoint import ChatResult
        if isinstance(resp, BaseException):
            return resp
        u = resp.usage
        return ChatResult([c.message.content or "" for c in resp.choices], [c.finish_reason for c in resp.choices],
                          int(getattr(u, "prompt_tokens", 0) or 0), int(getattr(u, "completion_tokens", 0) or 0))

    def complete_many(self, items: Sequence[Tuple[List[Dict[str, Any]], Sequence[str]]]) -> List[Any]:
        """One engine call for ``items`` (``(messages, images)`` pairs): a `ChatResult` or the exception
        per item, in order. If the batch call itself fails, each item is retried alone, so one bad
        post costs only its own answer."""
        from swift.infer_engine import InferRequest
        reqs = [InferRequest(messages=m, images=list(im)) for m, im in items]
        try:
            resps = self.engine.infer(reqs, self.config, use_tqdm=False)
            if len(resps) != len(reqs):
                raise RuntimeError(f"the engine answered {len(resps)} of {len(reqs)} requests")
        except KeyboardInterrupt:
            raise
        except Exception as e:
            if len(reqs) == 1:
                return [e]
            resps = []
            for r in reqs:
                try:
                    resps.append(self.engine.infer([r], self.config, use_tqdm=False)[0])
                except KeyboardInterrupt:
                    raise
                except Exception as e1:
                    resps.append(e1)
        return [self._result(r) for r in resps]

    def complete(self, messages: List[Dict[str, Any]], images: Sequence[str], on_retry=None):
        res = self.complete_many([(messages, images)])[0]
        if isinstance(res, BaseException):
            raise res
        return res


class ApiBackend:
    """An OpenAI-compatible endpoint through `mcr_swift.endpoint.chat` (images inline as data URLs)."""

    def __init__(self, endpoint, *, concurrency: Any = None, retry=None, max_tokens: int = DEFAULT_MAX_TOKENS,
                 temperature: float = DEFAULT_TEMPERATURE, seed: Optional[int] = None):
        from ..endpoint import RetryPolicy
        self.endpoint, self.concurrency = endpoint, concurrency
        self.retry = retry or RetryPolicy()
        self.max_tokens, self.temperature, self.seed = max_tokens, temperature, seed
        self.client = endpoint.client()
        self.info = {"engine": "api", **endpoint.describe(), "max_tokens": max_tokens, "temperature": temperature,
                     "seed": seed}

    def complete(self, messages: List[Dict[str, Any]], images: Sequence[str], on_retry=None):
        from ..endpoint import chat, to_openai_messages
        return chat(self.endpoint, to_openai_messages(messages, images), temperature=self.temperature,
                    max_tokens=self.max_tokens, seed=self.seed, retry=self.retry, client=self.client,
                    on_retry=on_retry)


def _record(post: Post, text: Optional[str], space: Optional[CoordinateSpace],
            error: Optional[str] = None) -> Dict[str, Any]:
    if text is None:
        return {"id": post.id, "entities": [], "raw": None, "parse_ok": False, "error": error or post.error}
    entities, res = answer_entities(text, space, post.sizes[0] if post.sizes else None)
    return {"id": post.id, "entities": entities, "raw": text, "parse_ok": res.ok, "error": None}


def predict_posts(posts: Sequence[Post], backend, instruction: str, space: Optional[CoordinateSpace], *,
                  cache_path: Optional[Path] = None, progress: bool = True) -> Tuple[List[Dict[str, Any]], Dict]:
    """Answer every post whose images are readable; returns (records in input order, counts).

    With ``cache_path`` finished answers are kept on disk (keyed by post, text, image contents,
    instruction and backend), so a re-run only sends what is missing. A failed request leaves the
    post's record with ``error`` set (the message names the endpoint).
    """
    import tempfile

    from ..endpoint import ChatResult, EndpointError, ResultCache, RunStats, cache_key, file_digest, run_jobs
    tmp = None
    if cache_path is None:
        tmp = tempfile.TemporaryDirectory(prefix="mcr-predict-")
        cache_path = Path(tmp.name) / "cache.jsonl"
    cache = ResultCache(cache_path)
    st = RunStats()
    keys: Dict[int, str] = {}
    for i, p in enumerate(posts):
        if p.error is None:
            keys[i] = cache_key(kind="mcr-predict", post=str(p.id), text=p.text, instruction=instruction,
                                images=[file_digest(x) for x in p.paths], backend=backend.info)
    errors: Dict[str, str] = {}

    def work(i: int):
        p = posts[i]
        try:
            return backend.complete(post_messages(p.text, len(p.paths), instruction), p.paths,
                                    on_retry=st.note_retry)
        except EndpointError as e:
            if not e.fatal:
                errors[keys[i]] = f"{p.where}: {e}"
            raise
        except Exception as e:  # a local-engine failure on this post
            errors[keys[i]] = f"{p.where}: {type(e).__name__}: {e}"
            raise
    def work_many(batch: List[int]) -> List[Any]:  # local engine: one engine call per batch of posts
        results = backend.complete_many([(post_messages(posts[i].text, len(posts[i].paths), instruction),
                                          posts[i].paths) for i in batch])
        for i, res in zip(batch, results):
            if isinstance(res, BaseException):
                errors[keys[i]] = f"{posts[i].where}: {type(res).__name__}: {res}"
        return results
    try:  # the endpoint: adaptive (or pinned) requests in flight; the local engine: batches, in order
        batched = hasattr(backend, "complete_many")
        run_jobs(((keys[i], i) for i in keys), work, cache, concurrency=getattr(backend, "concurrency", 1),
                 desc="predict",
                 progress=progress, stats=st, work_many=work_many if batched else None,
                 batch_size=getattr(backend, "batch_size", 1))
        records, failed = [], 0
        for i, p in enumerate(posts):
            value = cache.get(keys[i]) if i in keys else None
            error = None
            if value is None and i in keys:
                failed += 1
                error = errors.get(keys[i], f"{p.where}: no answer (interrupted)")
            text = None if value is None else (ChatResult.from_json(value).texts or [""])[0]
            records.append(_record(p, text, space, error))
    finally:
        cache.close()
        if tmp is not None:
            tmp.cleanup()
    counts = {"posts": len(posts), "answered": sum(r["raw"] is not None for r in records),
              "parse_failures": sum(r["raw"] is not None and not r["parse_ok"] for r in records),
              "image_errors": len(posts) - len(keys), "request_errors": failed,
              "entities": sum(len(r["entities"]) for r in records),
              "requests": st.as_dict()}
    return records, counts


# --------------------------------------------------------------------------- coordinate-space flags
def describe_space(space: Optional[CoordinateSpace]) -> Dict[str, Any]:
    if space is None:
        return {"box_space": "original"}
    return {"box_space": "model", "family": space.family, "min_pixels": space.min_pixels,
            "max_pixels": space.max_pixels, "template_max_pixels": space.template_max_pixels}


# --------------------------------------------------------------------------- command line
#: The resize variables ms-swift's engine reads (``MCR_TEMPLATE_MAX_PIXELS`` is mcr-swift's own).
RESIZE_ENV = ("MAX_PIXELS", "MIN_PIXELS")


def _engine_resize_env(a) -> None:
    """ms-swift's in-process engine (qwen-vl-utils) reads the resize bounds only from this process's
    environment: the flags go there, as ms-swift's own variables (a flag clears the token count that
    would win over it). The one place a command writes os.environ (tests/test_layout.py)."""
    for attr, var, shadow in SPACE_FLAGS:
        if var in RESIZE_ENV and getattr(a, attr) is not None:
            os.environ[var] = str(getattr(a, attr))
            if shadow:
                os.environ.pop(shadow, None)


def _fail(msg: str) -> int:
    print(f"mcr-swift predict: {msg}", file=sys.stderr)
    return 2


def main(argv: Optional[List[str]] = None) -> int:
    from ..endpoint import Concurrency, Endpoint, EndpointError, RetryPolicy, add_endpoint_args, add_request_args
    from ..prompts import task_instruction
    p = argparse.ArgumentParser(prog="mcr-swift predict", description=__doc__.splitlines()[0])
    src = p.add_argument_group("input (one post, or a JSONL of posts)")
    src.add_argument("--text", default=None, help="the post's text")
    src.add_argument("--image", action="append", default=None, help="an image path or file:// URL (repeatable)")
    src.add_argument("--id", default="post", help="id of the --text post in the output")
    src.add_argument("--input", default=None, help='JSONL of {"id", "text", "images": [...]} per line')
    p.add_argument("--out", default=None, help="output JSONL (required with --input; default for one post: stdout)")
    p.add_argument("--engine", choices=["local", "api"], default=None,
                   help="local: ms-swift in-process engine on --model DIR; api: an OpenAI-compatible endpoint "
                        "(default: api if --base-url/$OPENAI_BASE_URL is set, else local)")
    add_endpoint_args(p, "", "the endpoint (api), or the model folder (local)")
    p.add_argument("--adapters", action="append", default=[], help="LoRA checkpoint folder (local engine)")
    p.add_argument("--template", default=None, help="ms-swift template (local engine), e.g. qwen2_5_vl")
    p.add_argument("--batch-size", type=positive_int, default=DEFAULT_BATCH_SIZE,
                   help=f"posts per engine call (local engine; default {DEFAULT_BATCH_SIZE}); endpoints use "
                        "--concurrency")
    p.add_argument("--infer-backend", choices=INFER_BACKENDS, default="transformers",
                   help="local engine: ms-swift's TransformersEngine (CPU/GPU) or VllmEngine (GPU)")
    p.add_argument("--prompt", default="task_instruction",
                   help="instruction file in prompts/ (default: the MCR task instruction the model was trained on)")
    add_space_args(p)
    p.add_argument("--cache", default=None, help="request cache of a JSONL run (default <out>.cache.jsonl)")
    add_request_args(p, DEFAULT_MAX_TOKENS, DEFAULT_TEMPERATURE, "sent with every request (servers that honour it)")
    a = p.parse_args(argv)
    if (a.input is None) == (a.text is None):
        p.error("give either --text with --image, or --input posts.jsonl")
    if a.text is not None and not a.image:
        p.error("--text needs at least one --image")
    if a.input is not None and (a.image or not a.out):
        p.error("--input needs --out (and takes its images from the file, not --image)")
    if a.out:
        out_path = Path(a.out)
        refuse_overwriting_inputs(
            [("--input", a.input)] + [("--image", i) for i in a.image or []],
            [("--out", out_path), ("--out's summary", out_path.with_name(out_path.name + ".summary.json")),
             ("--cache", a.cache or out_path.with_name(out_path.name + ".cache.jsonl"))])
    family = a.template if a.template in FAMILIES else None
    space = space_from_args(a, family)
    instruction = task_instruction(space.family, a.prompt)

    if a.input is not None:
        try:
            posts = read_posts(a.input)
        except (OSError, ValueError) as e:
            return _fail(str(e))
        base = Path(a.input).resolve().parent
    else:
        posts = [Post(str(a.id), a.text, list(a.image), "--image")]
        base = None
    for post in posts:
        _check_images(post, base)
    if a.input is None and posts[0].error:
        return _fail(posts[0].error)

    engine = a.engine or ("api" if (a.base_url or os.environ.get("OPENAI_BASE_URL")) else "local")
    try:
        if engine == "local":
            if not a.model:
                p.error("--engine local needs --model DIR (or give --base-url for an endpoint)")
            _engine_resize_env(a)
            backend = LocalBackend(a.model, a.adapters, a.template, a.max_tokens, a.temperature, a.seed,
                                   batch_size=a.batch_size, infer_backend=a.infer_backend)
        else:
            ep = Endpoint.resolve(a.base_url, a.model, a.api_key, a.timeout)
            backend = ApiBackend(ep, concurrency=Concurrency.from_args(a), retry=RetryPolicy.from_args(a),
                                 max_tokens=a.max_tokens, temperature=a.temperature, seed=a.seed)
    except (EndpointError, RuntimeError) as e:
        return _fail(str(e))

    out = Path(a.out) if a.out else None
    cache = Path(a.cache) if a.cache else (out.with_name(out.name + ".cache.jsonl") if a.input else None)
    try:
        records, counts = predict_posts(posts, backend, instruction, space, cache_path=cache,
                                        progress=not a.no_progress and a.input is not None)
    except EndpointError as e:  # fatal for every request (unknown model, bad key)
        return _fail(f"stopped: {e}")
    if a.input is None:
        rec = records[0]
        if rec["error"]:
            return _fail(rec["error"])
        if out:
            write_jsonl_atomic(out, records)
        else:
            print(json.dumps(rec, ensure_ascii=False))
        if not rec["parse_ok"]:
            print("mcr-swift predict: the answer could not be parsed; the raw text is in 'raw'", file=sys.stderr)
        return 0
    write_jsonl_atomic(out, records)
    summary = {**counts, "backend": backend.info, "batch_size": getattr(backend, "batch_size", None), "space": describe_space(space), "prompt": a.prompt,
               "input": a.input, "out": str(out), "cache": str(cache)}
    write_json_atomic(out.with_name(out.name + ".summary.json"), summary)
    print(f"mcr-swift predict: {counts['posts']} posts, {counts['answered']} answered "
          f"({counts['parse_failures']} unparseable, raw text kept), {counts['image_errors']} image errors, "
          f"{counts['request_errors']} request errors, {counts['entities']} entities -> {out}", file=sys.stderr)
    errors = [r["error"] for r in records if r["error"]]
    for e in errors[:10]:
        print(f"  {e}", file=sys.stderr)
    if len(errors) > 10:
        print(f"  ... and {len(errors) - 10} more (see 'error' in {out})", file=sys.stderr)
    if counts["requests"]["interrupted"]:
        return 130
    if counts["request_errors"]:
        print("some requests failed (see 'error'); re-run the same command to resume - answered posts are "
              "cached and not sent again", file=sys.stderr)
        return 3
    return 0


if __name__ == "__main__":
    sys.exit(main())
