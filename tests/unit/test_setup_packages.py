"""The README's first command (scripts/setup.sh) installs no network service (issue 15, item 6).

Packages only tests need come from scripts/test_packages.sh (run by scripts/test.sh), which installs
them behind a policy-rc.d that returns 101 and leaves their services disabled and stopped.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SERVICE_PACKAGES = ("openssh-server", "ssh", "docker-registry", "dropbear", "telnetd", "apache2", "nginx", "rpcbind", "avahi-daemon", "samba")


def _apt_packages(script: Path, variable: str) -> list[str]:
    match = re.search(rf"^{variable}=\(([^)]*)\)", script.read_text(), re.MULTILINE)
    assert match, f"{script.name} has no {variable}=(...) line"
    return match.group(1).split()


def _installs_a_service(package: str) -> bool:
    listed = subprocess.run(["dpkg", "-L", package], capture_output=True, text=True, check=False)
    return any(re.search(r"(\.service|\.socket|^/etc/init\.d/.+)$", line) for line in listed.stdout.splitlines())


def test_setup_installs_no_network_service():
    packages = _apt_packages(ROOT / "scripts" / "setup.sh", "APT_PACKAGES")
    assert not set(packages) & set(SERVICE_PACKAGES), packages
    if shutil.which("dpkg") is None:
        pytest.skip("dpkg is not here to list what the packages install")
    assert [package for package in packages if _installs_a_service(package)] == []


def test_test_packages_start_no_service():
    script = (ROOT / "scripts" / "test_packages.sh").read_text()
    assert {"openssh-server", "docker-registry"} <= set(_apt_packages(ROOT / "scripts" / "test_packages.sh", "TEST_PACKAGES"))
    assert "exit 101" in script and "trap restore EXIT" in script  # policy-rc.d refuses starts, then is restored
    assert "disable --now ssh.service" in script
    test_sh = (ROOT / "scripts" / "test.sh").read_text()
    assert test_sh.index("scripts/setup.sh") < test_sh.index("scripts/test_packages.sh") < test_sh.index("pytest")
