"""Training files and adapters at rest: their metro's object store, encrypted.

Training data is customer payload, and an adapter trained on it can repeat it,
so both stay in the metro the org chose: each metro has its own JetStream
object store bucket (``volt-blobs-<metro>``; on a fleet with a JetStream
cluster per metro, the bucket is placed there), and nothing of theirs goes to
the state store, the logs or a global subject. Each blob is sealed with
AES-256-GCM under ``finetune-data.key`` (or ``finetune.data_key_file``), bound
by its associated data to its bucket and name: a blob copied under another
name does not open. ``delete`` purges the object's chunks: deleted for real.
"""

from __future__ import annotations

import os
from pathlib import Path

import nats.errors
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from nats.aio.client import Client
from nats.js.api import ObjectStoreConfig, StorageType
from nats.js.errors import BucketNotFoundError, NotFoundError, ObjectNotFoundError
from nats.js.object_store import ObjectStore

from volt.config import ConfigError, VoltConfig
from volt.identity.keyring import Keyring
from volt.wire import subjects

NONCE_BYTES = 12


class BlobError(Exception):
    """A blob that is not there, or does not open under this key."""


class BlobUnavailable(Exception):
    """The blob store did not answer (NATS away, JetStream busy): try again later."""




def file_blob(file_id: str) -> str:
    return f"file/{file_id}"


def adapter_blob(job_id: str) -> str:
    return f"adapter/{job_id}"


def checkpoint_blob(job_id: str, step: int) -> str:
    """A checkpoint of a running job: its adapter and trainer state, so that
    any node of the metro can go on from it."""
    return f"checkpoint/{job_id}/step-{step}"


def data_key(config: VoltConfig) -> bytes:
    path = config.finetune.data_key_file
    if not path:
        return Keyring(config.secrets_path()).finetune_data_key()
    try:
        key = Path(path).expanduser().read_bytes()
    except OSError as exc:
        raise ConfigError(f"finetune.data_key_file: cannot read {path}: {exc.strerror}") \
            from None
    if len(key) != 32:
        raise ConfigError("finetune.data_key_file: the key must be 32 bytes (AES-256)")
    return key


class Blobs:
    """One process's handle on every metro's bucket (made on first use)."""

    def __init__(self, nc: Client, key: bytes) -> None:
        self._js = nc.jetstream()
        self._aead = AESGCM(key)
        self._buckets: dict[str, ObjectStore] = {}

    async def _bucket(self, metro: str) -> ObjectStore:
        name = subjects.blob_bucket(metro)
        bucket = self._buckets.get(name)
        if bucket is None:
            try:
                bucket = await self._js.object_store(name)
            except (BucketNotFoundError, NotFoundError):
                bucket = await self._js.create_object_store(
                    name, ObjectStoreConfig(bucket=name, storage=StorageType.FILE,
                                            description=f"Volt fine-tuning blobs of {metro}"))
            self._buckets[name] = bucket
        return bucket

    def _context(self, metro: str, name: str) -> bytes:
        return f"volt.blob/{subjects.blob_bucket(metro)}/{name}".encode()

    async def put(self, metro: str, name: str, data: bytes) -> None:
        nonce = os.urandom(NONCE_BYTES)
        sealed = nonce + self._aead.encrypt(nonce, data, self._context(metro, name))
        try:
            await (await self._bucket(metro)).put(name, sealed)
        except nats.errors.Error as exc:
            raise BlobUnavailable(f"the blob store of {metro} did not answer") from exc

    async def get(self, metro: str, name: str) -> bytes:
        try:
            result = await (await self._bucket(metro)).get(name)
        except (ObjectNotFoundError, NotFoundError):
            raise BlobError(f"no blob {name} in {metro}") from None
        except nats.errors.Error as exc:
            raise BlobUnavailable(f"the blob store of {metro} did not answer") from exc
        sealed = result.data or b""
        try:
            return self._aead.decrypt(sealed[:NONCE_BYTES], sealed[NONCE_BYTES:],
                                      self._context(metro, name))
        except (InvalidTag, ValueError):
            raise BlobError(f"blob {name} does not open under this key "
                            "(finetune.data_key_file)") from None

    async def delete(self, metro: str, name: str) -> bool:
        """Remove the blob and purge its chunks; False if it was not there."""
        try:
            await (await self._bucket(metro)).delete(name)
        except (ObjectNotFoundError, NotFoundError):
            return False
        except nats.errors.Error as exc:
            raise BlobUnavailable(f"the blob store of {metro} did not answer") from exc
        return True
