#!/usr/bin/env python
"""Thin entry point: same as `mcr-swift pictures`."""
import sys

from mcr_swift.cli import main

sys.exit(main(["pictures", *sys.argv[1:]]))
