"""The state store: SQLAlchemy 2 async over SQLite or PostgreSQL, Alembic migrations."""

from volt.store.catalog import EVERYTHING, Catalog
from volt.store.database import Database, SchemaOutdated, StoreError
from volt.store.inventory import Inventory
from volt.store.usage import UsageBucket, UsageLedger

__all__ = [
    "EVERYTHING",
    "Catalog",
    "Database",
    "Inventory",
    "SchemaOutdated",
    "StoreError",
    "UsageBucket",
    "UsageLedger",
]
