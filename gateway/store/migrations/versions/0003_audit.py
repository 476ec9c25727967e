"""The audit trail (issue 13): one row per audited event, kept until retention purges it, shipped to syslog.

`record` is the whole audit record as JSON (`gateway.audit.records`); the other columns are what an auditor's search
filters on (patient, time, kind, outcome) and what the syslog shipper leases, as the callback outbox does.

Revision ID: 0003
Revises: 0002
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
SECONDS = sa.Float(precision=53)


def upgrade() -> None:
    op.create_table(
        "audit_records",
        sa.Column("id", ID, primary_key=True, autoincrement=True),
        sa.Column("recorded_at", SECONDS, nullable=False),
        sa.Column("request_id", sa.String(64), nullable=False),
        sa.Column("event", sa.String(32), nullable=False),
        sa.Column("outcome", sa.Integer(), nullable=False),
        sa.Column("patient_id", sa.String(64), nullable=True),
        sa.Column("study_uid", sa.String(64), nullable=True),
        sa.Column("subject", sa.String(256), nullable=True),
        sa.Column("record", sa.Text(), nullable=False),
        sa.Column("ship_state", sa.String(16), nullable=False),
        sa.Column("ship_attempts", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("next_ship_at", SECONDS, nullable=False),
        sa.Column("lease_owner", sa.String(64), nullable=True),
        sa.Column("lease_until", SECONDS, nullable=True),
        sa.Column("shipped_at", SECONDS, nullable=True),
    )
    op.create_index("ix_audit_patient_time", "audit_records", ["patient_id", "recorded_at"])
    op.create_index("ix_audit_time", "audit_records", ["recorded_at"])
    op.create_index("ix_audit_ship_due", "audit_records", ["ship_state", "next_ship_at"])


def downgrade() -> None:
    op.drop_table("audit_records")
