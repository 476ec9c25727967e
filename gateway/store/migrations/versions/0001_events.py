"""Callback events, their deliveries (the outbox) and feed positions.

Revision ID: 0001
Revises:
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")  # SQLite: INTEGER PRIMARY KEY is the rowid
SECONDS = sa.Float(precision=53)  # Unix time, as a double: the same on SQLite and PostgreSQL, no time zones


def upgrade() -> None:
    op.create_table(
        "events",
        sa.Column("id", ID, primary_key=True, autoincrement=True),
        sa.Column("received_at", SECONDS, nullable=False),
        sa.Column("origin", sa.String(32), nullable=False),
        sa.Column("source_id", sa.String(256), nullable=False),
        sa.Column("study_instance_uid", sa.String(64), nullable=False),
        sa.Column("patient_id", sa.String(64), nullable=True),
        sa.Column("event_type", sa.String(64), nullable=False),
        sa.Column("body", sa.Text(), nullable=False),
        sa.Column("dedup_key", sa.String(64), nullable=False),
        sa.UniqueConstraint("dedup_key", name="uq_events_dedup_key"),
    )
    op.create_index("ix_events_study", "events", ["study_instance_uid"])
    op.create_index("ix_events_patient", "events", ["patient_id"])
    op.create_index("ix_events_received", "events", ["received_at"])
    op.create_table(
        "deliveries",
        sa.Column("id", ID, primary_key=True, autoincrement=True),
        sa.Column("event_id", ID, sa.ForeignKey("events.id", ondelete="CASCADE"), nullable=False),
        sa.Column("subscriber", sa.String(2048), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("next_attempt_at", SECONDS, nullable=False),
        sa.Column("lease_owner", sa.String(64), nullable=True),
        sa.Column("lease_until", SECONDS, nullable=True),
        sa.Column("last_status", sa.Integer(), nullable=True),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column("delivered_at", SECONDS, nullable=True),
        sa.Column("updated_at", SECONDS, nullable=False),
        sa.UniqueConstraint("event_id", "subscriber", name="uq_deliveries_event_subscriber"),
    )
    op.create_index("ix_deliveries_due", "deliveries", ["subscriber", "state", "next_attempt_at"])
    op.create_index("ix_deliveries_event", "deliveries", ["event_id"])
    op.create_table(
        "feed_positions",
        sa.Column("name", sa.String(64), primary_key=True),
        sa.Column("position", sa.BigInteger(), nullable=False),
        sa.Column("updated_at", SECONDS, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("feed_positions")
    op.drop_table("deliveries")
    op.drop_table("events")
