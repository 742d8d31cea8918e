#!/usr/bin/env bash
# Sets up a development environment from nothing: system packages, .venv, edgepack and its pins.
# Idempotent: a second run only checks. Usage: bash scripts/setup.sh [--test]
set -euo pipefail
cd "$(dirname "$0")/.."

# g++ builds x86_64 bundles; the aarch64 cross compiler and qemu-user build and verify arm64 ones.
# Nothing here may install or start a network service (the test-only sshd: scripts/test_packages.sh).
APT_PACKAGES=(g++ python3-venv g++-aarch64-linux-gnu qemu-user)
missing=()
for package in "${APT_PACKAGES[@]}"; do
  dpkg -s "$package" >/dev/null 2>&1 || missing+=("$package")
done
if ((${#missing[@]})); then
  echo "setup: installing ${missing[*]}" >&2
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}"
fi

PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
  .venv/bin/python -m pip install -q --upgrade pip
fi
# CUDA targets build without a GPU: NVRTC + CUDA headers from pip (docs/cuda.md); plots: matplotlib;
# bench: OpenVINO for --compare
extras="[cuda,plots,bench]"
[ "${1:-}" = "--test" ] && extras="[test,cuda,plots,bench]"
.venv/bin/python -m pip install -q -e ".${extras}" 2>&1 | grep -v "^WARNING: Location" || true
.venv/bin/python -c "import edgepack, tvm, torch, onnxruntime" >/dev/null
echo "setup: ready (.venv/bin/edgepack)" >&2
