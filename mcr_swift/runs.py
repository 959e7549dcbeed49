"""ms-swift run folders: ms-swift writes each run of ``swift sft|rlhf`` to ``<output_dir>/v<N>-<time>/``
(args.json, logging.jsonl, checkpoint-<step>/). This module knows that naming, for the recipes
(`mcr_swift.pipeline.recipe_args`: the last checkpoint) and the reports (`mcr_swift.reports.curves`,
`mcr_swift.reports.report`: the newest run), so a report does not import the recipe-args module.
It imports nothing beyond the standard library."""

from __future__ import annotations

import re
from pathlib import Path

__all__ = ["version_number"]


def version_number(folder: Path) -> int:
    """N of an ms-swift run folder ``v<N>-<time>`` (-1 for another name): newer runs have larger N."""
    m = re.match(r"v(\d+)-", Path(folder).name)
    return int(m.group(1)) if m else -1
