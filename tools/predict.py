#!/usr/bin/env python
"""Thin entry point: same as `mcr-swift predict`."""
import sys

from mcr_swift.cli import main

sys.exit(main(["predict", *sys.argv[1:]]))
