"""First-run preparation shared by ``volt up`` and the tests: store, dev key, model."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

from volt.store import ApiKeys, Database

DEV_TENANT = "dev"


async def ensure_dev_key(db: Database, key_file: Path) -> str:
    """The development API key: made once, kept (0600) in the data folder.

    The store holds only its digest; the file is the one place the key lives,
    so a later ``volt up`` can print it again.
    """
    keys = ApiKeys(db)
    if await asyncio.to_thread(key_file.is_file):
        key = (await asyncio.to_thread(key_file.read_text)).strip()
        if await keys.verify(key) is None:  # the store was reset: import it again
            await keys.create(DEV_TENANT, "dev key (volt up)", key=key)
        return key
    issued = await keys.create(DEV_TENANT, "dev key (volt up)")
    await asyncio.to_thread(_write_secret, key_file, issued.key)
    return issued.key


def _write_secret(path: Path, secret: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(secret + "\n")
