"""Events keep the callback body exactly as received (`raw_body`), beside its parsed fields (`body`).

Nullable: events stored before this revision have no bytes of their own and are still delivered as `body`; so
are the events the gateway builds from Orthanc's change feed. Adding a nullable column rewrites no row, on SQLite
(ALTER TABLE ... ADD COLUMN) as on PostgreSQL.

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("events", sa.Column("raw_body", sa.LargeBinary(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("events") as batch:  # SQLite before 3.35 has no DROP COLUMN: batch copies the table
        batch.drop_column("raw_body")
