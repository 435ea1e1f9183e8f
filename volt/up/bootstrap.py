"""First-run preparation shared by ``volt up`` and the tests: store, dev key, model."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

from volt.config import VoltConfig
from volt.identity.api_key_format import MalformedKey, parse_key
from volt.identity.api_keys import ApiKeys
from volt.identity.keyring import Keyring
from volt.identity.orgs import Orgs
from volt.identity.principal import Role
from volt.store import Database

DEV_ORG = "dev"


def api_keys(config: VoltConfig, db: Database) -> ApiKeys:
    return ApiKeys(db, Keyring(config.secrets_path()).api_key_hmac())


async def ensure_dev_key(config: VoltConfig, db: Database, key_file: Path) -> str:
    """The development API key (the ``dev`` org's owner): made once, kept
    (0600) in the data folder.

    The store holds only its keyed hash; the file is the one place the key
    lives, so a later ``volt up`` can print it again. A key the store no longer
    knows (a reset store) is imported again; one in an older format is replaced.
    """
    keys = api_keys(config, db)
    org = await Orgs(db).ensure(DEV_ORG)
    if await asyncio.to_thread(key_file.is_file):
        key = (await asyncio.to_thread(key_file.read_text)).strip()
        try:
            parsed = parse_key(key)
        except MalformedKey:
            parsed = None
        if parsed is not None:
            lookup = await keys.lookup(parsed.key_id)
            if lookup is None:
                await keys.create(org.id, "dev key (volt up)", role=Role.OWNER,
                                  imported=parsed)
                return key
            if lookup.record.revoked_at is None and keys.matches(parsed, lookup.hash):
                return key
    issued = await keys.create(org.id, "dev key (volt up)", role=Role.OWNER)
    await asyncio.to_thread(_write_secret, key_file, issued.key)
    return issued.key


def _write_secret(path: Path, secret: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(secret + "\n")
