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
* `run_jobs`: requests in flight set by an `AdaptiveLimit` (grows while throughput grows and the
  endpoint answers cleanly, backs off on 429 / overload 5xx / timeouts; or pinned with
  ``--concurrency N``; `Concurrency` and docs/pipeline.md#requests-in-flight), a tqdm bar with the
  requests in flight and req/s, and counts of what was cached, done, retried and failed; a Ctrl-C
  stops cleanly and keeps what finished. `plan_jobs` is the plan it shares with ``predict``'s
  local-engine batches (dedupe, count cached, collect what is left).
* A rate-limited request waits what ``Retry-After`` (seconds or an HTTP date; ``retry-after-ms``)
  asks before it is sent again (`retry_after`).
* One run per cache: `ResultCache` holds an exclusive lock (``<cache>.lock``, fcntl) for its lifetime;
  a second run on the same cache stops at once with `CacheLocked` naming the holder (exit 2).
* `to_openai_messages`: an ms-swift row's ``messages`` + ``images`` (``<image>`` tags) as OpenAI
  content parts with the images inline (``data:`` URLs).
"""
from __future__ import annotations

import base64
import hashlib
import json
import mimetypes
import os
import queue
import random
import threading
import time
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

__all__ = ["Endpoint", "ChatResult", "EndpointError", "EmptyAnswer", "RetryPolicy", "chat", "retry_after", "ResultCache",
           "CacheLocked", "cache_key", "Concurrency", "AdaptiveLimit", "plan_jobs", "run_jobs", "RunStats",
           "to_openai_messages", "image_data_url", "add_endpoint_args", "finish_run"]

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


def retry_after(exc: BaseException, now: Optional[float] = None) -> Optional[float]:
    """Seconds an error response asks the client to wait: ``retry-after-ms``, else ``Retry-After`` as
    seconds or an HTTP date (RFC 9110 10.2.3); None when absent or unreadable. Never negative."""
    resp = getattr(exc, "response", None)
    headers = getattr(resp, "headers", None)
    if headers is None:
        return None
    try:
        ms = headers.get("retry-after-ms")
        if ms is not None:
            return max(0.0, float(ms) / 1000.0)
    except (TypeError, ValueError):
        pass
    value = headers.get("retry-after")
    if value is None:
        return None
    value = str(value).strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    from email.utils import parsedate_to_datetime
    try:
        when = parsedate_to_datetime(value).timestamp()
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    return max(0.0, when - (time.time() if now is None else now))


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
        ra = retry_after(e)  # a rate limit that says how long: wait that (capped), else back off
        wait_s = retry.delay(attempt, rng) if ra is None else min(retry.max_delay, ra) * rng.uniform(1.0, 1.1)
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


class CacheLocked(OSError):
    """Another process holds the cache: a second run on it would pay every request again."""


#: Locks this process holds: path -> [file object, users]. A lock is per process (fcntl), so two
#: `ResultCache` objects on one file in one process share it.
_HELD: Dict[str, List[Any]] = {}
_HELD_LOCK = threading.Lock()


def _acquire_lock(path: Path) -> str:
    """Take ``path`` (``<cache>.lock``) exclusively or raise `CacheLocked` naming the holder (pid,
    host, start time written in the file). The kernel drops the lock when its process dies, so a
    killed run's file is taken over with no stale-lock check."""
    import fcntl
    import socket
    key = str(path.resolve())
    with _HELD_LOCK:
        if key in _HELD:
            _HELD[key][1] += 1
            return key
        f = open(path, "a+", encoding="utf-8")
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            f.seek(0)
            holder = f.read().strip() or "another process"
            f.close()
            raise CacheLocked(f"{path}: in use by {holder}; two runs on one cache would pay for every request "
                              f"twice - wait for it to finish or stop it (a killed run's lock is released by "
                              f"the system)") from None
        f.seek(0)
        f.truncate()
        f.write(f"pid {os.getpid()} on {socket.gethostname()} since "
                f"{time.strftime('%Y-%m-%d %H:%M:%S %Z', time.localtime())}\n")
        f.flush()
        _HELD[key] = [f, 1]
        return key


def _release_lock(key: str) -> None:
    with _HELD_LOCK:
        held = _HELD.get(key)
        if held is None:
            return
        held[1] -= 1
        if held[1] <= 0:
            del _HELD[key]
            held[0].close()  # closing the file releases the flock


#: Group syncs of the request cache: an fsync after this many records or this many seconds after the
#: first unsynced one, on a background thread (the paper is silent; docs/decisions.md).
SYNC_EVERY_RECORDS = 64
SYNC_EVERY_SECONDS = 0.2


class ResultCache:
    """Append-only ``key -> record`` store in a JSON-lines file; safe to share between threads.

    Every `put` is written to the file (one ``write`` of the whole line, flushed to the OS) before
    it returns, so a killed process loses nothing it was told was stored, at worst the line being
    written; such a torn last line is dropped on the next open and counted in ``torn``. Syncs to
    disk are grouped (`SYNC_EVERY_RECORDS` records or `SYNC_EVERY_SECONDS` after the first unsynced
    one, on a background thread, and on `close`): a machine crash loses at most that last batch,
    which a rerun asks again. A key already present is never written again (``put`` returns False).
    The cache holds ``<path>.lock`` while open (`CacheLocked` if another process holds it).
    """

    def __init__(self, path, fsync: bool = True, sync_records: int = SYNC_EVERY_RECORDS,
                 sync_seconds: float = SYNC_EVERY_SECONDS, lock: bool = True):
        self.path = Path(path)
        self.fsync = fsync
        self.sync_records, self.sync_seconds = max(1, int(sync_records)), float(sync_seconds)
        self._lock = threading.Lock()
        self._data: Dict[str, Any] = {}
        self.torn = 0
        self.duplicates = 0
        self.syncs = 0
        self._unsynced = 0
        self._first_unsynced = 0.0
        self._file = None
        self._syncer: Optional[threading.Thread] = None
        self._wake = threading.Condition(self._lock)
        self._closed = False
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock_key = _acquire_lock(self.path.with_name(self.path.name + ".lock")) if lock else None
        try:
            self._load()
        except BaseException:
            self.close()
            raise

    def _load(self) -> None:
        if not self.path.exists():
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
        line = (json.dumps({"key": key, "value": value}, ensure_ascii=False) + "\n").encode("utf-8")
        with self._lock:
            if key in self._data:
                return False
            if self._file is None:
                self._file = open(self.path, "ab", buffering=0)  # unbuffered: one write per line
            self._file.write(line)
            self._data[key] = value
            if self.fsync:
                if not self._unsynced:
                    self._first_unsynced = time.monotonic()
                self._unsynced += 1
                if self._syncer is None:
                    self._syncer = threading.Thread(target=self._sync_loop, name="cache-sync", daemon=True)
                    self._syncer.start()
                if self._unsynced >= self.sync_records:
                    self._wake.notify()
            return True

    def _sync_loop(self) -> None:
        with self._lock:
            while not self._closed:
                if not self._unsynced:
                    self._wake.wait()
                    continue
                left = self._first_unsynced + self.sync_seconds - time.monotonic()
                if self._unsynced < self.sync_records and left > 0:
                    self._wake.wait(left)
                    continue
                self._sync_locked()

    def _sync_locked(self) -> None:
        if self._unsynced and self._file is not None:
            os.fsync(self._file.fileno())
            self.syncs += 1
        self._unsynced = 0

    def sync(self) -> None:
        """Sync every record written so far to disk."""
        with self._lock:
            if self.fsync:
                self._sync_locked()

    def close(self) -> None:
        """Sync, close the file and release the lock (the records stay readable with `get`)."""
        with self._lock:
            if self.fsync and self._file is not None:
                self._sync_locked()
            self._closed = True
            self._wake.notify_all()
            if self._file is not None:
                self._file.close()
                self._file = None
        if self._lock_key is not None:
            _release_lock(self._lock_key)
            self._lock_key = None

    def __enter__(self) -> "ResultCache":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self):
        try:
            self.close()
        except Exception:
            pass


# --------------------------------------------------------------------------- requests in flight
#: Requests in flight by default (the paper is silent; docs/decisions.md): adaptive, starting at
#: `DEFAULT_START` and never above `DEFAULT_MAX` unless ``--max-concurrency`` says so.
DEFAULT_START = 8
DEFAULT_MAX = 256
#: Backoff of the limit on an overload signal (multiplicative decrease; additive increase is
#: ``max(1, limit // ADDITIVE_DIV)`` per clean window once the first plateau or overload was seen).
DECREASE = 0.85
ADDITIVE_DIV = 16
#: A window must hold at least this many completions and last this long before it is judged.
MIN_WINDOW = 8
MIN_WINDOW_S = 0.05
#: 5xx answers count as overload when a window has at least `MIN_5XX` of them and they exceed this
#: share of its answers (a rare 500 is noise, not a full server).
OVERLOAD_5XX_SHARE = 0.05
MIN_5XX = 3
#: Windows to hold at a found plateau before probing one additive step again.
PROBE_EVERY = 4


@dataclass(frozen=True)
class Concurrency:
    """How many requests to keep in flight: ``fixed`` pins it; otherwise adaptive from ``start``
    within [1, ``maximum``] (`AdaptiveLimit`)."""
    start: int = DEFAULT_START
    maximum: int = DEFAULT_MAX
    fixed: Optional[int] = None

    @classmethod
    def of(cls, value: Any) -> "Concurrency":
        """An int pins the value (``concurrency=3`` as before); a `Concurrency` is itself."""
        if isinstance(value, Concurrency):
            return value
        if value is None:
            return cls()
        n = max(1, int(value))
        return cls(n, n, n)

    @classmethod
    def for_server(cls, sequences: int, per_request: int = 1, maximum: Optional[int] = None) -> "Concurrency":
        """A server that batches ``sequences`` sequences at once (``swift deploy`` / vLLM: engines x
        max_num_seqs) and requests of ``per_request`` sequences each (``n``): start at
        ceil(sequences / per_request), the requests that fill it, and allow twice that (a queue so
        no engine waits for the client between requests)."""
        start = max(1, -(-int(sequences) // max(1, int(per_request))))
        return cls(start, max(start, int(maximum) if maximum else 2 * start))

    @classmethod
    def from_args(cls, a, per_request: int = 1) -> "Concurrency":
        """From the `add_request_args` flags: ``--concurrency`` pins; ``--server-batch`` sizes the start
        and ceiling from the deploy; ``--max-concurrency`` caps."""
        if getattr(a, "concurrency", None) is not None:
            return cls.of(a.concurrency)
        mx = getattr(a, "max_concurrency", None)
        if getattr(a, "server_batch", None):
            return cls.for_server(a.server_batch, per_request, mx)
        mx = int(mx) if mx else DEFAULT_MAX
        return cls(min(DEFAULT_START, mx), mx)

    def describe(self) -> Dict[str, Any]:
        return {"mode": "fixed" if self.fixed else "adaptive", "start": self.start, "max": self.maximum}


class AdaptiveLimit:
    """The number of requests to keep in flight, adjusted from what the endpoint does (thread-safe).

    Windows: after each change the client counts ``max(limit, MIN_WINDOW)`` answers to requests sent
    under the new limit (over at least ``MIN_WINDOW_S``), takes their rate as limit / mean time in
    flight (Little's law) and compares it with the last window's:

    * a clean window (no retried request) whose rate grew by at least half of what the step
      promises (rate ~ limit below the server's capacity) grows the limit: doubling until the first
      plateau or overload, then ``max(1, limit // ADDITIVE_DIV)`` per window;
    * a clean window that did not grow: the server is full; go back to the limit that got this rate
      and probe one additive step again every `PROBE_EVERY` windows;
    * an overload signal (429, a timeout, a refused or reset connection, or 5xx answers above
      `OVERLOAD_5XX_SHARE` of a window) cuts the limit to ``DECREASE`` x its value at once, at most
      once per window (signals from requests sent before the last cut are not counted again).

    The requests waiting out a ``Retry-After`` or a backoff stay in flight, so a rate limit shrinks the
    number of requests sent as well as the limit. A `Concurrency` with ``fixed`` never changes.
    """

    def __init__(self, spec: Concurrency = Concurrency(), clock: Callable[[], float] = time.monotonic):
        self.spec = spec
        self.fixed = spec.fixed is not None
        self.maximum = max(1, spec.maximum)
        self._limit = max(1, min(spec.start, self.maximum))
        self.clock = clock
        self._lock = threading.Lock()
        self.epoch = 0
        self.slow_start = True
        self.peak = self._limit
        self.increases = self.decreases = 0
        self.overload_cuts = 0  # the decreases an overload signal made (the others: plateaus)
        self.history: List[Tuple[float, int, str]] = [(0.0, self._limit, "start")]
        self._t0 = clock()
        self._reset_window()
        self._prev: Optional[Tuple[int, float]] = None  # (limit, rate) of the last judged window
        self._hold = 0

    @property
    def limit(self) -> int:
        return self._limit

    def _reset_window(self) -> None:
        self._w_started: Optional[float] = None
        self._w_done = 0
        self._w_latency = 0.0
        self._w_5xx = 0
        self._w_retried = 0

    def _set(self, value: int, why: str) -> None:
        """A new limit starts a new epoch (its window counts only requests sent under it); the same
        limit just opens the next window."""
        value = max(1, min(self.maximum, int(value)))
        self._reset_window()
        if value == self._limit:
            return
        if value > self._limit:
            self.increases += 1
        else:
            self.decreases += 1
        self._limit = value
        self.peak = max(self.peak, value)
        self.history.append((round(self.clock() - self._t0, 3), value, why))
        self.epoch += 1

    def done(self, epoch: int, latency: float) -> None:
        """A request sent under ``epoch`` finished with an answer ``latency`` seconds after it was sent."""
        if self.fixed or epoch != self.epoch:  # only requests sent under this limit say what it gives
            return
        with self._lock:
            if epoch != self.epoch:
                return
            now = self.clock()
            if self._w_started is None:
                self._w_started = now
            self._w_done += 1
            self._w_latency += max(1e-6, float(latency))
            if self._w_done < max(self._limit, MIN_WINDOW) or now - self._w_started < MIN_WINDOW_S:
                return
            # Little's law: requests/s = requests in flight / mean time in flight (no bias from answers
            # that arrive in bursts, as a batched server's do)
            rate = self._limit * self._w_done / self._w_latency
            if self._w_5xx >= MIN_5XX and self._w_5xx > OVERLOAD_5XX_SHARE * self._w_done:
                self._overload_locked("5xx")
                return
            clean = not self._w_retried
            prev = self._prev
            self._prev = (self._limit, rate)
            if not clean:
                self._set(self._limit, "unclean window")
                return
            grew = prev is None or (self._limit > prev[0] and
                                    rate >= prev[1] * (1 + 0.5 * (self._limit / prev[0] - 1)))
            if prev is None or grew:
                step = self._limit if self.slow_start else max(1, self._limit // ADDITIVE_DIV)
                self._hold = 0
                self._set(self._limit + step, "throughput grew" if prev else "first window")
            elif self._limit > prev[0]:  # the step bought nothing: back to the limit that got this rate
                self.slow_start = False
                self._hold = 0
                self._set(prev[0], "plateau")
            else:
                self._hold += 1
                if self._hold >= PROBE_EVERY:
                    self._hold = 0
                    self._set(self._limit + max(1, self._limit // ADDITIVE_DIV), "probe")
                else:
                    self._set(self._limit, "hold")

    def signal(self, exc: BaseException, epoch: Optional[int]) -> None:
        """A retried attempt (from `chat`'s ``on_retry``) of a request sent under ``epoch``."""
        if self.fixed:
            return
        kind = overload_kind(exc)
        with self._lock:
            self._w_retried += 1
            if kind == "5xx":
                self._w_5xx += 1
            elif kind is not None and (epoch is None or epoch == self.epoch):
                self._overload_locked(kind)

    def _overload_locked(self, kind: str) -> None:
        self.overload_cuts += 1
        self.slow_start = False
        self._prev = None
        self._set(max(1, int(self._limit * DECREASE)), f"overload ({kind})")

    def describe(self) -> Dict[str, Any]:
        return {**self.spec.describe(), "final": self._limit, "peak": self.peak, "increases": self.increases,
                "decreases": self.decreases, "overload_cuts": self.overload_cuts}


def overload_kind(exc: BaseException) -> Optional[str]:
    """``"429"``, ``"timeout"``, ``"connection"``, ``"5xx"`` for the errors that say the endpoint is
    over its capacity (5xx only in numbers: `AdaptiveLimit`), None for the rest."""
    import openai
    if isinstance(exc, openai.APITimeoutError):
        return "timeout"
    if isinstance(exc, openai.APIConnectionError):
        return "connection"
    if isinstance(exc, openai.APIStatusError):
        if exc.status_code == 429:
            return "429"
        if exc.status_code >= 500:
            return "5xx"
    return None


_JOB = threading.local()  # the epoch of the request a worker thread is running


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
    concurrency: Dict[str, Any] = field(default_factory=dict)
    limiter: Optional[AdaptiveLimit] = field(default=None, repr=False, compare=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def note_retry(self, exc: Any = None, *_: Any) -> None:
        """Count one retried request (thread-safe), and an `EmptyAnswer` among them; usable as
        `chat`'s ``on_retry``. Inside `run_jobs` the retry is also an overload signal for its
        `AdaptiveLimit`."""
        with self._lock:
            self.retries += 1
            self.empty_answers += isinstance(exc, EmptyAnswer)
        if self.limiter is not None and isinstance(exc, BaseException):
            self.limiter.signal(exc, getattr(_JOB, "epoch", None))

    def as_dict(self) -> Dict[str, Any]:
        return {"total": self.total, "cached": self.cached, "done": self.done, "failed": self.failed,
                "retries": self.retries, "empty_answers": self.empty_answers, "interrupted": self.interrupted,
                "concurrency": dict(self.concurrency), "first_errors": self.errors[:10]}


def plan_jobs(jobs: Iterable[Tuple[str, Any]], cache: ResultCache, stats: RunStats) -> List[Tuple[str, Any]]:
    """The request plan: every distinct key once (the same request twice in one run is done once),
    counted in ``stats.total`` and, when already in ``cache``, in ``stats.cached``; returns the
    ``(key, payload)`` pairs still to send, in order."""
    todo: List[Tuple[str, Any]] = []
    seen = set()
    for key, payload in jobs:
        if key in seen:
            continue
        seen.add(key)
        stats.total += 1
        if key in cache:
            stats.cached += 1
        else:
            todo.append((key, payload))
    return todo


def run_jobs(jobs: Iterable[Tuple[str, Any]], work: Callable[[Any], Any], cache: ResultCache, *,
             concurrency: Any = None, desc: str = "requests", progress: bool = True,
             fail_fast: Callable[[BaseException], bool] = lambda e: bool(getattr(e, "fatal", False)),
             stats: Optional[RunStats] = None, limiter: Optional[AdaptiveLimit] = None,
             work_many: Optional[Callable[[List[Any]], List[Any]]] = None, batch_size: int = 1) -> RunStats:
    """Run ``work(payload)`` for every ``(key, payload)`` whose key is not cached (`plan_jobs`), storing
    each result in ``cache`` as soon as it arrives.

    Requests in flight: ``concurrency`` an int pins them (as ``--concurrency N``), a `Concurrency`
    (default: adaptive from 8, at most 256) starts an `AdaptiveLimit`; pass ``limiter`` to carry one
    across runs on the same endpoint. ``work`` raising an exception marks the job failed (counted,
    first errors kept) unless ``fail_fast(exc)`` is true (default: a fatal `EndpointError`, e.g. an
    unknown model), which stops the run and re-raises. Ctrl-C cancels what has not started, waits
    for nothing more, and returns with ``interrupted`` set. Pass ``stats`` to count retries from
    inside ``work`` (``on_retry=stats.note_retry``: this also feeds the limit). A result with a
    ``to_json`` method is stored as its JSON.

    ``work_many`` instead of ``work`` (a local engine, ``predict --engine local``): the payloads go
    ``batch_size`` at a time, in order, on this thread; it returns one result or exception per payload.
    """
    from tqdm import tqdm
    stats = stats if stats is not None else RunStats()
    todo = plan_jobs(jobs, cache, stats)
    limiter = limiter or AdaptiveLimit(Concurrency.of(concurrency))
    stats.limiter = limiter
    bar = tqdm(total=stats.total, initial=stats.cached, desc=desc, disable=not progress, unit="req")

    def record(key: str, exc: Optional[BaseException], res: Any = None) -> None:
        if exc is not None:
            if fail_fast(exc):
                raise exc
            stats.failed += 1
            if "EmptyAnswer" in str(exc):  # the last of its attempts was an empty answer too
                stats.empty_answers += 1
            stats.errors.append(f"{type(exc).__name__}: {exc}")
        else:
            cache.put(key, res.to_json() if hasattr(res, "to_json") else res)
            stats.done += 1
        bar.update(1)

    if work_many is not None:
        size = max(1, int(batch_size))
        try:
            for start in range(0, len(todo), size):
                batch = todo[start:start + size]
                for (key, _), res in zip(batch, work_many([p for _, p in batch])):
                    record(key, res if isinstance(res, BaseException) else None, res)
                bar.set_postfix(failed=stats.failed, refresh=False)
        except KeyboardInterrupt:
            stats.interrupted = True
        finally:
            bar.close()
            cache.sync()
        return stats
    pool = ThreadPoolExecutor(max_workers=limiter.maximum)
    pending: Dict[Any, Tuple[str, int]] = {}
    finished: "queue.SimpleQueue[Any]" = queue.SimpleQueue()  # futures as they finish (no O(n) wait)
    it = iter(todo)

    def run_one(payload: Any, epoch: int) -> Tuple[Any, float]:
        _JOB.epoch = epoch
        t0 = time.monotonic()
        try:
            return work(payload), time.monotonic() - t0
        finally:
            _JOB.epoch = None
    try:
        def fill() -> None:
            while len(pending) < limiter.limit:
                nxt = next(it, None)
                if nxt is None:
                    return
                epoch = limiter.epoch
                fut = pool.submit(run_one, nxt[1], epoch)
                pending[fut] = (nxt[0], epoch)
                fut.add_done_callback(finished.put)

        fill()
        while pending:
            try:
                fut = finished.get(timeout=0.5)  # a timeout keeps Ctrl-C responsive
            except queue.Empty:
                continue
            key, epoch = pending.pop(fut)
            exc = fut.exception()
            res, latency = (None, 0.0) if exc is not None else fut.result()
            record(key, exc, res)
            if exc is None:
                limiter.done(epoch, latency)
            fill()
            bar.set_postfix(in_flight=f"{len(pending)}/{limiter.limit}", failed=stats.failed,
                            retries=stats.retries, refresh=False)
    except KeyboardInterrupt:
        stats.interrupted = True
        for fut in pending:
            fut.cancel()
    finally:
        pool.shutdown(wait=not stats.interrupted, cancel_futures=True)
        bar.close()
        stats.concurrency = limiter.describe()
        stats.limiter = None
        cache.sync()
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
    parser.add_argument("--concurrency", type=positive_int, default=None,
                        help="pin the requests in flight to N (default: adaptive, see --max-concurrency)")
    parser.add_argument("--max-concurrency", type=positive_int, default=None,
                        help=f"most requests in flight of the adaptive limit (default {DEFAULT_MAX}, or twice "
                             "what fills --server-batch)")
    parser.add_argument("--server-batch", type=positive_int, default=None, metavar="SEQUENCES",
                        help="sequences the server batches at once (a `swift deploy` / vLLM: engines x "
                             "max_num_seqs); the adaptive limit starts at what fills it")
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
