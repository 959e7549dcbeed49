"""Benchmark: the real ``synth`` and ``cvo-filter`` against simulated OpenAI-compatible servers.

Two fake servers on 127.0.0.1, each its own process (started here, stopped by its pid, and stopping
by itself after ``--lifetime`` seconds or ``--max-requests`` requests):

* ``batched``: up to C sequences at once, each request held a fixed time T; a request asks ``n``
  sequences (``n`` choices), queueing (first come, first served) beyond C: a vLLM-like deploy.
  Capacity C / (n T) requests/s.
* ``ratelimited``: R requests/s (a token bucket of R/2), a ``429`` with ``Retry-After: 1`` beyond it,
  and a share of ``500`` answers; each accepted request takes T. Capacity R requests/s.

Each server answers every request, counts the answers it gives per request (model, messages, n,
seed, temperature: paid twice = a 200 answer to a request answered before) and the time from the
first request to the last answer. The commands run with their default settings (pass ``--extra``
to add flags, e.g. ``--extra=--concurrency=8`` for a pinned client). Printed: requests/s achieved as
a share of the capacity, requests lost (no answer in the output), requests paid twice, the peak
requests in flight the server saw, and the client's adaptive limit (start, peak, final, cuts).

    python tools/bench_endpoint.py              # paper-like size: 4,000 synth + 2,000 filter requests
    python tools/bench_endpoint.py --short      # a few hundred (what tests/test_bench_endpoint.py runs)
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import subprocess
import sys
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Dict, List, Optional

REPO = Path(__file__).resolve().parents[1]
DATA_V2 = Path(os.environ.get("MCR_SHARED_DIR", REPO.parent / "shared")) / "data" / "twitter_gmner_v2"


# --------------------------------------------------------------------------- the servers
class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 2048  # hundreds of connections open at once


class Sim:
    """The shared state of a simulated server (see the module docstring)."""

    def __init__(self, kind: str, capacity: int, latency: float, rate: float, error_share: float,
                 max_requests: int, seed: int = 0):
        self.kind, self.capacity, self.latency, self.rate = kind, capacity, latency, rate
        self.error_share, self.max_requests = error_share, max_requests
        self.rng = random.Random(seed)
        self.lock = threading.Condition()
        self.busy = 0                 # sequences being served (batched)
        self.queue: List[int] = []    # tickets waiting (batched)
        self.ticket = 0
        self.tokens = rate / 2        # token bucket (ratelimited)
        self.bucket_t = time.monotonic()
        self.requests = self.answered = self.rejected = self.errors = 0
        self.in_flight = self.peak = 0
        self.first: Optional[float] = None
        self.last: Optional[float] = None
        self.seen: Dict[str, int] = {}

    def stats(self) -> Dict[str, Any]:
        with self.lock:
            span = (self.last - self.first) if self.first is not None and self.last is not None else 0.0
            return {"requests": self.requests, "answered": self.answered, "distinct": len(self.seen),
                    "paid_twice": self.answered - len(self.seen), "rejected_429": self.rejected,
                    "errors_5xx": self.errors, "peak_in_flight": self.peak, "span_s": round(span, 3),
                    "answered_per_s": round(self.answered / span, 2) if span > 0 else 0.0}

    def _take_token(self) -> bool:
        now = time.monotonic()
        self.tokens = min(self.rate / 2, self.tokens + (now - self.bucket_t) * self.rate)
        self.bucket_t = now
        if self.tokens >= 1:
            self.tokens -= 1
            return True
        return False

    def chat(self, body: Dict[str, Any]):
        """(status, payload, headers) of one chat request."""
        n = max(1, int(body.get("n") or 1))
        with self.lock:
            self.requests += 1
            if self.first is None:
                self.first = time.monotonic()
            if self.kind == "ratelimited":
                if not self._take_token():
                    self.rejected += 1
                    return 429, {"error": {"message": "rate limit"}}, {"Retry-After": "1"}
                if self.rng.random() < self.error_share:
                    self.errors += 1
                    return 500, {"error": {"message": "internal error (simulated)"}}, {}
            self.in_flight += 1
            self.peak = max(self.peak, self.in_flight)
            if self.kind == "batched":  # wait for n free sequences, first come first served
                seqs = min(n, self.capacity)
                me = self.ticket
                self.ticket += 1
                self.queue.append(me)
                while self.queue[0] != me or self.busy + seqs > self.capacity:
                    self.lock.wait()
                self.queue.pop(0)
                self.busy += seqs
                self.lock.notify_all()
        time.sleep(self.latency)
        with self.lock:
            if self.kind == "batched":
                self.busy -= seqs
                self.lock.notify_all()
            self.in_flight -= 1
            digest = hashlib.sha256(json.dumps([body.get(k) for k in ("model", "messages", "n", "seed",
                                                                       "temperature")],
                                               sort_keys=True).encode()).hexdigest()
            self.seen[digest] = self.seen.get(digest, 0) + 1
            self.answered += 1
            self.last = time.monotonic()
        text = "<think>\nA simulated chain of reasoning, long enough to read as one.\n</think>\n<answer>\n[]\n</answer>"
        choices = [{"index": i, "finish_reason": "stop", "message": {"role": "assistant", "content": text}}
                   for i in range(n)]
        return 200, {"id": "sim", "object": "chat.completion", "created": 0, "model": body.get("model"),
                     "choices": choices, "usage": {"prompt_tokens": 100, "completion_tokens": 20 * n,
                                                   "total_tokens": 100 + 20 * n}}, {}


def serve(a) -> int:
    """Run one simulated server in this process: prints its port, then serves until ``--lifetime``
    seconds or ``--max-requests`` requests have passed."""
    sim = Sim(a.serve, a.capacity, a.latency, a.rate, a.error_share, a.max_requests)

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive: the client reuses its connections

        def log_message(self, *args):
            pass

        def _send(self, status: int, obj: Any, headers: Optional[Dict[str, str]] = None) -> None:
            data = json.dumps(obj).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            for k, v in (headers or {}).items():
                self.send_header(k, v)
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self):
            if self.path.rstrip("/").endswith("/models"):
                self._send(200, {"object": "list", "data": [{"id": "sim-model", "object": "model"}]})
            elif self.path.rstrip("/").endswith("/stats"):
                self._send(200, sim.stats())
            else:
                self._send(404, {"error": {"message": "not found"}})

        def do_POST(self):
            body = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)))
            if sim.requests >= sim.max_requests:
                self._send(503, {"error": {"message": "the simulated server's request budget is spent"}})
                return
            status, payload, headers = sim.chat(body)
            self._send(status, payload, headers)

    server = _Server(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    print(server.server_address[1], flush=True)
    deadline = time.monotonic() + a.lifetime
    while time.monotonic() < deadline and sim.requests < a.max_requests + 1000:
        time.sleep(0.2)
    server.shutdown()
    return 0


class ServerProcess:
    """A simulated server in a child process, stopped by its own pid."""

    def __init__(self, kind: str, *, capacity: int = 0, latency: float = 0.25, rate: float = 0.0,
                 error_share: float = 0.0, lifetime: float = 900.0, max_requests: int = 200_000):
        self.kind = kind
        self.proc = subprocess.Popen(
            [sys.executable, str(Path(__file__).resolve()), "--serve", kind, "--capacity", str(capacity),
             "--latency", str(latency), "--rate", str(rate), "--error-share", str(error_share),
             "--lifetime", str(lifetime), "--max-requests", str(max_requests)],
            stdout=subprocess.PIPE, text=True)
        line = self.proc.stdout.readline()
        if not line.strip().isdigit():
            self.stop()
            raise RuntimeError(f"the {kind} server did not start")
        self.base_url = f"http://127.0.0.1:{int(line)}/v1"

    def stats(self) -> Dict[str, Any]:
        import urllib.request
        with urllib.request.urlopen(self.base_url + "/stats", timeout=30) as r:
            return json.loads(r.read())

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.kill(self.proc.pid, 15)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.kill(self.proc.pid, 9)
                self.proc.wait()

    def __enter__(self) -> "ServerProcess":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


# --------------------------------------------------------------------------- the runs
def _prepare(work: Path, posts: int, data: Path = DATA_V2) -> Path:
    """``posts`` Twitter-GMNER train posts with stand-in images (prepared once per size)."""
    out = work / f"prepared_{posts}"
    train = out / "data" / "twitter_gmner" / "train.jsonl"
    if not train.is_file():
        from mcr_swift.data.prepare import prepare_twitter_gmner
        prepare_twitter_gmner(data, out / "data", splits=("train",), standin_dir=out / "images", limit=posts,
                              progress=False)
    return train


def _run(cmd: str, train: Path, out: Path, base_url: str, extra: List[str]) -> Dict[str, Any]:
    env = {**os.environ, "PYTHONPATH": os.environ.get("PYTHONPATH") or str(REPO), "OPENAI_API_KEY": "EMPTY"}
    if cmd == "synth":  # the two LLM styles: 2 requests a post
        args = ["synth", "--input", str(train), "--out", str(out), "--styles", "llm_qa,llm_conclusions",
                "--per-post", "0"]
    else:
        args = ["cvo-filter", "--input", str(train), "--out", str(out)]
    args += ["--base-url", base_url, "--model", "sim-model", "--no-progress", *extra]
    t0 = time.monotonic()
    # cwd: the run's folder, so that ``-m`` imports the PYTHONPATH's mcr_swift, not the current folder's
    p = subprocess.run([sys.executable, "-m", "mcr_swift.cli", *args], env=env, capture_output=True, text=True,
                       timeout=3600, cwd=out.parent)
    wall = time.monotonic() - t0
    summary_path = out.with_name(out.name + ".summary.json")
    if not summary_path.is_file():
        raise RuntimeError(f"{cmd} exited {p.returncode} without a summary:\n{p.stderr[-3000:]}")
    summary = json.loads(summary_path.read_text())
    if cmd == "synth":
        per = summary["per_style"]
        planned = sum(d["planned"] for d in per.values())
        lost = sum(d.get("missing", 0) for d in per.values())
        conc = next(iter(per.values()))["requests"].get("concurrency", {})
        # the two LLM styles share one endpoint and one limit: the last style's record has its end
        conc = {**conc, **list(per.values())[-1]["requests"].get("concurrency", {})}
        for k in ("decreases", "overload_cuts"):  # counted per style
            conc[k] = sum(d["requests"].get("concurrency", {}).get(k, 0) for d in per.values())
    else:
        planned = summary["queries"]
        lost = summary["queries"] - summary["scored"]
        conc = summary["requests"].get("concurrency", {})
    return {"rc": p.returncode, "planned": planned, "lost": lost, "wall_s": round(wall, 2), "concurrency": conc,
            "stderr_tail": p.stderr[-2000:]}


def bench(work: Path, *, short: bool = False, extra: Optional[List[str]] = None,
          which: Optional[List[str]] = None, data: Path = DATA_V2) -> List[Dict[str, Any]]:
    """Run every (command, server) case; returns one record per case."""
    extra = list(extra or [])
    synth_posts, filter_posts = (150, 120) if short else (2000, 2000)
    # the short mode's rate limits sit below what the starting 8 requests in flight ask (8 / 0.25 s =
    # 32 req/s, 8 / 0.5 s = 16 req/s), so that the limit must fall on any machine
    synth_rate, filter_rate = (20.0, 10.0) if short else (80.0, 40.0)
    cases = [  # name, command, posts, server kind, server settings, sequences per request
        ("synth / batched", "synth", synth_posts, "batched", {"capacity": 32, "latency": 0.25}, 1),
        ("synth / rate-limited", "synth", synth_posts, "ratelimited",
         {"rate": synth_rate, "latency": 0.25, "error_share": 0.01}, 1),
        ("cvo-filter / batched", "cvo-filter", filter_posts, "batched", {"capacity": 256, "latency": 0.5}, 8),
        ("cvo-filter / rate-limited", "cvo-filter", filter_posts, "ratelimited",
         {"rate": filter_rate, "latency": 0.5, "error_share": 0.01}, 1),
    ]
    results = []
    for name, cmd, posts, kind, settings, per_request in cases:
        if which and not any(w in name for w in which):
            continue
        train = _prepare(work, posts, data)
        out = work / f"run_{cmd}_{kind}_{time.time_ns()}" / "out.jsonl"
        out.parent.mkdir(parents=True)
        with ServerProcess(kind, **settings) as server:
            run = _run(cmd, train, out, server.base_url, extra)
            st = server.stats()
        cap = settings["capacity"] / (per_request * settings["latency"]) if kind == "batched" else settings["rate"]
        results.append({"case": name, "capacity_req_s": round(cap, 2), "achieved_req_s": st["answered_per_s"],
                        "share": round(st["answered_per_s"] / cap, 3), "requests": run["planned"],
                        "lost": run["lost"], "paid_twice": st["paid_twice"], "rejected_429": st["rejected_429"],
                        "errors_5xx": st["errors_5xx"], "server_peak_in_flight": st["peak_in_flight"],
                        "client": run["concurrency"], "rc": run["rc"], "wall_s": run["wall_s"],
                        **({"stderr_tail": run["stderr_tail"]} if run["rc"] != 0 else {})})
    return results


def format_table(results: List[Dict[str, Any]]) -> str:
    head = (f"{'case':<27}{'requests':>9}{'capacity':>10}{'achieved':>10}{'share':>7}{'lost':>6}{'paid 2x':>8}"
            f"{'429s':>6}{'5xx':>5}{'peak':>6}  client limit start/peak/final (cuts on overload)")
    lines = [head, "-" * len(head)]
    for r in results:
        c = r["client"] or {}
        lim = (f"{c.get('mode', '?')} {c.get('start', '?')}/{c.get('peak', '?')}/{c.get('final', '?')} "
               f"({c.get('overload_cuts', '-')})")
        lines.append(f"{r['case']:<27}{r['requests']:>9}{r['capacity_req_s']:>10.1f}{r['achieved_req_s']:>10.1f}"
                     f"{100 * r['share']:>6.0f}%{r['lost']:>6}{r['paid_twice']:>8}{r['rejected_429']:>6}"
                     f"{r['errors_5xx']:>5}{r['server_peak_in_flight']:>6}  {lim}"
                     + ("" if r["rc"] == 0 else f"  exit {r['rc']}"))
    return "\n".join(lines)


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--short", action="store_true", help="a few hundred requests per case (the test's mode)")
    p.add_argument("--work", default=None, help="folder for the prepared posts and the runs (default: a temp dir)")
    p.add_argument("--extra", action="append", default=[], help="a flag passed to both commands (repeatable)")
    p.add_argument("--case", action="append", default=None, help="only cases whose name contains this")
    p.add_argument("--json-out", default=None, help="write the results as JSON here")
    p.add_argument("--data", default=str(DATA_V2), help="the Twitter-GMNER release whose posts are sent "
                                                        "(default: the shared twitter_gmner_v2)")
    g = p.add_argument_group("server mode (used by the benchmark itself)")
    g.add_argument("--serve", choices=["batched", "ratelimited"], default=None)
    g.add_argument("--capacity", type=int, default=32)
    g.add_argument("--latency", type=float, default=0.25)
    g.add_argument("--rate", type=float, default=80.0)
    g.add_argument("--error-share", type=float, default=0.0)
    g.add_argument("--lifetime", type=float, default=900.0)
    g.add_argument("--max-requests", type=int, default=200_000)
    a = p.parse_args(argv)
    if a.serve:
        return serve(a)
    extra = [x for e in a.extra for x in e.split("=", 1)] if a.extra else []
    with tempfile.TemporaryDirectory(prefix="bench-endpoint-") as tmp:
        work = Path(a.work) if a.work else Path(tmp)
        results = bench(work, short=a.short, extra=extra, which=a.case, data=Path(a.data))
    print(format_table(results))
    if a.json_out:
        Path(a.json_out).write_text(json.dumps(results, indent=1))
    return 0 if all(r["rc"] == 0 and r["lost"] == 0 and r["paid_twice"] == 0 for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
