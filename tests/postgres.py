"""A real, throw-away Postgres server for the tests and the queue benchmark (Debian's `postgresql` package).

initdb into a temporary folder, listening on a unix socket in that folder only (no TCP port to collide on),
trust authentication for the local user `forge`. Postgres refuses to run as root, so as root the server runs
as the `postgres` system user the Debian package creates.
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import tempfile
import uuid
from pathlib import Path


def _bin(name: str) -> str | None:
    found = shutil.which(name)
    if found:
        return found
    versions = sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True)
    candidates = [v / name for v in versions if (v / name).is_file()]
    return str(candidates[0]) if candidates else None


def available() -> bool:
    return _bin("initdb") is not None and _bin("pg_ctl") is not None


class PostgresServer:
    """Start with `start()`, make databases with `new_database()`, end with `stop()`."""

    def __init__(self) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="forge-pg-"))
        self.data = self.root / "data"
        self.socket_dir = self.root  # a short path: unix socket paths are limited to ~100 bytes
        self._as: list[str] = []
        if os.getuid() == 0:
            user = pwd.getpwnam("postgres")
            os.chown(self.root, user.pw_uid, user.pw_gid)
            self._as = ["runuser", "-u", "postgres", "--"]

    def _run(self, *args: str) -> None:
        subprocess.run([*self._as, *args], check=True, capture_output=True, cwd="/")

    def start(self) -> PostgresServer:
        self._run(_bin("initdb") or "initdb", "-D", str(self.data), "-U", "forge", "--auth=trust", "-E", "UTF8")
        options = f"-k {self.socket_dir} -c listen_addresses='' -c fsync=off -c max_connections=200"
        self._run(
            _bin("pg_ctl") or "pg_ctl", "-D", str(self.data), "-o", options, "-l", str(self.root / "log"), "-w", "start"
        )
        return self

    def url(self, database: str = "postgres") -> str:
        return f"postgresql+psycopg://forge@/{database}?host={self.socket_dir}"

    def new_database(self) -> str:
        """A fresh, empty database; returns its SQLAlchemy URL."""
        import psycopg

        name = f"t_{uuid.uuid4().hex[:12]}"
        with psycopg.connect(f"dbname=postgres user=forge host={self.socket_dir}", autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def stop(self) -> None:
        try:
            self._run(_bin("pg_ctl") or "pg_ctl", "-D", str(self.data), "-m", "immediate", "stop")
        finally:
            shutil.rmtree(self.root, ignore_errors=True)
