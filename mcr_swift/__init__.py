"""mcr-swift: MCR (Modality-aware Consistency Reasoning, arXiv 2602.04486) for grounded multimodal
NER as an ms-swift plugin.

Public API (imported lazily, so ``import mcr_swift`` stays cheap): `Entity`, `Sample`, `ENTITY_TYPES`,
`load_twitter_gmner`, `CoordinateSpace`, `iou`, `smart_resize`, `render_answer`, `parse_answer`, rewards
(Eq. 6-10, 13-18) `reward_terms`, `gmner_reward`, metrics (Eq. 19-31) `gmner_metrics`.

When ms-swift is already imported (as when it loads the plugin file printed by ``mcr-swift plugin`` and
given to ``--external_plugins``), importing this package registers the datasets and rewards; otherwise
call `mcr_swift.register()`. Layout and equation -> file: README.md; reference: docs/.
"""
from __future__ import annotations

import importlib
import sys

__version__ = "0.1.0"

_LAZY = {
    "Entity": "core.entities", "Sample": "core.entities", "ENTITY_TYPES": "core.entities", "Box": "core.entities",
    "load_twitter_gmner": "data.twitter", "ReadReport": "data.twitter", "GMNERFormatError": "data.twitter",
    "load_mner_mi": "data.mner_mi", "load_grec": "data.grec",
    "CoordinateSpace": "core.coords", "iou": "core.coords", "smart_resize": "core.coords",
    "render_answer": "core.answer",
    "parse_answer": "core.parser", "ParseResult": "core.parser",
    "reward_terms": "core.rewards", "gmner_reward": "core.rewards",
    "gmner_metrics": "core.metrics", "mner_mi_metrics": "core.metrics",
    "grec_metrics": "core.metrics",
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
