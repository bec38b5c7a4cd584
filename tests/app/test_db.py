"""Migrations are the only source of the schema; SQLite runs in WAL mode."""

from __future__ import annotations

import json

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import text
from sqlmodel import SQLModel

from alembic import command
from app import jobs
from app.core.config import Settings
from app.core.db import Database, alembic_config, make_engine
from app.models import JobStatus
from app.training_config import TrainingConfig


def test_migrations_match_the_models(settings: Settings) -> None:
    db = Database(settings)
    with db.engine.connect() as connection:
        diff = compare_metadata(MigrationContext.configure(connection), SQLModel.metadata)
    assert diff == []


def test_database_is_wal_and_migrations_round_trip(settings: Settings) -> None:
    db = Database(settings)
    with db.engine.connect() as connection:
        assert connection.execute(text("PRAGMA journal_mode")).scalar() == "wal"
        assert connection.execute(text("SELECT version_num FROM alembic_version")).scalar() == "0002"
    db.dispose()
    cfg = alembic_config(settings.sqlalchemy_url)
    command.downgrade(cfg, "base")
    command.upgrade(cfg, "head")
    Database(settings)  # a second start-up on a migrated database is a no-op


def test_upgrading_an_existing_database_keeps_its_jobs(settings: Settings) -> None:
    cfg = alembic_config(settings.sqlalchemy_url)
    command.upgrade(cfg, "0001")
    engine = make_engine(settings.sqlalchemy_url)
    with engine.begin() as connection:
        connection.execute(
            text(
                "INSERT INTO job (id, status, phase, config, created_at, updated_at, cancel_requested, attempt, step,"
                " epoch, loss) VALUES ('old1', 'succeeded', 'done', :config, '2026-01-02 03:04:05',"
                " '2026-01-02 03:04:05', 0, 1, 60, 2.0, 0.05)"
            ),
            {"config": json.dumps(TrainingConfig().model_dump(mode="json"))},
        )
    engine.dispose()
    db = Database(settings)  # start-up migrates to head
    with db.session() as session:
        job = jobs.get(session, "old1")
    assert (job.status, job.step, job.loss, job.resume_from, job.idempotency_key) == (
        JobStatus.succeeded,
        60,
        0.05,
        None,
        None,
    )
