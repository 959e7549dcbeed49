"""mcr-swift: MCR (Modality-aware Consistency Reasoning, arXiv 2602.04486) for grounded multimodal
NER as an ms-swift plugin.

Public API (imported lazily, so ``import mcr_swift`` stays cheap):

* data model: `Entity`, `Sample`, `ENTITY_TYPES`
* data: `load_twitter_gmner`
* coordinates: `CoordinateSpace`, `iou`, `smart_resize`
* answers: `render_answer`, `parse_answer`
* rewards (Eq. 6-10, 13-18): `reward_terms`, `gmner_reward`
* metrics (Eq. 19-31): `gmner_metrics`

ms-swift registration: when ms-swift is already imported in the process (as it is when ms-swift
loads the plugin file ``mcr_swift/swift_plugin.py`` given to ``--custom_register_path``), importing
this package registers the datasets and rewards; otherwise call `mcr_swift.register()`.
"""
from __future__ import annotations

import importlib
import sys

__version__ = "0.1.0"

_LAZY = {
    "Entity": "types", "Sample": "types", "ENTITY_TYPES": "types", "Box": "types",
    "load_twitter_gmner": "twitter", "ReadReport": "twitter", "GMNERFormatError": "twitter",
    "load_mner_mi": "mner_mi", "load_grec": "grec",
    "CoordinateSpace": "coords", "iou": "coords", "smart_resize": "coords",
    "render_answer": "answer",
    "parse_answer": "parser", "ParseResult": "parser",
    "reward_terms": "rewards", "gmner_reward": "rewards",
    "gmner_metrics": "metrics", "mner_mi_metrics": "metrics", "grec_metrics": "metrics",
    "register": "registry", "plugin_path": "registry",
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
    importlib.import_module(f"{__name__}.registry").register()
