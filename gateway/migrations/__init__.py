"""Alembic migrations of the gateway's store (run by `gateway.db.migrate` at start)."""
