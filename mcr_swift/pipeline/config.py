"""The typed run configuration of ``mcr-swift pipeline``: profile x model x variant, read from small YAML
overlays (``recipes/runs/paper.yaml`` holds every key; ``tiny.yaml``, ``models/<model>.yaml`` and
``variants/<variant>.yaml`` change some), then the environment variables docs/pipeline.md documents
(`ENV_VARS`), then ``--set KEY=VALUE``. `resolve` returns a `RunConfig`; `RunConfig.to_dict` is what the
run writes to ``RUN_DIR/run_config.yaml``. A bad value is one ValueError naming the setting."""
from __future__ import annotations

import dataclasses
import os
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence

import yaml

REPO = Path(__file__).resolve().parents[2]
RECIPES = REPO / "recipes"
RUNS = RECIPES / "runs"
VARIANTS = ("mcr", "sft", "mrsi_only", "no_cvo", "no_dr", "no_inst", "cvo_only")
PROFILES = ("paper", "tiny")
MODELS = ("qwen25vl_7b", "mimovl_7b")


@dataclass
class Stages:
    synth: bool
    mrsi: bool
    cvo: bool
    cvo_by_sft: bool


@dataclass
class Sources:
    use: List[str]
    gmner_root: str
    image_dir: Optional[str]
    mner_mi_root: Optional[str]
    mner_mi_image_dir: Optional[str]
    grec_root: Optional[str]
    grec_image_dir: Optional[str]
    grec_train_size: int


@dataclass
class Synth:
    styles: List[str]
    per_post: int
    temperature: float
    max_tokens: int
    concurrency: Optional[int]
    base_url: Optional[str]
    model: Optional[str]
    llm_base_url: Optional[str]
    llm_model: Optional[str]
    mllm_base_url: Optional[str]
    mllm_model: Optional[str]
    mllm2_base_url: Optional[str]
    mllm2_model: Optional[str]
    chain_retries: int
    replace: str
    repeat_styles: bool
    max_completion_length: Optional[int]


@dataclass
class Split:
    d1_ratio: float
    unit: str


@dataclass
class Sft:
    dir: str
    dataset: str
    batch_size: Optional[int]
    per_device_batch_size: Optional[int]
    max_steps: Optional[int]
    epochs: Optional[int]
    learning_rate: Optional[float]
    tuner: str
    extra_args: List[str]


@dataclass
class Filter:
    queries: str
    G: int
    temperature: float
    top_k: int
    top_p: float
    max_tokens: int
    min_std: float
    min_max: float
    min_median: float
    max_median: float
    server_batch: Optional[int]


@dataclass
class Serve:
    max_new_tokens: int
    extra_args: Optional[List[str]]


@dataclass
class Grpo:
    batch_size: Optional[int]
    per_device_batch_size: Optional[int]
    max_steps: Optional[int]
    num_generations: Optional[int]
    max_completion_length: Optional[int]
    use_vllm: bool
    log_reward_terms: bool
    extra_args: List[str]


@dataclass
class Infer:
    dataset: str
    gold_split: str
    backend: str
    max_new_tokens: int


@dataclass
class RunConfig:
    profile: str
    model_key: str
    variant: str
    run_dir: Optional[str]
    model: Optional[str]
    template: Optional[str]
    family: Optional[str]
    seed: int
    limit: Optional[int]
    standin: bool
    nproc_per_node: Optional[int]
    nnodes: int
    env: Dict[str, str]
    stop_after: Optional[str]
    merge: bool
    trained_eval: bool
    curves: bool
    preflight: bool
    preflight_accept_losses: int
    stages: Stages
    sources: Sources
    synth: Synth
    split: Split
    sft: Sft
    filter: Filter
    serve: Serve
    grpo: Grpo
    infer: Infer
    train_args: Dict[str, Any]
    stage_args: Dict[str, Dict[str, Any]] = field(default_factory=dict)
    overlays: List[str] = field(default_factory=list)   # the files read, in order

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


#: environment variable -> (setting, how an empty value is read: "default" ignores it, "value" keeps "")
ENV_VARS: Dict[str, str] = {
    "RUN_DIR": "run_dir", "MODEL": "model", "TEMPLATE": "template", "MCR_MODEL_FAMILY": "family",
    "SEED": "seed", "LIMIT": "limit", "STANDIN": "standin", "NPROC_PER_NODE": "nproc_per_node",
    "NNODES": "nnodes", "STOP_AFTER": "stop_after", "MERGE": "merge", "TRAINED_EVAL": "trained_eval",
    "CURVES": "curves", "PREFLIGHT": "preflight",
    "SOURCES": "sources.use", "GMNER_ROOT": "sources.gmner_root", "IMAGE_DIR": "sources.image_dir",
    "MNER_MI_ROOT": "sources.mner_mi_root", "MNER_MI_IMAGE_DIR": "sources.mner_mi_image_dir",
    "GREC_ROOT": "sources.grec_root", "GREC_IMAGE_DIR": "sources.grec_image_dir",
    "GREC_TRAIN_SIZE": "sources.grec_train_size",
    "SYNTH_STYLES": "synth.styles", "SYNTH_PER_POST": "synth.per_post", "SYNTH_TEMPERATURE": "synth.temperature",
    "SYNTH_MAX_TOKENS": "synth.max_tokens", "SYNTH_CONCURRENCY": "synth.concurrency",
    "SYNTH_BASE_URL": "synth.base_url", "SYNTH_MODEL": "synth.model", "SYNTH_LLM_BASE_URL": "synth.llm_base_url",
    "SYNTH_LLM_MODEL": "synth.llm_model", "SYNTH_MLLM_BASE_URL": "synth.mllm_base_url",
    "SYNTH_MLLM_MODEL": "synth.mllm_model", "SYNTH_MLLM2_BASE_URL": "synth.mllm2_base_url",
    "SYNTH_MLLM2_MODEL": "synth.mllm2_model", "SYNTH_CHAIN_RETRIES": "synth.chain_retries",
    "SYNTH_REPLACE": "synth.replace", "SYNTH_MAX_COMPLETION_LENGTH": "synth.max_completion_length", "D1_RATIO": "split.d1_ratio", "SPLIT_UNIT": "split.unit",
    "PREFLIGHT_ACCEPT_LOSSES": "preflight_accept_losses",
    "SFT_BATCH_SIZE": "sft.batch_size", "SFT_PER_DEVICE_BATCH_SIZE": "sft.per_device_batch_size",
    "SFT_MAX_STEPS": "sft.max_steps", "SFT_EPOCHS": "sft.epochs", "SFT_LEARNING_RATE": "sft.learning_rate",
    "SFT_TUNER": "sft.tuner", "SFT_EXTRA_ARGS": "sft.extra_args",
    "FILTER_SERVER_BATCH": "filter.server_batch", "CVO_QUERIES": "filter.queries", "FILTER_G": "filter.G", "FILTER_TEMPERATURE": "filter.temperature",
    "FILTER_TOP_K": "filter.top_k", "FILTER_TOP_P": "filter.top_p", "FILTER_MAX_TOKENS": "filter.max_tokens",
    "FILTER_MIN_STD": "filter.min_std", "FILTER_MIN_MAX": "filter.min_max",
    "FILTER_MIN_MEDIAN": "filter.min_median", "FILTER_MAX_MEDIAN": "filter.max_median",
    "SERVE_MAX_NEW_TOKENS": "serve.max_new_tokens", "SERVE_EXTRA_ARGS": "serve.extra_args",
    "GRPO_BATCH_SIZE": "grpo.batch_size", "GRPO_MAX_STEPS": "grpo.max_steps",
    "NUM_GENERATIONS": "grpo.num_generations", "MAX_COMPLETION_LENGTH": "grpo.max_completion_length",
    "USE_VLLM": "grpo.use_vllm", "LOG_REWARD_TERMS": "grpo.log_reward_terms",
    "INFER_BACKEND": "infer.backend", "MAX_NEW_TOKENS": "infer.max_new_tokens",
}
#: an empty value of these means "none" (bash's ${VAR-default}: MNER_MI_ROOT= leaves the source out)
EMPTY_IS_VALUE = {"MNER_MI_ROOT", "GREC_ROOT"}
#: resize and instruction variables every stage inherits from the run's environment (recorded in ``env``)
PASS_ENV = ("MAX_PIXELS", "MIN_PIXELS", "IMAGE_MAX_TOKEN_NUM", "IMAGE_MIN_TOKEN_NUM", "MCR_TEMPLATE_MAX_PIXELS",
            "MCR_INSTRUCTION")


def _merge(base: dict, over: Mapping, where: str, path: str = "") -> dict:
    out = dict(base)
    for k, v in over.items():
        key = f"{path}{k}"
        if k not in base and path not in ("env.", "train_args.") and not key.startswith("stage_args"):
            raise ValueError(f"{where}: unknown setting '{key}'")
        if isinstance(v, Mapping) and isinstance(base.get(k), Mapping) and not key.startswith("stage_args"):
            out[k] = _merge(base[k], v, where, key + ".")
        elif isinstance(v, Mapping) and key == "stage_args":
            out[k] = {s: {**base.get(k, {}).get(s, {}), **a} for s, a in {**base.get(k, {}), **v}.items()}
        else:
            out[k] = v
    return out


def read_yaml(path: Path) -> dict:
    try:
        data = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as e:
        raise ValueError(f"{path}: not valid YAML ({' '.join(str(e).split())})") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a mapping of settings")
    return data


def _set(d: dict, dotted: str, value: Any) -> None:
    *parents, last = dotted.split(".")
    for p in parents:
        d = d.setdefault(p, {})
    d[last] = value


def _parse_word(raw: str, hint) -> Any:
    """A setting from a string (environment variable or --set) by its field type."""
    origin = typing.get_origin(hint)
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    if origin is typing.Union:
        return None if raw.strip().lower() in ("null", "none") else _parse_word(raw, args[0])
    if origin in (list, List):
        import shlex
        sep = "," if "," in raw and " " not in raw.strip() else None
        return [w for w in (raw.split(",") if sep else shlex.split(raw)) if w]
    if hint is bool:
        v = raw.strip().lower()
        if v in ("true", "1", "yes"):
            return True
        if v in ("false", "0", "no"):
            return False
        raise ValueError(f"'{raw}' is not true or false")
    if hint is int:
        try:
            return int(raw)
        except ValueError:
            raise ValueError(f"'{raw}' is not an integer") from None
    if hint is float:
        try:
            return float(raw)
        except ValueError:
            raise ValueError(f"'{raw}' is not a number") from None
    return raw


def _hint(dotted: str):
    cls, hint = RunConfig, None
    for part in dotted.split("."):
        hints = typing.get_type_hints(cls)
        if part not in hints:
            raise ValueError(f"unknown setting '{dotted}'")
        hint = hints[part]
        cls = hint if dataclasses.is_dataclass(hint) else None
        if cls is None:
            break
    return hint


def _build(cls, data: dict, where: str):
    hints = typing.get_type_hints(cls)
    kw = {}
    for f in dataclasses.fields(cls):
        if f.name not in data:
            if f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING:
                continue
            raise ValueError(f"{where}: missing setting '{f.name}'")
        v, hint = data[f.name], hints[f.name]
        if dataclasses.is_dataclass(hint):
            v = _build(hint, v or {}, where)
        elif v is not None and isinstance(v, str) and hint in (int, float, bool, Optional[int], Optional[float]):
            try:
                v = _parse_word(v, hint)
            except ValueError as e:
                raise ValueError(f"{where}: {f.name}: {e}") from None
        elif isinstance(v, int) and not isinstance(v, bool) and hint in (float, Optional[float]):
            v = float(v)
        kw[f.name] = v
    return cls(**kw)


def resolve(profile: Optional[str] = None, model_key: Optional[str] = None, variant: Optional[str] = None,
            env: Optional[Mapping[str, str]] = None, sets: Sequence[str] = ()) -> RunConfig:
    """The run configuration: paper.yaml, the profile / model / variant overlays, the environment
    (`ENV_VARS`), then ``sets`` (``KEY=VALUE``, dotted keys). Checks every value."""
    env = os.environ if env is None else env
    profile = profile or env.get("PROFILE") or "paper"
    variant = variant or env.get("VARIANT") or "mcr"
    model_key = model_key or "qwen25vl_7b"
    for name, value, allowed in (("PROFILE", profile, PROFILES), ("VARIANT", variant, VARIANTS),
                                 ("--model", model_key, MODELS)):
        if value not in allowed:
            raise ValueError(f"{name} must be {', '.join(allowed[:-1])} or {allowed[-1]}, got '{value}'")
    files = [RUNS / "paper.yaml"]
    if profile == "tiny":
        files.append(RUNS / "tiny.yaml")
        if env.get("TINY_MEMORISE", "true").strip().lower() == "false":
            files.append(RUNS / "tiny_wiring.yaml")
    files += [RUNS / "models" / f"{model_key}.yaml", RUNS / "variants" / f"{variant}.yaml"]
    data: dict = {}
    for f in files:
        over = read_yaml(f)
        data = over if not data else _merge(data, over, str(f.relative_to(REPO)))
    if profile == "tiny":
        data["model"] = None   # the tiny model (RUN_DIR/tiny-qwen2_5_vl) unless MODEL is set
    data["overlays"] = [str(f.relative_to(REPO)) for f in files]
    data["profile"], data["variant"], data["model_key"] = profile, variant, model_key
    # the documented environment variables
    for name, dotted in ENV_VARS.items():
        raw = env.get(name)
        if raw is None or (raw == "" and name not in EMPTY_IS_VALUE):
            continue
        try:
            _set(data, dotted, _parse_word(raw, _hint(dotted)) if raw != "" else "")
        except ValueError as e:
            raise ValueError(f"{name}: {e}") from None
    if env.get("PER_DEVICE_BATCH_SIZE"):   # both training stages, as the stage recipes read it
        try:
            per_device = _parse_word(env["PER_DEVICE_BATCH_SIZE"], int)
        except ValueError as e:
            raise ValueError(f"PER_DEVICE_BATCH_SIZE: {e}") from None
        if not env.get("SFT_PER_DEVICE_BATCH_SIZE"):
            data["sft"]["per_device_batch_size"] = per_device
        data["grpo"]["per_device_batch_size"] = per_device
    data["env"] = {**data.get("env", {}), **{k: env[k] for k in PASS_ENV if env.get(k)}}
    if variant == "no_dr" and env.get("NO_DR_STYLE") is not None:
        data["synth"]["styles"] = [w for w in env["NO_DR_STYLE"].split(",")] if env["NO_DR_STYLE"] else []
    if variant == "no_inst" and env.get("NO_INST_INSTRUCTION"):
        data["env"]["MCR_INSTRUCTION"] = env["NO_INST_INSTRUCTION"]
    for s in sets:
        key, eq, raw = s.partition("=")
        if not eq:
            raise ValueError(f"--set {s}: expected KEY=VALUE")
        try:
            _set(data, key.strip(), _parse_word(raw, _hint(key.strip())))
        except ValueError as e:
            raise ValueError(f"--set {key}: {e}") from None
    cfg = _build(RunConfig, data, "run configuration")
    _check(cfg)
    return cfg


def _check(c: RunConfig) -> None:
    if c.variant == "no_dr" and len(c.synth.styles) != 1:
        raise ValueError(f"NO_DR_STYLE must name one style, got '{','.join(c.synth.styles)}'")
    if c.filter.queries not in ("d2", "d_r"):
        raise ValueError(f"CVO_QUERIES must be d2 or d_r, got '{c.filter.queries}'")
    if c.sft.tuner not in ("lora", "full"):
        raise ValueError(f"SFT_TUNER must be lora or full, got '{c.sft.tuner}'")
    if c.infer.backend not in ("vllm", "transformers"):
        raise ValueError(f"INFER_BACKEND must be vllm or transformers, got '{c.infer.backend}'")
    bad = [s for s in c.sources.use if s not in ("gmner", "mner_mi", "grec")]
    if bad:
        raise ValueError(f"SOURCES: unknown source {bad[0]!r} (gmner, mner_mi, grec)")
    for name, v in (("LIMIT", c.limit), ("SEED", c.seed), ("SFT_BATCH_SIZE", c.sft.batch_size),
                    ("SFT_EPOCHS", c.sft.epochs), ("GRPO_BATCH_SIZE", c.grpo.batch_size),
                    ("NUM_GENERATIONS", c.grpo.num_generations), ("FILTER_G", c.filter.G),
                    ("SYNTH_PER_POST", c.synth.per_post), ("NPROC_PER_NODE", c.nproc_per_node),
                    ("NNODES", c.nnodes)):
        if v is not None and (v < 0 or (v == 0 and name not in ("SEED", "SYNTH_PER_POST"))):
            raise ValueError(f"{name} must be positive, got {v}")
    if not 0 < c.split.d1_ratio < 1:
        raise ValueError(f"D1_RATIO must be between 0 and 1, got {c.split.d1_ratio}")
    if c.model is None and c.profile == "paper":
        raise ValueError("set MODEL (the model overlays do)")
