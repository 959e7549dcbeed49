#!/usr/bin/env python
"""Thin entry point: same as `mcr-swift tiny-model`."""
import sys

from mcr_swift.cli import main

sys.exit(main(["tiny-model", *sys.argv[1:]]))
