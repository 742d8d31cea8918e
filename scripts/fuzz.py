#!/usr/bin/env python3
"""Longer local fuzzing of edgepack's parsers (the CI run of tests/unit/test_fuzz.py uses 60 examples each).

    .venv/bin/python scripts/fuzz.py                  # 2000 random examples per property
    .venv/bin/python scripts/fuzz.py --examples 20000 -k archive

Each property asserts that only edgepack's own errors (BundleError and its subclasses) escape the
manifest parser, the signature envelope, the archive reader, the target-file parser and `verify`.
Runs are random (not derandomized like CI); hypothesis prints a reproducible failing example.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--examples", type=int, default=2000, help="examples per property (default 2000)")
    parser.add_argument("-k", dest="select", default=None, help="pytest -k expression to pick properties")
    args = parser.parse_args()
    env = {**os.environ, "EDGEPACK_FUZZ_EXAMPLES": str(args.examples), "EDGEPACK_FUZZ_RANDOM": "1"}
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(ROOT / "tests" / "unit" / "test_fuzz.py")]
    if args.select:
        command += ["-k", args.select]
    return subprocess.call(command, cwd=ROOT, env=env)


if __name__ == "__main__":
    sys.exit(main())
