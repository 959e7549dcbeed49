"""A scripted OpenAI-compatible server on localhost (stdlib only) for tests that need exact control:
injected failures, answers that agree or disagree with the gold, a measured concurrency peak.
The real-server tests use ``swift deploy`` of the tiny model instead."""
from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable, Dict, List, Optional, Tuple


class FakeOpenAI:
    """``answer(body) -> list of texts`` (one per choice; None: ``content: null``), ``(status, message)``
    for an error, or a dict sent as the whole 200 body.

    ``fail_first`` makes the first N chat requests answer ``fail_status`` (with ``fail_headers``, e.g.
    ``Retry-After``); ``delay`` holds every
    chat request that long (so concurrent requests overlap and ``peak`` measures them).
    """

    def __init__(self, answer: Callable[[Dict[str, Any]], Any], *, model: str = "fake-model",
                 fail_first: int = 0, fail_status: int = 503, delay: float = 0.0,
                 fail_headers: Optional[Dict[str, str]] = None):
        self.answer, self.model = answer, model
        self.fail_first, self.fail_status, self.delay = fail_first, fail_status, delay
        self.fail_headers = dict(fail_headers or {})
        self.times: List[float] = []  # arrival time of every chat request (time.monotonic)
        self.requests: List[Dict[str, Any]] = []
        self.failed = 0
        self.active = self.peak = 0
        self._lock = threading.Lock()
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *a):  # quiet
                pass

            def _send(self, status: int, obj: Any) -> None:
                data = json.dumps(obj).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                if status == fake.fail_status:
                    for k, v in fake.fail_headers.items():
                        self.send_header(k, v)
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self):
                if self.path.rstrip("/").endswith("/models"):
                    self._send(200, {"object": "list", "data": [{"id": fake.model, "object": "model"}]})
                else:
                    self._send(404, {"error": {"message": "not found"}})

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)))
                status, payload = fake._chat(body)
                self._send(status, payload)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/v1"

    def _chat(self, body: Dict[str, Any]) -> Tuple[int, Dict[str, Any]]:
        with self._lock:
            self.times.append(time.monotonic())
            self.active += 1
            self.peak = max(self.peak, self.active)
            fail = self.failed < self.fail_first
            if fail:
                self.failed += 1
            else:
                self.requests.append(body)
        try:
            if self.delay:
                time.sleep(self.delay)
            if fail:
                return self.fail_status, {"error": {"message": f"injected {self.fail_status}"}}
            if body.get("model") != self.model:
                return 404, {"error": {"message": f"model {body.get('model')!r} not found"}}
            out = self.answer(body)
            if isinstance(out, tuple):
                return out[0], {"error": {"message": out[1]}}
            if isinstance(out, dict):  # a raw 200 body (e.g. one without "choices")
                return 200, out
            choices = [{"index": i, "finish_reason": "stop", "message": {"role": "assistant", "content": t}}
                       for i, t in enumerate(out)]
            return 200, {"id": "x", "object": "chat.completion", "created": 0, "model": self.model,
                         "choices": choices,
                         "usage": {"prompt_tokens": 10, "completion_tokens": 5 * len(out), "total_tokens": 10 + 5 * len(out)}}
        finally:
            with self._lock:
                self.active -= 1

    def __enter__(self) -> "FakeOpenAI":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()


def prompt_text(body: Dict[str, Any]) -> str:
    """All text of the request's messages (content parts joined)."""
    out = []
    for m in body.get("messages", []):
        c = m.get("content")
        if isinstance(c, str):
            out.append(c)
        else:
            out.extend(p.get("text", "") for p in c or [] if p.get("type") == "text")
    return "\n".join(out)


def image_parts(body: Dict[str, Any]) -> List[str]:
    return [p["image_url"]["url"] for m in body.get("messages", []) if isinstance(m.get("content"), list)
            for p in m["content"] if p.get("type") == "image_url"]


def gold_in_prompt(body: Dict[str, Any]) -> Optional[list]:
    """The gold triples the synthesis prompt carries (the JSON list after 'Correct triples')."""
    text = prompt_text(body)
    at = text.find("Correct triples")
    if at < 0:
        return None
    start = text.index(": [", at) + 2
    value, _ = json.JSONDecoder().raw_decode(text[start:])
    return value
