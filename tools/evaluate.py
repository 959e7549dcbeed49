#!/usr/bin/env python
"""Thin entry point: same as `mcr-swift evaluate`."""
import sys

from mcr_swift.cli import main

sys.exit(main(["evaluate", *sys.argv[1:]]))
