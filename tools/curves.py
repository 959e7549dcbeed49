#!/usr/bin/env python
"""Thin entry point: same as `mcr-swift curves` (training curves of ms-swift runs as PNG)."""
import sys

from mcr_swift.cli import main

sys.exit(main(["curves", *sys.argv[1:]]))
