"""The store's tests run on SQLite and, when ``VOLT_TEST_POSTGRES_URL`` is set,
on PostgreSQL: every test that takes ``db`` (or ``store_url``) runs on both."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from volt.store import Database


@pytest.fixture(params=["sqlite", "postgres"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """Synchronous: ``postgres_url`` makes its database with ``asyncio.run``."""
    if request.param == "sqlite":
        return f"sqlite+aiosqlite:///{tmp_path / 'volt.db'}"
    url: str = request.getfixturevalue("postgres_url")
    return url


@pytest.fixture
async def db(store_url: str) -> AsyncIterator[Database]:
    """A migrated store."""
    database = Database(store_url)
    await database.upgrade()
    try:
        yield database
    finally:
        await database.close()
