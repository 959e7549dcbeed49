"""The commands of the pipeline's stages: ``swift <cmd> <stage config> <overrides>`` (the stage configs are
ms-swift YAML files, recipes/qwen25vl_7b/*.yaml; flags after the file override it), the project's own
``mcr-swift`` commands, and an `Executor` that runs them -- or, in a dry run, only prints them."""
from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import yaml

from .config import RECIPES, REPO
from .recipe_args import split_batch, write_last_checkpoint

#: the reward terms logged with weight 0 next to gmner_orm (curves only; the training reward is unchanged)
REWARD_TERMS = ["gmner_count", "gmner_span", "gmner_type", "gmner_iou", "gmner_entail", "gmner_format", "gmner_f1"]


class StageFailed(RuntimeError):
    """A command of a stage exited non-zero (the stage is not done)."""


class Deferred(str):
    """A value known only once an earlier stage has run (a dry run prints how the stage reads it)."""

    @classmethod
    def cat(cls, path: Path) -> "Deferred":
        return cls(f'"$(cat {path})"')


def stage_config(name: str, model_key: str = "qwen25vl_7b") -> Path:
    """The ms-swift config file of a stage (every model's differences are overrides: recipes/runs/models)."""
    return RECIPES / "qwen25vl_7b" / f"{name}.yaml"


def read_config(path: Path) -> dict:
    path = Path(path)
    if not path.exists():   # a dry run: a derived config (`derived_config`) not written, derived here
        stem, _, tag = path.name[:-len(".yaml")].rpartition(".")
        if tag in ("no_vllm", "one_process") and stem:
            parent = path.with_name(f"{stem}.yaml")
            src = read_config(parent if parent.exists() or "." in stem else stage_config(stem))
            if tag == "no_vllm":
                return {**{k: v for k, v in src.items() if not k.startswith(VLLM_KEYS)}, "use_vllm": False}
            env = {k: v for k, v in (src.get("ENV") or {}).items() if k not in LAUNCH_VARS}
            return {**src, "ENV": env}
    return yaml.safe_load(path.read_text(encoding="utf-8")) or {}


def _word(v: Any) -> str:
    if isinstance(v, Deferred):
        return v
    return "true" if v is True else "false" if v is False else str(v)


def changed(config: Path, overrides: Mapping[str, Any]) -> Dict[str, Any]:
    """The overrides whose value differs from the stage config's (None: left out)."""
    cfg = read_config(config)

    def words(v):
        return [_word(x) for x in v] if isinstance(v, (list, tuple)) else [_word(v)]
    return {k: v for k, v in overrides.items() if v is not None and not (k in cfg and words(v) == words(cfg[k]))}


def flags(overrides: Mapping[str, Any]) -> List[str]:
    """``{"max_steps": 3, "reward_funcs": [a, b]}`` -> ``--max_steps 3 --reward_funcs a b`` (None: left out)."""
    out: List[str] = []
    for k, v in overrides.items():
        if v is None:
            continue
        out.append(f"--{k}")
        out += [_word(x) for x in v] if isinstance(v, (list, tuple)) else [_word(v)]
    return out


def _shown(word: str) -> str:
    if isinstance(word, Deferred):
        return str(word)
    try:
        return shlex.quote(str(Path(word).relative_to(REPO))) if word.startswith(str(REPO) + "/") else shlex.quote(word)
    except ValueError:
        return shlex.quote(word)


@dataclass
class Command:
    argv: List[str]
    env: Dict[str, str] = field(default_factory=dict)   # set for this command (on top of the run's)

    def shell(self, hide: Mapping[str, str] = {}) -> str:
        """The command as a shell line; ``hide``: variables every stage has (printed once, not here). A
        variable whose value is None is removed from the child's environment (``env -u NAME``)."""
        env = [f"env -u {k}" for k, v in self.env.items() if v is None]
        env += [f"{k}={shlex.quote(v)}" for k, v in self.env.items() if v is not None and hide.get(k) != v]
        argv = ["mcr-swift", *self.argv[3:]] if self.argv[1:3] == ["-m", "mcr_swift.cli"] else self.argv
        if argv and argv[0] == str(Path(sys.executable).parent / "swift"):
            argv = ["swift", *argv[1:]]   # the venv's own swift, shown as the user types it
        return " ".join(env + [_shown(w) for w in argv])


def swift_exe(env: Mapping[str, str] = os.environ) -> List[str]:
    """The ``swift`` command (``SWIFT`` may name another, e.g. a recording stub in the tests): the one
    installed beside this interpreter (its venv) when there is one, else ``swift`` on PATH."""
    if env.get("SWIFT"):
        return shlex.split(env["SWIFT"])
    beside = Path(sys.executable).parent / "swift"
    return [str(beside)] if beside.is_file() else ["swift"]


def mcr(*args: Any) -> Command:
    """An ``mcr-swift`` command, run with this interpreter (works without the console script on PATH)."""
    return Command([sys.executable, "-m", "mcr_swift.cli", *(a if isinstance(a, Deferred) else str(a) for a in args)])


def swift(sub: Sequence[str], config: Path, overrides: Mapping[str, Any], env: Optional[Dict[str, str]] = None,
          extra: Sequence[str] = ()) -> Command:
    """``swift <sub> <config> --flag value ...``; ``env`` holds only what differs from the config's ENV."""
    cfg_env = {k: str(v) for k, v in (read_config(config).get("ENV") or {}).items()}
    shown = {k: v for k, v in (env or {}).items() if cfg_env.get(k) != v}
    cmd = Command([*swift_exe(), *sub, str(config), *flags(changed(config, overrides)), *extra], shown)
    cmd.child_env = dict(env or {})   # set in the child; ms-swift fills the rest from the config's ENV
    cmd.config_env = cfg_env
    if sub[:1] and sub[0] in ("sft", "rlhf", "infer", "pt"):   # the commands ms-swift may start through torchrun
        launched = {**cfg_env, **cmd.child_env}
        cmd.launch = "torchrun" if any(launched.get(k) is not None for k in LAUNCH_VARS) else "python"
    return cmd


def train(sub: Sequence[str], config: Path, overrides: Dict[str, Any], *, nproc: int, nnodes: int = 1,
          batch: Optional[int] = None, per_device: Optional[int] = None, num_generations: Optional[int] = None,
          env: Optional[Dict[str, str]] = None, extra: Sequence[str] = (), dry_run: bool = False) -> Command:
    """A ``swift sft|rlhf`` command keeping the config's effective (global) batch -- NPROC_PER_NODE x
    per-device x accumulation in the file, App. E.4 -- for ``nnodes x nproc`` processes (`split_batch`);
    ZeRO-2 only with more than one process."""
    if overrides.get("use_vllm") is False and read_config(config).get("use_vllm"):
        out_dir = Path(overrides.get("output_dir") or read_config(config)["output_dir"])
        config = without_vllm(config, out_dir, write=not dry_run)
        overrides = {k: v for k, v in overrides.items() if k != "use_vllm"}
    cfg = read_config(config)
    cfg_pd, cfg_acc = int(cfg["per_device_train_batch_size"]), int(cfg["gradient_accumulation_steps"])
    batch = batch or int(cfg["ENV"]["NPROC_PER_NODE"]) * cfg_pd * cfg_acc
    gens = num_generations or (int(cfg["num_generations"]) if "num_generations" in cfg else None)
    try:
        pd, acc = split_batch(batch, nproc, per_device, max_per_device=cfg_pd, num_generations=gens, nnodes=nnodes)
    except ValueError as e:
        raise ValueError(f"{config.name}: {e}") from None
    world = nproc * nnodes
    batch_flags = {"per_device_train_batch_size": pd if pd != cfg_pd else None,
                   "gradient_accumulation_steps": acc if acc != cfg_acc else None}
    if world == 1 and "deepspeed" in cfg and "deepspeed" not in overrides:
        batch_flags["deepspeed"] = ""            # one process: no ZeRO
    if world == 1 and not cfg.get("use_vllm") and not overrides.get("deepspeed"):
        config, run_env = one_process(config, Path(overrides.get("output_dir") or cfg["output_dir"]), env, dry_run)
    else:
        run_env = {"NPROC_PER_NODE": str(nproc), **({"NNODES": str(nnodes)} if nnodes > 1 else {}), **(env or {})}
    return swift(sub, config, {**overrides, **batch_flags}, run_env, extra)


#: ms-swift's torchrun variables (swift/cli/main.py: either one set means a torchrun launch)
LAUNCH_VARS = ("NPROC_PER_NODE", "NNODES")


def one_process(config: Path, out_dir: Path, env: Optional[Dict[str, str]], dry_run: bool = False
                ) -> Tuple[Path, Dict[str, Optional[str]]]:
    """A one-process stage runs as a plain ``python`` process, not through torchrun: ms-swift launches
    torchrun whenever NPROC_PER_NODE or NNODES is set (also to 1), and that worker's gloo process group
    is never destroyed, so its threads can abort the interpreter at exit with SIGABRT after the work is
    done (issue 20; docs/pipeline.md "Exit of a stage"). Returns the config without those ENV keys
    (``<out_dir>/<name>.one_process.yaml``; ms-swift would fill them from the file) and an environment
    that removes them from the child (value None)."""
    cfg_env = read_config(config).get("ENV") or {}
    if any(k in cfg_env for k in LAUNCH_VARS):
        config = derived_config(config, out_dir, "one_process", drop_env=LAUNCH_VARS, write=not dry_run,
                                why="without its torchrun variables (one process: a plain python launch)")
    return config, {**{k: None for k in LAUNCH_VARS}, **(env or {})}


#: the rollout-engine keys of cvo_grpo.yaml: ms-swift refuses vllm_mode without vLLM, and a flag cannot unset a key
VLLM_KEYS = ("use_vllm", "vllm_", "sleep_level")


def without_vllm(config: Path, out_dir: Path, write: bool = True) -> Path:
    """The stage config without its vLLM keys and with ``use_vllm: false`` (rollouts by the training model, no
    GPU), written beside the stage's outputs as ``<out_dir>/<name>.no_vllm.yaml``; every other line is the file's."""
    return derived_config(config, out_dir, "no_vllm", drop=VLLM_KEYS, write=write, why="without its vLLM keys",
                          add="use_vllm: false             # rollouts with the training model")


def derived_config(config: Path, out_dir: Path, tag: str, *, drop: Tuple[str, ...] = (),
                   drop_env: Tuple[str, ...] = (), add: str = "", write: bool = True, why: str = "") -> Path:
    """``config`` less its top-level keys starting with ``drop`` and its ``ENV:`` keys in ``drop_env``, plus
    the line ``add``, as ``<out_dir>/<stem>.<tag>.yaml`` (a flag cannot remove a key from the file); every
    other line is the file's."""
    name = Path(config).name
    stem = Path(config).name[:-len(Path(config).suffix)]
    target = Path(out_dir) / f"{stem}.{tag}.yaml"
    if write:
        lines, in_env = [], False
        for line in Path(config).read_text(encoding="utf-8").splitlines():
            if line and not line[0].isspace():
                in_env = line.startswith("ENV:")
            if drop and line.startswith(drop):
                continue
            if in_env and line[:1].isspace() and line.strip().split(":", 1)[0] in drop_env:
                continue
            lines.append(line)
        target.parent.mkdir(parents=True, exist_ok=True)
        from ..jsonl import write_text_atomic
        head = f"# {name} {why} (derived by mcr-swift)\n" if why else ""
        write_text_atomic(target, head + "\n".join(lines) + (f"\n{add}\n" if add else "\n"))
    return target


def grpo_overrides(*, use_vllm: bool, vllm_mode: str = "colocate", server_host: Optional[str] = None,
                   server_port: Optional[str] = None, log_reward_terms: bool = False,
                   adapters: Optional[str] = None, val_dataset: Optional[str] = None,
                   eval_steps: Optional[str] = None, per_device_eval: Optional[int] = None,
                   reward_funcs: Optional[List[str]] = None, reward_weights: Optional[List[str]] = None
                   ) -> Dict[str, Any]:
    """The CVO flags that depend on the run: rollouts (vLLM colocate / server, or the training model),
    the weight-0 reward terms, an adapter to keep training (also the KL reference), a dev evaluation."""
    o: Dict[str, Any] = {}
    if adapters:
        o.update(adapters=adapters, ref_adapters=adapters)
    if reward_funcs:
        o["reward_funcs"] = list(reward_funcs)
    if reward_weights:
        o["reward_weights"] = list(reward_weights)
    if log_reward_terms:
        o.update(reward_funcs=[*(reward_funcs or ["gmner_orm"]), *REWARD_TERMS],
                 reward_weights=[*(reward_weights or [1]), *[0] * len(REWARD_TERMS)])
    if not use_vllm:
        o["use_vllm"] = False   # train() then runs the config without its vLLM keys (`without_vllm`)
    elif vllm_mode == "server":
        if not server_host:
            raise ValueError("VLLM_MODE=server needs VLLM_SERVER_HOST (the `swift rollout` host)")
        o.update(vllm_mode="server", vllm_server_host=server_host, vllm_server_port=server_port or "8000",
                 sleep_level=0)
    if val_dataset:   # paper silent; ms-swift: the eval batch divisible by G
        o.update(val_dataset=val_dataset.split(), eval_strategy="steps", eval_steps=eval_steps,
                 per_device_eval_batch_size=per_device_eval)
    return o


class Executor:
    """Runs the stages' commands (stops on the first non-zero exit), or prints them (``dry_run``)."""

    def __init__(self, dry_run: bool = False, env: Optional[Mapping[str, str]] = None, log=print):
        self.dry_run, self.log = dry_run, log
        self.env = dict(os.environ if env is None else env)
        self.hide: Dict[str, str] = {}     # the run's own variables, printed once
        self.commands: List[Command] = []  # every command run (or printed), in order

    def run(self, cmd: Command) -> None:
        child = {**self.env, **getattr(cmd, "child_env", cmd.env)}
        child = {k: v for k, v in child.items() if v is not None}   # None: removed from the child
        # an inherited variable that wins over the config's ENV (ms-swift keeps the environment's) is shown too
        won = {k: child[k] for k, v in getattr(cmd, "config_env", {}).items() if k in child and child[k] != v}
        shown = Command(cmd.argv, {**won, **cmd.env})
        self.log(f"  $ {shown.shell(self.hide)}")
        if getattr(cmd, "launch", None):
            self.log(f"    launch={cmd.launch}" + (" (one process: no torchrun, so no process group to abort "
                                                     "the exit)" if cmd.launch == "python" else ""))
        self.commands.append(cmd)
        if self.dry_run:
            return
        rc = subprocess.run(cmd.argv, env=child, cwd=REPO).returncode
        if rc != 0:
            raise StageFailed(f"command exited {rc}: {cmd.shell()}")

    def remove(self, path: Path) -> None:
        self.log(f"  $ rm -rf {_shown(str(path))}")
        if not self.dry_run:
            shutil.rmtree(path, ignore_errors=True) if Path(path).is_dir() else Path(path).unlink(missing_ok=True)

    def read(self, path: Path) -> str:
        """A one-line file an earlier stage wrote (last_checkpoint.txt); in a dry run before it exists, the
        ``$(cat FILE)`` the stage will read."""
        p = Path(path)
        if p.is_file():
            return p.read_text().strip()
        if self.dry_run:
            return Deferred.cat(p)
        raise FileNotFoundError(f"{p}: missing (the stage before did not finish)")

    def last_checkpoint(self, output_dir: Path, checkpoint: Optional[Path] = None) -> None:
        """Record the stage's newest checkpoint in OUTPUT_DIR/last_checkpoint.txt: what later stages read."""
        self.log(f"  -> {_shown(str(Path(output_dir) / 'last_checkpoint.txt'))}")
        if not self.dry_run:
            try:
                write_last_checkpoint(Path(output_dir), checkpoint)
            except FileNotFoundError as e:     # exit 0 is not enough: the stage's output is its evidence
                raise StageFailed(f"exited 0 but left no checkpoint: {e}") from None


def infer_eval(ex: Executor, *, model: str, adapters: Optional[str], template: str, dataset: str, gold: str,
               backend: str, max_new_tokens: int, output_dir: Path, nproc: int, family: str,
               env: Dict[str, str], model_args: Dict[str, Any], extra: Sequence[str] = ()) -> None:
    """`swift infer` (infer.yaml) then `mcr-swift evaluate`; with vLLM an adapter is first merged
    (merge_lora.yaml) into OUTPUT_DIR/policy/merged, once, before the data-parallel launch."""
    output_dir = Path(output_dir)
    if backend == "vllm" and adapters:
        ex.remove(output_dir / "policy")
        ex.run(swift(["export"], stage_config("merge_lora"), {"model": model, "adapters": adapters,
                                                              "template": template,
                                                              "output_dir": output_dir / "policy" / "merged"},
                     env))
        model, adapters = str(output_dir / "policy" / "merged"), None
    result = output_dir / "infer.jsonl"
    if not ex.dry_run:
        output_dir.mkdir(parents=True, exist_ok=True)
    ex.remove(result)                            # swift infer appends to an existing file
    o: Dict[str, Any] = {"model": model, "adapters": adapters, "template": template,
                         "val_dataset": dataset.split(), "result_path": result, "max_new_tokens": max_new_tokens}
    if backend != "vllm":
        o.update(infer_backend=backend, max_batch_size=8)   # the transformers backend's batch
    o.update(model_args)
    if nproc == 1 and backend != "vllm":   # one process: a plain python launch (`one_process`)
        config, run_env = one_process(stage_config("infer"), output_dir, env, ex.dry_run)
    else:
        config, run_env = stage_config("infer"), {"NPROC_PER_NODE": str(nproc), **env}
    ex.run(swift(["infer"], config, o, run_env, extra))
    ev = mcr("evaluate", result, "--gold", gold, "--family", family, "--json-out", output_dir / "metrics.json")
    ev.env = dict(env)
    ex.run(ev)

