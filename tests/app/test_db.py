"""Migrations are the only source of the schema, the same ones on SQLite and Postgres; SQLite runs in WAL mode."""

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
from app.models import JobKind, JobPhase, JobStatus
from app.training_config import TrainingConfig


def test_migrations_match_the_models(db_settings: Settings) -> None:
    db = Database(db_settings)
    with db.engine.connect() as connection:
        diff = compare_metadata(MigrationContext.configure(connection), SQLModel.metadata)
    assert diff == []


def test_database_is_wal_and_migrations_round_trip(db_settings: Settings) -> None:
    db = Database(db_settings)
    with db.engine.connect() as connection:
        if db.engine.dialect.name == "sqlite":
            assert connection.execute(text("PRAGMA journal_mode")).scalar() == "wal"
        assert connection.execute(text("SELECT version_num FROM alembic_version")).scalar() == "0007"
    db.dispose()
    cfg = alembic_config(db_settings.sqlalchemy_url)
    command.downgrade(cfg, "base")
    command.upgrade(cfg, "head")
    Database(db_settings)  # a second start-up on a migrated database is a no-op


def test_upgrading_an_existing_database_keeps_its_jobs(db_settings: Settings) -> None:
    cfg = alembic_config(db_settings.sqlalchemy_url)
    command.upgrade(cfg, "0001")
    engine = make_engine(db_settings.sqlalchemy_url)
    with engine.begin() as connection:
        connection.execute(
            text(
                "INSERT INTO job (id, status, phase, config, created_at, updated_at, cancel_requested, attempt, step,"
                " epoch, loss) VALUES ('old1', 'succeeded', 'done', :config, '2026-01-02 03:04:05',"
                " '2026-01-02 03:04:05', FALSE, 1, 60, 2.0, 0.05)"
            ),
            {"config": json.dumps(TrainingConfig().model_dump(mode="json"))},
        )
    engine.dispose()
    db = Database(db_settings)  # start-up migrates to head
    with db.session() as session:
        job = jobs.get(session, "old1")
    assert (job.status, job.step, job.loss, job.resume_from, job.idempotency_key, job.kind, job.source_job_id) == (
        JobStatus.succeeded,
        60,
        0.05,
        None,
        None,
        JobKind.training,
        None,
    )


def test_upgrading_from_0002_keeps_jobs_as_training_jobs_and_export_jobs_round_trip(db_settings: Settings) -> None:
    cfg = alembic_config(db_settings.sqlalchemy_url)
    command.upgrade(cfg, "0002")
    engine = make_engine(db_settings.sqlalchemy_url)
    with engine.begin() as connection:
        connection.execute(
            text(
                "INSERT INTO job (id, status, phase, config, created_at, updated_at, cancel_requested, attempt, step,"
                " epoch, idempotency_key) VALUES ('old2', 'running', 'saving', :config, '2026-01-02 03:04:05',"
                " '2026-01-02 03:04:05', FALSE, 1, 60, 2.0, 'k1')"
            ),
            {"config": json.dumps(TrainingConfig().model_dump(mode="json"))},
        )
    engine.dispose()
    db = Database(db_settings)
    with db.session() as session:
        job = jobs.get(session, "old2")
        assert (job.kind, job.source_job_id, job.phase, job.phase_progress, job.idempotency_key) == (
            JobKind.training,
            None,
            JobPhase.saving,
            None,
            "k1",
        )
        export, created = jobs.create(session, TrainingConfig(), kind=JobKind.export, source_job_id="old2")
        assert created and export.kind == JobKind.export and export.source_job_id == "old2"
        session.execute(text("UPDATE job SET phase = 'exporting', phase_progress = 0.5 WHERE id = 'old2'"))
        session.commit()
    db.dispose()
    command.downgrade(cfg, "0002")  # export jobs go; the training job stays, back in a phase 0002 knows
    engine = make_engine(db_settings.sqlalchemy_url)
    with engine.connect() as connection:
        rows = connection.execute(text("SELECT id, phase FROM job")).all()
    engine.dispose()
    assert [tuple(row) for row in rows] == [("old2", "saving")]


def test_upgrading_from_0003_adds_the_worker_registry_and_keeps_jobs(db_settings: Settings) -> None:
    """The previous revision to head: jobs stay, the worker table appears; on Postgres the job table notifies."""
    from app import workers

    url = db_settings.sqlalchemy_url
    cfg = alembic_config(url)
    command.upgrade(cfg, "0003")
    engine = make_engine(url)
    with engine.begin() as connection:
        connection.execute(
            text(
                "INSERT INTO job (id, kind, status, phase, config, created_at, updated_at, cancel_requested, attempt,"
                " step, epoch) VALUES ('old3', 'training', 'queued', 'queued', :config, '2026-01-02 03:04:05',"
                " '2026-01-02 03:04:05', FALSE, 0, 0, 0.0)"
            ),
            {"config": json.dumps(TrainingConfig().model_dump(mode="json"))},
        )
    engine.dispose()
    db = Database(db_settings)
    with db.session() as session:
        assert jobs.get(session, "old3").status == JobStatus.queued
        workers.register(session, "host-a:1", [0, 1])
        [(record, job_id)] = workers.listing(session)
    assert (record.id, record.gpus, job_id) == ("host-a:1", [0, 1], None)
    if db.engine.dialect.name == "postgresql":
        with db.engine.connect() as connection:
            triggers = connection.execute(
                text("SELECT tgname FROM pg_trigger WHERE tgrelid = 'job'::regclass AND NOT tgisinternal")
            ).all()
        assert [row[0] for row in triggers] == ["job_changed"]
    db.dispose()
    command.downgrade(cfg, "0003")
    engine = make_engine(url)
    with engine.connect() as connection:
        assert connection.execute(text("SELECT id FROM job")).scalars().all() == ["old3"]
        assert not engine.dialect.has_table(connection, "worker")
    engine.dispose()
