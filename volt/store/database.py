"""Opening the store and migrating it.

SQLite (a file in the data folder) by default, PostgreSQL by URL. Migrations
are Alembic's, run in-process over the async connection
(``Database.upgrade``); services that only read (the API) check that the
schema is current instead (``Database.check_current``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import event
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)

MIGRATIONS = Path(__file__).parent / "migrations"


class StoreError(Exception):
    pass


class SchemaOutdated(StoreError):
    pass


def _alembic_config() -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    return config


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    # WAL lets the API read while the scheduler writes; busy_timeout makes a
    # writer wait for a lock instead of failing at once.
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA busy_timeout=5000")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


class Database:
    def __init__(self, url: str) -> None:
        self.url = url
        if url.startswith("sqlite"):
            path = url.split("///", 1)[-1]
            if path and path != ":memory:":
                Path(path).parent.mkdir(parents=True, exist_ok=True)
        self.engine: AsyncEngine = create_async_engine(url, pool_pre_ping=True)
        if self.engine.dialect.name == "sqlite":
            event.listen(self.engine.sync_engine, "connect", _sqlite_pragmas)
        self.sessions = async_sessionmaker(self.engine, expire_on_commit=False)

    def session(self) -> AsyncSession:
        return self.sessions()

    async def close(self) -> None:
        await self.engine.dispose()

    async def upgrade(self, revision: str = "head") -> None:
        """Bring the schema to the newest migration (or to ``revision``: tests
        build an older store this way)."""

        def run(connection: Connection) -> None:
            config = _alembic_config()
            config.attributes["connection"] = connection
            command.upgrade(config, revision)

        async with self.engine.begin() as connection:
            await connection.run_sync(run)

    async def check_current(self) -> None:
        """Raise ``SchemaOutdated`` unless the schema is at the newest migration."""
        head = ScriptDirectory.from_config(_alembic_config()).get_current_head()

        def current(connection: Connection) -> str | None:
            return MigrationContext.configure(connection).get_current_revision()

        async with self.engine.connect() as connection:
            revision = await connection.run_sync(current)
        if revision != head:
            raise SchemaOutdated(
                f"the store is at migration {revision or 'none'}, this build needs {head}: "
                "run `volt db upgrade` (or start the scheduler, which migrates)"
            )
