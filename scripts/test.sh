#!/usr/bin/env bash
# The README's second command (and what CI runs): set up with test extras, then run the test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh --test
bash scripts/test_packages.sh
# curl: a real HTTP client for the serve tests (tests/deploy/test_serve_limits.py); no service comes with it.
if ! command -v curl >/dev/null 2>&1; then
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq curl
fi
.venv/bin/ruff check edgepack tests scripts
exec .venv/bin/python -m pytest -q "$@"
