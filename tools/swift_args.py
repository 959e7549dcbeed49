#!/usr/bin/env python
"""Stand-in for `swift` that resolves `swift sft|rlhf ARGS` with ms-swift's own argument classes and
saves args.json without training (mcr_swift.pipeline.recipe_args.dry_run). Use: SWIFT="python tools/swift_args.py"
bash recipes/cvo_grpo.sh"""
import sys

from mcr_swift.pipeline.recipe_args import main

sys.exit(main(["dry-run", *sys.argv[1:]]))
