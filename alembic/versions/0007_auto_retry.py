"""Self-healing: each job's automatic retries (training.auto_retry), as app.retries.Retry records.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-03
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # Jobs from before this revision were never retried automatically.
    with op.batch_alter_table("job") as batch:
        batch.add_column(sa.Column("retries", sa.JSON(), nullable=False, server_default="[]"))


def downgrade() -> None:
    with op.batch_alter_table("job") as batch:
        batch.drop_column("retries")
