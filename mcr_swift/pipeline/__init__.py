"""The pipeline: `runner` (``mcr-swift pipeline``), its typed run configuration (`config`), the stages' commands
over the ms-swift stage configs (`commands`), one stage on its own (`stage`), the run-folder `lock`, `serve`
(a background swift deploy) and `recipe_args` (batch split, GPU count, last checkpoint). See docs/pipeline.md.
"""
