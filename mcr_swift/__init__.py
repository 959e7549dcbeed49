"""mcr-swift: MCR (Modality-aware Consistency Reasoning, arXiv 2602.04486) for grounded multimodal
NER as an ms-swift plugin.

Public API (imported lazily, so ``import mcr_swift`` stays cheap):

* data model: `Entity`, `Sample`, `ENTITY_TYPES`
* data: `load_twitter_gmner`
* coordinates: `CoordinateSpace`, `iou`, `smart_resize`
* answers: `render_answer`, `parse_answer`
* rewards (Eq. 6-10, 13-18): `reward_terms`, `gmner_reward`
* metrics (Eq. 19-31): `gmner_metrics`

Layout: the pure core (`entities`, `coords`, `answer`, `rewards`) sits at the top and imports nothing
from ms-swift; the pipeline stages are subpackages: `data` (readers, rows, prepare), `synth` (MRSI
styles, synthesis, split, CVO filter, endpoint client), `plugin` (ms-swift registration, reward ORMs,
plugin file, tiny model), `evaluation` (parser, metrics, evaluate, baselines, predict), `reports`
(pictures, bias report, curves, run report) and `pipeline` (serve, recipe args). Every command runs
under ``mcr-swift <command>`` (`mcr_swift.cli`).

ms-swift registration: when ms-swift is already imported in the process (as it is when ms-swift
loads the plugin file ``mcr_swift/plugin/_file/mcr_swift_plugin.py``, printed by ``mcr-swift plugin``
and given to ``--custom_register_path`` / ``--external_plugins``), importing this package registers
the datasets and rewards; otherwise call `mcr_swift.register()`.
"""
from __future__ import annotations

import importlib
import sys

__version__ = "0.1.0"

_LAZY = {
    "Entity": "entities", "Sample": "entities", "ENTITY_TYPES": "entities", "Box": "entities",
    "load_twitter_gmner": "data.twitter", "ReadReport": "data.twitter", "GMNERFormatError": "data.twitter",
    "load_mner_mi": "data.mner_mi", "load_grec": "data.grec",
    "CoordinateSpace": "coords", "iou": "coords", "smart_resize": "coords",
    "render_answer": "answer",
    "parse_answer": "evaluation.parser", "ParseResult": "evaluation.parser",
    "reward_terms": "rewards", "gmner_reward": "rewards",
    "gmner_metrics": "evaluation.metrics", "mner_mi_metrics": "evaluation.metrics",
    "grec_metrics": "evaluation.metrics",
    "register": "plugin.registry", "plugin_path": "plugin.registry",
}

__all__ = sorted(_LAZY) + ["__version__"]


def __getattr__(name):
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'mcr_swift' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(_LAZY))


if "swift.dataset" in sys.modules or "swift.rewards" in sys.modules:
    # Inside an ms-swift process: register datasets and rewards now.
    importlib.import_module(f"{__name__}.plugin.registry").register()
