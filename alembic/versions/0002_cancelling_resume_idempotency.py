"""Two-step cancel (`cancelling`), resume from checkpoints, Idempotency-Key on job creation.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-24
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

OLD_STATUSES = ("queued", "running", "succeeded", "failed", "cancelled")
NEW_STATUSES = ("queued", "running", "cancelling", "succeeded", "failed", "cancelled")


def upgrade() -> None:
    with op.batch_alter_table("job") as batch:
        batch.alter_column(
            "status",
            existing_type=sa.Enum(*OLD_STATUSES, name="jobstatus", native_enum=False),
            type_=sa.Enum(*NEW_STATUSES, name="jobstatus", native_enum=False),
            existing_nullable=False,
        )
        batch.add_column(sa.Column("resume_from", sa.String(length=512), nullable=True))
        batch.add_column(sa.Column("idempotency_key", sa.String(length=255), nullable=True))
        batch.add_column(sa.Column("request_hash", sa.String(length=64), nullable=True))
        batch.create_unique_constraint("uq_job_idempotency_key", ["idempotency_key"])


def downgrade() -> None:
    op.execute("UPDATE job SET status = 'running' WHERE status = 'cancelling'")
    with op.batch_alter_table("job") as batch:
        batch.drop_constraint("uq_job_idempotency_key", type_="unique")
        batch.drop_column("request_hash")
        batch.drop_column("idempotency_key")
        batch.drop_column("resume_from")
        batch.alter_column(
            "status",
            existing_type=sa.Enum(*NEW_STATUSES, name="jobstatus", native_enum=False),
            type_=sa.Enum(*OLD_STATUSES, name="jobstatus", native_enum=False),
            existing_nullable=False,
        )
