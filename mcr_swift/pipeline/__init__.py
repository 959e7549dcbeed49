"""Pipeline helpers used by the recipes: `serve` (start/stop a background swift deploy) and `recipe_args` (batch split, GPU count, last checkpoint, resolved swift args). See docs/pipeline.md.
"""
