"""Failures of a job's surroundings told apart from its own: a full disk, a database that is busy."""

from __future__ import annotations

import errno
import sqlite3
from pathlib import Path

import pytest
from sqlalchemy import text
from sqlalchemy.exc import OperationalError, ProgrammingError

from app.core import db as database
from app.core import disk
from worker import faults


def test_a_full_disk_is_told_apart_with_where_and_how_much(tmp_path: Path) -> None:
    run = tmp_path / "runs" / "job"
    (run / "outputs" / "checkpoint-2").mkdir(parents=True)
    (run / "outputs" / "checkpoint-2" / "optimizer.pt").write_bytes(b"\0" * 4096)
    wrapped = RuntimeError("could not save the checkpoint")
    wrapped.__cause__ = OSError(errno.ENOSPC, "No space left on device")
    found = faults.disk_full(wrapped, run)
    assert found is not None and found[0] == "disk_full"
    assert str(run) in found[1] and "Free at least 64.0 MiB" in found[1]
    assert "checkpoint of it about 4.0 KiB" in found[1]
    assert f"mounted at {disk.mount_point(run)}" in found[1]
    assert faults.disk_full(ValueError("a bug"), run) is None
    assert faults.disk_full(OSError(errno.EACCES, "Permission denied"), run) is None


def test_a_locked_database_is_busy_and_other_errors_are_not(tmp_path: Path) -> None:
    path = tmp_path / "forge.db"
    engine = database.make_engine(f"sqlite:///{path}")
    with engine.begin() as conn:
        conn.execute(text("CREATE TABLE t (x INTEGER)"))
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")
    try:
        quick = sqlite3.connect(path, timeout=0.1)
        with pytest.raises(sqlite3.OperationalError) as locked:
            quick.execute("INSERT INTO t VALUES (1)")
        assert database.unavailable(locked.value) == "busy"
        wrapped = OperationalError("INSERT", {}, locked.value)
        assert database.unavailable(wrapped) == "busy"
    finally:
        holder.execute("ROLLBACK")
    with pytest.raises(sqlite3.OperationalError) as missing:
        sqlite3.connect(path).execute("SELECT * FROM no_such_table")
    assert database.unavailable(missing.value) is None  # a bug, not something to wait out
    assert database.unavailable(sqlite3.OperationalError("database or disk is full")) == "full"
    engine.dispose()


def test_on_postgres_a_held_lock_and_an_absent_server_are_busy_and_a_bug_is_not(
    postgres_url: str, tmp_path: Path
) -> None:
    engine = database.make_engine(postgres_url)
    with engine.begin() as conn:
        conn.execute(text("CREATE TABLE t (x INTEGER)"))
        conn.execute(text("INSERT INTO t VALUES (1)"))
    with engine.connect() as holder, engine.connect() as other:
        holder.execute(text("UPDATE t SET x = 2"))  # the row lock held, its transaction open
        other.execute(text("SET lock_timeout = '50ms'"))  # as the engine's own 5 s, only shorter
        with pytest.raises(OperationalError) as locked:
            other.execute(text("UPDATE t SET x = 3"))
        assert database.unavailable(locked.value) == "busy"
        holder.rollback()
    with engine.connect() as conn, pytest.raises(ProgrammingError) as missing:
        conn.execute(text("SELECT * FROM no_such_table"))
    assert database.unavailable(missing.value) is None  # a bug, not something to wait out
    engine.dispose()
    away = database.make_engine(f"postgresql+psycopg://forge@/forge?host={tmp_path}")  # no server listens there
    with pytest.raises(OperationalError) as absent:
        away.connect()
    assert database.unavailable(absent.value) == "busy"
