"""Training files and adapters at rest: their metro's object store, encrypted.

Training data is customer payload, and an adapter trained on it can repeat it,
so both stay in the metro the org chose: each metro has its own JetStream
object store bucket (``volt-blobs-<metro>``; on a fleet with a JetStream
cluster per metro, the bucket is placed there), and nothing of theirs goes to
the state store, the logs or a global subject. Each blob is sealed with
AES-256-GCM under ``finetune-data.key`` (or ``finetune.data_key_file``), bound
by its associated data to its bucket and name: a blob copied under another
name does not open. ``delete`` purges the object's chunks: deleted for real.

``BlobBuckets`` lists and deletes without the key (the scheduler's sweeper:
it judges blobs by their names and ages, never their contents); ``Blobs``
adds the sealed reads and writes.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import nats.errors
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from nats.aio.client import Client
from nats.js.api import ObjectStoreConfig, StorageType
from nats.js.errors import BucketNotFoundError, NotFoundError, ObjectNotFoundError
from nats.js.object_store import ObjectStore

from volt.config import ConfigError, VoltConfig
from volt.finetune.model_ids import TunedModel
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


def model_blob(tuned: TunedModel) -> str:
    """Where a tuned model's adapter is: the job's, or one of its checkpoints'."""
    return adapter_blob(tuned.job_id) if tuned.step is None else checkpoint_blob(
        tuned.job_id, tuned.step)


# The three names above, read back.
_NAME = re.compile(r"^(?:file/(?P<file>[^/]+)|adapter/(?P<adapter>[^/]+)|"
                   r"checkpoint/(?P<job>[^/]+)/step-(?P<step>[0-9]+))$")


def owner_of(name: str) -> tuple[str, str, int | None] | None:
    """(``file`` or ``job``, its id, the checkpoint's step) of a blob's name;
    None for a name Volt does not write (left alone)."""
    match = _NAME.match(name)
    if match is None:
        return None
    if match["file"]:
        return "file", match["file"], None
    if match["adapter"]:
        return "job", match["adapter"], None
    return "job", match["job"], int(match["step"])


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


@dataclass(frozen=True, slots=True)
class BlobInfo:
    name: str
    written_at: float
    """When it was written (Unix seconds, the writer's clock)."""


class BlobBuckets:
    """One process's handle on every metro's bucket (made on first use):
    what is there, and deleting it."""

    def __init__(self, nc: Client) -> None:
        self._js = nc.jetstream()
        self._buckets: dict[str, ObjectStore] = {}

    async def _bucket(self, metro: str, *, create: bool = True) -> ObjectStore | None:
        name = subjects.blob_bucket(metro)
        bucket = self._buckets.get(name)
        if bucket is None:
            try:
                bucket = await self._js.object_store(name)
            except (BucketNotFoundError, NotFoundError):
                if not create:
                    return None
                bucket = await self._js.create_object_store(
                    name, ObjectStoreConfig(bucket=name, storage=StorageType.FILE,
                                            description=f"Volt fine-tuning blobs of {metro}"))
            self._buckets[name] = bucket
        return bucket

    async def _existing(self, metro: str) -> ObjectStore:
        bucket = await self._bucket(metro)
        assert bucket is not None
        return bucket

    async def list(self, metro: str) -> list[BlobInfo]:
        """Every blob of the metro (none where it has no bucket yet)."""
        try:
            bucket = await self._bucket(metro, create=False)
            if bucket is None:
                return []
            infos = await bucket.list(ignore_deletes=True)
        except NotFoundError:
            return []  # an empty bucket
        except nats.errors.Error as exc:
            raise BlobUnavailable(f"the blob store of {metro} did not answer") from exc
        return [BlobInfo(info.name, _unix(info.mtime)) for info in infos
                if info.name and not info.deleted]

    async def delete(self, metro: str, name: str) -> bool:
        """Remove the blob and purge its chunks; False if it was not there."""
        try:
            await (await self._existing(metro)).delete(name)
        except (ObjectNotFoundError, NotFoundError):
            return False
        except nats.errors.Error as exc:
            raise BlobUnavailable(f"the blob store of {metro} did not answer") from exc
        return True


def _unix(mtime: str | None) -> float:
    """nats-py's ISO 8601 ``mtime``; 0 (long ago) where it is missing."""
    if not mtime:
        return 0.0
    try:
        return datetime.fromisoformat(mtime.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return 0.0


class Blobs(BlobBuckets):
    """``BlobBuckets`` with the key: sealed writes and reads."""

    def __init__(self, nc: Client, key: bytes) -> None:
        super().__init__(nc)
        self._aead = AESGCM(key)

    def _context(self, metro: str, name: str) -> bytes:
        return f"volt.blob/{subjects.blob_bucket(metro)}/{name}".encode()

    async def put(self, metro: str, name: str, data: bytes) -> None:
        nonce = os.urandom(NONCE_BYTES)
        sealed = nonce + self._aead.encrypt(nonce, data, self._context(metro, name))
        try:
            await (await self._existing(metro)).put(name, sealed)
        except nats.errors.Error as exc:
            raise BlobUnavailable(f"the blob store of {metro} did not answer") from exc

    async def get(self, metro: str, name: str) -> bytes:
        try:
            result = await (await self._existing(metro)).get(name)
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
