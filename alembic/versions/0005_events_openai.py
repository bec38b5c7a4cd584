"""Job events (the list and the stream), and the OpenAI-compatible API's files and job extras.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-02
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

EVENT_TYPES = (
    "queued",
    "started",
    "phase",
    "metrics",
    "checkpoint",
    "evaluation",
    "gate",
    "cancel_requested",
    "requeued",
    "succeeded",
    "failed",
    "cancelled",
)
LEVELS = ("info", "warning", "error")


def upgrade() -> None:
    # Jobs from before this revision have no events; their state is still in the job table.
    op.create_table(
        "event",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("job_id", sa.String(length=32), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("level", sa.Enum(*LEVELS, name="eventlevel", native_enum=False), nullable=False),
        sa.Column("type", sa.Enum(*EVENT_TYPES, name="eventtype", native_enum=False), nullable=False),
        sa.Column("message", sa.String(), nullable=False),
        sa.Column("data", sa.JSON(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        # AUTOINCREMENT: an id is never reused, even after the newest events are deleted; it is a cursor.
        sqlite_autoincrement=True,
    )
    op.create_index("ix_event_job_id", "event", ["job_id", "id"], unique=False)
    op.create_table(
        "openai_file",
        sa.Column("id", sa.String(length=40), nullable=False),
        sa.Column("filename", sa.String(length=255), nullable=False),
        sa.Column("purpose", sa.String(length=32), nullable=False),
        sa.Column("bytes", sa.Integer(), nullable=False),
        sa.Column("path", sa.String(length=512), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_table(
        "openai_job",
        sa.Column("job_id", sa.String(length=32), nullable=False),
        sa.Column("training_file", sa.String(length=40), nullable=False),
        sa.Column("validation_file", sa.String(length=40), nullable=True),
        sa.Column("suffix", sa.String(length=64), nullable=True),
        sa.Column("hyperparameters", sa.JSON(), nullable=False),
        sa.Column("user_metadata", sa.JSON(), nullable=True),
        sa.PrimaryKeyConstraint("job_id"),
    )


def downgrade() -> None:
    op.drop_table("openai_job")
    op.drop_table("openai_file")
    op.drop_index("ix_event_job_id", table_name="event")
    op.drop_table("event")
