"""Export jobs (a finished job's adapters exported again) and progress inside the exporting phase.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-24
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

OLD_PHASES = ("queued", "starting", "loading_model", "attaching_lora", "preparing_data", "training", "saving", "done")
NEW_PHASES = (*OLD_PHASES[:-1], "exporting", "done")
KINDS = ("training", "export")


def upgrade() -> None:
    with op.batch_alter_table("job") as batch:
        batch.alter_column(
            "phase",
            existing_type=sa.Enum(*OLD_PHASES, name="jobphase", native_enum=False),
            type_=sa.Enum(*NEW_PHASES, name="jobphase", native_enum=False),
            existing_nullable=False,
        )
        # Every job before this revision was a training job.
        batch.add_column(
            sa.Column("kind", sa.Enum(*KINDS, name="jobkind", native_enum=False), nullable=False, server_default="training")
        )
        batch.add_column(sa.Column("source_job_id", sa.String(length=32), nullable=True))
        batch.add_column(sa.Column("phase_progress", sa.Float(), nullable=True))
        batch.add_column(sa.Column("phase_detail", sa.String(length=512), nullable=True))


def downgrade() -> None:
    # Export jobs have no meaning before this revision; their files stay in runs/.
    op.execute("DELETE FROM job WHERE kind = 'export'")
    op.execute("UPDATE job SET phase = 'saving' WHERE phase = 'exporting'")
    with op.batch_alter_table("job") as batch:
        batch.drop_column("phase_detail")
        batch.drop_column("phase_progress")
        batch.drop_column("source_job_id")
        batch.drop_column("kind")
        batch.alter_column(
            "phase",
            existing_type=sa.Enum(*NEW_PHASES, name="jobphase", native_enum=False),
            type_=sa.Enum(*OLD_PHASES, name="jobphase", native_enum=False),
            existing_nullable=False,
        )
