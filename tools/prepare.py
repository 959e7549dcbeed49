#!/usr/bin/env python
"""Thin entry point: same as `mcr-swift prepare`."""
import sys

from mcr_swift.cli import main

sys.exit(main(["prepare", *sys.argv[1:]]))
