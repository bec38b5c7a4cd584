"""The worker registry (GET /api/training/workers), and on Postgres a NOTIFY on every change to the job table,
which keeps the API's status cache true (SQLite has PRAGMA data_version for that).

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-02
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# The channel app/api/status_cache.py listens on; statement-level, so a bulk update costs one notification,
# and Postgres folds identical notifications of one transaction into one, delivered at commit.
CHANGED = """
CREATE OR REPLACE FUNCTION forge_job_changed() RETURNS trigger AS $$
BEGIN
    PERFORM pg_notify('forge_job_changed', '');
    RETURN NULL;
END
$$ LANGUAGE plpgsql
"""


def upgrade() -> None:
    op.create_table(
        "worker",
        sa.Column("id", sa.String(length=128), nullable=False),
        sa.Column("host", sa.String(length=255), nullable=False),
        sa.Column("pid", sa.Integer(), nullable=False),
        sa.Column("gpus", sa.JSON(), nullable=False),
        sa.Column("started_at", sa.DateTime(), nullable=False),
        sa.Column("heartbeat_at", sa.DateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    if op.get_bind().dialect.name == "postgresql":
        op.execute(CHANGED)
        op.execute(
            "CREATE TRIGGER job_changed AFTER INSERT OR UPDATE OR DELETE ON job "
            "FOR EACH STATEMENT EXECUTE FUNCTION forge_job_changed()"
        )


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP TRIGGER IF EXISTS job_changed ON job")
        op.execute("DROP FUNCTION IF EXISTS forge_job_changed()")
    op.drop_table("worker")
