#!/usr/bin/env python
"""Thin entry point: same as `mcr-swift bias-report`."""
import sys

from mcr_swift.cli import main

sys.exit(main(["bias-report", *sys.argv[1:]]))
