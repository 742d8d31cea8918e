"""Shared rich consoles: results on stdout, progress and notes on stderr."""

import sys

from rich.console import Console

# Pipes and CI logs get wide lines instead of rich's 80-column default.
out = Console(width=None if sys.stdout.isatty() else 120)
err = Console(stderr=True, width=None if sys.stderr.isatty() else 120)
