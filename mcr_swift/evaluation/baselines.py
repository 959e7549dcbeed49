"""``mcr-swift baselines``: the training-free end-to-end rows of Table 1 on an OpenAI-compatible endpoint.

Direct, CoT and CoT + 3-shot prompting (Sec. 5.1, App. E.2; Table 4's N-Count / N-Rate); methods,
demonstrations, output rows and resuming: docs/metrics.md.
"""
from __future__ import annotations

import argparse
import random
import sys
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

from ..core.answer import ANSWER_OPEN, pick_box, render_answer
from ..core.coords import CoordinateSpace, add_space_args, space_from_args
from ..core.argtypes import non_negative_int, positive_int
from ..files import refuse_overwriting_inputs
from ..jsonl import iter_jsonl, write_json_atomic, write_jsonl_atomic
from ..prompts import load_prompt
from ..core.columns import row_task
from ..data.rows import user_content
from ..core.entities import Entity, Sample

__all__ = ["METHODS", "select_demos", "demo_answer", "instruction", "request_messages", "run_baselines", "main"]

#: method -> (prompt file, default number of demonstrations, demonstrations carry reasoning)
METHODS: Dict[str, Tuple[str, int, bool]] = {
    "direct": ("baseline_direct", 0, False),
    "cot": ("baseline_cot", 0, True),
    "cot_3shot": ("baseline_cot", 3, True),
}
#: Greedy decoding (reproducible rows; the paper gives no sampling for the baselines) with room for CoT.
DEFAULT_TEMPERATURE = 0.0
DEFAULT_MAX_TOKENS = 2048
#: Columns of the prepared row copied to the output (what evaluate, pictures and bias-report read).
KEEP_COLUMNS = ("mcr_id", "mcr_task", "mcr_sentence", "mcr_gold", "mcr_image_sizes", "images")


def instruction(prompt: str, space: Optional[CoordinateSpace], size: Tuple[int, int]) -> str:
    """The filled baseline prompt: ``{box_format}`` is the family's box line, or the original-pixel
    line with this image's ``size`` when ``space`` is None."""
    if space is None:
        line = load_prompt("baseline_box_format_original").replace("{width}", str(size[0])).replace(
            "{height}", str(size[1]))
    else:
        line = load_prompt(f"box_format_{space.kind}")
    return load_prompt(prompt).replace("{box_format}", line)


def _kinds(sample: Sample) -> set:
    return {"located" if e.boxes else "unlocated" for e in sample.entities}


def select_demos(candidates: Sequence[Sample], k: int, seed: int, exclude: Sequence[str] = ()) -> List[Sample]:
    """``k`` posts drawn with ``random.Random(seed)``: posts with at least one entity, not in
    ``exclude``; a post is passed over only while the remaining slots are needed to cover both a
    located and an unlocated entity (if the split cannot cover both, the slots are filled in the
    drawn order). Fewer than ``k`` only if there are not enough candidates."""
    order = list(range(len(candidates)))
    random.Random(seed).shuffle(order)
    skip = set(map(str, exclude))
    eligible = [candidates[i] for i in order if _kinds(candidates[i]) and candidates[i].id not in skip]
    chosen: List[Sample] = []
    covered: set = set()
    for s in eligible:
        if len(chosen) == k:
            break
        missing = {"located", "unlocated"} - covered
        if _kinds(s) & missing or k - len(chosen) > len(missing):
            chosen.append(s)
            covered |= _kinds(s)
    chosen += [s for s in eligible if all(s is not c for c in chosen)][:k - len(chosen)]
    return chosen


def demo_answer(sample: Sample, reasoning: bool, space: Optional[CoordinateSpace], multi_box: str = "largest") -> str:
    """The gold triples of a demonstration as the canonical answer, boxes in ``space`` (None:
    original pixels), after `plain_reasoning` when ``reasoning``."""
    ents = []
    for e in sample.entities:
        box = pick_box(e.boxes, multi_box)
        if box is not None and space is not None:
            box = space.to_model(box, sample.image_size)
        ents.append(Entity(e.text, e.type, () if box is None else (box,)))
    text, _ = render_answer(ents, plain_reasoning(sample.entities))
    return text if reasoning else text[text.index(ANSWER_OPEN):]


_TYPE_WORDS = {"PER": "a person", "LOC": "a location", "ORG": "an organization", "OTHER": "another kind of named entity"}


def plain_reasoning(entities: Sequence[Entity]) -> str:
    """A plain chain-of-thought for a demonstration, one sentence per entity in its own order: what
    it names and whether the image shows it. No MCR constraint walk (recognition, typing, entailment,
    grounding as named steps, `default_reasoning`): that would carry the method into the baseline
    (issue 21 §5)."""
    if not entities:
        return "I read the sentence and find no name of a person, place, organization or other thing."
    out = []
    for e in entities:
        where = "The image shows it, so I give its box." if e.boxes else "The image does not show it."
        out.append(f'"{e.text}" is {_TYPE_WORDS.get(e.type, "a named entity")}. {where}')
    return " ".join(out)


def request_messages(sample: Sample, method: str, demos: Sequence[Sample], space: Optional[CoordinateSpace],
                     multi_box: str = "largest") -> Tuple[List[Dict[str, str]], List[str]]:
    """ms-swift messages (``<image>`` tags) and the images of one query, demonstrations first."""
    prompt, _, reasoning = METHODS[method]
    msgs: List[Dict[str, str]] = []
    images: List[str] = []
    for d in demos:
        msgs.append({"role": "user", "content": user_content(d, instruction(prompt, space, d.image_size))})
        msgs.append({"role": "assistant", "content": demo_answer(d, reasoning, space, multi_box)})
        images += d.images
    msgs.append({"role": "user", "content": user_content(sample, instruction(prompt, space, sample.image_size))})
    return msgs, images + list(sample.images)


def _samples(rows: Sequence[Mapping[str, Any]], source: str, lines: Sequence[int],
             check_images: bool = True) -> List[Sample]:
    """The posts of prepared GMNER rows; ValueError naming ``file:line`` for a bad row (or, with
    ``check_images``, a missing image file)."""
    from ..data.rows import sample_from_row
    out = []
    for row, no in zip(rows, lines):
        where = f"{source}:{no}"
        if row_task(row) != "gmner":
            raise ValueError(f"{where}: mcr_task {row_task(row)!r}: the baselines prompt for Twitter-GMNER rows")
        try:
            s = sample_from_row(row)
        except (KeyError, ValueError, TypeError) as e:
            raise ValueError(f"{where}: not a prepared GMNER row ({type(e).__name__}: {e})") from None
        if not s.images or len(s.image_sizes) != len(s.images):
            raise ValueError(f"{where}: needs 'images' and their sizes in 'mcr_image_sizes'")
        missing = [p for p in s.images if check_images and not Path(p).is_file()]
        if missing:
            raise ValueError(f"{where}: image {missing[0]} not found")
        out.append(s)
    return out


def run_baselines(rows: Sequence[Mapping[str, Any]], samples: Sequence[Sample], out: Path, endpoint, method: str, *,
                  demos: Sequence[Sample] = (), space: Optional[CoordinateSpace] = None, multi_box: str = "largest",
                  temperature: float = DEFAULT_TEMPERATURE, max_tokens: int = DEFAULT_MAX_TOKENS, seed: int = 0,
                  concurrency: Any = None, retry=None, cache_path: Optional[Path] = None,
                  progress: bool = True) -> Dict[str, Any]:
    """Query the endpoint for every post; returns the summary (and writes ``out`` when complete).
    ``space`` None: boxes in original pixels (``--box-space original``)."""
    from ..endpoint import (ChatResult, ResultCache, RetryPolicy, RunStats, cache_key, chat, file_digest, run_jobs,
                      to_openai_messages)
    from .predict import answer_entities, describe_space
    retry = retry or RetryPolicy()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    cache = ResultCache(cache_path or out.with_name(out.name + ".cache.jsonl"))
    digests: Dict[str, str] = {}
    keys = []
    for s in samples:
        msgs, images = request_messages(s, method, demos, space, multi_box)
        for im in images:
            if im not in digests:
                digests[im] = file_digest(im)
        keys.append(cache_key(kind="mcr-baseline", post=s.id, method=method, messages=msgs,
                              images=[digests[im] for im in images],
                              model=endpoint.model, temperature=temperature, max_tokens=max_tokens, seed=seed))
    st = RunStats()
    client = endpoint.client()

    def work(i: int) -> ChatResult:
        msgs, images = request_messages(samples[i], method, demos, space, multi_box)
        return chat(endpoint, to_openai_messages(msgs, images), temperature=temperature, max_tokens=max_tokens,
                    seed=seed, retry=retry, client=client, on_retry=st.note_retry)
    run_jobs(((k, i) for i, k in enumerate(keys)), work, cache, concurrency=concurrency,
             desc=f"baseline {method}", progress=progress, stats=st)

    info = {"method": method, "model": endpoint.model, "demos": [d.id for d in demos], **describe_space(space)}
    produced, missing, unparsed, n_ent, tokens = [], 0, 0, 0, [0, 0]
    for row, s, key in zip(rows, samples, keys):
        value = cache.get(key)
        if value is None:
            missing += 1
            continue
        res = ChatResult.from_json(value)
        text = res.texts[0] if res.texts else ""
        tokens[0] += res.prompt_tokens
        tokens[1] += res.completion_tokens
        entities, parsed = answer_entities(text, space, s.image_size)
        unparsed += not parsed.ok
        n_ent += len(entities)
        produced.append({**{k: row[k] for k in KEEP_COLUMNS if k in row}, "entities": entities, "raw": text,
                         "parse_ok": parsed.ok, "finish_reason": res.finish_reasons[0] if res.finish_reasons else None,
                         "mcr_baseline": info})
    complete = not missing and not st.failed and not st.interrupted
    prompt, _, reasoning = METHODS[method]
    summary = {
        "method": method, "prompt": prompt, "shots": len(demos), "posts": len(rows), "answered": len(produced),
        "parse_failures": unparsed, "entities": n_ent, "complete": complete,
        "demos": [{"mcr_id": d.id, "entities": len(d.entities), "located": sum(bool(e.boxes) for e in d.entities),
                   "image": d.image} for d in demos],
        "demo_coverage": sorted(set().union(*map(_kinds, demos))) if demos else [],
        "endpoint": endpoint.describe(), **describe_space(space), "multi_box": multi_box,
        "sampling": {"temperature": temperature, "max_tokens": max_tokens, "seed": seed},
        "tokens": {"prompt": tokens[0], "completion": tokens[1]}, "requests": st.as_dict(),
        "cache": {"path": str(cache.path), "records": len(cache), "torn_lines_dropped": cache.torn},
        "out": str(out) if complete else None,
    }
    if complete:
        write_jsonl_atomic(out, produced)
    write_json_atomic(out.with_name(out.name + ".summary.json"), summary)
    cache.close()  # the lock is held until the outputs are written
    return summary


def _read(path: str, limit: Optional[int] = None) -> Tuple[List[Dict[str, Any]], List[int]]:
    rows, lines = [], []
    for no, row, _ in iter_jsonl(path):
        if limit is not None and len(rows) >= limit:
            break
        rows.append(row)
        lines.append(no)
    return rows, lines


def main(argv: Optional[List[str]] = None) -> int:
    from ..endpoint import Concurrency, Endpoint, RetryPolicy, add_endpoint_args, add_request_args, finish_run
    p = argparse.ArgumentParser(prog="mcr-swift baselines", description=__doc__.splitlines()[0])
    p.add_argument("--method", required=True, choices=list(METHODS))
    p.add_argument("--input", required=True, help="prepared split to answer, e.g. mcr_data/twitter_gmner/test.jsonl")
    p.add_argument("--train", default=None,
                   help="prepared train split for the demonstrations (default: train.jsonl beside --input)")
    p.add_argument("--out", required=True, help="result JSONL (score it with `mcr-swift evaluate OUT`)")
    p.add_argument("--shots", type=non_negative_int, default=None, help="demonstrations (default: 3 for cot_3shot, else 0)")
    add_endpoint_args(p, "", "the MLLM endpoint")
    add_space_args(p)
    p.add_argument("--box-space", choices=["model", "original"], default="model",
                   help="model: the endpoint model's own space (Qwen2.5-VL/MiMo-VL: resized-image pixels; "
                        "Qwen2-VL/Qwen3-VL: 0-1000), from --family/--max-pixels; original: pixels of the image "
                        "as sent (the prompt gives its size)")
    p.add_argument("--multi-box", default="largest", choices=["largest", "first"],
                   help="the one box a demonstration writes for an entity with several gold boxes")
    p.add_argument("--limit", type=positive_int, default=None, help="only the first N posts")
    p.add_argument("--cache", default=None, help="request cache (default <out>.cache.jsonl)")
    add_request_args(p, DEFAULT_MAX_TOKENS, DEFAULT_TEMPERATURE,
                     "sent with every request (servers that honour it); also draws the demonstrations")
    a = p.parse_args(argv)
    refuse_overwriting_inputs([("--input", a.input), ("--train", a.train or Path(a.input).with_name("train.jsonl"))],
                              [("--out", a.out), ("--out's summary", Path(a.out).with_name(Path(a.out).name + ".summary.json")),
                               ("--cache", a.cache or Path(a.out).with_name(Path(a.out).name + ".cache.jsonl"))])
    shots = METHODS[a.method][1] if a.shots is None else a.shots
    space = None if a.box_space == "original" else space_from_args(a)
    retry = RetryPolicy.from_args(a)
    rows, lines = _read(a.input, a.limit)
    samples = _samples(rows, a.input, lines)
    demos: List[Sample] = []
    if shots > 0:
        train = a.train or str(Path(a.input).with_name("train.jsonl"))
        if not Path(train).is_file():
            raise ValueError(f"{train}: no train split for the demonstrations; pass --train")
        t_rows, t_lines = _read(train)
        demos = select_demos(_samples(t_rows, train, t_lines, check_images=False), shots, a.seed,
                             [s.id for s in samples])
        if len(demos) < shots:
            raise ValueError(f"{train}: only {len(demos)} posts with entities for {shots} demonstrations")
        absent = [im for d in demos for im in d.images if not Path(im).is_file()]
        if absent:
            raise ValueError(f"{train}: demonstration image {absent[0]} not found")
    ep = Endpoint.resolve(a.base_url, a.model, a.api_key, a.timeout)
    summary = run_baselines(rows, samples, Path(a.out), ep, a.method, demos=demos, space=space,
                            multi_box=a.multi_box, temperature=a.temperature, max_tokens=a.max_tokens,
                            seed=a.seed, concurrency=Concurrency.from_args(a),
                            retry=retry,
                            cache_path=Path(a.cache) if a.cache else None, progress=not a.no_progress)
    r = summary["requests"]
    print(f"{a.method}: {summary['posts']} posts, {summary['answered']} answered ({summary['parse_failures']} "
          f"unparseable), {summary['entities']} entities; requests {r['total']} ({r['cached']} cached, {r['done']} "
          f"sent, {r['retries']} retried, {r['failed']} failed); tokens {summary['tokens']}")
    if demos:
        print(f"demonstrations (seed {a.seed}): {', '.join(d['mcr_id'] for d in summary['demos'])} "
              f"(covering {' and '.join(summary['demo_coverage'])} entities)")
    if not summary["complete"]:
        for e in r["first_errors"]:
            print(f"  {e}", file=sys.stderr)
    return finish_run(summary["complete"], r["interrupted"],
                      f"results -> {a.out}; score with: mcr-swift evaluate {a.out}", "posts")


if __name__ == "__main__":
    sys.exit(main())
