"""Migrations are the only source of the schema; SQLite runs in WAL mode."""

from __future__ import annotations

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import text
from sqlmodel import SQLModel

from alembic import command
from app.core.config import Settings
from app.core.db import Database, alembic_config


def test_migrations_match_the_models(settings: Settings) -> None:
    db = Database(settings)
    with db.engine.connect() as connection:
        diff = compare_metadata(MigrationContext.configure(connection), SQLModel.metadata)
    assert diff == []


def test_database_is_wal_and_migrations_round_trip(settings: Settings) -> None:
    db = Database(settings)
    with db.engine.connect() as connection:
        assert connection.execute(text("PRAGMA journal_mode")).scalar() == "wal"
        assert connection.execute(text("SELECT version_num FROM alembic_version")).scalar() == "0001"
    db.dispose()
    cfg = alembic_config(settings.sqlalchemy_url)
    command.downgrade(cfg, "base")
    command.upgrade(cfg, "head")
    Database(settings)  # a second start-up on a migrated database is a no-op
