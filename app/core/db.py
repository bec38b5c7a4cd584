"""The database engine (SQLite in WAL mode, or Postgres) and migrations, applied at start-up by alembic alone."""

from __future__ import annotations

import fcntl
import sqlite3
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from alembic.config import Config
from sqlalchemy import Engine, event, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError
from sqlalchemy.pool import NullPool
from sqlmodel import Session, create_engine

from alembic import command
from app.core.config import Settings

ROOT = Path(__file__).resolve().parents[2]

# How long a write waits for another connection's lock before it fails as `busy` (SQLite's busy_timeout, Postgres'
# lock_timeout).
# Long enough for any of our own transactions (milliseconds each); short enough that a database held locked for
# long by someone else (a backup, a long query) gets the API's 503 within seconds, and lets the worker go on
# training and retry (worker/loop.py) instead of blocking its supervision loop.
BUSY_TIMEOUT_SECONDS = 5.0

# SQLite's words for "cannot write now, try again later" and for "the disk is full".
_BUSY_MESSAGES = ("database is locked", "database table is locked", "unable to open database file", "disk i/o error")
_FULL_MESSAGES = ("database or disk is full",)


def unavailable(exc: BaseException) -> str | None:
    """Why the database refused a statement that may work later: "full" (its disk), "busy" (locked by another
    process, or not reachable now), or None for any other error (a bug: not to be retried)."""
    error = exc.orig if isinstance(exc, DBAPIError) else exc
    # psycopg is loaded only with a Postgres URL (an SQLite-only install need not have it): an error of its own
    # means it is loaded.
    psycopg = sys.modules.get("psycopg")
    if psycopg is not None and isinstance(error, psycopg.Error):
        return _postgres_unavailable(psycopg, error)
    if not isinstance(error, sqlite3.DatabaseError):
        return None
    message = str(error).lower()
    if any(text in message for text in _FULL_MESSAGES):
        return "full"
    if any(text in message for text in _BUSY_MESSAGES):
        return "busy"
    return None


def _postgres_unavailable(psycopg: Any, error: Any) -> str | None:
    """Postgres' twin of the SQLite words: its disk full (53100), or an operational error (the server away,
    restarting or refusing connections, a lock not granted within the lock timeout, a deadlock broken, a
    serialization conflict), less a program limit (class 54: the statement itself is at fault)."""
    state = error.sqlstate or ""
    if state == "53100":
        return "full"
    if isinstance(error, psycopg.OperationalError) and not state.startswith("54"):
        return "busy"
    return None


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    # WAL lets the API read while the worker writes; busy_timeout makes writers queue rather than fail.
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute(f"PRAGMA busy_timeout={int(BUSY_TIMEOUT_SECONDS * 1000)}")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


def make_engine(url: str) -> Engine:
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        if parsed.database and parsed.database != ":memory:":
            Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": BUSY_TIMEOUT_SECONDS})
        event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    if parsed.get_backend_name() == "postgresql":
        # As SQLite's busy timeout: a row lock held by someone else, or a server that does not answer, fails the
        # statement as `busy` within seconds (the API's 503, the worker's retry) instead of blocking it.
        timeout = int(BUSY_TIMEOUT_SECONDS)
        connect_args = {"connect_timeout": timeout, "options": f"-c lock_timeout={timeout * 1000}"}
        return create_engine(url, pool_pre_ping=True, connect_args=connect_args)
    return create_engine(url, pool_pre_ping=True)


def alembic_config(url: str) -> Config:
    cfg = Config(str(ROOT / "alembic.ini"))
    cfg.set_main_option("script_location", str(ROOT / "alembic"))
    cfg.set_main_option("sqlalchemy.url", url)
    cfg.attributes["skip_logging"] = True  # leave the host process's logging alone
    return cfg


# Any fixed number: the key of the Postgres advisory lock that one migrating process holds at a time.
MIGRATE_LOCK_KEY = 0x466F726765


def is_postgres(url: str) -> bool:
    return make_url(url).get_backend_name() == "postgresql"


def migrate(url: str) -> None:
    """Bring the schema to head; a lock (a file for SQLite, an advisory lock on Postgres) keeps an API and
    workers starting together from racing."""
    parsed = make_url(url)
    if is_postgres(url):
        engine = create_engine(url, poolclass=NullPool)
        try:
            with engine.connect() as connection:
                connection.execute(text("SELECT pg_advisory_lock(:key)"), {"key": MIGRATE_LOCK_KEY})
                try:
                    command.upgrade(alembic_config(url), "head")
                finally:
                    connection.execute(text("SELECT pg_advisory_unlock(:key)"), {"key": MIGRATE_LOCK_KEY})
        finally:
            engine.dispose()
        return
    lock_path = (
        Path(parsed.database + ".migrate.lock")
        if parsed.get_backend_name() == "sqlite" and parsed.database and parsed.database != ":memory:"
        else None
    )
    if lock_path is None:
        command.upgrade(alembic_config(url), "head")
        return
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with lock_path.open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            command.upgrade(alembic_config(url), "head")
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


class Database:
    """An engine for one settings object, migrated on creation."""

    def __init__(self, settings: Settings) -> None:
        self.url = settings.sqlalchemy_url
        migrate(self.url)
        self.engine = make_engine(self.url)

    @contextmanager
    def session(self) -> Iterator[Session]:
        with Session(self.engine, expire_on_commit=False) as session:
            yield session

    def dispose(self) -> None:
        self.engine.dispose()
