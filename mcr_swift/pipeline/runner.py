"""``mcr-swift pipeline``: the whole MCR run (paper Sec. 4, App. D.3, App. E.4), one stage after the other,
every output under RUN_DIR:

  [tiny-model] -> prepare -> synth -> split -> [preflight] -> mrsi-sft -> merge -> [trained-eval] ->
  cvo-filter -> cvo-grpo (no_cvo: cvo-data, cvo-data-sft) -> infer-eval -> [curves] -> report

Each stage is a plain function; it is done only from its own evidence: every command it ran exited 0 and
its output exists (the log says which). A stage whose output exists is skipped, so a rerun resumes
(``times.tsv``: seconds or ``skipped``). The run configuration (`mcr_swift.pipeline.config`) is written
to ``RUN_DIR/run_config.yaml``; the run folder is locked while the run lives (`mcr_swift.pipeline.lock`);
``--dry-run`` prints every command with its stage config and overrides and runs nothing;
``--stop-after STAGE`` ends the run, with its report so far, after that stage. See docs/pipeline.md."""
from __future__ import annotations

import argparse
import os
import shlex
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple

import yaml

from ..jsonl import iter_jsonl, write_jsonl_atomic, write_text_atomic
from . import serve as server
from .commands import (Command, Deferred, Executor, StageFailed, grpo_overrides, infer_eval, mcr, read_config,
                       stage_config, swift, swift_exe, train)
from .config import REPO, RunConfig, resolve
from .lock import RunLock
from .recipe_args import check_nodes, count_gpus
from .serve import RESIZE_VARS

API_STYLES = ("llm_qa", "llm_conclusions", "mllm_distill")


@dataclass
class Stage:
    name: str
    output: Callable[["Run"], Path]       # the stage's evidence, written last
    run: Callable[["Run"], None]


class Run:
    """One pipeline run: its configuration, folder, resolved paths, executor and background server."""

    def __init__(self, cfg: RunConfig, dry_run: bool = False, log=None):
        self.c = cfg
        self.log = log or (lambda m: print(f"[pipeline {time.strftime('%H:%M:%S')}] {m}", flush=True))
        suffix = "" if cfg.variant == "mcr" else f"_{cfg.variant}"
        self.dir = Path(cfg.run_dir or f"runs/{cfg.model_key}_{cfg.profile}{suffix}").absolute()
        self.data = self.dir / "data"
        self.model = cfg.model or str(self.dir / "tiny-qwen2_5_vl")
        sft_cfg = read_config(stage_config("mrsi_sft"))
        self.template = cfg.template or sft_cfg["template"]
        self.family = cfg.family or self.template
        self.gpus = count_gpus() if cfg.profile == "paper" else 0
        self.nproc = cfg.nproc_per_node or max(1, self.gpus)
        check_nodes(cfg.nnodes, os.environ)
        # one resolution everywhere: every stage that sees an image gets the same resize settings
        env = {"MCR_MODEL_FAMILY": self.family, "MCR_DATA_DIR": str(self.data), **cfg.env}
        env.setdefault("MAX_PIXELS", str(sft_cfg["ENV"]["MAX_PIXELS"]))
        self.env = {k: str(v) for k, v in env.items()}
        self.ex = Executor(dry_run, {**os.environ, **self.env}, log=lambda m: print(m, flush=True))
        self.ex.hide = self.env
        self.pid_file = self.dir / ".server.pid"

    # ---- helpers ----
    def resize_env(self) -> str:
        return " ".join(f"{k}={self.env[k]}" for k in RESIZE_VARS if self.env.get(k))

    def expand(self, path: Optional[str]) -> Optional[str]:
        if path is None:
            return None
        shared = os.environ.get("MCR_SHARED_DIR") or str(REPO.parent / "shared")
        samples = str(REPO / "mcr_swift" / "data" / "samples")
        return path.replace("{shared}", shared).replace("{samples}", samples)

    def train_extra(self) -> Dict[str, object]:
        return dict(self.c.train_args)

    def model_args(self, stage: str) -> Dict[str, object]:
        """The model overlay's template and its per-stage flags (recipes/runs/models)."""
        return {"template": self.template, **self.c.stage_args.get(stage, {})}

    def serve(self, model: str, adapters: Optional[str] = None) -> str:
        """A background ``swift deploy`` (deploy.yaml) of ``model``; returns its base URL."""
        extra = self.c.serve.extra_args
        if extra is None:   # the filter's policy server: one vLLM engine per GPU found (data parallel)
            extra = ["--vllm_data_parallel_size", str(self.gpus)] if self.c.infer.backend == "vllm" and self.gpus > 1 else []
        o = {"model": model, "adapters": adapters, "template": self.template, "infer_backend": self.c.infer.backend,
             "max_new_tokens": self.c.serve.max_new_tokens}
        cmd = swift(["deploy"], stage_config("deploy"), o, extra=extra)
        log = self.dir / "logs" / f"deploy_{int(time.time())}.log"
        self.ex.log(f"  $ BASE_URL=$(mcr-swift serve start --log {log} --pid-file {self.pid_file} -- "
                    f"{cmd.shell(self.env).split(' deploy ', 1)[1]})")
        if self.ex.dry_run:
            return Deferred('"$BASE_URL"')
        try:
            url = server.start(cmd.argv[len(swift_exe()) + 1:], log, self.pid_file, swift=shlex.join(swift_exe()),
                               env=self.ex.env, cwd=REPO)
        except (RuntimeError, OSError) as e:   # it exited, never answered, or could not start
            raise StageFailed(f"swift deploy: {e}") from None
        self.log(f"server up at {url} ({self.resize_env()})")
        return url

    def unserve(self) -> None:
        self.ex.log(f"  $ mcr-swift serve stop --pid-file {self.pid_file}")
        if not self.ex.dry_run:
            server.stop(self.pid_file)

    def sources(self) -> List[Tuple[str, str]]:
        """(task, status) of every source: RUN_DIR/data/sources.tsv, or in a dry run the plan."""
        f = self.data / "sources.tsv"
        if f.is_file():
            return [tuple(l.split("\t")[:2]) for l in f.read_text().splitlines() if l.strip()]
        return [(t, "prepared" if t == "gmner" or (r and Path(r).is_dir()) else "missing")
                for t, r in (("gmner", "x"), ("mner_mi", self.expand(self.c.sources.mner_mi_root)),
                             ("grec", self.expand(self.c.sources.grec_root))) if t in self.c.sources.use]

    def sft_policy(self) -> Tuple[str, Optional[str]]:
        """What the SFT stage trained: the full-FT checkpoint, or (base, adapter)."""
        ck = self.ex.read(self.dir / self.c.sft.dir / "last_checkpoint.txt")
        return (ck, None) if self.c.sft.tuner == "full" else (self.model, ck)

    def policy(self) -> Tuple[str, Optional[str]]:
        """The MRSI policy CVO starts from: the merged model, base + the MRSI adapter, the full-FT
        checkpoint, or (VARIANT=cvo_only) the base model."""
        if not self.c.stages.mrsi:
            return self.model, None
        if self.c.sft.tuner == "full":
            return self.ex.read(self.dir / "mrsi_sft" / "last_checkpoint.txt"), None
        if self.c.merge:
            return self.ex.read(self.dir / "mrsi_merged" / "last_checkpoint.txt"), None
        return self.model, self.ex.read(self.dir / "mrsi_sft" / "last_checkpoint.txt")

    def sft_command(self, *, model: str, dataset: str, out: Path, steps, full: bool, lr, extra) -> Command:
        c = self.c
        o = {"model": model, **self.model_args("mrsi_sft"), "dataset": dataset.split(), "output_dir": out,
             "max_steps": steps, "save_steps": steps, "learning_rate": lr, **self.train_extra()}
        if full:
            o.update(tuner_type="full", save_only_model=True)
        return train(["sft"], stage_config("mrsi_sft"), o, nproc=self.nproc,
                     nnodes=c.nnodes, batch=c.sft.batch_size, per_device=c.sft.per_device_batch_size,
                     env=self.env, extra=extra, dry_run=self.ex.dry_run)


# ---- the stages ------------------------------------------------------------------------------------

def do_tiny(r: Run) -> None:
    r.ex.run(mcr("tiny-model", r.model))


def _source_missing(task: str, name: str, root: str, var: str) -> None:
    print(f"\n!!! SOURCE MISSING: {name} ({var}={root} is not a folder).\n!!! D_R, D1 and D2 are built WITHOUT it; "
          f"the paper trains on Twitter-GMNER, MNER-MI and GREC (App. E.1).\n!!! Set {var} to the release folder "
          f"to include it (see README, \"Three-source D_R\").\n", file=sys.stderr)


def do_prepare(r: Run) -> None:
    c, s = r.c, r.c.sources
    limit = ["--limit", str(c.limit)] if c.limit else []
    gmner_root = r.expand(s.gmner_root)
    extra = limit + (["--standin-images", str(r.dir / "images")] if c.standin else []) + \
        (["--image-dir", s.image_dir] if s.image_dir else [])
    r.ex.run(mcr("prepare", "--root", gmner_root, "--out", r.data, "--family", r.family, "--no-progress", *extra))
    # Twitter-GMNER is always prepared (its test split is evaluated); SOURCES puts it in D_R
    rows = [("gmner", "prepared" if "gmner" in s.use else "not selected", gmner_root)]
    mner_root, grec_root = r.expand(s.mner_mi_root), r.expand(s.grec_root)
    mner_images = s.mner_mi_image_dir or (f"{mner_root}/images" if mner_root else None)
    for task, name, root, rvar, images, ivar, more in (
            ("mner_mi", "MNER-MI", mner_root, "MNER_MI_ROOT", mner_images, "MNER_MI_IMAGE_DIR", []),
            ("grec", "GREC", grec_root, "GREC_ROOT", s.grec_image_dir, "GREC_IMAGE_DIR",
             ["--family", r.family, "--train-size", str(s.grec_train_size), "--seed", str(c.seed)])):
        if task not in s.use:
            rows.append((task, "not selected", root or ""))
            continue
        if not root or not Path(root).is_dir():
            _source_missing(task, name, root or "", rvar)
            rows.append((task, "missing", root or ""))
            continue
        if c.standin:
            img = ["--standin-images", str(r.dir / "images" / task)]
        elif images and Path(images).is_dir():
            img = ["--image-dir", images]
        else:
            raise ValueError(f"{name} at {root} has no images: {ivar}='{images or ''}' is not a folder "
                             f"(set it, or STANDIN=1)")
        r.ex.run(mcr("prepare", "--dataset", task, "--root", root, "--out", r.data, "--no-progress", *limit, *img,
                     *more))
        rows.append((task, "prepared", root))
    if not r.ex.dry_run:
        write_text_atomic(r.data / "sources.tsv", "".join("\t".join(x) + "\n" for x in rows))


def do_synth(r: Run) -> None:
    c, s = r.c, r.c.synth
    inputs = [r.data / ("twitter_gmner" if t == "gmner" else t) / "train.jsonl" for t, st in r.sources()
              if st == "prepared"]
    if not inputs:
        raise ValueError(f"no source of D_R was prepared (SOURCES={','.join(c.sources.use)})")
    ep: List[str] = []
    served = False
    if c.profile == "tiny" and not s.base_url:
        # the tiny model stands in for DeepSeek / Qwen2.5-VL-72B (only when an API style is asked for)
        if any(x in API_STYLES for x in s.styles):
            ep = ["--base-url", r.serve(r.model)]
            served = True
    else:
        for flag, v in (("--base-url", s.base_url), ("--model", s.model), ("--llm-base-url", s.llm_base_url),
                        ("--llm-model", s.llm_model), ("--mllm-base-url", s.mllm_base_url),
                        ("--mllm-model", s.mllm_model), ("--mllm2-base-url", s.mllm2_base_url),
                        ("--mllm2-model", s.mllm2_model)):
            if v:
                ep += [flag, v]
    cmd = mcr("synth", "--input", *inputs, "--out", r.data / "mrsi" / "d_r.jsonl", "--styles", ",".join(s.styles),
              "--per-post", s.per_post, "--seed", c.seed, "--temperature", s.temperature, "--max-tokens",
              s.max_tokens, *(["--concurrency", s.concurrency] if s.concurrency else []), "--chain-retries", s.chain_retries, "--replace",
              s.replace, *(["--repeat-styles"] if s.repeat_styles else []), *_chain_cap(r), "--no-progress", *ep)
    try:
        r.ex.run(cmd)
    finally:
        if served:
            r.unserve()


def _completion_cap(r: Run) -> int:
    """GRPO's completion cap (the run's, else cvo_grpo.yaml's): the longest chain CVO can reward."""
    return int(r.c.grpo.max_completion_length or read_config(stage_config("cvo_grpo"))["max_completion_length"])


def _chain_cap(r: Run) -> List[str]:
    """synth rejects a chain over the completion cap (issue 21 §2), counted with the model's tokenizer
    (a local folder, or a hub name whose tokenizer files `tokenizer_folder` fetches)."""
    cap = r.c.synth.max_completion_length
    if cap == 0:     # SYNTH_MAX_COMPLETION_LENGTH=0: no check
        return []
    return ["--max-completion-length", cap or _completion_cap(r), "--tokenizer", r.model]


def do_split(r: Run) -> None:
    tmp, mrsi = r.data / "mrsi.tmp", r.data / "mrsi"
    d_r = mrsi / "d_r.jsonl"
    if not r.ex.dry_run and not any(l.strip() for l in d_r.read_text(encoding="utf-8").splitlines()):
        raise StageFailed(f"{d_r}: D_R has no row (every chain rejected: see {d_r}.summary.json and "
                          f"{mrsi / 'd_r.rejected.jsonl'}; e.g. a completion cap below the chains' length)")
    r.ex.run(mcr("split", "--input", mrsi / "d_r.jsonl", "--out-dir", tmp, "--d1-ratio", r.c.split.d1_ratio,
                 "--split-unit", r.c.split.unit, "--seed", r.c.seed))
    r.ex.log(f"  $ mv {tmp}/d1.jsonl {tmp}/d2.jsonl {mrsi}/   (d2.jsonl last: the stage's output)")
    if not r.ex.dry_run:
        os.replace(tmp / "d1.jsonl", mrsi / "d1.jsonl")
        os.replace(tmp / "d2.jsonl", mrsi / "d2.jsonl")
        tmp.rmdir()


def do_preflight(r: Run) -> None:
    """Issue 21 §1: ``mcr-swift preflight`` over every row the run trains on (D1 and D2, or the +SFT rows)
    against mrsi_sft.yaml's max_length, GRPO's completion cap and vLLM's model length, with the checkpoint
    disk of the training stages; then over the test rows against inference's token budget. Exit 2 stops
    the run before any training, naming the rows and the setting that would keep them."""
    sft = read_config(stage_config("mrsi_sft"))
    infer = read_config(stage_config("infer"))
    c = r.c
    if c.variant == "sft":   # the +SFT rows: the prepared files of its registered dataset(s), e.g.
        folders = {"mcr-gmner": "twitter_gmner", "mcr-mner-mi": "mner_mi", "mcr-grec": "grec"}  # train_answer_only
        train = [r.data / folders.get(d.split(":")[0], d.split(":")[0]) / f"{d.split(':')[1].split('#')[0]}.jsonl"
                 for d in str(c.sft.dataset).split() if ":" in d]
    else:
        train = [r.data / "mrsi" / "d1.jsonl", r.data / "mrsi" / "d2.jsonl"]
    test = [r.data / "twitter_gmner" / "test.jsonl"]
    present = lambda files: [f for f in files if r.ex.dry_run or f.is_file()]  # noqa: E731
    keep = int(sft.get("save_total_limit") or 2)
    tuner = "full" if c.sft.tuner == "full" else "lora"
    disk = ["--stage", f"mrsi_sft:{tuner}:{keep}" + (":merge" if tuner == "lora" and c.merge else "")]
    if c.stages.cvo and not c.stages.cvo_by_sft:
        disk += ["--stage", f"cvo_grpo:lora:{keep}:merge"]
    common = ["--model", r.model, "--template", r.template, "--accept-losses", c.preflight_accept_losses,
              "--disk-dir", r.dir, *disk, "--no-progress"]
    vllm_len = infer.get("vllm_max_model_len") if c.infer.backend == "vllm" else 0
    r.ex.run(mcr("preflight", *present(train), "--max-length", sft["max_length"], "--max-completion-length",
                 _completion_cap(r), "--vllm-max-model-len", sft["max_length"] if c.grpo.use_vllm else 0,
                 "--out", r.dir / "preflight" / "train", *common))
    r.ex.run(mcr("preflight", *present(test), "--max-length", 0, "--max-completion-length", c.infer.max_new_tokens,
                 "--vllm-max-model-len", vllm_len or 0, "--out", r.dir / "preflight" / "test", *common))


def _sft_steps(r: Run):
    """SFT_MAX_STEPS, or SFT_EPOCHS passes over the SFT rows (tiny profile), whatever their number."""
    c = r.c
    if c.sft.max_steps is not None or not c.sft.epochs:
        return c.sft.max_steps
    data = r.data / "twitter_gmner" / "train.jsonl" if c.variant == "sft" else r.data / "mrsi" / "d1.jsonl"
    bs = c.sft.batch_size or 16
    if not data.is_file() and r.ex.dry_run:
        return Deferred(f'"$(( ($(grep -c . {data}) * {c.sft.epochs} + {bs} - 1) / {bs} ))"')
    rows = sum(1 for l in data.read_text().splitlines() if l.strip())
    return (rows * c.sft.epochs + bs - 1) // bs


def do_sft(r: Run) -> None:
    c = r.c
    out = r.dir / c.sft.dir
    r.ex.run(r.sft_command(model=r.model, dataset=c.sft.dataset, out=out, steps=_sft_steps(r),
                           full=c.sft.tuner == "full", lr=c.sft.learning_rate, extra=c.sft.extra_args))
    r.ex.last_checkpoint(out)


def do_merge(r: Run) -> None:
    out = r.dir / "mrsi_merged"
    o = {"model": r.model, "adapters": r.ex.read(r.dir / "mrsi_sft" / "last_checkpoint.txt"),
         "template": r.template, "output_dir": out / "merged"}
    r.ex.run(swift(["export"], stage_config("merge_lora"), o, r.env))
    r.ex.last_checkpoint(out, out / "merged")


def _infer_eval(r: Run, model, adapters, dataset, gold, out: Path) -> None:
    infer_eval(r.ex, model=model, adapters=adapters, template=r.template, dataset=dataset, gold=str(gold),
               backend=r.c.infer.backend, max_new_tokens=r.c.infer.max_new_tokens, output_dir=out, nproc=r.nproc,
               family=r.family, env=r.env, model_args=r.c.stage_args.get("infer", {}))


def do_trained_eval(r: Run) -> None:
    """The memorisation check (issue 16): infer + evaluate on D1's GMNER posts, one row per post."""
    posts = r.dir / "trained_eval" / "posts.jsonl"
    r.ex.run(mcr("trained-posts", r.data / "mrsi" / "d1.jsonl", posts))
    _infer_eval(r, *r.sft_policy(), str(posts), posts, r.dir / "trained_eval")


def _server_batch(r: Run) -> int:
    """Sequences the filter's policy server batches (issue 23): vLLM engines (one per GPU) x 256 (ms-swift's
    vllm_max_num_seqs); the transformers backend batches 1."""
    return max(1, r.gpus) * 256 if r.c.infer.backend == "vllm" and r.gpus > 0 else 1


def do_filter(r: Run) -> None:
    f, c = r.c.filter, r.c
    url = r.serve(*r.policy())
    try:
        r.ex.run(mcr("cvo-filter", "--input", r.data / "mrsi" / f"{f.queries}.jsonl",
                     "--out", r.data / "mrsi" / "d2_filtered.jsonl", "--base-url", url, "-G", f.G,
                     "--temperature", f.temperature, "--top-k", f.top_k, "--top-p", f.top_p,
                     "--max-tokens", f.max_tokens, "--seed", c.seed, "--min-std", f.min_std, "--min-max", f.min_max,
                     "--min-median", f.min_median, "--max-median", f.max_median,
                     "--server-batch", f.server_batch or _server_batch(r), "--no-progress"))
    finally:
        r.unserve()


def do_grpo(r: Run) -> None:
    c, g = r.c, r.c.grpo
    model, adapters = r.policy()
    out = r.dir / "cvo_grpo"
    o = {"model": model, **r.model_args("cvo_grpo"), "dataset": "mcr-mrsi:d2_filtered", "output_dir": out,
         "max_steps": g.max_steps, "save_steps": g.max_steps, "num_generations": g.num_generations,
         "max_completion_length": g.max_completion_length,
         **grpo_overrides(use_vllm=g.use_vllm, log_reward_terms=g.log_reward_terms, adapters=adapters),
         **r.train_extra()}
    cfg = stage_config("cvo_grpo")
    r.ex.run(train(["rlhf"], cfg, o, nproc=r.nproc, nnodes=c.nnodes, batch=g.batch_size,
                   per_device=g.per_device_batch_size, num_generations=g.num_generations, env=r.env,
                   extra=g.extra_args, dry_run=r.ex.dry_run))
    r.ex.last_checkpoint(out)


def do_cvo_data(r: Run) -> None:
    """VARIANT=no_cvo: the D2 rows (reasoning chains included) of the queries the filter kept."""
    d = r.data / "mrsi"
    r.ex.log(f"  (python) rows of {d / 'd2.jsonl'} whose (task, id) {d / 'd2_filtered.jsonl'} kept -> {d / 'd2_kept.jsonl'}")
    if r.ex.dry_run:
        return
    key = lambda row: (str(row.get("mcr_task") or "gmner"), str(row.get("mcr_id")))  # noqa: E731 (as the filter)
    kept = {key(x) for _, x, _ in iter_jsonl(d / "d2_filtered.jsonl")}
    rows = [x for _, x, _ in iter_jsonl(d / "d2.jsonl") if key(x) in kept]
    write_jsonl_atomic(d / "d2_kept.jsonl", rows)
    r.log(f"[cvo-data] {len(rows)} D2 rows of {len(kept)} kept queries -> {d / 'd2_kept.jsonl'}")


def do_cvo_sft(r: Run) -> None:
    """VARIANT=no_cvo: continue MRSI by SFT (MRSI's settings) on the CVO data, from the merged MRSI policy."""
    out = r.dir / "cvo_sft"
    r.ex.run(r.sft_command(model=r.policy()[0], dataset="mcr-mrsi:d2_kept", out=out,   # the registered loader's checks
                           steps=r.c.sft.max_steps, full=False, lr=None, extra=[]))
    r.ex.last_checkpoint(out)


def eval_policy(r: Run) -> Tuple[str, Optional[str]]:
    """What infer-eval runs, per VARIANT: the CVO adapter on the policy, or what the SFT stage trained."""
    if r.c.stages.cvo:
        return r.policy()[0], r.ex.read(r.dir / ("cvo_sft" if r.c.stages.cvo_by_sft else "cvo_grpo")
                                        / "last_checkpoint.txt")
    return r.sft_policy()   # sft, mrsi_only


def do_eval(r: Run) -> None:
    _infer_eval(r, *eval_policy(r), r.c.infer.dataset, r.data / "twitter_gmner" / f"{r.c.infer.gold_split}.jsonl",
                r.dir / "eval")


def do_curves(r: Run) -> None:
    """The run's training curves (reward, its terms, F1 when logged, loss) for the report."""
    names = [r.c.sft.dir, "cvo_grpo", "cvo_sft"]
    dirs = [n for n in names if (r.dir / n).is_dir() or (r.ex.dry_run and n in _trained_dirs(r))]
    r.ex.run(mcr("curves", *[r.dir / n for n in dirs], "--labels", *[n.replace("_", "-") for n in dirs],
                 "--out", r.dir / "curves"))


def _trained_dirs(r: Run) -> List[str]:
    c = r.c
    return ([c.sft.dir] if c.stages.mrsi else []) + \
        ([("cvo_sft" if c.stages.cvo_by_sft else "cvo_grpo")] if c.stages.cvo else [])


def stages(r: Run) -> List[Stage]:
    """The stages this run's profile and variant run, in order."""
    c = r.c
    last = lambda *p: (lambda run: run.dir.joinpath(*p))  # noqa: E731
    s: List[Stage] = []
    if c.profile == "tiny":
        s.append(Stage("tiny-model", lambda run: Path(run.model) / "config.json", do_tiny))
    s.append(Stage("prepare", lambda run: run.data / "sources.tsv", do_prepare))
    if c.stages.synth:
        s.append(Stage("synth", lambda run: run.data / "mrsi" / "d_r.jsonl", do_synth))
        s.append(Stage("split", lambda run: run.data / "mrsi" / "d2.jsonl", do_split))
    # ---- hook: the preflight (issue 21, 1) measures every row against the run's limits here, before the
    # first training stage (PREFLIGHT=true / `preflight: true`; on by default once the command exists)
    if c.preflight:
        s.append(Stage("preflight", lambda run: run.dir / "preflight" / "test" / "preflight.json", do_preflight))
    if c.stages.mrsi:
        s.append(Stage("sft" if c.variant == "sft" else "mrsi-sft", last(c.sft.dir, "last_checkpoint.txt"), do_sft))
        if c.merge and c.stages.cvo and c.sft.tuner != "full":
            s.append(Stage("merge", last("mrsi_merged", "last_checkpoint.txt"), do_merge))
        if c.trained_eval and c.stages.synth:
            s.append(Stage("trained-eval", last("trained_eval", "metrics.json"), do_trained_eval))
    if c.stages.cvo:
        s.append(Stage("cvo-filter", lambda run: run.data / "mrsi" / "d2_filtered.jsonl", do_filter))
        if c.stages.cvo_by_sft:
            s.append(Stage("cvo-data", lambda run: run.data / "mrsi" / "d2_kept.jsonl", do_cvo_data))
            s.append(Stage("cvo-data-sft", last("cvo_sft", "last_checkpoint.txt"), do_cvo_sft))
        else:
            s.append(Stage("cvo-grpo", last("cvo_grpo", "last_checkpoint.txt"), do_grpo))
    s.append(Stage("infer-eval", last("eval", "metrics.json"), do_eval))
    if c.curves:
        s.append(Stage("curves", last("curves", "reward.png"), do_curves))
    return s


def variant_check(r: Run) -> None:
    """The run folder belongs to this variant (variant.txt), or is new: its finished stages are reused."""
    f = r.dir / "variant.txt"
    prev = f.read_text().strip() if f.is_file() else ("mcr" if (r.dir / "times.tsv").is_file() else "")
    if prev and prev != r.c.variant:
        raise ValueError(f"{f}: this run folder was made by VARIANT={prev}, not {r.c.variant}; use another RUN_DIR")


def _report(r: Run) -> None:
    r.ex.run(mcr("report", r.dir))


def execute(r: Run) -> int:
    c = r.c
    plan = stages(r)
    names = [s.name for s in plan]
    if c.stop_after and c.stop_after not in names:
        raise ValueError(f"STOP_AFTER={c.stop_after} is not a stage of this run ({', '.join(names)})")
    variant_check(r)
    r.log(f"profile {c.profile}, variant {c.variant}, model {r.model}, template {r.template}, run dir {r.dir}; "
          f"resolution {r.resize_env()}")
    r.log("environment of every stage: " + " ".join(f"{k}={v}" for k, v in r.env.items()))
    r.log(f"run configuration: {' + '.join(c.overlays)} + environment; stages: {' -> '.join(names)}"
          + (f"; {r.nproc} process(es) per node, {r.gpus} GPU(s)" if c.profile == "paper" else ""))
    if r.ex.dry_run:
        for st in plan:
            out = st.output(r)
            if out.exists():
                print(f"# {st.name}: skipped ({out} exists)")
                continue
            print(f"# {st.name} -> {out}")
            st.run(r)
        print("# report")
        _report(r)
        return 0
    lock = RunLock(r.dir).acquire()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))   # stop the background server, free the lock
    try:
        if lock.stale:
            r.log(f"took over the stale lock of {lock.stale}: that run no longer runs")
        write_text_atomic(r.dir / "variant.txt", c.variant + "\n")
        resolved = {**c.to_dict(), "resolved": {"run_dir": str(r.dir), "model": r.model, "template": r.template,
                                                "family": r.family, "gpus": r.gpus, "nproc_per_node": r.nproc,
                                                "env": r.env, "stages": names}}
        write_text_atomic(r.dir / "run_config.yaml", yaml.safe_dump(resolved, sort_keys=False))
        (r.dir / "logs").mkdir(parents=True, exist_ok=True)
        times = r.dir / "times.tsv"
        for st in plan:
            out = st.output(r)
            if out.exists():
                r.log(f"{st.name}: skipped ({out} exists from an earlier run)")
                with open(times, "a") as f:
                    f.write(f"{st.name}\tskipped\n")
            else:
                r.log(f"{st.name} ...")
                t0 = time.time()
                try:
                    st.run(r)
                except StageFailed as e:
                    r.log(f"{st.name}: FAILED, not done ({e})")
                    print(f"mcr-swift pipeline: stage {st.name} failed: {e}", file=sys.stderr)
                    return 1
                if not out.exists():
                    print(f"mcr-swift pipeline: stage {st.name} finished without writing {out}", file=sys.stderr)
                    return 1
                secs = int(time.time() - t0)
                with open(times, "a") as f:
                    f.write(f"{st.name}\t{secs}\n")
                r.log(f"{st.name}: done in {secs} s (every command exited 0; {out} written)")
            if c.stop_after == st.name:
                r.log(f"stopping after {st.name} (STOP_AFTER)")
                break
        try:
            _report(r)
        except StageFailed as e:
            print(f"mcr-swift pipeline: the report failed: {e}", file=sys.stderr)
            return 1
        return 0
    finally:
        if not r.ex.dry_run:
            server.stop(r.pid_file)
        lock.release()


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="mcr-swift pipeline", description=__doc__.split("\n")[0])
    p.add_argument("--model", default="qwen25vl_7b", help="model overlay: recipes/runs/models/<NAME>.yaml")
    p.add_argument("--profile", default=None, help="paper or tiny (default $PROFILE, else paper)")
    p.add_argument("--variant", default=None, help="Table 1 / 3 row (default $VARIANT, else mcr)")
    p.add_argument("--run-dir", default=None, help="run folder (default $RUN_DIR, else runs/<model>_<profile>[_<variant>])")
    p.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                   help="a setting of the run configuration (dotted, e.g. filter.G=4); wins over the environment")
    p.add_argument("--stop-after", default=None, metavar="STAGE")
    p.add_argument("--dry-run", action="store_true", help="print every stage's commands; run and write nothing")
    a = p.parse_args(argv)
    sets = list(a.sets) + ([f"run_dir={a.run_dir}"] if a.run_dir else []) + \
        ([f"stop_after={a.stop_after}"] if a.stop_after else [])
    cfg = resolve(a.profile, a.model, a.variant, sets=sets)
    return execute(Run(cfg, dry_run=a.dry_run))


if __name__ == "__main__":
    sys.exit(main())
