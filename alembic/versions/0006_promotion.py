"""Promotion: a project's accepted model (who promoted which job, when and why), and the accepted job each job was
compared with by the no-regression gate.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-03
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # Jobs from before this revision were compared with no accepted model (there was none).
    op.create_table(
        "promotion",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("job_id", sa.String(length=32), nullable=False),
        sa.Column("promoted_at", sa.DateTime(), nullable=False),
        sa.Column("promoted_by", sa.String(length=255), nullable=True),
        sa.Column("note", sa.String(), nullable=True),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_promotion_job_id", "promotion", ["job_id"], unique=False)
    with op.batch_alter_table("job") as batch:
        batch.add_column(sa.Column("accepted_job_id", sa.String(length=32), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("job") as batch:
        batch.drop_column("accepted_job_id")
    op.drop_index("ix_promotion_job_id", table_name="promotion")
    op.drop_table("promotion")
