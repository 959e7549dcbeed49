#!/usr/bin/env python
"""Thin entry point: same as `mcr-swift baselines`."""
import sys

from mcr_swift.cli import main

sys.exit(main(["baselines", *sys.argv[1:]]))
