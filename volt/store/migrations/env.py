"""Alembic environment: runs on the connection ``Database.upgrade`` passes in."""

from __future__ import annotations

from alembic import context

from volt.identity import tables as _identity_tables  # noqa: F401 - their metadata
from volt.store.schema import Base

connection = context.config.attributes.get("connection")
if connection is None:
    raise RuntimeError("run migrations with `volt db upgrade` (Database.upgrade)")

context.configure(connection=connection, target_metadata=Base.metadata, render_as_batch=True)
with context.begin_transaction():
    context.run_migrations()
