"""The OpenAI-compatible calling layer: endpoint resolution, retries/backoff, the resumable cache,
bounded concurrency, message conversion (against a scripted local server)."""
from __future__ import annotations

import base64
import json
import random

import pytest
from PIL import Image

from mcr_swift.endpoint import (Endpoint, EndpointError, ResultCache, RetryPolicy, RunStats, cache_key, chat,
                           image_data_url, run_jobs, to_openai_messages)
from tests._fake_openai import FakeOpenAI


def test_endpoint_resolution_from_flags_env_and_server():
    with FakeOpenAI(lambda b: ["ok"], model="served") as fake:
        ep = Endpoint.resolve(env={"OPENAI_BASE_URL": fake.base_url + "/"})
        assert (ep.base_url, ep.model, ep.api_key) == (fake.base_url, "served", "EMPTY")  # the only model
        ep = Endpoint.resolve(fake.base_url, "m2", "k", 5, env={"OPENAI_MODEL": "m1", "OPENAI_API_KEY": "e"})
        assert (ep.model, ep.api_key, ep.timeout) == ("m2", "k", 5.0)
        ep = Endpoint.resolve(env={"OPENAI_BASE_URL": fake.base_url, "OPENAI_MODEL": "m1", "OPENAI_API_KEY": "e"})
        assert (ep.model, ep.api_key) == ("m1", "e")
    with pytest.raises(EndpointError, match="OPENAI_BASE_URL"):
        Endpoint.resolve(env={})
    with pytest.raises(EndpointError, match="is the server running"):
        Endpoint.resolve("http://127.0.0.1:9/v1", env={})  # nothing listens on port 9


def test_retry_backoff_is_exponential_capped_and_jittered():
    p = RetryPolicy(retries=5, base=1.0, max_delay=5.0)
    rng = random.Random(0)
    for k, cap in enumerate([1, 2, 4, 5, 5]):
        d = p.delay(k, rng)
        assert cap * 0.5 <= d <= cap


def test_chat_retries_transient_errors_then_succeeds():
    with FakeOpenAI(lambda b: ["fine"] * b.get("n", 1), fail_first=2, fail_status=503) as fake:
        ep = Endpoint(fake.base_url, "fake-model")
        seen = []
        r = chat(ep, [{"role": "user", "content": "hi"}], n=2, temperature=0.5, top_k=7, max_tokens=9, seed=3,
                 retry=RetryPolicy(3, 0.01, 0.02), on_retry=lambda e, k, w: seen.append((k, w)))
        assert r.texts == ["fine", "fine"] and r.retries == 2 and [k for k, _ in seen] == [0, 1]
        body = fake.requests[-1]
        assert (body["n"], body["temperature"], body["top_k"], body["max_tokens"], body["seed"]) == (2, 0.5, 7, 9, 3)
        assert (r.prompt_tokens, r.completion_tokens) == (10, 10)


@pytest.mark.parametrize("status,fatal", [(400, False), (404, True), (401, True)])
def test_chat_does_not_retry_client_errors(status, fatal):
    with FakeOpenAI(lambda b: ["x"], fail_first=5, fail_status=status) as fake:
        with pytest.raises(EndpointError) as ei:
            chat(Endpoint(fake.base_url, "fake-model"), [{"role": "user", "content": "hi"}],
                 retry=RetryPolicy(3, 0.01, 0.01))
        assert fake.failed == 1 and ei.value.fatal is fatal


def test_chat_gives_up_after_retries():
    with FakeOpenAI(lambda b: ["x"], fail_first=10, fail_status=429) as fake:
        with pytest.raises(EndpointError, match="gave up after 3 attempts") as ei:
            chat(Endpoint(fake.base_url, "fake-model"), [{"role": "user", "content": "hi"}],
                 retry=RetryPolicy(2, 0.01, 0.01))
        assert fake.failed == 3 and not ei.value.fatal


def test_cache_resumes_drops_torn_line_and_never_duplicates(tmp_path):
    path = tmp_path / "c.jsonl"
    c = ResultCache(path)
    assert c.put("a", {"v": 1}) and c.put("b", {"v": 2})
    assert not c.put("a", {"v": 99})  # an existing key is never written again
    with open(path, "a") as f:
        f.write('{"key": "c", "value": {"v"')  # a crash mid-line
    c2 = ResultCache(path)
    assert c2.torn == 1 and len(c2) == 2 and c2.get("a") == {"v": 1} and "c" not in c2
    assert c2.put("c", {"v": 3})
    lines = [json.loads(l) for l in path.read_text().splitlines()]
    assert [l["key"] for l in lines] == ["a", "b", "c"]  # the torn tail was cut, then appended cleanly
    assert cache_key(a=1, b=[1, 2]) == cache_key(b=[1, 2], a=1) != cache_key(a=1, b=[2, 1])


def test_run_jobs_bounded_concurrency_skips_cached_and_counts_failures(tmp_path):
    def answer(body):
        return ["ok:" + body["messages"][0]["content"]]
    with FakeOpenAI(answer, delay=0.2) as fake:
        ep = Endpoint(fake.base_url, "fake-model")
        cache = ResultCache(tmp_path / "c.jsonl")
        cache.put("k0", {"texts": ["old"]})
        jobs = [(f"k{i}", f"m{i}") for i in range(9)] + [("k1", "m1")]  # k1 twice: done once

        def work(m):
            if m == "m5":
                raise RuntimeError("boom")
            return chat(ep, [{"role": "user", "content": m}])
        st = run_jobs(jobs, work, cache, concurrency=3, progress=False)
        assert (st.total, st.cached, st.done, st.failed) == (9, 1, 7, 1)
        assert fake.peak == 3  # bounded, and actually concurrent
        assert cache.get("k0") == {"texts": ["old"]} and cache.get("k3")["texts"] == ["ok:m3"]
        assert "k5" not in cache and "boom" in st.errors[0]
        st2 = run_jobs(jobs, work, cache, concurrency=3, progress=False)
        assert (st2.cached, st2.done, st2.failed) == (8, 0, 1)  # only the failed one is tried again


def test_run_jobs_stops_on_fatal_error(tmp_path):
    with FakeOpenAI(lambda b: ["x"], model="other") as fake:
        ep = Endpoint(fake.base_url, "fake-model")  # unknown model: 404 on every request
        with pytest.raises(EndpointError, match="not found"):
            run_jobs([(f"k{i}", i) for i in range(20)], lambda i: chat(ep, [{"role": "user", "content": "x"}]),
                     ResultCache(tmp_path / "c.jsonl"), concurrency=2, progress=False)
        assert len(fake.requests) < 20


def test_retries_are_counted_through_stats(tmp_path):
    with FakeOpenAI(lambda b: ["x"], fail_first=3, fail_status=502) as fake:
        ep = Endpoint(fake.base_url, "fake-model")
        st = RunStats()
        run_jobs([("a", 1), ("b", 2)], lambda i: chat(ep, [{"role": "user", "content": str(i)}],
                                                      retry=RetryPolicy(5, 0.01, 0.01), on_retry=st.note_retry),
                 ResultCache(tmp_path / "c.jsonl"), concurrency=1, progress=False, stats=st)
        assert (st.done, st.retries, st.failed) == (2, 3, 0)


@pytest.mark.parametrize("empty", [
    {"id": "x", "object": "chat.completion", "created": 0, "model": "fake-model"},  # no "choices"
    {"id": "x", "object": "chat.completion", "created": 0, "model": "fake-model", "choices": []},
    [None],  # "content": null
])
def test_a_200_answer_without_an_answer_is_a_failed_request(tmp_path, empty):
    calls = []

    def answer(body):
        calls.append(1)
        return empty if len(calls) <= 2 else ["real"]  # two empty answers, then a real one
    with FakeOpenAI(answer) as fake:
        ep = Endpoint(fake.base_url, "fake-model")
        cache = ResultCache(tmp_path / "c.jsonl")
        work = lambda i, st: chat(ep, [{"role": "user", "content": str(i)}], retry=RetryPolicy(5, 0.01, 0.01),
                                  on_retry=st.note_retry)
        st = RunStats()
        run_jobs([("a", 1)], lambda i: work(i, st), cache, progress=False, stats=st)
        assert (st.done, st.failed, st.retries, st.empty_answers) == (1, 0, 2, 2)
        assert cache.get("a")["texts"] == ["real"]  # retried until a real answer
        # only empty answers: the request fails, is counted, and nothing is cached; a rerun asks again
        st = RunStats()
        never = lambda i: chat(ep, [{"role": "user", "content": str(i)}], retry=RetryPolicy(1, 0.01, 0.01),
                               on_retry=st.note_retry)
        fake.answer = lambda b: empty
        run_jobs([("b", 2)], never, cache, progress=False, stats=st)
        assert (st.done, st.failed, st.retries, st.empty_answers) == (0, 1, 1, 2)
        assert "b" not in cache and "HTTP 200 without an answer" in st.errors[0]
        assert "b" not in ResultCache(tmp_path / "c.jsonl")
        n_before = len(fake.requests)
        run_jobs([("b", 2)], never, cache, progress=False, stats=RunStats())
        assert len(fake.requests) == n_before + 2  # asked again (first try + 1 retry)


def test_messages_with_inline_images(tmp_path):
    p = tmp_path / "a.png"
    Image.new("RGB", (4, 3), (255, 0, 0)).save(p)
    q = tmp_path / "noext"
    Image.new("RGB", (2, 2)).save(q, format="JPEG")
    msgs = to_openai_messages([{"role": "system", "content": "sys"},
                               {"role": "user", "content": "<image>first<image> second"}], [str(p), {"path": str(q)}])
    assert msgs[0] == {"role": "system", "content": "sys"}
    parts = msgs[1]["content"]
    assert [x["type"] for x in parts] == ["image_url", "text", "image_url", "text"]
    assert parts[1]["text"] == "first" and parts[3]["text"] == " second"
    url = parts[0]["image_url"]["url"]
    assert url.startswith("data:image/png;base64,") and base64.b64decode(url.split(",", 1)[1]) == p.read_bytes()
    assert parts[2]["image_url"]["url"].startswith("data:image/jpeg;base64,")
    with pytest.raises(ValueError, match="1 <image> tags but 2 images"):
        to_openai_messages([{"role": "user", "content": "<image>x"}], [str(p), str(p)])
    with pytest.raises(FileNotFoundError, match="missing.jpg"):
        image_data_url(str(tmp_path / "missing.jpg"))
    (tmp_path / "bad.bin").write_bytes(b"not an image")
    with pytest.raises(ValueError, match="bad.bin: not a readable image"):
        image_data_url(str(tmp_path / "bad.bin"))


def test_why_the_openai_clients_own_retries_are_not_used():
    """Pins the reason `chat` keeps its own loop (see `Endpoint.client`): the openai client with its own
    ``max_retries`` hands back a 200 without choices as an answer after one request (no retry, nothing
    to count), where `chat` retries it as a failure."""
    import openai
    with FakeOpenAI(lambda b: {"id": "x", "object": "chat.completion", "created": 0, "model": "fake-model"}) as fake:
        client = openai.OpenAI(base_url=fake.base_url, api_key="EMPTY", max_retries=5)
        resp = client.chat.completions.create(model="fake-model", messages=[{"role": "user", "content": "q"}])
        assert not resp.choices and len(fake.requests) == 1
        seen = []
        with pytest.raises(EndpointError, match="gave up after 3 attempts.*EmptyAnswer"):
            chat(Endpoint(fake.base_url, "fake-model"), [{"role": "user", "content": "q"}],
                 retry=RetryPolicy(2, 0.01, 0.01), on_retry=lambda e, k, w: seen.append(type(e).__name__))
        assert seen == ["EmptyAnswer", "EmptyAnswer"] and len(fake.requests) == 4
    # the same transient statuses are retried by both; only ours can be counted and tuned
    with FakeOpenAI(lambda b: ["fine"], fail_first=2) as fake:
        seen = []
        r = chat(Endpoint(fake.base_url, "fake-model"), [{"role": "user", "content": "q"}],
                 retry=RetryPolicy(3, 0.01, 0.01), on_retry=lambda e, k, w: seen.append(k))
        assert r.texts == ["fine"] and r.retries == 2 and seen == [0, 1] and fake.failed == 2 and len(fake.requests) == 1
