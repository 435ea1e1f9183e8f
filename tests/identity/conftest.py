from __future__ import annotations

from pathlib import Path

import pytest

from volt.identity.access_tokens import AccessTokens
from volt.identity.api_keys import ApiKeys
from volt.identity.keyring import Keyring
from volt.identity.orgs import Orgs
from volt.store import Database


class Clock:
    """A clock tests move by hand (no sleeping)."""

    def __init__(self, now: float = 1_800_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def keyring(tmp_path: Path) -> Keyring:
    return Keyring(tmp_path / "secrets")


@pytest.fixture
def keys(db: Database, keyring: Keyring) -> ApiKeys:
    return ApiKeys(db, keyring.api_key_hmac())


@pytest.fixture
def orgs(db: Database) -> Orgs:
    return Orgs(db)


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def access(keyring: Keyring, clock: Clock) -> AccessTokens:
    return AccessTokens(keyring.token_signing_key(), issuer="http://volt.test", ttl_s=900,
                        clock=clock)
