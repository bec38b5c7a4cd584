"""Run a process the way an air-gapped GPU worker runs: no route out, proxies pointing nowhere, hub offline,
and every attempt to open a network connection recorded, so a test can show that none was made."""

from __future__ import annotations

import functools
import subprocess
from pathlib import Path

# Loaded by every Python process started with this folder on PYTHONPATH (the worker, its training child, the
# converter and llama.cpp subprocesses): refuses and records any connection that is not a local socket file.
SITECUSTOMIZE = """
import os, socket, traceback

_LOG = os.environ["FORGE_NETWORK_LOG"]


def _record(what):
    with open(_LOG, "a") as handle:
        handle.write(f"pid {os.getpid()}: {what}\\n{''.join(traceback.format_stack(limit=8))}\\n")


_connect, _connect_ex = socket.socket.connect, socket.socket.connect_ex


def connect(self, address):
    if self.family != socket.AF_UNIX:
        _record(f"connect {address!r}")
        raise OSError(101, "Network is unreachable (blocked by the test)")
    return _connect(self, address)


def connect_ex(self, address):
    if self.family != socket.AF_UNIX:
        _record(f"connect_ex {address!r}")
        return 101
    return _connect_ex(self, address)


_getaddrinfo = socket.getaddrinfo


def getaddrinfo(host, *args, **kwargs):
    _record(f"getaddrinfo {host!r}")
    raise socket.gaierror(-3, "Temporary failure in name resolution (blocked by the test)")


socket.socket.connect, socket.socket.connect_ex, socket.getaddrinfo = connect, connect_ex, getaddrinfo
"""

DEAD_PROXY = "http://127.0.0.1:9"  # the discard port; nothing listens there


@functools.cache
def can_unshare_network() -> bool:
    """`unshare -n` (a network namespace with no routes) needs root or user namespaces; CI may not allow it."""
    try:
        return subprocess.run(["unshare", "-n", "true"], capture_output=True, timeout=10).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


class NoNetwork:
    """`prefix` and `env` for a process that must work without any network."""

    def __init__(self, folder: Path, root: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "sitecustomize.py").write_text(SITECUSTOMIZE)
        self.log = folder / "network-attempts.log"
        self.prefix = ["unshare", "-n"] if can_unshare_network() else []
        proxies = {name: DEAD_PROXY for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY")}
        self.env = {
            **proxies,
            **{name.lower(): value for name, value in proxies.items()},
            "NO_PROXY": "",
            "no_proxy": "",
            "HF_HUB_OFFLINE": "1",
            "PYTHONPATH": f"{folder}:{root}",
            "FORGE_NETWORK_LOG": str(self.log),
        }

    def attempts(self) -> str:
        return self.log.read_text() if self.log.exists() else ""
