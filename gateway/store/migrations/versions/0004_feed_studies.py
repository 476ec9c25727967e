"""The studies a change feed has named and the gateway has not yet announced, and those it has (`feed_studies`).

Orthanc keeps its list of studies that are not yet stable in memory: killed within `StableAge` of a study's last
instance, it never emits that study's `StableStudy`. The follower therefore remembers each study the feed named
(`pending`) until it announces it (`announced`), in the same transactions as the feed position and the event, so
that neither a gateway restart nor a PACS restart loses or repeats one.

Revision ID: 0004
Revises: 0003
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "feed_studies",
        sa.Column("feed", sa.String(64), primary_key=True),
        sa.Column("study", sa.String(128), primary_key=True),  # the PACS's id of the study (Orthanc's, say)
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("seen_at", sa.Float(precision=53), nullable=False),
        sa.Column("updated_at", sa.Float(precision=53), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("feed_studies")
