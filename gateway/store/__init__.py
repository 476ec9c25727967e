"""Stored state: the database (SQLite or PostgreSQL), its migrations, and the new-exam events store."""
