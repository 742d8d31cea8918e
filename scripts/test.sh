#!/usr/bin/env bash
# The README's second command (and what CI runs): set up with test extras, then run the test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh --test
bash scripts/test_packages.sh
.venv/bin/ruff check edgepack tests scripts
exec .venv/bin/python -m pytest -q "$@"
