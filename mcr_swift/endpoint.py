"""Calling an OpenAI-compatible chat endpoint many times, safely: what MRSI synthesis (App. C), the
CVO sampling filter (App. D.3), the prompting baselines and ``predict`` share.

* `Endpoint`: base URL, model, key and timeout from flags or the usual ``OPENAI_BASE_URL`` /
  ``OPENAI_API_KEY`` / ``OPENAI_MODEL`` variables; with no model given, the server's only model
  (``GET /models``: ``swift deploy`` and ``vllm serve`` serve one) is used.
* `chat`: one request through the official ``openai`` client, with our own retries (why not the
  client's own ``max_retries``: see `Endpoint.client`): API errors that
  can pass (connection refused or reset, timeouts, 408/409/429, 5xx) are retried with exponential
  backoff and jitter; the others (400 bad request, 401, 404 unknown model, ...) fail at once. A
  200 answer with no ``choices`` or a choice whose ``content`` is null is a failed request too
  (`EmptyAnswer`): retried like a server error, never returned (so never cached), counted.
* `ResultCache`: an append-only JSON-lines file of finished requests, keyed by a hash of everything
  that determines the answer (sample, style or task, messages, model, sampling parameters). A
  re-run after a crash, a Ctrl-C or a dead server skips what is cached, so nothing is paid twice
  and no record is written twice; a line cut short by a crash is ignored and counted.
* `run_jobs`: bounded concurrency (a thread pool), a tqdm bar, and counts of what was cached,
  done, retried and failed; a Ctrl-C stops cleanly and keeps what finished.
* `to_openai_messages`: an ms-swift row's ``messages`` + ``images`` (``<image>`` tags) as OpenAI
  content parts with the images inline (``data:`` URLs).
"""
from __future__ import annotations

import base64
import hashlib
import json
import mimetypes
import os
import random
import threading
import time
import sys
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

__all__ = ["Endpoint", "ChatResult", "EndpointError", "EmptyAnswer", "RetryPolicy", "chat", "ResultCache", "cache_key",
           "run_jobs", "RunStats", "to_openai_messages", "image_data_url", "add_endpoint_args", "finish_run"]

#: Statuses worth retrying: request timeout, conflict, rate limit, and every server-side error.
RETRY_STATUS = frozenset({408, 409, 429})


class EndpointError(RuntimeError):
    """A request that did not succeed. ``fatal`` errors (401/403 bad key, 404 unknown model or path)
    will fail for every request, so a run stops on them; the others (400 for one input, retries
    exhausted) fail that request only."""

    def __init__(self, message: str, fatal: bool = False):
        super().__init__(message)
        self.fatal = fatal


#: Statuses that no retry and no other input can fix: stop the run.
FATAL_STATUS = frozenset({401, 403, 404})


class EmptyAnswer(RuntimeError):
    """A 200 answer that carries no answer: no ``choices``, or a choice with ``content: null``."""


def _empty_answer(resp: Any, n: int) -> Optional[str]:
    """Why ``resp`` holds no usable answer, or None when it has choices and each has content (fewer
    than ``n`` choices is an answer: servers that ignore ``n`` are asked again by the caller)."""
    choices = getattr(resp, "choices", None)
    if not choices:
        return "no choices"
    for c in choices:
        msg = getattr(c, "message", None)
        if msg is None or not isinstance(getattr(msg, "content", None), str):
            return f"choice {getattr(c, 'index', '?')} has content null"
    return None


@dataclass(frozen=True)
class Endpoint:
    base_url: str
    model: str
    api_key: str = "EMPTY"
    timeout: float = 120.0

    @classmethod
    def resolve(cls, base_url: Optional[str] = None, model: Optional[str] = None,
                api_key: Optional[str] = None, timeout: Optional[float] = None,
                env: Optional[Mapping[str, str]] = None) -> "Endpoint":
        """Flags first, then ``OPENAI_BASE_URL`` / ``OPENAI_MODEL`` / ``OPENAI_API_KEY``; no model:
        the server's only one. Raises EndpointError naming what is missing or unreachable."""
        env = os.environ if env is None else env
        base_url = base_url or env.get("OPENAI_BASE_URL")
        if not base_url:
            raise EndpointError("no endpoint: pass --base-url (e.g. http://127.0.0.1:8000/v1 for `swift "
                                "deploy` / `vllm serve`) or set OPENAI_BASE_URL")
        api_key = api_key or env.get("OPENAI_API_KEY") or "EMPTY"
        if timeout is None:  # a bad MCR_API_TIMEOUT is a ValueError naming it (argtypes.env_number)
            from .core.argtypes import env_number, positive_float
            timeout = env_number("MCR_API_TIMEOUT", positive_float, env) or 120.0
        model = model or env.get("OPENAI_MODEL")
        if not model:
            model = cls._only_model(base_url, api_key, timeout)
        return cls(base_url.rstrip("/"), model, api_key, timeout)

    @staticmethod
    def _only_model(base_url: str, api_key: str, timeout: float) -> str:
        import openai
        client = openai.OpenAI(base_url=base_url, api_key=api_key, timeout=min(timeout, 30), max_retries=2)
        try:
            ids = [m.id for m in client.models.list().data]
        except openai.APIError as e:
            raise EndpointError(f"cannot list the models of {base_url} ({type(e).__name__}: {e}); is the "
                                f"server running? Pass --model to skip this query") from None
        if len(ids) != 1:
            raise EndpointError(f"{base_url} serves {len(ids)} models {ids[:10]}; choose one with --model")
        return ids[0]

    def client(self):
        import openai
        # Retries are ours, so the client's own are off (max_retries=0). The openai client retries the
        # same failures (connection errors, timeouts, 408/409/429, 5xx) but cannot replace `chat`'s
        # loop without losing tested behaviour: (1) a 200 answer with no choices or content null
        # (`EmptyAnswer`) is not an error to it, so it would be returned and cached; (2) it has no
        # retry hook, so retries and empty answers could not be counted (`RunStats`, the summaries,
        # `ChatResult.retries`; tests/test_api.py, test_synth.py); (3) its backoff is fixed
        # (0.5 s doubling, 8 s cap), so --backoff/--max-backoff (60 s default, for a busy shared
        # server) would do nothing. Two retry layers would multiply attempts, so there is one.
        return openai.OpenAI(base_url=self.base_url, api_key=self.api_key, timeout=self.timeout, max_retries=0)

    def describe(self) -> Dict[str, Any]:
        return {"base_url": self.base_url, "model": self.model, "timeout": self.timeout}


@dataclass(frozen=True)
class RetryPolicy:
    """Exponential backoff: attempt k (0-based) waits ``min(max_delay, base * 2**k)`` times a jitter
    factor in [0.5, 1]. ``retries`` extra attempts after the first."""
    retries: int = 5
    base: float = 1.0
    max_delay: float = 60.0

    def delay(self, attempt: int, rng: random.Random) -> float:
        return min(self.max_delay, self.base * (2 ** attempt)) * rng.uniform(0.5, 1.0)

    @classmethod
    def from_args(cls, a) -> "RetryPolicy":
        """From the `add_request_args` flags."""
        return cls(a.retries, a.backoff, a.max_backoff)


@dataclass
class ChatResult:
    texts: List[str]
    finish_reasons: List[Optional[str]]
    prompt_tokens: int = 0
    completion_tokens: int = 0
    retries: int = 0

    def to_json(self) -> Dict[str, Any]:
        return {"texts": self.texts, "finish_reasons": self.finish_reasons, "prompt_tokens": self.prompt_tokens,
                "completion_tokens": self.completion_tokens}

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> "ChatResult":
        return cls(list(d["texts"]), list(d.get("finish_reasons") or [None] * len(d["texts"])),
                   int(d.get("prompt_tokens") or 0), int(d.get("completion_tokens") or 0))


def _retryable(exc: BaseException) -> bool:
    import openai
    if isinstance(exc, (openai.APIConnectionError, openai.APITimeoutError)):
        return True
    if isinstance(exc, openai.APIStatusError):
        return exc.status_code in RETRY_STATUS or exc.status_code >= 500
    return False


def chat(endpoint: Endpoint, messages: List[Dict[str, Any]], *, n: int = 1, temperature: Optional[float] = None,
         top_p: Optional[float] = None, top_k: Optional[int] = None, max_tokens: Optional[int] = None,
         seed: Optional[int] = None, retry: RetryPolicy = RetryPolicy(), client=None,
         on_retry: Optional[Callable[[BaseException, int, float], None]] = None,
         rng: Optional[random.Random] = None, template_kwargs: Optional[Mapping[str, Any]] = None) -> ChatResult:
    """One chat completion with ``n`` choices. ``top_k`` goes in the request body (vLLM, ms-swift), and so
    does ``template_kwargs`` as ``chat_template_kwargs`` (a row's per-post image budget: ms-swift's server
    hands its ``max_pixels`` to the Qwen-VL image resize, as in training).

    Raises EndpointError for a non-retryable API error or when the retries are exhausted; an
    `EmptyAnswer` (HTTP 200 without choices or with ``content: null``) is retried like a 5xx and
    reported to ``on_retry`` as such.
    """
    import openai
    client = client or endpoint.client()
    rng = rng or random.Random()
    kwargs: Dict[str, Any] = {"model": endpoint.model, "messages": messages, "n": n}
    for k, v in (("temperature", temperature), ("top_p", top_p), ("max_tokens", max_tokens), ("seed", seed)):
        if v is not None:
            kwargs[k] = v
    extra: Dict[str, Any] = {}
    if top_k is not None:
        extra["top_k"] = top_k
    if template_kwargs:
        extra["chat_template_kwargs"] = dict(template_kwargs)
    if extra:
        kwargs["extra_body"] = extra
    attempt = 0
    while True:
        try:
            resp = client.chat.completions.create(**kwargs)
            why = _empty_answer(resp, n)
            if why is None:
                break
            e: BaseException = EmptyAnswer(f"HTTP 200 without an answer ({why})")
        except openai.APIError as api_error:
            e = api_error
            if not _retryable(e):
                fatal = isinstance(e, openai.APIStatusError) and e.status_code in FATAL_STATUS
                raise EndpointError(f"{endpoint.base_url} ({endpoint.model}): {type(e).__name__}: {e}",
                                    fatal) from None
        if attempt >= retry.retries:
            raise EndpointError(f"{endpoint.base_url}: gave up after {attempt + 1} attempts; last error "
                                f"{type(e).__name__}: {e}") from None
        wait_s = retry.delay(attempt, rng)  # retryable: back off, count, try again
        if on_retry is not None:
            on_retry(e, attempt, wait_s)
        time.sleep(wait_s)
        attempt += 1
    choices = sorted(resp.choices or [], key=lambda c: c.index or 0)
    usage = resp.usage
    return ChatResult([c.message.content for c in choices], [c.finish_reason for c in choices],
                      int(getattr(usage, "prompt_tokens", 0) or 0), int(getattr(usage, "completion_tokens", 0) or 0),
                      attempt)


def image_data_url(path: str) -> str:
    """The image file inline as a ``data:`` URL (what OpenAI-compatible vision APIs accept).
    Raises FileNotFoundError / ValueError naming the file."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"{p}: image not found")
    data = p.read_bytes()
    mime = mimetypes.guess_type(p.name)[0]
    if not mime or not mime.startswith("image/"):
        from PIL import Image
        try:
            with Image.open(p) as im:
                mime = Image.MIME.get(im.format or "", "image/jpeg")
        except Exception as e:
            raise ValueError(f"{p}: not a readable image ({e})") from None
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"


def _image_path(im: Any) -> str:
    return im.get("path") if isinstance(im, dict) else str(im)


def to_openai_messages(messages: Sequence[Mapping[str, Any]], images: Sequence[Any] = (),
                       inline_images: bool = True) -> List[Dict[str, Any]]:
    """ms-swift ``messages`` with ``<image>`` tags (one per entry of ``images``, in order) as OpenAI
    chat messages; a turn with images becomes content parts, images inline when ``inline_images``.
    Raises ValueError if tags and images disagree."""
    images = list(images)
    n_tags = sum(str(m.get("content", "")).count("<image>") for m in messages)
    if n_tags != len(images):
        raise ValueError(f"{n_tags} <image> tags but {len(images)} images")
    out, k = [], 0
    for m in messages:
        content = str(m.get("content", ""))
        if "<image>" not in content:
            out.append({"role": m["role"], "content": content})
            continue
        parts: List[Dict[str, Any]] = []
        for i, piece in enumerate(content.split("<image>")):
            if i:
                path = _image_path(images[k])
                url = image_data_url(path) if inline_images else path
                parts.append({"type": "image_url", "image_url": {"url": url}})
                k += 1
            if piece:
                parts.append({"type": "text", "text": piece})
        out.append({"role": m["role"], "content": parts})
    return out


def cache_key(**fields: Any) -> str:
    """A stable hash of everything that determines an answer (JSON with sorted keys)."""
    blob = json.dumps(fields, sort_keys=True, ensure_ascii=False, default=str)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


class ResultCache:
    """Append-only ``key -> record`` store in a JSON-lines file; safe to share between threads.

    Every `put` is written and flushed (and fsync'ed) before it returns, so a crash loses at most the
    line being written; such a torn last line is dropped on the next open and counted in ``torn``.
    A key already present is never written again (``put`` returns False).
    """

    def __init__(self, path, fsync: bool = True):
        self.path = Path(path)
        self.fsync = fsync
        self._lock = threading.Lock()
        self._data: Dict[str, Any] = {}
        self.torn = 0
        self.duplicates = 0
        self._load()

    def _load(self) -> None:
        if not self.path.exists():
            self.path.parent.mkdir(parents=True, exist_ok=True)
            return
        good_end = 0
        with open(self.path, "rb") as f:
            for line in f:
                try:
                    rec = json.loads(line) if line.endswith(b"\n") else None
                    key = rec["key"]
                except Exception:
                    rec = None
                if rec is None:
                    self.torn += 1
                    break
                if key in self._data:
                    self.duplicates += 1
                else:
                    self._data[key] = rec["value"]
                good_end += len(line)
        if self.torn:  # cut the torn tail so appends start on a clean line
            with open(self.path, "r+b") as f:
                f.truncate(good_end)

    def __contains__(self, key: str) -> bool:
        return key in self._data

    def __len__(self) -> int:
        return len(self._data)

    def get(self, key: str, default: Any = None) -> Any:
        return self._data.get(key, default)

    def put(self, key: str, value: Any) -> bool:
        line = json.dumps({"key": key, "value": value}, ensure_ascii=False) + "\n"
        with self._lock:
            if key in self._data:
                return False
            with open(self.path, "a", encoding="utf-8") as f:
                f.write(line)
                f.flush()
                if self.fsync:
                    os.fsync(f.fileno())
            self._data[key] = value
            return True


@dataclass
class RunStats:
    total: int = 0
    cached: int = 0
    done: int = 0
    failed: int = 0
    retries: int = 0
    empty_answers: int = 0
    interrupted: bool = False
    errors: List[str] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def note_retry(self, exc: Any = None, *_: Any) -> None:
        """Count one retried request (thread-safe), and an `EmptyAnswer` among them; usable as
        `chat`'s ``on_retry``."""
        with self._lock:
            self.retries += 1
            self.empty_answers += isinstance(exc, EmptyAnswer)

    def as_dict(self) -> Dict[str, Any]:
        return {"total": self.total, "cached": self.cached, "done": self.done, "failed": self.failed,
                "retries": self.retries, "empty_answers": self.empty_answers, "interrupted": self.interrupted,
                "first_errors": self.errors[:10]}


def run_jobs(jobs: Iterable[Tuple[str, Any]], work: Callable[[Any], Any], cache: ResultCache, *,
             concurrency: int = 8, desc: str = "requests", progress: bool = True,
             fail_fast: Callable[[BaseException], bool] = lambda e: bool(getattr(e, "fatal", False)),
             stats: Optional[RunStats] = None) -> RunStats:
    """Run ``work(payload)`` for every ``(key, payload)`` whose key is not cached, ``concurrency`` at a
    time, storing each result in ``cache`` as soon as it arrives.

    ``work`` raising an exception marks the job failed (counted, first errors kept) unless
    ``fail_fast(exc)`` is true (default: a fatal `EndpointError`, e.g. an unknown model), which stops
    the run and re-raises. Ctrl-C
    cancels what has not started, waits for nothing more, and returns with ``interrupted`` set.
    Pass ``stats`` to count retries from inside ``work`` (``on_retry=stats.note_retry``). A result
    with a ``to_json`` method is stored as its JSON.
    """
    from tqdm import tqdm
    stats = stats if stats is not None else RunStats()
    todo: List[Tuple[str, Any]] = []
    seen = set()
    for key, payload in jobs:
        if key in seen:  # the same request twice in one run: do it once
            continue
        seen.add(key)
        stats.total += 1
        if key in cache:
            stats.cached += 1
        else:
            todo.append((key, payload))
    bar = tqdm(total=stats.total, initial=stats.cached, desc=desc, disable=not progress, unit="req")
    pool = ThreadPoolExecutor(max_workers=max(1, int(concurrency)))
    pending = {}
    it = iter(todo)
    try:
        def submit_next() -> bool:
            nxt = next(it, None)
            if nxt is None:
                return False
            pending[pool.submit(work, nxt[1])] = nxt[0]
            return True

        for _ in range(max(1, int(concurrency))):
            if not submit_next():
                break
        while pending:
            finished, _ = wait(list(pending), return_when=FIRST_COMPLETED)
            for fut in finished:
                key = pending.pop(fut)
                exc = fut.exception()
                if exc is not None:
                    if fail_fast(exc):
                        raise exc
                    stats.failed += 1
                    if "EmptyAnswer" in str(exc):  # the last of its attempts was an empty answer too
                        stats.empty_answers += 1
                    stats.errors.append(f"{type(exc).__name__}: {exc}")
                else:
                    res = fut.result()
                    value = res.to_json() if hasattr(res, "to_json") else res
                    cache.put(key, value)
                    stats.done += 1
                bar.update(1)
                bar.set_postfix(failed=stats.failed, retries=stats.retries, refresh=False)
                submit_next()
    except KeyboardInterrupt:
        stats.interrupted = True
        for fut in pending:
            fut.cancel()
    finally:
        pool.shutdown(wait=not stats.interrupted, cancel_futures=True)
        bar.close()
    return stats


def add_endpoint_args(parser, prefix: str = "", what: str = "the endpoint") -> None:
    """``--{prefix}base-url/model/api-key`` flags (defaults: the OPENAI_* variables)."""
    p = f"--{prefix}" if prefix else "--"
    parser.add_argument(f"{p}base-url", default=None,
                        help=f"OpenAI-compatible base URL of {what} (default $OPENAI_BASE_URL)")
    parser.add_argument(f"{p}model", default=None,
                        help=f"model name at {what} (default $OPENAI_MODEL, else the server's only model)")
    parser.add_argument(f"{p}api-key", default=None, help="API key (default $OPENAI_API_KEY, else 'EMPTY')")


def add_request_args(parser, max_tokens: int, temperature: float,
                     seed_help: str = "sent with every request (servers that honour it)") -> None:
    """Request, decoding and retry flags shared by the commands that call an endpoint (``synth``,
    ``cvo-filter``, ``baselines``, ``predict``); `RetryPolicy.from_args` reads the retry ones."""
    from .core.argtypes import env_number, non_negative_float, non_negative_int, positive_float, positive_int
    # the MCR_API_TIMEOUT default is read (and range-checked, naming the variable) when the parser is built
    parser.add_argument("--timeout", type=positive_float, default=env_number("MCR_API_TIMEOUT", positive_float),
                        help="seconds per request (default $MCR_API_TIMEOUT, else 120)")
    parser.add_argument("--concurrency", type=positive_int, default=8, help="requests in flight")
    parser.add_argument("--retries", type=non_negative_int, default=5, help="extra attempts per request on API errors")
    parser.add_argument("--backoff", type=non_negative_float, default=1.0,
                        help="first backoff in seconds (doubles each retry)")
    parser.add_argument("--max-backoff", type=non_negative_float, default=60.0)
    parser.add_argument("--temperature", type=non_negative_float, default=temperature)
    parser.add_argument("--max-tokens", type=positive_int, default=max_tokens)
    parser.add_argument("--seed", type=int, default=0, help=seed_help)  # any integer is a seed
    parser.add_argument("--no-progress", action="store_true")


def file_digest(path: str) -> str:
    """SHA-256 of a file's bytes (cache keys follow image contents, not names)."""
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def finish_run(complete: bool, interrupted: bool, done: str, what: str = "requests") -> int:
    """The end of a command that pays for requests (``synth``, ``cvo-filter``, ``baselines``): ``done``
    on stdout and 0 when every request has its answer; else the resume advice on stderr and 130 (a
    Ctrl-C) or 3 (some requests failed)."""
    if complete:
        print(done)
        return 0
    print(f"incomplete: some {what} have no answer yet (see the summary); re-run the same command to resume "
          "- finished requests are cached and not sent again", file=sys.stderr)
    return 130 if interrupted else 3
