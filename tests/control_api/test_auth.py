from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy import update

from volt.control_api.auth import Authenticator
from volt.control_api.errors import Unauthenticated
from volt.store import ApiKeys, Database
from volt.store.schema import ApiKey


@pytest.fixture
async def keys(tmp_path: Path) -> AsyncIterator[ApiKeys]:
    db = Database(f"sqlite+aiosqlite:///{tmp_path / 'volt.db'}")
    await db.upgrade()
    yield ApiKeys(db)
    await db.close()


class Clock:
    now = 0.0

    def __call__(self) -> float:
        return self.now


@pytest.mark.parametrize(
    "header",
    [None, "", "Bearer", "Bearer ", "Basic dXNlcjpwYXNz", "Bearer sk-openai-key",
     "Bearer volt_sk_live_" + "x" * 43],
)
async def test_bad_credentials_are_401(keys: ApiKeys, header: str | None) -> None:
    with pytest.raises(Unauthenticated) as info:
        await Authenticator(keys).authenticate(header)
    assert info.value.status == 401
    assert info.value.headers()["WWW-Authenticate"].startswith("Bearer")


async def test_a_revoked_key_stops_working_after_the_cache_ttl(keys: ApiKeys) -> None:
    issued = await keys.create("acme", "k")
    clock = Clock()
    auth = Authenticator(keys, ttl_s=30, clock=clock)
    principal = await auth.authenticate(f"Bearer {issued.key}")
    assert principal.tenant_name == "acme"
    async with keys.db.session() as session, session.begin():
        await session.execute(
            update(ApiKey).where(ApiKey.id == issued.id).values(revoked_at=datetime.now(UTC))
        )
    clock.now = 29.0
    assert await auth.authenticate(f"bearer {issued.key}") == principal  # cached, scheme any case
    clock.now = 31.0
    with pytest.raises(Unauthenticated):
        await auth.authenticate(f"Bearer {issued.key}")
