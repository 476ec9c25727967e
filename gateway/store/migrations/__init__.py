"""Alembic migrations of the gateway's store (run by `gateway.store.db.migrate` at start)."""
