#!/usr/bin/env bash
# Packages only the tests need, installed by scripts/test.sh (never by setup.sh, the README's first command).
# openssh-server: the deploy tests start their own sshd on 127.0.0.1 (tests/deploy/deploy_sshd.py);
# docker-registry: the registry tests start their own OCI registry on loopback. On Debian these packages
# would start and enable system services (sshd on port 22 with password login, a registry); a
# policy-rc.d that returns 101 stops invoke-rc.d from starting them, and the services are left
# disabled and stopped. Idempotent.
set -euo pipefail
TEST_PACKAGES=(openssh-server docker-registry)
missing=()
for package in "${TEST_PACKAGES[@]}"; do
  dpkg -s "$package" >/dev/null 2>&1 || missing+=("$package")
done
((${#missing[@]})) || exit 0

SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
POLICY=/usr/sbin/policy-rc.d
saved=""
if [ -e "$POLICY" ]; then saved=$(mktemp); $SUDO cp -p "$POLICY" "$saved"; fi
restore() {
  if [ -n "$saved" ]; then $SUDO cp -p "$saved" "$POLICY"; rm -f "$saved"; else $SUDO rm -f "$POLICY"; fi
}
trap restore EXIT
printf '#!/bin/sh\n# scripts/test_packages.sh: start no service while test packages install\nexit 101\n' | $SUDO tee "$POLICY" >/dev/null
$SUDO chmod 755 "$POLICY"

echo "test packages: installing ${missing[*]} (no service started)" >&2
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}"

# Leave the system services disabled and not running (the tests start their own on loopback).
if command -v systemctl >/dev/null 2>&1 && [ -d /run/systemd/system ]; then
  $SUDO systemctl disable --now ssh.service ssh.socket docker-registry.service >/dev/null 2>&1 || true
else
  $SUDO update-rc.d ssh disable >/dev/null 2>&1 || true
  $SUDO update-rc.d docker-registry disable >/dev/null 2>&1 || true
fi
if [ -d /etc/ssh ] && [ ! -e /etc/ssh/sshd_not_to_be_run ]; then $SUDO touch /etc/ssh/sshd_not_to_be_run; fi
