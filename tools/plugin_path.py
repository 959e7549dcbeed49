#!/usr/bin/env python
"""Thin entry point: print the ms-swift plugin file (same as `mcr-swift plugin`)."""
import sys

from mcr_swift.cli import main

sys.exit(main(["plugin"]))
