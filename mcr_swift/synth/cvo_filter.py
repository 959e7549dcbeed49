"""``mcr-swift cvo-filter``: sampling-based filtering of D2 before CVO (paper App. D.3).

For each D2 query, G responses {o_1..o_G} are sampled from the current policy (the MRSI checkpoint
served by ``swift deploy`` or ``vllm serve``: any OpenAI-compatible endpoint) and scored with the
CVO reward R (Eq. 10: `mcr_swift.core.scoring.score_row`, the very function GRPO's ``gmner_orm``
calls). The query is kept only if

    std(r) >= 0.1,   max(r) >= 0.8,   0.08 <= median(r) <= 0.6          (App. D.3)

(all four thresholds are flags). D2 holds one row per (post, style); the query is the post's user
turn, so rows of one post are merged into one query (counted) and the kept rows are written with
the user turn only, ready for ``swift rlhf --rlhf_type grpo --dataset mcr-mrsi:d2_filtered``.

Where the paper is silent: G and the sampling default to CVO's rollout settings (App. E.4: 8
generations, temperature 1.5, top-k 200, top-p 0.95), so the filter sees the groups GRPO will see;
std is the population standard deviation (``--std-ddof 0``); completions are capped at
``--max-tokens`` 1024; ``--temperature 0`` (greedy) asks once and repeats the answer G times. The reward compares in the completion's coordinate space, so the filter
must know the server's resize settings (``--max-pixels``/``--min-pixels``, default ``$MAX_PIXELS``,
as for the reward in GRPO), and scores with GRPO's reward settings (``--unmatched`` etc., default the
``MCR_*`` variables ``gmner_orm`` reads). Every setting is read and checked before the first request.

Requests are cached on disk (key: query, prompt, model, G, sampling), so re-runs resume; the
summary gives the kept fraction, why queries were dropped, and the distribution of the three
statistics.
"""
from __future__ import annotations

import argparse
import sys
import zlib
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence

import numpy as np

from ..jsonl import iter_jsonl, write_json_atomic, write_jsonl_atomic

__all__ = ["FilterThresholds", "group_stats", "decide", "filter_d2", "distribution", "main"]

#: App. E.4 rollout settings, the defaults of the filter's sampling.
DEFAULT_G = 8
DEFAULT_TEMPERATURE = 1.5
DEFAULT_TOP_K = 200
DEFAULT_TOP_P = 0.95
DEFAULT_MAX_TOKENS = 1024


@dataclass(frozen=True)
class FilterThresholds:
    """App. D.3: std >= 0.1, max >= 0.8, 0.08 <= median <= 0.6."""
    min_std: float = 0.1
    min_max: float = 0.8
    min_median: float = 0.08
    max_median: float = 0.6
    std_ddof: int = 0


def group_stats(rewards: Sequence[float], ddof: int = 0) -> Dict[str, float]:
    r = np.asarray(list(rewards), dtype=float)
    if r.size == 0:
        return {"std": 0.0, "max": 0.0, "median": 0.0}
    std = float(np.std(r, ddof=ddof)) if r.size > ddof else 0.0
    return {"std": std, "max": float(np.max(r)), "median": float(np.median(r))}


def decide(stats: Mapping[str, float], t: FilterThresholds = FilterThresholds()) -> List[str]:
    """The App. D.3 tests a group fails (empty: keep)."""
    fails = []
    if stats["std"] < t.min_std:
        fails.append("std")
    if stats["max"] < t.min_max:
        fails.append("max")
    if stats["median"] < t.min_median:
        fails.append("median_low")
    if stats["median"] > t.max_median:
        fails.append("median_high")
    return fails


def distribution(values: Sequence[float], bins: int = 10) -> Dict[str, Any]:
    """Quantiles and a histogram over [0, 1] (rewards live there)."""
    v = np.asarray(list(values), dtype=float)
    if v.size == 0:
        return {"n": 0}
    q = np.quantile(v, [0.0, 0.1, 0.25, 0.5, 0.75, 0.9, 1.0])
    hist, edges = np.histogram(np.clip(v, 0, 1), bins=bins, range=(0.0, 1.0))
    return {"n": int(v.size), "mean": float(v.mean()),
            **{k: float(x) for k, x in zip(("min", "p10", "p25", "p50", "p75", "p90", "max"), q)},
            "histogram": {"edges": [round(float(e), 3) for e in edges], "counts": [int(c) for c in hist]}}


def _query_rows(rows: Sequence[Mapping[str, Any]], source: str):
    """One query per sample (``mcr_task``, ``mcr_id``; first row wins), the user turn only; returns
    (queries, merged count)."""
    seen, queries, merged = set(), [], 0
    for i, row in enumerate(rows):
        pid = row.get("mcr_id")
        if pid is None or "messages" not in row:
            raise ValueError(f"{source}: row {i + 1}: needs 'mcr_id' and 'messages' (an mcr-swift D2 row)")
        if "mcr_gold" not in row:
            raise ValueError(f"{source}: row {i + 1} (mcr_id {pid!r}): no 'mcr_gold' column to score against")
        key = (str(row.get("mcr_task") or "gmner"), str(pid))  # by sample: ids of different sources never merge
        if key in seen:
            merged += 1
            continue
        seen.add(key)
        q = {k: v for k, v in row.items() if k not in ("messages", "mcr_style", "mcr_synth")}
        q["messages"] = [m for m in row["messages"] if m.get("role") != "assistant"]
        queries.append(q)
    return queries, merged


def _seed(seed: int, pid: str, k: int) -> int:
    return (zlib.crc32(f"{seed}:{pid}:{k}".encode()) & 0x7FFFFFFF)


def _score_group(texts: Sequence[str], q: Mapping[str, Any], config, skipped: Counter) -> List[float]:
    """R (Eq. 10) of each rollout of query ``q`` (`mcr_swift.core.scoring.score_row`); a rollout whose row
    cannot be scored gets 0.0, as in GRPO, and is counted in ``skipped`` by reason."""
    from ..core.scoring import score_row
    out = []
    for t in texts:
        s = score_row(t, q, config)
        if s.skipped is not None:
            skipped[s.skipped] += 1
        out.append(float(s.reward))
    return out


def filter_d2(rows: Sequence[Mapping[str, Any]], out: Path, endpoint, *, g: int = DEFAULT_G,
              temperature: float = DEFAULT_TEMPERATURE, top_k: Optional[int] = DEFAULT_TOP_K,
              top_p: Optional[float] = DEFAULT_TOP_P, max_tokens: int = DEFAULT_MAX_TOKENS, seed: int = 0,
              thresholds: FilterThresholds = FilterThresholds(), concurrency: Any = None, retry=None,
              cache_path: Optional[Path] = None, progress: bool = True, source: str = "input",
              reward) -> Dict[str, Any]:
    """Sample, score with ``reward`` (a `mcr_swift.core.scoring.RewardConfig`, its space the server's),
    decide; writes ``out`` (kept queries), ``out.stats.jsonl`` and the summary."""
    from ..endpoint import ChatResult, ResultCache, RetryPolicy, RunStats, cache_key, chat, run_jobs, to_openai_messages
    retry = retry or RetryPolicy()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    queries, merged = _query_rows(rows, source)
    cache = ResultCache(cache_path or out.with_name(out.name + ".cache.jsonl"))
    client = endpoint.client()
    st = RunStats()
    jobs, keys = [], []
    for q in queries:
        msgs = to_openai_messages(q["messages"], q.get("images") or [])
        tk = q.get("chat_template_kwargs") or None  # the row's per-post image budget (coords.ROW_KWARGS)
        key = cache_key(kind="mcr-cvo-filter", post=str(q["mcr_id"]), messages=msgs, model=endpoint.model, g=g,
                        temperature=temperature, top_k=top_k, top_p=top_p, max_tokens=max_tokens, seed=seed,
                        **({"template_kwargs": tk} if tk else {}))
        keys.append(key)
        jobs.append((key, (str(q["mcr_id"]), msgs, tk)))

    def work(payload) -> ChatResult:
        pid, msgs, tk = payload
        got = ChatResult([], [])
        k = 0
        while len(got.texts) < g:  # servers that ignore n answer fewer choices: ask again
            r = chat(endpoint, msgs, n=g - len(got.texts), temperature=temperature, top_k=top_k, top_p=top_p,
                     max_tokens=max_tokens, seed=_seed(seed, pid, k), retry=retry, client=client,
                     on_retry=st.note_retry, template_kwargs=tk)
            if not r.texts:
                raise RuntimeError(f"post {pid}: the endpoint returned no choices")
            got.texts += r.texts
            got.finish_reasons += r.finish_reasons
            got.prompt_tokens += r.prompt_tokens
            got.completion_tokens += r.completion_tokens
            k += 1
        return got

    def work_greedy(payload) -> ChatResult:
        # greedy decoding gives G identical responses (and some servers refuse n > 1 without sampling)
        pid, msgs, tk = payload
        r = chat(endpoint, msgs, n=1, temperature=0.0, max_tokens=max_tokens, seed=_seed(seed, pid, 0), retry=retry,
                 client=client, on_retry=st.note_retry, template_kwargs=tk)
        if not r.texts:
            raise RuntimeError(f"post {pid}: the endpoint returned no choices")
        return ChatResult(r.texts[:1] * g, r.finish_reasons[:1] * g, r.prompt_tokens, r.completion_tokens)
    run_jobs(jobs, work if temperature > 0 else work_greedy, cache, concurrency=concurrency, desc="cvo-filter",
             progress=progress, stats=st)

    skipped: Counter = Counter()
    kept, records, fails = [], [], Counter()
    values: Dict[str, List[float]] = {"std": [], "max": [], "median": []}
    tokens = Counter()
    missing = 0
    for q, key in zip(queries, keys):
        value = cache.get(key)
        if value is None:
            missing += 1
            continue
        res = ChatResult.from_json(value)
        texts = res.texts[:g]
        tokens["prompt"] += res.prompt_tokens
        tokens["completion"] += res.completion_tokens
        rewards = _score_group(texts, q, reward, skipped)
        s = group_stats(rewards, thresholds.std_ddof)
        why = decide(s, thresholds)
        for k in values:
            values[k].append(s[k])
        fails.update(why)
        records.append({"mcr_id": q["mcr_id"], "rewards": [round(x, 6) for x in rewards],
                        **{k: round(v, 6) for k, v in s.items()}, "kept": not why, "failed_tests": why})
        if not why:
            kept.append(q)
    complete = not missing and not st.failed and not st.interrupted
    summary = {
        "input_rows": len(rows), "queries": len(queries), "rows_merged_by_post": merged,
        "scored": len(records), "kept": len(kept),
        "queries_per_task": dict(sorted(Counter(str(q.get("mcr_task") or "gmner") for q in queries).items())),
        "kept_per_task": dict(sorted(Counter(str(q.get("mcr_task") or "gmner") for q in kept).items())),
        "kept_fraction": (len(kept) / len(records)) if records else 0.0,
        "dropped_by_test": {k: fails.get(k, 0) for k in ("std", "max", "median_low", "median_high")},
        "thresholds": thresholds.__dict__, "g": g,
        "sampling": {"temperature": temperature, "top_k": top_k, "top_p": top_p, "max_tokens": max_tokens,
                     "seed": seed},
        "distribution": {k: distribution(v) for k, v in values.items()},
        "tokens": dict(tokens), "requests": st.as_dict(), "endpoint": endpoint.describe(),
        "cache": {"path": str(cache.path), "records": len(cache), "torn_lines_dropped": cache.torn},
        "complete": complete, "out": str(out) if complete else None,
        # the scoring GRPO will use: the reward's settings and the coordinate space it compares in
        "reward": {"weights": list(reward.weights), "sigma": reward.sigma, "unmatched": reward.unmatched,
                   "space_mode": reward.space_mode},
        # rollouts of queries whose row could not be scored (scored 0.0, as in GRPO), by reason
        "unscorable_rollouts": sum(skipped.values()), "unscorable_reasons": dict(skipped),
        "space": _space_dict(reward.space),
    }
    if complete:
        write_jsonl_atomic(out, kept)
        write_jsonl_atomic(out.with_name(out.name + ".stats.jsonl"), records)
    write_json_atomic(out.with_name(out.name + ".summary.json"), summary)
    cache.close()  # the lock is held until the outputs are written
    return summary


def _space_dict(sp) -> Dict[str, Any]:
    """The resize settings the reward compares in."""
    return {"family": sp.family, "min_pixels": sp.min_pixels, "max_pixels": sp.max_pixels,
            "template_max_pixels": sp.template_max_pixels}


def format_summary(s: Mapping[str, Any]) -> str:
    lines = [f"queries {s['queries']} (from {s['input_rows']} rows; {s['rows_merged_by_post']} merged by post), "
             f"scored {s['scored']}, kept {s['kept']} ({100 * s['kept_fraction']:.1f}%)",
             "dropped by test (a query can fail several): "
             + ", ".join(f"{k} {v}" for k, v in s["dropped_by_test"].items()),
             f"{'stat':<8}{'min':>7}{'p10':>7}{'p25':>7}{'p50':>7}{'p75':>7}{'p90':>7}{'max':>7}{'mean':>7}"]
    for k, d in s["distribution"].items():
        if d.get("n"):
            lines.append(f"{k:<8}" + "".join(f"{d[x]:>7.3f}" for x in ("min", "p10", "p25", "p50", "p75", "p90",
                                                                        "max", "mean")))
    if s.get("unscorable_rollouts"):
        lines.append(f"unscorable rollouts (scored 0.0): {s['unscorable_rollouts']} "
                     + "; ".join(f"{k}: {v}" for k, v in s["unscorable_reasons"].items()))
    r = s["requests"]
    lines.append(f"requests: {r['total']} ({r['cached']} cached, {r['done']} sent, {r['retries']} retried, "
                 f"{r['failed']} failed); tokens {s['tokens']}")
    return "\n".join(lines)


def main(argv: Optional[List[str]] = None) -> int:
    from ..core.argtypes import int_range, non_negative_float, positive_int, top_k_int, top_p_float, unit_float
    from ..core.coords import add_space_args, space_from_args
    from ..core.scoring import RewardConfig, add_reward_args
    from ..endpoint import Concurrency, Endpoint, RetryPolicy, add_endpoint_args, add_request_args, finish_run
    from ..files import refuse_overwriting_inputs
    p = argparse.ArgumentParser(prog="mcr-swift cvo-filter", description=__doc__.splitlines()[0])
    p.add_argument("--input", required=True, help="D2 rows (mcr-swift split), e.g. mcr_data/mrsi/d2.jsonl")
    p.add_argument("--out", required=True, help="kept queries, e.g. mcr_data/mrsi/d2_filtered.jsonl")
    add_endpoint_args(p, "", "the policy server (swift deploy / vllm serve of the MRSI checkpoint)")
    add_request_args(p, DEFAULT_MAX_TOKENS, DEFAULT_TEMPERATURE, "request seeds derive from it (servers that honour seed)")
    p.add_argument("-G", "--num-generations", type=int_range(2), default=DEFAULT_G,
                   help="responses per query, at least 2: the tests need a spread (App. E.4: 8)")
    p.add_argument("--top-k", type=top_k_int, default=DEFAULT_TOP_K, help="-1: off")
    p.add_argument("--top-p", type=top_p_float, default=DEFAULT_TOP_P)
    p.add_argument("--min-std", type=non_negative_float, default=0.1)
    p.add_argument("--min-max", type=unit_float, default=0.8)
    p.add_argument("--min-median", type=unit_float, default=0.08)
    p.add_argument("--max-median", type=unit_float, default=0.6)
    p.add_argument("--std-ddof", type=int, default=0, choices=[0, 1], help="0: population std (default)")
    add_space_args(p)  # the server's resize settings: the reward compares in its coordinate space
    add_reward_args(p)
    p.add_argument("--limit", type=positive_int, default=None, help="only the first N rows")
    p.add_argument("--cache", default=None, help="request cache (default <out>.cache.jsonl)")
    a = p.parse_args(argv)
    out = Path(a.out)
    refuse_overwriting_inputs([("--input", a.input)], [
        ("--out", out), ("--out's stats", out.with_name(out.name + ".stats.jsonl")),
        ("--out's summary", out.with_name(out.name + ".summary.json")),
        ("--cache", a.cache or out.with_name(out.name + ".cache.jsonl"))])
    if a.min_median > a.max_median:
        p.error(f"--min-median {a.min_median} is above --max-median {a.max_median}: no query could pass")
    # every setting first (issue 20 §2.8): a bad one stops here, before any request is paid for
    reward = RewardConfig.from_args(a, space=space_from_args(a))
    retry = RetryPolicy.from_args(a)
    rows = [row for _, row, _ in iter_jsonl(a.input)][:a.limit]
    ep = Endpoint.resolve(a.base_url, a.model, a.api_key, a.timeout)
    summary = filter_d2(rows, Path(a.out), ep, g=a.num_generations, temperature=a.temperature, top_k=a.top_k,
                        top_p=a.top_p, max_tokens=a.max_tokens, seed=a.seed,
                        thresholds=FilterThresholds(a.min_std, a.min_max, a.min_median, a.max_median, a.std_ddof),
                        concurrency=Concurrency.from_args(a, a.num_generations if a.temperature > 0 else 1),
                        retry=retry, cache_path=Path(a.cache) if a.cache else None,
                        progress=not a.no_progress, source=a.input, reward=reward)
    print(format_summary(summary))
    return finish_run(summary["complete"], summary["requests"]["interrupted"],
                      f"kept {summary['kept']} queries -> {a.out}", "queries")


if __name__ == "__main__":
    sys.exit(main())
