"""A real OpenSSH server on 127.0.0.1 for the SSH transport tests: throwaway host and user keys."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

SSHD = shutil.which("sshd") or ("/usr/sbin/sshd" if Path("/usr/sbin/sshd").is_file() else None)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _keygen(path: Path) -> None:
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(path)], check=True)


def start_sshd(directory: Path) -> tuple[subprocess.Popen, int, Path]:
    """Start sshd in the foreground on a free loopback port; returns (process, port, client config file)."""
    if os.geteuid() == 0:
        os.makedirs("/run/sshd", mode=0o755, exist_ok=True)  # sshd's privilege-separation directory
    _keygen(directory / "host_key")
    _keygen(directory / "id")
    shutil.copy(directory / "id.pub", directory / "authorized_keys")
    port = _free_port()
    (directory / "sshd_config").write_text(f"""\
Port {port}
ListenAddress 127.0.0.1
HostKey {directory / 'host_key'}
AuthorizedKeysFile {directory / 'authorized_keys'}
PidFile {directory / 'sshd.pid'}
StrictModes no
UsePAM no
PasswordAuthentication no
KbdInteractiveAuthentication no
PubkeyAuthentication yes
PermitRootLogin prohibit-password
MaxStartups 100
MaxSessions 100
LogLevel ERROR
""")
    (directory / "ssh_config").write_text(f"""\
Host 127.0.0.1
  IdentityFile {directory / 'id'}
  IdentitiesOnly yes
  UserKnownHostsFile {directory / 'known_hosts'}
  StrictHostKeyChecking accept-new
  LogLevel ERROR
  ControlMaster auto
  ControlPath {directory / 'cm-%C'}
  ControlPersist 5
""")
    process = subprocess.Popen([SSHD, "-D", "-e", "-f", str(directory / "sshd_config")], stderr=open(directory / "sshd.log", "w"))
    for _ in range(100):
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return process, port, directory / "ssh_config"
        if process.poll() is not None:
            break
        time.sleep(0.1)
    process.terminate()
    raise RuntimeError(f"sshd did not start: {(directory / 'sshd.log').read_text()}")
