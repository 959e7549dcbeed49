"""Requests in flight (`AdaptiveLimit`), Retry-After, the one-run-per-cache lock and the request
cache's grouped syncs (issue 23; issue 20 §2 item 9): against hand-fed events, a scripted server and
real processes (two `synth` runs on one output; a cache writer killed with SIGKILL mid-batch)."""
from __future__ import annotations

import email.utils
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import openai
import pytest

from mcr_swift import endpoint as client_mod
from mcr_swift.endpoint import (AdaptiveLimit, CacheLocked, Concurrency, Endpoint, ResultCache, RetryPolicy,
                                    RunStats, chat, retry_after, run_jobs)
from tests._fake_openai import FakeOpenAI

REPO = Path(__file__).resolve().parents[1]


class Clock:
    def __init__(self):
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def _status_error(status: int, headers=None) -> openai.APIStatusError:
    req = httpx.Request("POST", "http://127.0.0.1/v1/chat/completions")
    resp = httpx.Response(status, headers=headers or {}, request=req)
    cls = openai.RateLimitError if status == 429 else openai.InternalServerError
    return cls("x", response=resp, body=None)


def _batched(lim: AdaptiveLimit, clock: Clock, capacity: int, latency: float, seconds: float) -> None:
    """Feed ``lim`` the answers of a server that serves ``capacity`` requests at once for ``latency``
    seconds each, queueing the rest: per tick of ``latency``, min(limit, capacity) answers, each
    after latency x max(1, limit / capacity) seconds in flight."""
    end = clock.t + seconds
    while clock.t < end:
        clock.t += latency
        epoch, limit = lim.epoch, lim.limit
        for _ in range(min(limit, capacity)):
            lim.done(epoch, latency * max(1.0, limit / capacity))


def test_limit_grows_to_the_servers_capacity_and_stops_there():
    clock = Clock()
    lim = AdaptiveLimit(Concurrency(8, 256), clock=clock)
    _batched(lim, clock, capacity=64, latency=0.2, seconds=30)
    # by hand: 8 -> 16 -> 32 -> 64 each double the rate; 128 buys nothing, so back to 64, and the
    # probes (+4) buy nothing either
    assert lim.peak == 128 and lim.limit == 64 and lim.decreases >= 1
    assert [v for _, v, _ in lim.history[:5]] == [8, 16, 32, 64, 128]


def test_limit_is_cut_once_per_window_on_429_and_recovers():
    clock = Clock()
    lim = AdaptiveLimit(Concurrency(40, 256), clock=clock)
    e = lim.epoch
    for _ in range(5):  # five requests of one window rejected: one cut, to 0.85 x 40
        lim.signal(_status_error(429), e)
    assert lim.limit == 34 and lim.decreases == lim.overload_cuts == 1 and not lim.slow_start
    lim.signal(_status_error(429), lim.epoch)  # a request sent under the new limit: cut again
    assert lim.limit == 28
    lim.signal(openai.APITimeoutError(httpx.Request("POST", "http://x")), lim.epoch)  # timeouts too
    assert lim.limit == 23
    _batched(lim, clock, capacity=1000, latency=0.2, seconds=5)  # clean again: additive growth
    assert 23 < lim.limit < 46


def test_a_rare_500_is_not_overload_but_many_are():
    clock = Clock()
    lim = AdaptiveLimit(Concurrency(16, 256, ), clock=clock)
    lim.signal(_status_error(500), lim.epoch)  # one 500: the window is unclean, no cut, no growth
    _batched(lim, clock, capacity=1000, latency=0.2, seconds=0.6)
    assert lim.decreases == 0 and lim.limit == 16
    for _ in range(4):  # 4 of a window's ~16 answers: overload
        lim.signal(_status_error(503), lim.epoch)
    _batched(lim, clock, capacity=1000, latency=0.2, seconds=0.6)
    assert lim.decreases == 1 and lim.limit < 16


def test_a_pinned_value_never_changes():
    clock = Clock()
    lim = AdaptiveLimit(Concurrency.of(3), clock=clock)
    _batched(lim, clock, capacity=64, latency=0.2, seconds=5)
    lim.signal(_status_error(429), lim.epoch)
    assert lim.limit == 3 and lim.maximum == 3 and lim.describe()["mode"] == "fixed"


def test_concurrency_from_flags_and_from_the_deploy():
    from mcr_swift.endpoint import add_request_args
    import argparse
    p = argparse.ArgumentParser()
    add_request_args(p, 10, 0.5)
    assert Concurrency.from_args(p.parse_args([])) == Concurrency(8, 256)
    assert Concurrency.from_args(p.parse_args(["--concurrency", "5"])) == Concurrency(5, 5, 5)
    assert Concurrency.from_args(p.parse_args(["--max-concurrency", "4"])) == Concurrency(4, 4)
    # 8 vLLM engines x 256 sequences, G = 8 sequences a request: 256 requests fill it, ceiling 512
    a = p.parse_args(["--server-batch", str(8 * 256)])
    assert Concurrency.from_args(a, per_request=8) == Concurrency(256, 512)
    assert Concurrency.from_args(a) == Concurrency(2048, 4096)  # synth: one sequence a request
    assert Concurrency.for_server(1, 1) == Concurrency(1, 2)  # swift deploy, transformers, max_batch_size 1
    assert Concurrency.for_server(10, 8) == Concurrency(2, 4)  # rounded up


def test_retry_after_seconds_http_date_and_ms():
    assert retry_after(_status_error(429, {"Retry-After": "3"})) == 3.0
    assert retry_after(_status_error(429, {"retry-after-ms": "250"})) == 0.25
    now = 1_700_000_000.0
    date = email.utils.formatdate(now + 7, usegmt=True)
    assert retry_after(_status_error(429, {"Retry-After": date}), now=now) == pytest.approx(7.0)
    assert retry_after(_status_error(429, {"Retry-After": email.utils.formatdate(now - 60, usegmt=True)}),
                       now=now) == 0.0  # a date in the past: no wait
    assert retry_after(_status_error(429, {"Retry-After": "soon"})) is None
    assert retry_after(_status_error(429)) is None and retry_after(RuntimeError("x")) is None


def test_chat_waits_what_retry_after_asks():
    # the backoff alone would wait 10 ms; the server asks for 1 s
    with FakeOpenAI(lambda b: ["ok"], fail_first=1, fail_status=429, fail_headers={"Retry-After": "1"}) as fake:
        waits = []
        r = chat(Endpoint(fake.base_url, "fake-model"), [{"role": "user", "content": "hi"}],
                 retry=RetryPolicy(3, 0.01, 0.01 * 1000), on_retry=lambda e, k, w: waits.append(w))
        assert r.texts == ["ok"] and r.retries == 1
        assert 1.0 <= waits[0] <= 1.1 and fake.times[1] - fake.times[0] >= 1.0


def test_run_jobs_grows_against_a_slow_server_and_keeps_everything(tmp_path):
    with FakeOpenAI(lambda b: [b["messages"][0]["content"]], delay=0.1) as fake:
        ep = Endpoint(fake.base_url, "fake-model")
        cache = ResultCache(tmp_path / "c.jsonl")
        st = RunStats()
        jobs = [(f"k{i}", f"m{i}") for i in range(400)]
        oc = ep.client()
        run_jobs(jobs, lambda m: chat(ep, [{"role": "user", "content": m}], client=oc, on_retry=st.note_retry), cache,
                 concurrency=Concurrency(4, 64), progress=False, stats=st)
        assert (st.done, st.failed) == (400, 0) and len(fake.requests) == 400  # none lost, none twice
        assert fake.peak > 4 and st.concurrency["peak"] > 4 and st.concurrency["mode"] == "adaptive"
        assert all(cache.get(f"k{i}")["texts"] == [f"m{i}"] for i in range(400))


# --------------------------------------------------------------------------- one run per cache
def test_a_second_cache_on_the_same_file_in_another_process_is_refused(tmp_path):
    path = tmp_path / "c.jsonl"
    with ResultCache(path):
        p = subprocess.run([sys.executable, "-c", "import sys; from mcr_swift.endpoint import ResultCache; "
                            f"ResultCache({str(path)!r})"], capture_output=True, text=True, timeout=120,
                           env={**os.environ, "PYTHONPATH": str(REPO)})
        assert p.returncode == 1 and "CacheLocked" in p.stderr and f"in use by pid {os.getpid()}" in p.stderr
        assert ResultCache(path) is not None  # the same process: shared
    # released on close: another process may take it now
    p = subprocess.run([sys.executable, "-c", "from mcr_swift.endpoint import ResultCache; "
                        f"ResultCache({str(path)!r}).close()"], capture_output=True, text=True, timeout=120,
                       env={**os.environ, "PYTHONPATH": str(REPO)})
    assert p.returncode == 0, p.stderr


def test_a_killed_holders_lock_is_taken_over(tmp_path):
    path = tmp_path / "c.jsonl"
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; from mcr_swift.endpoint import "
                               f"ResultCache; c = ResultCache({str(path)!r}); print('held', flush=True); "
                               "time.sleep(60)"], stdout=subprocess.PIPE, text=True,
                              env={**os.environ, "PYTHONPATH": str(REPO)})
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(CacheLocked, match=f"pid {holder.pid}"):
            ResultCache(path)
    finally:
        os.kill(holder.pid, signal.SIGKILL)
        holder.wait()
    ResultCache(path).close()  # the kernel released the dead holder's lock


def test_two_synth_runs_on_one_output_pay_each_request_once(prepared, tmp_path):
    """Issue 20 §2 item 9: two real processes, one output. The second stops at once with exit 2
    naming the holder; the cache has one line per key (it had 48 lines for 24 keys)."""
    train = prepared / "twitter_gmner" / "train.jsonl"
    out = tmp_path / "d_r.jsonl"
    with FakeOpenAI(lambda b: ["<think>a chain of thought long enough</think>"], delay=0.3) as fake:
        cmd = [sys.executable, "-m", "mcr_swift.cli", "synth", "--input", str(train), "--out", str(out),
               "--styles", "llm_qa", "--per-post", "0", "--base-url", fake.base_url, "--model", "fake-model",
               "--concurrency", "2", "--no-progress"]
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        first = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 60
        while not fake.requests and time.monotonic() < deadline:  # the first run is sending
            time.sleep(0.05)
        second = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
        _, err1 = first.communicate(timeout=300)
    assert first.returncode in (0, 3), err1  # its chains may be rejected, but every request answered
    assert second.returncode == 2 and "in use by pid " + str(first.pid) in second.stderr, second.stderr
    assert "Traceback" not in second.stderr
    lines = [json.loads(x) for x in (tmp_path / "d_r.jsonl.cache.jsonl").read_text().splitlines()]
    assert len(lines) == len({x["key"] for x in lines}) == 24 == len(fake.requests)


# --------------------------------------------------------------------------- grouped syncs
def test_syncs_are_grouped(tmp_path, monkeypatch):
    calls = []
    real = os.fsync
    monkeypatch.setattr(client_mod.os, "fsync", lambda fd: (calls.append(fd), real(fd)))
    c = ResultCache(tmp_path / "c.jsonl", sync_records=64, sync_seconds=30)
    for i in range(200):
        c.put(f"k{i}", i)
    time.sleep(0.2)
    # 200 records: a sync after every 64 or more (the old cache: 200 syncs, one per record)
    assert 1 <= len(calls) <= 3 and c.syncs == len(calls)
    c.close()  # the rest, if any, on close
    assert 1 <= len(calls) <= 4 and c.syncs == len(calls) and c._unsynced == 0
    c2 = ResultCache(tmp_path / "c.jsonl")
    assert len(c2) == 200 and c2.get("k199") == 199


def test_a_sync_follows_within_the_time_bound(tmp_path):
    c = ResultCache(tmp_path / "c.jsonl", sync_records=1000, sync_seconds=0.1)
    c.put("a", 1)
    deadline = time.monotonic() + 10
    while not c.syncs and time.monotonic() < deadline:
        time.sleep(0.01)
    assert c.syncs == 1
    c.close()


_WRITER = """
import sys
from mcr_swift.endpoint import ResultCache
c = ResultCache(sys.argv[1], sync_records=10_000, sync_seconds=3600)  # nothing synced before the kill
i = 0
while True:
    c.put(f"k{i}", {"texts": ["x" * 200], "i": i})
    print(f"k{i}", flush=True)  # acknowledged: put has returned
    i += 1
"""


def test_sigkill_mid_batch_loses_nothing_acknowledged_and_resume_asks_only_the_rest(tmp_path):
    path = tmp_path / "c.jsonl"
    w = subprocess.Popen([sys.executable, "-c", _WRITER, str(path)], stdout=subprocess.PIPE, text=True,
                         env={**os.environ, "PYTHONPATH": str(REPO)})
    acked = []
    try:
        for line in w.stdout:
            acked.append(line.strip())
            if len(acked) == 500:
                break
    finally:
        os.kill(w.pid, signal.SIGKILL)  # mid-batch: 500+ records written, none synced
        w.wait()
    with open(path, "ab") as f:  # and a line cut short, as a kill inside a write leaves it
        f.write(b'{"key": "torn", "value": {"te')
    c = ResultCache(path)
    assert c.torn == 1 and "torn" not in c
    assert all(k in c for k in acked) and len(c) >= 500  # everything put() acknowledged is there
    n = len(c)
    sent = []
    st = run_jobs([(f"k{i}", i) for i in range(n + 20)], lambda i: sent.append(i) or {"i": i}, c,
                  concurrency=2, progress=False)
    assert sorted(sent) == list(range(n, n + 20)) and (st.cached, st.done) == (n, 20)  # only the rest
    lines = path.read_text().splitlines()
    assert len(lines) == n + 20 and len({json.loads(x)["key"] for x in lines}) == n + 20  # none twice
