#!/usr/bin/env bash
# The README's second command (and what CI runs): set up with test extras, then run the test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh --test
# The registry tests start their own OCI registry on loopback: install Debian's docker-registry without
# letting the package start or enable its system service (policy-rc.d answers 101: "not allowed").
if ! command -v docker-registry >/dev/null; then
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  policy=/usr/sbin/policy-rc.d; saved=""
  [ -e "$policy" ] && saved=$(mktemp) && $SUDO cp -p "$policy" "$saved"
  printf '#!/bin/sh\nexit 101\n' | $SUDO tee "$policy" >/dev/null && $SUDO chmod 755 "$policy"
  $SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq docker-registry
  if [ -n "$saved" ]; then $SUDO mv "$saved" "$policy"; else $SUDO rm -f "$policy"; fi
  $SUDO update-rc.d docker-registry disable >/dev/null 2>&1 || true
fi
.venv/bin/ruff check edgepack tests scripts
exec .venv/bin/python -m pytest -q "$@"
